"""The board image as a bitstream for a real board: top level, pin constraints, Yosys, nextpnr, icepack.

    build_image(config, "icebreaker", out)  →  out/image.bin, out/report.json (resources, fmax), out/rtl/

The flow is the FPGA target's (targets/fpga/synth.py: YoWASP's Yosys and nextpnr, its report parsing),
with the board's own top (rtl/ef_<board>.v: clock, UART pins, power-on reset) instead of the serial
shell, and the packer at the end. Nothing here flashes a board: `iceprog out/image.bin` does (Debian
fpga-icestorm), see docs/fpga.md.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from echoforge.targets.fpga import synth
from echoforge.targets.fpga.parts import UP5K

from .design import RTL, GatewareConfig, write_sources

PACKER = {"ice40": "yowasp-icepack"}


@dataclass(frozen=True)
class Board:
    name: str
    part: object                  # parts.Part
    clock_mhz: float              # the board's oscillator
    top: str                      # rtl/<top>.v
    pins: dict[str, int]          # top port → package pin

    def constraints(self) -> str:
        lines = [f"set_io -nowarn {port} {pin}" for port, pin in self.pins.items()]
        return "\n".join([f"# {self.name}: {self.part.device}", *lines, f"set_frequency CLK {self.clock_mhz:g}", ""])


BOARDS = {"icebreaker": Board("icebreaker", UP5K, 12.0, "ef_icebreaker", {"CLK": 35, "RX": 6, "TX": 9})}


@dataclass(frozen=True)
class ImageBuild:
    bitstream: Path
    synthesis: synth.Synthesis
    baud: int

    def lines(self) -> list[str]:
        s = self.synthesis
        used = ", ".join(f"{name} {used}/{available}" for name, (used, available) in s.utilization.items() if used)
        verdict = "meets" if s.meets_timing else "MISSES"
        return [f"bitstream {self.bitstream} ({self.bitstream.stat().st_size} bytes), UART {self.baud} baud",
                f"utilization: {used}",
                f"fmax {s.fmax_mhz:.1f} MHz — {verdict} the board's {s.clock_mhz:g} MHz"]


def check_fit(resources: dict[str, int], board: Board) -> None:
    """Refuse, before placement, an image whose mapped cells exceed the part: one line naming each
    resource over its count."""
    part = board.part
    limits = {"LUT4": (resources["lut"], part.logic_cells), f"DSPs ({part.dsp_cell})": (resources["dsp"], part.dsps),
              f"block RAMs ({part.bram.cell})": (resources["bram"], part.bram.count)}
    over = [f"{used:,} {name} of {available:,}" for name, (used, available) in limits.items() if used > available]
    if over:
        raise ValueError(f"the image does not fit the {part.device} of the {board.name}: {', '.join(over)} — "
                         "a program with fewer oscillators or shorter words, or a larger part")


def board_named(name: str) -> Board:
    if name not in BOARDS:
        raise ValueError(f"unknown board {name!r} — use one of {', '.join(BOARDS)}")
    return BOARDS[name]


def build_image(config: GatewareConfig, board_name: str, output: Path, *, baud: int = 115_200) -> ImageBuild:
    """Synthesize, place, route and pack the image of `config` for `board_name` into `output`."""
    board = board_named(board_name)
    clocks_per_bit = round(board.clock_mhz * 1e6 / baud)
    if clocks_per_bit < 4 or abs(board.clock_mhz * 1e6 / clocks_per_bit - baud) > 0.02 * baud:
        raise ValueError(f"{baud} baud: the {board.clock_mhz:g} MHz clock gives no UART divisor ≥ 4 within 2 %")
    rtl = output / "rtl"
    sources = [*write_sources(config, rtl), rtl / f"{board.top}.v"]
    shutil.copyfile(RTL / f"{board.top}.v", sources[-1])
    (rtl / f"{board.name}.pcf").write_text(board.constraints())
    where = synth._Where(sources, output)
    seconds = {"synthesis": _synthesize(where, board, config, {**config.parameters(), "CLKS_PER_BIT": clocks_per_bit})}
    cells = synth.cell_counts(json.loads((output / "stat.json").read_text()))
    check_fit(synth.resources(cells), board)
    seconds["place_and_route"] = synth._run(
        [synth.tool(synth.NEXTPNR[board.part.family]), *board.part.nextpnr_args, "--json", where.out("image.json"),
         "--pcf", f"{board.name}.pcf", "--asc", where.out("image.asc"), "--freq", f"{board.clock_mhz:g}", "--seed",
         "1", "--timing-allow-fail", "--report", where.out("nextpnr-report.json"), "-q", "-l", where.out("nextpnr.log")],
        where, "nextpnr.out", synth.TIMEOUT_SECONDS)
    seconds["pack"] = synth._run([synth.tool(PACKER[board.part.family]), where.out("image.asc"), where.out("image.bin")],
                                 where, "icepack.log", synth.TIMEOUT_SECONDS)
    report = json.loads((output / "nextpnr-report.json").read_text())
    result = synth.Synthesis(board.top, cells, synth.resources(cells), synth.utilization(report), 0,
                             board.clock_mhz, synth.fmax(report), synth.critical_path(report), seconds)
    (output / "report.json").write_text(json.dumps({"board": board.name, "baud": baud, **result.to_json()}, indent=1))
    return ImageBuild(output / "image.bin", result, baud)


def _synthesize(where, board: Board, config: GatewareConfig, parameters: dict[str, int]) -> float:
    """Yosys: the sources with the image's macros and parameters → image.json and stat.json; seconds."""
    chparam = " ".join(f"-set {name} {value}" for name, value in parameters.items())
    defines = " ".join(f"-D{name}" for name in config.defines())
    read = where.read().replace("read_verilog ", f"read_verilog {defines} -I. ", 1)
    return synth._run([synth.tool(synth.YOSYS), "-q", "-p", f"{read}; chparam {chparam} {board.top}; "
                       f"{synth.SYNTH[board.part.family]} -top {board.top} -json {where.out('image.json')}; "
                       f"tee -q -o {where.out('stat.json')} stat -json"], where, "yosys.log", synth.TIMEOUT_SECONDS)
