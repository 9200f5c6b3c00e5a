"""HWIR, the hardware IR: a versioned, self-describing model of what goes on the board (DESIGN §3).

On disk an HWIR is two files: a YAML graph (nodes, shapes, number formats, placement, provenance)
and an ``.npz`` of float32 weights that the YAML references by file name and SHA-256. In memory it
is an `HWIR` of frozen `Node`s plus a dict of read-only arrays; passes build new ones and never
mutate. Every tensor a node uses is named in its ``params`` (role → weight name), so a weight can be
found, hashed and checked without knowing the node kind. docs/ir.md describes every field.

Everything wrong with a file — syntax, version, kinds, weights, shapes — raises `IRError` with a
single line that names the file and node, what is wrong and what to do.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import yaml

from .errors import IRError, fail
from .migrations import migrate

SCHEMA_VERSION = "1.0"
# From the installed distribution: an editable install may expose echoforge as a namespace package,
# without its __init__'s __version__.
ECHOFORGE_VERSION = metadata.version("echoforge")
INTEGRATOR = "leapfrog-dkd"
PLACEMENTS = (None, "host", "device")
BATCH, TIME = "batch", "time"
MEMORY = "<memory>"  # `where` of an HWIR that was never saved


# ------------------------------------------------------------------------------------ values


class _Flow(dict):
    """A mapping written on one line in YAML (formats, ranges: many small records)."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Flow, lambda dumper, data: dumper.represent_mapping(
    "tag:yaml.org,2002:map", data, flow_style=True))


@dataclass(frozen=True)
class Format:
    """Signed fixed point Q(int_bits, frac_bits): code q stands for q·2^−frac_bits, |q| ≤ 2^(word−1)−1.

    int_bits counts the sign bit (the emulator's Fixed(word, frac) is Q(word − frac, frac)).
    """

    int_bits: int
    frac_bits: int
    rounding: str = "nearest-away"
    saturation: str = "clamp"

    @property
    def word_bits(self) -> int:
        return self.int_bits + self.frac_bits

    @property
    def max_value(self) -> float:
        return (2 ** (self.word_bits - 1) - 1) * 2.0 ** -self.frac_bits

    def to_yaml(self) -> dict:
        return _Flow(q=[self.int_bits, self.frac_bits], rounding=self.rounding, saturation=self.saturation)

    @classmethod
    def from_yaml(cls, data: dict) -> "Format":
        int_bits, frac_bits = data["q"]
        return cls(int(int_bits), int(frac_bits), data["rounding"], data["saturation"])


@dataclass(frozen=True)
class Range:
    """Observed value range of one tensor over the calibration data."""

    min: float
    max: float
    absmax: float

    @classmethod
    def of(cls, values: np.ndarray) -> "Range":
        values = np.asarray(values, dtype=np.float64)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        return cls(low, high, max(abs(low), abs(high)))

    def to_yaml(self) -> dict:
        return _Flow(dataclasses.asdict(self))

    @classmethod
    def from_yaml(cls, data: dict) -> "Range":
        return cls(float(data["min"]), float(data["max"]), float(data["absmax"]))


@dataclass(frozen=True)
class Saturation:
    """The node's tightest tensor under its formats: headroom in bits above the calibrated abs-max."""

    tensor: str
    headroom_bits: float
    risk: str

    def to_yaml(self) -> dict:
        return _Flow(dataclasses.asdict(self))

    @classmethod
    def from_yaml(cls, data: dict) -> "Saturation":
        return cls(data["tensor"], float(data["headroom_bits"]), data["risk"])


@dataclass(frozen=True)
class Finding:
    """One design-rule result: the rule, the node it is about, error or warning, and a message."""

    rule: str
    node: str
    severity: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity} [{self.rule}] node {self.node!r}: {self.message}"

    def to_yaml(self) -> dict:
        return _Flow(dataclasses.asdict(self))


@dataclass(frozen=True)
class Provenance:
    """Where an HWIR came from and what has been done to it."""

    source: str
    frontend: str
    echoforge_version: str = ECHOFORGE_VERSION
    created: str = field(default_factory=lambda: datetime.datetime.now(datetime.timezone.utc)
                         .isoformat(timespec="seconds"))
    source_sha256: str | None = None
    passes: tuple[str, ...] = ()

    def to_yaml(self) -> dict:
        return dataclasses.asdict(self) | {"passes": list(self.passes)}

    @classmethod
    def from_yaml(cls, data: dict) -> "Provenance":
        return cls(**(data | {"passes": tuple(data.get("passes", ()))}))


# ------------------------------------------------------------------------------------ nodes


@dataclass(frozen=True)
class Node:
    """One operation of the graph.

    ``shape`` is the output shape, symbolic dims as strings ("batch", "time", "time//4");
    ``params`` maps a role ("weight", "a", …) to a weight name; ``formats``/``ranges`` map a tensor
    role (an activation such as "out", or a param role) to its number format / calibrated range.
    """

    name: str
    kind: str
    inputs: tuple[str, ...] = ()
    shape: tuple = ()
    params: dict[str, str] = field(default_factory=dict)
    attrs: dict = field(default_factory=dict)
    placement: str | None = None
    formats: dict[str, Format] = field(default_factory=dict)
    ranges: dict[str, Range] = field(default_factory=dict)
    saturation: Saturation | None = None

    def replace(self, **changes) -> "Node":
        return dataclasses.replace(self, **changes)

    @property
    def activations(self) -> tuple[str, ...]:
        """Roles of the tensors this node computes; the first is its output."""
        return KINDS[self.kind].activations

    def to_yaml(self) -> dict:
        data = {"name": self.name, "kind": self.kind, "inputs": list(self.inputs),
                "shape": list(self.shape), "placement": self.placement}
        optional = {"params": dict(self.params), "attrs": dict(self.attrs),
                    "formats": {k: v.to_yaml() for k, v in self.formats.items()},
                    "ranges": {k: v.to_yaml() for k, v in self.ranges.items()},
                    "saturation": self.saturation and self.saturation.to_yaml()}
        return data | {k: v for k, v in optional.items() if v}

    @classmethod
    def from_yaml(cls, data: dict) -> "Node":
        return cls(name=data["name"], kind=data["kind"], inputs=tuple(data.get("inputs", ())),
                   shape=tuple(data.get("shape", ())), params=dict(data.get("params", {})),
                   attrs=dict(data.get("attrs", {})), placement=data.get("placement"),
                   formats={k: Format.from_yaml(v) for k, v in data.get("formats", {}).items()},
                   ranges={k: Range.from_yaml(v) for k, v in data.get("ranges", {}).items()},
                   saturation=data.get("saturation") and Saturation.from_yaml(data["saturation"]))


class ShapeError(Exception):
    """Raised by a shape rule; validation turns it into an IRError naming file and node."""


Shape = tuple
ShapeRule = Callable[[Node, list[Shape], dict[str, Shape]], Shape]


@dataclass(frozen=True)
class Kind:
    """What a node kind needs: input count, param roles, attribute values, and its shape rule."""

    inputs: int
    params: tuple[str, ...]
    shape: ShapeRule
    optional: tuple[str, ...] = ()
    attrs: Mapping[str, tuple] = field(default_factory=dict)
    activations: tuple[str, ...] = ("out",)


def show(shape: Shape) -> str:
    """A shape as written in the YAML: [batch, time, 8]."""
    return "[" + ", ".join(map(str, shape)) + "]"


def _features(shape: Shape, width: int, what: str, source: str) -> None:
    if not shape or shape[-1] != width:
        raise ShapeError(f"input {source!r} has shape {show(shape)} but {what} expects {width} features")


def _vector(params: dict[str, Shape], node: Node, role: str, size: int) -> None:
    if role in params and params[role] != (size,):
        raise ShapeError(f"param {role} {node.params[role]!r} has shape {params[role]}, expected ({size},)")


def _linear_shape(node, inputs, params):
    out, width = _matrix(node, params, "weight")
    _features(inputs[0], width, f"weight {node.params['weight']!r} {params['weight']}", node.inputs[0])
    _vector(params, node, "bias", out)
    return inputs[0][:-1] + (out,)


def _matrix(node: Node, params: dict[str, Shape], role: str) -> Shape:
    if len(params[role]) != 2:
        raise ShapeError(f"param {role} {node.params[role]!r} has shape {params[role]}, expected a matrix")
    return params[role]


def _same_width_shape(roles: tuple[str, ...]) -> ShapeRule:
    """Shape rule of a width-preserving node whose params are per-feature vectors."""
    def rule(node, inputs, params):
        width = inputs[0][-1] if inputs[0] else 0
        for role in roles:
            _vector(params, node, role, width)
        return inputs[0]
    return rule


def _bank_shape(node, inputs, params):
    if len(inputs[0]) != 3:
        raise ShapeError(f"input {node.inputs[0]!r} has shape {show(inputs[0])}, expected (batch, time, lanes)")
    if node.attrs.get("hru_kind") == "nonlinear":
        missing = [role for role in ("w", "b", "c") if role not in node.params]
        if missing:
            raise ShapeError(f"a nonlinear bank needs params w, b, c; {', '.join(missing)} missing")
    return _same_width_shape(("a", "delta", "w", "b", "c"))(node, inputs, params)


def _readout_shape(node, inputs, params):
    positions, u = inputs
    width, lanes = _matrix(node, params, "C")
    _features(positions, lanes, f"C {node.params['C']!r} {params['C']}", node.inputs[0])
    _features(u, width, f"the skip D {node.params['D']!r}", node.inputs[1])
    _vector(params, node, "D", width)
    _vector(params, node, "bias", width)
    return positions[:-1] + (width,)


def _glu_shape(node, inputs, params):
    width = inputs[0][-1] if inputs[0] else 0
    for role in ("value_weight", "gate_weight"):
        if params[role] != (width, width):
            raise ShapeError(f"input {node.inputs[0]!r} has {width} features but {role} "
                             f"{node.params[role]!r} is {params[role]}, expected ({width}, {width})")
    for role in ("value_bias", "gate_bias"):
        _vector(params, node, role, width)
    return inputs[0]


def _add_shape(node, inputs, params):
    if inputs[0] != inputs[1]:
        raise ShapeError(f"inputs {node.inputs[0]!r} {show(inputs[0])} and {node.inputs[1]!r} "
                         f"{show(inputs[1])} differ in shape")
    return inputs[0]


def _pool_shape(node, inputs, params):
    if len(inputs[0]) != 3:
        raise ShapeError(f"input {node.inputs[0]!r} has shape {show(inputs[0])}, expected (batch, time, features)")
    batch, time, width = inputs[0]
    if node.attrs["mode"] == "mean":
        return (batch, width)
    step = node.attrs.get("step")
    if not isinstance(step, int) or step < 1:
        raise ShapeError(f"subsample pooling needs an integer step ≥ 1, got {step!r}")
    return (batch, time if step == 1 else f"{time}//{step}", width)


def _declared_shape(node, inputs, params):
    return node.shape


KINDS: dict[str, Kind] = {
    "input": Kind(0, (), _declared_shape),
    "affine": Kind(1, ("weight",), _linear_shape, optional=("bias",)),
    "norm": Kind(1, ("mean", "var"), _same_width_shape(("mean", "var")), attrs={"eps": (float,)}),
    "hru_bank": Kind(1, ("a", "delta"), _bank_shape, optional=("w", "b", "c"),
                     attrs={"hru_kind": ("linear", "nonlinear"), "integrator": (INTEGRATOR,)},
                     activations=("positions", "forcing", "momenta")),
    "readout": Kind(2, ("C", "D"), _readout_shape, optional=("bias",)),
    "pointwise": Kind(1, (), _same_width_shape(()), attrs={"fn": ("gelu", "sigmoid", "tanh", "identity")}),
    "glu": Kind(1, ("value_weight", "value_bias", "gate_weight", "gate_bias"), _glu_shape),
    "add": Kind(2, (), _add_shape),
    "pool": Kind(1, (), _pool_shape, attrs={"mode": ("mean", "subsample")}),
    "head": Kind(1, ("weight",), _linear_shape, optional=("bias",)),
}


# ------------------------------------------------------------------------------------ graph


def _frozen(array) -> np.ndarray:
    array = np.array(array, dtype=np.float32)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class HWIR:
    """A graph of nodes in execution order, its float32 weights, and what it was made from.

    ``model`` holds what rebuilds the torch HSSM without the dataset (num_inputs, num_outputs,
    learning, dtype and the HSSM keyword arguments under ``hssm``). ``target``, ``calibration``,
    ``stream`` and ``findings`` are filled in by the passes.
    """

    nodes: tuple[Node, ...]
    weights: dict[str, np.ndarray]
    outputs: tuple[str, ...]
    model: dict
    provenance: Provenance
    target: dict | None = None
    calibration: dict | None = None
    stream: dict | None = None
    findings: tuple[Finding, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "weights", {k: _frozen(v) for k, v in sorted(self.weights.items())})

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node {name!r} in this HWIR")

    def param(self, node: Node, role: str) -> np.ndarray:
        return self.weights[node.params[role]]

    def consumers(self, name: str) -> list[Node]:
        return [node for node in self.nodes if name in node.inputs]

    def replace(self, **changes) -> "HWIR":
        return dataclasses.replace(self, **changes)

    def after_pass(self, name: str, **changes) -> "HWIR":
        """A new HWIR with `changes`, the pass recorded in the provenance."""
        provenance = dataclasses.replace(self.provenance, passes=self.provenance.passes + (name,))
        return self.replace(provenance=provenance, **changes)

    def graph(self) -> dict:
        """The YAML document without the weights reference."""
        optional = {"target": self.target, "calibration": self.calibration, "stream": self.stream,
                    "findings": [f.to_yaml() for f in self.findings]}
        return {"schema_version": SCHEMA_VERSION, "provenance": self.provenance.to_yaml(),
                "model": self.model, "outputs": list(self.outputs),
                **{k: v for k, v in optional.items() if v},
                "nodes": [node.to_yaml() for node in self.nodes]}

    def equivalent(self, other: "HWIR") -> bool:
        """Same graph and weights, whatever the provenance."""
        mine, theirs = self.graph(), other.graph()
        mine.pop("provenance"), theirs.pop("provenance")
        return mine == theirs and _same_weights(self.weights, other.weights)

    def __eq__(self, other) -> bool:
        return isinstance(other, HWIR) and self.equivalent(other) and self.provenance == other.provenance

    __hash__ = None


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and np.array_equal(a[k], b[k])
                                        for k in a)


def infer_shapes(nodes, weights: Mapping[str, np.ndarray], where: str = MEMORY) -> tuple[Node, ...]:
    """Nodes with their output shapes computed from their inputs and params (input nodes keep theirs)."""
    shapes: dict[str, Shape] = {}
    out = []
    for node in nodes:
        node = node.replace(shape=_node_shape(node, shapes, weights, where))
        shapes[node.name] = node.shape
        out.append(node)
    return tuple(out)


def _node_shape(node: Node, shapes: dict, weights: Mapping, where: str) -> Shape:
    kind = KINDS[node.kind]
    params = {role: tuple(weights[name].shape) for role, name in node.params.items()}
    try:
        return tuple(kind.shape(node, [shapes[name] for name in node.inputs], params))
    except ShapeError as error:
        raise fail(where, node.name, str(error), "the graph is inconsistent; re-export the model") from None


class GraphBuilder:
    """Collects nodes and their weights; a param named `role` of node `n` is stored as "n.role"."""

    def __init__(self):
        self.nodes: list[Node] = []
        self.weights: dict[str, np.ndarray] = {}

    def add(self, kind: str, name: str, inputs=(), params: Mapping[str, np.ndarray] | None = None,
            **attrs) -> str:
        refs = {}
        for role, value in (params or {}).items():
            refs[role] = f"{name}.{role}"
            self.weights[refs[role]] = np.asarray(value)
        shape = attrs.pop("shape", ())
        self.nodes.append(Node(name, kind, tuple(inputs), tuple(shape), refs, attrs))
        return name

    def build(self, outputs, model: dict, provenance: Provenance, where: str = MEMORY) -> HWIR:
        """The validated HWIR, shapes inferred; `where` names the source in errors."""
        nodes = infer_shapes(self.nodes, self.weights, where)
        return validate(HWIR(nodes, self.weights, tuple(outputs), model, provenance), where)


# ------------------------------------------------------------------------------------ validation


def validate(ir: HWIR, where: str = MEMORY) -> HWIR:
    """Check structure, references and shapes; returns `ir` or raises IRError."""
    seen: set[str] = set()
    for node in ir.nodes:
        _check_node(node, seen, ir.weights, where)
        seen.add(node.name)
    for name in ir.outputs:
        if name not in seen:
            raise fail(where, None, f"output {name!r} is not a node", "list node names under outputs")
    _check_shapes(ir, where)
    return ir


def _check_node(node: Node, earlier: set[str], weights: Mapping, where: str) -> None:
    if node.kind not in KINDS:
        raise fail(where, node.name, f"unknown node kind {node.kind!r}",
                   f"use one of {', '.join(KINDS)} (or upgrade echoforge)")
    kind = KINDS[node.kind]
    if not node.name or "/" in node.name or node.name in earlier:
        raise fail(where, node.name, "node names must be unique, non-empty and contain no '/'",
                   "rename the node")
    if len(node.inputs) != kind.inputs:
        raise fail(where, node.name, f"{node.kind} takes {kind.inputs} inputs, got {len(node.inputs)}",
                   "fix its inputs list")
    for name in node.inputs:
        if name not in earlier:
            raise fail(where, node.name, f"input {name!r} is not an earlier node",
                       "list nodes in execution order and reference existing names")
    _check_params(node, kind, weights, where)
    _check_attrs(node, kind, where)
    if node.placement not in PLACEMENTS:
        raise fail(where, node.name, f"placement {node.placement!r} is not host, device or null",
                   "fix the placement")


def _check_params(node: Node, kind: Kind, weights: Mapping, where: str) -> None:
    missing = [role for role in kind.params if role not in node.params]
    unknown = [role for role in node.params if role not in kind.params + kind.optional]
    if missing or unknown:
        problem = f"params {missing} missing" if missing else f"unknown params {unknown}"
        raise fail(where, node.name, f"{node.kind}: {problem}",
                   f"give params {', '.join(kind.params)} (optional: {', '.join(kind.optional) or 'none'})")
    for role, name in node.params.items():
        if name not in weights:
            raise fail(where, node.name, f"tensor {name!r} (param {role}) is missing from the weights",
                       "re-export the model, or restore the weights file that goes with this graph")


def _check_attrs(node: Node, kind: Kind, where: str) -> None:
    for attr, allowed in kind.attrs.items():
        value = node.attrs.get(attr)
        ok = isinstance(value, allowed[0]) if isinstance(allowed[0], type) else value in allowed
        if not ok:
            expected = allowed[0].__name__ if isinstance(allowed[0], type) else " | ".join(allowed)
            raise fail(where, node.name, f"attribute {attr}={value!r} is not valid",
                       f"expected {expected}")


def _check_shapes(ir: HWIR, where: str) -> None:
    for inferred, node in zip(infer_shapes(ir.nodes, ir.weights, where), ir.nodes):
        if inferred.shape != node.shape:
            raise fail(where, node.name, f"declared shape {show(node.shape)} disagrees with "
                       f"{show(inferred.shape)} computed from its inputs and params",
                       "fix the shape or the connected nodes")


# ------------------------------------------------------------------------------------ files


def weights_path(path: str | Path) -> Path:
    """The weights file that goes with a graph file: model.yaml → model.npz."""
    return Path(path).with_suffix(".npz")


def _npz_bytes(weights: Mapping[str, np.ndarray]) -> bytes:
    """A deterministic .npz (fixed timestamps, sorted, stored), so its SHA-256 is a content hash."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name in sorted(weights):
            array = io.BytesIO()
            np.lib.format.write_array(array, np.ascontiguousarray(weights[name]), allow_pickle=False)
            archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)),
                             array.getvalue())
    return buffer.getvalue()


def save_ir(ir: HWIR, path: str | Path) -> Path:
    """Write `path` (.yaml) and its weights file beside it; returns the YAML path."""
    path = Path(path)
    validate(ir)
    data = _npz_bytes(ir.weights)
    npz = weights_path(path)
    npz.write_bytes(data)
    document = ir.graph()
    document = {"schema_version": document.pop("schema_version"),
                "weights": {"file": npz.name, "sha256": hashlib.sha256(data).hexdigest()}, **document}
    path.write_text(yaml.dump(document, Dumper=_Dumper, sort_keys=False, default_flow_style=None,
                              width=110, allow_unicode=True))
    return path


def load_ir(path: str | Path) -> HWIR:
    """Read, migrate and validate an HWIR; every problem is an IRError naming the file and node."""
    path = Path(path)
    where = str(path)
    document = migrate(read_yaml(path), where, SCHEMA_VERSION)
    weights = _read_weights(path, document.get("weights"), where)
    try:
        ir = HWIR(nodes=tuple(_node(data, where) for data in document["nodes"]), weights=weights,
                  outputs=tuple(document["outputs"]), model=document["model"],
                  provenance=Provenance.from_yaml(document["provenance"]),
                  target=document.get("target"), calibration=document.get("calibration"),
                  stream=document.get("stream"),
                  findings=tuple(Finding(**f) for f in document.get("findings", ())))
    except IRError:
        raise
    except (KeyError, TypeError, ValueError) as error:
        raise fail(where, None, f"malformed HWIR document ({type(error).__name__}: {error})",
                   "compare it with docs/ir.md") from None
    return validate(ir, where)


def _node(data, where: str) -> Node:
    if not isinstance(data, dict) or "name" not in data or "kind" not in data:
        raise fail(where, None, f"a node entry is not a mapping with name and kind: {data!r}",
                   "see docs/ir.md for the node fields")
    return Node.from_yaml(data)


def read_yaml(path: Path, what: str = "HWIR", writer: str = "save_ir") -> dict:
    """A YAML mapping read safely (plain data only); errors name the file and line."""
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as error:
        raise fail(str(path), None, f"cannot read the {what} file ({error.strerror})", "check the path") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "syntax error"
        raise fail(f"{path}{line}", None, f"not valid YAML ({problem})", "fix the syntax there") from None
    if not isinstance(document, dict):
        raise fail(str(path), None, f"not an {what} document (expected a mapping at the top level)",
                   f"give the .yaml written by {writer}")
    return document


def _read_weights(path: Path, reference, where: str) -> dict[str, np.ndarray]:
    if not isinstance(reference, dict) or not {"file", "sha256"} <= reference.keys():
        raise fail(where, None, "no weights reference (weights: {file, sha256})",
                   "give the .yaml written by save_ir")
    npz = path.parent / reference["file"]
    try:
        data = npz.read_bytes()
    except OSError:
        raise fail(where, None, f"weights file {npz} not found",
                   "keep the .npz written with the graph beside it") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != reference["sha256"]:
        raise fail(where, None, f"weights file {npz.name} has sha256 {digest[:16]}…, the graph records "
                   f"{str(reference['sha256'])[:16]}…", "the weights were altered or belong to another "
                   "graph; re-export the model")
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}
