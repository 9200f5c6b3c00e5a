"""`echoforge build OUT/ --board icebreaker -o gateware/`: the board image of a compiled program as a
bitstream (bitstream.py), with its timing and utilization; `echoforge flash gateware/` puts it on the board
with the board's loader (flash.py: iceprog, openFPGALoader or fujprog)."""

from __future__ import annotations

import sys
from pathlib import Path

from echoforge.argtypes import positive_int


def add_commands(commands) -> None:
    add_build(commands)
    add_flash(commands)


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
    print(f"flash it with: echoforge flash {args.output}   (then `echoforge devices --probe /dev/ttyUSB…` "
          "handshakes with the board)")
    if not image.synthesis.meets_timing:
        print(f"echoforge build: error: timing not met: {image.synthesis.critical_summary()}", file=sys.stderr)
        return 2
    return 0


def add_flash(commands) -> None:
    parser = commands.add_parser(
        "flash", help="put a built board image on the board (iceprog; ULX3S: openFPGALoader or fujprog)",
        description="Flash the bitstream `echoforge build -o DIR` wrote with the board's loader: iceprog (Debian "
                    "fpga-icestorm) for the iCEBreaker, openFPGALoader -b ulx3s (or fujprog) for the ULX3S. "
                    "Exits 2 when the loader, the bitstream or the board is missing.")
    parser.add_argument("gateware", type=Path, metavar="GATEWARE_DIR", help="directory written by `echoforge build`")
    parser.add_argument("--board", help="icebreaker or ulx3s (default: the board the image was built for; "
                                        "another is refused)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the exact loader command and run nothing (the loader need not be installed)")
    parser.set_defaults(run=run_flash)


def run_flash(args) -> int:
    from .flash import flash

    return flash(args.gateware, args.board, dry_run=args.dry_run)
