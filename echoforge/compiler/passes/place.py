"""Decide where each node runs: on the device if the target executes its kind, else on the host."""

from __future__ import annotations

from ..capabilities import Capabilities
from ..ir import HWIR


def place(ir: HWIR, caps: Capabilities) -> HWIR:
    """A new HWIR with every node placed, and the stream chunk (time steps per transfer) chosen:
    the target's buffer, or the calibration length if shorter."""
    nodes = [node.replace(placement="device" if node.kind in caps.device_kinds else "host")
             for node in ir.nodes]
    length = (ir.calibration or {}).get("length", caps.max_stream_chunk)
    return ir.after_pass("place", nodes=nodes, stream={"chunk": min(caps.max_stream_chunk, length)})
