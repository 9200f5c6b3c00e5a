"""The analog twin: a board's physics behind the HamiltonianCore contract, faults included."""

import numpy as np
import pytest
import torch
import yaml

from echoforge.models.core import FloatCore, OscillatorParams
from echoforge.runtime.device import Device, DeviceCore
from echoforge.runtime.simulator import simulated_board
from echoforge.targets.analog.board import Converter, Drift, Noise, load_board
from echoforge.targets.analog.physics import Oscillators
from echoforge.targets.analog.twin import AnalogTwin
from echoforge.targets.emulator import FormatConfig
from echoforge.targets.emulator.stream import EchoStream, ForwardStream

CONFIG = FormatConfig(24, state_frac=17)  # Q7.17: ±64, what these streams need with room to spare


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def _params(size=8, seed=0):
    rng = np.random.default_rng(seed)
    return OscillatorParams("linear", a=rng.uniform(0.1, 0.9, size), delta=rng.uniform(0.4, 0.7, size))


def _streams(batch=3, length=200, size=8, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, length, size)) * 0.5, rng.normal(size=(batch, length, size))


def _twin(board, params=None, **seeds):
    twin = AnalogTwin(board, CONFIG, **seeds)
    twin.load(params or _params())
    return twin


def _gradients(result):
    return np.concatenate([result.grad_params["a"].ravel(), result.grad_params["delta"].ravel(),
                           result.grad_forcing.ravel()])


def _rhel(core, forcing, nudges, epsilon=0.1):
    rest = np.zeros((forcing.shape[0], forcing.shape[2]))
    positions, phi, pi = core.forward(forcing, rest, rest)
    return positions, core.echo(forcing, phi, pi, nudges, epsilon)


SOFT = OscillatorParams("linear", a=np.array([0.002, 0.003, 0.004, 0.5]), delta=np.full(4, 0.6))


@pytest.mark.parametrize("params, forcing_scale, input_gain", [(None, 1.0, None), (SOFT, 0.02, (0.1, 100.0))],
                         ids=["word-scale", "soft-and-scaled"])
def test_an_ideal_twin_computes_what_the_float_core_computes(params, forcing_scale, input_gain):
    """σ = 0, Q = ∞, no noise, 24-bit converters and tuning: the twin is the HRU leapfrog in physical
    units (x = X₀ϕ, ẋ = X₀δπ/Δt, ω = √a δ/Δt), so what separates it from the float core is rounding to
    words (the forcing is given on the state word's grid, 2^−17): the tuning codes (ω within 1.5e-7 relative)
    and the 24-bit converters (2^−23 of full scale), the readouts quantised to the state word. Measured:
    positions within 6e-6 and gradients within 3e-5 of the float core (relative to their largest value);
    the bounds below leave a few times that. Soft oscillators (a ≤ 0.004), their DAC spanning 4a times
    the word's range, on a board whose input gain reaches only 100 (256 at X₀ = 1 V): the state scale
    X₀ < 1 V the mapping chose runs as exactly."""
    board = load_board("lc-tank-pcb").ideal()
    twin = _twin(board.replace(input_gain=input_gain) if input_gain else board, params)
    forcing, nudges = _streams(size=twin.params.size)
    forcing = CONFIG.state.dequantize(CONFIG.state.quantize(forcing * forcing_scale)[0])  # on the word's grid
    assert not any(twin.mapping.clipped[name].any() for name in twin.mapping.clipped)
    if params is SOFT:
        assert np.count_nonzero(twin.mapping.forcing_scale_v > board.dac.full_scale_v / CONFIG.state.max_value) == 3
        assert np.all(twin.mapping.position_scale_v < 1)
    positions, echo = _rhel(twin, forcing, nudges)
    reference = FloatCore(twin.params)
    ref_positions, ref_echo = _rhel(reference, forcing, nudges)
    assert np.abs(positions - ref_positions).max() <= 3e-5 * np.abs(ref_positions).max()
    assert np.abs(_gradients(echo) - _gradients(ref_echo)).max() <= 2e-4 * np.abs(_gradients(ref_echo)).max()
    assert not twin.stats.saturated


def test_the_twin_is_deterministic_given_its_seeds():
    board = load_board("lc-tank-pcb")
    forcing, nudges = _streams()
    first, again = (_rhel(_twin(board, fabrication_seed=3, noise_seed=4), forcing, nudges) for _ in range(2))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(_gradients(first[1]), _gradients(again[1]))
    other_noise = _rhel(_twin(board, fabrication_seed=3, noise_seed=5), forcing, nudges)
    assert not np.array_equal(first[0], other_noise[0])
    truths = [_twin(board, fabrication_seed=seed).truth()["frequency_hz"] for seed in (3, 4)]
    assert not np.array_equal(*truths)


def test_noise_differs_run_to_run_and_is_absent_when_off():
    forcing, _ = _streams()
    rest = np.zeros((3, 8))
    for noise, differs in ((Noise(0.0, 0.0), False), (Noise(1e-5, 0.0), True), (Noise(0.0, 1e-4), True)):
        twin = _twin(load_board("lc-tank-pcb").ideal().replace(noise=noise))
        runs = [twin.forward(forcing, rest, rest)[0] for _ in range(2)]
        assert (not np.array_equal(*runs)) == differs, noise


def test_results_do_not_depend_on_chunking():
    """The board simulator streams chunks; the physical state and each run's noise carry across them."""
    board = load_board("lc-tank-pcb")
    forcing, nudges = _streams(batch=2, length=50)
    f, _ = CONFIG.state.quantize(forcing)
    q, _ = CONFIG.state.quantize(nudges * 0.01)
    rest = np.zeros((2, 8), dtype=np.int64)
    whole = _twin(board, fabrication_seed=1, noise_seed=2)
    forward = whole.forward_int(f, rest, rest)
    echo = whole.echo_int(f, forward.phi, forward.pi, q)
    chunked = _twin(board, fabrication_seed=1, noise_seed=2)
    stream = ForwardStream(chunked, rest, rest)
    positions = np.concatenate([stream.run(f[:, s:s + 7]) for s in range(0, 50, 7)], axis=1)
    np.testing.assert_array_equal(positions, forward.positions)
    pair = EchoStream(chunked, stream.phi, stream.pi)
    observables = [pair.run(f[:, s:s + 9], q[:, s:s + 9]) for s in reversed(range(0, 50, 9))]
    np.testing.assert_array_equal(np.concatenate(observables[::-1], axis=1), echo.forcing_observable)
    np.testing.assert_array_equal(pair.accumulators[:, 0], echo.accumulators["mm"])


def test_mismatch_follows_sigma():
    """ω, g_in, g_out deviate from what was programmed by σ·N(0, 1) per oscillator: over 10 board
    instances of 64 oscillators the sample σ is within 12 % of the board's (3.5 standard errors)."""
    for sigma in (0.001, 0.01, 0.05):
        board = load_board("on-chip-array").replace(mismatch_sigma=sigma)
        codes = {name: np.full(64, 500) for name in ("frequency_hz", "input_gain", "readout_gain")}
        deviations = {name: [] for name in ("omega", "input_gain", "readout_gain")}
        for seed in range(10):
            oscillators = Oscillators(board, fabrication_seed=seed)
            truth = oscillators.program(0, codes)
            reference = Oscillators(board.replace(mismatch_sigma=0.0)).program(0, codes)
            for name in deviations:
                deviations[name].append(getattr(truth, name) / getattr(reference, name) - 1)
        for name, values in deviations.items():
            values = np.concatenate(values)
            assert abs(values.std() / sigma - 1) < 0.12, (sigma, name, values.std())
            assert abs(values.mean()) < 4 * sigma / np.sqrt(values.size), (sigma, name)


def test_a_ring_down_has_the_boards_quality_factor():
    """One oscillator released from ϕ = 1 with no drive: fit the decay of its peaks (τ) and count its
    zero crossings (f); Q = π f τ is the board's Q within 2 % (the leapfrog's frequency is 0.3 % above
    ω at θ = 0.25 rad per step)."""
    for quality in (30.0, 300.0):
        board = load_board("lc-tank-pcb").ideal().replace(quality_factor=quality)
        twin = _twin(board, OscillatorParams("linear", a=np.array([0.25]), delta=np.array([0.5])))
        steps = int(6 * quality / 0.25)
        start = np.array([[1 << CONFIG.state_frac]])  # ϕ = 1
        positions = twin.forward_int(np.zeros((1, steps, 1), dtype=np.int64), start, 0 * start).positions[0, :, 0]
        x = positions * CONFIG.state.lsb
        peaks = np.flatnonzero((x[1:-1] > x[:-2]) & (x[1:-1] >= x[2:]) & (x[1:-1] > 0)) + 1
        tau = -1 / np.polyfit(peaks * board.dt, np.log(x[peaks]), 1)[0]
        crossings = np.flatnonzero(np.signbit(x[:-1]) != np.signbit(x[1:]))
        frequency = (len(crossings) - 1) / 2 / ((crossings[-1] - crossings[0]) * board.dt)
        assert np.pi * frequency * tau == pytest.approx(quality, rel=0.02)


def test_converters_quantise_and_fine_converters_do_not():
    forcing, _ = _streams(batch=1, length=300)
    rest = np.zeros((1, 8))
    base = load_board("lc-tank-pcb").ideal()
    coarse_adc = _twin(base.replace(adc=Converter(8, base.adc.full_scale_v))).forward(forcing, rest, rest)[0]
    fine = _twin(base).forward(forcing, rest, rest)[0]
    assert len(np.unique(coarse_adc)) <= 255 < len(np.unique(fine))
    coarse_dac = _twin(base.replace(dac=Converter(4, base.dac.full_scale_v))).forward(forcing, rest, rest)[0]
    assert np.abs(coarse_dac - fine).max() > 0.05 * np.abs(fine).max()


def test_gain_drifts_with_board_time():
    """Runs tick the drift clock: run n sees gains g(1 + r·n·run_period). A linear board's positions
    scale with g_in·g_out, so a forward 200 runs later reads the predicted ratio per oscillator."""
    board = load_board("lc-tank-pcb").ideal().replace(drift=Drift(gain_sigma_per_s=1e-4, run_period_s=1.0))
    twin = _twin(board, fabrication_seed=2)
    forcing, _ = _streams(batch=1)
    rest = np.zeros((1, 8))
    first = twin.forward(forcing, rest, rest)[0]                        # run 0
    for _ in range(200):                                                # runs 1 … 200
        twin.oscillators.start(np.zeros((1, 1, 8)), np.zeros((1, 1, 8)))
    later = twin.forward(forcing, rest, rest)[0]                        # run 201
    physics = twin.physics
    predicted = (1 + 201 * physics.input_drift) * (1 + 201 * physics.readout_drift)
    measured = np.abs(later).max(axis=(0, 1)) / np.abs(first).max(axis=(0, 1))
    assert np.abs(predicted - 1).max() > 0.01
    np.testing.assert_allclose(measured, predicted, rtol=1e-4)


def test_the_compensated_echo_through_the_gain_hook_is_bptt_of_the_damped_board():
    """With Q = 100 the plain echo's gradient is far from BPTT of the damped model (dissipation.py);
    with echo gain 2γ and the compensation rate γ it matches to 1e-5 (measured 8e-6; the words'
    rounding), since the twin's damped leapfrog is the conformally symplectic map of dissipation.py."""
    from echoforge.targets.analog.dissipation import DampedBank, agreement, bptt

    board = load_board("lc-tank-pcb").ideal().replace(quality_factor=100.0)
    twin = _twin(board, _params(size=4, seed=1))
    forcing, nudges = _streams(batch=2, length=200, size=4)
    reference = bptt(DampedBank(twin.params, twin.physics.gamma * board.dt), forcing, nudges)

    def error():
        _, echo = _rhel(twin, forcing, nudges)
        estimate = {"a": echo.grad_params["a"].sum(0), "delta": echo.grad_params["delta"].sum(0),
                    "forcing": echo.grad_forcing}
        return agreement(estimate, reference)["all"][1]

    plain = error()
    twin.set_echo_gain(2 * twin.physics.gamma, twin.physics.gamma)
    compensated = error()
    assert compensated < 3e-5 and plain > 0.1


def test_echo_gain_is_refused_where_the_board_cannot_apply_it():
    chip = _twin(load_board("on-chip-array"))
    with pytest.raises(ValueError, match="echo_gain.available is false"):
        chip.set_echo_gain(1e3)
    pcb = _twin(load_board("lc-tank-pcb"))
    with pytest.raises(ValueError, match="max_rate_per_s"):
        pcb.set_echo_gain(1e9)


def test_the_twin_runs_linear_banks_on_the_oscillators_it_has():
    board = load_board("lc-tank-pcb")
    with pytest.raises(ValueError, match="runs linear HRU banks"):
        _twin(board, OscillatorParams("nonlinear", a=np.ones(2), delta=np.ones(2) / 2, c=np.ones(2)))
    with pytest.raises(ValueError, match="has 16"):
        AnalogTwin(board, CONFIG, first_oscillator=12).load(_params())
    out_of_range = OscillatorParams("linear", a=np.array([1e-8, 0.5]), delta=np.array([0.5, 0.5]))
    twin = _twin(board, out_of_range)
    assert twin.truth()["frequency_hz"][0] >= board.natural_frequency_hz[0] * (1 - 4 * board.mismatch_sigma)
    rest = np.zeros((1, 2))
    with pytest.warns(RuntimeWarning, match="param=2"):  # the frequency and the input gain, clipped to range
        twin.forward(np.zeros((1, 3, 2)), rest, rest)


def test_board_serve_runs_the_twin_behind_the_device_protocol():
    """`echoforge board serve --target analog-twin` on a real pseudo-terminal, small chunks: the board's
    RHEL gradient is bit for bit the in-process twin's (mismatch, noise and drift on; the compensated
    echo, the default on a board with echo gain)."""
    params = _params()
    forcing, nudges = _streams(batch=4, length=120)
    local = AnalogTwin(load_board("lc-tank-pcb"), CONFIG, fabrication_seed=2, noise_seed=(5, 0), echo_compensation=True)
    local.load(params)
    local_positions, local_echo = _rhel(local, forcing, nudges)
    options = ("--target", "analog-twin", "--fabrication-seed", "2", "--noise-seed", "5", "--max-chunk-steps", "32")
    with simulated_board(*options) as uri, DeviceCore(uri, config=CONFIG) as remote:
        info = remote.handshake()
        assert (info.target, info.capabilities.hru_kinds, info.capabilities.max_oscillators) == ("analog", ("linear",), 16)
        remote.load(params)
        positions, echo = _rhel(remote, forcing, nudges)
    np.testing.assert_array_equal(positions, local_positions)
    np.testing.assert_array_equal(_gradients(echo), _gradients(local_echo))


def _board_file(tmp_path, board):
    path = tmp_path / f"{board.id}.yaml"
    path.write_text(yaml.safe_dump(board.to_yaml(), sort_keys=False))
    return str(path)


def _served_gradient(options, params, forcing, nudges):
    with simulated_board("--target", "analog-twin", *options) as uri, DeviceCore(uri, config=CONFIG) as remote:
        remote.load(params)
        return _rhel(remote, forcing, nudges)[1]


def test_the_served_damped_twin_echoes_compensated_unless_told_not_to(tmp_path):
    """`board serve --target analog-twin` of a board with echo gain at Q = 100 (faults otherwise off),
    through a real pty: the served echo is the compensated one, γ̂ from the board's nominal Q, so its
    RHEL gradient is BPTT of the damped board (rel. error measured 1.0e-5, cosine 1.000000);
    --no-echo-compensation gives plain RHEL (measured rel. error 0.82, cosine 0.66)."""
    from echoforge.targets.analog.dissipation import DampedBank, agreement, bptt

    board = load_board("lc-tank-pcb").ideal().replace(quality_factor=100.0)
    params = _params(size=4, seed=1)
    forcing, nudges = _streams(batch=2, length=200, size=4)
    truth = _twin(board, params)
    reference = bptt(DampedBank(truth.params, truth.physics.gamma * board.dt), forcing, nudges)

    def error(*flags):
        echo = _served_gradient(("--board", _board_file(tmp_path, board), *flags), params, forcing, nudges)
        estimate = {"a": echo.grad_params["a"].sum(0), "delta": echo.grad_params["delta"].sum(0),
                    "forcing": echo.grad_forcing}
        return agreement(estimate, reference)["all"][1]

    compensated, plain = error(), error("--no-echo-compensation")
    assert compensated < 3e-5 and plain > 0.1, (compensated, plain)


def test_the_compensation_takes_the_calibrated_q_and_stays_within_the_boards_gain():
    """γ̂ = expected ω / Q: the board's Q without a calibration, the calibration's per oscillator with one;
    an oscillator needing more gain than the board has keeps the plain echo (gain and rate 0)."""
    from echoforge.targets.analog.calibration_file import Calibration

    board = load_board("lc-tank-pcb")
    twin = AnalogTwin(board, CONFIG, echo_compensation=True, first_oscillator=2)
    twin.load(_params(size=4))
    np.testing.assert_allclose(twin.compensation_rate, twin.mapping.expected_omega / board.quality_factor)
    np.testing.assert_allclose(twin.oscillators.echo_gain, 2 * twin.compensation_rate)
    n = board.oscillators
    values = {"frequency_hz": np.full(n, 1e5), "input_gain": np.ones(n), "readout_gain": np.ones(n)}
    quality = np.linspace(500.0, 2000.0, n)
    quality[3] = 20.0  # the bank's second oscillator: 2γ̂ ≈ 4e5/s, beyond the board's 1e5/s
    calibrated = AnalogTwin(board, CONFIG, echo_compensation=True, first_oscillator=2,
                            calibration=Calibration(board.id, values, {**values, "q": quality, "offset_v": np.zeros(n)}))
    calibrated.load(_params(size=4))
    expected = calibrated.mapping.expected_omega / quality[2:6]
    np.testing.assert_allclose(calibrated.compensation_rate, np.where(np.arange(4) == 1, 0.0, expected))
    np.testing.assert_allclose(calibrated.oscillators.echo_gain, 2 * calibrated.compensation_rate)
    assert AnalogTwin(load_board("on-chip-array"), CONFIG, echo_compensation=True).echo_compensation is False


def test_banks_over_the_protocol_sit_on_consecutive_oscillators(tmp_path):
    """Two banks of 4 on one served twin (5 % mismatch; noise and drift off): bank 1 runs on oscillators
    4…7 — its positions are bit for bit an in-process twin's placed there, not one placed at 0."""
    board = load_board("lc-tank-pcb").replace(mismatch_sigma=0.05, noise=Noise(0.0, 0.0), drift=Drift())
    params = [_params(size=4, seed=0), _params(size=4, seed=0)]  # the same bank twice: only placement differs
    forcing, _ = _streams(batch=2, length=100, size=4)
    rest = np.zeros((2, 4))

    def local(first):
        twin = AnalogTwin(board, CONFIG, fabrication_seed=3, first_oscillator=first)
        twin.load(params[0])
        return twin.forward(forcing, rest, rest)[0]

    options = ("--target", "analog-twin", "--board", _board_file(tmp_path, board), "--fabrication-seed", "3")
    with simulated_board(*options) as uri, Device(uri) as device:
        cores = [DeviceCore(device, bank=k, config=CONFIG) for k in (0, 1)]
        for core, bank in zip(cores, params):
            core.load(bank)
        served = [core.forward(forcing, rest, rest)[0] for core in cores]
    np.testing.assert_array_equal(served[0], local(0))
    np.testing.assert_array_equal(served[1], local(4))
    assert np.abs(served[1] - served[0]).max() > 0.01 * np.abs(served[0]).max()
