"""Plain torch leapfrog, differentiated by autograd: the independent BPTT reference for tests."""

import torch


def leapfrog_positions(kind, table, forcing):
    """Positions of the oscillator bank, one Python step per time step (slow, obviously right)."""
    a, d, w, b, c = table
    phi = forcing.new_zeros(forcing.shape[0], forcing.shape[2])
    pi = torch.zeros_like(phi)
    out = []
    for k in range(forcing.shape[1]):
        f = forcing[:, k]
        m = phi + 0.5 * d * pi
        force = a * m - f if kind == "linear" else a * m + c * torch.tanh(w * m + f + b)
        pi = pi - d * force
        phi = m + 0.5 * d * pi
        out.append(phi)
    return torch.stack(out, dim=1)
