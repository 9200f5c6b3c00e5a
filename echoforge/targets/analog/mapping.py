"""The mapping pass: a linear HRU bank's parameters → a board's physical quantities and tuning codes.

One HRU step is one sample of the board (Δt = 1/sample_rate). With position scale X₀,ᵢ (tank volts per
HRU position unit) and forcing scale s_u,ᵢ (DAC volts per HRU forcing unit), the leapfrog of oscillator
i (V = a m²/2 − m f, step δ) is the sampled physical oscillator

    ẍ = −ωᵢ² x − γᵢ ẋ + ωᵢ² g_in,i u(t),    ωᵢ = √aᵢ·δᵢ/Δt,    g_in,i = X₀,ᵢ/(aᵢ s_u,ᵢ),

with readout y = g_out·x, g_out,i = adc.full_scale_v/(X₀,ᵢ·state.max_value) (the state word's range meets
the ADC's), and the HRU momentum π = ẋΔt/(X₀δ) read on a quadrature channel y_q = g_out·ẋ/ω.

The forcing's range: a forcing f held still moves the oscillator to ϕ = f/a, so an oscillator whose
state stays within the word's range ±S needs |f| ≲ a·S. The DAC's full scale is put at
min(1, FORCING_HEADROOM·aᵢ)·S (s_u,ᵢ = dac.full_scale_v / that): the word's range for stiff
oscillators, a few times the static range for soft ones, whose forcing is small beside the word — so
the DAC's steps are fine where the forcing is (a 12-bit DAC over the word's range quantises a soft
oscillator's forcing to a few steps). A forcing beyond is clipped by the DAC and counted ("force").

The state scale is free: x = X₀ϕ for any X₀ > 0 gives the same positions read (input gain ∝ X₀,
readout gain ∝ 1/X₀, the converters' ranges still meeting the word's), so each oscillator gets the X₀
closest to 1 V that puts both gains inside the board's ranges with a margin for the mismatch
(``scale_margin``). Only the product g_in·g_out = adc.full_scale_v/(aᵢ·s_u,ᵢ·S) is fixed by the bank:
an oscillator whose product no X₀ fits keeps the readout gain in range and its input gain is a finding.
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

POSITION_SCALE_V = 1.0  # X₀ wherever the board's gain ranges allow it: tank volts per HRU position unit
MARGIN_SIGMAS = 4.0     # the gains stay this many mismatch σ inside the board's ranges when X₀ allows
FORCING_HEADROOM = 4.0  # the DAC spans this many times a soft oscillator's static forcing range a·S
QUANTITIES = ("frequency_hz", "input_gain", "readout_gain")
BOARD_RANGES = {"frequency_hz": "natural_frequency_hz", "input_gain": "input_gain", "readout_gain": "readout_gain"}


@dataclass(frozen=True)
class BankMapping:
    """One bank on oscillators first … first + P − 1 of a board: per-oscillator arrays (P,)."""

    node: str
    first: int
    dt_s: float
    forcing_scale_v: np.ndarray       # s_u per oscillator: DAC volts per HRU forcing unit
    position_scale_v: np.ndarray      # X₀ per oscillator: tank volts per HRU position unit
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
                         "forcing_scale_v": _num(self.forcing_scale_v[i]),
                         "position_scale_v": _num(self.position_scale_v[i]), "offset_v": _num(self.offset_v[i])})
        return {"node": self.node, "first_oscillator": self.first, "oscillators": self.size,
                "dt_s": self.dt_s, "mapping": rows}


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


def targets(board: Board, params: OscillatorParams, state_max: float) -> tuple[dict[str, np.ndarray], np.ndarray,
                                                                               np.ndarray]:
    """The physical values an HRU bank asks for, s_u and X₀ per oscillator (module docstring)."""
    forcing_range = state_max * np.clip(FORCING_HEADROOM * params.a, 1e-12, 1.0)
    forcing_scale = board.dac.full_scale_v / forcing_range
    with np.errstate(divide="ignore"):
        input_per_volt = 1 / (params.a * forcing_scale)             # g_in / X₀
    readout_volts = board.adc.full_scale_v / state_max              # g_out · X₀
    scale = position_scale(board, input_per_volt, readout_volts)
    wanted = {"frequency_hz": np.sqrt(np.maximum(params.a, 0)) * params.delta / board.dt / (2 * np.pi),
              "input_gain": scale * input_per_volt, "readout_gain": readout_volts / scale}
    return wanted, forcing_scale, scale


def position_scale(board: Board, input_per_volt: np.ndarray, readout_volts: float) -> np.ndarray:
    """X₀ per oscillator: closest to POSITION_SCALE_V within the X₀ that keep g_in = X₀·input_per_volt and
    g_out = readout_volts/X₀ inside the board's ranges — narrowed by the margin where that leaves some —
    else (no X₀ fits) the readout gain's range alone."""
    (in_low, in_high), (out_low, out_high) = board.input_gain, board.readout_gain
    with np.errstate(divide="ignore", invalid="ignore"):
        low = np.maximum(in_low / input_per_volt, readout_volts / out_high)
        high = np.minimum(in_high / input_per_volt, readout_volts / out_low)
    fits = (low <= high) & np.isfinite(input_per_volt) & (input_per_volt > 0)
    margin = scale_margin(board)
    narrowed = fits & (low * margin**2 <= high)
    low = np.where(narrowed, low * margin, np.where(fits, low, readout_volts / out_high))
    high = np.where(narrowed, high / margin, np.where(fits, high, readout_volts / out_low))
    return np.clip(POSITION_SCALE_V, low, high)


def scale_margin(board: Board) -> float:
    """How far inside its range a gain is put, as a factor: MARGIN_SIGMAS mismatch σ (the calibration
    divides the targets by corrections of that size)."""
    return math.exp(MARGIN_SIGMAS * board.mismatch_sigma)


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
    target, forcing_scale, scale = targets(board, params, state_max)
    codes, programmed, expected, clipped = {}, {}, {}, {}
    for name in QUANTITIES:
        low, high = getattr(board, BOARD_RANGES[name])
        correction = np.ones(size)
        if calibration is not None:
            correction[:span.stop - first] = calibration.correction(name)[span]
        codes[name], clipped[name] = _log_codes(target[name] / correction, low, high, board.tuning_bits)
        programmed[name] = code_value(codes[name], low, high, board.tuning_bits)
        expected[name] = programmed[name] * correction
        findings += _range_findings(node, name, target, clipped[name], (low, high), params, board)
    offset = np.zeros(size)
    if calibration is not None:
        offset[:span.stop - first] = calibration.measured["offset_v"][span]
    return BankMapping(node, first, board.dt, forcing_scale, scale, target, codes, programmed,
                       expected, offset, clipped, tuple(findings))


def _range_findings(node, name, target, clipped, limits, params: OscillatorParams, board: Board) -> list[str]:
    low, high = limits
    values = target[name]
    unit = " Hz" if name == "frequency_hz" else ""
    found = []
    for i in np.flatnonzero(clipped):
        if name == "frequency_hz":
            scale = (2 * np.pi * board.dt / params.delta[i]) ** 2
            fix = (f"keep a in [{low ** 2 * scale:.4g}, {high ** 2 * scale:.4g}] at δ = {params.delta[i]:.4g} "
                   f"(a = {params.a[i]:.4g}), or use a board whose range covers it")
        else:
            fix = _gain_fix(board, target["input_gain"][i] * target["readout_gain"][i])
        found.append(f"node {node!r}: oscillator {i}: [{name}] {values[i]:.4g}{unit} is outside the board's "
                     f"[{low:.4g}, {high:.4g}]{unit} — {fix}")
    return found


def _gain_fix(board: Board, product: float) -> str:
    """What to do about an input gain out of range: the bank fixes g_in·g_out, which the board's ranges bound."""
    low, high = (board.input_gain[k] * board.readout_gain[k] for k in (0, 1))
    if low <= product <= high:
        return "within reach, but the calibrated correction moves it out; use a board with wider gain ranges"
    return (f"no state scale fits it: the bank fixes input × readout gain at {product:.4g}, the board reaches "
            f"[{low:.4g}, {high:.4g}]; use a board with wider gain ranges")
