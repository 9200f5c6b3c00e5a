"""`echoforge calibrate` (issue 16): ring-down and sweep through the runtime, fitted per oscillator, land
within a stated tolerance of the twin's truth; the file is keyed by the board and the mapping uses it."""

import numpy as np
import pytest
import torch

from echoforge.cli import main
from echoforge.runtime.simulator import simulated_board
from echoforge.targets.analog import calibration as cal
from echoforge.targets.analog.board import load_board
from echoforge.targets.analog.calibration_file import load_calibration, save_calibration
from echoforge.targets.analog.twin import AnalogTwin
from echoforge.targets.emulator import FormatConfig

# Measured worst cases over 16 (lc-tank-pcb, σ 1 % and 5 %, Q 200 and 1000) and 64 oscillators
# (on-chip-array, σ 5 %, Q 5000, 12-bit converters): frequency 3e-7, Q 2e-3, either gain 1.4e-3 relative,
# offset 0.3 ADC steps (no dither: below one step the ADC cannot say). Bounds: ×3 to ×10 of those.
TOLERANCE = {"frequency_hz": 3e-6, "q": 1e-2, "input_gain": 5e-3, "readout_gain": 5e-3}
OFFSET_ADC_STEPS = 1.0


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def calibration_errors(measured: dict, truth: dict, board) -> dict:
    """Relative errors per quantity, the offset's in ADC steps."""
    errors = {name: np.abs(measured[name] / truth[name] - 1).max() for name in TOLERANCE}
    errors["offset_v"] = np.abs(measured["offset_v"] - truth["offset_v"]).max() / board.adc.lsb_v
    return errors


def assert_within_tolerance(measured, truth, board):
    errors = calibration_errors(measured, truth, board)
    for name, bound in TOLERANCE.items():
        assert errors[name] < bound, (name, errors[name])
    assert errors["offset_v"] < OFFSET_ADC_STEPS, errors["offset_v"]


def twin_for(board, fabrication_seed):
    return AnalogTwin(board, FormatConfig(24), fabrication_seed=fabrication_seed, noise_seed=1)


@pytest.mark.parametrize("sigma", [0.01, 0.05])
def test_fitted_values_match_the_twins_truth(sigma):
    """The twin's mismatch (σ of frequency and gains) is 10–60× the calibration's error."""
    board = load_board("lc-tank-pcb").replace(mismatch_sigma=sigma)
    twin = twin_for(board, fabrication_seed=3)
    calibration, fit = cal.calibrate(twin, board)
    truth = twin.truth()
    assert_within_tolerance(calibration.measured, truth, board)
    spread = np.abs(truth["frequency_hz"] / calibration.programmed["frequency_hz"] - 1).max()
    assert spread > 100 * TOLERANCE["frequency_hz"] and spread > sigma  # there was something to find
    np.testing.assert_allclose(fit.ringdown_quality, truth["q"], rtol=TOLERANCE["q"])  # the ring-down alone


@pytest.mark.slow
def test_the_on_chip_array_is_calibrated_too():
    """64 oscillators, 12-bit converters, Q 5000, σ 5 % (about 90 s)."""
    board = load_board("on-chip-array")
    twin = twin_for(board, fabrication_seed=3)
    calibration, _ = cal.calibrate(twin, board)
    assert_within_tolerance(calibration.measured, twin.truth(), board)


def test_the_mapping_lands_on_target_with_the_calibration(tmp_path):
    """Compiled with the calibration, the board's true frequencies and gains are the HRU's targets up to
    the tuning DAC's step; without it they are off by the mismatch."""
    board = load_board("lc-tank-pcb").replace(mismatch_sigma=0.05)
    calibration, _ = cal.calibrate(twin_for(board, 4), board)
    path = save_calibration(calibration, tmp_path / "cal.yaml")
    params = cal.OscillatorParams("linear", np.linspace(0.2, 0.9, 16), np.linspace(0.4, 0.7, 16))
    misses = {}
    for label, used in (("raw", None), ("calibrated", load_calibration(path, board))):
        twin = AnalogTwin(board, FormatConfig(24), fabrication_seed=4, calibration=used)
        twin.load(params)
        truth = twin.truth()
        misses[label] = max(np.abs(truth[name] / twin.mapping.target[name] - 1).max()
                            for name in ("frequency_hz", "input_gain", "readout_gain"))
    code_step = np.log(board.input_gain[1] / board.input_gain[0]) / (1 << board.tuning_bits)  # widest range
    assert misses["calibrated"] < code_step + 5e-3 < misses["raw"]


def test_calibrate_command_through_a_served_twin(tmp_path, capsys):
    """`echoforge calibrate` against `echoforge board serve --target analog-twin` on a pseudo-terminal: the
    file is written, keyed by the board, and its values are the served board instance's truth."""
    board = load_board("lc-tank-pcb")
    output = tmp_path / "cal.yaml"
    with simulated_board("--target", "analog-twin", "--board", "lc-tank-pcb", "--fabrication-seed", "7") as uri:
        assert main(["calibrate", "--device", uri, "--board", "lc-tank-pcb", "-o", str(output), "--no-progress"]) == 0
    assert "16 oscillators calibrated" in capsys.readouterr().out
    calibration = load_calibration(output, board)
    reference = twin_for(board, fabrication_seed=7)
    cal.Bench(reference, board)  # the same calibration bank: the same programmed values, the same truth
    np.testing.assert_array_equal(calibration.programmed["frequency_hz"], reference.mapping.programmed["frequency_hz"])
    assert_within_tolerance(calibration.measured, reference.truth(), board)


def test_an_unreachable_board_or_a_bad_board_file_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["calibrate", "--device", "socket://127.0.0.1:9", "--board", "lc-tank-pcb",
                 "-o", str(tmp_path / "cal.yaml"), "--timeout", "1"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "is the board served" in error
    bad = tmp_path / "board.yaml"
    bad.write_text("schema_version: '1.0'\noscillators: [16\n")
    assert main(["calibrate", "--device", "socket://127.0.0.1:9", "--board", str(bad), "-o", str(tmp_path / "c.yaml")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert not (tmp_path / "cal.yaml").exists()


@pytest.mark.slow
def test_calibrate_command_through_the_scpi_instruments(tmp_path, capsys):
    """`echoforge calibrate --device AWG --digitizer DIGITIZER` against `board serve --scpi` (about 30 s):
    frequency and Q as through the protocol; the instruments show no state registers, so the readout
    gain stays as programmed and the input gain carries the product g_in·g_out — what the host needs."""
    board = load_board("lc-tank-pcb")
    output = tmp_path / "cal.yaml"
    with simulated_board("--target", "analog-twin", "--scpi", "0", "--fabrication-seed", "7") as names:
        awg, digitizer = names.split()
        assert main(["calibrate", "--device", awg, "--digitizer", digitizer, "--board", "lc-tank-pcb",
                     "-o", str(output), "--no-progress"]) == 0
    measured = load_calibration(output, board).measured
    reference = twin_for(board, fabrication_seed=7)
    cal.Bench(reference, board)
    truth = reference.truth()
    errors = calibration_errors(measured, truth, board)
    assert errors["frequency_hz"] < TOLERANCE["frequency_hz"] and errors["q"] < TOLERANCE["q"]
    programmed = reference.mapping.programmed["readout_gain"]
    np.testing.assert_allclose(measured["readout_gain"], programmed, rtol=1e-12)  # the regression's ratio is 1
    np.testing.assert_allclose(measured["input_gain"], truth["input_gain"] * truth["readout_gain"] / programmed,
                               rtol=TOLERANCE["input_gain"])
