"""The board image as a bitstream for a real board: top level, pin constraints, Yosys, nextpnr, packer.

    build_image(config, "icebreaker", out)  →  out/image.bin, out/report.json (resources, fmax), out/rtl/
    build_image(config, "ulx3s", out)       →  out/image.bit, …

The flow is the FPGA target's (targets/fpga/synth.py: YoWASP's Yosys and nextpnr, its report parsing),
with a board top (rtl/ef_board_top.v: clock, UART pins, power-on reset) instead of the serial shell,
the board's pin constraints (iCE40 .pcf, ECP5 .lpf), the board's macros (the iCEBreaker's EF_SPRAM puts
the frame buffers in the UP5K's SPRAM) and the family's packer at the end (icepack, ecppack). Between
synthesis and placement nextpnr packs the netlist alone (seconds): its count of logic cells — a LUT4,
its carry and its flip-flop share one, so an image needs more cells than it has LUT4s, 30 % more for a
pipelined bank — decides whether the image fits, before the minutes placement takes. Nothing here
flashes a board: `echoforge flash out/` (flash.py) does.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from echoforge.targets.fpga import synth
from echoforge.targets.fpga.parts import ECP5_25F, UP5K

from .design import RTL, GatewareConfig, write_sources

TOP = "ef_board_top"
# Per family: the packer, the constraints file's suffix, nextpnr's constraint and output options.
PACKER = {"ice40": "yowasp-icepack", "ecp5": "yowasp-ecppack"}
CONSTRAINTS = {"ice40": "pcf", "ecp5": "lpf"}
PLACED = {"ice40": ("--asc", "image.asc"), "ecp5": ("--textcfg", "image.config")}
BITSTREAM = {"ice40": "image.bin", "ecp5": "image.bit"}
SPRAM_BITS = 15               # an SB_SPRAM256KA holds 2^15 bytes (rtl/ef_ram.v)


@dataclass(frozen=True)
class Board:
    name: str
    part: object                  # parts.Part
    clock_mhz: float              # the board's oscillator
    pins: dict[str, str]          # top port (CLK, RX, TX) → package pin or site
    defines: tuple[str, ...] = () # Verilog macros of the board's build (EF_SPRAM: frame buffers in SPRAM)

    @property
    def constraints_file(self) -> str:
        return f"{self.name}.{CONSTRAINTS[self.part.family]}"

    def constraints(self) -> str:
        header = f"# {self.name}: {self.part.device}, {self.clock_mhz:g} MHz on CLK"
        if self.part.family == "ice40":
            lines = [f"set_io -nowarn {port} {pin}" for port, pin in self.pins.items()]
            return "\n".join([header, *lines, f"set_frequency CLK {self.clock_mhz:g}", ""])
        lines = [f'LOCATE COMP "{port}" SITE "{site}";\nIOBUF PORT "{port}" IO_TYPE=LVCMOS33;'
                 for port, site in self.pins.items()]
        return "\n".join([header, *lines, f'FREQUENCY PORT "CLK" {self.clock_mhz:g} MHZ;', ""])


BOARDS = {"icebreaker": Board("icebreaker", UP5K, 12.0, {"CLK": "35", "RX": "6", "TX": "9"}, ("EF_SPRAM",)),
          "ulx3s": Board("ulx3s", ECP5_25F, 25.0, {"CLK": "G2", "RX": "M1", "TX": "L4"})}


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


# utilization names (synth.UTILIZATION_BELS) as a refusal says them
RESOURCE_NAMES = {"logic": "logic cells", "ff": "flip-flops", "dsp": "DSPs", "bram": "block RAMs", "spram": "SPRAMs",
                  "io": "I/O pins"}


def check_fit(utilization: dict[str, tuple[int, int]], board: Board) -> None:
    """Refuse, before placement, an image whose packed cells exceed the part (`utilization`: nextpnr's
    (used, available) per resource after packing): one line naming each resource over its count."""
    part = board.part
    over = {name: f"{used:,} {RESOURCE_NAMES[name]} of {available:,}"
            for name, (used, available) in utilization.items() if used > available}
    if over:
        # a bank's block RAMs and DSPs shrink with its oscillators and words; the logic hardly does
        larger = "".join(f", --board {other.name}" for other in BOARDS.values()
                         if other.part.logic_cells > part.logic_cells)
        hint = (f"a board with a larger part{larger}" if "logic" in over
                else "a program with fewer oscillators or shorter words")
        raise ValueError(f"the image does not fit the {part.device} of the {board.name}: {', '.join(over.values())} "
                         f"— {hint}")


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
    if "EF_SPRAM" in board.defines and max(config.request_bits, config.response_bits) > SPRAM_BITS:
        raise ValueError(f"the {board.name}'s frame buffers are single SPRAMs: at most 2^{SPRAM_BITS} bytes each")
    rtl = output / "rtl"
    sources = [*write_sources(config, rtl), rtl / f"{TOP}.v"]
    shutil.copyfile(RTL / f"{TOP}.v", sources[-1])
    (rtl / board.constraints_file).write_text(board.constraints())
    where = synth.Workspace(sources, output)
    seconds = {"synthesis": _synthesize(where, board, config, {**config.parameters(), "CLKS_PER_BIT": clocks_per_bit})}
    cells = synth.cell_counts(json.loads((output / "stat.json").read_text()))
    family = board.part.family
    nextpnr = [synth.tool(synth.NEXTPNR[family]), *board.part.nextpnr_args, "--json", where.out("image.json"),
               f"--{CONSTRAINTS[family]}", board.constraints_file]
    seconds["pack"] = synth.run_tool([*nextpnr, "--pack-only", "--report", where.out("packed.json"), "-q",
                                      "-l", where.out("pack.log")], where, "pack.out")
    check_fit(synth.utilization(json.loads((output / "packed.json").read_text())), board)
    placed_option, placed = PLACED[family]
    seconds["place_and_route"] = synth.run_tool(
        [*nextpnr, placed_option, where.out(placed), "--freq", f"{board.clock_mhz:g}", "--seed", "1",
         "--timing-allow-fail", "--report", where.out("nextpnr-report.json"), "-q", "-l", where.out("nextpnr.log")],
        where, "nextpnr.out")
    seconds["bitstream"] = synth.run_tool([synth.tool(PACKER[family]), where.out(placed),
                                           where.out(BITSTREAM[family])], where, "bitstream.log")
    report = json.loads((output / "nextpnr-report.json").read_text())
    result = synth.Synthesis(TOP, cells, synth.resources(cells), synth.utilization(report), 0,
                             board.clock_mhz, synth.fmax(report), synth.critical_path(report), seconds)
    (output / "report.json").write_text(json.dumps({"board": board.name, "baud": baud, **result.to_json()}, indent=1))
    return ImageBuild(output / BITSTREAM[family], result, baud)


def _synthesize(where: synth.Workspace, board: Board, config: GatewareConfig, parameters: dict[str, int]) -> float:
    """Yosys: the sources with the image's macros and parameters → image.json and stat.json; seconds."""
    chparam = " ".join(f"-set {name} {value}" for name, value in parameters.items())
    defines = " ".join(f"-D{name}" for name in (*config.defines(), *board.defines))
    read = where.read(options=f"{defines} -I.")
    return synth.run_tool([synth.tool(synth.YOSYS), "-q", "-p", f"{read}; chparam {chparam} {TOP}; "
                       f"{synth.SYNTH[board.part.family]} -top {TOP} -json {where.out('image.json')}; "
                       f"tee -q -o {where.out('stat.json')} stat -json"], where, "yosys.log")
