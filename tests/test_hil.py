"""`echoforge hil train` against board simulators on pseudo-terminals: a run killed with SIGKILL resumes to
the parameters of an uninterrupted run, bit for bit, and so does a run through lost and corrupted frames
and a board reboot; the fidelity monitor finds the device's gradient equal to the emulator's and close to
float BPTT's; bad inputs fail with one line.

One tiny BasicMotions model (conftest.tiny_run: 2 blocks of 8 oscillators) is compiled once; every run
fine-tunes it for STEPS steps with the same config. The reference run is monitored every 3 steps and the
others are not, so the comparisons also show that monitoring leaves training untouched.
"""

import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from echoforge.cli import main
from echoforge.hil.fidelity import MIN_BPTT_COSINE, divergences
from echoforge.hil.trainer import HILTrainer, device_cores, hil_config
from echoforge.models.core import OscillatorParams
from echoforge.models.training import ConfigError, Trainer, load_config
from echoforge.runtime.device import Device
from echoforge.runtime.simulator import simulated_board
from echoforge.targets.emulator.lower import load_program
from test_runtime_device import board_process

torch.set_num_threads(1)
STEPS = 12
SETTINGS = [f"steps={STEPS}", "eval_every=2", "batch_size=8"]
FAST_LINK = {"retry_interval": 0.02, "max_retry_interval": 0.1}
STARTUP_SECONDS = 120


@pytest.fixture(scope="module")
def program_dir(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("program")
    assert main(["compile", str(tiny_run), "--target", "emulator", "-o", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def board():
    with simulated_board() as uri:
        yield uri


def train_in_process(program_dir, uri, output, fidelity_every=0):
    """A HIL run in this process; returns the trainer after run()."""
    program = load_program(program_dir)
    config = hil_config(program, program_dir, overrides=[*SETTINGS, f"output={output}"])
    with Device(uri, timeout=5.0, **FAST_LINK) as device:
        trainer = HILTrainer(config, output, program, program_dir, device, fidelity_every=fidelity_every)
        trainer.run(progress=False)
    return trainer


@pytest.fixture(scope="module")
def reference(program_dir, board, tmp_path_factory):
    """The uninterrupted, fault-free run, monitored every 3 steps."""
    return train_in_process(program_dir, board, tmp_path_factory.mktemp("reference"), fidelity_every=3)


def final_parameters(run):
    return torch.load(run / "last.pt", weights_only=True)["model"]


def assert_same_parameters(run, expected_run):
    got, expected = final_parameters(run), final_parameters(expected_run)
    assert got.keys() == expected.keys()
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def summary(run):
    return json.loads((run / "summary.json").read_text())


def echoforge(*args):
    return [sys.executable, "-m", "echoforge.cli", *args]


def hil_train_process(board, program_dir, run, *options):
    """`echoforge hil train` in a child process, unmonitored; returns once it has written its first
    checkpoint after a step (eval_every = 2; the one at step 0, before any step, does not count), so that
    whatever is done to it next happens mid-run."""
    command = echoforge("hil", "train", "--device", board, "--program", str(program_dir),
                        *(arg for s in SETTINGS for arg in ("--set", s)), "--fidelity-every", "0",
                        "--output", str(run), "--no-progress", *options)
    process = subprocess.Popen(command, cwd=run.parent, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metrics, deadline = run / "metrics.jsonl", time.monotonic() + STARTUP_SECONDS
    while not (metrics.exists() and re.search(r'"step": [1-9]', metrics.read_text())):
        assert time.monotonic() < deadline and process.poll() is None, process.stderr.read() if process.poll() else ""
        time.sleep(0.005)
    return process


def resume(board, run):
    return subprocess.run(echoforge("hil", "train", "--device", board, "--resume", str(run), "--no-progress"),
                          cwd=run.parent, capture_output=True, text=True, timeout=STARTUP_SECONDS)


# ---- checkpoints ------------------------------------------------------------------------------------------

def test_a_run_killed_with_sigkill_resumes_to_the_same_parameters(program_dir, board, reference, tmp_path):
    run = tmp_path / "killed"
    process = hil_train_process(board, program_dir, run)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert not (run / "summary.json").exists()  # it died mid-run
    killed_at = torch.load(run / "last.pt", weights_only=True)["step"]
    assert 0 < killed_at < STEPS

    resumed = resume(board, run)
    assert resumed.returncode == 0, resumed.stderr
    assert "fine-tuned in the loop" in resumed.stdout and "test accuracy" in resumed.stdout
    assert_same_parameters(run, reference.output)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [r["step"] for r in reference.records]  # no fidelity records: off


def test_a_board_that_stops_answering_mid_run_is_one_line_and_the_run_resumes(program_dir, reference, tmp_path):
    """The board freezes (SIGSTOP) mid-run: `hil train` ends with exit 2 and one line naming the board and
    the --resume command; resumed on another board, the run ends with the uninterrupted run's parameters."""
    run = tmp_path / "frozen"
    with board_process("--pty") as (board, frozen_board):
        process = hil_train_process(frozen_board, program_dir, run, "--timeout", "1")
        board.send_signal(signal.SIGSTOP)
        _, stderr = process.communicate(timeout=STARTUP_SECONDS)
        board.kill()
        board.wait()
    assert process.returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("echoforge hil: error: "), lines
    assert frozen_board in lines[0] and f"continue with --resume {run}" in lines[0]
    assert 0 < torch.load(run / "last.pt", weights_only=True)["step"] < STEPS
    with simulated_board() as fresh_board:
        resumed = resume(fresh_board, run)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_parameters(run, reference.output)


def test_the_program_as_compiled_is_validated_first_and_may_stay_the_best(program_dir, board, reference, tmp_path):
    """Step 0 is validated before any step (no training loss); a learning rate that wrecks the model
    leaves the start as the best-validation step: the model tested is the one the program was compiled from."""
    first = reference.records[0]
    assert first["step"] == 0 and first["train_loss"] is None and 0 < first["val_metric"] <= 1
    assert [record["step"] for record in reference.records] == list(range(0, STEPS + 1, 2))
    program = load_program(program_dir)
    run = tmp_path / "wrecked"
    config = hil_config(program, program_dir, overrides=["steps=2", "eval_every=2", "batch_size=8",
                                                         "optimizer.lr=10", f"output={run}"])
    with Device(board, timeout=5.0, **FAST_LINK) as device:
        trainer = HILTrainer(config, run, program, program_dir, device, fidelity_every=0)
        report = trainer.run(progress=False)
        assert report["best_step"] == 0 and trainer.records[1]["val_metric"] < trainer.records[0]["val_metric"]
    best, start = (torch.load(path, weights_only=True)["model"] for path in (run / "best.pt", trainer.source))
    assert all(torch.equal(best[name], start[name]) for name in start)
    assert (run / "curves.png").stat().st_size > 10_000  # plotted with step 0's missing training loss


# ---- faults -----------------------------------------------------------------------------------------------

def test_lost_and_corrupted_frames_and_a_reboot_change_no_bit(program_dir, reference, tmp_path):
    """Chunks of 32 steps, so that a phase is several commands and the reboot lands inside one."""
    faults = ("--drop", "0.01", "--corrupt", "0.01", "--reset-at", "ECHO_CHUNK:21", "--seed", "2",
              "--max-chunk-steps", "32")
    with simulated_board(*faults) as uri:
        trainer = train_in_process(program_dir, uri, tmp_path / "faulty")
    assert_same_parameters(trainer.output, reference.output)
    link = summary(trainer.output)["hil"]["link"]
    assert link["replays"] == 1 and link["retries"] > 0 and link["crc_errors"] > 0, link


# ---- fidelity monitor -------------------------------------------------------------------------------------

def test_the_device_gradient_equals_the_emulators_and_is_close_to_bptt(reference):
    checks = reference.monitor.records
    assert [check["step"] for check in checks] == [0, 3, 6, 9]
    for check in checks:
        for group, values in check["fidelity"].items():
            assert values["emulator_max_diff"] == 0.0, (check["step"], group)
            assert values["bptt_cosine"] > 0.9999 and abs(values["bptt_norm_ratio"] - 1) < 1e-3, (check, group)
        assert set(check["fidelity"]) == {"blocks.0.hru", "blocks.1.hru", "model"}
        assert all(seconds > 0 for seconds in check["seconds"].values())
    lines = [json.loads(line) for line in (reference.output / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "fidelity" in line] == [0, 3, 6, 9]


def test_the_report_has_plots_and_the_time_breakdown(reference):
    hil = summary(reference.output)["hil"]
    assert hil["fidelity"]["device_equals_emulator"] and hil["fidelity"]["checks"] == 4
    timing = hil["timing"]
    assert timing["checks_timed"] == 3  # the first check (program load, warm-up) is left out
    assert timing["hil_gradient_s"] > 0 and timing["host_rhel_gradient_s"] > 0
    parts = timing["hil_breakdown_s"]
    assert parts["device_compute"] > 0 and parts["link_transfer"] > 0 and parts["host"] > 0
    for plot in ("curves.png", "fidelity.png"):
        assert (reference.output / plot).stat().st_size > 10_000


# The device's test loss against the same parameters in float: measured |Δ| = 7.7e-7 (24-bit banks, one
# bit of headroom); the bound leaves a margin of 13×. Accuracy: at most one test series may flip.
DEVICE_FLOAT_LOSS_GAP = 1e-5


def test_the_device_and_float_test_scores_are_of_the_same_parameters(reference, tmp_path):
    """The float score is recomputed here from best.pt on a host model; the device's is that model's
    with its banks on the board, so the two differ only by the fixed-point rounding."""
    report = summary(reference.output)
    host = Trainer(load_config(reference.output / "config.yaml"), tmp_path)
    host.model.load_state_dict(torch.load(reference.output / "best.pt", weights_only=True)["model"])
    in_float = host.evaluate(host.data.test)
    assert report["hil"]["test_float"]["accuracy"] == in_float["accuracy"]
    assert report["hil"]["test_float"]["loss"] == pytest.approx(in_float["loss"], rel=1e-9)
    assert report["test"]["loss"] != in_float["loss"]  # the device's own score, not the float one again
    assert abs(report["test"]["loss"] - in_float["loss"]) <= DEVICE_FLOAT_LOSS_GAP
    assert abs(report["test"]["accuracy"] - in_float["accuracy"]) <= 1 / len(host.data.test.x)


def test_divergence_is_named_against_the_thresholds_where_host_rhel_meets_them():
    host_meets = {"host_rhel_cosine": 0.999999, "host_rhel_norm_ratio": 1.0}
    healthy = {"emulator_max_diff": 0.0, "bptt_cosine": 0.99999, "bptt_norm_ratio": 1.001} | host_meets
    assert divergences("blocks.0.hru", healthy) == []
    broken = {"emulator_max_diff": 2e-9, "bptt_cosine": MIN_BPTT_COSINE - 0.01, "bptt_norm_ratio": 0.7} | host_meets
    problems = divergences("blocks.0.hru", broken)
    assert len(problems) == 2 and all(problem.startswith("blocks.0.hru: ") for problem in problems)
    # A batch fitted to float32's last bit: host RHEL is as far from float64 BPTT, the board is not to blame.
    at_host_precision = broken | {"emulator_max_diff": 0.0, "host_rhel_cosine": -0.03, "host_rhel_norm_ratio": 0.14}
    assert divergences("blocks.0.hru", at_host_precision) == []


# ---- bad inputs -------------------------------------------------------------------------------------------

def one_line_error(capsys, argv, limit_seconds=None):
    started = time.monotonic()
    assert main(argv) == 2
    elapsed = time.monotonic() - started
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("echoforge hil: error: "), lines
    assert limit_seconds is None or elapsed < limit_seconds, elapsed
    return lines[0]


def test_a_missing_program_directory_is_one_line(capsys, tmp_path):
    line = one_line_error(capsys, ["hil", "train", "--device", "loop://", "--program", str(tmp_path / "nope")])
    assert str(tmp_path / "nope") in line


def test_a_board_that_is_not_there_fails_within_the_timeout(capsys, program_dir):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = f"socket://127.0.0.1:{unused.getsockname()[1]}"
    silent_master, silent = os.openpty()  # a serial line nobody answers on
    try:
        for uri in (closed_port, os.ttyname(silent)):
            # A wide bound (10× the timeout), so that a busy shared machine does not fail it; a hang, or
            # retries that outlive the deadline, still do.
            line = one_line_error(capsys, ["hil", "train", "--device", uri, "--program", str(program_dir),
                                           "--timeout", "1"], limit_seconds=10.0)
            assert uri in line
    finally:
        os.close(silent_master)
        os.close(silent)


@pytest.mark.parametrize("args, message", [
    (["--set", "seed=5"], "seed: the program was calibrated"),
    (["--set", "model.state_size=4"], "model: the config does not build the program's model"),
    (["--resume", "{tmp}"], "no last.pt and hil.yaml"),
])
def test_bad_runs_are_one_line(capsys, program_dir, board, tmp_path, args, message):
    argv = ["hil", "train", "--device", board, "--program", str(program_dir), "-o", str(tmp_path / "run"),
            *(arg.format(tmp=tmp_path) for arg in args)]
    assert message in one_line_error(capsys, argv)


# ---- refusals: what a HIL run will not train from ---------------------------------------------------------

def compile_copy(tiny_run, tmp_path):
    """The tiny run copied to tmp_path/run and compiled from there: its source checkpoint can be changed."""
    run = shutil.copytree(tiny_run, tmp_path / "run")
    out = tmp_path / "program"
    assert main(["compile", str(run), "--target", "emulator", "-o", str(out), "--no-progress"]) == 0
    return run, out


def hil_train(board, program, *args):
    return ["hil", "train", "--device", board, "--program", str(program), *args]


@pytest.mark.parametrize("change, message", [
    (lambda checkpoint: checkpoint.unlink(), "which is not there"),
    (lambda checkpoint: checkpoint.write_bytes(checkpoint.read_bytes() + b"\0"), "has changed since the program was compiled"),
])
def test_a_missing_or_changed_source_checkpoint_is_refused(capsys, tiny_run, board, tmp_path, change, message):
    run, program = compile_copy(tiny_run, tmp_path)
    change(run / "best.pt")
    line = one_line_error(capsys, hil_train(board, program, "-o", str(tmp_path / "hil")))
    assert message in line and str(run / "best.pt") in line


def test_a_program_compiled_from_onnx_is_refused(capsys, tiny_run, board, tmp_path):
    onnx_file, out = tmp_path / "tiny.onnx", tmp_path / "program"
    assert main(["export", str(tiny_run), "-o", str(onnx_file)]) == 0
    assert main(["compile", str(onnx_file), "-o", str(out), "--data", "basicmotions", "--no-time-channel",
                 "--no-progress"]) == 0
    line = one_line_error(capsys, hil_train(board, out, "-o", str(tmp_path / "hil")))
    assert "holds no training state" in line and str(onnx_file) in line


def test_a_learning_rule_other_than_rhel_is_refused(capsys, program_dir, board, tmp_path):
    line = one_line_error(capsys, hil_train(board, program_dir, "--set", "learning=bptt", "-o", str(tmp_path / "hil")))
    assert "learning: a board trains with RHEL, got 'bptt'" in line


def test_resuming_against_another_program_is_refused(capsys, tiny_run, reference, board, tmp_path):
    """docs/hil.md: a run resumes with the program it was trained with (same source, same formats)."""
    other = tmp_path / "program-16"
    assert main(["compile", str(tiny_run), "--target", "emulator", "--word-bits", "16", "-o", str(other),
                 "--no-progress"]) == 0
    before = (reference.output / "last.pt").read_bytes()
    line = one_line_error(capsys, ["hil", "train", "--device", board, "--resume", str(reference.output),
                                   "--program", str(other)])
    assert "is another program" in line and f"--program {reference.identity['program']}" in line
    assert (reference.output / "last.pt").read_bytes() == before  # refused before touching the run


def test_a_program_whose_banks_are_not_the_models_is_refused(program_dir):
    """The device banks must be the model's HRU banks, in order and in size."""
    program = load_program(program_dir)
    config = hil_config(program, program_dir)
    model = Trainer(config, program_dir / "unused").model
    first, second = program.banks
    with pytest.raises(ConfigError, match=r"device banks \['blocks.0.hru.bank'\] are not the model's HRU banks"):
        device_cores(None, dataclasses.replace(program, banks=(first,)), model)
    fewer = OscillatorParams.from_table(second.params.kind, second.params.table()[:, :4])
    with pytest.raises(ConfigError, match="blocks.1.hru.bank: the program has 4 linear oscillators, the model 8"):
        device_cores(None, dataclasses.replace(program, banks=(first, dataclasses.replace(second, params=fewer))), model)
