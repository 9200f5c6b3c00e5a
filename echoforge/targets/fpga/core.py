"""RTLCore: the emulator's core contract computed by the generated Verilog, under a simulator.

A subclass of EmulatorCore that overrides only the two bank passes the streams and the float API call
(``_bank_forward``, ``_bank_echo``; array contract in targets/emulator/stream.py): each call is one
simulated run of the Verilated bank. Everything around them — quantising parameters and float
streams, choosing ε, turning accumulators into gradients, the saturation report — is the emulator's,
so RHEL gradients, the float API, the board and the HIL trainer run on the RTL unchanged, and any
difference from the emulator is a difference of the hardware's bits.

Lanes. The forward runs lane = row·P + oscillator; the echo lane = 2·(row·P + oscillator) + σ (the
+ε echo, then the −ε echo). The input beats of a step are the rows' samples in that order; the echo
consumes its steps in reverse time, so its beats and observables are reversed here. A bank's design
holds LANES lanes (more when one row's echo needs more): a batch with more rows runs as several
groups of rows, one simulated run each (rows are independent), so one build serves every batch size.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from echoforge.targets.emulator import EmulatorCore, kernels
from echoforge.targets.emulator.fixed import FormatConfig

from . import sim

LANES, MIN_OSCILLATORS = 256, 16  # the capacities built (a power of two ≥ 2P lanes, ≥ P oscillators)


@cache
def _simulation(config: FormatConfig, kind: str, lanes: int, oscillators: int, simulator: str,
                fold: int = 1) -> sim.Simulation:
    return sim.build(config, kind, lanes=lanes, oscillators=oscillators, simulator=simulator, fold=fold)


class RTLCore(EmulatorCore):
    """The fixed-point core on the generated RTL (``simulator``: "verilator" or "icarus"; ``fold``: the
    pipeline stages per register stage, rtl.generate_core)."""

    def __init__(self, config: FormatConfig | None = None, *, simulator: str = "verilator", stall_seed: int = 0,
                 fold: int = 1):
        super().__init__(config)
        sim.require(simulator)
        self.simulator = simulator
        self.stall_seed = stall_seed   # random gaps on both streams (the bits must not change)
        self.fold = fold
        self.last_run: sim.RunResult | None = None

    def simulation(self) -> sim.Simulation:
        """The loaded bank's simulator (built on first use, then cached on disk by source hash)."""
        if self.param_codes is None:
            raise RuntimeError("no parameters loaded into the core; call load() first")
        size = self.param_codes.shape[1]
        return _simulation(self.config, self.params.kind, max(LANES, _power_of_two(2 * size)),
                           max(MIN_OSCILLATORS, _power_of_two(size)), self.simulator, self.fold)

    def _row_groups(self, rows: int, size: int):
        """Slices of batch rows whose echo pairs fit the design's lanes."""
        per_run = max(1, self.simulation().design.lanes // (2 * size))
        return [slice(first, min(first + per_run, rows)) for first in range(0, rows, per_run)]

    def _bank_forward(self, forcing, phi, pi, positions, stream_counts):
        codes = self._codes(forcing, 1.0, stream_counts, kernels.INPUT_SATURATED)
        rows, steps, size = codes.shape
        phi, pi = np.array(phi, dtype=np.int64), np.array(pi, dtype=np.int64)
        counters = np.zeros(len(kernels.KERNEL_COUNTERS), dtype=np.int64)
        if steps == 0:
            return phi, pi, counters
        out = np.empty(codes.shape, dtype=np.int64)
        for group in self._row_groups(rows, size):
            n = group.stop - group.start
            run = self._run("forward", steps, _beats(codes[group]), phi[group].reshape(-1), pi[group].reshape(-1))
            out[group] = run.out.reshape(steps, n, size).transpose(1, 0, 2)
            phi[group], pi[group] = run.phi.reshape(n, size), run.pi.reshape(n, size)
            counters += run.counters
        positions[...] = self.stream_values(out, positions)
        return phi, pi, counters

    def _bank_echo(self, forcing, nudges, phi, pi, acc, forcing_obs, counters, conversion, obs_scale, stream_counts):
        gain, nudge_gain, _ = conversion
        f = self._codes(forcing, 1.0, stream_counts, kernels.INPUT_SATURATED)
        q = self._codes(nudges, nudge_gain / gain, stream_counts, kernels.NUDGE_SATURATED)
        rows, steps, size = f.shape
        if steps == 0:
            return
        used = self._accumulator_rows()
        for group in self._row_groups(rows, size):
            n = group.stop - group.start
            pair_acc = acc[group][:, used, :].transpose(0, 2, 1).reshape(n * size, len(used))
            run = self._run("echo", steps, _beats(f[group, ::-1]), _lanes(phi[group]), _lanes(pi[group]),
                            nudges=_beats(q[group, ::-1]), acc=pair_acc)
            observable = run.out.reshape(steps, n, size)[::-1].transpose(1, 0, 2)
            forcing_obs[group] = observable if forcing_obs.dtype.kind != "f" else observable * obs_scale
            phi[group] = run.phi.reshape(n, size, 2).transpose(0, 2, 1)
            pi[group] = run.pi.reshape(n, size, 2).transpose(0, 2, 1)
            acc[group, used, :] = run.acc.reshape(n, size, len(used)).transpose(0, 2, 1)
            counters += run.counters

    def _run(self, mode: str, steps: int, forcing, phi, pi, **extra) -> sim.RunResult:
        self.last_run = self.simulation().run(mode=mode, params=self.param_codes, phi=phi, pi=pi, forcing=forcing,
                                              steps=steps, stall_seed=self.stall_seed, **extra)
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
