"""Frontend from ONNX: read a file written by `export_onnx` back into an HWIR.

It relies on the exporter's conventions (onnx_export's docstring): ONNX nodes are grouped by the
HWIR node name before the "/", a group's op sequence says which HWIR kind it is, its initializers
are the HWIR weights, and metadata_props carry what ops cannot (the model section, the integrator).
Ops outside the exporter's vocabulary are refused by name, so a foreign ONNX file fails on its first
unsupported op rather than compiling to something else.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from .errors import fail
from .ir import HWIR, INTEGRATOR, GraphBuilder, Provenance
from .onnx_export import META_HRU_KIND, META_INTEGRATOR, META_MODEL, POINTWISE_OPS

_MATMUL = ("Transpose", "MatMul")
_BANK = ("Mul", "Shape", "Gather", "Concat", "ConstantOfShape", "Scan")
_GLU = _MATMUL + ("Add",) + _MATMUL + ("Add", "Sigmoid", "Mul")
# Op sequence of a group (Constant nodes left out) → HWIR kind. An affine whose output is a graph
# output is the head.
SIGNATURES = {
    _MATMUL: "affine", _MATMUL + ("Add",): "affine",
    ("Transpose", "BatchNormalization", "Transpose"): "norm",
    _BANK: "hru_bank",
    _MATMUL + ("Mul", "Add"): "readout", _MATMUL + ("Mul", "Add", "Add"): "readout",
    **{(op,): "pointwise" for op in POINTWISE_OPS.values()},
    _GLU: "glu",
    ("Add",): "add",
    ("ReduceMean",): "pool", ("Slice",): "pool",
}
GRAPH_OPS = {op for signature in SIGNATURES for op in signature} | {"Constant"}
STEP_OPS = {"Add", "Mul", "Sub", "Tanh", "Identity"}  # the leapfrog body


def _load(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(path)
    except OSError as error:
        raise fail(str(path), None, f"cannot read the file ({error.strerror})", "check the path") from None
    except DecodeError:
        raise fail(str(path), None, "not an ONNX model", "give a file written by export_onnx") from None


def _check_ops(where: str, nodes, allowed: set[str]) -> None:
    for node in nodes:
        if node.op_type not in allowed or node.domain not in ("", "ai.onnx"):
            raise fail(where, node.name or node.output[0], f"unsupported ONNX op {node.op_type!r}",
                       f"echoforge compiles only the ops its exporter writes: {', '.join(sorted(allowed))}")


def _groups(where: str, graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    groups: dict[str, list] = defaultdict(list)
    for node in graph.node:
        prefix, slash, _ = node.name.partition("/")
        if not slash:
            raise fail(where, node.name or node.output[0], "ONNX node name is not '<hwir node>/<index>'",
                       "give a file written by export_onnx")
        groups[prefix].append(node)
    return groups


def _body(node: onnx.NodeProto) -> onnx.GraphProto:
    return next(a.g for a in node.attribute if a.name == "body")


def _attr(node: onnx.NodeProto, name: str):
    return next(onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name)


class _Reader:
    """Turns the groups of one exported graph into HWIR nodes."""

    def __init__(self, where: str, model: onnx.ModelProto):
        self.where = where
        self.meta = {p.key: p.value for p in model.metadata_props}
        self.weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.constants = {n.output[0]: numpy_helper.to_array(_attr(n, "value"))
                          for n in model.graph.node if n.op_type == "Constant"}
        self.outputs = [o.name for o in model.graph.output]
        self.attribute_readers = {"norm": self.attrs_norm, "hru_bank": self.attrs_hru_bank,
                                  "pointwise": self.attrs_pointwise, "pool": self.attrs_pool}

    def node_args(self, name: str, nodes: list) -> tuple[str, list[str], dict, dict]:
        """(kind, inputs, params, attrs) of the group `name`."""
        signature = tuple(n.op_type for n in nodes if n.op_type != "Constant")
        kind = SIGNATURES.get(signature)
        if kind is None:
            raise fail(self.where, name, f"ONNX ops {list(signature)} match no HWIR node kind",
                       "give a file written by export_onnx")
        if kind == "affine" and name in self.outputs:
            kind = "head"
        inputs, params = self.references(name, nodes)
        attrs = self.attribute_readers[kind](name, nodes) if kind in self.attribute_readers else {}
        return kind, inputs, params, attrs

    def references(self, name: str, nodes: list) -> tuple[list[str], dict]:
        """External inputs of a group, in order of use, and its weights by role."""
        produced = {out for n in nodes for out in n.output}
        used = [i for n in nodes for i in n.input] + [i for n in nodes if n.op_type == "Scan"
                                                      for b in _body(n).node for i in b.input]
        inputs, params = [], {}
        for tensor in dict.fromkeys(used):
            if tensor in self.weights:
                if not tensor.startswith(f"{name}."):
                    raise fail(self.where, name, f"uses initializer {tensor!r}, which is not named "
                               f"'{name}.<role>'", "give a file written by export_onnx")
                params[tensor[len(name) + 1:]] = self.weights[tensor]
            elif tensor and tensor not in produced and tensor not in self.constants \
                    and not tensor.startswith(f"{name}/"):
                inputs.append(tensor)
        return inputs, params

    def attrs_norm(self, name, nodes):
        (bn,) = (n for n in nodes if n.op_type == "BatchNormalization")
        return {"eps": float(_attr(bn, "epsilon"))}

    def attrs_hru_bank(self, name, nodes):
        (scan,) = (n for n in nodes if n.op_type == "Scan")
        body = _body(scan)
        _check_ops(self.where, body.node, STEP_OPS)
        kind = "nonlinear" if any(n.op_type == "Tanh" for n in body.node) else "linear"
        if self.meta.get(META_HRU_KIND) != kind or self.meta.get(META_INTEGRATOR) != INTEGRATOR:
            raise fail(self.where, name, f"the Scan body is a {kind} leapfrog but the metadata says "
                       f"{self.meta.get(META_HRU_KIND)!r}, integrator {self.meta.get(META_INTEGRATOR)!r}",
                       "re-export the model")
        return {"hru_kind": kind, "integrator": INTEGRATOR}

    def attrs_pointwise(self, name, nodes):
        return {"fn": {op: fn for fn, op in POINTWISE_OPS.items()}[nodes[0].op_type]}

    def attrs_pool(self, name, nodes):
        op = next(n for n in nodes if n.op_type != "Constant")
        if op.op_type == "ReduceMean":
            return {"mode": "mean"}
        return {"mode": "subsample", "step": int(self.constants[op.input[4]][0])}


def _input_shape(value: onnx.ValueInfoProto) -> tuple:
    return tuple(d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim)


def from_onnx(path: str | Path) -> HWIR:
    """The HWIR of an ONNX file written by export_onnx (the same HWIR its source compiled to)."""
    path = Path(path)
    where = str(path)
    model = _load(path)
    _check_ops(where, model.graph.node, GRAPH_OPS)
    reader = _Reader(where, model)
    if META_MODEL not in reader.meta:
        raise fail(where, None, f"no {META_MODEL} metadata", "export the model with echoforge's export_onnx")
    graph = GraphBuilder()
    for value in model.graph.input:
        graph.add("input", value.name, shape=_input_shape(value))
    for name, nodes in _groups(where, model.graph).items():
        kind, inputs, params, attrs = reader.node_args(name, nodes)
        graph.add(kind, name, inputs, params, **attrs)
    provenance = Provenance(source=where, frontend="onnx",
                            source_sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    return graph.build(reader.outputs, json.loads(reader.meta[META_MODEL]), provenance, where)
