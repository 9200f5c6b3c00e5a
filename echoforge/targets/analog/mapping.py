"""The mapping pass: a linear HRU bank's parameters → a board's physical quantities and tuning codes.

One HRU step is one sample of the board (Δt = 1/sample_rate). With position scale X₀ = 1 V (an HRU
position of 1 is 1 V on the tank) and the forcing scaled so that the state word's full range meets
the DAC's full scale (s_u = dac.full_scale_v / state.max_value volts per forcing unit), the leapfrog
of oscillator i (V = a m²/2 − m f, step δ) is the sampled physical oscillator

    ẍ = −ωᵢ² x − γᵢ ẋ + ωᵢ² g_in,i u(t),    ωᵢ = √aᵢ·δᵢ/Δt,    g_in,i = X₀/(aᵢ s_u),

with readout y = g_out·x, g_out = adc.full_scale_v/(X₀·state.max_value) (the state word's range meets
the ADC's), and the HRU momentum π = ẋΔt/(X₀δ) read on a quadrature channel y_q = g_out·ẋ/ω.
Tuning codes: frequency and gains are set by ``tuning_bits``-bit DAC codes spaced logarithmically
over the board's ranges. With a calibration, each value is divided by the oscillator's measured
correction (measured/programmed) before it is coded, so that the board lands on the target.

Design rules (``findings``): a frequency or gain outside the board's range, more oscillators than the
board has; each names node, oscillator, parameter and limit. The runtime twin instead clips such a
value to the range and counts it (quantity "param"), as a board's tuning DAC would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from echoforge.models.core import OscillatorParams

from .board import Board
from .calibration_file import Calibration

POSITION_SCALE_V = 1.0  # X₀: tank volts per HRU position unit
QUANTITIES = ("frequency_hz", "input_gain", "readout_gain")
BOARD_RANGES = {"frequency_hz": "natural_frequency_hz", "input_gain": "input_gain", "readout_gain": "readout_gain"}


@dataclass(frozen=True)
class BankMapping:
    """One bank on oscillators first … first + P − 1 of a board: per-oscillator arrays (P,)."""

    node: str
    first: int
    dt_s: float
    forcing_scale_v: float            # s_u: DAC volts per HRU forcing unit
    position_scale_v: float           # X₀
    target: dict[str, np.ndarray]     # what the HRU asks for (QUANTITIES)
    codes: dict[str, np.ndarray]      # tuning DAC codes, clipped to the board's range
    programmed: dict[str, np.ndarray]  # the nominal value of each code
    expected: dict[str, np.ndarray]   # programmed × calibrated correction: what the board should do
    offset_v: np.ndarray              # calibrated readout offsets (0 without calibration)
    clipped: dict[str, np.ndarray]    # bool per oscillator: the target was outside the board's range
    findings: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.offset_v)

    @property
    def expected_omega(self) -> np.ndarray:
        return 2 * np.pi * self.expected["frequency_hz"]

    def to_yaml(self) -> dict:
        rows = []
        for i in range(self.size):
            rows.append({"oscillator": self.first + i,
                         **{name: {"target": _num(self.target[name][i]), "code": int(self.codes[name][i]),
                                        "programmed": _num(self.programmed[name][i]),
                                        "expected": _num(self.expected[name][i])} for name in QUANTITIES},
                         "offset_v": _num(self.offset_v[i])})
        return {"node": self.node, "first_oscillator": self.first, "oscillators": self.size,
                "dt_s": self.dt_s, "forcing_scale_v": self.forcing_scale_v,
                "position_scale_v": self.position_scale_v, "mapping": rows}


def _num(value: float) -> float:
    return float(f"{float(value):.9g}")


def _log_codes(values: np.ndarray, low: float, high: float, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes, clipped) of values on a logarithmic tuning DAC over [low, high]."""
    top = (1 << bits) - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        position = (np.log(values) - math.log(low)) / (math.log(high) - math.log(low)) * top
    position = np.where(np.isnan(position), -1.0, position)
    clipped = (position < -0.5) | (position > top + 0.5)
    return np.clip(np.rint(position), 0, top).astype(np.int64), clipped


def code_value(codes: np.ndarray, low: float, high: float, bits: int) -> np.ndarray:
    """The nominal value a logarithmic tuning code sets."""
    top = (1 << bits) - 1
    return np.exp(math.log(low) + np.asarray(codes) / top * (math.log(high) - math.log(low)))


def targets(board: Board, params: OscillatorParams, state_max: float) -> tuple[dict[str, np.ndarray], float]:
    """The physical values an HRU bank asks for, and s_u (module docstring)."""
    forcing_scale = board.dac.full_scale_v / state_max
    with np.errstate(divide="ignore"):
        wanted = {"frequency_hz": np.sqrt(np.maximum(params.a, 0)) * params.delta / board.dt / (2 * np.pi),
                  "input_gain": POSITION_SCALE_V / (params.a * forcing_scale),
                  "readout_gain": np.full(params.size, board.adc.full_scale_v / (POSITION_SCALE_V * state_max))}
    return wanted, forcing_scale


def map_bank(board: Board, params: OscillatorParams, state_max: float, *, node: str = "bank", first: int = 0,
             calibration: Calibration | None = None) -> BankMapping:
    """Map one linear bank onto the board's oscillators first …; see the module docstring."""
    if params.kind != "linear":
        raise ValueError(f"node {node!r}: the analog board runs linear HRU banks, not {params.kind} — "
                         "train a linear HSSM for it")
    size = params.size
    span = slice(first, first + size)
    findings = []
    if first + size > board.oscillators:
        findings.append(f"node {node!r}: [oscillators] needs oscillators {first}..{first + size - 1}; the board "
                        f"{board.id!r} has {board.oscillators} — use a smaller model or a larger board")
        span = slice(first, board.oscillators)
    target, forcing_scale = targets(board, params, state_max)
    codes, programmed, expected, clipped = {}, {}, {}, {}
    for name in QUANTITIES:
        low, high = getattr(board, BOARD_RANGES[name])
        correction = np.ones(size)
        if calibration is not None:
            correction[:span.stop - first] = calibration.correction(name)[span]
        codes[name], clipped[name] = _log_codes(target[name] / correction, low, high, board.tuning_bits)
        programmed[name] = code_value(codes[name], low, high, board.tuning_bits)
        expected[name] = programmed[name] * correction
        findings += _range_findings(node, name, target[name], clipped[name], (low, high), params, board)
    offset = np.zeros(size)
    if calibration is not None:
        offset[:span.stop - first] = calibration.measured["offset_v"][span]
    return BankMapping(node, first, board.dt, forcing_scale, POSITION_SCALE_V, target, codes, programmed,
                       expected, offset, clipped, tuple(findings))


def _range_findings(node, name, values, clipped, limits, params: OscillatorParams, board: Board) -> list[str]:
    low, high = limits
    unit = " Hz" if name == "frequency_hz" else ""
    found = []
    for i in np.flatnonzero(clipped):
        if name == "frequency_hz":
            scale = (2 * np.pi * board.dt / params.delta[i]) ** 2
            fix = (f"keep a in [{low ** 2 * scale:.4g}, {high ** 2 * scale:.4g}] at δ = {params.delta[i]:.4g} "
                   f"(a = {params.a[i]:.4g}), or use a board whose range covers it")
        else:
            fix = f"a = {params.a[i]:.4g} sets it; retrain within range or use a board with a wider {name} range"
        found.append(f"node {node!r}: oscillator {i}: [{name}] {values[i]:.4g}{unit} is outside the board's "
                     f"[{low:.4g}, {high:.4g}]{unit} — {fix}")
    return found
