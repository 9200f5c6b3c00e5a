"""Compiled float64 inner loops of the oscillator bank (numba).

The HRU recurrences are sequential in time; a Python step per time step costs ~100 µs, a compiled step
a few ns. numba compiles these loops to machine code (cached on disk), keeps them readable as Python and
needs no C toolchain on the user's machine. Layout: arrays are (batch, time, oscillator), the
oscillator axis innermost so each time step streams contiguous memory; `params` is the (5, P) table
of core.PARAM_NAMES = (a, delta, w, b, c); `kind` is 0 for the linear and 1 for the nonlinear HRU.
The entry points release the GIL: core.FloatCore runs them on groups of batch rows in threads (rows
are independent and a lane's arithmetic does not depend on its block, so the bits do not depend on
the split).
"""

import numpy as np
from numba import njit

from . import vecmath

LINEAR, NONLINEAR = 0, 1


@njit(cache=True, error_model="numpy", inline="always")
def _force(kind, a, w, b, c, m, f):
    """∂V/∂ϕ at position m under forcing f."""
    if kind == LINEAR:
        return a * m - f
    return a * m + c * vecmath.tanh(w * m + f + b)[0]


@njit(cache=True, error_model="numpy", inline="always")
def _step(kind, a, d, w, b, c, phi, pi, f):
    """One drift-kick-drift leapfrog step, the kick at the mid position; returns (phi', pi')."""
    m = phi + 0.5 * d * pi
    pin = pi - d * _force(kind, a, w, b, c, m, f)
    return m + 0.5 * d * pin, pin


# A pair whose positions differ by more than this (|w·m_d|, half the distance) has its force
# difference taken directly (well conditioned there); below, from closed forms without cancellation.
FAR = 0.5


@njit(cache=True, error_model="numpy", inline="always")
def _log1p_small(e):
    """log(1 + e) for 0 ≤ e ≤ 1, as 2 atanh(e/(2 + e)) (the argument stays below ⅓)."""
    return 2.0 * vecmath.atanh_rational(e / (2.0 + e))


@njit(cache=True, error_model="numpy", inline="always")
def _force_pair(kind, a, w, b, c, mc, md, f, far_possible):
    """Centre and half-difference of ∂V/∂ϕ at positions mc ± md, without cancellation.

    Also returns (t⁺ + t⁻, t⁺ − t⁻, log cosh z⁺ − log cosh z⁻) for the nonlinear observables. Both
    regimes are computed and one selected (straight-line code vectorises); with far_possible False
    (no |w·md| > FAR in this step) the far regime is not computed at all.
    """
    if kind == LINEAR:
        return a * mc - f, a * md, 0.0, 0.0, 0.0
    zc = w * mc + f + b
    e = w * md
    # u = tanh zc, v = tanh e: tanh(zc ± e) = (u ± v)/(1 ± uv) and log(cosh z⁺/cosh z⁻) = 2 atanh(uv).
    u = vecmath.tanh(zc)[0]
    v = vecmath.tanh_rational(e)
    uv = u * v
    twice_inverse = 2.0 / (1.0 - uv * uv)
    t_sum = u * (1.0 - v * v) * twice_inverse
    t_diff = v * (1.0 - u * u) * twice_inverse
    lc_diff = 2.0 * vecmath.atanh_rational(uv)
    if far_possible:  # far apart: the direct differences are well conditioned
        tp, ep = vecmath.tanh(zc + e)
        tm, em = vecmath.tanh(zc - e)
        far_lc_diff = abs(zc + e) - abs(zc - e) + _log1p_small(ep) - _log1p_small(em)
        far = abs(e) > FAR
        t_sum = tp + tm if far else t_sum
        t_diff = tp - tm if far else t_diff
        lc_diff = far_lc_diff if far else lc_diff
    return a * mc + 0.5 * c * t_sum, a * md + 0.5 * c * t_diff, t_sum, t_diff, lc_diff


@njit(cache=True, error_model="numpy", inline="always")
def _pair_observables(kind, a, inv_w, c, mc, md, f, qc0, qd0, qc1, qd1, t_sum, t_diff, lc_diff):
    """Differences (echo⁺ − echo⁻) of the half-step observables ∂V/∂(a, w, b, c, f) and ∂H_½/∂δ.

    Centre/half-difference form: m± = mc ± md, π± = qc ± qd, so x⁺² − x⁻² = 4·centre·half-difference.
    Takes 1/w (divisions are what the vectorised loop spends most time on).
    """
    da = 2.0 * mc * md
    kinetic = qc0 * qd0 + qc1 * qd1
    if kind == LINEAR:
        return da, 0.0, 0.0, 0.0, -2.0 * md, 2.0 * a * mc * md - 2.0 * f * md + kinetic
    dz = c * t_diff * inv_w
    dc = lc_diff * inv_w
    dw = c * ((t_diff * mc + t_sum * md) - lc_diff * inv_w) * inv_w
    return da, dw, dz, dc, dz, 2.0 * a * mc * md + c * dc + kinetic


@njit(cache=True, error_model="numpy", nogil=True)
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


# The echo works on lanes (batch row, oscillator) in blocks: a block's rows of one work array hold
# the pair state, the accumulators, the parameters and this step's forcing, nudge and gradient, so the
# lane loop reads and writes one array, which LLVM vectorises (with the state spread over a dozen arrays
# it needed more runtime overlap checks than it makes and stayed scalar). A block stays in L1/L2.
BLOCK = 256
STRIDE = BLOCK + 8  # a row's length in the work array; rows not 4 KiB apart (no false store forwarding)
ROWS = 19
# Offsets of the work array's rows: pair state, 5 accumulators, 5 parameters (a, δ, w, b, c), 1/w,
# the gradient's scale −δ/2ε, and this step's forcing, nudge and gradient.
PC, PD, QC, QD, ACC, PAR, INV_W, GRAD_SCALE, F, NUDGE, GRAD = (
    row * STRIDE for row in (0, 1, 2, 3, 4, 9, 14, 15, 16, 17, 18))


@njit(cache=True, error_model="numpy", inline="always")
def _echo_lanes(kind, work, n, eps, far_possible):
    """One echo step of the block's n lanes (see echo_chunk)."""
    for j in range(n):
        a, d, w = work[PAR + j], work[PAR + STRIDE + j], work[PAR + 2 * STRIDE + j]
        b, c = work[PAR + 3 * STRIDE + j], work[PAR + 4 * STRIDE + j]
        pc, pd, qc, qd, f = work[PC + j], work[PD + j], work[QC + j], work[QD + j], work[F + j]
        mc, md = pc + 0.5 * d * qc, pd + 0.5 * d * qd
        fc, fd, t_sum, t_diff, lc_diff = _force_pair(kind, a, w, b, c, mc, md, f, far_possible)
        qc1, qd1 = qc - d * fc, qd - d * fd
        oa, ow, ob, oc, of, od = _pair_observables(kind, a, work[INV_W + j], c, mc, md, f, qc,
                                                   qd, qc1, qd1, t_sum, t_diff, lc_diff)
        work[ACC + j] += oa
        work[ACC + STRIDE + j] += od
        work[ACC + 2 * STRIDE + j] += ow
        work[ACC + 3 * STRIDE + j] += ob
        work[ACC + 4 * STRIDE + j] += oc
        work[GRAD + j] = work[GRAD_SCALE + j] * of
        work[PC + j] = mc + 0.5 * d * qc1
        work[PD + j] = md + 0.5 * d * qd1
        work[QC + j] = qc1
        work[QD + j] = qd1 + eps * work[NUDGE + j]


@njit(cache=True, error_model="numpy", inline="always")
def _far_apart(work, n):
    """Whether some pair's mid positions of the next step are more than FAR apart (in w·m)."""
    count = 0
    for j in range(n):
        w, d = work[PAR + 2 * STRIDE + j], work[PAR + STRIDE + j]
        count += abs(w * (work[PD + j] + 0.5 * d * work[QD + j])) > FAR  # (a sum: it vectorises)
    return count > 0


@njit(cache=True, error_model="numpy")
def _lane_blocks(nb, npos):
    """(first row, end row, first oscillator, end oscillator) of each block of at most BLOCK lanes."""
    blocks = []
    if npos >= BLOCK:
        for bi in range(nb):
            for p0 in range(0, npos, BLOCK):
                blocks.append((bi, bi + 1, p0, min(p0 + BLOCK, npos)))
    else:
        rows = BLOCK // npos
        for bi in range(0, nb, rows):
            blocks.append((bi, min(bi + rows, nb), 0, npos))
    return blocks


@njit(cache=True, error_model="numpy", nogil=True)
def echo_chunk(kind, params, forcing, nudges, nudge_before, eps, state, acc, grad_forcing):
    """The ±ε echoes of RHEL (PAPER.md §2, Alg. 1) over one chunk of time, latest step first.

    The pair is carried as centre and half-difference, state = (ϕ_c, ϕ_d, π_c, π_d) each (B, P):
    x± = x_c ± x_d. The drifts are linear and the kick's difference has closed forms, so this is the
    same two trajectories without the cancellation of subtracting two nearly equal states — a nudge
    far below the state's last bit still counts. After every step the momentum half-difference gets
    ε·g of the step before it (within the chunk from `nudges`, after the chunk's first step from
    `nudge_before`, zero at the very start of the sequence). Adds the observables' differences
    (echo⁺ − echo⁻, rows in PARAM_NAMES order) to acc (5, B, P) and writes grad_forcing, already
    scaled by −δ/2ε. state and acc carry over from chunk to chunk. A step runs the far-apart
    formulas only when some pair needs them (rare: the half-difference is of order ε·g).
    """
    # Each kind gets its own copy of the loops with `kind` a constant, so they hold no branch on it.
    if kind == LINEAR:
        _echo_blocks(LINEAR, params, forcing, nudges, nudge_before, eps, state, acc, grad_forcing)
    else:
        _echo_blocks(NONLINEAR, params, forcing, nudges, nudge_before, eps, state, acc, grad_forcing)


@njit(cache=True, error_model="numpy", inline="always")
def _echo_blocks(kind, params, forcing, nudges, nudge_before, eps, state, acc, grad_forcing):
    nb, nt, npos = forcing.shape
    work = np.empty(ROWS * STRIDE)  # one flat array, rows at constant offsets: provably disjoint
    for b0, b1, p0, p1 in _lane_blocks(nb, npos):
        n = (b1 - b0) * (p1 - p0)
        j = 0
        for bi in range(b0, b1):
            for p in range(p0, p1):
                for r in range(4):
                    work[PC + r * STRIDE + j] = state[r, bi, p]
                for r in range(5):
                    work[ACC + r * STRIDE + j] = acc[r, bi, p]
                    work[PAR + r * STRIDE + j] = params[r, p]
                work[INV_W + j] = 1.0 / params[2, p]
                work[GRAD_SCALE + j] = -params[1, p] / (2.0 * eps)
                j += 1
        for k in range(nt - 1, -1, -1):
            j = 0
            for bi in range(b0, b1):
                for p in range(p0, p1):
                    work[F + j] = forcing[bi, k, p]
                    work[NUDGE + j] = nudges[bi, k - 1, p] if k > 0 else nudge_before[bi, p]
                    j += 1
            if kind == NONLINEAR and _far_apart(work, n):
                _echo_lanes(kind, work, n, eps, True)
            else:
                _echo_lanes(kind, work, n, eps, False)
            j = 0
            for bi in range(b0, b1):
                for p in range(p0, p1):
                    grad_forcing[bi, k, p] = work[GRAD + j]
                    j += 1
        j = 0
        for bi in range(b0, b1):
            for p in range(p0, p1):
                for r in range(4):
                    state[r, bi, p] = work[PC + r * STRIDE + j]
                for r in range(5):
                    acc[r, bi, p] = work[ACC + r * STRIDE + j]
                j += 1


@njit(cache=True, error_model="numpy", nogil=True)
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
                    t = vecmath.tanh(w[p] * m + f + b[p])[0]
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
