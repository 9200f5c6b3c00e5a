"""Fold BatchNorm's eval statistics into the affine maps that read the normalised tensor.

u = (x − μ)/σ is affine in x, so a consumer that is affine in u absorbs it: the HRU input map
B u = (B/σ) x − B(μ/σ) becomes a scaled B plus a bias on the forcing, and the readout's skip
D⊙u = (D/σ)⊙x − D⊙μ/σ a scaled D plus a readout bias. The board then never sees a norm. A norm
with any consumer that cannot absorb it (e.g. one reading it as bank positions) is kept.
"""

from __future__ import annotations

import numpy as np

from ..ir import HWIR, Node

# kind → (role of the linear weight, index of the input it multiplies); the bias role is "bias".
ABSORBERS = {"affine": ("weight", 0), "head": ("weight", 0), "readout": ("D", 1)}


def _absorbs(node: Node, norm: str) -> bool:
    """Whether `node` reads `norm` only through its linear weight."""
    if node.kind not in ABSORBERS:
        return False
    return node.inputs[ABSORBERS[node.kind][1]] == norm and node.inputs.count(norm) == 1


def _absorb(node: Node, norm: Node, scale, shift, weights: dict) -> Node:
    """`node` reading norm's input instead, its weight scaled and the shift moved into its bias."""
    role, index = ABSORBERS[node.kind]
    weight = weights[node.params[role]].astype(np.float64)
    offset = weight @ shift if weight.ndim == 2 else weight * shift
    bias_name = node.params.get("bias", f"{node.name}.bias")
    bias = weights[bias_name].astype(np.float64) if "bias" in node.params else 0.0
    weights[node.params[role]] = weight * scale
    weights[bias_name] = bias + offset
    inputs = list(node.inputs)
    inputs[index] = norm.inputs[0]
    return node.replace(inputs=tuple(inputs), params=node.params | {"bias": bias_name})


def fold_norm(ir: HWIR) -> HWIR:
    """A new HWIR without norm nodes wherever every consumer can absorb them."""
    weights = dict(ir.weights)
    updated: dict[str, Node] = {}
    folded = set()
    for norm in (node for node in ir.nodes if node.kind == "norm"):
        consumers = ir.consumers(norm.name)
        if not consumers or not all(_absorbs(node, norm.name) for node in consumers):
            continue
        scale = 1.0 / np.sqrt(ir.param(norm, "var").astype(np.float64) + norm.attrs["eps"])
        shift = -ir.param(norm, "mean").astype(np.float64) * scale
        for node in consumers:
            updated[node.name] = _absorb(updated.get(node.name, node), norm, scale, shift, weights)
        folded.add(norm.name)
    nodes = [updated.get(node.name, node) for node in ir.nodes if node.name not in folded]
    used = {name for node in nodes for name in node.params.values()}
    return ir.after_pass("fold_norm", nodes=nodes, weights={k: v for k, v in weights.items() if k in used})
