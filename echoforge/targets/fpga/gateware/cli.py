"""`echoforge build OUT/ --board icebreaker -o gateware/`: the board image of a compiled program as a
bitstream (bitstream.py), with its timing and utilization; flashing is the user's (iceprog, openFPGALoader)."""

from __future__ import annotations

import sys
from pathlib import Path

from echoforge.argtypes import positive_int


def add_build(commands) -> None:
    parser = commands.add_parser(
        "build", help="build the FPGA board image of a compiled program: bitstream, timing, utilization",
        description="Synthesize, place, route and pack the board image (protocol engine and the program's bank, "
                    "docs/fpga.md 'Board image') for a real board. Exits 2 when the clock is not met.")
    parser.add_argument("program", type=Path, metavar="OUT", help="directory written by `echoforge compile` (one bank)")
    parser.add_argument("--board", default="icebreaker",
                        help="icebreaker (iCE40UP5K, 12 MHz; the default) or ulx3s (ECP5-25F, 25 MHz)")
    parser.add_argument("--baud", type=positive_int, default=115_200,
                        help="UART baud rate (default 115200; the iCEBreaker's FTDI reaches 3000000)")
    parser.add_argument("-o", "--output", type=Path, default=Path("gateware"), help="output directory (default gateware/)")
    parser.set_defaults(run=run_build)


def run_build(args) -> int:
    from .bitstream import board_named, build_image
    from .target import image_config

    board_named(args.board)   # before the program's lowering: a typo costs nothing
    image = build_image(image_config(args.program), args.board, args.output, baud=args.baud)
    print("\n".join(image.lines()))
    loader = f"iceprog {image.bitstream}" if image.bitstream.suffix == ".bin" else f"openFPGALoader -b ulx3s {image.bitstream}"
    print(f"flash it with: {loader}   (then `echoforge devices --probe /dev/ttyUSB…` handshakes with the board)")
    if not image.synthesis.meets_timing:
        print(f"echoforge build: error: timing not met: {image.synthesis.critical_summary()}", file=sys.stderr)
        return 2
    return 0
