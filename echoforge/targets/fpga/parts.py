"""The FPGA parts echoforge compiles for, their resources, and the design rules that refuse a bank
that does not fit one.

Numbers are the datasheets' (iCE40 UltraPlus FPGA-DS-02008, ECP5 FPGA-DS-02012) and agree with what
nextpnr reports as available on each device (`--report`, "utilization"):

    part            board        logic        DSP                       block RAM                 I/O
    iCE40UP5K-SG48  iCEBreaker   5,280 LC     8 SB_MAC16 (16×16)        30 SB_RAM40_4K (4 Kbit)   39
    LFE5U-25F-6BG381 ULX3S       24,288 LUT4  28 MULT18X18D (18×18)     56 DP16KD (18 Kbit)       197

(the UP5K's four 256-Kbit SPRAMs are single-port, which a lane memory read and written in the same
clock cannot use; they are left for a board's stream buffers.)

A bank runs on one datapath whose lanes (oscillator × batch row) take turns (rtl/), so what grows with
the bank is memory, and what grows with the word is multipliers and logic. The design rules (run by
passes/drc.py through `Capabilities.rules`) check each device bank's RTL plan — the multipliers and
memories the generator would instantiate for it, at one batch row — against the part:

    dsp-count   the products fit the part's DSPs (a product wider than a DSP takes several)
    block-ram   the memories, each in the part's cheapest block-RAM shape, fit its blocks

Word lengths are those the part multiplies in one DSP: 12…16 bits on the UP5K, 12…18 on the ECP5
(12 is the emulator's shortest word); `max_oscillators` is the largest linear bank the block RAM holds
at the widest word and one batch row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

from echoforge.compiler.capabilities import Capabilities
from echoforge.compiler.ir import Finding

from .synth import Device

MIN_WORD_BITS = 12  # the emulator's shortest word (targets/emulator/words.py)
DELTA_RANGE = (0.0, 1.0)
# The RTL takes a time step's beats as they come (valid/ready) and buffers no chunk, so no block RAM
# bounds the chunk: it is the host's, as on the emulator.
MAX_STREAM_CHUNK = 4096


@dataclass(frozen=True)
class BlockRam:
    """A part's block RAMs: how many, and the (depth, width) shapes one block can take."""

    cell: str
    count: int
    shapes: tuple[tuple[int, int], ...]

    @property
    def block_bits(self) -> int:
        depth, width = self.shapes[0]
        return depth * width

    def blocks(self, depth: int, width: int) -> int:
        """Blocks a depth × width memory takes in its cheapest shape."""
        return min(math.ceil(depth / d) * math.ceil(width / w) for d, w in self.shapes)


@dataclass(frozen=True)
class Part:
    """One FPGA part: what it has, how the tools name it, and the clock a design is timed at."""

    name: str               # the target is "fpga-" + name
    device: str             # the vendor's part number
    board: str
    family: str             # "ice40" | "ecp5"
    nextpnr_args: tuple[str, ...]
    logic_cells: int        # LUT4s (iCE40: logic cells of LUT4 + carry + FF)
    dsp_cell: str
    dsps: int
    dsp_width: int          # signed operand bits one DSP multiplies
    bram: BlockRam
    io: int
    clock_mhz: float        # default target clock (--clock)
    max_oscillators: int    # the largest linear bank whose memories fit at one batch row (test_fpga_parts)

    @property
    def target(self) -> str:
        return f"fpga-{self.name}"

    @property
    def tools(self) -> Device:
        return Device(self.family, self.nextpnr_args)

    @property
    def word_bits(self) -> tuple[int, ...]:
        return tuple(range(MIN_WORD_BITS, self.dsp_width + 1))


UP5K = Part("up5k", "iCE40UP5K-SG48", "iCEBreaker", "ice40", ("--up5k", "--package", "sg48"),
            logic_cells=5280, dsp_cell="SB_MAC16", dsps=8, dsp_width=16,
            bram=BlockRam("SB_RAM40_4K", 30, ((256, 16), (512, 8), (1024, 4), (2048, 2))),
            io=39, clock_mhz=40.0, max_oscillators=256)
ECP5_25F = Part("ecp5-25f", "LFE5U-25F-6BG381C", "ULX3S", "ecp5", ("--25k", "--package", "CABGA381"),
                logic_cells=24288, dsp_cell="MULT18X18D", dsps=28, dsp_width=18,
                bram=BlockRam("DP16KD", 56, ((1024, 18), (512, 36), (2048, 9), (4096, 4), (8192, 2),
                                             (16384, 1))),
                io=197, clock_mhz=50.0, max_oscillators=2048)


# ------------------------------------------------------------------------------------ design rules


def dsps_for(part: Part, width_a: int, width_b: int) -> int:
    """DSPs one signed width_a × width_b product takes: Yosys's mul2dsp splits wider operands into
    DSP-wide chunks, one DSP per pair of chunks."""
    return math.ceil(width_a / part.dsp_width) * math.ceil(width_b / part.dsp_width)


def block_rams(part: Part, memories) -> int:
    """Block RAMs the memories take, each in its cheapest shape (an upper bound: Yosys may put a small
    memory in logic instead)."""
    return sum(part.bram.blocks(memory.depth, memory.width) for memory in memories)


def _part(caps: Capabilities) -> Part:
    return PARTS[caps.name]


def _device_bank(node) -> bool:
    return node.kind == "hru_bank" and node.placement == "device"


def _error(rule: str, node, message: str) -> Finding:
    return Finding(rule, node.name, "error", message)


def dsp_count(ir, node, caps):
    plan = bank_plan(node)
    if plan is None:
        return
    part = _part(caps)
    needed = sum(dsps_for(part, wa, wb) for _, wa, wb in plan.multipliers)
    if needed > part.dsps:
        widest = max(plan.multipliers, key=lambda m: dsps_for(part, m[1], m[2]))
        word = node.formats["positions"].word_bits
        yield _error("dsp-count", node, f"a {node.attrs['hru_kind']} bank at {word}-bit words needs {needed} "
                     f"{part.dsp_cell} DSPs for its {len(plan.multipliers)} products (the widest, "
                     f"{widest[0]}, is {widest[1]}×{widest[2]} bits); the {part.device} has {part.dsps} — "
                     f"use a linear HRU, a shorter word (--word-bits) or a part with more DSPs")


def block_ram(ir, node, caps):
    plan = bank_plan(node)
    if plan is None:
        return
    part = _part(caps)
    needed = block_rams(part, plan.memories)
    if needed > part.bram.count:
        bits = sum(memory.depth * memory.width for memory in plan.memories)
        yield _error("block-ram", node, f"{node.shape[-1]} oscillators need {needed} {part.bram.cell} "
                     f"blocks ({bits} bits of state, parameters, accumulators and tables at one batch row); "
                     f"the {part.device} has {part.bram.count} ({part.bram.count * part.bram.block_bits} bits) "
                     "— use a smaller state_size or a larger part")


RULES = (dsp_count, block_ram)


# ------------------------------------------------------------------------------------ plans


@cache
def bank_plan_of(kind: str, config, oscillators: int, batch: int):
    """The multipliers and memories (rtl.Plan) the RTL generator instantiates for a bank of `batch` rows."""
    from .rtl import plan

    return plan(config, kind, lanes=2 * batch * oscillators, oscillators=oscillators)


def bank_plan(node):
    """The RTL plan of a device bank node at its HWIR formats (as lowering maps them), at one batch row;
    None for any other node, or a bank whose formats the emulator cannot represent (lowering refuses it,
    naming the rule)."""
    from echoforge.targets.emulator.lower import format_config

    if not _device_bank(node):
        return None
    try:
        return bank_plan_of(node.attrs["hru_kind"], format_config(node), node.shape[-1], 1)
    except (KeyError, ValueError):
        return None


def capabilities(part: Part) -> Capabilities:
    """The compiler's view of a part: its word lengths, oscillators and design rules."""
    return Capabilities(name=part.target, max_oscillators=part.max_oscillators, word_bits=part.word_bits,
                        default_word_bits=part.dsp_width, delta_range=DELTA_RANGE,
                        hru_kinds=("linear", "nonlinear"), max_stream_chunk=MAX_STREAM_CHUNK, rules=RULES)


PARTS = {part.target: part for part in (UP5K, ECP5_25F)}
