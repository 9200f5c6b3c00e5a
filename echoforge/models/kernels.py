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


@njit(cache=True, inline="always")
def _force(kind, a, w, b, c, m, f):
    """∂V/∂ϕ at position m under forcing f."""
    if kind == LINEAR:
        return a * m - f
    return a * m + c * math.tanh(w * m + f + b)


@njit(cache=True, inline="always")
def _step(kind, a, d, w, b, c, phi, pi, f):
    """One drift-kick-drift leapfrog step, the kick at the mid position; returns (phi', pi')."""
    m = phi + 0.5 * d * pi
    pin = pi - d * _force(kind, a, w, b, c, m, f)
    return m + 0.5 * d * pin, pin


@njit(cache=True, inline="always")
def _force_pair(kind, a, w, b, c, mc, md, f):
    """Centre and half-difference of ∂V/∂ϕ at positions mc ± md, without cancellation.

    Also returns (t⁺ + t⁻, t⁺ − t⁻, log cosh z⁺ − log cosh z⁻) for the nonlinear observables.
    """
    if kind == LINEAR:
        return a * mc - f, a * md, 0.0, 0.0, 0.0
    zc = w * mc + f + b
    e = w * md
    tp = math.tanh(zc + e)
    tm = math.tanh(zc - e)
    t_diff = math.tanh(2.0 * e) * (1.0 - tp * tm)  # tanh a − tanh b = tanh(a − b)(1 − tanh a tanh b)
    lc_diff = 2.0 * math.atanh(math.tanh(zc) * math.tanh(e))  # log(cosh(z+e)/cosh(z−e))
    return a * mc + 0.5 * c * (tp + tm), a * md + 0.5 * c * t_diff, tp + tm, t_diff, lc_diff


@njit(cache=True, inline="always")
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


@njit(cache=True)
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


@njit(cache=True)
def echo(kind, params, forcing, phi_end, pi_end, nudges, eps, grad_forcing, grad_params):
    """The ±ε echoes of RHEL (PAPER.md §2, Alg. 1), carried as centre and half-difference.

    Each echo starts from (ϕ_K, −π_K ± ε g_{K−1}), consumes the forcing in reverse, and after every
    step but the last adds ±ε g to the momentum. Tracking the pair as (x⁺ + x⁻)/2 and (x⁺ − x⁻)/2 —
    the drifts are linear and the kick's difference has closed forms — is the same two trajectories
    without the cancellation of subtracting two nearly equal states, so a nudge far below the state's
    last bit still counts. The observables' differences are accumulated into grad_params (5, B, P)
    and grad_forcing, scaled by −δ/2ε (−1/2ε for δ itself). Returns both echoes' final
    (phi, pi), each (2, B, P), index 0 for +ε.
    """
    nb, nt, npos = forcing.shape
    phis = np.empty((2, nb, npos))
    pis = np.empty((2, nb, npos))
    for bi in range(nb):
        for p in range(npos):
            a, d, w, b, c = params[0, p], params[1, p], params[2, p], params[3, p], params[4, p]
            h = 0.5 * d
            pc, pd = phi_end[bi, p], 0.0
            qc, qd = -pi_end[bi, p], eps * nudges[bi, nt - 1, p]
            acc_a = acc_w = acc_b = acc_c = acc_d = 0.0
            for k in range(nt - 1, -1, -1):
                f = forcing[bi, k, p]
                mc, md = pc + h * qc, pd + h * qd
                fc, fd, t_sum, t_diff, lc_diff = _force_pair(kind, a, w, b, c, mc, md, f)
                qc1, qd1 = qc - d * fc, qd - d * fd
                oa, ow, ob, oc, of, od = _pair_observables(kind, a, w, c, mc, md, f, qc, qd, qc1, qd1,
                                                           t_sum, t_diff, lc_diff)
                acc_a += oa
                acc_w += ow
                acc_b += ob
                acc_c += oc
                acc_d += od
                grad_forcing[bi, k, p] = -d / (2.0 * eps) * of
                pc, pd = mc + h * qc1, md + h * qd1
                qc, qd = qc1, qd1
                if k > 0:
                    qd += eps * nudges[bi, k - 1, p]
            scale = -d / (2.0 * eps)
            grad_params[0, bi, p] = scale * acc_a
            grad_params[1, bi, p] = -acc_d / (2.0 * eps)
            grad_params[2, bi, p] = scale * acc_w
            grad_params[3, bi, p] = scale * acc_b
            grad_params[4, bi, p] = scale * acc_c
            phis[0, bi, p], phis[1, bi, p] = pc + pd, pc - pd
            pis[0, bi, p], pis[1, bi, p] = qc + qd, qc - qd
    return phis, pis


@njit(cache=True)
def adjoint(kind, params, forcing, phi0, pi0, positions, momenta, grad_positions,
            grad_forcing, grad_params):
    """BPTT: reverse-mode differentiation of the stored leapfrog trajectory, step by step.

    This is exactly what autograd computes through the unrolled integrator (the tests check it against
    torch autograd), compiled. Writes grad_forcing (B, L, P) and grad_params (5, B, P).
    """
    nb, nt, npos = forcing.shape
    for bi in range(nb):
        for p in range(npos):
            a, d, w, b, c = params[0, p], params[1, p], params[2, p], params[3, p], params[4, p]
            h = 0.5 * d
            l_phi = 0.0
            l_pi = 0.0
            g_a = g_d = g_w = g_b = g_c = 0.0
            for k in range(nt - 1, -1, -1):
                phi = positions[bi, k - 1, p] if k > 0 else phi0[bi, p]
                pi = momenta[bi, k - 1, p] if k > 0 else pi0[bi, p]
                f = forcing[bi, k, p]
                m = phi + h * pi
                force = _force(kind, a, w, b, c, m, f)
                pin = pi - d * force
                l_phi1 = l_phi + grad_positions[bi, k, p]
                # ϕ' = m + h π'
                l_pin = l_pi + h * l_phi1
                l_m = l_phi1
                g_d += 0.5 * pin * l_phi1
                # π' = π − δ F(m, f)
                if kind == LINEAR:
                    df_dm, df_df, df_dw, df_db, df_dc = a, -1.0, 0.0, 0.0, 0.0
                else:
                    t = math.tanh(w * m + f + b)
                    s = 1.0 - t * t
                    df_dm, df_df, df_dw, df_db, df_dc = a + c * w * s, c * s, c * s * m, c * s, t
                kick = -d * l_pin
                l_m += kick * df_dm
                grad_forcing[bi, k, p] = kick * df_df
                g_a += kick * m
                g_w += kick * df_dw
                g_b += kick * df_db
                g_c += kick * df_dc
                g_d -= force * l_pin
                # m = ϕ + h π
                g_d += 0.5 * pi * l_m
                l_phi = l_m
                l_pi = l_pin + h * l_m
            grad_params[0, bi, p] = g_a
            grad_params[1, bi, p] = g_d
            grad_params[2, bi, p] = g_w
            grad_params[3, bi, p] = g_b
            grad_params[4, bi, p] = g_c
