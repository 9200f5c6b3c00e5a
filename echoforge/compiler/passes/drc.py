"""Design-rule check: an HWIR against a target's capabilities, before anything runs.

Each rule is a function of (ir, node, caps) yielding findings; a finding names its rule and node.
Errors make the pass raise `DesignRuleError` (one line: the first error and how many more); warnings
— tensors that saturate on the calibration data — are recorded in the HWIR's findings.
"""

from __future__ import annotations

from ..capabilities import Capabilities
from ..errors import IRError
from ..ir import HWIR, Finding, Node


class DesignRuleError(IRError):
    """The HWIR breaks at least one design rule of the target; ``findings`` lists them all."""

    def __init__(self, message: str, findings: list[Finding]):
        super().__init__(message)
        self.findings = findings


def _error(rule: str, node: Node, message: str) -> Finding:
    return Finding(rule, node.name, "error", message)


def _banks(node: Node) -> bool:
    return node.kind == "hru_bank" and node.placement == "device"


def placed(ir, node, caps):
    if node.placement is None:
        yield _error("placed", node, "has no placement — run the place pass first")


def device_node(ir, node, caps):
    if node.placement == "device" and node.kind not in caps.device_kinds:
        yield _error("device-node", node, f"{caps.name} cannot run {node.kind} nodes on the device "
                     f"(only {', '.join(caps.device_kinds)}) — place it on the host")


def hru_kind(ir, node, caps):
    if _banks(node) and node.attrs["hru_kind"] not in caps.hru_kinds:
        yield _error("hru-kind", node, f"{caps.name} does not run {node.attrs['hru_kind']} HRUs "
                     f"(only {', '.join(caps.hru_kinds)}) — train another HRU kind or choose another target")


def integrator(ir, node, caps):
    if _banks(node) and node.attrs["integrator"] not in caps.integrators:
        yield _error("integrator", node, f"{caps.name} has no integrator {node.attrs['integrator']!r}"
                     f" (only {', '.join(caps.integrators)})")


def oscillator_count(ir, node, caps):
    if _banks(node) and node.shape[-1] > caps.max_oscillators:
        yield _error("oscillator-count", node, f"{node.shape[-1]} oscillators exceed {caps.name}'s "
                     f"{caps.max_oscillators} — use a smaller state_size or another target")


def delta_range(ir, node, caps):
    if not _banks(node):
        return
    delta = ir.param(node, "delta")
    low, high = caps.delta_range
    outside = (delta <= low) | (delta > high)
    if outside.any():
        yield _error("delta-range", node, f"{int(outside.sum())} step sizes outside ({low}, {high}] "
                     f"(from {float(delta.min()):.3g} to {float(delta.max()):.3g}) — retrain with "
                     "step sizes the target supports")


def formats(ir, node, caps):
    if node.placement != "device":
        return
    missing = [role for role in (*node.activations, *node.params) if role not in node.formats]
    if missing:
        yield _error("formats", node, f"no number format for {', '.join(missing)} — run choose_formats first")


def word_length(ir, node, caps):
    if node.placement != "device":
        return
    for role, fmt in node.formats.items():
        if fmt.word_bits not in caps.word_bits:
            yield _error("word-length", node, f"{role} is {fmt.word_bits} bits wide; {caps.name} "
                         f"supports {min(caps.word_bits)}..{max(caps.word_bits)} — rerun choose_formats")
        elif fmt.int_bits < caps.min_int_bits or fmt.frac_bits < caps.min_frac_bits:
            yield _error("word-length", node, f"{role} is Q{fmt.int_bits}.{fmt.frac_bits}; {caps.name} "
                         f"needs ≥ {caps.min_int_bits} integer and ≥ {caps.min_frac_bits} fraction bits")


def shared_state_format(ir, node, caps):
    if not (_banks(node) and caps.shared_state_format):
        return
    roles = [role for role in ("forcing", "positions", "momenta", "b") if role in node.formats]
    if len({node.formats[role] for role in roles}) > 1:
        yield _error("shared-state-format", node, f"{', '.join(roles)} must share one format on "
                     f"{caps.name} — rerun choose_formats for this target")


def stream_chunk(ir, node, caps):
    chunk = (ir.stream or {}).get("chunk")
    if node.placement == "device" and (chunk is None or chunk > caps.max_stream_chunk):
        yield _error("stream-chunk", node, f"streams chunks of {chunk} steps; {caps.name} buffers "
                     f"{caps.max_stream_chunk} — rerun place for this target")


def saturation(ir, node, caps):
    if node.saturation and node.saturation.risk == "high":
        yield Finding("saturation", node.name, "warning",
                      f"{node.saturation.tensor} exceeds its format by "
                      f"{-node.saturation.headroom_bits:.2f} bits on the calibration data")


RULES = (placed, device_node, hru_kind, integrator, oscillator_count, delta_range, formats, word_length,
         shared_state_format, stream_chunk, saturation)


def check_design_rules(ir: HWIR, caps: Capabilities) -> list[Finding]:
    """Every finding of every rule on every node, without raising."""
    return [finding for node in ir.nodes for rule in RULES + caps.rules for finding in rule(ir, node, caps)]


def drc(ir: HWIR, caps: Capabilities) -> HWIR:
    """A new HWIR recording the findings; raises DesignRuleError if any is an error."""
    findings = check_design_rules(ir, caps)
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise DesignRuleError(f"{ir.provenance.source}: {caps.name}: {errors[0]}{more}", findings)
    return ir.after_pass("drc", findings=tuple(findings))
