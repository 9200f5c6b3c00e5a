"""A staged netlist: named signed wires placed in pipeline stages, delay registers inserted for free.

The datapath is written as a list of operations, each one named wire with an explicit width, all
signed, in the stage it belongs to. An expression names the signals it reads as ``{name}``; when
``name`` was produced in an earlier stage the reference becomes the copy delayed to this stage
(``name_s7``), and the delay registers are emitted for exactly the stages that need them. So the
schedule is data: moving an operation to another stage cannot leave a stale operand behind, and
every pipeline register advances on one global enable (``advance``), which is how the core stalls.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_REFERENCE = re.compile(r"\{(\w+)\}")


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
    reset: bool = False   # delayed copies clear on reset (valid bits)
    signed: bool = True   # flags and memory addresses are unsigned

    @property
    def declaration(self) -> str:
        return ("signed " if self.signed else "") + f"[{self.width - 1}:0]"


@dataclass
class Pipeline:
    """Signals by stage, the combinational wires that define them, and raw Verilog per stage."""

    signals: dict[str, Signal] = field(default_factory=dict)
    wires: list[tuple[Signal, str]] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    multipliers: list[tuple[str, int, int]] = field(default_factory=list)

    def input(self, name: str, width: int, stage: int, *, reset: bool = False, signed: bool = True) -> str:
        """A signal defined outside the netlist (issue logic, a memory's read data) at ``stage``."""
        self._declare(Signal(name, width, stage, reset=reset, signed=signed))
        return name

    def wire(self, name: str, width: int, stage: int, expression: str, *, signed: bool = True) -> str:
        """``wire signed [width-1:0] name = expression;`` at ``stage`` (a flag: unsigned, width 1)."""
        signal = self._declare(Signal(name, width, stage, signed=signed))
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
        return name if stage == signal.stage else f"{name}_s{stage}"

    def resolve(self, text: str, stage: int) -> str:
        return _REFERENCE.sub(lambda match: self.at(match.group(1), stage), text)

    @property
    def last_stage(self) -> int:
        return max(signal.stage for signal in self.signals.values())

    def emit(self) -> str:
        """Declarations, wire definitions, delay registers and raw text, in that order."""
        lines = ["// ---- pipeline wires (one per operation) ----"]
        lines += [f"wire {s.declaration} {s.name} = {expression};  // stage {s.stage}"
                  for s, expression in self.wires]
        lines.append("// ---- pipeline delay registers ----")
        for signal in self.signals.values():
            lines += _delay_registers(signal)
        return "\n".join(lines + ["// ---- stage logic ----", *self.text])

    def _declare(self, signal: Signal) -> Signal:
        if signal.name in self.signals:
            raise ValueError(f"signal {signal.name} defined twice")
        if signal.width < 1:
            raise ValueError(f"signal {signal.name} has width {signal.width}")
        self.signals[signal.name] = signal
        return signal


def _delay_registers(signal: Signal) -> list[str]:
    stages = range(signal.stage + 1, signal.last_use + 1)
    if not stages:
        return []
    names = [f"{signal.name}_s{k}" for k in stages]
    lines = [f"reg {signal.declaration} {', '.join(names)};"]
    sources = [signal.name, *names[:-1]]
    moves = " ".join(f"{dst} <= {src};" for dst, src in zip(names, sources))
    if signal.reset:
        clears = " ".join(f"{dst} <= {signal.width}'d0;" for dst in names)
        lines.append(f"always @(posedge clk) if (rst) begin {clears} end else if (advance) begin {moves} end")
    else:
        lines.append(f"always @(posedge clk) if (advance) begin {moves} end")
    return lines
