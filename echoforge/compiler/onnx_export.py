"""Export to ONNX with standard ops only (opset 20), built node by node with onnx.helper.

The graph is written from the HWIR, so the ONNX file and the HWIR describe one computation, and the
ONNX frontend can read it back to the same HWIR. Conventions that make that possible:

* every HWIR node becomes a group of ONNX nodes named ``<hwir node>/<i>``; the group's output tensor
  is named after the HWIR node, intermediate tensors after the ONNX node that makes them;
* initializers are exactly the HWIR weights (same names, float32, same layout); structural
  constants (transposes' zeros, axes, 0.5) are ``Constant`` nodes;
* the oscillator bank is a ``Scan`` over time whose body is one drift-kick-drift leapfrog step
  (m = ϕ + (δ/2)π; π ← π − δ F(m, f); ϕ = m + (δ/2)π, F = a m − f or a m + c tanh(w m + f + b)),
  reading the bank's parameters from the outer graph; the state starts at rest;
* metadata_props carry the model section (JSON), the HRU kind, integrator and HWIR schema version.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .frontend_checkpoint import from_model
from .ir import ECHOFORGE_VERSION, HWIR, INTEGRATOR, SCHEMA_VERSION, Node

OPSET = 20  # Gelu is a standard op from opset 20
IR_VERSION = 10
META_MODEL = "echoforge.model"
META_HRU_KIND = "echoforge.hru_kind"
META_INTEGRATOR = "echoforge.integrator"
META_SCHEMA = "echoforge.hwir_schema_version"
META_VERSION = "echoforge.version"
POINTWISE_OPS = {"gelu": "Gelu", "sigmoid": "Sigmoid", "tanh": "Tanh", "identity": "Identity"}
INT64_MAX = np.iinfo(np.int64).max


class _Group:
    """The ONNX nodes of one HWIR node; the last node's last output is renamed to the HWIR node's name."""

    def __init__(self, name: str):
        self.name = name
        self.nodes: list[onnx.NodeProto] = []

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        name = f"{self.name}/{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=name, **attrs))
        return name

    def const(self, value, dtype=np.int64) -> str:
        return self.op("Constant", value=numpy_helper.from_array(np.asarray(value, dtype=dtype)))

    def matmul(self, x: str, weight: str) -> str:
        """x Wᵀ for a weight stored (out, in) as in torch and in the HWIR."""
        return self.op("MatMul", x, self.op("Transpose", weight))

    def finish(self) -> list[onnx.NodeProto]:
        self.nodes[-1].output[-1] = self.name
        return self.nodes


def _affine(g: _Group, node: Node, x: list[str]) -> None:
    y = g.matmul(x[0], node.params["weight"])
    if "bias" in node.params:
        g.op("Add", y, node.params["bias"])


def _norm(g: _Group, node: Node, x: list[str]) -> None:
    """BatchNormalization (inference) over the feature axis, which ONNX wants second."""
    width = node.shape[-1]
    channels_first = g.op("Transpose", x[0], perm=[0, 2, 1])
    ones, zeros = g.const(np.ones(width), np.float32), g.const(np.zeros(width), np.float32)
    y = g.op("BatchNormalization", channels_first, ones, zeros, node.params["mean"], node.params["var"],
             epsilon=node.attrs["eps"])
    g.op("Transpose", y, perm=[0, 2, 1])


def _force(body: _Group, node: Node, m: str, f: str) -> str:
    """∂V/∂ϕ at the mid position m under forcing f."""
    p = node.params
    stiffness = body.op("Mul", p["a"], m)
    if node.attrs["hru_kind"] == "linear":
        return body.op("Sub", stiffness, f)
    z = body.op("Add", body.op("Add", body.op("Mul", p["w"], m), f), p["b"])
    return body.op("Add", stiffness, body.op("Mul", p["c"], body.op("Tanh", z)))


def _leapfrog_body(node: Node, half_delta: str) -> onnx.GraphProto:
    """One leapfrog step: state (ϕ, π), scanned input f; outputs (ϕ', π') and ϕ' as the scan output."""
    body = _Group(f"{node.name}/step")
    lanes = node.shape[-1]
    phi, pi, f = (f"{node.name}/{s}" for s in ("phi", "pi", "f"))
    m = body.op("Add", phi, body.op("Mul", half_delta, pi))
    pi_next = body.op("Sub", pi, body.op("Mul", node.params["delta"], _force(body, node, m, f)))
    phi_next = body.op("Add", m, body.op("Mul", half_delta, pi_next))
    body.op("Identity", phi_next)
    nodes = body.finish()
    state = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", lanes]) for name in (phi, pi, f)]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", lanes])
               for name in (phi_next, pi_next, body.name)]
    return helper.make_graph(nodes, body.name, state, outputs)


def _bank(g: _Group, node: Node, x: list[str]) -> None:
    half_delta = g.op("Mul", node.params["delta"], g.const(0.5, np.float32))
    batch = g.op("Gather", g.op("Shape", x[0]), g.const([0]), axis=0)
    rest = g.op("ConstantOfShape", g.op("Concat", batch, g.const([node.shape[-1]]), axis=0),
                value=numpy_helper.from_array(np.zeros(1, np.float32)))
    scan = helper.make_node("Scan", [rest, rest, x[0]], [f"{g.name}/phi_end", f"{g.name}/pi_end", f"{g.name}/positions"],
                            name=f"{g.name}/{len(g.nodes)}", num_scan_inputs=1,
                            scan_input_axes=[1], scan_output_axes=[1],
                            body=_leapfrog_body(node, half_delta))
    g.nodes.append(scan)


def _readout(g: _Group, node: Node, x: list[str]) -> None:
    y = g.op("Add", g.matmul(x[0], node.params["C"]), g.op("Mul", x[1], node.params["D"]))
    if "bias" in node.params:
        g.op("Add", y, node.params["bias"])


def _pointwise(g: _Group, node: Node, x: list[str]) -> None:
    g.op(POINTWISE_OPS[node.attrs["fn"]], x[0])


def _glu(g: _Group, node: Node, x: list[str]) -> None:
    p = node.params
    value = g.op("Add", g.matmul(x[0], p["value_weight"]), p["value_bias"])
    gate = g.op("Sigmoid", g.op("Add", g.matmul(x[0], p["gate_weight"]), p["gate_bias"]))
    g.op("Mul", value, gate)


def _add(g: _Group, node: Node, x: list[str]) -> None:
    g.op("Add", x[0], x[1])


def _pool(g: _Group, node: Node, x: list[str]) -> None:
    if node.attrs["mode"] == "mean":
        g.op("ReduceMean", x[0], g.const([1]), keepdims=0)
    else:
        step = node.attrs["step"]
        g.op("Slice", x[0], g.const([step - 1]), g.const([INT64_MAX]), g.const([1]), g.const([step]))


EMITTERS = {"affine": _affine, "head": _affine, "norm": _norm, "hru_bank": _bank, "readout": _readout,
            "pointwise": _pointwise, "glu": _glu, "add": _add, "pool": _pool}


def _value_info(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _metadata(ir: HWIR) -> dict[str, str]:
    hru = ir.model["hssm"]["hru"]
    return {META_MODEL: json.dumps(ir.model, sort_keys=True), META_HRU_KIND: hru,
            META_INTEGRATOR: INTEGRATOR, META_SCHEMA: SCHEMA_VERSION, META_VERSION: ECHOFORGE_VERSION}


def to_onnx(ir: HWIR) -> onnx.ModelProto:
    """The float computation of `ir` as a checked ONNX model."""
    nodes, inputs = [], []
    for node in ir.nodes:
        if node.kind == "input":
            inputs.append(_value_info(node.name, node.shape))
            continue
        group = _Group(node.name)
        EMITTERS[node.kind](group, node, list(node.inputs))
        nodes.extend(group.finish())
    initializers = [numpy_helper.from_array(array, name) for name, array in ir.weights.items()]
    outputs = [_value_info(name, ir.node(name).shape) for name in ir.outputs]
    graph = helper.make_graph(nodes, "echoforge_hssm", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="echoforge", producer_version=ECHOFORGE_VERSION)
    model.ir_version = IR_VERSION
    helper.set_model_props(model, _metadata(ir))
    onnx.checker.check_model(model, full_check=True)
    return model


def export_onnx(source, path: str | Path, config: dict | None = None) -> Path:
    """Write an HSSM (evaluated as in eval mode) or an HWIR to `path` as ONNX; returns the path.

    `config` (a run config) adds the training options to the metadata of an in-memory HSSM.
    """
    ir = source if isinstance(source, HWIR) else from_model(source, config)
    path = Path(path)
    onnx.save(to_onnx(ir), path)
    return path
