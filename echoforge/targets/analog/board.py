"""Board description files: what an analog oscillator board can hold and what it gets wrong.

A board is a YAML document (schema in docs/analog.md, ``schema_version`` 1.x) naming its oscillator
count, tuning ranges (natural frequency, input and readout gain, set through ``tuning_bits``-bit DAC
codes), signal converters, sample rate, quality factor, device-to-device mismatch, noise, drift and
whether its echo mode can apply gain (negative resistance). ``load_board`` reads a shipped board by
name (``lc-tank-pcb``) or a file, safely, and checks every field: each problem is one line naming
the file, the key and what to do, all of them in one ValueError.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

SCHEMA_VERSION = "1.0"
SHIPPED = Path(__file__).parent / "boards"
MAX_CONVERTER_BITS = 24
MAX_TUNING_BITS = 24


@dataclass(frozen=True)
class Converter:
    """A signed converter of ``bits`` bits spanning ±``full_scale_v`` volts; codes are symmetric,
    ±(2^(bits−1) − 1), rounded to nearest, clipped at full scale (counted)."""

    bits: int
    full_scale_v: float

    @property
    def limit(self) -> int:
        return (1 << (self.bits - 1)) - 1

    @property
    def lsb_v(self) -> float:
        return self.full_scale_v / self.limit

    def codes(self, volts) -> tuple[np.ndarray, int]:
        """(int64 codes, how many clipped) of a voltage array."""
        scaled = np.rint(np.asarray(volts, dtype=np.float64) / self.lsb_v)
        if np.isnan(scaled).any():
            raise ValueError("cannot convert NaN volts")
        clipped = int(np.count_nonzero(np.abs(scaled) > self.limit))
        return np.clip(scaled, -self.limit, self.limit).astype(np.int64), clipped

    def volts(self, codes) -> np.ndarray:
        return np.asarray(codes, dtype=np.float64) * self.lsb_v


@dataclass(frozen=True)
class Noise:
    thermal_v: float = 0.0   # rms added to each oscillator's state every sample (position volts)
    readout_v: float = 0.0   # rms added at each ADC input every sample


@dataclass(frozen=True)
class Drift:
    gain_sigma_per_s: float = 0.0  # σ of each oscillator's relative input/readout gain drift rate
    run_period_s: float = 0.0       # board time from one run to the next (the drift clock ticks per run)


@dataclass(frozen=True)
class EchoGain:
    available: bool = False        # the echo mode can apply negative resistance
    max_rate_per_s: float = 0.0    # largest gain rate g (1/s) it can apply


@dataclass(frozen=True)
class Board:
    """One board description (see the module docstring; units in the field names)."""

    id: str
    oscillators: int
    sample_rate_hz: float
    natural_frequency_hz: tuple[float, float]
    input_gain: tuple[float, float]
    readout_gain: tuple[float, float]
    tuning_bits: int
    dac: Converter
    adc: Converter
    quality_factor: float             # math.inf: lossless
    mismatch_sigma: float             # relative σ of frequency and gains, fixed at fabrication
    offset_sigma_v: float = 0.0       # σ of each ADC channel's offset
    noise: Noise = Noise()
    drift: Drift = Drift()
    echo_gain: EchoGain = EchoGain()
    description: str = ""
    source: str = "<memory>"

    @property
    def dt(self) -> float:
        """The physical time step: one HRU step is one sample."""
        return 1.0 / self.sample_rate_hz

    def replace(self, **changes) -> Board:
        """This board with some fields changed (sweeps over σ, Q, noise), checked again."""
        board = dataclasses.replace(self, **changes)
        problems = _check_board(board, board.source)
        if problems:
            raise ValueError("\n".join(problems))
        return board

    def ideal(self, converter_bits: int = MAX_CONVERTER_BITS, tuning_bits: int = MAX_TUNING_BITS) -> Board:
        """The same board without faults: no mismatch, offset, noise or drift, lossless, fine converters
        and tuning DACs (what the float core computes, up to those converters' resolution)."""
        return self.replace(mismatch_sigma=0.0, offset_sigma_v=0.0, noise=Noise(), drift=Drift(),
                            quality_factor=math.inf, tuning_bits=tuning_bits,
                            dac=Converter(converter_bits, self.dac.full_scale_v),
                            adc=Converter(converter_bits, self.adc.full_scale_v))

    def to_yaml(self) -> dict:
        document = {"schema_version": SCHEMA_VERSION, "id": self.id, "description": self.description}
        for f in dataclasses.fields(self):
            if f.name not in ("id", "description", "source"):
                value = getattr(self, f.name)
                document[f.name] = (dataclasses.asdict(value) if dataclasses.is_dataclass(value)
                                    else list(value) if isinstance(value, tuple) else value)
        return document


def shipped_boards() -> list[str]:
    """Names of the boards that ship with echoforge (``--board NAME``)."""
    return sorted(path.stem for path in SHIPPED.glob("*.yaml"))


def board_path(name_or_path: str | Path) -> Path:
    """A shipped board's file by name, or the path given."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml") and (SHIPPED / f"{path.name}.yaml").exists():
        return SHIPPED / f"{path.name}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such board file — give a path or one of the shipped boards: "
                                f"{', '.join(shipped_boards())}")
    return path


def load_board(name_or_path: str | Path) -> Board:
    """Read and check a board description (safe YAML; every problem is a line of the ValueError)."""
    path = board_path(name_or_path)
    where = str(path)
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{where}: not valid YAML ({' '.join(str(error).split())}) — fix the syntax") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{where}: cannot read the board file ({error}) — give a readable YAML file") from None
    return parse_board(document, where)


# ---- parsing and checks ------------------------------------------------------------------------------

_TOP = {"schema_version", "id", "description", "oscillators", "sample_rate_hz", "natural_frequency_hz",
        "input_gain", "readout_gain", "tuning_bits", "dac", "adc", "quality_factor", "mismatch_sigma",
        "offset_sigma_v", "noise", "drift", "echo_gain"}
_REQUIRED = _TOP - {"description", "offset_sigma_v", "noise", "drift", "echo_gain"}


class _Reader:
    """Reads typed fields of a document, collecting one line per problem."""

    def __init__(self, where: str):
        self.where = where
        self.problems: list[str] = []

    def problem(self, key: str, what: str, fix: str) -> None:
        """Record one line per key: the first problem found with it (a missing key is not also mistyped)."""
        if not any(line.startswith(f"{self.where}: {key}: ") for line in self.problems):
            self.problems.append(f"{self.where}: {key}: {what} — {fix}")

    def section(self, document: dict, key: str, fields: dict) -> dict:
        """A mapping of numbers (or booleans) with the given defaults; unknown keys are problems."""
        value = document.get(key, {})
        if not isinstance(value, dict):
            self.problem(key, f"expected a mapping, got {value!r}", f"write it as {{{', '.join(fields)}: ...}}")
            return dict(fields)
        for name in value:
            if name not in fields:
                self.problem(f"{key}.{name}", "unknown key", f"remove it; {key} takes {', '.join(fields)}")
        return {name: self.scalar(value, name, default, f"{key}.{name}") for name, default in fields.items()}

    def scalar(self, document: dict, key: str, default, label: str | None = None):
        label = label or key
        value = document.get(key, default)
        if value is None:
            self.problem(label, "missing", "add it (see docs/analog.md for the schema)")
            return math.nan if default is None else default  # NaN fails every range check quietly
        kind = type(default) if default is not None else float
        if kind is bool:
            if not isinstance(value, bool):
                self.problem(label, f"expected true or false, got {value!r}", "write true or false")
            return bool(value) if isinstance(value, bool) else False
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.problem(label, f"expected a number, got {value!r}", "write a number (YAML .inf for infinity)")
            return default if default is not None else math.nan
        if kind is int and value != int(value):
            self.problem(label, f"expected an integer, got {value!r}", "write a whole number")
        return kind(value) if math.isfinite(value) or kind is float else value

    def pair(self, document: dict, key: str) -> tuple[float, float]:
        value = document.get(key)
        if (not isinstance(value, list) or len(value) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            self.problem(key, f"expected [low, high], got {value!r}", "write two numbers, e.g. [1.0e+3, 1.0e+6]")
            return (math.nan, math.nan)
        return float(value[0]), float(value[1])


def parse_board(document, where: str) -> Board:
    """A Board from a parsed YAML document; ValueError listing every problem, one line each."""
    if not isinstance(document, dict):
        raise ValueError(f"{where}: expected a mapping of board fields, got {type(document).__name__} — "
                         "see docs/analog.md for the schema")
    reader = _Reader(where)
    _check_version(document.get("schema_version"), reader)
    for key in sorted(set(document) - _TOP):
        reader.problem(key, "unknown key", f"remove it or check the spelling; a board has {', '.join(sorted(_TOP))}")
    for key in sorted(_REQUIRED - set(document)):
        reader.problem(key, "missing", "add it (see docs/analog.md for the schema)")
    board_id = document.get("id")
    if not isinstance(board_id, str) or not board_id.strip():
        reader.problem("id", f"expected a non-empty name, got {board_id!r}", "name the board, e.g. id: my-board-rev-a")
        board_id = "?"
    fields = {
        "oscillators": reader.scalar(document, "oscillators", 0),
        "sample_rate_hz": reader.scalar(document, "sample_rate_hz", None),
        "natural_frequency_hz": reader.pair(document, "natural_frequency_hz"),
        "input_gain": reader.pair(document, "input_gain"),
        "readout_gain": reader.pair(document, "readout_gain"),
        "tuning_bits": reader.scalar(document, "tuning_bits", 0),
        "dac": Converter(**reader.section(document, "dac", {"bits": 0, "full_scale_v": math.nan})),
        "adc": Converter(**reader.section(document, "adc", {"bits": 0, "full_scale_v": math.nan})),
        "quality_factor": reader.scalar(document, "quality_factor", None),
        "mismatch_sigma": reader.scalar(document, "mismatch_sigma", None),
        "offset_sigma_v": reader.scalar(document, "offset_sigma_v", 0.0),
        "noise": Noise(**reader.section(document, "noise", {"thermal_v": 0.0, "readout_v": 0.0})),
        "drift": Drift(**reader.section(document, "drift", {"gain_sigma_per_s": 0.0, "run_period_s": 0.0})),
        "echo_gain": EchoGain(**reader.section(document, "echo_gain", {"available": False, "max_rate_per_s": 0.0})),
    }
    board = Board(id=board_id.strip(), description=str(document.get("description", "")), source=where, **fields)
    reported = {line.split(": ")[1].partition(".")[0] for line in reader.problems}
    problems = reader.problems + [line for line in _check_board(board, where)
                                  if line[len(where) + 2:].split(":")[0].partition(".")[0] not in reported]
    if problems:
        raise ValueError("\n".join(problems))
    return board


def _check_version(version, reader: _Reader) -> None:
    text = str(version)
    major, current = text.partition(".")[0], SCHEMA_VERSION.partition(".")[0]
    if version is None:
        reader.problem("schema_version", "missing", f'add schema_version: "{SCHEMA_VERSION}"')
    elif major != current:
        newer = major.isdigit() and int(major) > int(current)
        reader.problem("schema_version", f"{text} is {'newer than' if newer else 'not'} the {current}.x this "
                       "echoforge reads", "upgrade echoforge" if newer else f'write schema_version: "{SCHEMA_VERSION}"')


def _check_board(board: Board, where: str) -> list[str]:
    """The physical plausibility rules (after the types are right)."""
    problems = []

    def need(ok: bool, key: str, what: str, fix: str) -> None:
        if not ok:
            problems.append(f"{where}: {key}: {what} — {fix}")

    need(board.oscillators >= 1, "oscillators", f"{board.oscillators}; a board has at least one", "write a count ≥ 1")
    need(board.sample_rate_hz > 0 and math.isfinite(board.sample_rate_hz), "sample_rate_hz",
         f"{board.sample_rate_hz} is not a positive finite rate", "write the sample rate in Hz, e.g. 10.0e+6")
    for key in ("natural_frequency_hz", "input_gain", "readout_gain"):
        low, high = getattr(board, key)
        need(0 < low and math.isfinite(high), key, f"[{low}, {high}] must be positive and finite",
             "write [low, high] with 0 < low")
        need(not low > high, key, f"the range [{low}, {high}] is upside down",
             f"swap them: [{high}, {low}]")
        need(low != high, key, f"the range [{low}, {high}] is empty", "give a low below the high")
    low, high = board.natural_frequency_hz
    need(not high >= board.sample_rate_hz / math.pi, "natural_frequency_hz",
         f"{high} Hz needs ω·Δt ≥ 2 at {board.sample_rate_hz} Hz sampling: the leapfrog is unstable there",
         f"keep the highest frequency below sample_rate_hz/π = {board.sample_rate_hz / math.pi:.4g} Hz")
    need(1 <= board.tuning_bits <= MAX_TUNING_BITS, "tuning_bits", f"{board.tuning_bits} bits",
         f"write 1..{MAX_TUNING_BITS}")
    for key in ("dac", "adc"):
        converter = getattr(board, key)
        need(2 <= converter.bits <= MAX_CONVERTER_BITS, f"{key}.bits", f"{converter.bits} bits cannot convert a "
             "signed signal", f"write 2..{MAX_CONVERTER_BITS}")
        need(converter.full_scale_v > 0 and math.isfinite(converter.full_scale_v), f"{key}.full_scale_v",
             f"{converter.full_scale_v} V is not a positive finite full scale", "write the full scale in volts")
    need(board.quality_factor > 0.5, "quality_factor", f"Q = {board.quality_factor}: an oscillator needs Q > 1/2 "
         "(Q ≤ 0 is not a loss)", "write Q > 0.5, or .inf for a lossless board")
    need(0 <= board.mismatch_sigma < 0.5, "mismatch_sigma", f"{board.mismatch_sigma} is not a relative σ in [0, 0.5)",
         "write e.g. 0.001, 0.01 or 0.05")
    for key, value in (("offset_sigma_v", board.offset_sigma_v), ("noise.thermal_v", board.noise.thermal_v),
                       ("noise.readout_v", board.noise.readout_v),
                       ("drift.gain_sigma_per_s", board.drift.gain_sigma_per_s),
                       ("drift.run_period_s", board.drift.run_period_s),
                       ("echo_gain.max_rate_per_s", board.echo_gain.max_rate_per_s)):
        need(value >= 0 and math.isfinite(value), key, f"{value} is not a finite value ≥ 0", "write 0 or more")
    return problems
