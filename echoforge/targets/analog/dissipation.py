"""Dissipation and RHEL: the damped leapfrog, its BPTT, and RHEL's echo with and without compensation.

A physical oscillator loses energy: with quality factor Q its momentum decays at the friction rate
γ = ω/Q. The damped model splits that decay Strang-wise around the kick of the drift-kick-drift
leapfrog (DESIGN §2), per oscillator::

    m = ϕ + (δ/2)π;   π ← s·π;   π ← π − δ ∂V/∂ϕ(m, f);   π ← s·π;   ϕ' = m + (δ/2)π,   s = e^{−κ/2}

with κᵢ = γᵢδᵢ the loss per step. Each oscillator's step then satisfies MᵀJM = e^{−κ}J — the map is
*conformally symplectic* — and RHEL can be repaired exactly (docs/analog.md, "Dissipation and RHEL"):
run the echo with gain equal to the loss (s → 1/s, which retraces the damped forward), scale the nudge
of echo step j by e^{+κj} and weight the observables by e^{−κt}, t the echo time at which each is taken
(j for the momentum entering step j, j + ½ for the mid position, j + 1 for the momentum leaving it).

Three echo modes, for measuring what each costs:

- ``damped``: the board just runs its echo, losing energy as in the forward; the paper's estimator;
- ``gain``: the echo applies the (calibrated) gain, so it retraces, with the paper's estimator;
- ``compensated``: gain, nudge scaling and estimator weights — RHEL = BPTT of the damped model for
  uncoupled oscillators (linear exactly at any ε, nonlinear to O(ε²) in the scaled nudge ε·e^{κj}).

Everything is float64 torch, one Python step per time step: a reference for measuring, not a fast
path. BPTT is autograd through the same step; the echoes carry the ± pair as centre and
half-difference (as models/kernels.py does), so a nudge small next to the state loses no digits.
A ``coupling`` matrix (linear banks) adds Σₖ Kᵢₖ mₖ to the force, to show what coupled oscillators
with unequal losses do to the recipe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ...models.core import OscillatorParams

MODES = ("damped", "gain", "compensated")
TRAINED = {"linear": ("a", "delta"), "nonlinear": ("a", "delta", "w", "b", "c")}


@dataclass(frozen=True)
class DampedBank:
    """An oscillator bank with per-oscillator loss κᵢ = γᵢδᵢ ≥ 0 per step (momentum × e^{−κᵢ})."""

    params: OscillatorParams
    loss: np.ndarray
    coupling: np.ndarray | None = field(default=None)

    def __post_init__(self):
        size = self.params.size
        loss = np.broadcast_to(np.asarray(self.loss, dtype=np.float64), (size,)).copy()
        if not np.all(np.isfinite(loss)) or np.any(loss < 0):
            raise ValueError(f"loss per step must be finite and ≥ 0, got {loss}")
        object.__setattr__(self, "loss", loss)
        if self.coupling is not None:
            coupling = np.asarray(self.coupling, dtype=np.float64)
            if self.params.kind != "linear":
                raise ValueError("a coupling matrix is supported for linear banks only")
            if coupling.shape != (size, size) or not np.allclose(coupling, coupling.T):
                raise ValueError(f"coupling must be a symmetric ({size}, {size}) matrix")
            if np.ptp(self.params.delta) > 0:
                raise ValueError("a coupled bank needs one step size for all oscillators (else it is "
                                 "not a Hamiltonian system)")
            object.__setattr__(self, "coupling", coupling)

    @classmethod
    def from_quality(cls, params: OscillatorParams, quality, coupling=None) -> DampedBank:
        """The bank whose oscillators lose 1/Q of their phase advance per step: κ = θ/Q."""
        quality = np.asarray(quality, dtype=np.float64)
        if np.any(~(quality > 0)):
            raise ValueError(f"quality factor must be > 0, got {quality}")
        return cls(params, phase_per_step(params) / quality, coupling)


def phase_per_step(params: OscillatorParams) -> np.ndarray:
    """θ = 2 asin(δ√k/2): the leapfrog's phase advance per step at the small-amplitude stiffness k
    (a, plus c·w·(1 − tanh²b) for the nonlinear HRU) — ω = θ/δ is the oscillator's frequency."""
    stiffness = params.a
    if params.kind == "nonlinear":
        stiffness = stiffness + params.c * params.w * (1 - np.tanh(params.b) ** 2)
    return 2 * np.arcsin(np.minimum(params.delta * np.sqrt(np.maximum(stiffness, 0)) / 2, 1))


def _tensors(bank: DampedBank, requires_grad: bool = False) -> dict[str, torch.Tensor]:
    tensors = {name: torch.tensor(getattr(bank.params, name), requires_grad=requires_grad)
               for name in ("a", "delta", "w", "b", "c")}
    tensors["coupling"] = None if bank.coupling is None else torch.from_numpy(bank.coupling)
    return tensors


def _force(kind: str, p: dict, m, f):
    """∂V/∂ϕ at the mid position m under forcing f."""
    if kind == "nonlinear":
        return p["a"] * m + p["c"] * torch.tanh(p["w"] * m + f + p["b"])
    force = p["a"] * m - f
    return force if p["coupling"] is None else force + m @ p["coupling"]


def _step(kind: str, p: dict, factor, phi, pi, f):
    """One damped (factor < 1) or amplified (factor > 1) leapfrog step; returns (ϕ', π')."""
    half = 0.5 * p["delta"]
    m = phi + half * pi
    pi = (pi * factor - p["delta"] * _force(kind, p, m, f)) * factor
    return m + half * pi, pi


def _noise(generator, shape, noise: float):
    return noise * torch.randn(shape, generator=generator, dtype=torch.float64)


def _integrate(bank: DampedBank, p: dict, forcing, noise: float, seed: int):
    factor = torch.exp(-0.5 * torch.from_numpy(bank.loss))
    generator = torch.Generator().manual_seed(seed)
    phi = torch.zeros(forcing.shape[0], forcing.shape[2], dtype=torch.float64)
    pi = torch.zeros_like(phi)
    positions = []
    for k in range(forcing.shape[1]):
        phi, pi = _step(bank.params.kind, p, factor, phi, pi, forcing[:, k])
        if noise:
            pi = pi + _noise(generator, pi.shape, noise)
        positions.append(phi)
    return torch.stack(positions, dim=1), phi, pi


def forward(bank: DampedBank, forcing, noise: float = 0.0, seed: int = 0):
    """Integrate the damped bank from rest over forcing (B, L, P); thermal noise of standard deviation
    ``noise`` is added to every momentum after every step. Returns (positions, final ϕ, final π)."""
    with torch.no_grad():
        positions, phi, pi = _integrate(bank, _tensors(bank), torch.as_tensor(forcing, dtype=torch.float64),
                                        noise, seed)
    return positions.numpy(), phi.numpy(), pi.numpy()


def bptt(bank: DampedBank, forcing, nudges) -> dict[str, np.ndarray]:
    """The exact gradient of Σ nudges·positions of the (noise-free) damped model, by autograd.

    Returns each trained parameter's gradient summed over the batch, (P,), and ``forcing`` (B, L, P).
    """
    p = _tensors(bank, requires_grad=True)
    forcing = torch.tensor(np.asarray(forcing, dtype=np.float64), requires_grad=True)
    positions, _, _ = _integrate(bank, p, forcing, 0.0, 0)
    names = _names(bank)
    grads = torch.autograd.grad(positions, [p[n] for n in names] + [forcing],
                                grad_outputs=torch.as_tensor(nudges, dtype=torch.float64))
    return {name: grad.numpy() for name, grad in zip(names + ("forcing",), grads)}


def _names(bank: DampedBank) -> tuple[str, ...]:
    """The parameters whose gradients are compared; a coupled bank's step gradient is left out
    (its potential is not a sum of per-oscillator terms, so H_δ has no per-oscillator δ)."""
    names = TRAINED[bank.params.kind]
    return names if bank.coupling is None else tuple(n for n in names if n != "delta")


def _pair_observables(kind: str, p: dict, mc, md, f) -> dict:
    """Differences (echo⁺ − echo⁻) of ∂V/∂θ, ∂V/∂f and V at the mid positions mc ± md."""
    if kind == "linear":
        force = p["a"] * mc - f
        return {"a": 2 * mc * md, "forcing": -2 * md, "V": 2 * force * md}
    up, down = _potential_terms(p, mc + md, f), _potential_terms(p, mc - md, f)
    return {name: up[name] - down[name] for name in up}


def _potential_terms(p: dict, m, f) -> dict:
    z = p["w"] * m + f + p["b"]
    tanh, logcosh = torch.tanh(z), z.abs() + torch.log1p(torch.exp(-2 * z.abs())) - math.log(2)
    return {"a": m * m / 2, "w": p["c"] * (tanh * m / p["w"] - logcosh / p["w"] ** 2),
            "b": p["c"] * tanh / p["w"], "c": logcosh / p["w"], "forcing": p["c"] * tanh / p["w"],
            "V": p["a"] * m * m / 2 + p["c"] * logcosh / p["w"]}


def _force_pair(kind: str, p: dict, mc, md, f):
    """Centre and half-difference of ∂V/∂ϕ at mc ± md (the linear force's difference is exact)."""
    if kind == "linear":
        centre, half = _force(kind, p, mc, f), p["a"] * md
        return centre, half if p["coupling"] is None else half + md @ p["coupling"]
    up, down = _force(kind, p, mc + md, f), _force(kind, p, mc - md, f)
    return (up + down) / 2, (up - down) / 2


@dataclass
class Echo:
    """RHEL's gradient from the ±ε echoes (names as ``bptt``), and the centre's end state (ϕ, π):
    the un-nudged echo's, which on a retracing echo is the flipped start state (here 0)."""

    grads: dict[str, np.ndarray]
    end: tuple[np.ndarray, np.ndarray]


def rhel(bank: DampedBank, forcing, phi, pi, nudges, epsilon: float, mode: str = "compensated",
         calibrated_loss=None, noise: float = 0.0, seed: int = 1) -> Echo:
    """RHEL's ±ε echoes on the damped bank from the forward's final state (phi, pi).

    ``calibrated_loss`` (default: the true loss) is what the board's gain and the learning rule
    believe κ is — a gain error is a calibrated loss that differs from ``bank.loss``. ``noise`` is
    thermal noise on every momentum after every echo step, independent in the two echoes.
    """
    if mode not in MODES:
        raise ValueError(f"echo mode must be one of {MODES}, got {mode!r}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    kind, p = bank.params.kind, _tensors(bank)
    believed = torch.from_numpy(bank.loss if calibrated_loss is None else
                                np.broadcast_to(np.asarray(calibrated_loss, np.float64), bank.loss.shape).copy())
    factor = torch.exp(-0.5 * torch.from_numpy(bank.loss)) if mode == "damped" else torch.exp(0.5 * believed)
    rate = believed if mode == "compensated" else torch.zeros_like(believed)
    forcing = torch.as_tensor(forcing, dtype=torch.float64)
    nudges = torch.as_tensor(nudges, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    length, half = forcing.shape[1], 0.5 * p["delta"]
    pc, pd = torch.as_tensor(phi, dtype=torch.float64), torch.zeros_like(nudges[:, 0])
    qc, qd = -torch.as_tensor(pi, dtype=torch.float64), epsilon * nudges[:, -1]
    acc = {name: 0.0 for name in ("a", "w", "b", "c", "delta")}
    grad_forcing = torch.empty_like(forcing)
    with torch.no_grad():
        for j in range(length):
            k = length - 1 - j
            f = forcing[:, k]
            mc, md = pc + half * qc, pd + half * qd
            fc, fd = _force_pair(kind, p, mc, md, f)
            q3c, q3d = (qc * factor - p["delta"] * fc) * factor, (qd * factor - p["delta"] * fd) * factor
            observed = _pair_observables(kind, p, mc, md, f)
            mid, start, end = (torch.exp(-rate * t) for t in (j + 0.5, j, j + 1))
            for name in acc.keys() & observed.keys():
                acc[name] = acc[name] + mid * observed[name]
            # ∂H_½/∂δ = V(m) + (π_start² + π_end²)/4, each term weighted at its own echo time
            acc["delta"] = acc["delta"] + mid * observed["V"] + start * qc * qd + end * q3c * q3d
            grad_forcing[:, k] = -p["delta"] / (2 * epsilon) * mid * observed["forcing"]
            pc, pd, qc, qd = mc + half * q3c, md + half * q3d, q3c, q3d
            if k > 0:
                qd = qd + epsilon * torch.exp(rate * (j + 1)) * nudges[:, k - 1]
            if noise:
                plus, minus = _noise(generator, qc.shape, noise), _noise(generator, qc.shape, noise)
                qc, qd = qc + (plus + minus) / 2, qd + (plus - minus) / 2
    scale = {name: p["delta"] / (-2 * epsilon) for name in acc} | {"delta": -1 / (2 * epsilon)}
    grads = {name: (scale[name] * acc[name]).sum(dim=0).numpy() for name in _names(bank)}
    grads["forcing"] = grad_forcing.numpy()
    return Echo(grads, (pc.numpy(), -qc.numpy()))


def agreement(estimate: dict, reference: dict) -> dict[str, tuple[float, float]]:
    """Per gradient and for all of them flattened together: (cosine, ‖estimate − reference‖/‖reference‖)."""
    def pair(x, y):
        x, y = np.ravel(x), np.ravel(y)
        norm = np.linalg.norm(y)
        cosine = float(x @ y / max(np.linalg.norm(x) * norm, 1e-300))
        return cosine, float(np.linalg.norm(x - y) / max(norm, 1e-300))

    result = {name: pair(estimate[name], reference[name]) for name in reference}
    result["all"] = pair(np.concatenate([np.ravel(estimate[n]) for n in reference]),
                         np.concatenate([np.ravel(reference[n]) for n in reference]))
    return result
