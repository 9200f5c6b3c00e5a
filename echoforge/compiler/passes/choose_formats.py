"""Choose a signed fixed-point format Q(int, frac) for every tensor, under a target's word length.

Each tensor gets the fewest integer bits that hold its calibrated abs-max (activations) or its
largest weight (params) times 2^headroom_bits, and the rest of the word as fraction bits. With the
target's shared_state_format, a bank's forcing, positions, momenta and bias b — and the forcing's
producer — share the widest of their formats. Each node records its tightest tensor: headroom in
bits above the observed abs-max and a risk (high: saturates on the calibration data; medium: less
headroom than asked for; low).
"""

from __future__ import annotations

import math

import numpy as np

from ..capabilities import Capabilities
from ..errors import fail
from ..ir import HWIR, Format, Node, Saturation

Tensor = tuple[str, str]  # (node name, role)


def _abs_max(ir: HWIR, node: Node) -> dict[str, float]:
    missing = [role for role in node.activations if role not in node.ranges]
    if missing:
        raise fail(ir.provenance.source, node.name, f"no calibrated range for {', '.join(missing)}",
                   "run the calibrate pass first")
    values = {role: node.ranges[role].absmax for role in node.activations}
    return values | {role: float(np.abs(ir.param(node, role)).max(initial=0.0)) for role in node.params}


def _int_bits(value: float, word: int, headroom_bits: float, caps: Capabilities) -> int:
    """Fewest integer bits whose format holds value·2^headroom (the most the word allows if none)."""
    widest = word - caps.min_frac_bits
    target = value * 2.0 ** headroom_bits
    return next((bits for bits in range(caps.min_int_bits, widest + 1)
                 if Format(bits, word - bits).max_value >= target), widest)


def _shared_state(ir: HWIR) -> list[list[Tensor]]:
    """Per bank, the tensors the core adds to each other and that therefore share one format."""
    groups = []
    for bank in (node for node in ir.nodes if node.kind == "hru_bank"):
        producer = ir.node(bank.inputs[0])
        roles = ["forcing", "positions", "momenta"] + (["b"] if "b" in bank.params else [])
        groups.append([(bank.name, role) for role in roles] + [(producer.name, producer.activations[0])])
    return groups


def _headroom(value: float, fmt: Format) -> float:
    return math.inf if value == 0 else math.log2(fmt.max_value / value)


def _risk(headroom: float, wanted: float) -> str:
    return "high" if headroom < 0 else "medium" if headroom < wanted else "low"


def choose_formats(ir: HWIR, caps: Capabilities, word_bits: int | None = None,
                   headroom_bits: float = 1.0) -> HWIR:
    """A new HWIR with a format for every tensor and a saturation record per node."""
    word = caps.default_word_bits if word_bits is None else word_bits
    if word not in caps.word_bits:
        raise fail(ir.provenance.source, None, f"word length {word} is not supported by {caps.name}",
                   f"choose one of {list(caps.word_bits)}")
    values = {(node.name, role): value for node in ir.nodes for role, value in _abs_max(ir, node).items()}
    bits = {tensor: _int_bits(value, word, headroom_bits, caps) for tensor, value in values.items()}
    if caps.shared_state_format:
        for group in _shared_state(ir):
            widest = max(bits[tensor] for tensor in group)
            bits.update(dict.fromkeys(group, widest))
    nodes = []
    for node in ir.nodes:
        formats = {role: Format(bits[node.name, role], word - bits[node.name, role])
                   for role in (*node.activations, *node.params)}
        room = {role: _headroom(values[node.name, role], fmt) for role, fmt in formats.items()}
        tightest = min(room, key=room.get)
        saturation = Saturation(tightest, room[tightest], _risk(room[tightest], headroom_bits))
        nodes.append(node.replace(formats=formats, saturation=saturation))
    target = {"name": caps.name, "word_bits": word, "headroom_bits": headroom_bits}
    return ir.after_pass("choose_formats", nodes=nodes, target=target)
