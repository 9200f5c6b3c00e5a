"""Calibration files: what was measured on one board, per oscillator, keyed by the board's id.

Written by `echoforge calibrate` (calibration.py), read by the mapping (mapping.py) and by a twin's
firmware (``echoforge board serve --target analog-twin --calibration``). Schema in docs/analog.md:
per oscillator the values the board was *programmed* to when it was measured and the values
*measured*; their ratio is the oscillator's correction, which the mapping divides out when it picks
tuning codes. Reading is safe YAML; every problem is one line naming the file, the key and the fix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from .board import Board

SCHEMA_VERSION = "1.0"
PROGRAMMED = ("frequency_hz", "input_gain", "readout_gain")
MEASURED = ("frequency_hz", "q", "input_gain", "readout_gain", "offset_v")


@dataclass(frozen=True)
class Calibration:
    """Per-oscillator arrays (board.oscillators,): programmed and measured values."""

    board_id: str
    programmed: dict[str, np.ndarray]   # PROGRAMMED names
    measured: dict[str, np.ndarray]     # MEASURED names
    source: str = "<memory>"

    @property
    def oscillators(self) -> int:
        return len(self.measured["frequency_hz"])

    def correction(self, name: str) -> np.ndarray:
        """measured / programmed for frequency_hz, input_gain or readout_gain (1 = as designed)."""
        return self.measured[name] / self.programmed[name]

    def to_yaml(self) -> dict:
        rows = [{"index": i,
                 "programmed": {name: float(self.programmed[name][i]) for name in PROGRAMMED},
                 "measured": {name: float(self.measured[name][i]) for name in MEASURED}}
                for i in range(self.oscillators)]
        return {"schema_version": SCHEMA_VERSION, "board_id": self.board_id, "oscillators": rows}


def save_calibration(calibration: Calibration, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(calibration.to_yaml(), sort_keys=False, width=110))
    return path


def load_calibration(path: str | Path, board: Board) -> Calibration:
    """Read a calibration file for `board`; ValueError (one line per problem) if it is malformed or
    was measured on another board."""
    path = Path(path)
    where = str(path)
    if not path.exists():
        raise FileNotFoundError(f"{where}: no such calibration file — run `echoforge calibrate` to make one")
    try:
        document = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{where}: not a readable YAML file ({' '.join(str(error).split())}) — "
                         "give a file written by `echoforge calibrate`") from None
    return parse_calibration(document, where, board)


def parse_calibration(document, where: str, board: Board) -> Calibration:
    if not isinstance(document, dict):
        raise ValueError(f"{where}: expected a calibration mapping, got {type(document).__name__} — "
                         "give a file written by `echoforge calibrate`")
    version = str(document.get("schema_version"))
    if version.partition(".")[0] != SCHEMA_VERSION.partition(".")[0]:
        raise ValueError(f"{where}: schema_version: {version} is not the {SCHEMA_VERSION.partition('.')[0]}.x "
                         "this echoforge reads — recalibrate with `echoforge calibrate`")
    if document.get("board_id") != board.id:
        raise ValueError(f"{where}: board_id: measured on board {document.get('board_id')!r}, not on "
                         f"{board.id!r} ({board.source}) — calibrate this board, or pass the board it was measured on")
    rows = document.get("oscillators")
    if not isinstance(rows, list) or len(rows) != board.oscillators:
        count = len(rows) if isinstance(rows, list) else rows
        raise ValueError(f"{where}: oscillators: {count} entries for a board of {board.oscillators} — "
                         "calibrate every oscillator of the board")
    problems = []
    programmed = {name: np.empty(board.oscillators) for name in PROGRAMMED}
    measured = {name: np.empty(board.oscillators) for name in MEASURED}
    for i, row in enumerate(rows):
        for group, names, into in (("programmed", PROGRAMMED, programmed), ("measured", MEASURED, measured)):
            values = row.get(group) if isinstance(row, dict) else None
            for name in names:
                value = values.get(name) if isinstance(values, dict) else None
                key = f"oscillators[{i}].{group}.{name}"
                if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                    problems.append(f"{where}: {key}: expected a number, got {value!r} — recalibrate")
                    continue
                positive = name != "offset_v"
                if positive and not value > 0:
                    problems.append(f"{where}: {key}: {value} must be positive — recalibrate this oscillator")
                into[name][i] = value
    if problems:
        raise ValueError("\n".join(problems))
    return Calibration(board.id, programmed, measured, where)
