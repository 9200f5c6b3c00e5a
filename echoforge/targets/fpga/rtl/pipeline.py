"""A staged netlist: named signed wires placed in pipeline stages, delay registers inserted for free.

The datapath is written as a list of operations, each one named wire with an explicit width, all
signed, in the stage it belongs to. An expression names the signals it reads as ``{name}``; when
``name`` was produced in an earlier stage the reference becomes the copy delayed to this stage
(``name_s7``), and the delay registers are emitted for exactly the stages that need them. So the
schedule is data: moving an operation to another stage cannot leave a stale operand behind, and
every pipeline register advances on one global enable (``advance``), which is how the core stalls.

Folding (``fold`` = k > 1) merges up to k consecutive stages into one register stage, for a clock that
can afford k operation groups (a board image's 12 MHz): the operations and their order stay, only the
registers between stages of one group go. A stage whose value must be registered before the next (a
memory's read address: its data comes a clock later) ends its group (``cuts``). Stage numbers given to
the pipeline stay the builder's; register stages name the delayed copies.

A long delay of a wide signal is a delay line in a block RAM instead (``DelayLine``): written every
advance at a shared pointer and read ``gap − 1`` entries behind it, it holds the value of ``gap``
advances ago, as ``gap`` registers would — one block instead of width × gap flip-flops, which on a
small FPGA are logic cells.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_REFERENCE = re.compile(r"\{(\w+)\}")
DELAY_DEPTH = 256          # a delay line's memory: one iCE40 SB_RAM40_4K at 16 bits (an ECP5 DP16KD)
DELAY_POINTER = "delay_wp"
# No memory of the design is read at an address written in the same clock (a lane's next step reads
# its state after its last write; a delay line reads behind its pointer; the bus reads a clock after it
# writes), so Yosys is told not to build logic that emulates read-during-write order: it would sit on
# the memory's address and data paths
NO_RW_CHECK = "(* no_rw_check *)"


def literal(value: int, width: int) -> str:
    """A sized signed Verilog literal of ``value`` (two's complement in ``width`` bits)."""
    if not -(1 << (width - 1)) <= value < (1 << (width - 1)):
        raise ValueError(f"{value} does not fit a signed {width}-bit literal")
    return f"{width}'sh{value & ((1 << width) - 1):x}"


@dataclass
class Signal:
    name: str
    width: int
    stage: int
    last_use: int = -1
    uses: set = field(default_factory=set)   # the stages that read it
    reset: bool = False   # delayed copies clear on reset (valid bits)
    signed: bool = True   # flags and memory addresses are unsigned
    home: int = 0         # its register stage (``stage`` folded)

    @property
    def declaration(self) -> str:
        return ("signed " if self.signed else "") + f"[{self.width - 1}:0]"


@dataclass(frozen=True)
class DelayLine:
    """A signal's value carried from stage ``start`` to stage ``end`` through a memory."""

    signal: str
    start: int
    end: int
    width: int
    depth: int = DELAY_DEPTH

    @property
    def name(self) -> str:
        return f"{self.signal}_delay_{self.start}_{self.end}"


@dataclass
class Pipeline:
    """Signals by stage, the combinational wires that define them, and raw Verilog per stage.

    ``memory_delay``: (least gap, least flip-flops saved per 16 bits of width) for a delay to go into a
    block RAM; None keeps every delay in registers. ``fold``: stages per register stage; ``cuts``: the
    stages that end a register stage whatever the fold (every ``boundary`` of an unfolded build)."""

    signals: dict[str, Signal] = field(default_factory=dict)
    wires: list[tuple[Signal, str]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    multipliers: list[tuple[str, int, int]] = field(default_factory=list)
    memory_delay: tuple[int, int] | None = None
    fold: int = 1
    cuts: frozenset = frozenset()
    boundaries: set = field(default_factory=set)

    def boundary(self, stage: int) -> None:
        """Values of ``stage`` are registered before the next stage reads them (a memory's address)."""
        self.boundaries.add(stage)

    def register_stage(self, stage: int) -> int:
        """The register stage ``stage`` folds into (itself unfolded)."""
        if self.fold == 1:
            return stage
        folded, run = 0, 0
        for earlier in range(stage):
            run += 1
            if earlier in self.cuts or run == self.fold:
                folded, run = folded + 1, 0
        return folded

    def input(self, name: str, width: int, stage: int, *, reset: bool = False, signed: bool = True) -> str:
        """A signal defined outside the netlist (issue logic, a memory's read data) at ``stage``."""
        self._declare(Signal(name, width, stage, reset=reset, signed=signed))
        return name

    def wire(self, name: str, width: int, stage: int, expression: str, *, signed: bool = True,
             reset: bool = False) -> str:
        """``wire signed [width-1:0] name = expression;`` at ``stage`` (a flag: unsigned, width 1;
        ``reset``: its delayed copies clear on reset, as a valid bit's must)."""
        signal = self._declare(Signal(name, width, stage, reset=reset, signed=signed))
        self.wires.append((signal, self.resolve(expression, stage)))
        return name

    def multiply(self, name: str, a: str, b: str, stage: int) -> str:
        """The full signed product a·b (width_a + width_b bits), one multiplier."""
        wa, wb = self.signals[a].width, self.signals[b].width
        self.multipliers.append((name, wa, wb))
        return self.wire(name, wa + wb, stage, f"{{{a}}} * {{{b}}}")

    def verilog(self, stage: int, text: str) -> None:
        """Raw Verilog that reads signals at ``stage`` (hold registers, memory ports)."""
        self.text.append(self.resolve(text, stage))

    def width(self, name: str) -> int:
        return self.signals[name].width

    def at(self, name: str, stage: int) -> str:
        """The Verilog name of ``name``'s value at ``stage`` (its delayed copy when produced earlier)."""
        signal = self.signals[name]
        if stage < signal.stage:
            raise ValueError(f"{name} is produced in stage {signal.stage}, read in stage {stage}")
        signal.last_use = max(signal.last_use, stage)
        folded = self.register_stage(stage)
        signal.uses.add(folded)
        return name if folded == signal.home else f"{name}_s{folded}"

    def resolve(self, text: str, stage: int) -> str:
        return _REFERENCE.sub(lambda match: self.at(match.group(1), stage), text)

    @property
    def last_stage(self) -> int:
        return max(signal.stage for signal in self.signals.values())

    def delay_lines(self) -> list[DelayLine]:
        """The delays that go into memories under the ``memory_delay`` policy (never a reset signal's:
        a memory holds no reset value)."""
        if self.memory_delay is None:
            return []
        least_gap, least_saved = self.memory_delay
        return [DelayLine(signal.name, start, end, signal.width)
                for signal in self.signals.values() if not signal.reset
                for start, end in _segments(signal)
                if end - start >= least_gap and signal.width * (end - start) >= least_saved * -(-signal.width // 16)]

    def emit(self) -> str:
        """Declarations, wire definitions, delays and raw text, in that order."""
        lines = ["// ---- pipeline wires (one per operation) ----"]
        lines += [f"wire {s.declaration} {s.name} = {expression};  // stage {s.home}"
                  for s, expression in self.wires]
        lines.append("// ---- pipeline delays ----")
        in_memory = {(line.signal, line.start): line for line in self.delay_lines()}
        if in_memory:
            lines.append(f"reg [7:0] {DELAY_POINTER};\n"
                         f"always @(posedge clk) if (rst) {DELAY_POINTER} <= 8'd0; "
                         f"else if (advance) {DELAY_POINTER} <= {DELAY_POINTER} + 8'd1;")
        for signal in self.signals.values():
            lines += _delays(signal, in_memory)
        return "\n".join(lines + ["// ---- stage logic ----", *self.text])

    def _declare(self, signal: Signal) -> Signal:
        if signal.name in self.signals:
            raise ValueError(f"signal {signal.name} defined twice")
        if signal.width < 1:
            raise ValueError(f"signal {signal.name} has width {signal.width}")
        signal.home = self.register_stage(signal.stage)
        self.signals[signal.name] = signal
        return signal


def _segments(signal: Signal) -> list[tuple[int, int]]:
    """(from, to) between consecutive register stages the signal is read in, from the one it is made in."""
    taps = sorted(stage for stage in signal.uses if stage > signal.home)
    return list(zip([signal.home, *taps], taps))


def _delays(signal: Signal, in_memory: dict) -> list[str]:
    """The signal's delayed copies: registers, or memory delay lines for the segments ``in_memory``."""
    lines, registers = [], []
    for start, end in _segments(signal):
        source = signal.name if start == signal.home else f"{signal.name}_s{start}"
        line = in_memory.get((signal.name, start))
        if line is None:
            registers += range(start + 1, end + 1)
            continue
        target, behind = f"{signal.name}_s{end}", f"{line.name}_read"
        lines += [f"{NO_RW_CHECK} reg [{signal.width - 1}:0] {line.name} [0:{line.depth - 1}];",
                  f"reg {signal.declaration} {target};",
                  f"wire [7:0] {behind} = {DELAY_POINTER} - 8'd{end - start - 1};  // wraps at 8 bits",
                  f"always @(posedge clk) if (advance) begin {line.name}[{DELAY_POINTER}] <= {source}; "
                  f"{target} <= {line.name}[{behind}]; end"]
    return _delay_registers(signal, registers) + lines


def _delay_registers(signal: Signal, stages) -> list[str]:
    """Registers for ``stages`` (each one fed by the copy of the stage before it)."""
    if not stages:
        return []
    names = [f"{signal.name}_s{k}" for k in stages]
    lines = [f"reg {signal.declaration} {', '.join(names)};"]
    sources = [signal.name if k - 1 == signal.home else f"{signal.name}_s{k - 1}" for k in stages]
    moves = " ".join(f"{dst} <= {src};" for dst, src in zip(names, sources))
    if signal.reset:
        clears = " ".join(f"{dst} <= {signal.width}'d0;" for dst in names)
        lines.append(f"always @(posedge clk) if (rst) begin {clears} end else if (advance) begin {moves} end")
    else:
        lines.append(f"always @(posedge clk) if (advance) begin {moves} end")
    return lines
