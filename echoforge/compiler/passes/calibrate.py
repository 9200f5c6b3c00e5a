"""Record every tensor's value range on sample data: what choose_formats sizes the formats from."""

from __future__ import annotations

import numpy as np

from ..interpret import trace
from ..ir import HWIR, Range


def calibrate(ir: HWIR, samples) -> HWIR:
    """A new HWIR whose nodes carry min/max/abs-max of each tensor they compute on `samples`
    (batch, time, features) — for a bank its forcing, positions and momenta."""
    samples = np.asarray(samples)
    tensors = trace(ir, samples)
    nodes = [node.replace(ranges={role: Range.of(value) for role, value in tensors[node.name].items()})
             for node in ir.nodes]
    return ir.after_pass("calibrate", nodes=nodes,
                         calibration={"samples": int(samples.shape[0]), "length": int(samples.shape[1])})
