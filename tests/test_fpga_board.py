"""`echoforge board serve --target fpga-sim`: the device protocol served by the generated Verilog of each
bank under Verilator, so `echoforge hil train` runs on the RTL unchanged — and ends with the parameters of
the same run on the emulator board, bit for bit. A missing Verilator is one line and exit 2.

The tiny BasicMotions model (conftest.tiny_run) is compiled once; its banks' simulators are built
before the board starts (tens of seconds each, once per format: the board would otherwise build inside
the host's first command timeout).
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from echoforge.cli import main
from echoforge.hil.trainer import HILTrainer, hil_config
from echoforge.runtime.device import Device
from echoforge.runtime.simulator import simulated_board
from echoforge.targets.emulator.lower import load_program
from echoforge.targets.fpga.core import RTLCore

torch.set_num_threads(1)
SETTINGS = ["steps=3", "eval_every=3", "batch_size=8"]
FAST_LINK = {"retry_interval": 0.05, "max_retry_interval": 0.2}


@pytest.fixture(scope="module")
def program_dir(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("program")
    assert main(["compile", str(tiny_run), "--target", "emulator", "-o", str(out), "--no-progress"]) == 0
    return out


def train(program_dir, uri, output):
    """A HIL run; returns (its start parameters, its final parameters, the board HELLO named)."""
    program = load_program(program_dir)
    config = hil_config(program, program_dir, overrides=[*SETTINGS, f"output={output}"])
    with Device(uri, timeout=30.0, **FAST_LINK) as device:
        trainer = HILTrainer(config, output, program, program_dir, device, fidelity_every=0)
        start = {name: value.detach().clone() for name, value in trainer.model.state_dict().items()}
        trainer.run(progress=False)
    board = json.loads((output / "summary.json").read_text())["hil"]["board"]
    return start, torch.load(output / "last.pt", weights_only=True)["model"], board


def test_hil_training_on_the_rtl_board_ends_with_the_emulator_boards_parameters(program_dir, tmp_path):
    for bank in load_program(program_dir).banks:  # build the simulators the board will use
        core = RTLCore(bank.config)
        core.load(bank.params)
        core.simulation()
    with simulated_board() as uri:
        start, expected, emulator_board = train(program_dir, uri, tmp_path / "emulator")
    with simulated_board("--target", "fpga-sim") as uri:
        _, got, rtl_board = train(program_dir, uri, tmp_path / "rtl")
    assert emulator_board.startswith("emulator board") and rtl_board.startswith("fpga board")
    assert got.keys() == expected.keys()
    assert any(not torch.equal(expected[name], start[name]) for name in start)  # training moved them
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def test_serving_the_rtl_board_without_verilator_is_one_line_and_exit_2(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "echoforge.cli", "board", "serve", "--target", "fpga-sim", "--pty"],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "apt-get install verilator" in lines[0], done.stderr
