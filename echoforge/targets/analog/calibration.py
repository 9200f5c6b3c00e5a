"""Calibrating an analog board through the runtime: ring-down and stepped-sine sweep, fitted per oscillator.

Everything goes through the HamiltonianCore contract (a `DeviceCore` on a served board, or an
`AnalogTwin` in process): load a *calibration bank* — every oscillator of the board tuned to one
reference frequency — then forward passes from rest whose forcing drives the oscillators (each its
own forcing lane, all at once: the board's oscillators are uncoupled) and whose positions and end
state come back. Per oscillator, with Δt the sample period, θ = ωΔt and κ = γΔt = θ/Q:

1. **Ring-down.** A sine burst at the programmed frequency, then free decay. The decay is exactly
   ϕ̂_k = r^k (A cos θₑk + B sin θₑk) + c for the board's damped leapfrog (twin.py), with r = e^{−κ/2}
   and cos θₑ = cosh(κ/2) − θ²/2 (the step's trace over twice its determinant's root); least squares
   over (θₑ, r), the rest linear, seeded by linear prediction on the differenced samples.
2. **Sweep.** Sines at 2·SWEEP_POINTS + 1 frequencies across ±SWEEP_WIDTHS bandwidths (θₑ/Q) of the
   ring-down's resonance, one batch lane each. Every run (the ring-down's included) is then fitted
   as a whole with the board's model: ϕ̂ = K·(h_{θ,κ} ∗ u) + c, h the damped leapfrog's response to the
   DAC volts u at unit input gain (an exact second-order IIR filter), K and c linear — transients
   and all, so no run has to reach steady state. This gives θ, κ (so ω and Q), K = G·g_in/X₀ and c.
3. **Readout gain.** The forward pass also returns the state registers — the oscillator's position
   before the readout chain. Regressing the last position read (ϕ̂ = G·x/X₀ + c) on them over all
   runs separates the readout gain G from the input gain g_in = K·X₀/G.

Measured values are stored with the values the board was programmed to (calibration_file.py), so
the mapping divides the measured/programmed ratios out. Calibrate a board served *without* a
calibration: the host assumes the board reads out with its programmed gains.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np
from scipy import optimize, signal
from tqdm import tqdm

from echoforge.models.core import OscillatorParams

from .board import Board
from .calibration_file import Calibration
from .mapping import map_bank

REFERENCE_PHASE = 0.3    # rad per sample the calibration bank is tuned to (≈ 21 samples a cycle)
BURST_CYCLES = 10        # ring-down drive
DRIVE_POSITION = 1.0     # static response of the ring-down's drive, in HRU positions (forcing/a)
PEAK_POSITION = 10.0     # largest response the sweep aims at
MIN_DRIVE_LSBS = 16      # the sweep's drive spans at least this many DAC steps
SWEEP_POINTS = 5         # sweep frequencies each side of the resonance
SWEEP_WIDTHS = 3.0       # half-span of the sweep, in bandwidths θ/Q
REGISTER_LANES = 16      # resonant runs ending in states spread over a cycle (readout gain)
MIN_RUN, MAX_RUN = 2000, 16000  # samples per run (the sweep's and the ring-down's decay)
FIT_STRIDE = 4           # the model fit compares every FIT_STRIDE-th sample (the filter runs on all)


@dataclass(frozen=True)
class Run:
    """One forward pass: DAC volts (B, L, P) as the board applies them, positions read (B, L, P) and
    the end state registers ϕ (B, P)."""

    volts: np.ndarray
    positions: np.ndarray
    end_phi: np.ndarray

    def lanes(self, index: slice) -> Run:
        return Run(self.volts[index], self.positions[index], self.end_phi[index])


@dataclass(frozen=True)
class Fit:
    """Per-oscillator fitted values (P,) in board units, and the quality of the fit."""

    omega: np.ndarray          # rad/s
    quality: np.ndarray
    input_gain: np.ndarray
    readout_gain: np.ndarray
    offset_v: np.ndarray
    ringdown_omega: np.ndarray
    ringdown_quality: np.ndarray
    residual_rms: np.ndarray   # of the model fit, HRU position units


class Bench:
    """A board under calibration: the core it is reached through and the calibration bank on it."""

    def __init__(self, core, board: Board):
        self.core, self.board = core, board
        size = board.oscillators
        phase = reference_phase(board)
        # the stiffest bank the format holds: the static response per DAC step, 1/a of it, is smallest,
        # so a resonant drive can be many DAC steps and still stay in range
        stiffness = core.config.param("a").max_value / 2
        core.load(OscillatorParams("linear", np.full(size, stiffness), np.full(size, phase / math.sqrt(stiffness))))
        self.params = core.params  # as quantised by the core: what the board maps
        self.mapping = map_bank(board, self.params, core.config.state.max_value)
        if self.mapping.findings:
            raise ValueError(f"cannot calibrate board {board.id!r}: {self.mapping.findings[0]}")
        self.phase = self.params.delta * np.sqrt(self.params.a)  # programmed θ per oscillator

    def run(self, forcing: np.ndarray) -> Run:
        """One forward pass from rest; forcing (B, L, P) in HRU units, snapped to the state grid."""
        state = self.core.config.state
        forcing = state.dequantize(state.quantize(forcing)[0])
        zeros = np.zeros((forcing.shape[0], forcing.shape[2]))
        positions, end_phi, _ = self.core.forward(forcing, zeros, zeros)
        dac = self.board.dac
        volts = dac.volts(dac.codes(forcing * self.mapping.forcing_scale_v)[0])
        return Run(volts, np.asarray(positions, dtype=np.float64), np.asarray(end_phi, dtype=np.float64))

    def drive(self, amplitude: np.ndarray) -> np.ndarray:
        """Forcing (HRU units) whose static response is ``amplitude`` positions: f = a·x."""
        return amplitude * self.params.a

    def dac_step_response(self) -> np.ndarray:
        """The static response (HRU positions) to one DAC step, per oscillator."""
        return self.board.dac.lsb_v / self.mapping.forcing_scale_v / self.params.a


def reference_phase(board: Board) -> float:
    """REFERENCE_PHASE, moved into the board's frequency range if it falls outside."""
    low, high = (2 * math.pi * f * board.dt for f in board.natural_frequency_hz)
    return float(min(max(REFERENCE_PHASE, low * 1.01), high / 1.01))


def _run_length(phase: np.ndarray, quality: np.ndarray, widths: float) -> int:
    """Samples to see `widths` amplitude decay times 2Q/θ of the slowest oscillator, within bounds."""
    return int(np.clip(np.max(widths * 2 * quality / phase), MIN_RUN, MAX_RUN))


def ring_down(bench: Bench) -> tuple[Run, int]:
    """A BURST_CYCLES sine burst at the programmed frequency, then free decay; (run, decay start)."""
    phase = bench.phase
    burst = int(np.ceil(BURST_CYCLES * 2 * np.pi / phase.min()))
    decay = _run_length(phase, np.full_like(phase, bench.board.quality_factor), 2.0)
    k = np.arange(burst + decay)[:, None]
    amplitude = DRIVE_POSITION * np.sin(phase * k) * (k < BURST_CYCLES * 2 * np.pi / phase)
    return bench.run(bench.drive(amplitude)[None]), burst


def fit_ring_down(positions: np.ndarray, quality_guess: float) -> tuple[float, float]:
    """(θₑ, r) of a free decay ϕ̂_k = r^k(A cos θₑk + B sin θₑk) + c, positions (L,): least squares over
    (θₑ, log −log r), A, B, c linear; seeded by the spectrum's peak and the board file's Q."""
    centred = positions - positions.mean()
    spectrum = np.abs(np.fft.rfft(centred * np.hanning(len(centred)), 8 * len(centred)))
    theta = 2 * np.pi * np.argmax(spectrum[1:]) / (8 * len(centred)) + 2 * np.pi / (8 * len(centred))
    start = np.array([theta, math.log(theta / (2 * quality_guess))])
    k = np.arange(0, len(positions), FIT_STRIDE)
    data = positions[::FIT_STRIDE]

    def basis(p):
        envelope = np.exp(-math.exp(p[1]) * k)
        return np.stack([envelope * np.cos(p[0] * k), envelope * np.sin(p[0] * k), np.ones_like(envelope)], 1)

    fitted = optimize.least_squares(lambda p: _projected_residual(basis(p), data), start, x_scale="jac")
    return fitted.x[0], math.exp(-math.exp(fitted.x[1]))


def _projected_residual(basis: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Residual of the best linear combination of basis columns (variable projection)."""
    coefficients, *_ = np.linalg.lstsq(basis, data, rcond=None)
    return basis @ coefficients - data


def physical_from_eigen(eigen_phase, radius):
    """(θ = ωΔt, κ = γΔt) of the damped leapfrog whose free decay has phase θₑ and ratio r per step."""
    kappa = -2 * np.log(radius)
    return np.sqrt(2 * (np.cosh(kappa / 2) - np.cos(eigen_phase))), kappa


def response(theta: float, kappa: float, volts: np.ndarray) -> np.ndarray:
    """Positions (volts at unit input gain) of the board's damped leapfrog from rest under DAC volts
    (..., L): per sample x_m = x + w/2, w ← s·w, w ← w − θ²(x_m − u), w ← s·w, x = x_m + w/2, with
    w = vΔt and s = e^{−κ/2} (twin.py) — a linear recurrence, run as a second-order IIR filter."""
    s = math.exp(-kappa / 2)
    drift = np.array([[1.0, 0.5], [0.0, 1.0]])
    friction = np.diag([1.0, s])
    kick = np.array([[1.0, 0.0], [-theta ** 2, 1.0]])
    step = drift @ friction @ kick @ friction @ drift
    gain = drift @ friction @ np.array([0.0, theta ** 2])  # where u enters: the kick, then friction, drift
    # positions[k] = x after consuming u_k: state_{k+1} = step·state_k + gain·u_k, read its x
    numerator, denominator = signal.ss2tf(step, gain[:, None], step[:1], gain[None, :1])
    return signal.lfilter(numerator[0], denominator, volts, axis=-1)


def sweep(bench: Bench, eigen_phase: np.ndarray, quality: np.ndarray) -> Run:
    """Sines across ±SWEEP_WIDTHS bandwidths of each oscillator's resonance, one batch lane each, at an
    amplitude whose resonant response stays near PEAK_POSITION; then REGISTER_LANES lanes at the
    resonance with their phases spread over a cycle, so that the runs end in large states of every
    sign (what the readout-gain regression needs)."""
    length = _run_length(eigen_phase, quality, 3.0)
    offsets = np.linspace(-SWEEP_WIDTHS, SWEEP_WIDTHS, 2 * SWEEP_POINTS + 1)[:, None]
    frequencies = np.concatenate([eigen_phase * (1 + offsets / quality),
                                  np.repeat(eigen_phase[None], REGISTER_LANES, axis=0)])     # (F, P)
    shifts = np.concatenate([np.zeros(len(offsets)), np.arange(REGISTER_LANES) * 2 * np.pi / REGISTER_LANES])
    # static amplitude: resonance reaches PEAK_POSITION over the run (build-up π per cycle, at most Q),
    # but never below MIN_DRIVE_LSBS DAC steps; then the drive stops once the resonance would pass it
    static = np.maximum(PEAK_POSITION / np.minimum(quality, length * eigen_phase / 2),
                        MIN_DRIVE_LSBS * bench.dac_step_response())
    driven = np.minimum(length, 2 * PEAK_POSITION / (static * eigen_phase))                  # (P,)
    k = np.arange(length)[None, :, None]
    waves = np.sin(frequencies[:, None, :] * k + shifts[:, None, None]) * (k >= length - driven)
    return bench.run(bench.drive(static * waves))


def fit_model(runs: list[Run], eigen_phase: np.ndarray, radius: np.ndarray, progress: bool = False):
    """Per oscillator: (θ, κ, K, c) of ϕ̂ = K·(h_{θ,κ} ∗ u) + c over every run, and the rms residual."""
    theta0, kappa0 = physical_from_eigen(eigen_phase, radius)
    results = np.empty((4, len(theta0)))
    rms = np.empty(len(theta0))
    for p in tqdm(range(len(theta0)), desc="model fit", unit="osc", disable=not progress, file=sys.stderr):
        start = np.array([theta0[p], math.log(max(kappa0[p], 1e-12))])
        results[:, p], rms[p] = _fit_oscillator([run.volts[..., p] for run in runs],
                                                [run.positions[..., p] for run in runs], start)
    return results, rms


def _fit_oscillator(volts: list[np.ndarray], positions: list[np.ndarray], start: np.ndarray):
    """One oscillator's (θ, κ, K, c) and rms residual, from (θ, log κ) = start."""
    data = np.concatenate([read[:, ::FIT_STRIDE].ravel() for read in positions])

    def basis(x):
        z = np.concatenate([response(x[0], math.exp(x[1]), u)[:, ::FIT_STRIDE].ravel() for u in volts])
        return np.stack([z, np.ones_like(z)], axis=1)

    fitted = optimize.least_squares(lambda x: _projected_residual(basis(x), data), start, x_scale="jac")
    (gain, offset), *_ = np.linalg.lstsq(basis(fitted.x), data, rcond=None)
    return (fitted.x[0], math.exp(fitted.x[1]), gain, offset), math.sqrt(np.mean(fitted.fun ** 2))


def readout_ratio(runs: list[Run]) -> np.ndarray:
    """G per oscillator: slope of the last position read against the end state register, over all runs."""
    last = np.concatenate([run.positions[:, -1] for run in runs])    # (runs·B, P)
    state = np.concatenate([run.end_phi for run in runs])
    slopes = np.empty(last.shape[1])
    for p in range(last.shape[1]):
        design = np.stack([state[:, p], np.ones_like(state[:, p])], axis=1)
        (slopes[p], _), *_ = np.linalg.lstsq(design, last[:, p], rcond=None)
    return slopes


def measure(core, board: Board, progress: bool = False) -> tuple[Fit, Bench]:
    """Ring-down, sweep and fits on every oscillator of ``board`` through ``core``."""
    say = _stderr if progress else (lambda message: None)
    bench = Bench(core, board)
    say(f"ring-down: {board.oscillators} oscillators at {bench.phase.mean() / (2 * np.pi * board.dt):.4g} Hz")
    decay_run, start = ring_down(bench)
    guess = min(board.quality_factor, 1e6)
    fits = [fit_ring_down(decay_run.positions[0, start:, p], guess)
            for p in tqdm(range(board.oscillators), desc="ring-down fit", unit="osc", disable=not progress,
                          file=sys.stderr)]
    eigen_phase, radius = (np.array(values) for values in zip(*fits))
    theta_rd, kappa_rd = physical_from_eigen(eigen_phase, radius)
    quality_rd = theta_rd / np.maximum(kappa_rd, 1e-12)
    say(f"sweep: {2 * SWEEP_POINTS + 1} frequencies × ±{SWEEP_WIDTHS:g} bandwidths")
    sweep_run = sweep(bench, eigen_phase, np.clip(quality_rd, 1.0, None))
    sweep_lanes = sweep_run.lanes(slice(None, -REGISTER_LANES))
    (theta, kappa, gain, offset), rms = fit_model([decay_run, sweep_lanes], eigen_phase, radius, progress)
    ratio = readout_ratio([decay_run, sweep_run])
    programmed = bench.mapping.programmed
    x0 = bench.mapping.position_scale_v
    fit = Fit(omega=theta / board.dt, quality=theta / kappa,
              input_gain=gain * x0 / ratio, readout_gain=ratio * programmed["readout_gain"],
              offset_v=offset * programmed["readout_gain"] * x0,
              ringdown_omega=theta_rd / board.dt, ringdown_quality=quality_rd, residual_rms=rms)
    return fit, bench


def calibrate(core, board: Board, progress: bool = False) -> tuple[Calibration, Fit]:
    """The calibration file's contents for ``board`` measured through ``core``, and the fit behind it."""
    fit, bench = measure(core, board, progress)
    programmed = {name: bench.mapping.programmed[name].copy() for name in ("frequency_hz", "input_gain",
                                                                           "readout_gain")}
    measured = {"frequency_hz": fit.omega / (2 * np.pi), "q": fit.quality, "input_gain": fit.input_gain,
                "readout_gain": fit.readout_gain, "offset_v": fit.offset_v}
    bad = [p for p in range(board.oscillators) if not all(np.isfinite(v[p]) and (n == "offset_v" or v[p] > 0)
                                                          for n, v in measured.items())]
    if bad:
        raise ValueError(f"board {board.id!r}: oscillator(s) {bad} gave no usable fit (no resonance near "
                         f"{bench.phase[bad[0]] / (2 * np.pi * board.dt):.4g} Hz?) — check the board and its wiring")
    return Calibration(board.id, programmed, measured), fit


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def describe(calibration: Calibration, fit: Fit) -> str:
    """A short report: the spread of what was measured, and how well the model fits."""
    def spread(name):
        ratio = calibration.correction(name)
        return f"{(ratio.min() - 1) * 100:+.2f} % … {(ratio.max() - 1) * 100:+.2f} %"

    offsets = calibration.measured["offset_v"]
    quality = calibration.measured["q"]
    return "\n".join([
        f"board {calibration.board_id}: {calibration.oscillators} oscillators calibrated",
        f"  frequency, measured/programmed: {spread('frequency_hz')}",
        f"  input gain, measured/programmed: {spread('input_gain')}",
        f"  readout gain, measured/programmed: {spread('readout_gain')}",
        f"  Q: {quality.min():.4g} … {quality.max():.4g} (ring-down alone: {fit.ringdown_quality.min():.4g} … "
        f"{fit.ringdown_quality.max():.4g})",
        f"  readout offset: {offsets.min() * 1e3:+.4f} … {offsets.max() * 1e3:+.4f} mV",
        f"  model fit rms residual: ≤ {fit.residual_rms.max():.3g} (HRU position units)"])
