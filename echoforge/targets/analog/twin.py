"""The analog twin: a Hamiltonian core (DESIGN §1) that runs a board's physics (physics.py).

``AnalogTwin(board, config, fabrication_seed=…, noise_seed=…)`` is an EmulatorCore — the float and
integer APIs, and the board simulator's streams — whose two bank passes run the board instead of the
integer leapfrog. ``AnalogCore`` is the half that is not physics, shared with the SCPI instrument
driver (instruments.py), which runs the same passes through PyVISA:

Loading a linear bank maps it onto the board (mapping.py: tuning codes for ωᵢ and the gains, with the
calibration when one is given; values outside the board's ranges are clipped and counted as "param"
saturation, as a tuning DAC would). A forward converts the forcing codes to DAC codes (s_u·f,
quantised and clipped by the DAC: counted as "force" saturation), runs the board, and converts the ADC
codes back with what the mapping expects (calibrated gain and offset): ϕ̂ = (y_x − offset̂)/(ĝ_out X₀),
π̂ = y_q·ω_prog Δt/(ĝ_out X₀ δ). Positions returned are Q_S(ϕ̂); ADC clipping counts as "state".

The echo runs each echo of the ±ε pair as its own run (physics.py) from the forward's end state with
the velocity flipped; the nudge codes q enter as velocity kicks q·2^−S·X₀δ/Δt before each step. Its
observables are formed from the readouts, as on-board logic or a host behind a digitizer would
(``observables``): m̂ = ϕ̂ − (δ/2)π̂ after each step, π̂ before the step = the previous readout plus
the nudge, then the emulator's accumulators in its formats (MM, PP, FM and the per-step forcing
observable, kernels.py), so that EmulatorCore's host half turns them into gradients unchanged.

Echo gain (negative resistance), for the dissipation-compensated echo: ``set_echo_gain(rate,
compensation_rate)``. During the echo the board adds gain gᵢ = ``rate`` (1/s): net damping γᵢ − gᵢ,
so g = 2γ̂ (cancel the loss, then as much again) makes the echo retrace the damped forward. With
``compensation_rate`` rᵢ (κ̂ᵢ = rᵢΔt per step; j = 0, 1, … the echo step from its start) the nudge
before step j is scaled by e^{+κ̂ j} and the observables weighted by e^{−κ̂ t}: t = j + ½ for the mid
position, j for the momentum entering the step, j + 1 for the one leaving it (dissipation.py).
``echo_compensation=True`` does this on every load, on a board that can apply gain: γ̂ᵢ = ω̂ᵢ/Q̂ᵢ,
the expected frequency over the calibrated Q (the board's nominal Q without a calibration); an
oscillator whose 2γ̂ᵢ exceeds the board's ``echo_gain.max_rate_per_s`` keeps the plain echo (logged).

Continuity. A board's state is continuous; the protocol's registers hold codes. A pass that continues
the state the twin left (the next chunk of a stream), or an echo that starts from the forward's end
codes, continues from the exact physical state; any other start state is taken from its codes. With
the per-run noise of physics.py, results do not depend on how a sequence is chunked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from echoforge.targets.emulator.core import EmulatorCore
from echoforge.targets.emulator.fixed import ACC_LIMIT, FormatConfig
from echoforge.targets.emulator.kernels import ACCUMULATOR, FM, FORCE, INPUT_SATURATED, MM, NUDGE_SATURATED, PP, STATE

from .board import Board
from .calibration_file import Calibration
from .mapping import BankMapping, map_bank
from .physics import Oscillators

REVERSE = slice(None, None, -1)

logger = logging.getLogger(__name__)


@dataclass
class _Carry:
    """What a pass leaves for the next one: the codes it returned (their identity marks a continuing
    stream), the momentum as last read out (the echo's "π before" of its next step) and echo steps done."""

    phi: np.ndarray
    pi: np.ndarray
    pi_read: np.ndarray
    steps: int = 0


class AnalogCore(EmulatorCore):
    """The host half of an analog board behind the HamiltonianCore contract (module docstring);
    subclasses say how the board runs: ``_program``, ``_begin``, ``_advance``, ``_end_codes``."""

    def __init__(self, board: Board, config: FormatConfig | None = None, *,
                 calibration: Calibration | None = None, first_oscillator: int = 0, echo_compensation: bool = False):
        super().__init__(config)
        if calibration is not None and calibration.board_id != board.id:
            raise ValueError(f"{calibration.source}: board_id: measured on board {calibration.board_id!r}, "
                             f"not {board.id!r} — calibrate this board")
        self.board = board
        self.calibration = calibration
        self.first_oscillator = first_oscillator
        self.echo_compensation = echo_compensation and board.echo_gain.available
        self.mapping: BankMapping | None = None
        self.compensation_rate: np.ndarray | None = None
        self._uncompensated: list[int] = []  # oscillators last warned about
        self._carry: _Carry | None = None
        self._forward_end: _Carry | None = None

    # ---- loading and the echo gain -----------------------------------------------------------------

    def load(self, params) -> None:
        """Quantise the parameters (the protocol's codes), map them onto the board, program it."""
        if params.kind != "linear":
            raise ValueError(f"the analog board {self.board.id!r} runs linear HRU banks, not {params.kind}")
        super().load(params)
        mapping = map_bank(self.board, self.params, self.config.state.max_value, first=self.first_oscillator,
                           calibration=self.calibration)
        if self.first_oscillator + self.params.size > self.board.oscillators:
            raise ValueError(mapping.findings[0])
        self._param_saturation += int(sum(clipped.sum() for clipped in mapping.clipped.values()))
        self.mapping = mapping
        self._program(mapping)
        self.compensation_rate = None
        self._carry = self._forward_end = None
        if self.echo_compensation:
            self._compensate()

    def set_echo_gain(self, rate, compensation_rate=None) -> None:
        """Negative resistance in the echo (module docstring): gain ``rate`` gᵢ (1/s, scalar or (P,)),
        and optionally the compensated estimator's rate rᵢ (1/s). ``rate=None`` switches both off."""
        self._set_gain(rate)
        self.compensation_rate = (None if rate is None or compensation_rate is None else
                                  np.broadcast_to(np.asarray(compensation_rate, np.float64), self.params.a.shape).copy())

    def loss_rate(self) -> np.ndarray:
        """γ̂ (1/s) of the loaded bank's oscillators: expected ω over the calibrated Q, else the board's Q."""
        span = slice(self.first_oscillator, self.first_oscillator + self.params.size)
        quality = self.board.quality_factor if self.calibration is None else self.calibration.measured["q"][span]
        return self.mapping.expected_omega / quality

    def _compensate(self) -> None:
        """The compensated echo (module docstring) where the board's gain reaches 2γ̂, the plain one elsewhere."""
        loss = self.loss_rate()
        within = 2 * loss <= self.board.echo_gain.max_rate_per_s
        uncompensated = (self.first_oscillator + np.flatnonzero(~within)).tolist()
        if uncompensated and uncompensated != self._uncompensated:  # once, not at every training step
            logger.warning("board %r: oscillators %s need echo gain 2γ̂ up to %.4g/s, beyond the board's %.4g/s: "
                           "their echo is not compensated", self.board.id, uncompensated, 2 * loss.max(),
                           self.board.echo_gain.max_rate_per_s)
        self._uncompensated = uncompensated
        loss = np.where(within, loss, 0.0)
        self.set_echo_gain(2 * loss, loss)

    # ---- the bank passes (EmulatorCore's array contract) -------------------------------------------

    def _bank_forward(self, forcing, phi, pi, positions, stream_counts):
        codes = self._codes(forcing, self._conversion()[0], stream_counts, INPUT_SATURATED)
        counters = np.zeros(4, dtype=np.int64)
        dac, counters[FORCE] = self._dac_codes(codes)
        carry = self._carry
        if carry is None or carry.phi is not phi or carry.pi is not pi:
            self._begin(phi[:, None], pi[:, None], from_forward_end=False)
        adc_x, adc_q, clipped = self._advance(dac[:, :, None], None, echo=False)
        phi_read, pi_read = self._readout(adc_x, adc_q)
        position_codes, saturated = self.config.state.quantize(phi_read[:, :, 0])
        _store(positions, np.moveaxis(position_codes, 0, 1), self.config.state.lsb)
        end_phi, end_pi, clamped = self._end_codes(phi_read[-1, :, 0], pi_read[-1, :, 0])
        counters[STATE] += clipped + saturated + clamped
        self._carry = self._forward_end = _Carry(end_phi, end_pi, pi_read[-1, :, 0])
        return end_phi, end_pi, counters

    def _bank_echo(self, forcing, nudges, phi, pi, acc, forcing_obs, counters, conversion, obs_scale, stream_counts):
        f = self._codes(forcing, conversion[0], stream_counts, INPUT_SATURATED)
        q = self._codes(nudges, conversion[1], stream_counts, NUDGE_SATURATED)
        steps = f.shape[1]
        carry = self._echo_start(phi, pi)
        dac, dac_clipped = self._dac_codes(f[:, REVERSE])
        counters[FORCE] += dac_clipped
        j = carry.steps + np.arange(steps)  # echo step j consumes forward index start + K − 1 − j
        nudge = q[:, REVERSE] * self.config.state.lsb * self._nudge_scale(j)   # (B, K, P), HRU momentum
        pair_nudge = np.stack([nudge, -nudge], axis=2)                          # (B, K, 2, P)
        adc_x, adc_q, clipped = self._advance(np.repeat(dac[:, :, None], 2, axis=2),
                                              pair_nudge * self._velocity_per_momentum(), echo=True)
        phi_read, pi_read = self._readout(adc_x, adc_q)                         # (K, B, 2, P)
        pi_before = np.concatenate([carry.pi_read[None], pi_read[:-1]]) + np.moveaxis(pair_nudge, 1, 0)
        terms, saturated = observables(self.config, self.params.delta, f[:, REVERSE], phi_read, pi_read,
                                       pi_before, self._weights(j))
        for row, name in ((MM, "mm"), (PP, "pp"), (FM, "fm")):
            total = acc[:, row] + terms[name]
            acc[:, row] = np.clip(total, -ACC_LIMIT, ACC_LIMIT)
            counters[ACCUMULATOR] += int(np.count_nonzero(acc[:, row] != total))
        _store(forcing_obs, terms["forcing"][:, REVERSE], obs_scale)
        end_phi, end_pi, clamped = self._end_codes(phi_read[-1], pi_read[-1])
        counters[STATE] += clipped + saturated + clamped
        phi[...], pi[...] = end_phi, end_pi
        self._carry = _Carry(phi, pi, pi_read[-1], carry.steps + steps)

    def _echo_start(self, phi, pi) -> _Carry:
        """The pair continues, starts from the forward's end (velocity flipped), or starts from codes."""
        carry = self._carry
        if carry is not None and carry.phi is phi and carry.pi is pi:
            return carry
        end = self._forward_end
        from_end = end is not None and end.phi.shape == phi[:, 0].shape and all(
            np.array_equal(phi[:, e], end.phi) and np.array_equal(pi[:, e], -end.pi) for e in (0, 1))
        self._begin(phi, pi, from_forward_end=from_end)
        pi_read = (np.repeat(-end.pi_read[:, None], 2, axis=1) if from_end
                   else self.config.state.dequantize(pi))
        return _Carry(phi, pi, pi_read)

    # ---- conversions -------------------------------------------------------------------------------

    def _codes(self, stream, gain, stream_counts, slot) -> np.ndarray:
        """A stream as state codes; float streams are quantised (Q of stream·gain·2^−S), counted."""
        if stream.dtype.kind != "f":
            return np.asarray(stream, dtype=np.int64)
        codes, saturated = self.config.state.quantize(stream, prescale=gain * self.config.state.lsb)
        stream_counts[slot] += saturated
        return codes

    def _dac_codes(self, codes) -> tuple[np.ndarray, int]:
        """DAC codes of forcing codes: s_u·f volts, quantised and clipped by the DAC."""
        return self.board.dac.codes(self.config.state.dequantize(codes) * self.mapping.forcing_scale_v)

    def _velocity_per_momentum(self) -> np.ndarray:
        """ẋ per unit of HRU momentum: X₀δ/Δt."""
        return self.mapping.position_scale_v * self.params.delta / self.board.dt

    def _readout(self, adc_x, adc_q):
        return convert_readout(self.mapping, self.params.delta, adc_x, adc_q, self.board.adc)

    def _nudge_scale(self, j: np.ndarray) -> np.ndarray:
        """(K, P): e^{+κ̂ j} under compensation, else ones."""
        if self.compensation_rate is None:
            return np.ones((len(j), self.params.size))
        return np.exp(np.outer(j, self.compensation_rate * self.board.dt))

    def _weights(self, j: np.ndarray):
        """(start, mid, end) observable weights (K, P) under compensation, else None."""
        if self.compensation_rate is None:
            return None
        kappa = self.compensation_rate * self.board.dt
        return tuple(np.exp(-np.outer(j + t, kappa)) for t in (0.0, 0.5, 1.0))

    # ---- the board (subclasses) --------------------------------------------------------------------

    def _program(self, mapping: BankMapping) -> None:
        raise NotImplementedError

    def _set_gain(self, rate) -> None:
        raise NotImplementedError

    def _begin(self, phi, pi, from_forward_end: bool) -> None:
        """Start E runs (phi, pi codes (B, E, P)): from the forward's end state with the velocity
        flipped, or from the codes."""
        raise NotImplementedError

    def _advance(self, dac, kick, echo: bool):
        """Run on: DAC codes (B, K, E, P), velocity kicks or None → ADC codes (K, B, E, P) ×2, clipped."""
        raise NotImplementedError

    def _end_codes(self, phi_read, pi_read):
        """The state registers' codes after a pass, and how many clamped."""
        raise NotImplementedError


class AnalogTwin(AnalogCore):
    """The board simulated in process (physics.Oscillators): the analog twin.

    ``fabrication_seed`` fixes this board instance's deviations, ``noise_seed`` its noise; same seeds
    and same calls give the same bits. ``first_oscillator`` places the bank on the board; ``calibration``
    is what the board's firmware knows about itself. Faults are the board file's: ``board.ideal()`` or
    ``board.replace(...)`` switch them off or sweep them.
    """

    def __init__(self, board: Board, config: FormatConfig | None = None, *, fabrication_seed: int = 0,
                 noise_seed: int = 0, calibration: Calibration | None = None, first_oscillator: int = 0,
                 echo_compensation: bool = False):
        super().__init__(board, config, calibration=calibration, first_oscillator=first_oscillator,
                         echo_compensation=echo_compensation)
        self.oscillators = Oscillators(board, fabrication_seed=fabrication_seed, noise_seed=noise_seed)
        self._forward_state = None  # the physical state the last forward ended in

    @property
    def physics(self):
        return self.oscillators.physics

    def truth(self) -> dict[str, np.ndarray]:
        """The loaded bank's true per-oscillator values (physics.Physics.table), for checking a calibration."""
        if self.physics is None:
            raise RuntimeError("no parameters loaded into the twin; call load() first")
        return self.physics.table()

    def _program(self, mapping: BankMapping) -> None:
        self.oscillators.program(mapping.first, mapping.codes)
        self._forward_state = None

    def _set_gain(self, rate) -> None:
        self.oscillators.set_echo_gain(rate)

    def _begin(self, phi, pi, from_forward_end: bool) -> None:
        if from_forward_end:
            x, v = (np.repeat(value, phi.shape[1], axis=1) for value in self._forward_state)
            v = -v
        else:
            state = self.config.state
            x = state.dequantize(phi) * self.mapping.position_scale_v
            v = state.dequantize(pi) * self._velocity_per_momentum()
        self.oscillators.start(x, v)

    def _advance(self, dac, kick, echo: bool):
        result = self.oscillators.advance(dac, kick, echo=echo)
        if not echo:
            self._forward_state = (self.oscillators.x.copy(), self.oscillators.v.copy())
        return result

    def _end_codes(self, phi_read, pi_read):
        """Q_S of the true end state (the registers of a simulated board hold it at the word's resolution)."""
        x, v = (value.reshape(phi_read.shape) for value in (self.oscillators.x, self.oscillators.v))
        phi, clamped_phi = self.config.state.quantize(x / self.mapping.position_scale_v)
        pi, clamped_pi = self.config.state.quantize(v / self._velocity_per_momentum())
        return phi, pi, clamped_phi + clamped_pi


def convert_readout(mapping: BankMapping, delta, codes_x, codes_q, adc):
    """ADC codes of the position and quadrature channels → HRU ϕ̂, π̂ with the mapping's expected
    (calibrated) readout gain and offset: what the board's firmware or the host computes."""
    gain = mapping.expected["readout_gain"] * mapping.position_scale_v
    phi = (adc.volts(codes_x) - mapping.offset_v) / gain
    pi = adc.volts(codes_q) / gain * (2 * np.pi * mapping.programmed["frequency_hz"] * mapping.dt_s / delta)
    return phi, pi


def observables(config: FormatConfig, delta, forcing, phi_read, pi_read, pi_before, weights=None):
    """The echo pair's accumulator terms from readouts, in the emulator's formats.

    ``forcing`` (B, K, P) codes in echo order; ``phi_read``, ``pi_read``, ``pi_before`` (K, B, 2, P)
    floats in HRU units (index 2: the +ε and −ε echo). Per step: m̂ = ϕ̂ − (δ/2)π̂ after the step;
    codes Q_S of m̂, π̂ before and after; differences (+ε − −ε) summed over the steps as kernels.py's
    MM, PP, FM (frac 2S − acc_shift) and the per-step forcing observable m⁺ − m⁻ (B, K, P). With
    ``weights`` (start, mid, end), each (K, P), every term is weighted and rounded (compensated echo).
    Returns ({"mm", "pp", "fm": (B, P), "forcing": (B, K, P)} int64, how many codes saturated).
    """
    state = config.state
    mid, sat_m = state.quantize(phi_read - 0.5 * delta * pi_read)
    before, sat_b = state.quantize(pi_before)
    after, sat_a = state.quantize(pi_read)
    shift = config.acc_shift

    def weighted(term, weight):
        return term if weights is None else np.rint(term * weight[:, None, :]).astype(np.int64)

    def summed(x_plus, y_plus, x_minus, y_minus, weight):
        return weighted(_round_shift(x_plus * y_plus - x_minus * y_minus, shift), weight).sum(axis=0)

    start_w, mid_w, end_w = weights or (None, None, None)
    plus, minus = (slice(None), slice(None), 0), (slice(None), slice(None), 1)
    f = np.moveaxis(forcing, 1, 0)
    terms = {"mm": summed(mid[plus], mid[plus], mid[minus], mid[minus], mid_w),
             "pp": summed(before[plus], before[plus], before[minus], before[minus], start_w)
             + summed(after[plus], after[plus], after[minus], after[minus], end_w),
             "fm": summed(f, mid[plus], f, mid[minus], mid_w),
             "forcing": np.moveaxis(weighted(mid[plus] - mid[minus], mid_w), 0, 1)}
    return terms, sat_m + sat_b + sat_a


def _round_shift(x: np.ndarray, shift: int) -> np.ndarray:
    """kernels' R(x, s): x·2^−s, ties away from zero."""
    if shift == 0:
        return x
    return np.sign(x) * ((np.abs(x) + (1 << (shift - 1))) >> shift)


def _store(out: np.ndarray, codes: np.ndarray, scale) -> None:
    """out = codes, or codes·scale into a float array (the float API's streams)."""
    if out.dtype.kind == "f":
        out[...] = codes * scale
    else:
        out[...] = codes
