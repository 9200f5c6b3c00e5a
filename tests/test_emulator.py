"""The fixed-point emulator: exact reversibility, integer definitions, saturation, fidelity to float64."""

import math
import warnings
from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from echoforge.models.core import PARAM_NAMES, OscillatorParams
from echoforge.targets.emulator import EmulatorCore, Fixed, FixedFunctions, FormatConfig
from echoforge.targets.emulator.fixed import round_shift

torch.set_num_threads(1)

KINDS = ("linear", "nonlinear")
CONFIG = FormatConfig()
STATE = CONFIG.state
# Forward positions vs a float64 leapfrog over 200 steps: |Δ| ≤ 2e-3·max|ϕ| (measured 3e-5 linear, 5e-4
# nonlinear: the state's rounding, ~1e-5 per step, and the tanh table's 6e-6, carried by the dynamics).
POSITION_TOLERANCE = 2e-3
# RHEL on the emulator vs float64 BPTT (DESIGN §2: linear exact up to rounding, nonlinear O(ε²) and the
# tanh table): bounds on 1 − cosine and |norm ratio − 1| per (kind, word bits), from the worst of the
# forcing's and every parameter's gradient measured on fidelity_case(seed=5) — linear 24 bits: 1.4e-6,
# 4.9e-4; linear 32 bits: 5.3e-11, 1.6e-6; nonlinear (24 and 32 bits): 4.2e-4, 1.6e-2. Margins: 10× for
# the linear banks (rounding noise), 2× for the nonlinear ones (a systematic bias).
ALIGNMENT = {("linear", 24): (1.5e-5, 5e-3), ("linear", 32): (5e-10, 2e-5),
             ("nonlinear", 24): (1e-3, 3e-2), ("nonlinear", 32): (1e-3, 3e-2)}


def random_params(kind, size, rng):
    """Parameters in the ranges the HRUs initialise to (PAPER §3), with a usable fixed-point δ."""
    return OscillatorParams(kind, a=rng.uniform(0.2, 1.0, size), delta=rng.uniform(0.3, 0.7, size),
                            w=rng.uniform(0.5, 1.0, size), b=rng.uniform(-0.5, 0.5, size),
                            c=rng.uniform(0.3, 0.7, size))


def loaded_core(kind, size, seed, config=CONFIG):
    core = EmulatorCore(config)
    core.load(random_params(kind, size, np.random.default_rng(seed)))
    return core


def representable(x):
    """x rounded to the state format, so float references see exactly the emulator's inputs."""
    return STATE.dequantize(STATE.quantize(x)[0])


def cosine(x, y):
    x, y = np.ravel(x), np.ravel(y)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def assert_aligned(got, expected, name, kind, word_bits):
    max_one_minus_cosine, max_norm_ratio_error = ALIGNMENT[kind, word_bits]
    assert 1 - cosine(got, expected) <= max_one_minus_cosine, name
    assert abs(np.linalg.norm(got) / np.linalg.norm(expected) - 1) <= max_norm_ratio_error, name


# ---- rounding and quantisation ---------------------------------------------------------------------

@given(x=st.integers(-(2 ** 61), 2 ** 61), s=st.integers(0, 40))
def test_round_shift_is_odd_symmetric(x, s):
    assert round_shift(-x, s) == -round_shift(x, s)


@given(x=st.integers(-(2 ** 61), 2 ** 61), s=st.integers(0, 40))
def test_round_shift_rounds_to_nearest_ties_away_from_zero(x, s):
    exact = Fraction(x, 2 ** s)
    rounded = round_shift(x, s)
    assert abs(exact - rounded) <= Fraction(1, 2)
    if abs(exact - rounded) == Fraction(1, 2):
        assert abs(rounded) > abs(exact)


@settings(max_examples=300)
@given(x=st.floats(-300.0, 300.0))
def test_quantize_rounds_like_round_shift_and_saturates(x):
    codes, saturated = STATE.quantize(np.array([x]))
    exact = Fraction(x) * 2 ** STATE.frac_bits
    nearest = math.floor(abs(exact) + Fraction(1, 2)) * (1 if exact >= 0 else -1)
    assert codes[0] == max(-STATE.limit, min(STATE.limit, nearest))
    assert saturated == (abs(nearest) > STATE.limit)


def test_quantize_is_not_fooled_by_the_float_half_trap():
    just_below_half = np.nextafter(0.5, 0.0) * STATE.lsb
    assert STATE.quantize(np.array([just_below_half, -just_below_half]))[0].tolist() == [0, 0]


def test_quantize_refuses_nan():
    with pytest.raises(ValueError, match="NaN"):
        STATE.quantize(np.array([0.0, np.nan]))
    core = loaded_core("linear", 4, seed=0)
    forcing, zeros = np.zeros((1, 5, 4)), np.zeros((1, 4))
    forcing[0, 3, 1] = np.nan
    for run in (lambda: core.forward(forcing, zeros, zeros), lambda: core.echo(forcing, zeros, zeros, forcing, 0.1)):
        with pytest.raises(ValueError, match="NaN"):
            run()


def test_dequantize_then_quantize_returns_the_same_codes():
    codes = np.random.default_rng(0).integers(-STATE.limit, STATE.limit + 1, 10_000)
    assert np.array_equal(STATE.quantize(STATE.dequantize(codes))[0], codes)


# ---- integer nonlinearities ------------------------------------------------------------------------

FUNCTIONS = FixedFunctions(CONFIG)
CODES = np.arange(-12 * 2 ** CONFIG.state_frac, 12 * 2 ** CONFIG.state_frac + 1)  # every code in ±12
X = STATE.dequantize(CODES)
UNIT = CONFIG.unit.lsb


def test_tanh_is_odd_and_monotone():
    t = FUNCTIONS.tanh(CODES)
    assert np.array_equal(t[::-1], -t)
    assert np.all(np.diff(t) >= 0)
    assert t[-1] <= 2 ** CONFIG.unit_frac


def test_sigmoid_is_point_symmetric_and_monotone():
    s = FUNCTIONS.sigmoid(CODES)
    assert np.array_equal(s + s[::-1], np.full_like(s, 2 ** CONFIG.unit_frac))
    assert np.all(np.diff(s) >= 0)


def test_logcosh_is_even():
    g = FUNCTIONS.logcosh(CODES)
    assert np.array_equal(g, g[::-1])


@pytest.mark.parametrize("word_bits", [12, 24, 32])
def test_the_kernels_row_lookups_are_the_table_definitions(word_bits):
    """The kernels look tables up a row at a time, in split loops; every code gives the scalar
    definition's bits (FixedFunctions), including the clamp beyond the table and both signs."""
    from echoforge.targets.emulator.kernels import SCRATCH_ROWS, LOOKUP, _tanh_rows
    config = FormatConfig(word_bits=word_bits)
    functions, table = FixedFunctions(config), FixedFunctions(config).tanh_table
    limit = config.state.limit
    codes = np.unique(np.concatenate([np.random.default_rng(0).integers(-limit, limit + 1, 4000),
                                      np.arange(-600, 600), [-limit, limit]]))
    t, logcosh = np.empty_like(codes), np.empty_like(codes)
    lookup = np.empty((SCRATCH_ROWS - LOOKUP, codes.size), dtype=np.int64)
    _tanh_rows(codes, t, logcosh, table.values, table.integral, table.seg_shift, config.state_frac, lookup, True)
    assert np.array_equal(t, functions.tanh(codes)) and np.array_equal(logcosh, functions.logcosh(codes))


def test_logcosh_is_the_integral_of_the_integer_tanh():
    # Differences of G over one LSB are the tanh table's values: G is its running integral.
    g = FUNCTIONS.logcosh(CODES) * UNIT
    midpoint_tanh = 0.5 * (FUNCTIONS.tanh(CODES[1:]) + FUNCTIONS.tanh(CODES[:-1])) * UNIT
    integral = np.cumsum(midpoint_tanh) * STATE.lsb
    assert np.abs((g[1:] - g[0]) - integral).max() < 4 * UNIT


# Bounds: linear interpolation error h²/8·max|f''| on the segment width h, plus ~1 output LSB.
@pytest.mark.parametrize("name, reference, bound, lsb", [
    ("tanh", np.tanh, 2 ** -14 / 8 * 0.77 + 2 * UNIT, UNIT),                     # 6.4e-6
    ("sigmoid", lambda x: 0.5 * (1 + np.tanh(0.5 * x)), 2 ** -12 / 8 * 0.097 + 2 * UNIT, UNIT),  # 3.4e-6
    # log cosh: the integral of tanh's interpolation error, h²/12·∫|tanh''|, plus the clamp's drift
    ("logcosh", lambda x: np.logaddexp(x, -x) - math.log(2), 2 ** -14 / 12 + 4 * 2 * UNIT, UNIT),  # 7.0e-6
    ("gelu", lambda x: x * 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
     12 * 2 ** -14 / 8 * 0.25 + STATE.lsb, STATE.lsb),                           # 3.8e-5 for |x| ≤ 12
])
def test_integer_function_error_against_float(name, reference, bound, lsb):
    step = slice(None, None, 7)
    got = getattr(FUNCTIONS, name)(CODES[step]) * lsb
    assert np.abs(got - reference(X[step])).max() <= bound


# ---- exact reversibility ---------------------------------------------------------------------------

def assert_retraces_bit_for_bit(kind, config, length):
    rng = np.random.default_rng(1)
    batch, size = 2, 16
    state = config.state
    core = loaded_core(kind, size, seed=2, config=config)
    forcing = state.quantize(rng.normal(0, 0.05, (batch, length, size)))[0]
    phi0, pi0 = (state.quantize(rng.normal(0, 1.0, (batch, size)))[0] for _ in range(2))
    forward = core.forward_int(forcing, phi0, pi0)
    assert forward.saturation.reversible and not forward.saturation.saturated

    back = core.forward_int(np.ascontiguousarray(forcing[:, ::-1]), forward.phi, -forward.pi)
    assert np.array_equal(back.phi, phi0) and np.array_equal(back.pi, -pi0)
    assert np.array_equal(back.positions[:, :-1], forward.positions[:, -2::-1])

    echo = core.echo_int(forcing, forward.phi, forward.pi, np.zeros_like(forcing))
    for sign in range(2):
        assert np.array_equal(echo.phi[sign], phi0) and np.array_equal(echo.pi[sign], -pi0)
    assert not any(acc.any() for acc in echo.accumulators.values())


@pytest.mark.parametrize("kind", KINDS)
def test_integer_leapfrog_retraces_50k_steps_bit_for_bit(kind):
    assert_retraces_bit_for_bit(kind, CONFIG, length=50_000)


@pytest.mark.parametrize("word_bits", [12, 16, 30, 31, 32])
@pytest.mark.parametrize("kind", KINDS)
def test_other_word_lengths_retrace_bit_for_bit(kind, word_bits):
    assert_retraces_bit_for_bit(kind, FormatConfig(word_bits=word_bits), length=5_000)


@pytest.mark.parametrize("kind", KINDS)
def test_rhel_on_a_32_bit_emulator_matches_float64_bptt(kind):
    """At 32 bits the product accumulators drop acc_shift = 2 bits a step; the gradient must not notice."""
    config = FormatConfig(word_bits=32)
    assert config.acc_shift == 2 and FormatConfig(word_bits=31).acc_shift == 0
    core, forcing, phi0, pi0, target_weights = fidelity_case(kind, seed=5)
    wide = loaded_core(kind, core.param_codes.shape[1], seed=5, config=config)
    _, phi, pi = wide.forward(forcing, phi0, pi0)
    echo = wide.echo(forcing, phi, pi, target_weights, epsilon=1e-3)
    grads, grad_forcing = bptt_gradients(kind, wide.params, forcing, phi0, pi0, target_weights)
    assert_aligned(echo.grad_forcing, grad_forcing, "forcing", kind, 32)
    for name in ("a", "delta") if kind == "linear" else PARAM_NAMES:
        assert_aligned(echo.grad_params[name], grads[name], name, kind, 32)


def test_product_accumulators_of_32_bit_words_never_wrap():
    """The worst per-step term of a 32-bit echo, added to an accumulator at the limit: the int64 kernel
    gives what exact integer arithmetic gives (clamped and counted), never a wrapped value."""
    from echoforge.targets.emulator.fixed import ACC_LIMIT
    from echoforge.targets.emulator.kernels import _accumulate_products
    top = (1 << 31) - 1
    x_plus, y_plus = np.array([top, -top, top, 3]), np.array([top, top, top, 5])
    x_minus, y_minus = np.array([-top, top, 0, 1]), np.array([top, top, 0, 1])
    acc = np.array([ACC_LIMIT, -ACC_LIMIT, ACC_LIMIT - 5, 7])
    shift = FormatConfig(word_bits=32).acc_shift
    expected = [max(-ACC_LIMIT, min(ACC_LIMIT, int(a) + int(round_shift(int(xp) * int(yp) - int(xm) * int(ym), shift))))
                for a, xp, yp, xm, ym in zip(acc, x_plus, y_plus, x_minus, y_minus)]
    clamps = _accumulate_products(acc, x_plus, y_plus, x_minus, y_minus, shift)
    assert acc.tolist() == expected and clamps == 3


# ---- saturation ------------------------------------------------------------------------------------

def run_forward(core, forcing, length=100):
    batch, size = 2, core.param_codes.shape[1]
    zeros = np.zeros((batch, size))
    core.forward(np.full((batch, length, size), forcing), zeros, zeros)
    return core.stats


def test_small_inputs_do_not_saturate():
    core = loaded_core("nonlinear", 8, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = run_forward(core, 0.5)
    assert not report.saturated and report.reversible


def test_out_of_range_forcing_is_counted():
    core = loaded_core("linear", 8, seed=3)
    with pytest.warns(RuntimeWarning, match="input=1600"):
        report = run_forward(core, 1e3)
    assert report.counts["input"] == 2 * 100 * 8


def test_state_saturation_is_counted_and_breaks_reversibility():
    core = EmulatorCore()
    core.load(OscillatorParams("linear", a=np.zeros(4), delta=np.full(4, 0.5)))  # a free mass
    with pytest.warns(RuntimeWarning, match="no longer exactly reversible"):
        report = run_forward(core, 50.0, length=200)   # ϕ grows like f·t²/2 past ±128
    assert report.counts["state"] > 0 and not report.reversible


def test_parameter_saturation_is_counted():
    core = EmulatorCore()
    with pytest.warns(RuntimeWarning, match="param=2"):
        core.load(OscillatorParams("linear", a=np.array([100.0, 0.5]), delta=np.array([0.01, 9.0])))
        run_forward(core, 0.1)


# ---- fidelity to float64 ---------------------------------------------------------------------------

def float_leapfrog(kind, params, forcing, phi, pi):
    """Reference drift-kick-drift leapfrog in float64, looping over time (params: tensors or arrays)."""
    tanh = torch.tanh if isinstance(phi, torch.Tensor) else np.tanh
    a, delta, w, b, c = (getattr(params, name) for name in PARAM_NAMES)
    positions = []
    for k in range(forcing.shape[1]):
        mid = phi + delta / 2 * pi
        force = a * mid - forcing[:, k] if kind == "linear" else a * mid + c * tanh(w * mid + forcing[:, k] + b)
        pi = pi - delta * force
        phi = mid + delta / 2 * pi
        positions.append(phi)
    return positions


def bptt_gradients(kind, params, forcing, phi0, pi0, target_weights):
    """∂L/∂(params per lane, forcing) for L = Σ positions·target_weights, by autograd in float64."""
    batch, _, size = forcing.shape
    lanes = {name: torch.tensor(np.broadcast_to(getattr(params, name), (batch, size)).copy(),
                                requires_grad=True) for name in PARAM_NAMES}
    forcing_t = torch.tensor(forcing, requires_grad=True)
    positions = torch.stack(float_leapfrog(kind, SimpleNamespace(**lanes), forcing_t, torch.tensor(phi0),
                                           torch.tensor(pi0)), dim=1)
    (positions * torch.tensor(target_weights)).sum().backward()
    grads = {name: np.zeros((batch, size)) if t.grad is None else t.grad.numpy() for name, t in lanes.items()}
    return grads, forcing_t.grad.numpy()


def fidelity_case(kind, seed):
    rng = np.random.default_rng(seed)
    batch, length, size = 4, 200, 8
    core = loaded_core(kind, size, seed)
    forcing = representable(rng.normal(0, 0.5, (batch, length, size)))
    phi0, pi0 = representable(rng.normal(0, 0.5, (batch, size))), np.zeros((batch, size))
    return core, forcing, phi0, pi0, rng.normal(0, 1, (batch, length, size))


@pytest.mark.parametrize("kind", KINDS)
def test_forward_positions_match_float64_leapfrog(kind):
    core, forcing, phi0, pi0, _ = fidelity_case(kind, seed=4)
    positions, _, _ = core.forward(forcing, phi0, pi0)
    reference = np.stack(float_leapfrog(kind, core.params, forcing, phi0, pi0), axis=1)
    assert np.abs(positions - reference).max() <= POSITION_TOLERANCE * np.abs(reference).max()


@pytest.mark.parametrize("kind", KINDS)
def test_rhel_on_the_emulator_matches_float64_bptt(kind):
    core, forcing, phi0, pi0, target_weights = fidelity_case(kind, seed=5)
    _, phi, pi = core.forward(forcing, phi0, pi0)
    echo = core.echo(forcing, phi, pi, target_weights, epsilon=1e-6)   # ε raised to min_nudge_lsbs
    assert core.epsilon_used > 1e-6 and not core.stats.saturated
    grads, grad_forcing = bptt_gradients(kind, core.params, forcing, phi0, pi0, target_weights)
    assert_aligned(echo.grad_forcing, grad_forcing, "forcing", kind, CONFIG.word_bits)
    for name in PARAM_NAMES:
        if kind == "linear" and name in ("w", "b", "c"):
            assert not echo.grad_params[name].any()
        else:
            assert echo.grad_params[name].shape == phi0.shape
            assert_aligned(echo.grad_params[name], grads[name], name, kind, CONFIG.word_bits)


def test_epsilon_is_kept_when_representable_and_raised_otherwise():
    core = loaded_core("linear", 8, seed=8)
    nudges = np.random.default_rng(8).normal(0, 1, (2, 10, 8))
    q, _ = core.quantize_nudges(nudges, epsilon=1e-9)
    assert np.abs(q).max() == CONFIG.min_nudge_lsbs
    q, _ = core.quantize_nudges(nudges, epsilon=0.1)
    assert core.epsilon_used == 0.1 and np.abs(q).max() > CONFIG.min_nudge_lsbs
    _, saturated = core.quantize_nudges(nudges, epsilon=1e6)
    assert saturated > 0


def test_linear_gradient_does_not_depend_on_epsilon():
    core, forcing, phi0, pi0, target_weights = fidelity_case("linear", seed=9)
    _, phi, pi = core.forward(forcing, phi0, pi0)
    small, large = (core.echo(forcing, phi, pi, target_weights, epsilon) for epsilon in (1e-9, 0.1))
    assert cosine(small.grad_forcing, large.grad_forcing) >= 0.99999
    for name in ("a", "delta"):
        assert cosine(small.grad_params[name], large.grad_params[name]) >= 0.99999


def test_float_api_round_trips_into_the_integer_state():
    core, forcing, phi0, pi0, _ = fidelity_case("nonlinear", seed=6)
    _, phi, pi = core.forward(forcing, phi0, pi0)
    state = core.forward_int(STATE.quantize(forcing)[0], STATE.quantize(phi0)[0], STATE.quantize(pi0)[0])
    assert np.array_equal(STATE.quantize(phi)[0], state.phi) and np.array_equal(STATE.quantize(pi)[0], state.pi)
    echo = core.echo(forcing, phi, pi, np.zeros_like(forcing), epsilon=0.1)
    assert np.array_equal(echo.final_state[0][0], phi0) and np.array_equal(echo.final_state[1][1], -pi0)


@pytest.mark.filterwarnings("ignore:fixed-point emulator saturated")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", KINDS)
def test_float_api_gives_the_integer_api_bits(kind, dtype):
    """The float API quantises and scales inside the kernels: the same bits as quantising the streams,
    running the integer API and converting its outputs, with saturations counted the same."""
    core, forcing, phi0, pi0, target_weights = fidelity_case(kind, seed=11)
    forcing = (forcing * 100).astype(dtype)  # some samples beyond the state's ±128: saturated
    nudges = target_weights.astype(dtype)
    positions, phi, pi = core.forward(forcing, phi0, pi0)
    float_forward = core.stats
    codes, phi_q, pi_q = STATE.quantize(forcing)[0], STATE.quantize(phi0)[0], STATE.quantize(pi0)[0]
    reference = core.forward_int(codes, phi_q, pi_q)
    assert positions.dtype == dtype
    assert np.array_equal(positions, (reference.positions * STATE.lsb).astype(dtype))
    assert float_forward.counts["input"] == count_saturated(forcing) > 0
    assert float_forward.counts == {**reference.saturation.counts, "input": count_saturated(forcing)}

    echo = core.echo(forcing, phi, pi, nudges, epsilon=0.05)
    float_echo = core.stats
    nudge_codes, _ = core.quantize_nudges(nudges, 0.05)
    int_echo = core.echo_int(codes, reference.phi, reference.pi, nudge_codes)
    grad_forcing, grad_params = core._gradients(int_echo, core.epsilon_used)
    assert echo.grad_forcing.dtype == dtype and np.array_equal(echo.grad_forcing, grad_forcing.astype(dtype))
    assert all(np.array_equal(echo.grad_params[name], grad_params[name]) for name in PARAM_NAMES)
    assert float_echo.counts["state"] == int_echo.saturation.counts["state"]


def count_saturated(x):
    return int((np.abs(x.astype(np.float64)) * 2.0 ** STATE.frac_bits >= STATE.limit + 0.5).sum())


# ---- determinism -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_same_inputs_give_identical_bits(kind):
    core, forcing, phi0, pi0, target_weights = fidelity_case(kind, seed=7)
    codes = STATE.quantize(forcing)[0], STATE.quantize(phi0)[0], STATE.quantize(pi0)[0]
    nudges = STATE.quantize(target_weights, prescale=0.01)[0]
    runs = []
    for instance in (core, loaded_core(kind, 8, seed=7), core):
        forward = instance.forward_int(*codes)
        echo = instance.echo_int(codes[0], forward.phi, forward.pi, nudges)
        runs.append((forward.positions, forward.phi, forward.pi, echo.forcing_observable, echo.phi, echo.pi,
                     *echo.accumulators.values()))
    for run in runs[1:]:
        assert all(np.array_equal(x, y) for x, y in zip(runs[0], run))


def test_config_rejects_words_that_do_not_fit_int64():
    for word_bits in (11, 33, 40):
        with pytest.raises(ValueError, match="word_bits"):
            FormatConfig(word_bits=word_bits)
    assert Fixed(24, 16).limit == 2 ** 23 - 1 and str(Fixed(24, 16)) == "Q8.16"


@pytest.mark.parametrize("word_bits", [24, 32])  # the float lanes and the integer kernel
@pytest.mark.parametrize("side", [+1, -1])
def test_a_nudge_that_clamps_either_echo_is_counted(side, word_bits):
    """One step of a free mass from a momentum one code inside the state range: the nudge pushes exactly one
    of the two echoes past it, once per oscillator, and each such clamp is a state saturation."""
    core = EmulatorCore(FormatConfig(word_bits=word_bits))
    core.load(OscillatorParams("linear", a=np.zeros(4), delta=np.full(4, 0.5)))
    lim = core.config.state.limit
    zeros = np.zeros((2, 1, 4), dtype=np.int64)
    # The echo starts from −π: π = ∓(lim − 1) puts the +ε (side +1) or −ε (side −1) echo one code from the edge.
    pi = np.full((2, 4), -side * (lim - 1), dtype=np.int64)
    with pytest.warns(RuntimeWarning, match="saturated: state=8;"):
        echo = core.echo_int(zeros, np.zeros((2, 4), dtype=np.int64), pi, np.full((2, 1, 4), 3, dtype=np.int64))
    assert echo.saturation.counts["state"] == 2 * 4 and not echo.saturation.reversible
    clamped = 0 if side > 0 else 1
    assert np.all(np.abs(echo.pi[clamped]) == lim) and np.all(np.abs(echo.pi[1 - clamped]) < lim)
