"""The emulator registers itself: a compile target and a board core (see echoforge.targets)."""

from echoforge.compiler.capabilities import Capabilities
from echoforge.targets import BoardKind, Target, unplaced

# The emulator's word lengths are those its FormatConfig accepts (fixed.py); its rule
# frac ≤ word − 2 is Capabilities' default min_int_bits = 2.
from .words import MAX_WORD_BITS, MIN_WORD_BITS


def _cores(args):
    from .core import EmulatorCore

    return unplaced(EmulatorCore)


CAPABILITIES = Capabilities(name="emulator", max_oscillators=4096,
                            word_bits=tuple(range(MIN_WORD_BITS, MAX_WORD_BITS + 1)),
                            default_word_bits=24, delta_range=(0.0, 1.0),
                            hru_kinds=("linear", "nonlinear"), max_stream_chunk=4096)
TARGETS = (Target("emulator", CAPABILITIES, "the bit-exact fixed-point reference (what CI runs)"),)
BOARDS = (BoardKind("emulator", "the bit-exact fixed-point emulator", _cores),)
