"""The linear forward and echo in float64 lanes: ``kernels``' integer leapfrog, bit for bit, in fewer instructions.

Why. ``kernels.forward`` spends most of a linear step on int64 bookkeeping: 64-bit multiplies, the
four-instruction round-shift R, a counted clamp per update. Up to 27-bit words every quantity of the
step is an integer below 2^53 — codes below 2^26, a product of two codes plus a half below 2^52 — so
float64 holds it exactly, and the rescale-and-round of a product is one fused multiply-add and a
truncation. With y ≥ 0 (the parameters a, δ, h = δ/2 of a linear bank, with 2^−s folded in exactly)
the product's sign is x's, so

    R(x·y, s) = trunc(fma(x, y·2^−s, copysign(½, x)))

which is ``fixed.round_shift`` (ties away from zero, odd-symmetric) as long as x·y·2^−s ± ½ is exact:
at most 2·(n − 1) + 1 ≤ 53 significant bits for in-range operands. (Forming the product first and then
adding copysign(½, x·y) gives the same bits with one instruction more per product.)

Clamps (forward). A linear step clamps m, F, π' and ϕ' (and the input sample); where none would fire,
clamping is the identity. So a batch row runs CHUNK steps at a time without clamps, keeping per lane
the largest code² + F² + π'² + m'², and commits the chunk only if that stayed ≤ lim² and the state is
not NaN (NaN sticks once a NaN or an infinity entered). Otherwise the integer kernel runs the chunk
again from its start, clamping and counting, and keeps the row until a chunk needs no clamp. A clean
chunk is exactly what the integer kernel computes, with nothing to count; a sum of squares above lim²
whose terms are all below it is a false alarm that costs a rerun, never a wrong bit. ϕ' needs no
check of its own: ϕ' = m + r and m' = ϕ' + r give ϕ' = (m + m')/2.

The echo. The same holds for the ±ε pair (its clamps: the nudged π, m, F, π', ϕ', the nudge and input
samples, each checked as |x| ≤ lim), and for its accumulators: with acc_shift 0 (words ≤ 31 bits) a
step adds x⁺y⁺ − x⁻y⁻ exactly, formed as (x⁺ − x⁻)(x⁺ + x⁻) or f·(m⁺ − m⁻) — exact, their values being
below 2^53 — and added to int64 sums. A chunk runs here only if no accumulator can reach ±ACC_LIMIT
within it; nudges (gain ε·2^S, not a power of two) are quantised the careful way.

Carrying m (forward only: the echo's nudge changes π between the two drifts). A step's closing drift
ϕ' = m + R(δπ', h) and the next step's opening drift m_next = ϕ' + R(δπ', h) share their product, so
the lanes carry m and π and form three products a step instead of four; the row's ϕ is m − R(δπ, h) at
the end of a chunk (exact when clean).

Streams. Forcing samples become codes as ``fixed.quantize_value`` makes them (gain 2^S, a power of
two, so the scaling is exact): a float32 sample has 24 significant bits, so s + copysign(½, s) is exact
or, for |s| < 2^−30, cannot reach 1; a float64 sample goes through floor and the remainder.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

from .fixed import ACC_LIMIT, FormatConfig
from .kernels import A_SHIFT, DELTA_SHIFT, FM, H_SHIFT, MM, PP, echo_chunk, forward

# Codes below 2^26 and products of two plus a half below 2^53: float64 holds every step exactly.
FLOAT_EXACT_WORD_BITS = 27
# Time steps a batch row runs between checks: what a value leaving the word costs to redo.
CHUNK = 512


def applies(config: FormatConfig, kind: str, param_codes: np.ndarray) -> bool:
    """Whether this bank runs its forward and echo here: linear, words of at most 27 bits, and a ≥ 0,
    δ ≥ 0 (as the linear HRU's relu and sigmoid make them) so that a product's sign is the state's."""
    return (kind == "linear" and config.word_bits <= FLOAT_EXACT_WORD_BITS
            and bool((param_codes[:2] >= 0).all()))


def lane_params(param_codes: np.ndarray, shifts: tuple) -> np.ndarray:
    """(a·2^−a_frac, δ·2^−δ_frac, δ·2^−(δ_frac+1)) per oscillator, (3, P) float64: R's shifts folded in."""
    a, d = param_codes[0].astype(np.float64), param_codes[1].astype(np.float64)
    return np.stack([np.ldexp(a, -shifts[A_SHIFT]), np.ldexp(d, -shifts[DELTA_SHIFT]),
                     np.ldexp(d, -shifts[H_SHIFT])])


@njit(cache=True, inline="always")
def _round_product(x, y):
    """R(x·y) for y ≥ 0 (a parameter with 2^−s folded in, or the gain): the product's sign is x's, so
    x·y + copysign(½, x) is one FMA — exact, its value being below 2^53 — then truncated."""
    return np.trunc(x * y + math.copysign(0.5, x))


@njit(cache=True, inline="always")
def _careful_code(x, gain):
    """Q(x·gain) unclamped, as ``fixed.quantize_value`` forms it: floor and the remainder, no ``+ ½``."""
    scaled = x * gain
    magnitude = abs(scaled)
    whole = np.floor(magnitude)
    return math.copysign(whole + (magnitude - whole >= 0.5), scaled)


def lane_code(x, gain):
    """A forcing sample as an unclamped code, in float64 (gain a power of two)."""


@overload(lane_code, jit_options={"cache": True}, inline="always")
def _lane_code(x, gain):
    if isinstance(x, types.Integer):
        return lambda x, gain: np.float64(x)
    if x == types.float32:  # x·2^S exact with 24 significant bits: s + ½ is exact (module docstring)
        return lambda x, gain: _round_product(np.float64(x), gain)
    return lambda x, gain: _careful_code(x, gain)  # 53 significant bits: s + ½ could round up


def nudge_code(x, gain):
    """A nudge sample as an unclamped code, in float64 (any gain: ε·2^S)."""


@overload(nudge_code, jit_options={"cache": True})
def _nudge_code(x, gain):
    if isinstance(x, types.Integer):
        return lambda x, gain: np.float64(x)
    return lambda x, gain: _careful_code(x, gain)


def lane_output(value, lsb, out):
    """A position code as the output stream ``out`` holds it: int64, or scaled to its float units."""


@overload(lane_output, jit_options={"cache": True})
def _lane_output(value, lsb, out):
    if isinstance(out.dtype, types.Integer):
        return lambda value, lsb, out: np.int64(value)
    return lambda value, lsb, out: value * lsb


# fastmath "contract" only: it lets LLVM fuse x·y + z into one FMA, which rounds nothing here because
# every product is exact; nothing is reassociated and NaN / infinity keep their meaning.
@njit(cache=True, fastmath={"contract"})
def _fast_chunk(forcing, phi, pi, lanes, lim, positions, gain, lsb, m, momenta, peak):
    """Steps one batch row over forcing (K, P) from codes (ϕ, π) (P,), unclamped, writing ``positions``.

    If every value stayed in the word it commits the end state to (ϕ, π) and returns True; otherwise it
    returns False and leaves (ϕ, π) as they were (``positions`` then holds garbage to be overwritten).
    m, momenta, peak: (P,) float64 scratch.
    """
    a, d, h = lanes[0], lanes[1], lanes[2]
    npos = phi.shape[0]
    for p in range(npos):
        momenta[p] = pi[p]
        m[p] = phi[p] + _round_product(momenta[p], h[p])
        peak[p] = m[p] * m[p]
    for k in range(forcing.shape[0]):
        for p in range(npos):
            code = lane_code(forcing[k, p], gain)
            force = _round_product(m[p], a[p]) - code
            momentum = momenta[p] - _round_product(force, d[p])
            half = _round_product(momentum, h[p])
            position = m[p] + half
            mid = position + half
            m[p] = mid
            momenta[p] = momentum
            positions[k, p] = lane_output(position, lsb, positions)
            peak[p] = max(peak[p], code * code + force * force + momentum * momentum + mid * mid)
    limit_squared = float(lim) * float(lim)
    for p in range(npos):
        if not peak[p] <= limit_squared or m[p] != m[p] or momenta[p] != momenta[p]:
            return False
    for p in range(npos):
        pi[p] = np.int64(momenta[p])
        phi[p] = np.int64(m[p] - _round_product(momenta[p], h[p]))
    return True


@njit(cache=True, inline="always")
def _one_row(x):
    """A batch row's (K, P) slice as a (1, K, P) array, C-contiguous, for the integer kernels."""
    return x.reshape((1, x.shape[0], x.shape[1]))


@njit(cache=True)
def linear_forward(forcing, phi0, pi0, params, shifts, lim, lanes, positions, conversion, stream_counts):
    """``kernels.forward`` for a linear bank (same arguments and results, bar the nonlinear tables; ``lanes``
    from ``lane_params``), CHUNK steps of a batch row at a time in float64 lanes. A chunk in which a value
    left the word is run again by the integer kernel from the chunk's start; after a chunk that clamped,
    the row stays with the integer kernel until a chunk runs without a clamp."""
    nb, nt, npos = forcing.shape
    gain, _, lsb = conversion
    phi = phi0.copy()
    pi = pi0.copy()
    counters = np.zeros(4, dtype=np.int64)
    m, momenta, peak = np.empty(npos), np.empty(npos), np.empty(npos)
    no_table = np.zeros(1, dtype=np.int64)
    for bi in range(nb):
        clamping = False
        for start in range(0, nt, CHUNK):
            stop = min(start + CHUNK, nt)
            chunk, out = forcing[bi, start:stop], positions[bi, start:stop]
            if clamping or not _fast_chunk(chunk, phi[bi], pi[bi], lanes, lim, out, gain, lsb, m, momenta, peak):
                row_phi, row_pi, row_counters = forward(_one_row(chunk), phi[bi:bi + 1], pi[bi:bi + 1], params, False,
                                                        shifts, lim, no_table, no_table, _one_row(out), conversion,
                                                        stream_counts)
                phi[bi], pi[bi] = row_phi[0], row_pi[0]
                counters += row_counters
                clamping = row_counters.sum() > 0
    return phi, pi, counters


@njit(cache=True, fastmath={"contract"})
def _echo_row(forcing, nudges, out, a, d, h, gain, nudge_gain, obs_scale, phi_p, phi_m, pi_p, pi_m, mm, pp, fm, peak):
    """One echo step of the pair over a row of oscillators (unclamped; ``_fast_echo_chunk``)."""
    for p in range(phi_p.shape[0]):
        q = nudge_code(nudges[p], nudge_gain)
        f = lane_code(forcing[p], gain)
        before_p, before_m = pi_p[p] + q, pi_m[p] - q
        mid_p = phi_p[p] + _round_product(before_p, h[p])
        mid_m = phi_m[p] + _round_product(before_m, h[p])
        force_p = _round_product(mid_p, a[p]) - f
        force_m = _round_product(mid_m, a[p]) - f
        after_p = before_p - _round_product(force_p, d[p])
        after_m = before_m - _round_product(force_m, d[p])
        end_p = mid_p + _round_product(after_p, h[p])
        end_m = mid_m + _round_product(after_m, h[p])
        phi_p[p], phi_m[p], pi_p[p], pi_m[p] = end_p, end_m, after_p, after_m
        mid_difference = mid_p - mid_m
        mm[p] += np.int64(mid_difference * (mid_p + mid_m))
        pp[p] += np.int64((before_p - before_m) * (before_p + before_m)) \
            + np.int64((after_p - after_m) * (after_p + after_m))
        fm[p] += np.int64(f * mid_difference)
        out[p] = lane_output(mid_difference, obs_scale[p], out)
        peak[p] = max(peak[p], abs(q), abs(f), abs(before_p), abs(before_m), abs(mid_p), abs(mid_m),
                      abs(force_p), abs(force_m), abs(after_p), abs(after_m), abs(end_p), abs(end_m))


@njit(cache=True)
def _fast_echo_chunk(forcing, nudges, phi, pi, acc, lanes, lim, out, conversion, obs_scale, scratch):
    """The ±ε echo pair of one batch row over one chunk (K, P), latest step first, unclamped.

    (ϕ, π) (2, P) codes, pair index 0 the +ε echo; ``acc`` (6, P) int64. Commits state and accumulators
    and returns True if every value stayed in the word; otherwise returns False having changed neither
    (``out`` then holds garbage to be overwritten). ``scratch`` from ``_echo_scratch``. With acc_shift 0
    (words ≤ 31 bits) an accumulator adds x⁺y⁺ − x⁻y⁻ exactly; a difference of squares is formed as
    (x⁺ − x⁻)(x⁺ + x⁻), exact since its value is below 2^53. The steps are calls of ``_echo_row``: a
    loop nest running time backwards over 2-D rows did not vectorise.
    """
    gain, nudge_gain, _ = conversion
    phi_p, phi_m, pi_p, pi_m, mm, pp, fm, peak = scratch
    npos = phi.shape[1]
    for p in range(npos):
        phi_p[p], phi_m[p], pi_p[p], pi_m[p] = phi[0, p], phi[1, p], pi[0, p], pi[1, p]
        mm[p] = pp[p] = fm[p] = 0
        peak[p] = 0.0
    for k in range(forcing.shape[0] - 1, -1, -1):
        _echo_row(forcing[k], nudges[k], out[k], lanes[0], lanes[1], lanes[2], gain, nudge_gain, obs_scale,
                  phi_p, phi_m, pi_p, pi_m, mm, pp, fm, peak)
    for p in range(npos):
        total = phi_p[p] + phi_m[p] + pi_p[p] + pi_m[p]
        if not peak[p] <= lim or total != total:  # a NaN that entered sticks in the state
            return False
    for p in range(npos):
        phi[0, p], phi[1, p] = np.int64(phi_p[p]), np.int64(phi_m[p])
        pi[0, p], pi[1, p] = np.int64(pi_p[p]), np.int64(pi_m[p])
        acc[MM, p] += mm[p]
        acc[PP, p] += pp[p]
        acc[FM, p] += fm[p]
    return True


@njit(cache=True)
def _echo_scratch(npos):
    """Separate arrays, not rows of one: LLVM vectorises a loop only over arrays it can tell apart."""
    return (np.empty(npos), np.empty(npos), np.empty(npos), np.empty(npos), np.empty(npos, dtype=np.int64),
            np.empty(npos, dtype=np.int64), np.empty(npos, dtype=np.int64), np.empty(npos))


@njit(cache=True)
def _accumulators_have_room(acc, steps, lim):
    """Whether no accumulator can reach ±ACC_LIMIT within ``steps`` clean steps (each adds < 2·lim²)."""
    room = ACC_LIMIT - steps * 2 * lim * lim
    for row in (MM, PP, FM):
        for p in range(acc.shape[1]):
            if abs(acc[row, p]) > room:
                return False
    return True


@njit(cache=True)
def linear_echo(forcing, nudges, phi, pi, acc, params, shifts, lim, lanes, forcing_obs, counters, conversion,
                obs_scale, stream_counts):
    """``kernels.echo_chunk`` for a linear bank (same arguments, bar the nonlinear tables; ``lanes`` from
    ``lane_params``), CHUNK steps of a batch row at a time in float64 lanes, latest chunk first. A chunk
    in which a value left the word, or whose accumulators could reach their limit, is run by the integer
    kernel from the chunk's start; after a chunk that clamped, the row stays with it until a chunk runs
    without a clamp."""
    nb, nt, npos = forcing.shape
    scratch = _echo_scratch(npos)
    no_table = np.zeros(1, dtype=np.int64)
    row_counters = np.zeros(4, dtype=np.int64)
    for bi in range(nb):
        clamping = False
        for stop in range(nt, 0, -CHUNK):
            start = max(stop - CHUNK, 0)
            chunk, chunk_nudges, out = forcing[bi, start:stop], nudges[bi, start:stop], forcing_obs[bi, start:stop]
            if (clamping or not _accumulators_have_room(acc[bi], stop - start, lim)
                    or not _fast_echo_chunk(chunk, chunk_nudges, phi[bi], pi[bi], acc[bi], lanes, lim, out,
                                            conversion, obs_scale, scratch)):
                row_counters[:] = 0
                echo_chunk(_one_row(chunk), _one_row(chunk_nudges), phi[bi:bi + 1], pi[bi:bi + 1], acc[bi:bi + 1],
                           params, False, shifts, lim, no_table, no_table, _one_row(out), row_counters, conversion,
                           obs_scale, stream_counts)
                counters += row_counters
                clamping = row_counters.sum() > 0
