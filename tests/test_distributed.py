"""Scale-out on torch.distributed (issue 12): `echoforge train --nproc 2` and `echoforge hil train` with two
simulated boards end where one process / one board does on the same global batch (dropout on), a run
resumes on another number of ranks, a board killed mid-run stops the run with one line naming it and a
checkpoint of its last completed step, from which it resumes with the board back to the uninterrupted
run's parameters bit for bit; the fidelity monitor checks every board and names the one that drifted; a
silent peer ends a rank after the collective timeout; the backend choice; bad inputs are one line.

Every multi-rank run here starts two ranks on localhost (gloo) through `--nproc` / repeated `--device`,
as a user would; each run is tiny (BasicMotions, 8 features, 8 oscillators, batch 8, a few steps), and
still takes from 10 s to most of a minute on a loaded 2-core machine (fresh interpreters importing
torch), so the longest (resume on 2 ranks, the killed board) are marked slow. No GPU here: NCCL is
checked as far as the backend choice goes.

Tolerances (measured, float32): the ranks sum each batch reduction (batch-norm statistics, every weight
gradient's sum over rows) in another order than one process, so parameters differ by rounding that
Adam carries on. Largest difference relative to the tensor's largest entry: host training, 6 steps,
1.2e-7 (a 2-rank run resumed in one process and a 1-process run resumed on 2 ranks: 1.2e-7, 8e-8); HIL,
12 steps, 1.9e-5 (the boards' fixed point turns a rounding difference in the forcing into an
occasional one-LSB code difference). The bounds leave a margin of about 10×. Two runs on the same
number of ranks are bit-identical (the killed-and-resumed HIL run equals the uninterrupted one).
"""

import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import torch
from test_hil import (
    train_in_process,  # one board, in this process: steps 12, eval_every 2, batch 8
)
from test_runtime_device import board_process
from torch.distributed.elastic.utils.distributed import get_free_port

from echoforge.cli import main
from echoforge.hil.trainer import snapshot
from echoforge.models import distributed
from echoforge.models.training import Trainer, load_config
from echoforge.runtime.simulator import simulated_board

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
HOST = ["model.hidden_size=8", "model.state_size=8", "batch_size=8", "eval_every=3"]  # dropout: the default 0.05
HOST_TOLERANCE = 1e-6
HIL_TOLERANCE = 2e-4
RUN_SECONDS = 600


def echoforge(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "echoforge.cli", *args], check=False, capture_output=True, text=True, cwd=cwd,
                          timeout=RUN_SECONDS)


def host_run(output: Path, steps: int, *, resume: bool = False) -> Trainer:
    """One process, in this process."""
    config = load_config(None, [*HOST, f"steps={steps}", f"output={output}"])
    trainer = Trainer(config, output)
    trainer.run(resume=resume, progress=False)
    return trainer


def checkpoint(run: Path) -> dict:
    return torch.load(run / "last.pt", weights_only=True)


def relative_difference(run: Path, other: Path) -> float:
    """Largest |a − b| over the model's tensors, relative to the tensor's largest entry; integer
    tensors (batch-norm counters) must be equal."""
    a, b = checkpoint(run)["model"], checkpoint(other)["model"]
    assert a.keys() == b.keys()
    worst = 0.0
    for name, value in a.items():
        if value.is_floating_point():
            worst = max(worst, float((value - b[name]).abs().max() / value.abs().max()))
        else:
            assert torch.equal(value, b[name]), name
    return worst


def assert_close_runs(run: Path, other: Path, tolerance: float) -> None:
    """Same steps, same dropout draws (torch's RNG state), same validation steps, parameters within
    tolerance."""
    a, b = checkpoint(run), checkpoint(other)
    assert a["step"] == b["step"]
    assert torch.equal(a["rng"], b["rng"])  # every rank drew the global batch's masks, as one process does
    assert [r["step"] for r in a["records"]] == [r["step"] for r in b["records"]]
    assert relative_difference(run, other) <= tolerance


# ---- data-parallel host training ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """`echoforge train --nproc 2`, 6 steps."""
    run = tmp_path_factory.mktemp("two-ranks") / "run"
    result = echoforge("train", *(a for s in HOST for a in ("--set", s)), "--steps", "6", "--nproc", "2",
                       "-o", str(run), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("BasicMotions") == 1  # rank 0 alone reports
    return run


def test_two_ranks_end_where_one_process_does(two_ranks, tmp_path):
    one = host_run(tmp_path / "one", 6).output
    assert_close_runs(two_ranks, one, HOST_TOLERANCE)
    assert json.loads((two_ranks / "summary.json").read_text())["steps"] == 6
    assert (two_ranks / "curves.png").exists() and len((two_ranks / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_two_rank_run_resumes_in_one_process(two_ranks, tmp_path):
    """The checkpoint of two ranks is one process's: extended by 3 steps in one process, it ends where an
    uninterrupted one-process run of 9 steps does."""
    run = tmp_path / "resumed"
    run.mkdir()
    for name in ("config.yaml", "last.pt", "best.pt", "metrics.jsonl"):
        (run / name).write_bytes((two_ranks / name).read_bytes())
    config = load_config(run / "config.yaml", ["steps=9", f"output={run}"])
    Trainer(config, run).run(resume=True, progress=False)
    assert_close_runs(run, host_run(tmp_path / "one", 9).output, HOST_TOLERANCE)


@pytest.mark.slow
def test_a_one_process_run_resumes_on_two_ranks(tmp_path):
    one = host_run(tmp_path / "one", 6).output
    run = host_run(tmp_path / "resumed", 3).output
    result = echoforge("train", "--resume", str(run), "--steps", "6", "--nproc", "2", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert_close_runs(run, one, HOST_TOLERANCE)


@pytest.mark.parametrize("args,message", [
    (["--nproc", "2", "--set", "batch_size=7"], "batch_size: the global batch of 7 does not split over 2 ranks"),
    (["--nproc", "0"], "argument --nproc: expected a positive integer"),
])
def test_bad_rank_settings_are_one_line(args, message, tmp_path):
    result = echoforge("train", *args, "-o", str(tmp_path / "run"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


SILENT_PEER = """
import sys, time, torch
from echoforge.models import distributed

def body(ranks):
    if ranks.rank == 1:
        time.sleep(60)  # alive, its connections open, never in the collective
    else:
        distributed.all_reduce(torch.zeros(1), ranks)
    return 0

try:
    sys.exit(distributed.run_as_rank(body))
except ValueError as error:
    sys.exit(f"error: {error}")
"""


def test_a_silent_peer_is_one_line_after_the_collective_timeout(tmp_path):
    """A rank whose peer neither answers nor closes its connections (a node that lost power) gives up after
    ECHOFORGE_COLLECTIVE_TIMEOUT seconds with one line, instead of waiting for ever."""
    port = get_free_port()
    ranks = [subprocess.Popen([sys.executable, "-c", SILENT_PEER], stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                              env=os.environ | {"RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                                "MASTER_PORT": str(port), "ECHOFORGE_COLLECTIVE_TIMEOUT": "2"})
             for rank in (0, 1)]
    try:
        _, stderr = ranks[0].communicate(timeout=RUN_SECONDS)
        assert ranks[0].returncode == 1 and ranks[1].poll() is None
    finally:
        ranks[1].kill()
        ranks[1].communicate()
    assert stderr.splitlines() == [("error: rank 0 of 2: no answer from the other ranks within 2 s (a rank or node "
                                   "stopped without closing its connections; ECHOFORGE_COLLECTIVE_TIMEOUT sets the "
                                   "wait)")], stderr


def test_the_backend_is_nccl_with_cuda_and_nccl_else_gloo(monkeypatch):
    """No GPU here: the choice is checked with torch's CUDA and NCCL probes answered both ways, and a rank's
    collective device is its LOCAL_RANK's GPU under NCCL, the CPU under gloo."""
    assert distributed.choose_backend() == ("nccl" if torch.cuda.is_available() else "gloo")
    for cuda, nccl, backend in [(True, True, "nccl"), (True, False, "gloo"), (False, True, "gloo")]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        monkeypatch.setattr(torch.distributed, "is_nccl_available", lambda nccl=nccl: nccl)
        assert distributed.choose_backend() == backend
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.Ranks(3, 4, "nccl").device() == torch.device("cuda", 1)
    assert distributed.Ranks(3, 4, "gloo").device() == torch.device("cpu")


@pytest.mark.parametrize("value", ["soon", "0", "-5"])
def test_a_bad_collective_timeout_is_one_line(value, monkeypatch):
    monkeypatch.setenv("ECHOFORGE_COLLECTIVE_TIMEOUT", value)
    with pytest.raises(ValueError, match=f"ECHOFORGE_COLLECTIVE_TIMEOUT='{value}': expected a positive number"):
        distributed.collective_timeout()


def test_the_step_snapshot_is_left_alone_by_later_steps(tmp_path):
    """The state a HIL trainer keeps at each step's start, for the checkpoint of a failure: later steps change
    the trainer's tensors in place, not the snapshot's."""
    trainer = Trainer(load_config(None, HOST), tmp_path / "run")
    trainer.train_step()
    kept = snapshot(trainer.state())
    before = {name: value.clone() for name, value in kept["model"].items()}
    moments = [state["exp_avg"].clone() for state in kept["optimizer"]["state"].values()]
    trainer.train_step()
    assert trainer.step == 2 and kept["step"] == 1
    assert all(torch.equal(kept["model"][name], value) for name, value in before.items())
    assert all(torch.equal(state["exp_avg"], moment) for state, moment in zip(kept["optimizer"]["state"].values(), moments))
    assert not torch.equal(kept["model"]["head.weight"], trainer.model.state_dict()["head.weight"])


# ---- one rank per board -------------------------------------------------------------------------------------

HIL_STEPS = 12
HIL = [f"steps={HIL_STEPS}", "eval_every=2", "batch_size=8"]


@pytest.fixture(scope="module")
def program_dir(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("program")
    assert main(["compile", str(tiny_run), "--target", "emulator", "-o", str(out), "--no-progress"]) == 0
    return out


def hil_command(boards, program_dir, run, *options):
    devices = [a for board in boards for a in ("--device", board)]
    return [sys.executable, "-m", "echoforge.cli", "hil", "train", *devices, "--program", str(program_dir),
            *(a for s in HIL for a in ("--set", s)), "--output", str(run), "--no-progress", *options]


@pytest.fixture(scope="module")
def two_boards_run(program_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("two-boards") / "run"
    with simulated_board() as first, simulated_board() as second:
        result = subprocess.run(hil_command([first, second], program_dir, run), check=False, capture_output=True, text=True,
                                cwd=run.parent, timeout=RUN_SECONDS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("fine-tuned in the loop") == 1
    return run


def test_two_boards_end_where_one_board_does(two_boards_run, program_dir, tmp_path):
    with simulated_board() as board:
        one = train_in_process(program_dir, board, tmp_path / "one")
    assert one.config["batch_size"] == 8 and one.step == HIL_STEPS
    assert_close_runs(two_boards_run, one.output, HIL_TOLERANCE)


def on_a_terminal(command, cwd, trigger, action):
    """Run `command` with its stderr on a pseudo-terminal (rank 0 then shows its progress bar, one refresh a
    step); call `action()` once `trigger(stderr so far)` holds. Returns (exit status, stderr)."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a bar needs columns
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=terminal)
    os.close(terminal)
    output, fired, deadline = b"", False, time.monotonic() + RUN_SECONDS
    try:
        while time.monotonic() < deadline:
            if not select.select([controller], [], [], 1.0)[0]:
                continue
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: every process writing to the terminal has ended
                break
            output += chunk
            if not fired and trigger(output.decode(errors="replace")):
                action()
                fired = True
        return process.wait(timeout=RUN_SECONDS), output.decode(errors="replace")
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()


def steps_shown(stderr: str) -> int:
    """The last step count rank 0's progress bar showed."""
    counts = re.findall(rf"(\d+)/{HIL_STEPS} \[", stderr)
    return int(counts[-1]) if counts else 0


def message_lines(stderr: str) -> list[str]:
    """What stderr says but the progress bar's refreshes (another rank's line can follow a refresh at once)."""
    pieces = re.split(r"[\r\n]+|(?=echoforge hil: )", re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", stderr))
    return [piece.strip() for piece in pieces if piece.strip() and not piece.strip().startswith("hil rhel")]


@pytest.mark.slow
def test_a_killed_board_stops_the_run_with_its_last_step_and_it_resumes_bit_for_bit(two_boards_run, program_dir,
                                                                                    tmp_path):
    """Periodic checkpoints every 5 steps; the second board's simulator is killed after step 7: the run
    stops with one line naming the board, its checkpoint is the last completed step (7 or 8, past the
    periodic one at 5), and resumed with a board back it ends with the uninterrupted run's bits."""
    run = tmp_path / "killed"
    with simulated_board() as first, board_process("--pty") as (second_process, second):
        command = hil_command([first, second], program_dir, run, "--timeout", "1", "--set", "eval_every=5")
        command.remove("--no-progress")
        status, stderr = on_a_terminal(command, tmp_path, lambda shown: steps_shown(shown) >= 7,
                                       lambda: second_process.send_signal(signal.SIGKILL))
        assert status == 2, stderr
        lines = message_lines(stderr)
        assert len(lines) == 1 and second in lines[0] and "rank 1 of 2" in lines[0], repr(stderr)
        stopped = checkpoint(run)
        assert stopped["records"][-1]["step"] == 5 and 7 <= stopped["step"] <= 8, stopped["step"]
        assert f"stopped with a checkpoint at step {stopped['step']}; continue with --resume {run}" in lines[0]
        with simulated_board() as back:
            resumed = subprocess.run([sys.executable, "-m", "echoforge.cli", "hil", "train", "--device", first,
                                      "--device", back, "--resume", str(run), "--no-progress"],
                                     check=False, capture_output=True, text=True, cwd=tmp_path, timeout=RUN_SECONDS)
    assert resumed.returncode == 0, resumed.stderr
    assert relative_difference(run, two_boards_run) == 0.0  # bit for bit
    assert torch.equal(checkpoint(run)["rng"], checkpoint(two_boards_run)["rng"])
    assert [r["step"] for r in checkpoint(run)["records"]] == [0, 5, 10, 12]


def test_the_fidelity_monitor_checks_every_board_and_names_the_one_that_drifted(program_dir, tmp_path):
    """Two boards, the second an analog twin (mismatch, noise) where the program expects the emulator's
    arithmetic: each rank checks its own board, so the warnings and the summary name the second board alone,
    and the first is found equal to the emulator bit for bit."""
    run = tmp_path / "run"
    with simulated_board() as exact, simulated_board("--target", "analog-twin") as drifting:
        command = hil_command([exact, drifting], program_dir, run, "--fidelity-every", "2", "--set", "steps=4")
        result = subprocess.run(command, check=False, capture_output=True, text=True, cwd=tmp_path, timeout=RUN_SECONDS)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "gradient fidelity at step" in line]
    assert warnings and all(f" on {drifting}: " in line and exact not in line for line in warnings), result.stderr
    checks = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"fidelity"' in line]
    assert sorted((check["step"], check["board"]) for check in checks) == sorted(
        (step, board) for step in (0, 2) for board in (exact, drifting))
    boards = json.loads((run / "summary.json").read_text())["hil"]["fidelity"]["boards"]
    assert boards[exact] == {"checks": 2, "device_equals_emulator": True, "warned_checks": 0}
    assert not boards[drifting]["device_equals_emulator"] and boards[drifting]["warned_checks"] > 0
    assert f"per board: {exact} = emulator; {drifting} ≠ emulator, warnings at" in result.stdout


def test_a_devices_file_without_boards_is_one_line(program_dir, tmp_path):
    empty = tmp_path / "boards.txt"
    empty.write_text("# no boards yet\n\n")
    result = echoforge("hil", "train", "--devices", str(empty), "--program", str(program_dir), cwd=tmp_path)
    assert result.returncode == 2 and "no board URIs" in result.stderr and result.stderr.count("\n") == 1
