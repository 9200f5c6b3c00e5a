"""The board image as a servable board: `echoforge board serve --target gateware --pty`.

The gateware replaces the whole board — protocol engine included — not only its core, so it is not a
`BoardKind.core` (a core that runtime/board.py's Python protocol engine drives) but a board that serves
itself: `serve(args)` runs the Verilated image on a pty and returns the exit code. Cheap to import (the
CLI builds its parsers from every target's BOARDS).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from echoforge.targets import BoardKind

SUMMARY = "the FPGA board image (protocol engine in Verilog) under Verilator, pty only"
# `board serve` options a Python-simulated board honours and the gateware does not (name, default).
_UNSUPPORTED = (("tcp", None), ("drop", 0.0), ("corrupt", 0.0), ("duplicate", 0.0), ("delay", 0.0),
                ("reset_after", None), ("reset_at", None), ("max_chunk_steps", None), ("buffer_samples", None))


def serve(args: argparse.Namespace) -> int:
    """Serve the board image on a pty until SIGINT or SIGTERM; the first output line is its path."""
    given = [f"--{name.replace('_', '-')}" for name, default in _UNSUPPORTED if getattr(args, name, default) != default]
    if given:
        raise ValueError(f"{', '.join(given)}: the gateware board serves a pty without simulated faults or "
                         "capability options (its limits are the image's; corrupt the line on the host side)")
    from .sim import serve_pty

    stop = threading.Event()

    def announce(uri: str) -> None:
        print(uri, flush=True)
        print(f"echoforge board: gateware board on {uri}; SIGINT or SIGTERM stops it", file=sys.stderr)

    previous = {number: signal.signal(number, lambda *_: stop.set()) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        serve_pty(image_config(args.program), stop, announce)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    print("echoforge board: gateware board stopped", file=sys.stderr)
    return 0


def add_options(parser) -> None:
    parser.add_argument("--program", metavar="DIR", type=Path,
                        help="a compiled program (echoforge compile): the image holds its bank's kind and formats; "
                             "without it the image is the protocol engine alone (HELLO, RESET)")


def image_config(program: Path | None):
    """The board image for `program`'s bank (one bank: an image holds one), or the engine alone."""
    from .design import GatewareConfig

    if program is None:
        return GatewareConfig()
    from echoforge.targets.emulator.lower import load_program

    banks = load_program(program).banks
    if len(banks) != 1:
        raise ValueError(f"{program}: {len(banks)} banks; a gateware image holds one bank "
                         "(compile a model with one HRU block)")
    size = banks[0].params.size
    return GatewareConfig(formats=banks[0].config, kind=banks[0].params.kind, oscillators=1 << (size - 1).bit_length())


BOARDS = (BoardKind("gateware", SUMMARY, serve=serve, add_options=add_options),)
