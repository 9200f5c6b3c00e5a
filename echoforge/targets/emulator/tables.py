"""Bit-exact integer tanh, log cosh, sigmoid and GELU: odd functions tabulated, linearly interpolated.

Notation: S = state_frac (input format of every function), U = unit_frac (table output format),
N = 2^table_bits segments, R = the odd-symmetric round-shift of ``fixed``.

Table of an odd function g on [0, X], X = 2^x_log2
    Segment width 2^s input LSBs, s = S + x_log2 − table_bits (tanh: s = 16 + 3 − 10 = 9, i.e. 2^−7).
    Entries T[i] = Q_U(g(i·2^(s−S))) for i = 0..N (round half away from zero, from float64 g), plus a
    pad T[N+1] = T[N]. The generated integers are the definition (they are what a ROM holds:
    ``FixedFunctions(config).tanh_table.values``). Tables must rise monotonically from T[0] = 0
    (checked), so below d, r ≥ 0 and each R is the plain (x + 2^(k−1)) >> k.

Lookup of g at an input code z (``odd_lookup``)
    x = |z|, i = min(x >> s, N), r = x − (i << s), d = T[i+1] − T[i]   (d = 0 on the clamp i = N)
    g(z) = sign(z) · (T[i] + R(d·r, s))
    Odd by construction, g(0) = 0, monotone, and constant T[N] for |z| ≥ X (the clamp).

Integral of the tabulated function (``even_integral``), used as log cosh
    Table C[i] = Σ_{j<i} (T[j] + T[j+1]) · 2^(s−1): the exact trapezoid integral at frac S + U.
    G(z) = R(C[i] + T[i]·r + R(d·r², s + 1), S)                          (frac U, even in z)
    This is the exact integral of the piecewise-linear g (up to the two roundings), so with g = tanh
    the potential c·G(z)/w the observables use is the one whose force c·g(z) the integrator applies:
    the emulator's RHEL differentiates its own dynamics. Beyond the clamp G grows linearly with slope
    T[N], like log cosh. G can exceed the word (|G| ≤ |z|·2^(U−S)); it only feeds accumulators.

The functions (input frac S; tables with N = 1024 and the ranges below)
    tanh(z)    = odd_lookup(z, T_tanh),   g = tanh on [0, 8),                       output frac U
    logcosh(z) = even_integral(z, T_tanh),                                          output frac U
    sigmoid(z) = 2^(U−1) + odd_lookup(z, T_sig),  g(x) = tanh(x/2)/2 on [0, 16),    output frac U
    gelu(z)    = R(z · (2^(U−1) + odd_lookup(z, T_Φ)), U),  g(x) = erf(x/√2)/2 on [0, 8)
                 (x·Φ(x), Φ the normal CDF),                                        output frac S
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from .fixed import SHORTEST_TABLE_RANGE_LOG2, FormatConfig, round_shift

TANH_RANGE_LOG2 = SHORTEST_TABLE_RANGE_LOG2  # 3: tanh(8) = 1 − 2.3e−7, below one U LSB at U = 22
SIGMOID_RANGE_LOG2 = 4                      # sigmoid(x) − 1/2 = tanh(x/2)/2 needs twice the range
PHI_RANGE_LOG2 = SHORTEST_TABLE_RANGE_LOG2  # 3: Φ(8) = 1 − 6e−16


@dataclass(frozen=True)
class OddTable:
    """An odd function tabulated at N + 1 breakpoints (plus pad), and its running integral."""

    values: np.ndarray    # int64 (N + 2,), frac U
    integral: np.ndarray  # int64 (N + 1,), frac S + U
    seg_shift: int        # s: segment width is 2^s input LSBs


def odd_table(fn, x_log2: int, config: FormatConfig) -> OddTable:
    """Tabulate odd ``fn`` (vectorised float64) on [0, 2^x_log2] at the config's resolution."""
    segments = 1 << config.table_bits
    seg_shift = config.state_frac + x_log2 - config.table_bits
    if seg_shift < 1:
        raise ValueError(f"state_frac {config.state_frac} is too small for {segments}-segment tables")
    breakpoints = np.arange(segments + 1) * 2.0 ** (seg_shift - config.state_frac)
    values, saturated = config.unit.quantize(fn(breakpoints))
    if saturated or values[0] != 0 or np.any(np.diff(values) < 0):
        raise ValueError("a function table must fit the unit format and rise monotonically from 0")
    values = np.append(values, values[-1])
    trapezoids = (values[:segments] + values[1:segments + 1]) << (seg_shift - 1)
    integral = np.concatenate([[0], np.cumsum(trapezoids)]).astype(np.int64)
    return OddTable(values, integral, seg_shift)


_ONE = np.uint64(1)


@njit(cache=True, inline="always")
def segment_of(x, seg_shift, last):
    """(i, r) for x ≥ 0: segment i, clamped to the last breakpoint ``last`` = N, and offset r in it."""
    i = min(x >> seg_shift, last)
    return i, x - (i << seg_shift)


@njit(cache=True, inline="always")
def segment_values(i, values):
    """(T[i], d = T[i+1] − T[i]). i is made unsigned, so indexing skips numba's negative-index
    wraparound (this is a hot loop)."""
    i = np.uint64(i)
    low = values[i]
    return low, values[i + _ONE] - low


@njit(cache=True, inline="always")
def _segment(x, values, seg_shift):
    """(i, r, T[i], d) for x ≥ 0: segment, offset in it, its start value and rise."""
    i, r = segment_of(x, seg_shift, values.shape[0] - 2)
    low, d = segment_values(i, values)
    return np.uint64(i), r, low, d


@njit(cache=True, inline="always")
def interpolate(r, low, d, seg_shift):
    """T[i] + R(d·r, s); d·r ≥ 0 (tables are monotone), where R is the plain add-half-and-shift."""
    return low + ((d * r + (1 << (seg_shift - 1))) >> seg_shift)


@njit(cache=True, inline="always")
def integrate_segment(base, r, low, d, seg_shift, in_frac):
    """R(C[i] + T[i]·r + R(d·r², s + 1), S) with base = C[i]; every term is ≥ 0 (tables rise from 0)."""
    fine = base + low * r + ((d * r * r + (1 << seg_shift)) >> (seg_shift + 1))
    return (fine + (1 << (in_frac - 1))) >> in_frac


@njit(cache=True, inline="always")
def _integrate(i, r, low, d, integral, seg_shift, in_frac):
    return integrate_segment(integral[i], r, low, d, seg_shift, in_frac)


@njit(cache=True, inline="always")
def odd_lookup(z, values, seg_shift):
    """sign(z)·(T[i] + R(d·r, s)): the tabulated odd function at input code z."""
    sign = z >> 63
    _, r, low, d = _segment((z ^ sign) - sign, values, seg_shift)
    y = interpolate(r, low, d, seg_shift)
    return (y ^ sign) - sign


@njit(cache=True, inline="always")
def even_integral(z, values, integral, seg_shift, in_frac):
    """The integral of the tabulated function from 0 to |z|, at frac U."""
    i, r, low, d = _segment(abs(z), values, seg_shift)
    return _integrate(i, r, low, d, integral, seg_shift, in_frac)


@njit(cache=True, inline="always")
def odd_lookup_and_integral(z, values, integral, seg_shift, in_frac):
    """(odd_lookup(z), even_integral(z)) sharing one segment look-up (the echo needs both)."""
    sign = z >> 63
    i, r, low, d = _segment((z ^ sign) - sign, values, seg_shift)
    y = interpolate(r, low, d, seg_shift)
    return (y ^ sign) - sign, _integrate(i, r, low, d, integral, seg_shift, in_frac)


@njit(cache=True)
def _odd_lookup_array(z, values, seg_shift, offset):
    out = np.empty_like(z)
    for i in range(z.size):
        out.flat[i] = offset + odd_lookup(z.flat[i], values, seg_shift)
    return out


@njit(cache=True)
def _even_integral_array(z, values, integral, seg_shift, in_frac):
    out = np.empty_like(z)
    for i in range(z.size):
        out.flat[i] = even_integral(z.flat[i], values, integral, seg_shift, in_frac)
    return out


@njit(cache=True)
def _gelu_array(z, values, seg_shift, unit_frac):
    out = np.empty_like(z)
    half = 1 << (unit_frac - 1)
    for i in range(z.size):
        x = z.flat[i]
        out.flat[i] = round_shift(x * (half + odd_lookup(x, values, seg_shift)), unit_frac)
    return out


def _half_tanh_half(x):
    return 0.5 * np.tanh(0.5 * x)


def _half_erf(x):
    return np.array([0.5 * math.erf(v / math.sqrt(2.0)) for v in x])


class FixedFunctions:
    """The integer nonlinearities of one FormatConfig, on int64 arrays of input codes (frac S, within
    the word)."""

    def __init__(self, config: FormatConfig):
        self.config = config
        self.tanh_table = odd_table(np.tanh, TANH_RANGE_LOG2, config)
        self.sigmoid_table = odd_table(_half_tanh_half, SIGMOID_RANGE_LOG2, config)
        self.phi_table = odd_table(_half_erf, PHI_RANGE_LOG2, config)

    def tanh(self, z) -> np.ndarray:
        """Output frac U."""
        t = self.tanh_table
        return _odd_lookup_array(_codes(z), t.values, t.seg_shift, 0)

    def logcosh(self, z) -> np.ndarray:
        """Output frac U (may exceed the word: an accumulator-side quantity)."""
        t = self.tanh_table
        return _even_integral_array(_codes(z), t.values, t.integral, t.seg_shift, self.config.state_frac)

    def sigmoid(self, z) -> np.ndarray:
        """Output frac U."""
        t = self.sigmoid_table
        return _odd_lookup_array(_codes(z), t.values, t.seg_shift, 1 << (self.config.unit_frac - 1))

    def gelu(self, z) -> np.ndarray:
        """Output frac S."""
        t = self.phi_table
        return _gelu_array(_codes(z), t.values, t.seg_shift, self.config.unit_frac)


def _codes(z) -> np.ndarray:
    return np.ascontiguousarray(z, dtype=np.int64)
