"""Compiled float64 inner loops of the oscillator bank (numba).

The HRU recurrences are sequential in time; a Python step per time step costs ~100 µs, a compiled step
a few ns. numba compiles these loops to machine code (cached on disk), keeps them readable as Python and
needs no C toolchain on the user's machine. Layout: arrays are (batch, time, oscillator), the
oscillator axis innermost so each time step streams contiguous memory; `params` is the (5, P) table
of core.PARAM_NAMES = (a, delta, w, b, c); `kind` is 0 for the linear and 1 for the nonlinear HRU.
"""

import math

import numpy as np
from numba import njit

LINEAR, NONLINEAR = 0, 1


@njit(cache=True, error_model="numpy", inline="always")
def _logcosh(z):
    x = abs(z)
    return x + math.log1p(math.exp(-2.0 * x)) - math.log(2.0)


# Below this magnitude the odd Taylor series to the fifth power is exact in float64 (the next term
# is < 1e-19 relative): the echo's half-difference is usually that small, and the series is several
# times cheaper than a libm call.
SMALL = 1e-3


@njit(cache=True, error_model="numpy", inline="always")
def _tanh_small(x):
    if abs(x) >= SMALL:
        return math.tanh(x)
    x2 = x * x
    return x * (1.0 - x2 * (1.0 / 3.0 - x2 * (2.0 / 15.0)))


@njit(cache=True, error_model="numpy", inline="always")
def _atanh_small(x):
    if abs(x) >= SMALL:
        return math.atanh(x)
    x2 = x * x
    return x * (1.0 + x2 * (1.0 / 3.0 + x2 * (1.0 / 5.0)))


@njit(cache=True, error_model="numpy", inline="always")
def _force(kind, a, w, b, c, m, f):
    """∂V/∂ϕ at position m under forcing f."""
    if kind == LINEAR:
        return a * m - f
    return a * m + c * math.tanh(w * m + f + b)


@njit(cache=True, error_model="numpy", inline="always")
def _step(kind, a, d, w, b, c, phi, pi, f):
    """One drift-kick-drift leapfrog step, the kick at the mid position; returns (phi', pi')."""
    m = phi + 0.5 * d * pi
    pin = pi - d * _force(kind, a, w, b, c, m, f)
    return m + 0.5 * d * pin, pin


@njit(cache=True, error_model="numpy", inline="always")
def _force_pair(kind, a, w, b, c, mc, md, f):
    """Centre and half-difference of ∂V/∂ϕ at positions mc ± md, without cancellation.

    Also returns (t⁺ + t⁻, t⁺ − t⁻, log cosh z⁺ − log cosh z⁻) for the nonlinear observables.
    """
    if kind == LINEAR:
        return a * mc - f, a * md, 0.0, 0.0, 0.0
    zc = w * mc + f + b
    e = w * md
    if abs(e) > 0.5:  # far apart: the direct differences are well conditioned
        tp, tm = math.tanh(zc + e), math.tanh(zc - e)
        t_sum, t_diff, lc_diff = tp + tm, tp - tm, _logcosh(zc + e) - _logcosh(zc - e)
    else:
        # u = tanh zc, v = tanh e: tanh(zc ± e) = (u ± v)/(1 ± uv) and log(cosh z⁺/cosh z⁻) =
        # 2 atanh(uv) give sum and difference without cancellation, from three transcendental calls.
        u, v = math.tanh(zc), _tanh_small(e)
        denominator = 1.0 - (u * v) * (u * v)
        t_sum = 2.0 * u * (1.0 - v * v) / denominator
        t_diff = 2.0 * v * (1.0 - u * u) / denominator
        lc_diff = 2.0 * _atanh_small(u * v)
    return a * mc + 0.5 * c * t_sum, a * md + 0.5 * c * t_diff, t_sum, t_diff, lc_diff


@njit(cache=True, error_model="numpy", inline="always")
def _pair_observables(kind, a, w, c, mc, md, f, qc0, qd0, qc1, qd1, t_sum, t_diff, lc_diff):
    """Differences (echo⁺ − echo⁻) of the half-step observables ∂V/∂(a, w, b, c, f) and ∂H_½/∂δ.

    Centre/half-difference form: m± = mc ± md, π± = qc ± qd, so x⁺² − x⁻² = 4·centre·half-difference.
    """
    da = 2.0 * mc * md
    kinetic = qc0 * qd0 + qc1 * qd1
    if kind == LINEAR:
        return da, 0.0, 0.0, 0.0, -2.0 * md, 2.0 * a * mc * md - 2.0 * f * md + kinetic
    dz = c * t_diff / w
    dc = lc_diff / w
    dw = c * ((t_diff * mc + t_sum * md) / w - lc_diff / (w * w))
    return da, dw, dz, dc, dz, 2.0 * a * mc * md + c * dc + kinetic


@njit(cache=True, error_model="numpy")
def forward(kind, params, forcing, phi0, pi0, positions, momenta, keep_momenta):
    """Integrate every lane; positions[b, k] is ϕ after consuming forcing[b, k].

    With keep_momenta, momenta[b, k] receives π after step k (BPTT keeps the trajectory; RHEL does not).
    Returns the final (phi, pi), each (B, P).
    """
    nb, nt, npos = forcing.shape
    phi = phi0.copy()
    pi = pi0.copy()
    for bi in range(nb):
        for k in range(nt):
            for p in range(npos):
                ph, pn = _step(kind, params[0, p], params[1, p], params[2, p], params[3, p],
                               params[4, p], phi[bi, p], pi[bi, p], forcing[bi, k, p])
                phi[bi, p] = ph
                pi[bi, p] = pn
                positions[bi, k, p] = ph
                if keep_momenta:
                    momenta[bi, k, p] = pn
    return phi, pi


@njit(cache=True, error_model="numpy")
def echo_chunk(kind, params, forcing, nudges, nudge_before, eps, state, acc, grad_forcing):
    """The ±ε echoes of RHEL (PAPER.md §2, Alg. 1) over one chunk of time, latest step first.

    The pair is carried as centre and half-difference, state = (ϕ_c, ϕ_d, π_c, π_d) each (B, P):
    x± = x_c ± x_d. The drifts are linear and the kick's difference has closed forms, so this is the
    same two trajectories without the cancellation of subtracting two nearly equal states — a nudge
    far below the state's last bit still counts. After every step the momentum half-difference gets
    ε·g of the step before it (within the chunk from `nudges`, after the chunk's first step from
    `nudge_before`, zero at the very start of the sequence). Adds the observables' differences
    (echo⁺ − echo⁻, rows in PARAM_NAMES order) to acc (5, B, P) and writes grad_forcing, already
    scaled by −δ/2ε. state and acc carry over from chunk to chunk.
    """
    nb, nt, npos = forcing.shape
    a, d, w, b, c = params[0], params[1], params[2], params[3], params[4]
    for bi in range(nb):
        pc, pd, qc, qd = state[0, bi], state[1, bi], state[2, bi], state[3, bi]
        for k in range(nt - 1, -1, -1):
            for p in range(npos):
                f = forcing[bi, k, p]
                mc, md = pc[p] + 0.5 * d[p] * qc[p], pd[p] + 0.5 * d[p] * qd[p]
                fc, fd, t_sum, t_diff, lc_diff = _force_pair(kind, a[p], w[p], b[p], c[p], mc, md, f)
                qc1, qd1 = qc[p] - d[p] * fc, qd[p] - d[p] * fd
                oa, ow, ob, oc, of, od = _pair_observables(kind, a[p], w[p], c[p], mc, md, f, qc[p],
                                                           qd[p], qc1, qd1, t_sum, t_diff, lc_diff)
                acc[0, bi, p] += oa
                acc[1, bi, p] += od
                acc[2, bi, p] += ow
                acc[3, bi, p] += ob
                acc[4, bi, p] += oc
                grad_forcing[bi, k, p] = -d[p] / (2.0 * eps) * of
                pc[p], pd[p] = mc + 0.5 * d[p] * qc1, md + 0.5 * d[p] * qd1
                qc[p] = qc1
                qd[p] = qd1 + eps * (nudges[bi, k - 1, p] if k > 0 else nudge_before[bi, p])


@njit(cache=True, error_model="numpy")
def adjoint(kind, params, forcing, phi0, pi0, positions, momenta, grad_positions,
            grad_forcing, grad_params):
    """BPTT: reverse-mode differentiation of the stored leapfrog trajectory, step by step.

    This is exactly what autograd computes through the unrolled integrator (the tests check it against
    torch autograd), compiled. Writes grad_forcing (B, L, P) and grad_params (5, B, P).
    """
    nb, nt, npos = forcing.shape
    a, d, w, b, c = params[0], params[1], params[2], params[3], params[4]
    for bi in range(nb):
        l_phi = np.zeros(npos)
        l_pi = np.zeros(npos)
        grads = np.zeros((5, npos))
        for k in range(nt - 1, -1, -1):
            for p in range(npos):
                h = 0.5 * d[p]
                phi = positions[bi, k - 1, p] if k > 0 else phi0[bi, p]
                pi = momenta[bi, k - 1, p] if k > 0 else pi0[bi, p]
                f = forcing[bi, k, p]
                m = phi + h * pi
                force = _force(kind, a[p], w[p], b[p], c[p], m, f)
                pin = pi - d[p] * force
                l_phi1 = l_phi[p] + grad_positions[bi, k, p]
                # ϕ' = m + h π'
                l_pin = l_pi[p] + h * l_phi1
                l_m = l_phi1
                g_d = 0.5 * pin * l_phi1 - force * l_pin
                # π' = π − δ F(m, f)
                if kind == LINEAR:
                    df_dm, df_df, df_dw, df_db, df_dc = a[p], -1.0, 0.0, 0.0, 0.0
                else:
                    t = math.tanh(w[p] * m + f + b[p])
                    s = 1.0 - t * t
                    df_dm, df_df = a[p] + c[p] * w[p] * s, c[p] * s
                    df_dw, df_db, df_dc = c[p] * s * m, c[p] * s, t
                kick = -d[p] * l_pin
                l_m += kick * df_dm
                grad_forcing[bi, k, p] = kick * df_df
                grads[0, p] += kick * m
                grads[2, p] += kick * df_dw
                grads[3, p] += kick * df_db
                grads[4, p] += kick * df_dc
                # m = ϕ + h π
                grads[1, p] += g_d + 0.5 * pi * l_m
                l_phi[p] = l_m
                l_pi[p] = l_pin + h * l_m
        grad_params[:, bi] = grads
