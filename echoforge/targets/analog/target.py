"""The analog target registers itself: compile target "analog" and board core "analog-twin".

Cheap to import (the CLI builds its parsers from it): the board files, mapping, twin and instruments
load when a command runs.
"""

from __future__ import annotations

from echoforge.argtypes import non_negative_int, tcp_port
from echoforge.compiler.capabilities import Capabilities
from echoforge.targets import BoardKind, Target

from ..emulator.words import MAX_WORD_BITS, MIN_WORD_BITS

DEFAULT_BOARD = "lc-tank-pcb"


def add_options(parser) -> None:
    """`compile --target analog` options."""
    parser.add_argument("--board", metavar="BOARD", help="board description: a shipped board's name "
                        "(lc-tank-pcb, on-chip-array) or a YAML file (docs/analog.md); required for --target analog")
    parser.add_argument("--calibration", metavar="CAL.yaml", help="the board's calibration (echoforge calibrate)")
    parser.add_argument("--fabrication-seed", type=non_negative_int, default=0, metavar="N",
                        help="the twin board instance the report's expected accuracy is measured on (default 0)")


def add_serve_options(parser) -> None:
    """`board serve --target analog-twin` options."""
    parser.add_argument("--board", metavar="BOARD", default=DEFAULT_BOARD,
                        help=f"board description: shipped name or YAML file (default {DEFAULT_BOARD})")
    parser.add_argument("--calibration", metavar="CAL.yaml", help="what the board's firmware knows about itself")
    parser.add_argument("--fabrication-seed", type=non_negative_int, default=0, metavar="N",
                        help="the board instance: its mismatch, offsets and drift (default 0)")
    parser.add_argument("--noise-seed", type=non_negative_int, default=0, metavar="N",
                        help="the noise stream (default 0)")
    parser.add_argument("--no-echo-compensation", action="store_true",
                        help="plain RHEL echo, keeping the board's loss (default on a board with echo gain: the "
                             "dissipation-compensated echo, γ̂ from --calibration or the board's Q)")
    parser.add_argument("--scpi", type=tcp_port, metavar="PORT",
                        help="serve SCPI instruments instead of the device protocol: the waveform generator on "
                             "PORT, the digitizer on PORT+1 (0: any free ports)")


def _build(context):
    from .build import build

    return build(context)


def _serve(args):
    from .serving import serve

    return serve(args)


CAPABILITIES = Capabilities(name="analog", max_oscillators=4096,
                            word_bits=tuple(range(MIN_WORD_BITS, MAX_WORD_BITS + 1)), default_word_bits=24,
                            delta_range=(0.0, 1.0), hru_kinds=("linear",), max_stream_chunk=4096)
TARGETS = (Target("analog", CAPABILITIES, "an analog oscillator board (--board): mapping to frequencies, gains "
                  "and tuning codes; accuracy expected on its twin", add_options, _build),)
BOARDS = (BoardKind("analog-twin", "a board's analog twin: mismatch, finite Q, noise, converters, drift "
                    "(--board, --scpi)", serve=_serve, add_options=add_serve_options),)
