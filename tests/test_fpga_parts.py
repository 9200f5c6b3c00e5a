"""The FPGA parts and their design rules, as a user meets them: `echoforge compile --target fpga-PART`
refuses what does not fit with one line naming the rule, the resource and the node (one process each),
and writes the RTL of what does (--no-synth here; tests/test_fpga_synth.py synthesizes).
"""

import json

import pytest

from echoforge.targets.emulator.fixed import FormatConfig
from echoforge.targets.fpga.parts import ECP5_25F, PARTS, UP5K, bank_plan_of, block_rams, dsps_for
from test_compile_cli import assert_fails_with_one_line, echoforge


def run_with(tmp_path_factory, *overrides):
    """A run directory like conftest's tiny_run, with other model settings (a few training steps)."""
    from echoforge.models.training import Trainer, load_config

    output = tmp_path_factory.mktemp("run")
    config = load_config(None, ["steps=2", "eval_every=2", "model.hidden_size=8", *overrides])
    Trainer(config, output).run(progress=False)
    return output


def fits(part, kind, word_bits, oscillators, batch=1):
    plan = bank_plan_of(kind, FormatConfig(word_bits=word_bits), oscillators, batch)
    return (block_rams(part, plan.memories) <= part.bram.count
            and sum(dsps_for(part, a, b) for _, a, b in plan.multipliers) <= part.dsps)


# ------------------------------------------------------------------------------------ the numbers


@pytest.mark.parametrize("part", PARTS.values(), ids=lambda part: part.name)
def test_max_oscillators_is_the_largest_linear_bank_the_block_ram_holds(part):
    """At the widest word and one batch row; one more oscillator doubles the lane memories."""
    assert fits(part, "linear", part.dsp_width, part.max_oscillators)
    assert not fits(part, "linear", part.dsp_width, part.max_oscillators + 1)


def test_a_linear_bank_takes_eight_dsps_and_a_nonlinear_one_does_not_fit_the_up5k():
    for part in PARTS.values():
        plan = bank_plan_of("linear", FormatConfig(word_bits=part.dsp_width), 16, 1)
        assert [dsps_for(part, a, b) for _, a, b in plan.multipliers] == [1] * 8  # 4 for the step, 4 for the echo
    assert all(not fits(UP5K, "nonlinear", word, 16) for word in UP5K.word_bits)
    assert all(fits(ECP5_25F, "nonlinear", word, 16) for word in ECP5_25F.word_bits)


def test_block_ram_shapes():
    assert UP5K.bram.block_bits == 4096 and ECP5_25F.bram.block_bits == 18432
    assert UP5K.bram.blocks(512, 16) == 2 and UP5K.bram.blocks(256, 64) == 4 and UP5K.bram.blocks(2048, 1) == 1
    assert ECP5_25F.bram.blocks(512, 64) == 2 and ECP5_25F.bram.blocks(1025, 18) == 2  # 512×36, then 1024×18


# ------------------------------------------------------------------------------------ the CLI


def test_an_unknown_part_lists_the_targets(tmp_path):
    result = echoforge("compile", "run", "--target", "fpga-nope", "-o", tmp_path / "out")
    assert_fails_with_one_line(result, "invalid choice: 'fpga-nope'", "'fpga-ecp5-25f'", "'fpga-up5k'", "'emulator'")


def test_a_word_the_part_cannot_multiply_is_refused(tiny_run, tmp_path):
    result = echoforge("compile", tiny_run, "--target", "fpga-up5k", "--word-bits", "18", "-o", tmp_path / "out",
                       "--no-progress")
    assert_fails_with_one_line(result, "18", "fpga-up5k", "16")


def test_more_oscillators_than_the_part_holds_are_refused(tmp_path_factory, tmp_path):
    run = run_with(tmp_path_factory, "model.state_size=300")
    result = echoforge("compile", run, "--target", "fpga-up5k", "-o", tmp_path / "out", "--no-progress")
    assert_fails_with_one_line(result, "[oscillator-count]", "node 'blocks.0.hru.bank'",
                               "300 oscillators exceed fpga-up5k's 256")


def test_a_bank_with_more_products_than_the_part_has_dsps_is_refused(tmp_path_factory, tmp_path):
    run = run_with(tmp_path_factory, "model.state_size=8", "model.hru=nonlinear")
    result = echoforge("compile", run, "--target", "fpga-up5k", "-o", tmp_path / "out", "--no-progress")
    assert_fails_with_one_line(result, "[dsp-count]", "node 'blocks.0.hru.bank'", "SB_MAC16",
                               "the iCE40UP5K-SG48 has 8")


def test_a_bank_whose_memories_exceed_the_block_ram_is_refused(tmp_path_factory, tmp_path):
    run = run_with(tmp_path_factory, "model.state_size=2048", "model.hru=nonlinear", "model.num_blocks=1",
                   "batch_size=4")
    result = echoforge("compile", run, "--target", "fpga-ecp5-25f", "-o", tmp_path / "out", "--no-progress",
                       "--samples", "4")
    assert_fails_with_one_line(result, "[block-ram]", "node 'blocks.0.hru.bank'", "DP16KD",
                               "the LFE5U-25F-6BG381C has 56")


def test_a_batch_the_block_ram_cannot_hold_is_refused(tiny_run, tmp_path):
    result = echoforge("compile", tiny_run, "--target", "fpga-up5k", "--fpga-batch", "64", "--no-synth",
                       "-o", tmp_path / "out", "--no-progress")
    assert_fails_with_one_line(result, "blocks.0.hru.bank", "batch 64", "30 SB_RAM40_4K blocks", "--fpga-batch")


def test_without_synthesis_the_rtl_and_the_planned_resources_are_written(tiny_run, tmp_path):
    out = tmp_path / "out"
    result = echoforge("compile", tiny_run, "--target", "fpga-up5k", "--no-synth", "-o", out, "--no-progress")
    assert result.returncode == 0, result.stderr
    for bank in ("blocks.0.hru.bank", "blocks.1.hru.bank"):
        assert (out / "rtl" / bank / "echoforge_bank.v").exists() and (out / "rtl" / bank / "regmap.json").exists()
    build = json.loads((out / "report.json").read_text())["build"]
    data = build["data"]
    assert data["part"] == "fpga-up5k" and data["clock_mhz"] == UP5K.clock_mhz
    first = data["banks"][0]
    assert first["oscillators"] == 8 and first["batch"] == 16 and first["word_bits"] == 16
    assert first["planned"] == {"dsp": 8, "bram": block_rams(UP5K, bank_plan_of(
        "linear", FormatConfig(word_bits=16), 8, 16).memories)}
    assert first["clocks_per_step"] == {"forward": 128, "echo": 256}  # one lane-step per clock
    rhel = data["rhel_step"]
    assert rhel["batch"] == 16 and rhel["seconds_at_clock"] == pytest.approx(
        2 * rhel["length"] * (128 + 256) / 40e6)
    assert "FPGA: iCE40UP5K-SG48 (iCEBreaker)" in (out / "report.md").read_text()
