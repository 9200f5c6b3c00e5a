"""Synthesizable Verilog-2005 for one oscillator bank, generated from templates (no HDL framework).

``generate(bank, directory, batch=...)`` writes the bank's core: the lane-step of ``datapath`` (the
emulator's int64 kernels, one named signed wire per operation, pipelined by ``pipeline``) inside the
top module of ``top`` (register bus, lane issue, valid/ready streams, memories, counters), the function
tables as $readmemh files holding the very integers the emulator reads (``tables.FixedFunctions``),
the bank's parameter codes as the parameter memories' initial contents, and regmap.json.

Everything a program changes at run time — parameters, oscillator count, lanes (up to the capacity),
steps, mode, inputs — is data, so one generated design (one build of the simulator) serves every
program of the same formats and kind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from echoforge.targets.emulator.fixed import FormatConfig
from echoforge.targets.emulator.kernels import ACCUMULATORS
from echoforge.targets.emulator.tables import FixedFunctions

from . import datapath, top
from .datapath import PARAM_FIELDS
from .top import TOP, Layout

SOURCE = f"{TOP}.v"
REGMAP = "regmap.json"
MIN_LANE_BITS = 5  # the capacity is at least the pipeline depth, so a step's slot count fits its counter


@dataclass(frozen=True)
class RtlDesign:
    """What ``generate`` wrote, and the numbers synthesis and the co-simulation need."""

    directory: Path
    top: str
    sources: tuple[Path, ...]
    init_files: tuple[Path, ...]   # $readmemh files named relative to ``directory``
    regmap: Path
    kind: str
    word_bits: int
    lanes: int                     # lane capacity (state memory depth)
    oscillators: int               # oscillator capacity (parameter memory depth)
    pipeline_depth: int            # least clocks per time step
    latency: int                   # clocks from a lane's issue to its last register (the pipeline drains in these)
    multipliers: tuple[tuple[str, int, int], ...]  # (wire, width a, width b), signed
    memories: tuple                # every RAM, ROM and delay line (.name, .depth, .width)

    @property
    def memory_bits(self) -> int:
        return sum(memory.width * memory.depth for memory in self.memories)

    def clocks_per_step(self, lanes: int) -> int:
        """Clocks one time step takes for ``lanes`` lanes with no stalls: one per lane, bubbles below the depth."""
        return max(lanes, self.pipeline_depth)


@dataclass(frozen=True)
class Plan:
    """What a design instantiates, known before any file is written (the design rules read it)."""

    multipliers: tuple[tuple[str, int, int], ...]  # (wire, width a, width b), signed
    memories: tuple                                # each with .name, .depth, .width: RAMs, ROMs, delay lines


def plan(config: FormatConfig, kind: str, *, lanes: int, oscillators: int) -> Plan:
    """The multipliers and memories ``generate_core`` instantiates for these capacities."""
    layout = _layout(config, lanes, oscillators)
    return _plan(datapath.build(config, kind, layout.lane_bits, layout.osc_bits, _table(config, kind)))


def _plan(path) -> Plan:
    return Plan(tuple(path.pipeline.multipliers), (*path.memories, *path.pipeline.delay_lines()))


def _layout(config: FormatConfig, lanes: int, oscillators: int) -> Layout:
    return Layout(config.word_bits, max(MIN_LANE_BITS, _bits(lanes)), max(1, _bits(oscillators)))


def _table(config: FormatConfig, kind: str):
    """The nonlinear bank's tanh table (None for a linear bank)."""
    if kind not in ("linear", "nonlinear"):
        raise ValueError(f"unknown bank kind {kind!r}")
    return FixedFunctions(config).tanh_table if kind == "nonlinear" else None


def generate(bank, directory, *, batch: int = 1, lanes: int | None = None,
             oscillators: int | None = None) -> RtlDesign:
    """The Verilog of ``bank`` (lower.BankProgram) for ``batch`` rows (an echo needs 2·batch·P lanes)."""
    size = bank.params.size
    oscillators = oscillators or size
    lanes = lanes or 2 * batch * size
    if oscillators < size or lanes < 2 * size:
        raise ValueError(f"a bank of {size} oscillators needs ≥ {size} oscillators and ≥ {2 * size} lanes "
                         f"of capacity, got {oscillators} and {lanes}")
    codes = bank.core().param_codes
    return generate_core(bank.config, bank.params.kind, directory, lanes=lanes, oscillators=oscillators,
                         param_codes=codes)


def generate_core(config: FormatConfig, kind: str, directory, *, lanes: int, oscillators: int,
                  param_codes: np.ndarray | None = None, fold: int = 1, readback=None,
                  max_steps: int | None = None, flip: bool = True, pair_beats: bool = False,
                  one_row: bool = False) -> RtlDesign:
    """The Verilog of a ``kind`` bank at ``config``'s formats with capacity for ``lanes`` lanes (rounded
    up to a power of two, at least 2^MIN_LANE_BITS) and ``oscillators``. ``fold`` > 1 merges that many
    pipeline stages into one register stage (pipeline.Pipeline): fewer flip-flops and a shallower
    pipeline for a slow clock (a board image's), the same arithmetic. ``readback`` (control register
    names and memory regions) limits what the bus reads to what a known reader needs — a board image's
    executor — the rest reading 0: the read-back multiplexer is 64 bits wide per source. ``max_steps``:
    the largest STEPS that reader writes (top.verilog: the step and saturation counters that wide);
    ``flip`` False: a bank whose FLIP stays 0 (its reader negates π itself); ``pair_beats``: its writer
    offers each echo beat twice, once to each lane of the pair (the bank keeps no copy); ``one_row``: its
    writer runs one batch row (LANES = OSCILLATORS forward, 2·OSCILLATORS echo), so a lane's oscillator is
    its bits, not a count carried down the pipeline."""
    if fold < 1:
        raise ValueError(f"fold = {fold}: at least one pipeline stage per register stage")
    layout, table = _layout(config, lanes, oscillators), _table(config, kind)
    path = datapath.build(config, kind, layout.lane_bits, layout.osc_bits, table, fold, one_row)
    if path.min_step_clocks > 1 << layout.lane_bits:
        raise ValueError(f"pipeline depth {path.min_step_clocks} exceeds the lane capacity")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    accumulators = [name for name in ACCUMULATORS if f"acc_{name}" in {m.name for m in path.memories}]
    (directory / SOURCE).write_text(top.verilog(path, layout, kind, accumulators, readback, max_steps, flip,
                                                         pair_beats))
    init_files = _write_init_files(directory, path.memories, table, param_codes, layout)
    regmap = directory / REGMAP
    described = top.register_map(layout, config, kind, path, accumulators)
    if readback is not None:   # a bank for one known reader says what it leaves out
        described["reads_only"] = sorted(readback)
    if max_steps is not None:
        described["max_steps"] = max_steps
    if not flip:
        described["flip"] = "FLIP stays 0"
    if pair_beats:
        described["pair_beats"] = "an echo beat is taken twice, by each lane of its pair"
    if one_row:
        described["one_row"] = "one batch row: LANES = OSCILLATORS (forward) or 2·OSCILLATORS (echo)"
    regmap.write_text(json.dumps(described, indent=1))
    instantiated = _plan(path)
    return RtlDesign(directory, TOP, (directory / SOURCE,), init_files, regmap, kind, config.word_bits,
                     1 << layout.lane_bits, 1 << layout.osc_bits, path.min_step_clocks, path.last_stage,
                     instantiated.multipliers, instantiated.memories)


def _write_init_files(directory: Path, memories, table, param_codes, layout: Layout) -> tuple[Path, ...]:
    """Tables: T[0..N], T[1..N+1] and the integral C[0..N]; parameters: the codes, zero beyond P."""
    contents = {}
    if table is not None:
        contents.update({"tanh_low.hex": table.values[:-1], "tanh_high.hex": table.values[1:],
                         "tanh_integral.hex": table.integral})
    codes = np.zeros((len(PARAM_FIELDS), 1 << layout.osc_bits), dtype=np.int64)
    if param_codes is not None:
        codes[:, :param_codes.shape[1]] = param_codes
    contents.update({f"param_{name}.hex": codes[k] for k, name in enumerate(PARAM_FIELDS)})
    widths = {m.init: m.width for m in memories if m.init}
    written = []
    for name, values in contents.items():
        if name in widths:
            (directory / name).write_text(hex_lines(values, widths[name]))
            written.append(directory / name)
    return tuple(written)


def hex_lines(values, width: int) -> str:
    """One two's-complement hex word per line, as $readmemh reads them. ``values``: an integer array,
    or a list of Python ints (words wider than int64 stay exact: numpy would make them float64)."""
    digits, mask = (width + 3) // 4, (1 << width) - 1
    words = values if isinstance(values, list) else np.asarray(values, dtype=np.int64).ravel().tolist()
    return "".join(f"{v & mask:0{digits}x}\n" for v in words)


def _bits(n: int) -> int:
    """Address bits for n entries (n ≥ 1)."""
    return max(0, int(n - 1).bit_length())
