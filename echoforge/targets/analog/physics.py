"""The board's oscillators as physics: tuning codes and DAC codes in, ADC codes out.

What a physical board does, in its own units, with its faults — the bench under the analog twin
(twin.py) and behind the SCPI instruments (scpi.py). Programming a bank sets each oscillator from its
tuning codes (mapping.code_value); fabrication then moves it, from ``fabrication_seed`` (one standard
normal n per oscillator of the board and quantity):

    ω = ω_prog(1 + σ n₁),  g_in = g_in,prog(1 + σ n₂),  g_out = g_out,prog(1 + σ n₃),
    offset = σ_off n₄,  γ = ω/Q,  gain drift rates r ~ σ_drift (n₅, n₆) per second.

A *run* is one pass of the board over a waveform (a forward; each echo of the ±ε pair is a run of
its own). Runs are numbered; run n sees board time tₙ = n·``run_period_s`` (the drift clock: gains are
g(1 + r tₙ) throughout the run) and draws its noise from its own generator, seeded by (noise_seed, n),
time-major — so the same runs give the same bits however they are split into chunks, and whether the
two echoes run side by side (in process) or one after the other (instruments).

One sample Δt of state (x volts, v volts/s), the damping split around the kick::

    v += kick_k
    x_m = x + (Δt/2) v
    v ← s v;  v ← v − Δt ω² (x_m − g_in u_k);  v ← s v,        s = e^{−(γ − g_echo)Δt/2}
    x = x_m + (Δt/2) v;   x += σ_th n;  v += ω σ_th n'                 (thermal noise)
    y_x = g_out x + offset + σ_rd n'';  y_q = g_out v/ω_prog + σ_rd n'''  (ADC inputs)

u_k = dac.volts(code) held for the sample; y_x, y_q are quantised and clipped by the ADC. g_echo is
the echo's negative resistance (``echo_gain``, 1/s), 0 in a forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit

from .board import Board
from .mapping import BOARD_RANGES, QUANTITIES, code_value

FABRICATION_ROWS = ("frequency", "input_gain", "readout_gain", "offset", "input_drift", "readout_drift")
NOISE_COMPONENTS = 4  # thermal on x and v, readout on the position and quadrature channels


@dataclass(frozen=True)
class Physics:
    """The true per-oscillator values of a programmed bank, (P,) each (what calibration should find)."""

    omega: np.ndarray             # rad/s
    gamma: np.ndarray             # 1/s, the velocity's decay rate ω/Q
    input_gain: np.ndarray        # at board time 0
    readout_gain: np.ndarray      # at board time 0
    offset_v: np.ndarray
    input_drift: np.ndarray       # 1/s
    readout_drift: np.ndarray     # 1/s
    programmed_omega: np.ndarray  # what the codes asked for (the quadrature channel's scale)

    def table(self) -> dict[str, np.ndarray]:
        """In a calibration file's terms: frequency_hz, q, input_gain, readout_gain, offset_v."""
        with np.errstate(divide="ignore"):
            quality = np.where(self.gamma > 0, self.omega / np.maximum(self.gamma, 1e-300), np.inf)
        return {"frequency_hz": self.omega / (2 * np.pi), "q": quality, "input_gain": self.input_gain,
                "readout_gain": self.readout_gain, "offset_v": self.offset_v}


class Oscillators:
    """One board instance: programmed banks, runs, held state (module docstring)."""

    def __init__(self, board: Board, *, fabrication_seed: int = 0, noise_seed: int | tuple[int, ...] = 0):
        self.board = board
        self.noise_seed = noise_seed
        generator = np.random.default_rng(np.random.SeedSequence(fabrication_seed, spawn_key=(0xFAB,)))
        self.fabrication = generator.standard_normal((len(FABRICATION_ROWS), board.oscillators))
        self.physics: Physics | None = None
        self.echo_gain: np.ndarray | None = None  # g (1/s) applied in echo runs
        self.runs = 0                              # runs started so far (the next run's number)
        self.x = self.v = None                     # the held state (B, E, P): E parallel runs
        self._generators: list[np.random.Generator] = []
        self._times: np.ndarray = np.zeros(0)

    def program(self, first: int, codes: dict[str, np.ndarray]) -> Physics:
        """Set oscillators first … first + P − 1 from tuning codes (QUANTITIES); returns their truth."""
        board = self.board
        size = len(codes["frequency_hz"])
        if first < 0 or first + size > board.oscillators:
            raise ValueError(f"oscillators {first}..{first + size - 1} do not exist on board {board.id!r} "
                             f"({board.oscillators} oscillators)")
        top = (1 << board.tuning_bits) - 1
        if any(np.any((np.asarray(codes[name]) < 0) | (np.asarray(codes[name]) > top)) for name in QUANTITIES):
            raise ValueError(f"tuning codes must lie in 0..{top} ({board.tuning_bits}-bit tuning DACs)")
        nominal = {name: code_value(codes[name], *getattr(board, BOARD_RANGES[name]), board.tuning_bits)
                   for name in QUANTITIES}
        draws = dict(zip(FABRICATION_ROWS, self.fabrication[:, first:first + size]))
        sigma = board.mismatch_sigma
        programmed_omega = 2 * np.pi * nominal["frequency_hz"]
        omega = programmed_omega * (1 + sigma * draws["frequency"])
        self.physics = Physics(
            omega=omega, gamma=omega / board.quality_factor,
            input_gain=nominal["input_gain"] * (1 + sigma * draws["input_gain"]),
            readout_gain=nominal["readout_gain"] * (1 + sigma * draws["readout_gain"]),
            offset_v=board.offset_sigma_v * draws["offset"],
            input_drift=board.drift.gain_sigma_per_s * draws["input_drift"],
            readout_drift=board.drift.gain_sigma_per_s * draws["readout_drift"],
            programmed_omega=programmed_omega)
        self.echo_gain = None
        return self.physics

    @property
    def size(self) -> int:
        if self.physics is None:
            raise RuntimeError("no bank programmed on the board")
        return len(self.physics.omega)

    def set_echo_gain(self, rate) -> None:
        """Negative resistance in echo runs, g (1/s) per oscillator; None: none."""
        if rate is None:
            self.echo_gain = None
            return
        gain = self.board.echo_gain
        if not gain.available:
            raise ValueError(f"{self.board.source}: echo_gain.available is false: board {self.board.id!r} cannot "
                             "apply gain in its echo — use a board with a negative-resistance echo mode")
        rate = np.broadcast_to(np.asarray(rate, dtype=np.float64), (self.size,)).copy()
        if not (np.all(np.isfinite(rate)) and np.all(rate >= 0) and np.all(rate <= gain.max_rate_per_s)):
            raise ValueError(f"echo gain up to {np.max(rate):.4g}/s is outside 0..{gain.max_rate_per_s:.4g}/s, what "
                             f"board {self.board.id!r} can apply (echo_gain.max_rate_per_s)")
        self.echo_gain = rate

    def start(self, x, v) -> None:
        """Begin E parallel runs (numbered on) from the physical state x, v (B, E, P)."""
        self.x = np.array(x, dtype=np.float64)
        self.v = np.array(v, dtype=np.float64)
        count = self.x.shape[1]
        numbers = range(self.runs, self.runs + count)
        self._generators = [np.random.default_rng(np.random.SeedSequence(self.noise_seed, spawn_key=(n,)))
                            for n in numbers]
        self._times = np.array([n * self.board.drift.run_period_s for n in numbers])
        self.runs += count

    def advance(self, dac_codes, kick=None, *, echo: bool = False) -> tuple[np.ndarray, np.ndarray, int]:
        """K samples of the runs begun: DAC codes (B, K, E, P), velocity kicks (same shape, volts/s) or
        None. Returns the ADC codes of the position and quadrature channels (K, B, E, P) and how many
        samples clipped (DAC and ADC)."""
        if self.x is None:
            raise RuntimeError("no run started")
        board, physics = self.board, self.physics
        batch, steps, runs, size = dac_codes.shape
        if (batch, runs, size) != self.x.shape:
            raise ValueError(f"waveform of {batch} rows × {runs} runs × {size} oscillators for runs of shape "
                             f"{self.x.shape}")
        if np.any(np.abs(dac_codes) > board.dac.limit):
            raise ValueError(f"DAC codes must lie in ±{board.dac.limit} ({board.dac.bits}-bit DAC)")
        lanes = self.x.size
        u = _time_major(board.dac.volts(dac_codes))
        kick = np.zeros((steps, lanes)) if kick is None else _time_major(kick)
        gain = 0.0 if not echo or self.echo_gain is None else self.echo_gain
        times = self._times[:, None]

        def per_lane(values):
            return np.ascontiguousarray(np.broadcast_to(values, self.x.shape).reshape(-1), dtype=np.float64)

        y_x, y_q = np.empty((steps, lanes)), np.empty((steps, lanes))
        _integrate(self.x.reshape(-1), self.v.reshape(-1), u, kick, per_lane(physics.omega),
                   per_lane(np.exp(-0.5 * (physics.gamma - gain) * board.dt)),
                   per_lane(physics.input_gain * (1 + physics.input_drift * times)),
                   per_lane(physics.readout_gain * (1 + physics.readout_drift * times)),
                   per_lane(physics.offset_v), per_lane(1.0 / physics.programmed_omega), board.dt,
                   board.noise.thermal_v, board.noise.readout_v, self._draws(steps), y_x, y_q)
        shape = (steps, batch, runs, size)
        codes_x, clipped_x = board.adc.codes(y_x)
        codes_q, clipped_q = board.adc.codes(y_q)
        return codes_x.reshape(shape), codes_q.reshape(shape), clipped_x + clipped_q

    def _draws(self, steps: int) -> np.ndarray:
        """(K, lanes, 4) standard normals, each run from its own generator; empty without noise."""
        noise = self.board.noise
        if not (noise.thermal_v or noise.readout_v):
            return np.zeros((0, 0, NOISE_COMPONENTS))
        batch, _, size = self.x.shape
        per_run = [g.standard_normal((steps, batch, size, NOISE_COMPONENTS)) for g in self._generators]
        return np.stack(per_run, axis=2).reshape(steps, -1, NOISE_COMPONENTS)


def _time_major(array) -> np.ndarray:
    """(B, K, …) → (K, B·…): the kernel's layout, one row per sample."""
    moved = np.moveaxis(np.asarray(array), 1, 0)
    return np.ascontiguousarray(moved.reshape(moved.shape[0], -1), dtype=np.float64)


@njit(cache=True)
def _integrate(x, v, u, kick, omega, decay, input_gain, readout_gain, offset, quadrature, dt, thermal, readout,
               draws, y_x, y_q):
    """K samples of every lane (module docstring), x and v in place; u, kick (K, lanes); draws
    (K, lanes, 4) standard normals, or empty for no noise; fills the ADC inputs y_x, y_q."""
    steps, lanes = u.shape
    noisy = draws.shape[0] > 0
    for k in range(steps):
        for n in range(lanes):
            vel = v[n] + kick[k, n]
            mid = x[n] + 0.5 * dt * vel
            vel = (vel * decay[n] - dt * omega[n] * omega[n] * (mid - input_gain[n] * u[k, n])) * decay[n]
            pos = mid + 0.5 * dt * vel
            noise_x = noise_q = 0.0
            if noisy:
                pos += thermal * draws[k, n, 0]
                vel += thermal * omega[n] * draws[k, n, 1]
                noise_x = readout * draws[k, n, 2]
                noise_q = readout * draws[k, n, 3]
            x[n] = pos
            v[n] = vel
            y_x[k, n] = readout_gain[n] * pos + offset[n] + noise_x
            y_q[k, n] = readout_gain[n] * vel * quadrature[n] + noise_q
