"""Lowering a compiled HWIR to the emulator: one `FormatConfig` per oscillator bank (DESIGN §3–§4).

After choose_formats and place, the HWIR gives every tensor of a device bank a fixed-point format.
The emulator runs a bank with one `FormatConfig`: a state format that ϕ, π, the forcing f and b
share (the core adds them to each other), and one format per parameter. Lowering maps one onto the
other::

    word_bits  ← the word of the bank's formats (one word per bank)
    state_frac ← the frac of positions = forcing = momenta = b (the shared state format)
    a_frac, delta_frac, w_frac, c_frac ← the frac of that parameter's format (a linear bank has no
               w, c: the emulator's defaults, w = 1 and c = 0, are exact in them)
    unit_frac ← the emulator's default for the word
    min_nudge_lsbs ← the default (largest echo nudge ≥ 2^-6 state units, what the nonlinear bank's ε²
               bias asks for); for a linear bank at least 2^-10 of the state range: its echo is
               affine in the nudge, so the RHEL estimator does not depend on ε and a larger nudge
               only lifts the signal above the echo's rounding (one LSB per shear). The echo's
               deviation from the forward path grows with the summed nudges and must stay inside
               the state's headroom: on BasicMotions it saturated at 2^-7, so 2^-10 leaves 8×.
    table_bits ← FormatConfig's rule: 10, fewer when the state has under 8 fraction bits (the
               finest function tables the state format can index)

and refuses what the emulator cannot represent, one rule at a time, with a one-line `LoweringError`
that names the node and the rule (`RULES`, then `representable` and `param-range`).

A `Program` is the HWIR plus those configurations. On disk it is a directory: program.yaml (this
module's document, `PROGRAM_VERSION`), beside the HWIR's model.yaml and model.npz. Loading reads
YAML safely, loads the HWIR with all its checks (weights hash included), lowers it again and
refuses a program.yaml whose configurations disagree with it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from echoforge.compiler.errors import IRError, fail
from echoforge.compiler.ir import HWIR, Node, load_ir, read_yaml, save_ir
from echoforge.models.core import PARAM_NAMES, OscillatorParams

from .core import EmulatorCore
from .fixed import MAX_WORD_BITS, MIN_WORD_BITS, FormatConfig

TARGET = "emulator"  # every registered digital target runs these integer semantics
PROGRAM_VERSION = "1.0"
PROGRAM_FILE, HWIR_FILE = "program.yaml", "model.yaml"
STATE_ROLES = ("forcing", "positions", "momenta")
ROUNDING, SATURATION = "nearest-away", "clamp"  # what fixed.py's R and clamp are
LONGER_WORD = "compile with a longer word (--word-bits) or recalibrate"
# A linear bank's largest echo nudge is at least 2^-10 of its state range (see the module docstring).
LINEAR_NUDGE_RANGE_LOG2 = 10


class LoweringError(IRError):
    """The emulator cannot run this HWIR; the message names the node and the rule."""


def _refuse(where: str, node: str | None, rule: str, problem: str, fix: str) -> LoweringError:
    return LoweringError(str(fail(where, node, f"[{rule}] {problem}", fix)))


# ------------------------------------------------------------------------------------ rules


def _state_roles(node: Node) -> tuple[str, ...]:
    return STATE_ROLES + (("b",) if "b" in node.params else ())


def formats(node: Node):
    missing = [role for role in (*node.activations, *node.params) if role not in node.formats]
    if missing:
        return "formats", f"no number format for {', '.join(missing)}", "run choose_formats for the emulator"


def arithmetic(node: Node):
    for role, fmt in node.formats.items():
        if (fmt.rounding, fmt.saturation) != (ROUNDING, SATURATION):
            return ("arithmetic", f"{role} asks for rounding {fmt.rounding!r}, saturation "
                    f"{fmt.saturation!r}; the emulator rounds {ROUNDING} and saturates by {SATURATION}",
                    "rerun choose_formats")


def word_length(node: Node):
    words = sorted({fmt.word_bits for fmt in node.formats.values()})
    if len(words) > 1 or not MIN_WORD_BITS <= words[0] <= MAX_WORD_BITS:
        return ("word-length", f"formats of {words} bits; the emulator runs one word of "
                f"{MIN_WORD_BITS}..{MAX_WORD_BITS} bits per bank",
                f"compile with one word length of {MIN_WORD_BITS}..{MAX_WORD_BITS} bits (--word-bits)")


def shared_state_format(node: Node):
    roles = _state_roles(node)
    if len({node.formats[role] for role in roles}) > 1:
        return ("shared-state-format", f"{', '.join(roles)} have different formats; the emulator has one "
                "state format for them", "rerun choose_formats for the emulator")


def state_headroom(node: Node):
    state = node.formats["positions"]
    for role in STATE_ROLES:
        reach = node.ranges[role].absmax if role in node.ranges else 0.0
        if reach > state.max_value:
            return ("state-headroom", f"calibrated {role} reach {reach:.4g}, beyond ±{state.max_value:.4g} "
                    f"of the state format Q{state.int_bits}.{state.frac_bits}: the state would saturate "
                    "and the leapfrog stop being reversible", LONGER_WORD)


RULES = (formats, arithmetic, word_length, shared_state_format, state_headroom)


# ------------------------------------------------------------------------------------ lowering


def format_config(node: Node) -> FormatConfig:
    """The emulator configuration a bank's HWIR formats stand for (see the module docstring)."""
    fracs = {f"{role}_frac": node.formats[role].frac_bits for role in ("a", "delta", "w", "c")
             if role in node.formats}
    state = node.formats["positions"]
    config = FormatConfig(word_bits=state.word_bits, state_frac=state.frac_bits, **fracs)
    if node.attrs["hru_kind"] != "linear":
        return config
    linear_nudge = 1 << (config.word_bits - 1 - LINEAR_NUDGE_RANGE_LOG2)
    return dataclasses.replace(config, min_nudge_lsbs=max(config.min_nudge_lsbs, linear_nudge))


def bank_params(ir: HWIR, node: Node) -> OscillatorParams:
    return OscillatorParams(node.attrs["hru_kind"], **{role: ir.param(node, role).astype(np.float64)
                                                       for role in PARAM_NAMES if role in node.params})


@dataclass(frozen=True)
class BankProgram:
    """One device bank as the emulator runs it: its node, parameters and number formats."""

    node: str
    params: OscillatorParams
    config: FormatConfig

    def core(self) -> EmulatorCore:
        """A fresh EmulatorCore with this bank's formats and parameters loaded."""
        core = EmulatorCore(self.config)
        core.load(self.params)
        return core

    def to_yaml(self) -> dict:
        return {"node": self.node, "hru_kind": self.params.kind, "oscillators": self.params.size,
                "state": str(self.config.state), "format": dataclasses.asdict(self.config)}


@dataclass(frozen=True)
class Program:
    """A compiled HWIR and the emulator configuration of each of its device banks, in graph order.

    ``dataset`` records the data protocol the program was calibrated with ({name, seed, …}), so
    that evaluating it later normalises and splits data the same way.
    """

    ir: HWIR
    banks: tuple[BankProgram, ...]
    dataset: dict | None = None

    def cores(self) -> dict[str, EmulatorCore]:
        """Node name → a loaded EmulatorCore, one per device bank."""
        return {bank.node: bank.core() for bank in self.banks}


def _lower_bank(ir: HWIR, node: Node, where: str) -> BankProgram:
    for rule in RULES:
        refusal = rule(node)
        if refusal:
            raise _refuse(where, node.name, *refusal)
    params = bank_params(ir, node)
    try:
        bank = BankProgram(node.name, params, format_config(node))
        bank.core()  # builds the function tables and quantises the parameters: what can fail
    except ValueError as error:
        raise _refuse(where, node.name, "representable", str(error), LONGER_WORD) from None
    for name in node.params:
        fmt = bank.config.param(name)
        saturated = fmt.quantize(getattr(params, name))[1]
        if saturated:
            raise _refuse(where, node.name, "param-range", f"{saturated} values of {name} exceed ±"
                          f"{fmt.max_value:.4g} of its format {fmt}", "rerun choose_formats")
    return bank


def lower(ir: HWIR, *, where: str | None = None, dataset: dict | None = None) -> Program:
    """The emulator Program of a compiled HWIR; raises LoweringError for what it cannot run.

    `where` names the HWIR in errors (default: its source).
    """
    from echoforge.targets import targets

    where = where or ir.provenance.source
    compiled_for = ir.target and ir.target.get("name")
    if compiled_for not in targets():
        raise _refuse(where, None, "target", f"the HWIR was compiled for {compiled_for!r}, no known target",
                      f"compile it for one of {', '.join(sorted(targets()))} (echoforge compile --target)")
    banks = []
    for node in ir.nodes:
        if node.placement is None:
            raise _refuse(where, node.name, "placed", "has no placement", "run the place pass")
        if node.placement == "device" and node.kind != "hru_bank":
            raise _refuse(where, node.name, "device-node", f"the emulator runs hru_bank nodes, not "
                          f"{node.kind}", "place it on the host")
        if node.placement == "device":
            banks.append(_lower_bank(ir, node, where))
    return Program(ir, tuple(banks), dataset)


# ------------------------------------------------------------------------------------ files


def save_program(program: Program, directory: str | Path) -> Path:
    """Write program.yaml, model.yaml and model.npz into `directory`; returns program.yaml's path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_ir(program.ir, directory / HWIR_FILE)
    document = {"program_version": PROGRAM_VERSION, "target": program.ir.target["name"], "hwir": HWIR_FILE,
                "dataset": program.dataset, "banks": [bank.to_yaml() for bank in program.banks]}
    path = directory / PROGRAM_FILE
    path.write_text(yaml.safe_dump(document, sort_keys=False, width=110))
    return path


def load_program(directory: str | Path) -> Program:
    """Read a program directory (or its program.yaml); every problem is one line naming the file."""
    path = Path(directory)
    path = path / PROGRAM_FILE if path.is_dir() else path
    where = str(path)
    document = read_yaml(path, what="emulator program", writer="`echoforge compile`")
    _check_version(document, where)
    try:
        hwir, recorded, dataset = path.parent / document["hwir"], document["banks"], document.get("dataset")
        program = lower(load_ir(hwir), where=str(hwir), dataset=dataset)
        _check_banks(program, list(recorded), where)
    except IRError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise fail(where, None, f"malformed program document ({type(error).__name__}: {error})",
                   "see docs/compile.md for its fields") from None
    return program


def _check_version(document: dict, where: str) -> None:
    version = str(document.get("program_version"))
    major, current = version.partition(".")[0], PROGRAM_VERSION.partition(".")[0]
    if major != current:
        if major.isdigit() and int(major) > int(current):
            raise fail(where, None, f"program_version {version} is newer than this echoforge reads "
                       f"({current}.x)", "upgrade echoforge")
        raise fail(where, None, f"program_version {version} is not {current}.x, which this echoforge reads",
                   "recompile the model with `echoforge compile`")


def _check_banks(program: Program, recorded: list, where: str) -> None:
    """The recorded configurations must be what the HWIR lowers to: the HWIR is the one source."""
    lowered = {bank.node: bank.to_yaml() for bank in program.banks}
    written = {entry["node"]: entry for entry in recorded}
    for node in [*lowered, *(name for name in written if name not in lowered)]:
        if lowered.get(node) != written.get(node):
            raise fail(where, node, "records a bank configuration that the HWIR's formats do not lower to",
                       "recompile; keep program.yaml, model.yaml and model.npz together")
