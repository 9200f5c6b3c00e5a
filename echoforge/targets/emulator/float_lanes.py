"""The linear forward and echo in float64 lanes: ``kernels``' integer leapfrog, bit for bit, in fewer instructions.

Why. ``kernels.forward`` spends most of a linear step on int64 bookkeeping: 64-bit multiplies, the
four-instruction round-shift R, a counted clamp per update. Up to 27-bit words every quantity of the
step other than a product is an integer below 2^53, so float64 holds it exactly, and the rescale-and-
round of a product is one multiply and one round-to-nearest-even (``rint``), with the ties R sends
away from zero steered there by the parameter itself.

Rounding. A parameter of the linear bank is y = c·2^−s (c ≥ 0 its code: a, δ, or h = δ read with one
more fraction bit). The lanes hold y' = y + 2·ulp(y) (0 when c = 0), and for an in-range integer x

    R(x·c, s) = rint(fl(x·y'))          provided lim·c < 2^49 (PRODUCT_LIMIT)

which is ``fixed.round_shift``: ties away from zero, odd-symmetric. Proof. With z = x·y (exact) and
W = fl(x·y'), W − z = x·2ulp(y) + (rounding of the product) and |W − z| < |x|·y·2^−50 ≤ |x|·c·2^−(s+50)
< 2^−(s+1). A z that is not a tie lies at least 2^−s (s ≥ 1) or ½ (s = 0) from every half-integer, so W
rounds like z. A tie z = k + ½ is a float, and x·y' − z = x·2ulp(y) exceeds ulp(z) ≤ |z|·2^−52 (as
2ulp(y) > y·2^−52), so by monotone rounding W ≥ z + ulp(z) on x's side of z — strictly past the tie,
and less than 2^−(s+1) past it: rint takes it away from zero. A bank with a larger product runs the
integer kernels. A float32 forcing sample is a code the same way: z = x·2^S is exact with 24
significant bits, and W = fl(x·2^S(1 + 2^−50)) moves a tie by |z|·2^−50 > ulp(z) and anything else by
less than |z|·2^−49, while a non-tie below 2^23 is at least |z|·2^−24 (a float32 ulp) from a
half-integer and one above is an integer; past 2^48 the code is beyond every word, whatever its last
bits, and the chunk is run again. A float64 sample goes through floor and the remainder, as
``fixed.quantize_value`` does. (fl and rint round to nearest, even on ties: the floating-point mode
that Python, numpy and torch run in and never change.)

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
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

from .fixed import ACC_LIMIT, FormatConfig
from .kernels import A_SHIFT, DELTA_SHIFT, FM, H_SHIFT, MM, PP, echo_chunk, forward

# Codes below 2^26, sums of two products below 2^53: float64 holds every step's values exactly.
FLOAT_EXACT_WORD_BITS = 27
# lim·c below this for every parameter code c: a product rounds right (module docstring, "Rounding").
PRODUCT_LIMIT = 2 ** 49
# A float32 forcing sample's code: rint(x·2^S·GAIN_BIAS) (module docstring, "Rounding").
GAIN_BIAS = 1.0 + 2.0 ** -50
# Time steps a batch row runs between checks: what a value leaving the word costs to redo.
CHUNK = 512


def applies(config: FormatConfig, kind: str, param_codes: np.ndarray) -> bool:
    """Whether this bank runs its forward and echo here: linear, words of at most 27 bits, a ≥ 0 and
    δ ≥ 0 (as the linear HRU's relu and sigmoid make them), and every product of a state code with a
    parameter below PRODUCT_LIMIT."""
    codes = param_codes[:2]
    return (kind == "linear" and config.word_bits <= FLOAT_EXACT_WORD_BITS and bool((codes >= 0).all())
            and int(codes.max(initial=0)) * config.state.limit < PRODUCT_LIMIT)


def lane_params(param_codes: np.ndarray, shifts: tuple) -> np.ndarray:
    """y' for y = a·2^−a_frac, δ·2^−δ_frac, δ·2^−(δ_frac+1) per oscillator, (3, P) float64: R's shifts
    folded in, and the bias that steers ties (module docstring, "Rounding")."""
    a, d = param_codes[0].astype(np.float64), param_codes[1].astype(np.float64)
    scaled = np.stack([np.ldexp(a, -shifts[A_SHIFT]), np.ldexp(d, -shifts[DELTA_SHIFT]),
                       np.ldexp(d, -shifts[H_SHIFT])])
    return np.where(scaled > 0, np.nextafter(np.nextafter(scaled, np.inf), np.inf), 0.0)


@njit(cache=True, inline="always")
def _round_product(x, y):
    """R(x·c, s) for a lane parameter y from ``lane_params`` (module docstring, "Rounding")."""
    return np.rint(x * y)


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
    if x == types.float32:  # module docstring, "Rounding"
        return lambda x, gain: np.rint(np.float64(x) * (gain * GAIN_BIAS))
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


@njit(cache=True, inline="always")
def linear_step(code, m, momentum, a, d, h):
    """One leapfrog step from the carried opening drift m and momentum π, unclamped, on lane parameters
    (a, δ, h): (ϕ', the next step's m, π', F)."""
    force = _round_product(m, a) - code
    momentum = momentum - _round_product(force, d)
    half = _round_product(momentum, h)
    position = m + half
    return position, position + half, momentum, force


# fastmath "contract" only: it fuses the range check's sum of squares into FMAs (a bound, not a value:
# one term beyond lim² still takes the sum beyond it); nothing is reassociated, NaN / infinity keep
# their meaning, and no product is contracted, each being rounded by rint before anything is added.
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
            position, mid, momentum, force = linear_step(code, m[p], momenta[p], a[p], d[p], h[p])
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


@njit(cache=True)
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
