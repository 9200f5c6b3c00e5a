"""The everyday commands as a new user meets them (issue 18), each run as a process: wrong results
refused, config typos named, resume with new settings, board limits, conventions, the Python API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from everyday import echoforge, one_line_error, compiled_tiny_program  # noqa: F401 (the tiny_program fixture)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def accurate_run(tmp_path_factory) -> Path:
    """A run that reaches 100 % validation accuracy (8 features and oscillators, 150 steps, ~3 s), so
    that a compile ruining it shows."""
    from echoforge.models.training import Trainer, load_config

    output = tmp_path_factory.mktemp("accurate-run")
    config = load_config(None, ["steps=150", "eval_every=25", "model.hidden_size=8", "model.state_size=8"])
    Trainer(config, output).run(progress=False)
    return output


# ---- 1. a ruined result exits 0 -------------------------------------------------------------------

def test_compile_refuses_headroom_beyond_its_bound_before_loading(tiny_run, tmp_path):
    one_line_error(echoforge("compile", tiny_run, "-o", tmp_path / "b", "--headroom-bits", "40"),
                   "--headroom-bits", "0–16")
    assert not (tmp_path / "b").exists()


def test_compile_whose_fixed_point_costs_accuracy_is_a_finding_unless_accepted(accurate_run, tmp_path):
    # The shortest word with nine bits of headroom leaves the states two or three fraction bits: a 100 %
    # model falls to 25–50 % (measured on this model at several training lengths).
    ruin = ["--word-bits", "12", "--headroom-bits", "9", "--allow-saturation", "--no-progress"]
    ruined = echoforge("compile", accurate_run, "-o", tmp_path / "b", *ruin)
    line = one_line_error(ruined, "[score]", "points of accuracy", "--max-change")
    assert "float 100.0%" in line
    assert (tmp_path / "b" / "report.md").exists()  # the numbers are written before the refusal
    accepted = echoforge("compile", accurate_run, "-o", tmp_path / "b", *ruin, "--max-change", "100")
    assert accepted.returncode == 0, accepted.stderr


def test_compile_refuses_data_with_another_class_count(tiny_run, tmp_path):
    assert echoforge("export", tiny_run, "-o", tmp_path / "m.onnx").returncode == 0
    one_line_error(echoforge("compile", tmp_path / "m.onnx", "-o", tmp_path / "b", "--data", "scp1"),
                   "scp1", "2 classes", "4 outputs")
    assert not (tmp_path / "b").exists()


# ---- 2. config typos: one line naming the file, the key and the nearest valid key -------------------

def test_a_config_file_typo_names_the_file_the_key_and_the_nearest_key(tmp_path):
    config = tmp_path / "t.yaml"
    config.write_text("optimizer:\n  lrr: 0.01\n")
    one_line_error(echoforge("train", config), "t.yaml", "'optimizer.lrr'", "did you mean 'optimizer.lr'")


@pytest.mark.parametrize("override, fragments", [
    ("optimizer.lrr=0.1", ("--set optimizer.lrr=0.1", "did you mean 'optimizer.lr'")),
    ("model.hiden_size=32", ("'model.hiden_size'", "did you mean 'model.hidden_size'")),
    ("model.hidden_size=1.5", ("model.hidden_size must be like 16", "1.5")),
    ("optimizer.lr=fast", ("optimizer.lr must be like",)),
])
def test_an_override_typo_or_a_value_of_the_wrong_kind_is_one_line(override, fragments):
    one_line_error(echoforge("train", "--set", override), *fragments)


def test_hil_train_checks_its_config_before_it_connects(tiny_program):
    # Port 9 (discard) on localhost is closed: had the config passed, this would be a connection error.
    one_line_error(echoforge("hil", "train", "--device", "socket://127.0.0.1:9", "--program", tiny_program,
                             "--set", "optimizer.lrr=0.1"), "did you mean 'optimizer.lr'")


# ---- 3. --resume with new settings: extend as asked, or refuse in one line ----------------------------

def _parameters(run: Path) -> dict:
    return torch.load(run / "last.pt", weights_only=True)["model"]


def test_train_resume_extends_a_finished_run_to_what_a_longer_run_gives(tmp_path):
    small = ["--set", "model.hidden_size=4", "--set", "model.state_size=4", "--set", "eval_every=5", "--no-progress"]
    assert echoforge("train", "--steps", "10", "-o", tmp_path / "extended", *small).returncode == 0
    extended = echoforge("train", "--resume", tmp_path / "extended", "--set", "steps=15", "--no-progress")
    assert extended.returncode == 0, extended.stderr
    assert "of 15" in extended.stdout
    assert echoforge("train", "--steps", "15", "-o", tmp_path / "straight", *small).returncode == 0
    a, b = _parameters(tmp_path / "extended"), _parameters(tmp_path / "straight")
    assert all(torch.equal(a[name], b[name]) for name in a)
    one_line_error(echoforge("train", "--resume", tmp_path / "extended"), "finished its 15 steps", "--steps")
    one_line_error(echoforge("train", "--resume", tmp_path / "extended", "--steps", "12"), "done 15 steps")
    one_line_error(echoforge("train", "--resume", tmp_path / "extended", "--set", "optimizer.lr=0.1"),
                   "only steps may change", "optimizer.lr=0.1")


def test_hil_resume_extends_the_run_or_refuses_other_settings(tiny_program, tmp_path):
    from echoforge.runtime.simulator import simulated_board

    run = tmp_path / "hil"
    with simulated_board("--target", "emulator") as uri:
        first = echoforge("hil", "train", "--device", uri, "--program", tiny_program, "--steps", "2",
                          "--set", "eval_every=1", "--fidelity-every", "0", "-o", run, "--no-progress")
        assert first.returncode == 0, first.stderr
        more = echoforge("hil", "train", "--device", uri, "--resume", run, "--steps", "3", "--no-progress")
        assert more.returncode == 0, more.stderr
        assert json.loads((run / "summary.json").read_text())["steps"] == 3
        one_line_error(echoforge("hil", "train", "--device", uri, "--resume", run, "--set", "optimizer.lr=0.1"),
                       "only steps may change")


# ---- 4. the compiler and the board agree on a target's limits -----------------------------------------

@pytest.fixture(scope="module")
def board_uri():
    """A simulated emulator board on a pty, for the module."""
    from echoforge.runtime.simulator import simulated_board

    with simulated_board("--target", "emulator") as uri:
        yield uri


def test_the_board_reports_the_emulator_targets_limits(board_uri):
    from echoforge.targets import capabilities

    caps = capabilities("emulator")
    probe = echoforge("devices", "--probe", board_uri, "--timeout", "5")
    assert probe.returncode == 0, probe.stderr
    assert f"{caps.max_oscillators} oscillators" in probe.stdout
    assert f"words {min(caps.word_bits)}–{max(caps.word_bits)} bits" in probe.stdout


def test_a_program_the_board_cannot_hold_is_refused_before_anything_is_sent(board_uri):
    import numpy as np

    from echoforge.runtime.commands import BankProgram
    from echoforge.runtime.device import Device
    from echoforge.targets.emulator import FormatConfig

    with Device(board_uri, timeout=5) as device:
        too_many = device.info.capabilities.max_oscillators + 1
        program = BankProgram("linear", FormatConfig(24), np.zeros((5, too_many), dtype=np.int64))
        with pytest.raises(ValueError, match=rf"{board_uri}: the emulator board .* holds {too_many - 1} "
                                             rf"oscillators .* the program has {too_many} in 1 — train a smaller"):
            device.set_bank(0, program)
        assert "LOAD_PROGRAM" not in device.traffic


# ---- 6. conventions ------------------------------------------------------------------------------------

def test_python_m_echoforge_and_version():
    from echoforge import __version__

    result = echoforge("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"echoforge {__version__}"
    assert echoforge("--help").stdout.startswith("usage: echoforge")


def test_devices_probe_fails_when_a_given_uri_does_not_answer():
    # Port 9 (discard) on localhost is closed: nothing answers there.
    one_line_error(echoforge("devices", "--probe", "socket://127.0.0.1:9", "--timeout", "0.5"),
                   "no answer from socket://127.0.0.1:9")


def test_export_of_a_non_checkpoint_never_advises_weights_only_false(tmp_path):
    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_bytes(b"PK\x03\x04 something else entirely")
    line = one_line_error(echoforge("export", not_a_checkpoint, "-o", tmp_path / "m.onnx"),
                          "a run directory or a checkpoint")
    assert "weights_only" not in line


def test_emulate_of_a_run_directory_says_compile_it_first(tiny_run):
    one_line_error(echoforge("emulate", tiny_run), "compile it first", f"echoforge compile {tiny_run}")


# ---- 7. the Python API ----------------------------------------------------------------------------------

def test_the_api_pages_examples_run_as_written(tiny_run, tiny_program, tmp_path):
    """Each Python block of docs/api.md, in a fresh interpreter, on this test's run and program."""
    import re
    import subprocess
    import sys

    page = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, re.S)
    assert len(blocks) == 3
    for block in blocks:
        code = (block.replace('"runs/bm"', repr(str(tiny_run))).replace('"build/bm"', repr(str(tiny_program)))
                .replace('"runs/api"', repr(str(tmp_path / "api"))))
        result = subprocess.run([sys.executable, "-c", "import torch; torch.set_num_threads(1)\n" + code],
                                capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert result.returncode == 0, (block, result.stderr[-2000:])
        assert "accuracy" in result.stdout or "test" in result.stdout


def test_emulate_writes_scores_and_trace_to_a_file(tiny_program, tmp_path):
    result = echoforge("emulate", tiny_program, "--trace", "--no-progress", "-o", tmp_path / "scores.json")
    assert result.returncode == 0, result.stderr
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["metric"] == "accuracy" and 0 <= scores["fixed"] <= 1 and scores["split"] == "test"
    assert {row["node"] for row in scores["trace"]} >= {"input", "head"}
    assert f"{100 * scores['fixed']:.1f}%" in result.stdout


# ---- 11. smaller ---------------------------------------------------------------------------------------

def test_a_refused_visa_connection_says_so_not_zero_attempts():
    result = echoforge("devices", "--probe", "TCPIP::127.0.0.1::9::SOCKET", "--timeout", "0.5")
    one_line_error(result, "no answer from TCPIP::127.0.0.1::9::SOCKET")
    assert "cannot send to the device" in result.stdout and "0 attempt" not in result.stdout


def test_a_bad_word_length_is_refused_before_the_model_is_even_read(tmp_path):
    one_line_error(echoforge("compile", tmp_path / "no-such-run", "-o", tmp_path / "b", "--word-bits", "40"),
                   "--word-bits 40", "12–32 bits")


def test_the_report_gives_formats_only_to_nodes_that_run_in_fixed_point(tiny_program):
    rows = [line.split(" | ") for line in (tiny_program / "report.md").read_text().splitlines()
            if line.startswith("| ") and " | host | " in line or " | device | " in line]
    host = [row for row in rows if row[2] == "host"]
    device = [row for row in rows if row[2] == "device"]
    assert host and device
    assert all(row[3] == "float" and "Q" not in row[3] for row in host)
    assert all(row[3].startswith("positions Q") for row in device)
