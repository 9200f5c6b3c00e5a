"""`echoforge board serve` and `echoforge devices`: a simulated board to talk to, and what is attached.

    echoforge board serve --target emulator --pty                # prints /dev/pts/N
    echoforge board serve --tcp 5025 --drop 0.01 --reset-at ECHO_CHUNK:2 --seed 1
    echoforge devices --probe [URI ...]

`board serve` prints the URI to open (the pty's path, or socket://host:port) as the first line of its
standard output, then serves until SIGINT or SIGTERM. Heavy modules are imported when a command runs,
so that `echoforge --help` stays fast.
"""

from __future__ import annotations

import signal
import sys
import threading
import warnings

from ..argtypes import non_negative_float, non_negative_int, positive_float, positive_int, probability, tcp_port

PROBE_TIMEOUT = 0.5


def add_commands(commands) -> None:
    """Add `board serve` and `devices` to the `echoforge` subcommands."""
    add_board(commands)
    add_devices(commands)


def add_board(commands) -> None:
    board = commands.add_parser("board", help="run a simulated board",
                                description="Simulated boards that speak the device protocol (docs/protocol.md).")
    actions = board.add_subparsers(dest="action", required=True, metavar="ACTION")
    serve = actions.add_parser(
        "serve", help="serve the device protocol on a pseudo-terminal or a TCP port",
        description="Serve the device protocol, backed by the core of --target, until SIGINT or SIGTERM. "
                    "The first line of output is the URI to open. Fault rates are per frame, both directions.")
    from echoforge.targets import boards

    kinds = boards()
    serve.add_argument("--target", choices=sorted(kinds), default="emulator", metavar="TARGET",
                       help="core behind the board: " + "; ".join(f"{name}: {kind.summary}"
                                                                  for name, kind in sorted(kinds.items())))
    medium = serve.add_mutually_exclusive_group()
    medium.add_argument("--pty", action="store_true", help="serve on a new pseudo-terminal (the default)")
    medium.add_argument("--tcp", type=tcp_port, metavar="PORT", help="serve on a TCP port (0: any free one)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on with --tcp (default 127.0.0.1)")
    serve.add_argument("--drop", type=probability, default=0.0, metavar="R", help="drop frames at rate R")
    serve.add_argument("--corrupt", type=probability, default=0.0, metavar="R", help="corrupt one byte of frames at rate R")
    serve.add_argument("--duplicate", type=probability, default=0.0, metavar="R", help="duplicate frames at rate R")
    serve.add_argument("--delay", type=non_negative_float, default=0.0, metavar="SECONDS",
                       help="hold each frame the board sends for up to SECONDS (uniformly random)")
    serve.add_argument("--reset-after", type=non_negative_int, metavar="N", help="reboot once, on receipt of command N+1")
    serve.add_argument("--reset-at", metavar="NAME[:K]",
                       help="reboot once, on receipt of the K-th (default first) command NAME, e.g. ECHO_CHUNK:2")
    serve.add_argument("--seed", type=non_negative_int, default=0, help="seed of the fault draws (default 0)")
    serve.add_argument("--max-chunk-steps", type=positive_int, metavar="N", help="capability: most time steps per chunk")
    serve.add_argument("--buffer-samples", type=positive_int, metavar="N", help="capability: most samples per chunk request")
    for kind in kinds.values():  # a board kind's own options (e.g. analog-twin's --board)
        if kind.add_options is not None:
            kind.add_options(serve.add_argument_group(f"--target {kind.name}"))
    serve.set_defaults(run=run_board_serve)


def add_devices(commands) -> None:
    parser = commands.add_parser(
        "devices", help="list serial ports and VISA resources; --probe handshakes with each",
        description="List serial ports (pyserial) and VISA resources (pyvisa, @py backend), plus any URI given; "
                    "with --probe, send each a HELLO and print what answered.")
    parser.add_argument("uris", nargs="*", metavar="URI",
                        help="more ports to list, e.g. /dev/pts/7 or socket://host:port")
    parser.add_argument("--probe", action="store_true", help="handshake with each and print what answered")
    parser.add_argument("--timeout", type=positive_float, default=PROBE_TIMEOUT,
                        help=f"seconds to wait for each answer (default {PROBE_TIMEOUT})")
    parser.set_defaults(run=run_devices)


def run_board_serve(args) -> int:
    from echoforge.targets import board as board_kind

    kind = board_kind(args.target)
    if kind.serve is not None:  # a board that serves itself (the FPGA gateware, SCPI instruments)
        return kind.serve(args)
    return serve_protocol(args, kind.cores(args))


def serve_protocol(args, cores, capabilities=None) -> int:
    """Serve the device protocol with the Python board simulator, a fresh core from ``cores(config, slot)``
    per bank (echoforge.targets.BankSlot), on the pty or TCP port and with the faults `board serve` was given; ``capabilities``
    (default: the emulator's) are what HELLO reports, --max-chunk-steps and --buffer-samples applied."""
    from dataclasses import replace

    from echoforge.targets.emulator.stream import warm_up

    from .board import Board, Faults, parse_reset_at
    from .commands import Capabilities

    faults = Faults(drop=args.drop, corrupt=args.corrupt, duplicate=args.duplicate, delay=args.delay,
                    reset_after=args.reset_after, reset_at=parse_reset_at(args.reset_at) if args.reset_at else None,
                    seed=args.seed)
    sizes = {"max_chunk_steps": args.max_chunk_steps, "buffer_samples": args.buffer_samples}
    capabilities = replace(capabilities or Capabilities(),
                           **{name: value for name, value in sizes.items() if value is not None})
    board = Board(capabilities, faults, target=args.target, cores=cores)
    warm_up()  # the board is ready when it announces itself
    stop = threading.Event()

    def announce(uri: str) -> None:
        print(uri, flush=True)
        print(f"echoforge board: {args.target} board on {uri}; SIGINT or SIGTERM stops it", file=sys.stderr)

    previous = {number: signal.signal(number, lambda *_: stop.set()) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        if args.tcp is None:
            board.serve_pty(stop, announce)
        else:
            board.serve_tcp(args.host, args.tcp, stop, announce)
    except OSError as error:
        where = "a pseudo-terminal" if args.tcp is None else f"{args.host}:{args.tcp}"
        raise ValueError(f"cannot serve on {where}: {error.strerror or error}") from error
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    print(f"echoforge board: stopped after {board.summary()}", file=sys.stderr)
    return 0


def run_devices(args) -> int:
    found = list_serial_ports() + list_visa_resources() + [(uri, "given") for uri in args.uris]
    if not found:
        print("no serial ports or VISA resources found")
    silent = []
    for uri, description in found:
        answer = probe(uri, args.timeout) if args.probe else ""
        if description == "given" and args.probe and not answer.startswith("answers"):
            silent.append(uri)
        print(f"{uri}  ({description}){'  ' + answer if answer else ''}")
    if args.probe and args.uris and len(silent) == len(args.uris):
        raise ValueError(f"no answer from {', '.join(silent)} (see above) — is a board serving there?")
    return 0


def list_serial_ports() -> list[tuple[str, str]]:
    from serial.tools import list_ports

    return [(port.device, f"serial: {port.description}") for port in sorted(list_ports.comports())]


def list_visa_resources() -> list[tuple[str, str]]:
    import pyvisa

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyvisa-py's notes on optional discovery packages
        try:
            manager = pyvisa.ResourceManager("@py")
            resources = manager.list_resources()
            manager.close()
        except (pyvisa.Error, OSError, ValueError) as error:
            print(f"echoforge devices: VISA resources not listed: {error}", file=sys.stderr)
            return []
    return [(name, "VISA") for name in resources]


def probe(uri: str, timeout: float) -> str:
    """What answered HELLO at `uri`, or why nothing did, in one line."""
    identity = identify_scpi(uri, timeout) if uri.upper().endswith("::SOCKET") else None
    if identity:  # a SCPI instrument (a device-protocol board drops the query as line noise)
        return f"answers SCPI *IDN?: {identity}"
    from .device import Device
    from .errors import DeviceError

    try:
        with Device(uri, timeout=timeout) as device:
            return f"answers: {device.info.describe()}"
    except (OSError, DeviceError, RuntimeError, ValueError) as error:
        return f"no answer: {error}"


def identify_scpi(uri: str, timeout: float) -> str | None:
    """What a SCPI instrument at a VISA socket resource says it is (*IDN?), or None."""
    import pyvisa

    manager = pyvisa.ResourceManager("@py")
    milliseconds = max(1, int(timeout * 1000))
    try:
        with manager.open_resource(uri, read_termination="\n", write_termination="\n", timeout=milliseconds,
                                   open_timeout=milliseconds) as instrument:
            return instrument.query("*IDN?").strip() or None
    except Exception:  # noqa: BLE001 — pyvisa-py raises bare exceptions on connect; no answer either way
        return None
    finally:
        manager.close()
