"""`echoforge calibrate`: measure every oscillator of a served analog board and write its calibration file.

    echoforge board serve --target analog-twin --board lc-tank-pcb --tcp 5025 &
    echoforge calibrate --device socket://127.0.0.1:5025 --board lc-tank-pcb -o cal.yaml
    echoforge compile RUN --target analog --board lc-tank-pcb --calibration cal.yaml -o build/
    echoforge calibrate --device TCPIP::127.0.0.1::5025::SOCKET --digitizer TCPIP::127.0.0.1::5026::SOCKET \
        --board lc-tank-pcb -o cal.yaml            # the SCPI instrument pair (board serve --scpi 5025)

The measurement (calibration.py) runs through the device protocol's forward passes, or the instruments'
runs (instruments.InstrumentCore: the end state is the last readout, so the readout gain is taken as
programmed and the input gain carries the product — what a host behind the instruments needs). An
instrument that reports an error, answers in ASCII where a block is expected or does not answer within
--timeout fails the command in one line. Heavy modules are imported when the command runs, so that
`echoforge --help` stays fast.
"""

from __future__ import annotations

from ...argtypes import positive_float

DEFAULT_TIMEOUT = 10.0  # seconds per device call: a calibration run is a long forward pass


def add_command(commands) -> None:
    """Add `calibrate` to the `echoforge` subcommands."""
    parser = commands.add_parser(
        "calibrate", help="measure an analog board's oscillators (ring-down, sweep) into a calibration file",
        description="Measure every oscillator of the analog board at URI — frequency, Q, input and readout "
                    "gain, readout offset — by ring-down and a frequency sweep through the device protocol, and "
                    "write them, keyed by the board's id, to CAL.yaml (schema: docs/analog.md). Serve the "
                    "board without a calibration while it is measured.")
    parser.add_argument("--device", required=True, metavar="URI",
                        help="the board: /dev/ttyUSB0, /dev/pts/N, socket://host:port, ASRL…::INSTR, TCPIP::…::SOCKET")
    parser.add_argument("--digitizer", metavar="RESOURCE",
                        help="measure through SCPI instruments: the digitizer's VISA resource; --device is then the "
                             "waveform generator's (TCPIP::host::port::SOCKET, as `board serve --scpi` prints them)")
    parser.add_argument("--board", required=True, metavar="BOARD",
                        help="its board file, or the name of a shipped board (lc-tank-pcb, on-chip-array)")
    parser.add_argument("--output", "-o", required=True, metavar="CAL.yaml", help="calibration file to write")
    parser.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT,
                        help=f"seconds a board may take to answer a call (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("--no-progress", action="store_true", help="no progress messages and bars")
    parser.set_defaults(run=run_calibrate)


def run_calibrate(args) -> int:
    from ...runtime.device import DeviceCore
    from ...runtime.errors import DeviceError
    from ..emulator import FormatConfig
    from .board import load_board
    from .calibration import calibrate, describe
    from .calibration_file import save_calibration

    board = load_board(args.board)
    if args.digitizer:
        calibration, fit = _through_instruments(args, board)
    else:
        try:
            with DeviceCore(args.device, config=FormatConfig(), timeout=args.timeout) as core:
                held = core.device.info.capabilities.max_oscillators
                if held < board.oscillators:
                    raise ValueError(f"{args.device}: the board answering holds {held} oscillators, {board.source} "
                                     f"describes {board.oscillators} — give the file of the board at that URI")
                calibration, fit = calibrate(core, board, progress=not args.no_progress)
        except (ConnectionError, TimeoutError, DeviceError) as error:
            raise ValueError(f"{error} — is the board served (echoforge board serve --target analog-twin) "
                             f"at {args.device}?") from None
    path = save_calibration(calibration, args.output)
    print(describe(calibration, fit))
    print(f"wrote {path}")
    return 0


def _through_instruments(args, board):
    """The calibration measured through the waveform generator (--device) and the digitizer; their
    failures are InstrumentErrors (ValueError: one line, exit 2)."""
    from ..emulator import FormatConfig
    from .calibration import calibrate
    from .instruments import InstrumentCore, Instruments

    with Instruments(args.device, args.digitizer, timeout=args.timeout) as instruments:
        return calibrate(InstrumentCore(board, instruments, FormatConfig()), board, progress=not args.no_progress)
