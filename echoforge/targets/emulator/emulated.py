"""A whole compiled model on the emulator: the board's view of a Program.

Host nodes run in float through the interpreter's node functions (compiler/interpret.py, the
reference meaning of every kind); every device bank runs on its own EmulatorCore through the core
contract (float in, integer dynamics, float out). The difference between `EmulatedModel.run` and
the interpreter's `run` on the same HWIR is therefore exactly what fixed point does to the model.
"""

from __future__ import annotations

import warnings

import numpy as np

from echoforge.compiler.interpret import EVALUATORS, Tensors, run, trace

from .core import QUANTITIES
from .lower import Program


class EmulatedModel:
    """Runs a Program; counts saturation per bank over every call (``saturation``).

    The cores' RuntimeWarnings are silenced here because these counts replace them: callers report
    ``saturated()`` instead of a warning per batch.
    """

    def __init__(self, program: Program):
        self.program = program
        self.cores = program.cores()
        self.saturation = {name: dict.fromkeys(QUANTITIES, 0) for name in self.cores}
        self._evaluators = {"hru_bank": self._bank}

    def run(self, x) -> np.ndarray:
        """The model's output on `x` (batch, time, features), banks in fixed point."""
        return run(self.program.ir, x, self._evaluators)

    def trace(self, x) -> dict[str, Tensors]:
        """Every node's tensors on `x`. A device bank shows its positions and the forcing as its core
        quantised it; its momenta stay on the device."""
        return trace(self.program.ir, x, self._evaluators)

    def saturated(self) -> dict[str, dict[str, int]]:
        """Per bank that saturated so far, the non-zero counts by quantity (core.SaturationReport)."""
        return {name: {q: n for q, n in counts.items() if n}
                for name, counts in self.saturation.items() if any(counts.values())}

    def _bank(self, node, inputs, params) -> Tensors:
        if node.name not in self.cores:  # a bank placed on the host
            return EVALUATORS["hru_bank"](node, inputs, params)
        core, forcing = self.cores[node.name], inputs[0]
        rest = np.zeros((forcing.shape[0], forcing.shape[2]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            positions, _, _ = core.forward(forcing, rest, rest)
        for quantity, count in core.stats.counts.items():
            self.saturation[node.name][quantity] += count
        state = core.config.state
        return {"positions": positions, "forcing": state.dequantize(state.quantize(forcing)[0])}
