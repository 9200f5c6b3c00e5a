"""The target registry: targets are found by their folders, cheaply, and every command finds them there."""

import subprocess
import sys

import pytest

from echoforge.targets import BankSlot, board, boards, capabilities, target, targets


def test_emulator_registers_a_compile_target_and_a_board():
    assert target("emulator").capabilities is capabilities("emulator")
    assert capabilities("emulator").name == "emulator"
    assert "emulator" in boards() and board("emulator").cores is boards()["emulator"].cores


def test_every_target_names_itself_in_its_capabilities():
    for name, registered in targets().items():
        assert registered.capabilities.name == name


def test_a_board_kind_has_cores_or_serves_itself():
    from echoforge.targets import BoardKind

    with pytest.raises(ValueError, match="exactly one of cores and serve"):
        BoardKind("both", "", cores=lambda args: None, serve=lambda args: 0)
    with pytest.raises(ValueError, match="exactly one of cores and serve"):
        BoardKind("neither", "")


def test_an_unknown_target_lists_the_registered_ones():
    with pytest.raises(ValueError, match="unknown target 'nope' — use one of .*emulator"):
        target("nope")
    with pytest.raises(ValueError, match="unknown board target 'nope'"):
        board("nope")


def test_finding_the_targets_imports_no_heavy_module():
    """The CLI imports every target.py to build its parsers: that must not compile kernels or load torch."""
    code = ("import sys, echoforge.targets as t; t.targets(); t.boards(); "
            "print(sorted(m for m in ('numba', 'torch', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_board_core_factory_gives_a_fresh_core_for_a_format():
    from echoforge.cli import build_parser
    from echoforge.targets.emulator import EmulatorCore, FormatConfig

    args = build_parser().parse_args(["board", "serve", "--target", "emulator"])
    core = board("emulator").cores(args)(FormatConfig(word_bits=16), BankSlot(1, 8))
    assert isinstance(core, EmulatorCore) and core.config.word_bits == 16 and core.params is None


@pytest.mark.parametrize("command", [["compile", "x", "-o", "y", "--target", "nope"],
                                     ["board", "serve", "--target", "nope"]])
def test_cli_refuses_an_unknown_target_in_one_line(command):
    result = subprocess.run([sys.executable, "-m", "echoforge.cli", *command], capture_output=True, text=True)
    assert result.returncode == 2
    assert "invalid choice: 'nope'" in result.stderr and "emulator" in result.stderr
