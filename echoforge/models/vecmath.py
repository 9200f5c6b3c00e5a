"""float64 tanh, atanh and exp(−s) made of arithmetic only, so numba's loops over oscillators vectorise.

A call to libm's tanh in a loop keeps LLVM from vectorising it, and the call itself costs ~20 ns; these
are straight-line arithmetic (polynomials, one division, a bit cast for 2^k) that LLVM turns into SIMD
code. Accuracy, checked against libm over their ranges (tests/test_models.py): a few ulp — the core's
float64 exactness properties hold unchanged with them. The rational approximations are Cephes' (Moshier),
the exp is the classic Cody–Waite reduction with a Taylor polynomial.
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

# Cephes tanh.c: tanh x = x + x·x²·P(x²)/Q(x²) for |x| < 0.625.
TANH_P = (-9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3)
TANH_Q = (1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3)
TANH_RATIONAL = 0.625
# Beyond this |x|, exp(−2|x|) < 4.3e-18 and tanh x rounds to ±1.
TANH_SATURATED = 20.0
# Cephes atanh.c: atanh x = x + x·x²·P(x²)/Q(x²) for |x| < 0.5.
ATANH_P = (-8.54074331929669305196e-1, 1.20426861384072379242e1, -4.61252884198732692637e1,
           6.54566728676544377376e1, -3.09092539379866942570e1)
ATANH_Q = (-1.95638849376911654834e1, 1.08938092147140262656e2, -2.49839401325893582852e2,
           2.52006675691344555838e2, -9.27277618139601130017e1)
ATANH_RATIONAL = 0.5
# ln 2 split so that k·LN2_HI is exact for |k| < 2^11 (Cephes exp.c).
LN2_HI, LN2_LO = 6.93145751953125e-1, 1.42860682030941723212e-6
INV_LN2 = 1.0 / math.log(2.0)
# Taylor coefficients 1/n!, n = 0…13: for |r| ≤ ln2/2 the remainder is < 5e-18.
C0, C1, C2, C3, C4, C5, C6, C7, C8, C9, C10, C11, C12, C13 = (1.0 / math.factorial(n) for n in range(14))


@intrinsic
def _double_from_bits(typingctx, bits):
    """The float64 whose IEEE bit pattern is the int64 `bits` (an LLVM bitcast: vectorisable)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


@njit(cache=True, error_model="numpy", inline="always")
def exp_neg(s):
    """exp(−s) for 0 ≤ s ≤ 700."""
    k = math.floor(s * INV_LN2 + 0.5)
    r = (k * LN2_HI - s) + k * LN2_LO  # −s + k ln2, in [−ln2/2, ln2/2]
    p = ((((((C13 * r + C12) * r + C11) * r + C10) * r + C9) * r + C8) * r + C7) * r + C6
    p = (((((p * r + C5) * r + C4) * r + C3) * r + C2) * r + C1) * r + C0
    return p * _double_from_bits((1023 - np.int64(k)) << 52)


@njit(cache=True, error_model="numpy", inline="always")
def tanh_rational(x):
    """tanh x for |x| < 0.625."""
    s = x * x
    p = (TANH_P[0] * s + TANH_P[1]) * s + TANH_P[2]
    q = ((s + TANH_Q[0]) * s + TANH_Q[1]) * s + TANH_Q[2]
    return x + x * s * (p / q)


@njit(cache=True, error_model="numpy", inline="always")
def tanh(x):
    """tanh x, any x; also returns exp(−2 min(|x|, 20)), from which log cosh x = |x| − ln 2 + log1p(·).

    Both regimes are computed and one selected by numerator and denominator: one division.
    """
    y = abs(x)
    e = exp_neg(2.0 * (y if y < TANH_SATURATED else TANH_SATURATED))  # (no min(): it branches)
    s = x * x
    p = (TANH_P[0] * s + TANH_P[1]) * s + TANH_P[2]
    q = ((s + TANH_Q[0]) * s + TANH_Q[1]) * s + TANH_Q[2]
    small = y < TANH_RATIONAL
    numerator = x * (q + s * p) if small else math.copysign(1.0 - e, x)
    denominator = q if small else 1.0 + e
    return numerator / denominator, e


@njit(cache=True, error_model="numpy", inline="always")
def atanh_rational(x):
    """atanh x for |x| < 0.5."""
    s = x * x
    p = (((ATANH_P[0] * s + ATANH_P[1]) * s + ATANH_P[2]) * s + ATANH_P[3]) * s + ATANH_P[4]
    q = ((((s + ATANH_Q[0]) * s + ATANH_Q[1]) * s + ATANH_Q[2]) * s + ATANH_Q[3]) * s + ATANH_Q[4]
    return x + x * s * (p / q)
