"""The integer leapfrog and the ±ε echo of the fixed-point oscillator bank (numba, int64).

Normative definitions (formats and R, clamp in ``fixed``; tanh T and log cosh G in ``tables``).
Per oscillator: a, δ, w, c, b codes; h = δ read with one more fractional bit, so h = δ/2 exactly.
One step consuming forcing f (all additions exact in int64, then clamped to the word, counted)::

    m   = clamp(ϕ + R(δ·π, δ_frac + 1))                              drift  (state)
    z   = clamp(R(w·m, w_frac) + f + b)                              nonlinear only (preact)
    F   = clamp(R(a·m, a_frac) − f)                                   linear        (force)
    F   = clamp(R(a·m, a_frac) + R(c·T(z), c_frac + U − S))           nonlinear     (force)
    π'  = clamp(π − R(δ·F, δ_frac))                                   kick   (state)
    ϕ'  = clamp(m + R(δ·π', δ_frac + 1))                              drift  (state)

Reversibility. Each line is a shear x += g(y) with g depending only on the other variable, and
R(−x) = −R(x). Stepping from (ϕ', −π') with the same f: m* = ϕ' − R(hπ') = m; π* = −π' − R(δF(m)) = −π;
ϕ* = m − R(hπ) = ϕ. So the flipped step undoes the step exactly, and a run replayed backwards from the
flipped end state returns the flipped start state bit for bit — as long as no *state* clamp fired
(clamping F or z keeps the shears exact; only a clamped state update loses information).

Echo (PAPER.md §2). From the forward's end state (ϕ, π) and integer nudges q (B, L, P), two echoes,
σ = ±1: ϕ_e = ϕ, π_e = clamp(−π + σ·q[L−1]); then for k = L−1 … 0: one step consuming f[k], and if
k > 0, π_e = clamp(π_e + σ·q[k−1]). The −ε echo's nudge is exactly −q. At each step the observables
at the half step (m, z, π before, π' after) are formed per echo, and their difference (+ minus −)
accumulated per (batch, oscillator) into int64 accumulators, each clamped to ±2^62 (counted).
The product accumulators add each step's difference as R(x⁺y⁺ − x⁻y⁻, g), g = ``acc_shift`` (0 up to
31-bit words, 2 at 32 bits, so a step's term stays below 2^62):

    MM: m²  (frac 2S − g)     PP: π² + π'²  (frac 2S − g)     FM: f·m  (frac 2S − g, linear only)
    T:  T(z) (frac U)     TM: T(z)·m  (frac U + S − g)     LC: G(z)  (frac U)       (nonlinear only)

and the per-step forcing observable difference, at forward index k: m (frac S, linear) or T(z)
(frac U, nonlinear). Constant per-oscillator factors (a, c, 1/w, δ, 1/2ε) are applied by the host when
it converts the accumulators to gradients (``core``): Σ_k c·x_k/w = (c/w)·Σ_k x_k exactly.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import overload

from .fixed import ACC_LIMIT, FormatConfig, clamp, quantize_value, round_shift
from .tables import integrate_segment, interpolate, segment_of, segment_values

# Saturation counters the kernels keep (the host adds param / input / nudge).
STATE, FORCE, PREACT, ACCUMULATOR = range(4)
KERNEL_COUNTERS = ("state", "force", "preact", "accumulator")
# What converting float streams counts (``stream_counts``): saturated forcing, saturated nudges, NaNs.
INPUT_SATURATED, NUDGE_SATURATED, NAN_SAMPLES = range(3)
# Accumulator rows of the echo.
MM, PP, FM, T, TM, LC = range(6)
ACCUMULATORS = ("mm", "pp", "fm", "t", "tm", "lc")
# Scratch rows of one step: mid position m, pre-activation z, T(z), G(z) (echo only), then the five
# rows of the table look-ups.
MID, PREACT_Z, TANH, LOGCOSH, LOOKUP = range(5)
SCRATCH_ROWS = LOOKUP + 5
# The right-shifts of the product rescales, in the order of ``product_shifts``.
H_SHIFT, DELTA_SHIFT, A_SHIFT, W_SHIFT, CT_SHIFT, SEG_SHIFT, G_SHIFT, ACC_SHIFT = range(8)


def product_shifts(config: FormatConfig, seg_shift: int) -> tuple:
    """(h, δ, a, w, c·T, table segment, G's final, accumulator) right-shifts for the kernels."""
    return (config.delta_frac + 1, config.delta_frac, config.a_frac, config.w_frac,
            config.c_frac + config.unit_frac - config.state_frac, seg_shift, config.state_frac,
            config.acc_shift)

# ---- streams: integer codes, or floats converted on the fly ------------------------------------------
# The kernels take the forcing and nudge streams either as integer codes (the integer API, what the
# hardware receives) or as floats, quantised sample by sample with exactly ``fixed``'s Q (forcing at
# gain 2^S, nudges at ε·2^S); their outputs — positions, the forcing observable — are integer codes or,
# when the output array is float, the codes times a scale. The float API so makes one pass over each
# stream instead of quantise → integer array → kernel → integer array → dequantise.


def stream_code(x, gain, lim):
    """A stream sample as a state code: (code, saturated, NaN)."""


@overload(stream_code, jit_options={"cache": True})
def _stream_code(x, gain, lim):
    if isinstance(x, types.Integer):
        return lambda x, gain, lim: (np.int64(x), False, False)
    return lambda x, gain, lim: quantize_value(x, gain, lim)


def store(out, p, code, scale):
    """out[p] = code, or code·scale into a float array."""


@overload(store, jit_options={"cache": True})
def _store(out, p, code, scale):
    if isinstance(out.dtype, types.Integer):
        def put_code(out, p, code, scale):
            out[p] = code
        return put_code

    def put_value(out, p, code, scale):
        out[p] = code * scale
    return put_value


@njit(cache=True)
def _load_row(dst, src, gain, lim, stream_counts, saturated_slot):
    """dst = the state codes of stream row src (int64); counts saturated samples and NaNs."""
    saturated = nans = 0
    for p in range(src.shape[0]):
        dst[p], clamped, nan = stream_code(src[p], gain, lim)
        saturated += clamped
        nans += nan
    stream_counts[saturated_slot] += saturated
    stream_counts[NAN_SAMPLES] += nans


@njit(cache=True)
def _emit_row(dst, codes, scale):
    for p in range(codes.shape[0]):
        store(dst, p, codes[p], scale)


# The loops below run over one row of oscillators at a time, the way hardware pipelines a bank: the
# arithmetic loops vectorise, the table look-ups get loops of their own. Each loop writes arrays that are
# its own arguments: rows of one 2-D array indexed in one loop share a base pointer, LLVM cannot prove
# them disjoint, and the loop would not vectorise. The echo pair runs as one bank of 2P lanes (+ε lanes,
# then −ε lanes) driven by the same forcing.


@njit(cache=True)
def _copy(dst, src):
    for p in range(src.shape[0]):
        dst[p] = src[p]


@njit(cache=True, inline="always")
def _saturate(raw, lim):
    """(clamp(raw, lim), whether it clamped)."""
    value = clamp(raw, lim)
    return value, value != raw


@njit(cache=True, inline="always")
def _drift_lane(phi, pi, d, h_shift, lim):
    """clamp(ϕ + R(δ·π, δ_frac + 1)) and whether it clamped."""
    return _saturate(phi + round_shift(d * pi, h_shift), lim)


@njit(cache=True, inline="always")
def _kick_drift_lane(m, pi, coupling, a, d, shifts, lim):
    """F = clamp(R(a·m, a_frac) + coupling); π' = clamp(π − R(δ·F, δ_frac)); ϕ' = clamp(m + R(δ·π', δ_frac + 1)).

    Returns (ϕ', π', force clamps, state clamps).
    """
    force, force_clamped = _saturate(round_shift(a * m, shifts[A_SHIFT]) + coupling, lim)
    pi, pi_clamped = _saturate(pi - round_shift(d * force, shifts[DELTA_SHIFT]), lim)
    phi, phi_clamped = _drift_lane(m, pi, d, shifts[H_SHIFT], lim)
    return phi, pi, force_clamped, pi_clamped + phi_clamped


@njit(cache=True)
def _drift(phi, pi, d, h_shift, lim, out):
    """out = clamp(ϕ + R(δ·π, δ_frac + 1)); returns the number of clamps."""
    n = 0
    for p in range(phi.shape[0]):
        out[p], clamped = _drift_lane(phi[p], pi[p], d[p], h_shift, lim)
        n += clamped
    return n


@njit(cache=True)
def _linear_row(phi, pi, f, a, d, shifts, lim, out, gain, lsb, stream_counts):
    """One whole linear step of a row in one loop (F = R(a·m) − f), (ϕ, π) in place, out = ϕ'.

    f and out are stream rows (codes, or floats converted on the fly). Returns (force clamps, state
    clamps). The forward's hot loop: one pass over memory per step.
    """
    n_force = n_state = n_input = n_nan = 0
    for p in range(phi.shape[0]):
        code, input_clamped, nan = stream_code(f[p], gain, lim)
        m, m_clamped = _drift_lane(phi[p], pi[p], d[p], shifts[H_SHIFT], lim)
        phi_new, pi_new, force_clamped, state_clamps = _kick_drift_lane(m, pi[p], -code, a[p], d[p], shifts, lim)
        phi[p], pi[p] = phi_new, pi_new
        store(out, p, phi_new, lsb)
        n_force += force_clamped
        n_state += m_clamped + state_clamps
        n_input += input_clamped
        n_nan += nan
    stream_counts[INPUT_SATURATED] += n_input
    stream_counts[NAN_SAMPLES] += n_nan
    return n_force, n_state


@njit(cache=True)
def _preact(m, f, w, b, w_shift, lim, z):
    """z = clamp(R(w·m, w_frac) + f + b); returns the number of clamps."""
    n = 0
    for p in range(m.shape[0]):
        raw = round_shift(w[p] * m[p], w_shift) + f[p] + b[p]
        z[p] = clamp(raw, lim)
        n += z[p] != raw
    return n


# The table look-ups of a row, split so that only the table reads are scalar: a vectorised loop finds
# each lane's segment, a scalar loop reads the tables (no loop that stores to an array can gather from
# another array LLVM cannot prove distinct), vectorised loops interpolate and integrate. Bit for bit
# ``tables.odd_lookup`` and ``tables.even_integral``.


@njit(cache=True)
def _segments_row(z, seg_shift, last, index, offset):
    for p in range(z.shape[0]):
        index[p], offset[p] = segment_of(abs(z[p]), seg_shift, last)


@njit(cache=True)
def _table_reads_row(index, values, low, rise):
    for p in range(index.shape[0]):
        low[p], rise[p] = segment_values(index[p], values)


@njit(cache=True)
def _integral_reads_row(index, integral, base):
    for p in range(index.shape[0]):
        base[p] = integral[np.uint64(index[p])]


@njit(cache=True)
def _interpolate_row(z, offset, low, rise, seg_shift, t):
    """t = sign(z)·(T[i] + R(d·r, s))."""
    for p in range(z.shape[0]):
        sign = z[p] >> 63
        y = interpolate(offset[p], low[p], rise[p], seg_shift)
        t[p] = (y ^ sign) - sign


@njit(cache=True)
def _integrate_row(offset, low, rise, base, seg_shift, in_frac, g):
    for p in range(offset.shape[0]):
        g[p] = integrate_segment(base[p], offset[p], low[p], rise[p], seg_shift, in_frac)


@njit(cache=True)
def _tanh_rows(z, t, logcosh, values, integral, seg_shift, in_frac, lookup, with_logcosh):
    """t = T(z) and, with_logcosh, logcosh = G(z), for a row; ``lookup`` (5, P) is scratch."""
    index, offset, low, rise, base = lookup[0], lookup[1], lookup[2], lookup[3], lookup[4]
    _segments_row(z, seg_shift, values.shape[0] - 2, index, offset)
    _table_reads_row(index, values, low, rise)
    _interpolate_row(z, offset, low, rise, seg_shift, t)
    if with_logcosh:
        _integral_reads_row(index, integral, base)
        _integrate_row(offset, low, rise, base, seg_shift, in_frac, logcosh)


@njit(cache=True)
def _kick_drift(phi, pi, m, f, t, a, d, c, nonlinear, shifts, lim):
    """F = clamp(R(a·m, a_frac) − f) or clamp(R(a·m, a_frac) + R(c·T(z), c_frac + U − S));
    π ← clamp(π − R(δ·F, δ_frac)); ϕ ← clamp(m + R(δ·π, δ_frac + 1)). In place.

    Returns (force clamps, state clamps).
    """
    n_force = n_state = 0
    for p in range(phi.shape[0]):
        coupling = round_shift(c[p] * t[p], shifts[CT_SHIFT]) if nonlinear else -f[p]
        phi[p], pi[p], force_clamped, state_clamps = _kick_drift_lane(m[p], pi[p], coupling, a[p], d[p], shifts,
                                                                      lim)
        n_force += force_clamped
        n_state += state_clamps
    return n_force, n_state


@njit(cache=True)
def _step(phi, pi, f, params, nonlinear, shifts, lim, tanh_values, tanh_integral, scratch, counters,
          with_logcosh):
    """One leapfrog step of a row of oscillators, (ϕ, π) in place; scratch keeps m, z, T(z), G(z)."""
    a, d, w, b, c = params[0], params[1], params[2], params[3], params[4]
    m, z, t = scratch[MID], scratch[PREACT_Z], scratch[TANH]
    counters[STATE] += _drift(phi, pi, d, shifts[H_SHIFT], lim, m)
    if nonlinear:
        counters[PREACT] += _preact(m, f, w, b, shifts[W_SHIFT], lim, z)
        _tanh_rows(z, t, scratch[LOGCOSH], tanh_values, tanh_integral, shifts[SEG_SHIFT], shifts[G_SHIFT],
                   scratch[LOOKUP:], with_logcosh)
    n_force, n_state = _kick_drift(phi, pi, m, f, t, a, d, c, nonlinear, shifts, lim)
    counters[FORCE] += n_force
    counters[STATE] += n_state


@njit(cache=True)
def forward(forcing, phi0, pi0, params, nonlinear, shifts, lim, tanh_values, tanh_integral, positions,
            conversion, stream_counts):
    """Integrate every lane over forcing (B, L, P) from (phi0, pi0) (B, P); params (5, P) codes.

    ``shifts`` from ``product_shifts``. Fills ``positions``
    (B, L, P) with ϕ after each step (outputs are allocated by the caller: numpy gives big arrays huge
    pages, numba's allocator does not). Streams as the section above says; ``conversion`` is
    (forcing gain, nudge gain, state LSB), ``stream_counts`` (3,) is added to. Returns (ϕ, π, counters (4,)).
    """
    nb, nt, npos = forcing.shape
    gain, _, lsb = conversion
    phi = phi0.copy()
    pi = pi0.copy()
    scratch = np.zeros((SCRATCH_ROWS, npos), dtype=np.int64)
    f = np.empty(npos, dtype=np.int64)
    counters = np.zeros(4, dtype=np.int64)
    for bi in range(nb):
        for k in range(nt):
            if nonlinear:
                _load_row(f, forcing[bi, k], gain, lim, stream_counts, INPUT_SATURATED)
                _step(phi[bi], pi[bi], f, params, nonlinear, shifts, lim, tanh_values, tanh_integral,
                      scratch, counters, False)
                _emit_row(positions[bi, k], phi[bi], lsb)
            else:
                n_force, n_state = _linear_row(phi[bi], pi[bi], forcing[bi, k], params[0], params[1], shifts, lim,
                                               positions[bi, k], gain, lsb, stream_counts)
                counters[FORCE] += n_force
                counters[STATE] += n_state
    return phi, pi, counters


@njit(cache=True)
def _nudge(pi_plus, pi_minus, q, lim):
    """π⁺ += q, π⁻ −= q, clamped; returns the number of clamps."""
    n = 0
    for p in range(q.shape[0]):
        plus, minus = pi_plus[p] + q[p], pi_minus[p] - q[p]
        pi_plus[p] = clamp(plus, lim)
        pi_minus[p] = clamp(minus, lim)
        n += (pi_plus[p] != plus) + (pi_minus[p] != minus)
    return n


@njit(cache=True)
def _difference(out, plus, minus, scale):
    """out = plus − minus, as codes or (a float out) times the per-lane scale."""
    for p in range(out.shape[0]):
        store(out, p, plus[p] - minus[p], scale[p])


@njit(cache=True)
def _accumulate(acc, plus, minus):
    """acc += plus − minus, clamped to ±ACC_LIMIT; returns the number of clamps."""
    n = 0
    for p in range(acc.shape[0]):
        raw = acc[p] + (plus[p] - minus[p])
        acc[p] = clamp(raw, ACC_LIMIT)
        n += acc[p] != raw
    return n


@njit(cache=True)
def _accumulate_products(acc, x_plus, y_plus, x_minus, y_minus, shift):
    """acc += R(x⁺·y⁺ − x⁻·y⁻, shift), clamped to ±ACC_LIMIT; returns the number of clamps."""
    n = 0
    for p in range(acc.shape[0]):
        raw = acc[p] + round_shift(x_plus[p] * y_plus[p] - x_minus[p] * y_minus[p], shift)
        acc[p] = clamp(raw, ACC_LIMIT)
        n += acc[p] != raw
    return n


@njit(cache=True)
def _observe(scratch, pi_before, pi_after, f, nonlinear, acc_shift, acc, forcing_obs, obs_scale):
    """Accumulate one echo step's half-step observable differences (+ε echo − −ε echo).

    ``scratch`` (4, 2, P) and the momenta (2, P) are the pair's; ``acc`` (6, P) and ``forcing_obs`` (P,)
    the batch element's rows (a float ``forcing_obs`` receives the differences times ``obs_scale``).
    Returns the number of accumulator clamps.
    """
    m_p, m_m = scratch[MID, 0], scratch[MID, 1]
    n = _accumulate_products(acc[MM], m_p, m_p, m_m, m_m, acc_shift)
    n += _accumulate_products(acc[PP], pi_before[0], pi_before[0], pi_before[1], pi_before[1], acc_shift)
    n += _accumulate_products(acc[PP], pi_after[0], pi_after[0], pi_after[1], pi_after[1], acc_shift)
    if not nonlinear:
        n += _accumulate_products(acc[FM], f, m_p, f, m_m, acc_shift)
        _difference(forcing_obs, m_p, m_m, obs_scale)
        return n
    t_p, t_m = scratch[TANH, 0], scratch[TANH, 1]
    n += _accumulate(acc[T], t_p, t_m)
    n += _accumulate_products(acc[TM], t_p, m_p, t_m, m_m, acc_shift)
    n += _accumulate(acc[LC], scratch[LOGCOSH, 0], scratch[LOGCOSH, 1])
    _difference(forcing_obs, t_p, t_m, obs_scale)
    return n


@njit(cache=True)
def echo_chunk(forcing, nudges, phi, pi, acc, params, nonlinear, shifts, lim, tanh_values, tanh_integral,
               forcing_obs, counters, conversion, obs_scale, stream_counts):
    """For k = K−1 … 0: π± ±= q[k], one step of the pair on f[k], accumulate the half-step observables.

    ``phi``, ``pi`` (B, 2, P), ``acc`` (B, 6, P), ``counters`` (4,) and ``stream_counts`` (3,) are
    updated in place; fills ``forcing_obs`` (B, K, P). Streams as ``forward``'s; a float
    ``forcing_obs`` is scaled per oscillator by ``obs_scale`` (P,). The whole-sequence echo is this
    over one chunk (EmulatorCore.echo_int); the streaming device runs it chunk by chunk.
    """
    nb, nt, npos = forcing.shape
    gain, nudge_gain, _ = conversion
    lanes = 2 * npos
    pair_params = np.concatenate((params, params), axis=1)
    pi_before = np.empty((2, npos), dtype=np.int64)
    f = np.empty((2, npos), dtype=np.int64)
    q = np.empty(npos, dtype=np.int64)
    scratch = np.zeros((SCRATCH_ROWS, 2, npos), dtype=np.int64)
    for bi in range(nb):
        phi_b, pi_b = phi[bi], pi[bi]
        for k in range(nt - 1, -1, -1):
            _load_row(q, nudges[bi, k], nudge_gain, lim, stream_counts, NUDGE_SATURATED)
            counters[STATE] += _nudge(pi_b[0], pi_b[1], q, lim)
            _load_row(f[0], forcing[bi, k], gain, lim, stream_counts, INPUT_SATURATED)
            _copy(f[1], f[0])
            _copy(pi_before.reshape(lanes), pi_b.reshape(lanes))
            _step(phi_b.reshape(lanes), pi_b.reshape(lanes), f.reshape(lanes), pair_params, nonlinear, shifts, lim,
                  tanh_values, tanh_integral, scratch.reshape(SCRATCH_ROWS, lanes), counters, True)
            counters[ACCUMULATOR] += _observe(scratch, pi_before, pi_b, f[0], nonlinear, shifts[ACC_SHIFT],
                                              acc[bi], forcing_obs[bi, k], obs_scale)
