"""Board description files, calibration files and the mapping pass of the analog target."""

import math
import subprocess
import sys

import numpy as np
import pytest
import yaml

from echoforge.models.core import OscillatorParams
from echoforge.targets.analog.board import board_path, load_board, shipped_boards
from echoforge.targets.analog.calibration_file import Calibration, load_calibration, save_calibration
from echoforge.targets.analog.mapping import code_value, map_bank

STATE_MAX = 128.0  # a Q8.16 state word


def _document(name="lc-tank-pcb") -> dict:
    return yaml.safe_load(board_path(name).read_text())


def _write(tmp_path, document, name="board.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(document))
    return path


def _run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "echoforge.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_shipped_boards_load_by_name_and_differ_where_it_matters():
    assert shipped_boards() == ["lc-tank-pcb", "on-chip-array"]
    pcb, chip = load_board("lc-tank-pcb"), load_board("on-chip-array")
    assert (pcb.oscillators, chip.oscillators) == (16, 64)
    assert pcb.echo_gain.available and not chip.echo_gain.available
    assert pcb.dt == pytest.approx(1e-7)
    assert load_board(board_path("lc-tank-pcb")) == pcb  # by path too


def test_ideal_and_replace_keep_the_board_checked():
    board = load_board("lc-tank-pcb")
    ideal = board.ideal()
    assert (ideal.mismatch_sigma, ideal.quality_factor, ideal.noise.thermal_v, ideal.dac.bits) == (0, math.inf, 0, 24)
    assert board.replace(mismatch_sigma=0.05).mismatch_sigma == 0.05
    with pytest.raises(ValueError, match="quality_factor"):
        board.replace(quality_factor=-1.0)


@pytest.mark.parametrize("change, key, fix", [
    (lambda d: d.update(quality_factor=-3), "quality_factor", "Q > 0.5"),
    (lambda d: d.update(natural_frequency_hz=[2.0e6, 1.0e3]), "natural_frequency_hz", "swap them"),
    (lambda d: d["dac"].update(bits=0), "dac.bits", "2..24"),
    (lambda d: d.update(natural_frequency_hz=[1.0e3, 9.0e6]), "natural_frequency_hz", "sample_rate_hz/π"),
    (lambda d: d.update(mismatch_sigma=-0.01), "mismatch_sigma", "0.001"),
    (lambda d: d.update(oscilators=4), "oscilators", "check the spelling"),
    (lambda d: d.pop("adc"), "adc", "add it"),
    (lambda d: d.update(schema_version="2.0"), "schema_version", "upgrade echoforge"),
    (lambda d: d.update(sample_rate_hz="fast"), "sample_rate_hz", "write a number"),
    (lambda d: d["noise"].update(thermal_v=-1e-6), "noise.thermal_v", "0 or more"),
])
def test_a_bad_board_file_is_one_line_naming_file_key_and_fix(tmp_path, change, key, fix):
    document = _document()
    change(document)
    path = _write(tmp_path, document)
    with pytest.raises(ValueError) as error:
        load_board(path)
    lines = str(error.value).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"{path}: {key}: ") and fix in lines[0]


def test_every_problem_of_a_board_file_gets_its_own_line(tmp_path):
    document = _document()
    document.update(quality_factor=0, tuning_bits=0)
    document["adc"]["full_scale_v"] = -1
    with pytest.raises(ValueError) as error:
        load_board(_write(tmp_path, document))
    keys = [line.split(": ")[1] for line in str(error.value).splitlines()]
    assert keys == ["tuning_bits", "adc.full_scale_v", "quality_factor"]


def test_not_yaml_and_not_a_mapping_and_missing(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("id: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_board(broken)
    with pytest.raises(ValueError, match="expected a mapping"):
        load_board(_write(tmp_path, [1, 2]))
    with pytest.raises(FileNotFoundError, match="lc-tank-pcb, on-chip-array"):
        load_board(tmp_path / "absent.yaml")


def test_a_board_missing_its_numbers_names_each_once(tmp_path):
    """Required numbers absent: one line per key (was a TypeError from the range checks)."""
    with pytest.raises(ValueError) as refused:
        load_board(_write(tmp_path, {"schema_version": "1.0", "id": "bare"}))
    lines = str(refused.value).splitlines()
    keys = [line.split(": ")[1] for line in lines]
    assert len(keys) == len(set(keys)) and {"sample_rate_hz", "natural_frequency_hz", "quality_factor"} <= set(keys)
    assert all(line.endswith("add it (see docs/analog.md for the schema)") for line in lines)


def test_board_serve_refuses_an_impossible_board_in_one_line(tmp_path):
    document = _document()
    document["quality_factor"] = -5
    result = _run_cli("board", "serve", "--target", "analog-twin", "--board", str(_write(tmp_path, document)))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "quality_factor" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""


# ---- calibration files -------------------------------------------------------------------------------

def _calibration(board, scale=1.0) -> Calibration:
    n = board.oscillators
    programmed = {"frequency_hz": np.full(n, 1.0e6), "input_gain": np.full(n, 10.0), "readout_gain": np.full(n, 0.01)}
    measured = {"frequency_hz": np.full(n, 1.0e6 * scale), "q": np.full(n, 180.0), "input_gain": np.full(n, 10.0),
                "readout_gain": np.full(n, 0.01), "offset_v": np.full(n, 1e-4)}
    return Calibration(board.id, programmed, measured)


def test_a_calibration_round_trips_and_belongs_to_its_board(tmp_path):
    pcb, chip = load_board("lc-tank-pcb"), load_board("on-chip-array")
    path = save_calibration(_calibration(pcb, 1.02), tmp_path / "cal.yaml")
    calibration = load_calibration(path, pcb)
    np.testing.assert_allclose(calibration.correction("frequency_hz"), 1.02)
    with pytest.raises(ValueError) as error:
        load_calibration(path, chip)
    assert str(error.value).count("\n") == 0
    assert "measured on board 'lc-tank-pcb-rev-a'" in str(error.value) and "on-chip-array-64" in str(error.value)


def test_board_serve_refuses_another_boards_calibration_in_one_line(tmp_path):
    path = save_calibration(_calibration(load_board("on-chip-array")), tmp_path / "chip-cal.yaml")
    result = _run_cli("board", "serve", "--target", "analog-twin", "--board", "lc-tank-pcb", "--calibration", str(path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "board_id" in result.stderr and "Traceback" not in result.stderr


def test_a_malformed_calibration_names_the_oscillator(tmp_path):
    board = load_board("lc-tank-pcb")
    document = _calibration(board).to_yaml()
    document["oscillators"][3]["measured"]["q"] = -1.0
    path = tmp_path / "cal.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ValueError, match=r"oscillators\[3\]\.measured\.q: -1.0 must be positive"):
        load_calibration(path, board)


# ---- mapping -----------------------------------------------------------------------------------------

def _params(a, delta):
    return OscillatorParams("linear", a=np.asarray(a, float), delta=np.asarray(delta, float))


def test_mapping_turns_hru_parameters_into_the_boards_quantities():
    board = load_board("lc-tank-pcb")
    params = _params([0.1, 0.5, 0.9], [0.5, 0.6, 0.7])
    mapping = map_bank(board, params, STATE_MAX, node="hru")
    omega = np.sqrt(params.a) * params.delta / board.dt
    np.testing.assert_allclose(mapping.target["frequency_hz"], omega / (2 * np.pi))
    forcing_range = STATE_MAX * np.minimum(1, 4 * params.a)  # the DAC spans 4a times the word's range (a < ¼)
    np.testing.assert_allclose(mapping.forcing_scale_v, board.dac.full_scale_v / forcing_range)
    np.testing.assert_allclose(mapping.target["input_gain"], forcing_range / (params.a * board.dac.full_scale_v))
    np.testing.assert_allclose(mapping.target["readout_gain"], board.adc.full_scale_v / STATE_MAX)
    # tuning codes land within half a logarithmic step of the target
    for name, (low, high) in (("frequency_hz", board.natural_frequency_hz), ("input_gain", board.input_gain)):
        step = math.log(high / low) / ((1 << board.tuning_bits) - 1)
        np.testing.assert_allclose(np.log(mapping.programmed[name] / mapping.target[name]), 0, atol=step / 2 + 1e-12)
        np.testing.assert_array_equal(code_value(mapping.codes[name], low, high, board.tuning_bits),
                                      mapping.programmed[name])
    assert mapping.findings == ()


def test_a_calibration_divides_out_each_oscillators_correction():
    board = load_board("lc-tank-pcb")
    params = _params([0.3, 0.6], [0.5, 0.5])
    plain = map_bank(board, params, STATE_MAX)
    corrected = map_bank(board, params, STATE_MAX, calibration=_calibration(board, 1.05))
    np.testing.assert_allclose(corrected.programmed["frequency_hz"], plain.programmed["frequency_hz"] / 1.05, rtol=2e-3)
    np.testing.assert_allclose(corrected.expected["frequency_hz"], corrected.target["frequency_hz"], rtol=2e-3)
    np.testing.assert_allclose(corrected.offset_v, 1e-4)


def test_design_rules_name_node_oscillator_parameter_and_limit():
    board = load_board("lc-tank-pcb").replace(input_gain=(0.1, 1.0), readout_gain=(0.1, 1.0))
    params = _params([1e-7, 0.5, 0.5], [0.5, 0.5, 0.5])
    mapping = map_bank(board, params, STATE_MAX, node="blocks.0.hru.bank", first=14)
    findings = "\n".join(mapping.findings)
    assert "node 'blocks.0.hru.bank': [oscillators] needs oscillators 14..16; the board 'lc-tank-pcb-rev-a' has 16" \
        in findings
    assert "oscillator 0: [frequency_hz] 251.6 Hz is outside the board's [2e+04, 2.5e+06] Hz" in findings
    assert "keep a in [0.0006317, 9.87] at δ = 0.5 (a = 1e-07)" in findings
    # the gains' product is the bank's (4 for a soft oscillator: its DAC spans 4a times the word's range)
    assert "oscillator 0: [input_gain] 40 is outside the board's [0.1, 1] — no state scale fits it: the bank " \
        "fixes input × readout gain at 4, the board reaches [0.01, 1]; use a board with wider gain ranges" in findings
    assert mapping.clipped["frequency_hz"].tolist() == [True, False, False]


def test_the_state_and_forcing_scales_fit_a_trained_banks_gains_and_amplitudes():
    """A soft oscillator (a = 0.002, 0.01) gets a DAC spanning 4a times the word's range, so its small
    forcing meets the DAC's steps (a 14-bit DAC over the word's range would quantise it to a few);
    a wide word (±2048) asks for a readout gain below the board's 1e-3 at X₀ = 1 V, so the state scale
    X₀ < 1 V puts it a 4σ margin inside, the input gains moving with it. The gains' product is the
    bank's; nothing is clipped, nothing found."""
    board = load_board("lc-tank-pcb")
    state_max = 2048.0
    params = _params([0.002, 0.01, 0.5], [0.5, 0.5, 0.5])
    mapping = map_bank(board, params, state_max)
    assert mapping.findings == () and not any(clipped.any() for clipped in mapping.clipped.values())
    np.testing.assert_allclose(mapping.forcing_scale_v * state_max, [1 / 0.008, 1 / 0.04, 1.0])
    margin = math.exp(4 * board.mismatch_sigma)
    np.testing.assert_allclose(mapping.target["readout_gain"], board.readout_gain[0] * margin)
    assert np.all(mapping.position_scale_v < 1)
    product = mapping.target["input_gain"] * mapping.target["readout_gain"]
    np.testing.assert_allclose(product, board.adc.full_scale_v / (params.a * mapping.forcing_scale_v * state_max))


def test_compile_for_the_analog_board_writes_the_mapping_and_the_expected_accuracy(tiny_run, tmp_path):
    out = tmp_path / "analog"
    result = _run_cli("compile", str(tiny_run), "--target", "analog", "--board", "lc-tank-pcb", "-o", str(out),
                      "--no-progress", timeout=600)
    assert result.returncode == 0, result.stderr
    mapping = yaml.safe_load((out / "mapping.yaml").read_text())
    assert mapping["board"] == "lc-tank-pcb-rev-a"
    assert [bank["first_oscillator"] for bank in mapping["banks"]] == [0, 8]
    report = (out / "report.md").read_text()
    assert "Analog board: lc-tank-pcb-rev-a" in report and "expected on the board (twin, fabrication seed 0)" in report


def test_compile_refuses_a_board_that_cannot_hold_the_model(tiny_run, tmp_path):
    document = _document()
    document["natural_frequency_hz"] = [2.0e6, 2.5e6]
    board = _write(tmp_path, document)
    result = _run_cli("compile", str(tiny_run), "--target", "analog", "--board", str(board), "-o",
                      str(tmp_path / "out"), "--no-progress", timeout=600)
    assert result.returncode == 2
    error = result.stderr.strip().splitlines()[-1]
    assert "[frequency_hz]" in error and "outside the board's [2e+06, 2.5e+06] Hz" in error and "more in report.md" in error
    assert "Traceback" not in result.stderr
    assert "design rule: node" in (tmp_path / "out" / "report.md").read_text()


def test_compile_for_the_analog_target_needs_a_board(tmp_path):
    from argparse import Namespace

    from echoforge.targets import BuildContext
    from echoforge.targets.analog.build import build

    with pytest.raises(ValueError, match="--target analog needs --board BOARD"):
        build(BuildContext(None, tmp_path, Namespace(board=None), None, None))
