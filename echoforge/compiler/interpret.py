"""Float interpreter of HWIR graphs: the reference meaning of every node kind, in float64.

calibrate runs it to observe value ranges, and tests run it to show that an HWIR computes what the
torch model computes. The oscillator bank runs in the float64 core of ``echoforge.models`` — the
code the torch HRU itself calls — so the dynamics exist once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from ..models.core import FloatCore, OscillatorParams
from .errors import fail
from .ir import HWIR, Node, show

Tensors = dict[str, np.ndarray]
Evaluator = Callable[[Node, list[np.ndarray], dict[str, np.ndarray]], Tensors]


def _linear(x, weight, bias=None):
    y = x @ weight.T
    return y if bias is None else y + bias


def _torch_fn(fn):
    return lambda x: fn(torch.from_numpy(x)).numpy()


POINTWISE = {"gelu": _torch_fn(torch.nn.functional.gelu), "sigmoid": _torch_fn(torch.sigmoid),
             "tanh": np.tanh, "identity": lambda x: x}


def _affine(node, inputs, p):
    return {"out": _linear(inputs[0], p["weight"], p.get("bias"))}


def _norm(node, inputs, p):
    return {"out": (inputs[0] - p["mean"]) / np.sqrt(p["var"] + node.attrs["eps"])}


def _bank(node, inputs, p):
    """Positions and momenta of the leapfrog from rest, and the forcing that drove it."""
    forcing = np.ascontiguousarray(inputs[0])
    core = FloatCore(OscillatorParams(node.attrs["hru_kind"], **p))
    rest = np.zeros((forcing.shape[0], forcing.shape[2]))
    positions, momenta = core.trajectory(forcing, rest, rest)
    return {"positions": positions, "forcing": forcing, "momenta": momenta}


def _readout(node, inputs, p):
    positions, u = inputs
    return {"out": _linear(positions, p["C"], p.get("bias")) + p["D"] * u}


def _pointwise(node, inputs, p):
    return {"out": POINTWISE[node.attrs["fn"]](inputs[0])}


def _glu(node, inputs, p):
    value = _linear(inputs[0], p["value_weight"], p["value_bias"])
    gate = _linear(inputs[0], p["gate_weight"], p["gate_bias"])
    return {"out": value * POINTWISE["sigmoid"](gate)}


def _add(node, inputs, p):
    return {"out": inputs[0] + inputs[1]}


def _pool(node, inputs, p):
    x = inputs[0]
    if node.attrs["mode"] == "mean":
        return {"out": x.mean(axis=1)}
    step = node.attrs["step"]
    return {"out": x[:, step - 1::step]}


EVALUATORS = {"affine": _affine, "head": _affine, "norm": _norm, "hru_bank": _bank,
              "readout": _readout, "pointwise": _pointwise, "glu": _glu, "add": _add, "pool": _pool}


def trace(ir: HWIR, x, evaluators: Mapping[str, Evaluator] | None = None) -> dict[str, Tensors]:
    """Every tensor the graph computes on input `x` (batch, time, features): node → role → array.

    `evaluators` (kind → function) replace the float meaning of some kinds: how a target runs its
    device nodes while every other node keeps this reference meaning.
    """
    x = np.asarray(x, dtype=np.float64)
    evaluate = EVALUATORS | dict(evaluators or {})
    tensors: dict[str, Tensors] = {}
    for node in ir.nodes:
        if node.kind == "input":
            tensors[node.name] = {"out": _checked_input(ir, node, x)}
            continue
        inputs = [_output(tensors, ir.node(name)) for name in node.inputs]
        params = {role: ir.weights[name].astype(np.float64) for role, name in node.params.items()}
        tensors[node.name] = evaluate[node.kind](node, inputs, params)
    return tensors


def _checked_input(ir: HWIR, node: Node, x: np.ndarray) -> np.ndarray:
    if x.ndim != len(node.shape) or x.shape[-1] != node.shape[-1]:
        raise fail(ir.provenance.source, node.name, f"the data has shape {list(x.shape)} but the model "
                   f"takes {show(node.shape)}", "give data with as many channels as the model was trained on")
    return x


def _output(tensors: dict[str, Tensors], node: Node) -> np.ndarray:
    return tensors[node.name][node.activations[0]]


def run(ir: HWIR, x, evaluators: Mapping[str, Evaluator] | None = None) -> np.ndarray:
    """The graph's (first) output on input `x`, in float64 (see trace for `evaluators`)."""
    tensors = trace(ir, x, evaluators)
    return _output(tensors, ir.node(ir.outputs[0]))
