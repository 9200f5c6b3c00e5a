"""The linear forward in float64 lanes: the integer leapfrog of ``kernels``, bit for bit, in fewer instructions.

Why. ``kernels.forward`` spends most of a linear step on int64 bookkeeping: 64-bit multiplies, the
four-instruction round-shift R, a counted clamp per update. Up to 27-bit words every quantity of the
step is an integer below 2^53 — codes below 2^26, a product of two codes plus a half below 2^52 — so
float64 holds it exactly, and the rescale-and-round of a product is a multiply, an add and a truncation:

    R(x·y, s) = trunc(x·y·2^−s + copysign(½, x·y))       (2^−s folded into the parameter: exact)

which is ``fixed.round_shift`` (ties away from zero, odd-symmetric) as long as x·y·2^−s + ½ is exact:
at most 2·(n − 1) + 1 ≤ 53 significant bits for in-range operands.

Clamps. A linear step clamps m, F, π' and ϕ' (and the input sample); where none of them would fire,
clamping is the identity. So a batch row runs CHUNK steps at a time without clamps, keeping per lane
the largest code² + F² + π'² + m'², and commits the chunk only if that stayed ≤ lim² and the state is
not NaN (NaN sticks once a NaN or an infinity entered). Otherwise the integer kernel runs the chunk
again from its start, clamping and counting, and keeps the row until a chunk needs no clamp. A clean
chunk is exactly what the integer kernel computes, with nothing to count; a sum of squares above lim²
whose terms are all below it is a false alarm that costs a rerun, never a wrong bit. ϕ' needs no
check of its own: ϕ' = m + r and m' = ϕ' + r give ϕ' = (m + m')/2.

Carrying m. A step's closing drift ϕ' = m + R(δπ', h) and the next step's opening drift
m_next = ϕ' + R(δπ', h) share their product, so the lanes carry m and π and form three products a step
instead of four; the row's ϕ is m − R(δπ, h) at the end of a chunk (exact when clean).

Streams. Forcing samples become codes as ``fixed.quantize_value`` makes them (gain 2^S, a power of
two, so the scaling is exact): a float32 sample has 24 significant bits, so s + copysign(½, s) is exact
or, for |s| < 2^−30, cannot reach 1; a float64 sample goes through floor and the remainder.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

from .fixed import FormatConfig
from .kernels import A_SHIFT, DELTA_SHIFT, FORCE, H_SHIFT, STATE, _linear_row

# Codes below 2^26 and products of two plus a half below 2^53: float64 holds every step exactly.
FLOAT_EXACT_WORD_BITS = 27
# Time steps a batch row runs between checks: what a value leaving the word costs to redo.
CHUNK = 512


def applies(config: FormatConfig, kind: str) -> bool:
    """Whether a bank of this kind in this format runs its forward here."""
    return kind == "linear" and config.word_bits <= FLOAT_EXACT_WORD_BITS


def lane_params(param_codes: np.ndarray, shifts: tuple) -> np.ndarray:
    """(a·2^−a_frac, δ·2^−δ_frac, δ·2^−(δ_frac+1)) per oscillator, (3, P) float64: R's shifts folded in."""
    a, d = param_codes[0].astype(np.float64), param_codes[1].astype(np.float64)
    return np.stack([np.ldexp(a, -shifts[A_SHIFT]), np.ldexp(d, -shifts[DELTA_SHIFT]),
                     np.ldexp(d, -shifts[H_SHIFT])])


@njit(cache=True, inline="always")
def _round(t):
    """R of an exact scaled product: to the nearest integer, ties away from zero."""
    return np.trunc(t + math.copysign(0.5, t))


def lane_code(x, gain):
    """A forcing sample as an unclamped code, in float64."""


@overload(lane_code, jit_options={"cache": True})
def _lane_code(x, gain):
    if isinstance(x, types.Integer):
        return lambda x, gain: np.float64(x)
    if x == types.float32:
        return lambda x, gain: _round(np.float64(x) * gain)

    def careful(x, gain):  # 53 significant bits: s + ½ could round up across an integer
        s = x * gain
        magnitude = abs(s)
        whole = np.floor(magnitude)
        return math.copysign(whole + (magnitude - whole >= 0.5), s)
    return careful


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
        m[p] = phi[p] + _round(h[p] * momenta[p])
        peak[p] = m[p] * m[p]
    for k in range(forcing.shape[0]):
        for p in range(npos):
            code = lane_code(forcing[k, p], gain)
            force = _round(a[p] * m[p]) - code
            momentum = momenta[p] - _round(d[p] * force)
            half = _round(h[p] * momentum)
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
        phi[p] = np.int64(m[p] - _round(h[p] * momenta[p]))
    return True


@njit(cache=True)
def _integer_chunk(forcing, phi, pi, params, shifts, lim, positions, gain, lsb, stream_counts, counters):
    """``kernels.forward``'s linear steps over one batch row's chunk; returns the clamps it counted."""
    clamps = 0
    for k in range(forcing.shape[0]):
        n_force, n_state = _linear_row(phi, pi, forcing[k], params[0], params[1], shifts, lim, positions[k], gain,
                                       lsb, stream_counts)
        counters[FORCE] += n_force
        counters[STATE] += n_state
        clamps += n_force + n_state
    return clamps


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
    for bi in range(nb):
        clamping = False
        for start in range(0, nt, CHUNK):
            stop = min(start + CHUNK, nt)
            chunk, out = forcing[bi, start:stop], positions[bi, start:stop]
            if clamping or not _fast_chunk(chunk, phi[bi], pi[bi], lanes, lim, out, gain, lsb, m, momenta, peak):
                clamps = _integer_chunk(chunk, phi[bi], pi[bi], params, shifts, lim, out, gain, lsb, stream_counts,
                                        counters)
                clamping = clamps > 0
    return phi, pi, counters
