"""Hardware targets, one subpackage each, and the registry that finds them (DESIGN §4).

A target is one folder ``targets/<name>/`` whose module ``target.py`` defines ``TARGETS`` (what
``echoforge compile --target`` can compile for) and/or ``BOARDS`` (the cores ``echoforge board serve
--target`` can put behind the device protocol). The registry imports every such module on first use,
so nothing else in echoforge names a target; ``target.py`` modules must be cheap to import (the CLI
imports them to build its parsers) and leave heavy work to their callables.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..compiler.capabilities import Capabilities
    from ..compiler.report import Comparison
    from .emulator.core import EmulatorCore
    from .emulator.fixed import FormatConfig
    from .emulator.lower import Program


@dataclass(frozen=True)
class TargetReport:
    """What a target's build adds to the compile report: a report.md section, report.json["target"],
    and findings — one-line problems (e.g. timing not met) that make `compile` exit 2."""

    title: str
    lines: list[str]
    data: dict
    findings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BuildContext:
    """What a target's build gets once the program is lowered, evaluated and saved in ``output``."""

    program: Program
    output: Path
    args: argparse.Namespace
    data: Any                 # models.data splits (.train/.val/.test, each with .x, .y)
    validation: Comparison    # float vs fixed on the validation split


@dataclass(frozen=True)
class Target:
    """A compile target: the limits its design rules check, its own compile options, and its build."""

    name: str
    capabilities: Capabilities
    summary: str
    add_options: Callable[[argparse.ArgumentParser], None] | None = None
    build: Callable[[BuildContext], TargetReport] | None = None


@dataclass(frozen=True)
class BankSlot:
    """Where a loaded program puts one bank: its index and its first oscillator (the sum of the earlier
    banks' sizes). A core factory that models a physical board places the bank there; others ignore it."""

    index: int
    first_oscillator: int


CoreFactory = Callable[["FormatConfig", BankSlot], "EmulatorCore"]


def unplaced(core: Callable[[FormatConfig], EmulatorCore]) -> CoreFactory:
    """The factory of a core that is the same wherever its bank sits (the emulator, the RTL)."""
    return lambda config, slot: core(config)


@dataclass(frozen=True)
class BoardKind:
    """What `board serve --target NAME` serves, given the parsed command line (its own options, added
    by ``add_options``, included). Either cores behind the Python board simulator — ``cores(args)``
    returns the factory ``factory(config, slot)`` of fresh, unloaded cores for one bank's formats and
    its BankSlot on the board, each running EmulatorCore's integer streams (``_bank_forward``,
    ``_bank_echo``) — or a board that serves itself (the FPGA gateware, SCPI instruments): ``serve(args)``
    announces its URI as the first line of output, serves until SIGINT or SIGTERM and returns the exit
    code. ``serve`` may still run the Python board simulator with a factory of its own
    (runtime.cli.serve_protocol)."""

    name: str
    summary: str
    cores: Callable[[argparse.Namespace], CoreFactory] | None = None
    serve: Callable[[argparse.Namespace], int] | None = None
    add_options: Callable[[argparse.ArgumentParser], None] | None = None

    def __post_init__(self):
        if (self.cores is None) == (self.serve is None):
            raise ValueError(f"board {self.name!r}: give exactly one of cores and serve")


@cache
def _modules() -> tuple:
    """Every targets/<name>/target.py, in name order."""
    found = []
    for package in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name):
        if package.ispkg and (Path(__path__[0]) / package.name / "target.py").exists():
            found.append(importlib.import_module(f"{__name__}.{package.name}.target"))
    return tuple(found)


def _named(attribute: str) -> dict:
    entries = [entry for module in _modules() for entry in getattr(module, attribute, ())]
    registry = {entry.name: entry for entry in entries}
    if len(registry) != len(entries):
        raise RuntimeError(f"two targets register the same {attribute} name: {[e.name for e in entries]}")
    return registry


@cache
def targets() -> dict[str, Target]:
    """Compile targets by name."""
    return _named("TARGETS")


@cache
def boards() -> dict[str, BoardKind]:
    """Servable board cores by name."""
    return _named("BOARDS")


def _lookup(registry: dict, name: str, what: str):
    if name not in registry:
        raise ValueError(f"unknown {what} {name!r} — use one of {', '.join(sorted(registry))}")
    return registry[name]


def target(name: str) -> Target:
    return _lookup(targets(), name, "target")


def board(name: str) -> BoardKind:
    return _lookup(boards(), name, "board target")


def capabilities(name: str) -> Capabilities:
    """The capabilities of a target by name."""
    return target(name).capabilities
