"""`echoforge demo`, small: train → compile → simulated board on a pty → HIL fine-tuning → report; and the
board it started is gone afterwards."""

import json
import os
import re
from pathlib import Path

import pytest
import torch

from echoforge.cli import main

torch.set_num_threads(1)


def child_pids() -> set[int]:
    """Processes whose parent is this one (Linux /proc)."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():
            children.add(int(stat.parent.name))
    return children


def test_the_demo_runs_end_to_end_and_stops_its_board(tmp_path, capsys):
    before = child_pids()
    assert main(["demo", "--steps", "20", "--hil-steps", "4", "--fidelity-every", "2", "-o", str(tmp_path),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    for command in ("$ echoforge train", "$ echoforge compile", "$ echoforge board serve", "$ echoforge hil train"):
        assert command in out
    assert re.search(r"simulated board on /dev/pts/\d+", out)
    assert "fine-tuned in the loop" in out and "device = emulator bit for bit" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["hil"]["fidelity"]["checks"] == 2
    for plot in ("curves.png", "fidelity.png"):
        assert (tmp_path / plot).stat().st_size > 10_000
    assert (tmp_path / "program" / "program.yaml").exists() and (tmp_path / "train" / "best.pt").exists()
    assert child_pids() <= before


@pytest.mark.slow  # ~3 min (measured 165 s): the faults' retries wait out their retransmission timers
def test_the_demo_through_faults_ends_with_the_parameters_of_the_demo_without(tmp_path):
    """`demo --faults` promises that lost and damaged frames and a board reboot change no result: 12 steps in
    the loop (the reboot comes at the 100th echo chunk, about the tenth step) end bit-identical."""
    runs = {}
    for faults in ([], ["--faults"]):
        runs[bool(faults)] = tmp_path / ("faults" if faults else "clean")
        assert main(["demo", "--steps", "20", "--hil-steps", "12", "--fidelity-every", "6", "-o", str(runs[bool(faults)]),
                     "--no-progress", *faults]) == 0
    clean, faulty = (torch.load(runs[key] / "last.pt", weights_only=True)["model"] for key in (False, True))
    assert clean.keys() == faulty.keys() and all(torch.equal(clean[name], faulty[name]) for name in clean)
    link = json.loads((runs[True] / "summary.json").read_text())["hil"]["link"]
    assert link["replays"] == 1 and link["retries"] > 0 and link["crc_errors"] > 0, link
