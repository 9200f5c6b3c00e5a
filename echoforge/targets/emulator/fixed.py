"""Fixed-point number formats and the integer primitives the emulator is built from.

These definitions are normative: the FPGA core implements exactly them, bit for bit.

Formats
    ``Fixed(word_bits=n, frac_bits=s)`` is the signed fixed-point format Q(n−s, s): the integer ``q``
    stands for the real number ``q·2^−s``. Legal codes are ``|q| ≤ 2^(n−1) − 1``; the range is
    symmetric (the two's-complement code −2^(n−1) is never produced) so that negation — the momentum
    flip of the echo — can never overflow. Integers are held in int64.

Saturation
    ``clamp(x, lim) = min(max(x, −lim), lim)`` with ``lim = 2^(n−1) − 1``. Every clamp that changes a
    value is counted (per quantity, see ``core.SaturationReport``); nothing saturates silently.

Rounding of every product rescale, ``R(x, s)`` ("round-shift")
    x·2^−s rounded to the nearest integer, ties away from zero::

        R(x, s) = sign(x) · ⌊(|x| + ⌊2^s / 2⌋) / 2^s⌋        (so R(x, 0) = x)

    R is odd-symmetric, R(−x, s) = −R(x, s): the property that makes the integer leapfrog exactly
    reversible (proof in ``kernels``). A product of a value with frac s1 and one with frac s2, brought to
    frac s3, is ``R(x1·x2, s1 + s2 − s3)``, the product formed exactly in 64 bits first.

Quantisation of a real number (host side, float64)
    ``Q(x) = clamp(sign(x)·⌊|x|·2^s + 1/2⌋)``, ties away from zero like R (evaluated without the
    ``+ 1/2`` float rounding trap: ⌊|x|·2^s⌋, plus one when the remainder is ≥ 1/2). NaN is an error.
    Dequantisation ``q·2^−s`` is exact in float64 (|q| < 2^53), so dequantise → quantise returns the
    same integers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
from numba import njit

from .words import MAX_WORD_BITS, MIN_WORD_BITS

# The accumulator guard: a per-step term (a difference of two products of words, shifted right by
# FormatConfig.acc_shift) stays below 2^62, so an accumulator clamped to ±ACC_LIMIT cannot wrap around
# in int64 before the clamp sees it. A single product of two 32-bit words is below 2^62.
ACC_LIMIT = 1 << 62
TABLE_BITS = 10  # segments of the function tables (2^10), fewer for a state with few fraction bits
SHORTEST_TABLE_RANGE_LOG2 = 3  # the tanh and Φ tables cover [0, 8) (tables.py)


@njit(cache=True, inline="always")
def round_shift(x, s):
    """R(x, s): odd-symmetric x·2^−s, ties away from zero.

    Branch-free so that loops vectorise: ⌊(x + bias)/2^s⌋ with bias = 2^(s−1) for x ≥ 0 and
    2^(s−1) − 1 for x < 0 (0 when s = 0), which equals sign(x)·⌊(|x| + 2^(s−1))/2^s⌋.
    """
    return (x + (((1 << s) + (x >> 63)) >> 1)) >> s


@njit(cache=True, inline="always")
def clamp(x, lim):
    """Saturate x to the symmetric range ±lim."""
    return min(max(x, -lim), lim)


@njit(cache=True, inline="always")
def quantize_value(x, gain, lim):
    """Q(x·gain) of one float: (code, whether it saturated, whether it was NaN)."""
    scaled = x * gain
    magnitude = min(abs(scaled), float(lim) + 1.0)
    whole = math.floor(magnitude)
    code = np.int64(whole) + (magnitude - whole >= 0.5)
    saturated = code > lim
    code = min(code, lim)
    return (-code if scaled < 0 else code), saturated, scaled != scaled


@njit(cache=True)
def _quantize(x, gain, lim, out):
    """out = Q(x·gain) elementwise (int64, same size); returns the number of saturated entries."""
    flat = x.ravel()
    saturated = nans = 0
    for i in range(flat.shape[0]):
        out[i], clamped, nan = quantize_value(flat[i], gain, lim)
        saturated += clamped
        nans += nan
    if nans:
        raise ValueError("cannot quantise NaN")
    return saturated


@njit(cache=True)
def count_outside(codes, lim):
    """How many integer codes lie outside ±lim (one pass, no temporaries)."""
    flat = codes.ravel()
    n = 0
    for i in range(flat.shape[0]):
        n += abs(flat[i]) > lim
    return n


@dataclass(frozen=True)
class Fixed:
    """A signed fixed-point format: ``word_bits`` bits of which ``frac_bits`` are fractional."""

    word_bits: int
    frac_bits: int

    @property
    def limit(self) -> int:
        """Largest legal code, 2^(word_bits−1) − 1 (the range is ±limit)."""
        return (1 << (self.word_bits - 1)) - 1

    @property
    def lsb(self) -> float:
        return 2.0 ** -self.frac_bits

    @property
    def max_value(self) -> float:
        return self.limit * self.lsb

    def quantize(self, x, prescale: float = 1.0) -> tuple[np.ndarray, int]:
        """Q(x·prescale) as int64 codes, and how many entries saturated."""
        x = np.ascontiguousarray(x, dtype=np.float64)
        codes = np.empty(x.shape, dtype=np.int64)  # numpy's allocator: huge pages for big arrays
        return codes, _quantize(x, prescale * 2.0 ** self.frac_bits, self.limit, codes.reshape(-1))

    def dequantize(self, codes) -> np.ndarray:
        return np.asarray(codes, dtype=np.int64) * self.lsb

    def __str__(self) -> str:
        return f"Q{self.word_bits - self.frac_bits}.{self.frac_bits}"


@dataclass(frozen=True)
class FormatConfig:
    """The emulator's number formats. Fields left None follow ``word_bits``.

    Defaults at ``word_bits`` n (24 → in brackets):
      * ``state_frac`` = n − 8 [Q8.16, ±128]: ϕ, π, the forcing f, the bias b and the pre-activation
        z = w·m + f + b all share it, since they are added to each other; 7 bits of headroom above
        O(1) signals.
      * ``a_frac`` = ``w_frac`` = ``c_frac`` = n − 4 [Q4.20, ±8]: stiffness and the nonlinear gains.
      * ``delta_frac`` = n − 2 [Q2.22, ±2]: the step δ. The half step h = δ/2 is the same integer read
        with one more fractional bit (Q1.23), so h is exactly δ/2.
      * ``unit_frac`` = n − 2 [Q2.22]: the outputs of the tanh / sigmoid / Φ tables and of log cosh.
      * ``table_bits`` = 10: each function table has 2^10 linear segments (see ``tables``), or the
        finest the state can index when it has few fraction bits: segments of at least two state LSBs
        over the shortest table range [0, 8), so at most state_frac + 2 bits.
      * ``min_nudge_lsbs`` = 2^(state_frac − 6) [1024]: the echo's largest quantised nudge is at least
        this many state LSBs, i.e. 2^−6 in state units whatever the word (see ``core``).
    """

    word_bits: int = 24
    state_frac: int | None = None
    a_frac: int | None = None
    delta_frac: int | None = None
    w_frac: int | None = None
    c_frac: int | None = None
    unit_frac: int | None = None
    table_bits: int | None = None
    min_nudge_lsbs: int | None = None

    def __post_init__(self):
        n = self.word_bits
        if not MIN_WORD_BITS <= n <= MAX_WORD_BITS:
            raise ValueError(f"word_bits must be in [{MIN_WORD_BITS}, {MAX_WORD_BITS}] so that products "
                             f"and accumulators fit int64, got {n}")
        derived = {"state_frac": n - 8, "a_frac": n - 4, "delta_frac": n - 2, "w_frac": n - 4,
                   "c_frac": n - 4, "unit_frac": n - 2}
        for name, value in derived.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.table_bits is None:
            object.__setattr__(self, "table_bits", min(TABLE_BITS, self.state_frac + SHORTEST_TABLE_RANGE_LOG2 - 1))
        if self.min_nudge_lsbs is None:
            object.__setattr__(self, "min_nudge_lsbs", 1 << max(self.state_frac - 6, 0))
        for f in fields(self):
            if f.name.endswith("_frac") and not 1 <= getattr(self, f.name) <= n - 2:
                raise ValueError(f"{f.name} must be in [1, word_bits − 2], got {getattr(self, f.name)}")

    @property
    def acc_shift(self) -> int:
        """Low bits the echo's product accumulators drop per step: 0 up to 31-bit words; at 32 bits two
        products differ by up to 2^63, so each step's term is rounded to 2 fewer fraction bits."""
        return max(0, 2 * self.word_bits - 62)

    def fixed(self, frac_bits: int) -> Fixed:
        return Fixed(self.word_bits, frac_bits)

    @property
    def state(self) -> Fixed:
        return self.fixed(self.state_frac)

    @property
    def unit(self) -> Fixed:
        return self.fixed(self.unit_frac)

    def param(self, name: str) -> Fixed:
        """Format of one oscillator parameter (core.PARAM_NAMES); b lives in the state format."""
        frac = {"a": self.a_frac, "delta": self.delta_frac, "w": self.w_frac, "b": self.state_frac,
                "c": self.c_frac}[name]
        return self.fixed(frac)
