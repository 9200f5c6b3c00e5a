"""The FPGA parts register themselves as compile targets (see echoforge.targets)."""

from echoforge.argtypes import positive_int
from echoforge.targets import BoardKind, Target, unplaced

from .gateware.target import BOARDS as GATEWARE_BOARDS
from .parts import ECP5_25F, UP5K, capabilities


def _positive_mhz(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a clock in MHz > 0, got {text}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a clock in MHz > 0, got {text}")
    return value


def add_options(parser) -> None:
    parser.add_argument("--clock", type=_positive_mhz, metavar="MHZ",
                        help=f"clock the design must meet (default: the part's, {UP5K.name} "
                             f"{UP5K.clock_mhz:g} MHz, {ECP5_25F.name} {ECP5_25F.clock_mhz:g} MHz)")
    parser.add_argument("--no-synth", action="store_true",
                        help="write the RTL only: no synthesis, placement and routing")
    parser.add_argument("--fpga-batch", type=positive_int, metavar="B",
                        help="batch rows a bank's RTL holds (default: the most up to 16 that fit the part)")


def _build(context):
    from .build import build

    return build(context)


def _serve_rtl(args) -> int:
    """The Python board simulator with an RTLCore per bank: the generated Verilog under Verilator (checked
    first: a missing simulator is one line with its install command). HELLO reports the target family
    "fpga" (protocol §10.3)."""
    import argparse

    from echoforge.runtime.cli import serve_protocol

    from .core import RTLCore
    from .sim import require

    require("verilator")
    return serve_protocol(argparse.Namespace(**{**vars(args), "target": "fpga"}), unplaced(RTLCore))


RTL_BOARD = BoardKind("fpga-sim", "the generated FPGA Verilog of each bank, co-simulated by Verilator",
                      serve=_serve_rtl)

TARGETS = tuple(Target(part.target, capabilities(part), f"{part.device} ({part.board}): Verilog, synthesis, "
                       "fmax", add_options, _build) for part in (UP5K, ECP5_25F))
BOARDS = (*GATEWARE_BOARDS, RTL_BOARD)
