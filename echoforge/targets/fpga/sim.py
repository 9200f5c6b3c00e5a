"""Co-simulation of the generated bank: a generated Verilog testbench, built with Verilator (or Icarus).

The testbench (``testbench``) reads a run from hex files in its working directory — settings
(run.hex), parameter codes, the lanes' start state, the echo accumulators, the input beats — writes
them through the register map, streams the beats through the valid/ready ports (with random gaps on
both streams when a stall seed is given: the bits must not depend on them), writes every out beat to
out.hex and, when the core is idle again, the counters, state and accumulators to result.hex. So
everything a program changes is data and one build serves every program of the same formats: builds
are cached by a hash of the generated sources (``ECHOFORGE_RTL_CACHE``, default
~/.cache/echoforge/rtl), since verilating costs tens of seconds and a run milliseconds.

Verilator (Debian 5.006, ``verilator --binary``) is the main simulator; Icarus (``iverilog``/``vvp``)
the second opinion. A missing one is a ``SimulatorMissing`` (a FileNotFoundError: one line with the
install command, exit 2 from the CLI).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from echoforge.targets.emulator.fixed import FormatConfig

from .rtl import RtlDesign, generate_core, hex_lines
from .rtl.datapath import ACC_WIDTH, PARAM_FIELDS
from .rtl.top import CONTROL

SIMULATORS = {"verilator": ("verilator",), "icarus": ("iverilog", "vvp")}
INSTALL = {"verilator": "apt-get install verilator", "icarus": "apt-get install iverilog"}
BUILD_TIMEOUT_S = 1800
RUN_HEX, PARAMS_HEX, STATE_HEX, ACC_HEX, IN_HEX, OUT_HEX, RESULT_HEX = (
    "run.hex", "params.hex", "state.hex", "acc.hex", "in.hex", "out.hex", "result.hex")
RESULT_COUNTERS = ("COUNTER_STATE", "COUNTER_FORCE", "COUNTER_PREACT", "COUNTER_ACCUMULATOR", "CYCLES")
TESTBENCH = "tb.v"


class SimulatorMissing(FileNotFoundError):
    """A simulator binary is not on PATH."""


class SimulationFailed(RuntimeError):
    """The simulator exited with an error (a bug in the generated design or testbench, not user input)."""


def require(simulator: str) -> None:
    """Raise SimulatorMissing, naming the install command, unless ``simulator``'s tools are on PATH."""
    if simulator not in SIMULATORS:
        raise ValueError(f"unknown simulator {simulator!r}; use one of {', '.join(SIMULATORS)}")
    for tool in SIMULATORS[simulator]:
        if shutil.which(tool) is None:
            raise SimulatorMissing(f"{tool} not found: install it with `{INSTALL[simulator]}`")


@dataclass(frozen=True)
class RunResult:
    """One run's out beats and end registers (int64 codes)."""

    out: np.ndarray        # (beats,)
    counters: np.ndarray   # (4,) state, force, preact, accumulator
    cycles: int
    phi: np.ndarray        # (lanes,)
    pi: np.ndarray         # (lanes,)
    acc: np.ndarray        # (pairs, rows) echo accumulators in the design's row order


@dataclass(frozen=True)
class Simulation:
    """A built simulator of one design; ``run`` is one simulated run, in its own directory."""

    design: RtlDesign
    simulator: str
    command: tuple[str, ...]       # what runs the build (cwd = the run directory)
    accumulators: tuple[str, ...]  # the design's accumulator rows

    def run(self, *, mode: str, params: np.ndarray, phi: np.ndarray, pi: np.ndarray, forcing: np.ndarray,
            steps: int, nudges: np.ndarray | None = None, acc: np.ndarray | None = None, flip: bool = False,
            stall_seed: int = 0, timeout: float = 3600.0) -> RunResult:
        """Run ``steps`` steps of ``mode`` ("forward" or "echo") over the lanes' state phi, pi (lanes,).

        ``forcing`` and ``nudges`` are the beats in stream order (steps·lanes_per_step,), ``params``
        (5, P) codes, ``acc`` (lanes/2, rows) the echo accumulators to continue from.
        """
        echo = mode == "echo"
        lanes, oscillators = phi.shape[0], params.shape[1]
        self._check(lanes, oscillators, echo)
        beats = _beats(forcing, nudges, self.design.word_bits)
        pairs = lanes // 2 if echo else 0
        acc = np.zeros((pairs, len(self.accumulators)), dtype=np.int64) if acc is None or not echo else acc
        with tempfile.TemporaryDirectory(prefix="echoforge-rtl-") as directory:
            run_dir = Path(directory)
            settings = [int(echo), int(flip), oscillators, lanes, steps, stall_seed & 0x7FFFFFFF, len(beats)]
            files = {RUN_HEX: hex_lines(settings, 64), PARAMS_HEX: hex_lines(params.T, 64),
                     STATE_HEX: hex_lines(np.stack([phi, pi], axis=1), 64), ACC_HEX: hex_lines(acc, 64),
                     IN_HEX: hex_lines(beats, 2 * self.design.word_bits)}
            for name, text in files.items():
                (run_dir / name).write_text(text)
            for path in self.design.init_files:
                (run_dir / path.name).symlink_to(path)
            self._execute(run_dir, timeout)
            out = _read_hex(run_dir / OUT_HEX, self.design.word_bits + 1)
            result = _read_hex(run_dir / RESULT_HEX, 64)
        n = len(RESULT_COUNTERS)
        expected = n + 2 * lanes + acc.size
        if result.size != expected:
            raise SimulationFailed(f"result.hex holds {result.size} words, expected {expected}")
        state = result[n:n + 2 * lanes].reshape(lanes, 2)
        return RunResult(out, result[:4], int(result[4]), state[:, 0].copy(), state[:, 1].copy(),
                         result[n + 2 * lanes:].reshape(acc.shape))

    def _check(self, lanes: int, oscillators: int, echo: bool) -> None:
        if not 1 <= oscillators <= self.design.oscillators or not 1 <= lanes <= self.design.lanes:
            raise ValueError(f"{lanes} lanes of {oscillators} oscillators exceed the design's capacity "
                             f"({self.design.lanes} lanes, {self.design.oscillators} oscillators)")
        if lanes % (oscillators * (2 if echo else 1)):
            raise ValueError(f"{lanes} lanes are not whole rows of {oscillators} oscillators")

    def _execute(self, run_dir: Path, timeout: float) -> None:
        try:
            done = subprocess.run(self.command, cwd=run_dir, capture_output=True, text=True, timeout=timeout,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise SimulationFailed(f"{self.simulator} run exceeded {timeout:.0f} s") from None
        if done.returncode != 0 or not (run_dir / RESULT_HEX).exists():
            raise SimulationFailed(f"{self.simulator} run failed ({done.returncode}): "
                                   f"{(done.stderr or done.stdout)[-2000:]}")


def build(config: FormatConfig, kind: str, *, lanes: int, oscillators: int, simulator: str = "verilator",
          cache: str | Path | None = None, fold: int = 1) -> Simulation:
    """A simulator of the ``kind`` bank at ``config`` with the given capacities, built once per source hash."""
    require(simulator)
    root = Path(cache or os.environ.get("ECHOFORGE_RTL_CACHE") or Path.home() / ".cache" / "echoforge" / "rtl")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix="generate-") as scratch:
        design = generate_core(config, kind, Path(scratch) / "design", lanes=lanes, oscillators=oscillators,
                               fold=fold)
        accumulators = tuple(_accumulator_rows(design))
        (design.directory / TESTBENCH).write_text(testbench(design, accumulators))
        key = _source_hash(design, simulator)
        target = root / f"{simulator}-{kind}-w{config.word_bits}-{key}"
        if not (target / "done").exists():
            _compile(design, simulator)
            (design.directory / "done").write_text("")
            try:
                design.directory.rename(target)
            except OSError:  # another process built it first
                if not (target / "done").exists():
                    raise
    design = _relocate(design, target)
    command = (str(target / "sim"),) if simulator == "verilator" else ("vvp", "-n", str(target / "sim.vvp"))
    return Simulation(design, simulator, command, accumulators)


def _accumulator_rows(design: RtlDesign) -> list[str]:
    return list(json.loads(design.regmap.read_text())["acc"]["rows"])


def _source_hash(design: RtlDesign, simulator: str) -> str:
    digest = hashlib.sha256(simulator.encode())
    for path in (*design.sources, design.directory / TESTBENCH, *design.init_files):
        if not path.name.startswith("param_"):  # parameters are written through the bus every run
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _compile(design: RtlDesign, simulator: str) -> None:
    sources = [TESTBENCH, *(p.name for p in design.sources)]
    if simulator == "verilator":
        command = ["verilator", "--binary", "-j", "2", "-Wno-fatal", "-Wno-lint", "-Wno-style", "--top-module", "tb",
                   "-o", "sim", "--Mdir", "obj", *sources]
    else:
        command = ["iverilog", "-g2005", "-s", "tb", "-o", "sim.vvp", *sources]
    done = subprocess.run(command, cwd=design.directory, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S,
                          check=False)
    if done.returncode != 0:
        raise SimulationFailed(f"{simulator} build failed: {(done.stderr or done.stdout)[-3000:]}")
    if simulator == "verilator":
        shutil.move(design.directory / "obj" / "sim", design.directory / "sim")
        shutil.rmtree(design.directory / "obj")


def _relocate(design: RtlDesign, directory: Path) -> RtlDesign:
    """The design's paths in its cache directory."""
    return replace(design, directory=directory, sources=tuple(directory / p.name for p in design.sources),
                   init_files=tuple(directory / p.name for p in design.init_files),
                   regmap=directory / design.regmap.name)


def _beats(forcing, nudges, w: int) -> list[int]:
    """The in-stream words {q, f}, W bits each (Python ints: 2W bits can exceed int64)."""
    mask = (1 << w) - 1
    forcing = np.asarray(forcing, dtype=np.int64).ravel().tolist()
    if nudges is None:
        return [f & mask for f in forcing]
    nudges = np.asarray(nudges, dtype=np.int64).ravel().tolist()
    return [((q & mask) << w) | (f & mask) for f, q in zip(forcing, nudges)]


def _read_hex(path: Path, width: int) -> np.ndarray:
    """Two's-complement hex words, one a line, as int64."""
    words = path.read_text().split()
    values = [int(word, 16) for word in words if "x" not in word.lower()]
    if len(values) != len(words):
        raise SimulationFailed(f"{path.name} holds undefined (x) bits")
    half = 1 << (width - 1)
    return np.array([v - (v & half) * 2 for v in values], dtype=np.int64)


def testbench(design: RtlDesign, accumulators) -> str:
    """The Verilog testbench of ``design`` (see the module docstring for its files)."""
    regmap = json.loads(design.regmap.read_text())
    registers = "\n".join(f"localparam R_{name} = {regmap['control']['base'] + index};"
                          for name, (index, _, _) in CONTROL.items())
    reads = "\n".join(f"        read_reg(R_{name}, value); $fwrite(fd, \"%h\\n\", value);" for name in RESULT_COUNTERS)
    return (_TESTBENCH.replace("@W@", str(design.word_bits)).replace("@AB@", str(regmap["address_bits"]))
            .replace("@REGISTERS@", registers).replace("@RESULT_READS@", reads)
            .replace("@PARAMS@", str(regmap["params"]["base"])).replace("@PHI@", str(regmap["phi"]["base"]))
            .replace("@PI@", str(regmap["pi"]["base"])).replace("@ACC@", str(regmap["acc"]["base"]))
            .replace("@FIELDS@", str(len(PARAM_FIELDS))).replace("@ROWS@", str(len(accumulators)))
            .replace("@ACCW@", str(ACC_WIDTH)))


_TESTBENCH = """\
// Generated by echoforge.targets.fpga.sim: drives echoforge_bank from hex files in the working directory.
`timescale 1ns/1ps
module tb;
localparam W = @W@;
localparam AB = @AB@;
@REGISTERS@
localparam PARAMS = @PARAMS@, PHI = @PHI@, PI = @PI@, ACC = @ACC@, FIELDS = @FIELDS@, ROWS = @ROWS@;
reg clk = 1'b0;
reg rst = 1'b1;
reg [AB-1:0] reg_addr = 0;
reg reg_we = 1'b0;
reg [63:0] reg_wdata = 64'd0;
wire [63:0] reg_rdata;
reg in_valid = 1'b0;
wire in_ready;
reg [2*W-1:0] in_data = 0;
wire out_valid;
reg out_ready = 1'b0;
wire [W:0] out_data;
wire busy;
echoforge_bank dut (.clk(clk), .rst(rst), .reg_addr(reg_addr), .reg_we(reg_we), .reg_wdata(reg_wdata),
    .reg_rdata(reg_rdata), .in_valid(in_valid), .in_ready(in_ready), .in_data(in_data),
    .out_valid(out_valid), .out_ready(out_ready), .out_data(out_data), .busy(busy));
always #5 clk = ~clk;

reg [63:0] settings [0:6];
reg [63:0] value;
reg [2*W-1:0] beat;
integer fd, fd_in, fd_out, i, k, r, seed, beats_left, oscillators, lanes, pairs;
reg in_gap, out_gap, in_taken;

task write_reg(input [AB-1:0] address, input [63:0] data);
    begin
        @(negedge clk); reg_addr = address; reg_wdata = data; reg_we = 1'b1;
        @(negedge clk); reg_we = 1'b0;
    end
endtask

task read_reg(input [AB-1:0] address, output [63:0] data);
    begin
        @(negedge clk); reg_addr = address;
        @(negedge clk); data = reg_rdata;
    end
endtask

initial begin
    $readmemh("run.hex", settings);
    oscillators = settings[2];
    lanes = settings[3];
    pairs = settings[0] ? lanes / 2 : 0;
    seed = settings[5];
    beats_left = settings[6];
    repeat (3) @(negedge clk);
    rst = 1'b0;
    fd = $fopen("params.hex", "r");
    for (i = 0; i < oscillators; i = i + 1)
        for (k = 0; k < FIELDS; k = k + 1) begin
            r = $fscanf(fd, "%h", value); write_reg(PARAMS + i * 8 + k, value);
        end
    $fclose(fd);
    fd = $fopen("state.hex", "r");
    for (i = 0; i < lanes; i = i + 1) begin
        r = $fscanf(fd, "%h", value); write_reg(PHI + i, value);
        r = $fscanf(fd, "%h", value); write_reg(PI + i, value);
    end
    $fclose(fd);
    fd = $fopen("acc.hex", "r");
    for (i = 0; i < pairs; i = i + 1)
        for (k = 0; k < ROWS; k = k + 1) begin
            r = $fscanf(fd, "%h", value); write_reg(ACC + i * 8 + k, value);
        end
    $fclose(fd);
    write_reg(R_MODE, settings[0]);
    write_reg(R_FLIP, settings[1]);
    write_reg(R_OSCILLATORS, settings[2]);
    write_reg(R_LANES, settings[3]);
    write_reg(R_STEPS, settings[4]);
    fd_in = $fopen("in.hex", "r");
    fd_out = $fopen("out.hex", "w");
    write_reg(R_START, 64'd1);
    // the streams, one clock per pass from a falling edge: offer a beat (unless a random gap), settle,
    // note what the next rising edge transfers (and write the out beat it takes)
    while (busy) begin
        in_gap = seed != 0 && ($random(seed) & 3) == 0;
        out_gap = seed != 0 && ($random(seed) & 3) == 0;
        out_ready = !out_gap;
        if (!in_valid && beats_left > 0 && !in_gap) begin
            r = $fscanf(fd_in, "%h", beat);
            in_data = beat;
            in_valid = 1'b1;
            beats_left = beats_left - 1;
        end
        #1;
        if (out_valid && out_ready) $fwrite(fd_out, "%h\\n", out_data);
        in_taken = in_valid && in_ready;
        @(negedge clk);
        if (in_taken) in_valid = 1'b0;
    end
    out_ready = 1'b0;
    $fclose(fd_in);
    $fclose(fd_out);
    fd = $fopen("result.hex", "w");
@RESULT_READS@
    for (i = 0; i < lanes; i = i + 1) begin
        read_reg(PHI + i, value); $fwrite(fd, "%h\\n", value);
        read_reg(PI + i, value); $fwrite(fd, "%h\\n", value);
    end
    for (i = 0; i < pairs; i = i + 1)
        for (k = 0; k < ROWS; k = k + 1) begin
            read_reg(ACC + i * 8 + k, value); $fwrite(fd, "%h\\n", value);
        end
    $fclose(fd);
    $finish;
end
endmodule
"""
