"""RTLCore: the emulator's core contract computed by the generated Verilog, under a simulator.

A subclass of EmulatorCore that overrides only the two bank passes the streams and the float API call
(``_bank_forward``, ``_bank_echo``; array contract in targets/emulator/stream.py): each call is one
simulated run of the Verilated bank. Everything around them — quantising parameters and float
streams, choosing ε, turning accumulators into gradients, the saturation report — is the emulator's,
so RHEL gradients, the float API, the board and the HIL trainer run on the RTL unchanged, and any
difference from the emulator is a difference of the hardware's bits.

Lanes. The forward runs lane = row·P + oscillator; the echo lane = 2·(row·P + oscillator) + σ (the
+ε echo, then the −ε echo). The input beats of a step are the rows' samples in that order; the echo
consumes its steps in reverse time, so its beats and observables are reversed here.
"""

from __future__ import annotations

import numpy as np

from echoforge.targets.emulator import EmulatorCore, kernels
from echoforge.targets.emulator.fixed import FormatConfig

from . import sim

MIN_LANES, MIN_OSCILLATORS = 64, 16  # smallest capacities built, so that most banks share a build


class RTLCore(EmulatorCore):
    """The fixed-point core on the generated RTL (``simulator``: "verilator" or "icarus")."""

    def __init__(self, config: FormatConfig | None = None, *, simulator: str = "verilator", stall_seed: int = 0):
        super().__init__(config)
        sim.require(simulator)
        self.simulator = simulator
        self.stall_seed = stall_seed   # random gaps on both streams (the bits must not change)
        self.last_run: sim.RunResult | None = None

    def _simulation(self, lanes: int) -> sim.Simulation:
        """The build whose capacity holds ``lanes`` lanes of this bank (cached on disk by source hash)."""
        size = self.param_codes.shape[1]
        return sim.build(self.config, self.params.kind, lanes=_power_of_two(max(lanes, MIN_LANES)),
                         oscillators=_power_of_two(max(size, MIN_OSCILLATORS)), simulator=self.simulator)

    def _bank_forward(self, forcing, phi, pi, positions, stream_counts):
        codes = self._codes(forcing, 1.0, stream_counts, kernels.INPUT_SATURATED)
        rows, steps, size = codes.shape
        phi, pi = np.asarray(phi, dtype=np.int64), np.asarray(pi, dtype=np.int64)
        if steps == 0:
            return phi.copy(), pi.copy(), np.zeros(len(kernels.KERNEL_COUNTERS), dtype=np.int64)
        run = self._run("forward", rows * size, steps, _beats(codes), phi.reshape(-1), pi.reshape(-1))
        positions[...] = self.stream_values(run.out.reshape(steps, rows, size).transpose(1, 0, 2), positions)
        return run.phi.reshape(rows, size), run.pi.reshape(rows, size), run.counters.copy()

    def _bank_echo(self, forcing, nudges, phi, pi, acc, forcing_obs, counters, conversion, obs_scale, stream_counts):
        gain, nudge_gain, _ = conversion
        f = self._codes(forcing, 1.0, stream_counts, kernels.INPUT_SATURATED)
        q = self._codes(nudges, nudge_gain / gain, stream_counts, kernels.NUDGE_SATURATED)
        rows, steps, size = f.shape
        if steps == 0:
            return
        rows_used = self._accumulator_rows()
        pair_acc = acc[:, rows_used, :].transpose(0, 2, 1).reshape(rows * size, len(rows_used))
        lanes = 2 * rows * size
        run = self._run("echo", lanes, steps, _beats(f[:, ::-1]), _lanes(phi), _lanes(pi),
                        nudges=_beats(q[:, ::-1]), acc=pair_acc)
        observable = run.out.reshape(steps, rows, size)[::-1].transpose(1, 0, 2)
        forcing_obs[...] = observable if forcing_obs.dtype.kind != "f" else observable * obs_scale
        phi[...] = run.phi.reshape(rows, size, 2).transpose(0, 2, 1)
        pi[...] = run.pi.reshape(rows, size, 2).transpose(0, 2, 1)
        acc[:, rows_used, :] = run.acc.reshape(rows, size, len(rows_used)).transpose(0, 2, 1)
        counters += run.counters

    def _run(self, mode: str, lanes: int, steps: int, forcing, phi, pi, **extra) -> sim.RunResult:
        self.last_run = self._simulation(lanes).run(mode=mode, params=self.param_codes, phi=phi, pi=pi,
                                                    forcing=forcing, steps=steps, stall_seed=self.stall_seed,
                                                    **extra)
        return self.last_run

    def _accumulator_rows(self) -> list[int]:
        """The kernels' accumulator rows this kind's RTL keeps (the others stay 0 in the emulator too)."""
        names = ("mm", "pp", "fm") if self.params.kind == "linear" else ("mm", "pp", "t", "tm", "lc")
        return [kernels.ACCUMULATORS.index(name) for name in names]

    def _codes(self, stream, prescale: float, stream_counts, slot: int) -> np.ndarray:
        codes, saturated = self.stream_codes(stream, prescale)
        stream_counts[slot] += saturated
        return np.asarray(codes, dtype=np.int64)


def _beats(codes: np.ndarray) -> np.ndarray:
    """Stream order: step-major, then row, then oscillator."""
    return np.ascontiguousarray(codes.transpose(1, 0, 2)).reshape(-1)


def _lanes(pair: np.ndarray) -> np.ndarray:
    """(B, 2, P) pair state → echo lanes 2·(row·P + oscillator) + σ."""
    return np.ascontiguousarray(np.asarray(pair).transpose(0, 2, 1)).reshape(-1)


def _power_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()
