"""The float64-lane linear forward and echo give the integer kernels' bits, clamps and counts, or hand over to them."""

import math
import warnings

import numpy as np
import pytest
import torch
from numba import njit

from echoforge.models.core import OscillatorParams
from echoforge.targets.emulator import EmulatorCore, FormatConfig, kernels
from echoforge.targets.emulator.fixed import ACC_LIMIT, quantize_value
from echoforge.targets.emulator.float_lanes import (CHUNK, FLOAT_EXACT_WORD_BITS, PRODUCT_LIMIT, _round_product,
                                                    applies, lane_code, lane_params)

torch.set_num_threads(1)


def linear_core(size, config, seed=0):
    """A linear bank with a in [0.5, 3) and δ in [0.1, 0.9), scaled down at 27 bits where those codes
    times the state's limit would pass PRODUCT_LIMIT."""
    rng = np.random.default_rng(seed)
    scale = 0.2 if config.word_bits == FLOAT_EXACT_WORD_BITS else 1.0
    core = EmulatorCore(config)
    core.load(OscillatorParams("linear", a=scale * rng.uniform(0.5, 3.0, size),
                               delta=scale * rng.uniform(0.1, 0.9, size)))
    return core


def integer_reference(core, forcing, phi, pi):
    """``kernels.forward`` itself on the same streams: (positions, ϕ, π, counters, stream counts)."""
    positions = np.empty_like(forcing)
    stream_counts = np.zeros(3, dtype=np.int64)
    phi, pi, counters = kernels.forward(forcing, phi, pi, *core._kernel_args(), positions, core._conversion(),
                                        stream_counts)
    return positions, phi, pi, counters, stream_counts


def problem(config, dtype, seed=1, batch=6, length=2 * CHUNK + 17, size=19):
    """Streams of three chunks on which some batch rows stay in range and others saturate: row 1's
    forcing leaves the word now and then, row 2 starts with a state at the rail, row 3 runs clean for a
    chunk and then has a force that clamps, row 4 has one sample beyond the word at its very end."""
    rng = np.random.default_rng(seed)
    state = config.state
    forcing = rng.normal(0.0, 0.5, (batch, length, size))
    forcing[1, ::37] *= 400.0
    forcing[3, CHUNK + 100:CHUNK + 110] = 0.9 * state.max_value
    forcing[4, -1, 5] = -2.0 * state.max_value
    phi = state.quantize(rng.normal(0.0, 1.0, (batch, size)))[0]
    pi = state.quantize(rng.normal(0.0, 1.0, (batch, size)))[0]
    phi[2, 0] = state.limit
    if dtype == np.int64:
        return state.quantize(forcing)[0], phi, pi
    return forcing.astype(dtype), phi, pi


@pytest.mark.filterwarnings("ignore:fixed-point emulator saturated")
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("word_bits", [12, 18, 24, FLOAT_EXACT_WORD_BITS])
def test_float_lanes_give_the_integer_kernels_bits_and_counts(word_bits, dtype):
    config = FormatConfig(word_bits=word_bits)
    core = linear_core(19, config)
    assert applies(config, "linear", core.param_codes)
    forcing, phi, pi = problem(config, dtype)
    positions, phi_ref, pi_ref, counters, stream_counts = integer_reference(core, forcing, phi, pi)
    run = core._forward(forcing, phi, pi, input_sat=0)
    assert run.positions.dtype == positions.dtype
    assert np.array_equal(run.positions, positions)
    assert np.array_equal(run.phi, phi_ref) and np.array_equal(run.pi, pi_ref)
    saturation = run.saturation.counts
    assert (saturation["state"], saturation["force"]) == (counters[kernels.STATE], counters[kernels.FORCE])
    assert saturation["input"] == stream_counts[kernels.INPUT_SATURATED]
    assert saturation["state"] > 0 and saturation["force"] > 0  # the handover was exercised
    assert dtype == np.int64 or saturation["input"] > 0


NUDGE_PRESCALE = 0.3  # ε: the nudge codes are Q(ε·g)


def integer_echo_reference(core, forcing, nudges, phi, pi, acc, obs_scale, conversion):
    """``kernels.echo_chunk`` itself on copies of the pair state: (observable, ϕ, π, acc, counters, stream counts)."""
    phi, pi, acc = phi.copy(), pi.copy(), acc.copy()
    observable = np.empty_like(forcing)
    counters, stream_counts = np.zeros(4, dtype=np.int64), np.zeros(3, dtype=np.int64)
    kernels.echo_chunk(forcing, nudges, phi, pi, acc, *core._kernel_args(), observable, counters, conversion, obs_scale,
                       stream_counts)
    return observable, phi, pi, acc, counters, stream_counts


def echo_problem(core, config, dtype, seed=2):
    """The forward problem's streams and end state as an echo pair, nudges of some 20 LSBs, with
    row 1 nudged beyond the word now and then and row 5's accumulators at their limits."""
    forcing, phi, pi = problem(config, dtype, seed=seed)
    rng = np.random.default_rng(seed)
    nudges = rng.normal(0.0, 20 * config.state.lsb / NUDGE_PRESCALE, forcing.shape)  # q of some 20 LSBs
    nudges[1, ::53, 2] = 3.0 * config.state.max_value / NUDGE_PRESCALE
    if dtype == np.int64:
        nudges = config.state.quantize(nudges, prescale=NUDGE_PRESCALE)[0]
    else:
        nudges = nudges.astype(dtype)
    pair_phi = np.ascontiguousarray(np.stack([phi, phi], axis=1))
    pair_pi = np.ascontiguousarray(np.stack([-pi, -pi], axis=1))
    acc = np.zeros((forcing.shape[0], len(kernels.ACCUMULATORS), forcing.shape[2]), dtype=np.int64)
    acc[5, :, 3], acc[5, :, 4] = ACC_LIMIT, -ACC_LIMIT
    obs_scale = rng.uniform(0.5, 2.0, forcing.shape[2])
    return forcing, nudges, pair_phi, pair_pi, acc, obs_scale


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("word_bits", [12, 18, 24, FLOAT_EXACT_WORD_BITS])
def test_the_float_lane_echo_gives_the_integer_kernels_bits_and_counts(word_bits, dtype):
    config = FormatConfig(word_bits=word_bits)
    core = linear_core(19, config)
    forcing, nudges, phi, pi, acc, obs_scale = echo_problem(core, config, dtype)
    conversion = core._conversion(NUDGE_PRESCALE)
    expected = integer_echo_reference(core, forcing, nudges, phi, pi, acc, obs_scale, conversion)
    observable = np.empty_like(forcing)
    counters, stream_counts = np.zeros(4, dtype=np.int64), np.zeros(3, dtype=np.int64)
    core._bank_echo(forcing, nudges, phi, pi, acc, observable, counters, conversion, obs_scale, stream_counts)
    for got, want in zip((observable, phi, pi, acc, counters, stream_counts), expected):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert counters[kernels.STATE] > 0 and counters[kernels.FORCE] > 0 and counters[kernels.ACCUMULATOR] > 0
    assert dtype == np.int64 or stream_counts[kernels.NUDGE_SATURATED] > 0


@pytest.mark.filterwarnings("ignore:fixed-point emulator saturated")
@pytest.mark.filterwarnings("ignore:fixed-point emulator saturated")
@pytest.mark.parametrize("word_bits, a", [(24, np.linspace(-1.0, 1.0, 19)), (27, np.full(19, 3.0))])
def test_banks_the_float_lanes_do_not_run_get_the_integer_kernel(word_bits, a):
    """Past 27 bits, nonlinear, a < 0 (the product's sign is no longer the state's), or a product of a
    parameter and a state code that could reach PRODUCT_LIMIT: same bits."""
    codes = np.ones((5, 3), dtype=np.int64)
    assert not applies(FormatConfig(word_bits=FLOAT_EXACT_WORD_BITS + 1), "linear", codes)
    assert not applies(FormatConfig(), "nonlinear", codes)
    config = FormatConfig(word_bits=word_bits)
    core = EmulatorCore(config)
    core.load(OscillatorParams("linear", a=a, delta=np.full(19, 0.5)))
    assert not applies(config, "linear", core.param_codes)
    forcing, phi, pi = problem(config, np.float32)
    assert np.array_equal(core._forward(forcing, phi, pi, input_sat=0).positions,
                          integer_reference(core, forcing, phi, pi)[0])


def test_every_linear_bank_up_to_25_bits_runs_in_float_lanes():
    """A parameter code is at most the word's limit, and limit² < PRODUCT_LIMIT up to 25 bits."""
    for word_bits in range(12, 26):
        config = FormatConfig(word_bits=word_bits)
        assert applies(config, "linear", np.full((5, 3), config.state.limit))


@njit
def rounded_products(x, y):
    out = np.empty(x.shape[0])
    for i in range(x.shape[0]):
        out[i] = _round_product(np.float64(x[i]), y)
    return out


@pytest.mark.parametrize("shift", [0, 1, 2, 13, 22, 26])
def test_a_rounded_product_is_the_round_shift_up_to_the_product_limit(shift):
    """rint of x times the biased lane parameter is R(x·c, s) — ties away from zero — for every state
    code x and a parameter code c as large as PRODUCT_LIMIT allows (module docstring, "Rounding")."""
    lim = FormatConfig().state.limit
    rng = np.random.default_rng(shift)
    for code in (1, 3, 2 ** 13 + 1, ((PRODUCT_LIMIT - 1) // lim - 1) | 1):  # odd codes
        assert code * lim < PRODUCT_LIMIT
        x = rng.integers(-lim, lim + 1, 20_000)
        if shift:  # every x·c ≡ 2^(s−1) mod 2^s in range is a tie; c odd has an inverse mod 2^s
            tie = (2 ** (shift - 1) * pow(code, -1, 2 ** shift)) % 2 ** shift
            x = np.concatenate([x, np.arange(tie - lim // 2 ** shift * 2 ** shift, lim + 1, 2 ** shift)[:20_000]])
            x = np.concatenate([x, -x, [lim, -lim, 0]])
        product = x * code
        half = (1 << (shift - 1)) if shift else 0
        expected = np.sign(product) * ((np.abs(product) + half) >> shift)
        y = lane_params(np.array([[code], [code], [0], [0], [0]]), (shift + 1, shift, shift) + (0,) * 5)[0, 0]
        assert np.array_equal(rounded_products(x, y), expected)


def test_a_clean_run_counts_nothing_and_keeps_the_state():
    config = FormatConfig()
    core = linear_core(19, config)
    forcing, phi, pi = problem(config, np.float32)
    clean = forcing[[0, 5]], phi[[0, 5]], pi[[0, 5]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = core._forward(*clean, input_sat=0)
    assert not run.saturation.saturated
    assert np.array_equal(run.phi, integer_reference(core, *clean)[1])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_is_refused_and_infinity_saturates_as_in_the_integer_kernel(bad):
    config = FormatConfig()
    core = linear_core(19, config)
    forcing, phi, pi = problem(config, np.float32)
    forcing, phi, pi = forcing[[0, 5]], phi[[0, 5]], pi[[0, 5]]  # otherwise clean rows
    forcing[1, 7, 3] = bad
    if math.isnan(bad):
        with pytest.raises(ValueError, match="NaN"):
            core.forward(forcing, config.state.dequantize(phi), config.state.dequantize(pi))
        return
    with pytest.warns(RuntimeWarning, match="input=1"):
        run = core._forward(forcing, phi, pi, input_sat=0)
    assert np.array_equal(run.positions, integer_reference(core, forcing, phi, pi)[0])


@njit
def lane_codes(x, gain):
    out = np.empty(x.shape[0])
    for i in range(x.shape[0]):
        out[i] = lane_code(x[i], gain)
    return out


@njit
def quantized(x, gain, lim):
    out = np.empty(x.shape[0])
    for i in range(x.shape[0]):
        out[i] = quantize_value(np.float64(x[i]), gain, lim)[0]
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lane_codes_are_the_normative_quantisation(dtype):
    """Ties, the samples just either side of them, the float ``+ ½`` trap, tiny and subnormal samples."""
    config = FormatConfig()
    gain = 2.0 ** config.state_frac
    ties = np.concatenate([np.arange(-2000, 2000), np.arange(2 ** 23 - 2000, 2 ** 23 - 1)]) + 0.5
    ties = np.concatenate([ties, -ties]) / gain
    samples = np.concatenate([ties, np.nextafter(ties.astype(dtype), dtype(np.inf)),
                              np.nextafter(ties.astype(dtype), dtype(-np.inf)),
                              [0.49999997 / gain, 0.49999999999999994 / gain, 1e-30, -1e-30, 1e-45, 0.0, -0.0,
                               3.0, -127.99, 100.123456789]]).astype(dtype)
    rng = np.random.default_rng(0)
    samples = np.concatenate([samples, rng.normal(0.0, 20.0, 10_000).astype(dtype)])
    expected = quantized(samples, gain, float(config.state.limit))
    assert np.array_equal(lane_codes(samples, gain), expected)


def test_products_that_fall_on_ties_round_away_from_zero():
    """a = δ = ½: a·m, δ·F and δ·π/2 land on a half every other step — the cases trunc(x + ½) and the
    hardware's round-to-even disagree on. Forward and echo."""
    config = FormatConfig()
    core = EmulatorCore(config)
    core.load(OscillatorParams("linear", a=np.full(19, 0.5), delta=np.full(19, 0.5)))
    forcing, phi, pi = problem(config, np.float32)
    rows = [0, 5]
    forcing, phi, pi = forcing[rows], phi[rows], pi[rows]
    run = core._forward(forcing, phi, pi, input_sat=0)
    assert not run.saturation.saturated
    assert np.array_equal(run.positions, integer_reference(core, forcing, phi, pi)[0])
    echo = core.echo_int(config.state.quantize(forcing)[0], run.phi, run.pi,
                         config.state.quantize(forcing, prescale=0.05)[0])
    pair = np.stack([run.phi, run.phi], axis=1), np.stack([-run.pi, -run.pi], axis=1)
    acc = np.zeros((len(rows), len(kernels.ACCUMULATORS), 19), dtype=np.int64)
    expected = integer_echo_reference(core, config.state.quantize(forcing)[0], config.state.quantize(forcing, prescale=0.05)[0],
                                      *pair, acc, np.ones(19), core._conversion())
    assert not echo.saturation.saturated
    assert np.array_equal(echo.forcing_observable, expected[0])
    assert all(np.array_equal(echo.accumulators[name], expected[3][:, i]) for i, name in enumerate(kernels.ACCUMULATORS))
