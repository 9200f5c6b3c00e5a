"""The analog twin: a Hamiltonian core that simulates a board in its own physical units, faults included.

``AnalogTwin(board, config, fabrication_seed=…, noise_seed=…)`` is an EmulatorCore (the contract of
DESIGN §1, float and integer APIs, the board simulator's streams) whose two bank passes run physics
instead of the integer leapfrog. Loading a linear bank maps it onto the board (mapping.py: tuning codes
for ωᵢ, input and readout gains, clipped to the board's ranges and counted as "param" saturation);
the oscillators then deviate from what was programmed as fabrication made them:

    ω = ω_prog(1 + σ n₁),  g_in = g_in,prog(1 + σ n₂),  g_out = g_out,prog(1 + σ n₃),  offset = σ_off n₄,
    γ = ω/Q,  gains drifting as g(t) = g(1 + r t) with r ~ N(0, σ_drift) per oscillator and gain,

n ~ N(0, 1) drawn once per oscillator of the board from ``fabrication_seed``. One sample Δt of the
state (x volts, v volts/s) per HRU step, the damping split around the kick (the damped leapfrog is
conformally symplectic; with Q = ∞ and no faults it *is* the HRU leapfrog in scaled variables)::

    v += kick_k                                   (echo nudges only)
    x_m = x + (Δt/2) v
    v ← s v;  v ← v − Δt ω² (x_m − g_in(t) u_k);  v ← s v,        s = e^{−(γ − g_echo)Δt/2}
    x = x_m + (Δt/2) v;   x += σ_th n;  v += ω σ_th n'             (thermal noise)
    y_x = g_out(t) x + offset + σ_rd n'';  y_q = g_out(t) v/ω̂ + σ_rd n'''   (ADC inputs)

u_k is the DAC's output (forcing code → volts s_u·f, quantised to ``dac.bits``, clipped at full
scale); y_x, y_q are quantised by the ADC, and converted back to HRU position and momentum with what
the mapping expects (calibrated when a calibration is given): ϕ̂ = (y_x − offset̂)/(ĝ_out X₀),
π̂ = y_q ω̂Δt/(ĝ_out X₀ δ). Positions returned are Q_S(ϕ̂) — what the host sees.

The echo (RHEL's ±ε pair) runs each echo as its own physical run from the forward's end state with
the velocity flipped, independent noise in each. Its observables are formed from the readouts, as
on-board logic (or a host behind a digitizer, instruments.py) would: m̂ = ϕ̂ − (δ/2)π̂ after each step,
π̂ before the step = the previous readout plus the nudge; then the emulator's accumulators in its
formats (MM, PP, FM, the forcing observable; kernels.py), so EmulatorCore's host half turns them into
gradients unchanged. ``observables`` is that computation, shared with the SCPI host.

Echo gain (negative resistance), for the dissipation-compensated echo: ``set_echo_gain(rate,
compensation_rate)``. During the echo the board adds gain ``rate`` gᵢ (1/s): the echo's net damping
is γᵢ − gᵢ, so g = 2γ̂ (cancel the loss, then as much again) makes the echo retrace the damped forward.
With ``compensation_rate`` rᵢ (κ̂ᵢ = rᵢΔt per step, j = 0, 1, … the echo step from its start) the
echo's nudge before step j is scaled by e^{+κ̂ j} and the observables weighted by e^{−κ̂ t}: t = j + ½
for the mid position, j for the momentum entering the step, j + 1 for the one leaving it
(dissipation.py's recipe). Only a board whose file says ``echo_gain.available`` has it.

Continuity. A board's state is continuous; the integer registers of the device protocol hold its
readout. A pass that continues the state this twin left (the next chunk of a stream, or an echo
starting from the forward's end codes) continues from the exact physical state; any other start
state (a register the host wrote) is taken from its codes. So results do not depend on chunking.

Noise and time. Noise comes from one generator per twin (``noise_seed``), drawn time-major per
chunk, so the same calls give the same bits whatever the chunking. A board clock advances Δt per
step plus ``drift.dead_time_s`` per run; the gain drift follows it. Deterministic given the seeds
and the sequence of calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from echoforge.targets.emulator.core import EmulatorCore
from echoforge.targets.emulator.fixed import ACC_LIMIT, FormatConfig
from echoforge.targets.emulator.kernels import FM, FORCE, INPUT_SATURATED, MM, NUDGE_SATURATED, PP, STATE

from .board import Board
from .calibration_file import Calibration
from .mapping import POSITION_SCALE_V, BankMapping, map_bank

FABRICATION_ROWS = ("frequency", "input_gain", "readout_gain", "offset", "input_drift", "readout_drift")
NOISE_COMPONENTS = 4  # thermal on x and v, readout on the position and quadrature channels


@dataclass(frozen=True)
class Fabrication:
    """One board instance's standard-normal deviations, (FABRICATION_ROWS, board.oscillators)."""

    draws: np.ndarray

    @classmethod
    def draw(cls, board: Board, seed: int) -> Fabrication:
        generator = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0xFAB,)))
        return cls(generator.standard_normal((len(FABRICATION_ROWS), board.oscillators)))

    def row(self, name: str, span: slice) -> np.ndarray:
        return self.draws[FABRICATION_ROWS.index(name), span]


@dataclass(frozen=True)
class Physics:
    """The true per-oscillator values of a loaded bank, (P,) each (what calibration should find)."""

    omega: np.ndarray          # rad/s
    gamma: np.ndarray          # 1/s, the momentum's decay rate (ω/Q)
    input_gain: np.ndarray     # at board time 0
    readout_gain: np.ndarray   # at board time 0
    offset_v: np.ndarray
    input_drift: np.ndarray    # 1/s
    readout_drift: np.ndarray  # 1/s

    def table(self) -> dict[str, np.ndarray]:
        """In a calibration file's terms: frequency_hz, q, input_gain, readout_gain, offset_v."""
        with np.errstate(divide="ignore"):
            quality = np.where(self.gamma > 0, self.omega / np.maximum(self.gamma, 1e-300), np.inf)
        return {"frequency_hz": self.omega / (2 * np.pi), "q": quality, "input_gain": self.input_gain,
                "readout_gain": self.readout_gain, "offset_v": self.offset_v}


@dataclass
class _Carry:
    """The physical state behind the codes a pass returned (identity of those arrays marks continuity)."""

    phi: np.ndarray
    pi: np.ndarray
    x: np.ndarray
    v: np.ndarray
    pi_read: np.ndarray   # HRU momentum as last read out (float), the echo's "π before" of its next step
    steps: int = 0        # echo steps done since the echo began (for the compensation weights)


class AnalogTwin(EmulatorCore):
    """A board's analog twin behind the HamiltonianCore contract (module docstring).

    ``first_oscillator`` places the bank on the board; ``calibration`` is what the board's firmware
    knows about itself (mapping.py). Faults are the board file's: use ``board.ideal()`` or
    ``board.replace(...)`` to switch them off or sweep them.
    """

    def __init__(self, board: Board, config: FormatConfig | None = None, *, fabrication_seed: int = 0,
                 noise_seed: int = 0, calibration: Calibration | None = None, first_oscillator: int = 0):
        super().__init__(config)
        if calibration is not None and calibration.board_id != board.id:
            raise ValueError(f"{calibration.source}: board_id: measured on board {calibration.board_id!r}, "
                             f"not {board.id!r} — calibrate this board")
        self.board = board
        self.calibration = calibration
        self.first_oscillator = first_oscillator
        self.fabrication = Fabrication.draw(board, fabrication_seed)
        self.noise = np.random.default_rng(np.random.SeedSequence(noise_seed, spawn_key=(0x0153,)))
        self.clock_s = 0.0
        self.mapping: BankMapping | None = None
        self.physics: Physics | None = None
        self.echo_gain: np.ndarray | None = None          # g (1/s) during the echo
        self.compensation_rate: np.ndarray | None = None  # r (1/s): nudge scaling and estimator weights
        self._carry: _Carry | None = None
        self._forward_end: _Carry | None = None

    # ---- loading ---------------------------------------------------------------------------------

    def load(self, params) -> None:
        """Quantise the parameters (the protocol's codes), map them onto the board, fabricate."""
        if params.kind != "linear":
            raise ValueError(f"the analog board {self.board.id!r} runs linear HRU banks, not {params.kind}")
        super().load(params)
        mapping = map_bank(self.board, self.params, self.config.state.max_value, first=self.first_oscillator,
                           calibration=self.calibration)
        if self.first_oscillator + self.params.size > self.board.oscillators:
            raise ValueError(mapping.findings[0])
        self._param_saturation += int(sum(clipped.sum() for clipped in mapping.clipped.values()))
        self.mapping = mapping
        self.physics = self._fabricate(mapping)
        self._carry = self._forward_end = None

    def _fabricate(self, mapping: BankMapping) -> Physics:
        board, span = self.board, slice(self.first_oscillator, self.first_oscillator + mapping.size)
        sigma, fab = board.mismatch_sigma, self.fabrication
        omega = 2 * np.pi * mapping.programmed["frequency_hz"] * (1 + sigma * fab.row("frequency", span))
        return Physics(omega=omega, gamma=omega / board.quality_factor,
                       input_gain=mapping.programmed["input_gain"] * (1 + sigma * fab.row("input_gain", span)),
                       readout_gain=mapping.programmed["readout_gain"] * (1 + sigma * fab.row("readout_gain", span)),
                       offset_v=board.offset_sigma_v * fab.row("offset", span),
                       input_drift=board.drift.gain_sigma_per_s * fab.row("input_drift", span),
                       readout_drift=board.drift.gain_sigma_per_s * fab.row("readout_drift", span))

    def set_echo_gain(self, rate, compensation_rate=None) -> None:
        """Negative resistance in the echo (module docstring): gain ``rate`` gᵢ (1/s, scalar or (P,)),
        and optionally the compensated estimator's rate rᵢ (1/s). ``rate=None`` switches both off."""
        if rate is None:
            self.echo_gain = self.compensation_rate = None
            return
        gain = self.board.echo_gain
        if not gain.available:
            raise ValueError(f"{self.board.source}: echo_gain.available is false: board {self.board.id!r} cannot "
                             "apply gain in its echo — use a board with a negative-resistance echo mode")
        size = self._size()
        rate = np.broadcast_to(np.asarray(rate, dtype=np.float64), (size,)).copy()
        if not (np.all(np.isfinite(rate)) and np.all(rate >= 0) and np.all(rate <= gain.max_rate_per_s)):
            raise ValueError(f"echo gain {rate.max():.4g}/s is outside 0..{gain.max_rate_per_s:.4g}/s, what board "
                             f"{self.board.id!r} can apply (echo_gain.max_rate_per_s)")
        self.echo_gain = rate
        self.compensation_rate = (None if compensation_rate is None else
                                  np.broadcast_to(np.asarray(compensation_rate, np.float64), (size,)).copy())

    def _size(self) -> int:
        if self.physics is None:
            raise RuntimeError("no parameters loaded into the twin; call load() first")
        return len(self.physics.omega)

    # ---- the bank passes (EmulatorCore's array contract) -------------------------------------------

    def _bank_forward(self, forcing, phi, pi, positions, stream_counts):
        codes = self._codes(forcing, self._conversion()[0], stream_counts, INPUT_SATURATED)
        batch, steps, size = codes.shape
        counters = np.zeros(4, dtype=np.int64)
        x, v = self._resume(phi, pi)
        u, counters[FORCE] = self._dac(codes)
        lanes = _Lanes(self, batch, pair=1)
        readout = lanes.run(x, v, _time_major(u), np.zeros((steps, batch * size)), self._decay(echo=False))
        phi_read, pi_read, clipped = self._read(readout, batch, 1)
        position_codes, saturated = self.config.state.quantize(phi_read[:, :, 0])  # (K, B, P)
        _store(positions, np.moveaxis(position_codes, 0, 1), self.config.state.lsb)
        end_phi, end_pi, state_clamps = self._state_codes(x, v)
        counters[STATE] += clipped + saturated + state_clamps
        self._carry = self._forward_end = _Carry(end_phi, end_pi, x, v, pi_read[-1, :, 0])
        return end_phi, end_pi, counters

    def _bank_echo(self, forcing, nudges, phi, pi, acc, forcing_obs, counters, conversion, obs_scale, stream_counts):
        f = self._codes(forcing, conversion[0], stream_counts, INPUT_SATURATED)
        q = self._codes(nudges, conversion[1], stream_counts, NUDGE_SATURATED)
        batch, steps, size = f.shape
        carry = self._echo_start(phi, pi)
        u, dac_clipped = self._dac(f)
        counters[FORCE] += dac_clipped
        reverse = slice(None, None, -1)
        # Echo step j (from the echo's start) consumes forward index k = start + K − 1 − j.
        j = carry.steps + np.arange(steps)
        nudge = q[:, reverse].astype(np.float64) * self.config.state.lsb * self._nudge_scale(j)[None, :, :]
        kick = np.stack([nudge, -nudge], axis=2) * self._velocity_per_momentum()    # (B, K, 2, P)
        lanes = _Lanes(self, batch, pair=2)
        u_pair = np.repeat(u[:, reverse, None, :], 2, axis=2)
        readout = lanes.run(carry.x, carry.v, _time_major(u_pair), _time_major(kick), self._decay(echo=True))
        phi_read, pi_read, clipped = self._read(readout, batch, 2)                 # (K, B, 2, P)
        pi_before = np.concatenate([carry.pi_read[None], pi_read[:-1]]) + np.moveaxis(
            np.stack([nudge, -nudge], axis=2), 1, 0)
        terms, saturated = observables(self.config, self.params.delta, f[:, reverse], phi_read, pi_read, pi_before,
                                       self._weights(j))
        counters[STATE] += clipped + saturated
        for row, term in ((MM, terms["mm"]), (PP, terms["pp"]), (FM, terms["fm"])):
            total = acc[:, row] + term
            acc[:, row] = np.clip(total, -ACC_LIMIT, ACC_LIMIT)
            counters[3] += int(np.count_nonzero(acc[:, row] != total))
        _store(forcing_obs, terms["forcing"][:, reverse], obs_scale)
        end_phi, end_pi, state_clamps = self._state_codes(carry.x, carry.v)
        counters[STATE] += state_clamps
        phi[...], pi[...] = end_phi, end_pi
        self._carry = _Carry(phi, pi, carry.x, carry.v, pi_read[-1], carry.steps + steps)

    # ---- pieces ----------------------------------------------------------------------------------

    def _codes(self, stream, gain, stream_counts, slot) -> np.ndarray:
        """A stream as state codes; float streams are quantised (Q of stream·gain/2^S), counted."""
        if stream.dtype.kind != "f":
            return np.asarray(stream, dtype=np.int64)
        codes, saturated = self.config.state.quantize(stream, prescale=gain * self.config.state.lsb)
        stream_counts[slot] += saturated
        return codes

    def _dac(self, codes) -> tuple[np.ndarray, int]:
        """DAC volts of forcing codes: u = s_u·f, quantised and clipped by the DAC."""
        dac = self.board.dac
        dac_codes, clipped = dac.codes(self.config.state.dequantize(codes) * self.mapping.forcing_scale_v)
        return dac.volts(dac_codes), clipped

    def _velocity_per_momentum(self) -> np.ndarray:
        """ẋ per unit of HRU momentum: X₀δ/Δt."""
        return self.mapping.position_scale_v * self.params.delta / self.board.dt

    def _decay(self, echo: bool) -> np.ndarray:
        rate = self.physics.gamma - (self.echo_gain if echo and self.echo_gain is not None else 0.0)
        return np.exp(-0.5 * rate * self.board.dt)

    def _nudge_scale(self, j: np.ndarray) -> np.ndarray:
        """(K, P): e^{+κ̂ j} under compensation, else ones."""
        if self.compensation_rate is None:
            return np.ones((len(j), self._size()))
        return np.exp(np.outer(j, self.compensation_rate * self.board.dt))

    def _weights(self, j: np.ndarray):
        """(start, mid, end) observable weights (K, P) under compensation, else None."""
        if self.compensation_rate is None:
            return None
        kappa = self.compensation_rate * self.board.dt
        return tuple(np.exp(-np.outer(j + t, kappa)) for t in (0.0, 0.5, 1.0))

    def _resume(self, phi, pi) -> tuple[np.ndarray, np.ndarray]:
        """The physical start state of a forward pass: the carried one if it continues it, else the codes'."""
        carry = self._carry
        if carry is not None and carry.phi is phi and carry.pi is pi:
            return carry.x.copy(), carry.v.copy()
        self.clock_s += self.board.drift.dead_time_s
        return self._physical(phi, pi)

    def _echo_start(self, phi, pi) -> _Carry:
        """The pair's physical start: continued, from the forward's end (velocity flipped), or from codes."""
        carry = self._carry
        if carry is not None and carry.phi is phi and carry.pi is pi:
            return _Carry(phi, pi, carry.x.copy(), carry.v.copy(), carry.pi_read, carry.steps)
        self.clock_s += 2 * self.board.drift.dead_time_s  # two runs: the +ε echo and the −ε echo
        end = self._forward_end
        if end is not None and end.phi.shape == phi[:, 0].shape and all(
                np.array_equal(phi[:, e], end.phi) and np.array_equal(pi[:, e], -end.pi) for e in (0, 1)):
            pair = [np.repeat(value[:, None], 2, axis=1) for value in (end.x, -end.v, -end.pi_read)]
            return _Carry(phi, pi, *pair)
        x, v = self._physical(phi, pi)
        return _Carry(phi, pi, x, v, self.config.state.dequantize(pi))

    def _physical(self, phi, pi) -> tuple[np.ndarray, np.ndarray]:
        state = self.config.state
        return (state.dequantize(phi) * self.mapping.position_scale_v,
                state.dequantize(pi) * self._velocity_per_momentum())

    def _state_codes(self, x, v):
        """The state registers' codes of a physical state, and how many clamped."""
        phi, clamped_phi = self.config.state.quantize(x / self.mapping.position_scale_v)
        pi, clamped_pi = self.config.state.quantize(v / self._velocity_per_momentum())
        return phi, pi, clamped_phi + clamped_pi

    def _read(self, readout, batch: int, pair: int):
        """ADC codes → HRU position and momentum (floats, (K, B, pair, P)) and how many ADC samples clipped."""
        y_x, y_q = readout
        adc, mapping, size = self.board.adc, self.mapping, self._size()
        codes_x, clipped_x = adc.codes(y_x)
        codes_q, clipped_q = adc.codes(y_q)
        shape = (len(y_x), batch, pair, size)
        phi, pi = convert_readout(mapping, self.params.delta, codes_x.reshape(shape), codes_q.reshape(shape), adc)
        return phi, pi, clipped_x + clipped_q

    def truth(self) -> dict[str, np.ndarray]:
        """The loaded bank's true per-oscillator values (Physics.table), for checking a calibration."""
        self._size()
        return self.physics.table()


def convert_readout(mapping: BankMapping, delta, codes_x, codes_q, adc):
    """ADC codes of the position and quadrature channels → HRU ϕ̂, π̂ with the mapping's expected
    (calibrated) readout gain, offset and frequency: what the board's firmware or the host computes."""
    gain = mapping.expected["readout_gain"] * mapping.position_scale_v
    phi = (adc.volts(codes_x) - mapping.offset_v) / gain
    pi = adc.volts(codes_q) / gain * (mapping.expected_omega * mapping.dt_s / delta)
    return phi, pi


def observables(config: FormatConfig, delta, forcing, phi_read, pi_read, pi_before, weights=None):
    """The echo pair's accumulator terms from readouts, in the emulator's formats.

    ``forcing`` (B, K, P) codes in echo order; ``phi_read``, ``pi_read``, ``pi_before`` (K, B, 2, P)
    floats in HRU units (index 2: the +ε and −ε echo). Per step: m̂ = ϕ̂ − (δ/2)π̂ after the step;
    codes Q_S of m̂, π̂ before and after; differences (+ε − −ε) summed over the steps as kernels.py's
    MM, PP, FM (frac 2S − acc_shift) and the per-step forcing observable m⁺ − m⁻ (B, K, P). With
    ``weights`` (start, mid, end), each (K, P), the terms are weighted and rounded (compensated echo).
    Returns ({"mm", "pp", "fm": (B, P), "forcing": (B, K, P)} int64, codes that saturated).
    """
    state = config.state
    mid, sat_m = state.quantize(phi_read - 0.5 * delta * pi_read)
    before, sat_b = state.quantize(pi_before)
    after, sat_a = state.quantize(pi_read)
    ones = np.ones((mid.shape[0], mid.shape[3]))  # (K, P)
    start_w, mid_w, end_w = weights or (ones, ones, ones)
    shift = config.acc_shift

    def summed(x_plus, y_plus, x_minus, y_minus, weight):
        term = _round_shift(x_plus * y_plus - x_minus * y_minus, shift)            # (K, B, P)
        if weights is not None:
            term = np.rint(term * weight[:, None, :]).astype(np.int64)
        return term.sum(axis=0)

    plus, minus = (slice(None), slice(None), 0), (slice(None), slice(None), 1)
    f = np.moveaxis(forcing, 1, 0)
    terms = {"mm": summed(mid[plus], mid[plus], mid[minus], mid[minus], mid_w),
             "pp": summed(before[plus], before[plus], before[minus], before[minus], start_w)
             + summed(after[plus], after[plus], after[minus], after[minus], end_w),
             "fm": summed(f, mid[plus], f, mid[minus], mid_w)}
    difference = mid[plus] - mid[minus]
    if weights is not None:
        difference = np.rint(difference * mid_w[:, None, :]).astype(np.int64)
    terms["forcing"] = np.moveaxis(difference, 0, 1)
    return terms, sat_m + sat_b + sat_a


def _round_shift(x: np.ndarray, shift: int) -> np.ndarray:
    """kernels' R(x, s): x·2^−s, ties away from zero."""
    if shift == 0:
        return x
    return np.sign(x) * ((np.abs(x) + (1 << (shift - 1))) >> shift)


def _time_major(array: np.ndarray) -> np.ndarray:
    """(B, K, …) → (K, B·…): the kernel's layout, one row per time step."""
    moved = np.moveaxis(array, 1, 0)
    return np.ascontiguousarray(moved.reshape(moved.shape[0], -1), dtype=np.float64)


def _store(out: np.ndarray, codes: np.ndarray, scale) -> None:
    """out = codes, or codes·scale into a float array (the float API's streams)."""
    if out.dtype.kind == "f":
        out[...] = codes * scale
    else:
        out[...] = codes


class _Lanes:
    """The twin's oscillators laid out as lanes (B, pair, P) flattened, for the kernel."""

    def __init__(self, twin: AnalogTwin, batch: int, pair: int):
        self.twin = twin
        self.shape = (batch, pair, twin._size())

    def per_lane(self, values) -> np.ndarray:
        return np.ascontiguousarray(np.broadcast_to(values, self.shape).reshape(-1), dtype=np.float64)

    def run(self, x, v, u, kick, decay):
        """Integrate K steps in place on x, v (shaped (B, P) or (B, 2, P)); returns the ADC inputs
        (y_x, y_q), each (K, lanes)."""
        twin = self.twin
        physics, board, mapping = twin.physics, twin.board, twin.mapping
        steps, lanes = u.shape
        noise = board.noise
        draws = (twin.noise.standard_normal((steps, lanes, NOISE_COMPONENTS))
                 if noise.thermal_v or noise.readout_v else np.zeros((0, 0, NOISE_COMPONENTS)))
        flat_x, flat_v = x.reshape(-1), v.reshape(-1)
        y_x, y_q = np.empty((steps, lanes)), np.empty((steps, lanes))
        _integrate(flat_x, flat_v, u, kick, self.per_lane(physics.omega), self.per_lane(decay),
                   self.per_lane(physics.input_gain), self.per_lane(physics.readout_gain),
                   self.per_lane(physics.input_drift), self.per_lane(physics.readout_drift),
                   self.per_lane(physics.offset_v), self.per_lane(1.0 / mapping.expected_omega),
                   twin.clock_s, board.dt, noise.thermal_v, noise.readout_v, draws, y_x, y_q)
        twin.clock_s += steps * board.dt
        return y_x, y_q


@njit(cache=True)
def _integrate(x, v, u, kick, omega, decay, input_gain, readout_gain, input_drift, readout_drift, offset,
               quadrature, clock, dt, thermal, readout, draws, y_x, y_q):
    """K samples of every lane (module docstring's step), x and v in place; u, kick (K, lanes);
    draws (K, lanes, 4) standard normals or empty (no noise); fills the ADC inputs y_x, y_q."""
    steps, lanes = u.shape
    noisy = draws.shape[0] > 0
    for k in range(steps):
        t = clock + (k + 1) * dt
        for n in range(lanes):
            w2 = omega[n] * omega[n]
            vel = v[n] + kick[k, n]
            mid = x[n] + 0.5 * dt * vel
            vel = vel * decay[n]
            vel = (vel - dt * w2 * (mid - input_gain[n] * (1.0 + input_drift[n] * t) * u[k, n])) * decay[n]
            pos = mid + 0.5 * dt * vel
            gain = readout_gain[n] * (1.0 + readout_drift[n] * t)
            yx = gain * pos + offset[n]
            yq = gain * vel * quadrature[n]
            if noisy:
                pos += thermal * draws[k, n, 0]
                vel += thermal * omega[n] * draws[k, n, 1]
                yx = gain * pos + offset[n] + readout * draws[k, n, 2]
                yq = gain * vel * quadrature[n] + readout * draws[k, n, 3]
            x[n] = pos
            v[n] = vel
            y_x[k, n] = yx
            y_q[k, n] = yq
