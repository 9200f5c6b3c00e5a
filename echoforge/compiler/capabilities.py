"""What a target can run: the numbers the design rules (passes/drc.py) check an HWIR against."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .ir import INTEGRATOR


@dataclass(frozen=True)
class Capabilities:
    """A target's limits.

    ``max_oscillators`` bounds the lanes of one oscillator bank (banks run one after another);
    ``delta_range`` is (low, high] for every step size δ; ``max_stream_chunk`` is how many time steps
    the device buffers per transfer; ``device_kinds`` are the node kinds the device can execute.
    Every fixed-point format must have at least ``min_int_bits`` (sign included) and
    ``min_frac_bits``; with ``shared_state_format`` a bank's forcing, positions, momenta and bias b
    are one format, because the core adds them to each other. ``rules`` are the target's own design
    rules (resources, board limits), functions (ir, node, caps) yielding Findings like passes/drc.py's,
    run after the common ones.
    """

    name: str
    max_oscillators: int
    word_bits: tuple[int, ...]
    default_word_bits: int
    delta_range: tuple[float, float]
    hru_kinds: tuple[str, ...]
    max_stream_chunk: int
    device_kinds: tuple[str, ...] = ("hru_bank",)
    integrators: tuple[str, ...] = (INTEGRATOR,)
    min_int_bits: int = 2
    min_frac_bits: int = 1
    shared_state_format: bool = True
    rules: tuple[Callable, ...] = ()

    def __post_init__(self):
        if self.default_word_bits not in self.word_bits:
            raise ValueError(f"{self.name}: default word length {self.default_word_bits} is not one of "
                             f"its word lengths {self.word_bits}")
