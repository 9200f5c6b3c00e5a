"""Hardware targets, one subpackage each, and the registry of their capabilities.

A target's own package may come to define its capabilities; until then they are listed here. The
registry is built on first use, so that importing a target does not load the compiler.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..compiler.capabilities import Capabilities


@cache
def _registry() -> dict[str, Capabilities]:
    from ..compiler.capabilities import Capabilities

    # The emulator's word lengths are those its FormatConfig accepts (emulator/fixed.py); its rule
    # frac ≤ word − 2 is Capabilities' default min_int_bits = 2.
    from .emulator.fixed import MAX_WORD_BITS, MIN_WORD_BITS

    emulator = Capabilities(name="emulator", max_oscillators=4096,
                            word_bits=tuple(range(MIN_WORD_BITS, MAX_WORD_BITS + 1)),
                            default_word_bits=24, delta_range=(0.0, 1.0),
                            hru_kinds=("linear", "nonlinear"), max_stream_chunk=4096)
    return {caps.name: caps for caps in (emulator,)}


def capabilities(target: str) -> Capabilities:
    """The capabilities of a target by name."""
    registry = _registry()
    if target not in registry:
        raise ValueError(f"unknown target {target!r} — use one of {', '.join(sorted(registry))}")
    return registry[target]
