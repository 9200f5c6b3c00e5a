"""The compiled kernels' arithmetic-only tanh/atanh/exp against numpy's libm and against the exact
values, and the echo's far-apart force formulas against its closed forms where both hold."""

import mpmath
import numpy as np
import pytest

from echoforge.models import kernels


def ulps(ours, reference):
    return float(np.max(np.abs(ours - reference) / np.spacing(np.abs(reference)).clip(1e-300)))


@pytest.mark.parametrize("low,high", [(-1e-6, 1e-6), (-0.7, 0.7), (0.6, 0.65), (-25.0, 25.0)])
def test_tanh_is_within_three_ulp_of_libm(low, high):
    x = np.random.default_rng(0).uniform(low, high, 200_000)
    assert ulps(kernels.tanh(x)[0], np.tanh(x)) <= 3
    assert np.array_equal(kernels.tanh(np.array([0.0, 20.0, -20.0, 1e300, -np.inf]))[0],
                          [0.0, 1.0, -1.0, 1.0, -1.0])


def test_tanh_also_gives_the_exponential_of_log_cosh():
    x = np.random.default_rng(2).uniform(-30, 30, 100_000)
    assert ulps(kernels.tanh(x)[1], np.exp(-2 * np.minimum(np.abs(x), 20))) <= 1


def exactly(function, x) -> np.ndarray:
    """function(x) rounded once from 120 bits: a reference that does not depend on the machine's libm
    (glibc's atanh is itself 2 ulp off on some x86 machines, and numpy's follows the CPU)."""
    with mpmath.workprec(120):
        return np.array([float(function(mpmath.mpf(float(v)))) for v in x])


def test_atanh_and_exp_are_within_one_ulp_of_the_exact_values():
    rng = np.random.default_rng(1)
    x = rng.uniform(-0.5, 0.5, 20_000)
    assert ulps(kernels.atanh_rational(x), exactly(mpmath.atanh, x)) <= 1
    s = rng.uniform(0, 700, 20_000)
    assert ulps(kernels.exp_neg(s), exactly(lambda v: mpmath.exp(-v), s)) <= 1


@pytest.mark.parametrize("zc", [-3.0, 0.2, 4.0])
def test_far_apart_force_pair_agrees_with_the_closed_forms(zc):
    """Just above the switch (|w·md| > 0.5) the direct differences are used; the closed forms still
    hold there, so both must give the same pair."""
    a, w, b, c, f = 0.7, 0.8, 0.1, 0.6, 0.3
    md = 0.51 / w
    mc = (zc - f - b) / w
    far = kernels.force_pair(kernels.NONLINEAR, a, w, b, c, mc, md, f, True)
    near = kernels.force_pair(kernels.NONLINEAR, a, w, b, c, mc, md * (1 - 1e-12), f, False)
    np.testing.assert_allclose(far, near, rtol=1e-10, atol=1e-12)
    zp, zm = zc + w * md, zc - w * md
    np.testing.assert_allclose(far[2:], [np.tanh(zp) + np.tanh(zm), np.tanh(zp) - np.tanh(zm),
                                         np.log(np.cosh(zp)) - np.log(np.cosh(zm))], rtol=1e-13, atol=1e-15)
