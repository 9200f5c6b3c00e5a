"""The analog twin as a SCPI instrument pair: a waveform generator that drives the board, a digitizer
that reads it, each on its own raw TCP port (PyVISA: ``TCPIP::host::port::SOCKET`` through pyvisa-py).

    echoforge board serve --target analog-twin --scpi PORT     # AWG on PORT, digitizer on PORT + 1

The first line of output is the two resource strings (AWG, digitizer). Messages end with a newline;
``;`` separates commands of one message (a command without a leading ``:`` continues the previous
command's path); mnemonics take their short or long form in any case. Binary arguments and replies are
IEEE 488.2 definite-length blocks ``#<n><length><bytes>``, whatever bytes they hold (0x0A included),
in the byte order ``FORMat:BORDer NORMal`` (big-endian, the IEEE 488.2 default) or ``SWAPped``.
Commands that are not queries never answer; errors go to the queue ``SYSTem:ERRor?`` reads (standard
codes: −113 undefined header, −104 data type, −109 missing parameter, −221 settings conflict, −222 out
of range, −223 too much data, −350 queue overflow) and set ``*ESR?`` bits.

Both: ``*IDN? *RST *CLS *OPC *OPC? *ESR? SYSTem:ERRor[:NEXT]? FORMat:BORDer NORMal|SWAPped``.

Waveform generator (the board's drive and tuning):
    ``TUNE:BANK first,count``               the oscillators the next commands address
    ``TUNE:CODes <int32 block (3, count)>`` tuning DAC codes: frequency, input gain, readout gain rows
    ``SOURce:SHAPe batch,points``           waveform layout (batch, points, count), C order
    ``SOURce:DATA <int32 block>``           forcing DAC codes (batch, points, count); ``SOURce:DATA?`` reads them
    ``SOURce:KICK <float64 block>``         velocity kicks before each sample (echo runs), volts/s
    ``SOURce:GAIN <float64 block (count)>`` negative resistance in echo runs, 1/s (boards that have it)
    ``SOURce:MODE FORWard|ECHO``            a forward starts from rest; an echo from the state the last
                                            forward ended in, velocity flipped (every echo from the same)
    ``INITiate`` | ``*TRG``                 run the waveform (the digitizer captures it); ``*OPC?`` after
Digitizer:
    ``WAVeform:SOURce POSition|QUADrature`` the channel ``WAVeform:DATA?`` returns
    ``WAVeform:DATA?``                      ADC codes of the last run, int32 block (batch, points, count)
    ``WAVeform:PREamble?``                  bits,full_scale_v,batch,points,count,clipped samples
    ``ACQuire:COUNt?``                      runs captured so far
"""

from __future__ import annotations

import logging
import re
import select
import signal
import socket
import sys
import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from echoforge import __version__

from .mapping import QUANTITIES
from .physics import Oscillators

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.05
MAX_ERRORS = 20
MAX_MESSAGE_BYTES = 1 << 26  # 64 MiB: a message (and its blocks) the instruments buffer
ESR_OPC, ESR_QUERY, ESR_DEVICE, ESR_EXECUTION, ESR_COMMAND = 0x01, 0x04, 0x08, 0x10, 0x20


class ScpiError(Exception):
    """A SCPI error for the queue: a standard code and its message."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def esr_bit(self) -> int:
        if -199 <= self.code <= -100:
            return ESR_COMMAND
        if -299 <= self.code <= -200:
            return ESR_EXECUTION
        if -399 <= self.code <= -300:
            return ESR_DEVICE
        return ESR_QUERY


# ---- messages ----------------------------------------------------------------------------------------

@dataclass
class Command:
    header: str            # the full path, e.g. "SOUR:DATA" or "*IDN"
    query: bool
    arguments: list = field(default_factory=list)  # str, or bytes for a block


def take_message(buffer: bytearray) -> bytes | None:
    """Cut one complete program message (up to its newline, blocks skipped whole) off ``buffer``."""
    i, size = 0, len(buffer)
    while i < size:
        byte = buffer[i]
        if byte == 0x0A:
            message = bytes(buffer[:i])
            del buffer[:i + 1]
            return message
        if byte == ord("#") and i + 1 < size and chr(buffer[i + 1]).isdigit() and buffer[i + 1] != ord("0"):
            digits = buffer[i + 1] - ord("0")
            if i + 2 + digits > size:
                return None
            length_text = bytes(buffer[i + 2:i + 2 + digits])
            if not length_text.isdigit():
                i += 1
                continue
            i += 2 + digits + int(length_text)
            continue
        i += 1
    return None


def parse_message(message: bytes) -> list[Command]:
    """The commands of one program message (each message starts at the root); ScpiError for what
    cannot be parsed."""
    commands, path = [], ""
    for unit in _split(message, b";"):
        unit = unit.strip()
        if not unit:
            continue
        head, _, rest = unit.partition(b" ")
        header = head.decode("ascii", errors="replace").upper()
        if not re.fullmatch(r":?\*?[A-Z0-9:]*\??", header):
            raise ScpiError(-113, f"Undefined header; {header[:40]}")
        query = header.endswith("?")
        header = header.rstrip("?")
        if header.startswith((":", "*")) or not path:
            header = header.lstrip(":")
        else:
            header = f"{path}:{header}"
        if not header.startswith("*"):
            path = header.rpartition(":")[0]
        commands.append(Command(header, query, [_argument(part) for part in _split(rest, b",")] if rest.strip()
                                else []))
    return commands


def _split(data: bytes, separator: bytes) -> list[bytes]:
    """Split at ``separator`` outside definite-length blocks."""
    parts, start, i = [], 0, 0
    while i < len(data):
        if data[i:i + 1] == b"#" and i + 1 < len(data) and data[i + 1:i + 2].isdigit() and data[i + 1] != ord("0"):
            digits = data[i + 1] - ord("0")
            length = data[i + 2:i + 2 + digits]
            i += 2 + digits + (int(length) if length.isdigit() else 0)
            continue
        if data[i:i + 1] == separator:
            parts.append(data[start:i])
            start = i + 1
        i += 1
    parts.append(data[start:])
    return parts


def _argument(part: bytes):
    part = part.strip()
    if part.startswith(b"#"):
        if len(part) < 2 or not part[1:2].isdigit() or part[1] == ord("0"):
            raise ScpiError(-161, "Invalid block data; only definite-length blocks #<n><length> are taken")
        digits = part[1] - ord("0")
        length = part[2:2 + digits]
        if not length.isdigit() or len(part) != 2 + digits + int(length):
            raise ScpiError(-161, "Invalid block data; the length field does not match the bytes sent")
        return part[2 + digits:]
    return part.decode("ascii", errors="replace")


def block(payload: bytes) -> bytes:
    """An IEEE 488.2 definite-length block."""
    length = str(len(payload)).encode()
    return b"#" + str(len(length)).encode() + length + payload


def matches(header: str, pattern: str) -> bool:
    """Whether a header names ``pattern`` (long form, short form in capitals, [optional] nodes)."""
    nodes = header.split(":")
    regex = ""
    for node in re.findall(r"\[?:?[A-Za-z*]+\]?", pattern):
        optional = node.startswith("[")
        name = node.strip("[]:")
        short = "".join(c for c in name if c.isupper() or c == "*")
        alternatives = {name.upper(), short}
        piece = "(?:" + "|".join(re.escape(a) for a in sorted(alternatives)) + ")"
        regex += (f"(?::{piece})?" if optional else (":" if regex else "") + piece)
    return re.fullmatch(regex, ":".join(nodes)) is not None


# ---- the instruments ----------------------------------------------------------------------------------

class Bench:
    """The board both instruments share: oscillators, the waveforms loaded, the last capture."""

    def __init__(self, oscillators: Oscillators):
        self.oscillators = oscillators
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.first, self.count = 0, 0
        self.programmed = False
        self.shape: tuple[int, int] | None = None
        self.dac = self.kick = None
        self.mode = "FORWARD"
        self.held = None            # (x, v) the last forward ended in
        self.capture = None         # {"POSITION": (B, K, P), "QUADRATURE": ...} ADC codes
        self.clipped = 0
        self.captures = 0

    def run(self) -> None:
        if not self.programmed:
            raise ScpiError(-221, "Settings conflict; no bank programmed (TUNE:BANK, TUNE:CODes)")
        if self.dac is None:
            raise ScpiError(-221, "Settings conflict; no waveform loaded (SOURce:SHAPe, SOURce:DATA)")
        oscillators = self.oscillators
        batch = self.shape[0]
        if self.mode == "ECHO":
            if self.held is None or self.held[0].shape[0] != batch:
                raise ScpiError(-221, "Settings conflict; an echo needs a forward of the same batch before it")
            oscillators.start(self.held[0], -self.held[1])
        else:
            oscillators.start(np.zeros((batch, 1, self.count)), np.zeros((batch, 1, self.count)))
        kick = None if self.mode != "ECHO" or self.kick is None else self.kick[:, :, None]
        try:
            codes_x, codes_q, clipped = oscillators.advance(self.dac[:, :, None], kick, echo=self.mode == "ECHO")
        except ValueError as error:
            raise ScpiError(-222, f"Data out of range; {error}") from None
        if self.mode == "FORWARD":
            self.held = (oscillators.x.copy(), oscillators.v.copy())
        self.capture = {"POSITION": np.moveaxis(codes_x[:, :, 0], 0, 1),
                        "QUADRATURE": np.moveaxis(codes_q[:, :, 0], 0, 1)}
        self.clipped = clipped
        self.captures += 1


class Instrument:
    """One SCPI instrument on the bench: the common commands, the error queue, byte order."""

    model = "INSTRUMENT"

    def __init__(self, bench: Bench):
        self.bench = bench
        self.errors: deque[tuple[int, str]] = deque()
        self.esr = 0
        self.big_endian = True
        self.handlers = [("*IDN", self._idn), ("*RST", self._rst), ("*CLS", self._cls), ("*OPC", self._opc),
                         ("*ESR", self._esr), ("SYSTem:ERRor[:NEXT]", self._error),
                         ("FORMat:BORDer", self._byte_order)] + self.commands()

    def commands(self) -> list:
        return []

    def execute(self, command: Command) -> bytes | None:
        """Run one command; the reply of a query (without its newline), None otherwise."""
        for pattern, handler in self.handlers:
            if matches(command.header, pattern):
                with self.bench.lock:
                    return handler(command)
        raise ScpiError(-113, f"Undefined header; {command.header}{'?' if command.query else ''}")

    def push(self, error: ScpiError) -> None:
        self.esr |= error.esr_bit
        if len(self.errors) >= MAX_ERRORS:
            self.errors[-1] = (-350, "Queue overflow")
        else:
            self.errors.append((error.code, _ascii(error.message)))

    # common commands
    def _idn(self, command):
        _expect_query(command, True)
        board = self.bench.oscillators.board
        return f"echoforge,{self.model},{board.id},{__version__}".encode()

    def _rst(self, command):
        _expect_query(command, False)
        self.big_endian = True
        self.bench.reset()

    def _cls(self, command):
        _expect_query(command, False)
        self.errors.clear()
        self.esr = 0

    def _opc(self, command):
        if command.query:
            return b"1"  # every command completes before the next is read
        self.esr |= ESR_OPC
        return None

    def _esr(self, command):
        _expect_query(command, True)
        value, self.esr = self.esr, 0
        return str(value).encode()

    def _error(self, command):
        _expect_query(command, True)
        code, message = self.errors.popleft() if self.errors else (0, "No error")
        return f'{code},"{message}"'.encode()

    def _byte_order(self, command):
        if command.query:
            return b"NORM" if self.big_endian else b"SWAP"
        choice = _choice(command, {"NORMAL": "NORM", "SWAPPED": "SWAP"})
        self.big_endian = choice == "NORM"
        return None

    def values(self, data: bytes, dtype: str, expected: int | None = None) -> np.ndarray:
        """A block's values in this instrument's byte order."""
        order = ">" if self.big_endian else "<"
        size = np.dtype(dtype).itemsize
        if len(data) % size:
            raise ScpiError(-104, f"Data type error; a block of {len(data)} bytes is not whole {dtype} values")
        array = np.frombuffer(data, dtype=order + dtype)
        if expected is not None and array.size != expected:
            code = -223 if array.size > expected else -109
            raise ScpiError(code, f"{'Too much data' if code == -223 else 'Missing parameter'}; expected "
                                  f"{expected} values, got {array.size}")
        return array.astype(np.float64 if dtype == "f8" else np.int64)

    def reply_block(self, array: np.ndarray, dtype: str) -> bytes:
        order = ">" if self.big_endian else "<"
        return block(np.ascontiguousarray(array, dtype=order + dtype).tobytes())


class WaveformGenerator(Instrument):
    model = "ANALOG-TWIN-AWG"

    def commands(self):
        return [("TUNE:BANK", self._bank), ("TUNE:CODes", self._tune), ("SOURce:SHAPe", self._shape),
                ("SOURce:DATA", self._data), ("SOURce:KICK", self._kick), ("SOURce:GAIN", self._gain),
                ("SOURce:MODE", self._mode), ("INITiate[:IMMediate]", self._run), ("*TRG", self._run)]

    def _bank(self, command):
        bench, board = self.bench, self.bench.oscillators.board
        if command.query:
            return f"{bench.first},{bench.count}".encode()
        first, count = _integers(command, 2)
        if first < 0 or count < 1 or first + count > board.oscillators:
            raise ScpiError(-222, f"Data out of range; oscillators {first}..{first + count - 1} of "
                                  f"{board.oscillators}")
        bench.first, bench.count, bench.programmed = first, count, False
        bench.dac = bench.kick = bench.held = None

    def _tune(self, command):
        bench = self.bench
        _expect_query(command, False)
        if bench.count == 0:
            raise ScpiError(-221, "Settings conflict; select oscillators with TUNE:BANK first")
        codes = self.values(_block(command), "i4", 3 * bench.count).reshape(3, bench.count)
        try:
            bench.oscillators.program(bench.first, dict(zip(QUANTITIES, codes)))
        except ValueError as error:
            raise ScpiError(-222, f"Data out of range; {error}") from None
        bench.programmed, bench.held = True, None

    def _shape(self, command):
        bench = self.bench
        if command.query:
            return ("0,0" if bench.shape is None else f"{bench.shape[0]},{bench.shape[1]}").encode()
        batch, points = _integers(command, 2)
        if batch < 1 or points < 1:
            raise ScpiError(-222, f"Data out of range; shape {batch},{points}")
        bench.shape, bench.dac, bench.kick = (batch, points), None, None

    def _waveform(self, command, dtype):
        bench = self.bench
        _expect_query(command, False)
        if bench.shape is None or bench.count == 0:
            raise ScpiError(-221, "Settings conflict; set TUNE:BANK and SOURce:SHAPe before the waveform")
        batch, points = bench.shape
        return self.values(_block(command), dtype, batch * points * bench.count).reshape(batch, points, bench.count)

    def _data(self, command):
        if command.query:
            if self.bench.dac is None:
                raise ScpiError(-230, "Data corrupt or stale; no waveform loaded")
            return self.reply_block(self.bench.dac, "i4")
        codes = self._waveform(command, "i4")
        limit = self.bench.oscillators.board.dac.limit
        if np.any(np.abs(codes) > limit):
            raise ScpiError(-222, f"Data out of range; DAC codes beyond +/-{limit}")
        self.bench.dac = codes

    def _kick(self, command):
        self.bench.kick = self._waveform(command, "f8")

    def _gain(self, command):
        bench = self.bench
        if command.query:
            gain = bench.oscillators.echo_gain
            return self.reply_block(np.zeros(bench.count) if gain is None else gain, "f8")
        if not bench.programmed:
            raise ScpiError(-221, "Settings conflict; program the bank (TUNE:CODes) before its echo gain")
        rates = self.values(_block(command), "f8", bench.count)
        try:
            bench.oscillators.set_echo_gain(None if not rates.any() else rates)
        except ValueError as error:
            raise ScpiError(-222, f"Data out of range; {' '.join(str(error).split())}") from None

    def _mode(self, command):
        if command.query:
            return self.bench.mode[:4].encode()
        self.bench.mode = _choice(command, {"FORWARD": "FORWARD", "ECHO": "ECHO"})

    def _run(self, command):
        _expect_query(command, False)
        self.bench.run()


class Digitizer(Instrument):
    model = "ANALOG-TWIN-DIGITIZER"

    def __init__(self, bench: Bench):
        super().__init__(bench)
        self.source = "POSITION"

    def commands(self):
        return [("WAVeform:SOURce", self._source), ("WAVeform:DATA", self._data),
                ("WAVeform:PREamble", self._preamble), ("ACQuire:COUNt", self._count)]

    def _source(self, command):
        if command.query:
            return self.source[:3].encode()
        self.source = _choice(command, {"POSITION": "POSITION", "QUADRATURE": "QUADRATURE"})

    def _capture(self):
        if self.bench.capture is None:
            raise ScpiError(-230, "Data corrupt or stale; nothing captured yet (run the waveform generator)")
        return self.bench.capture[self.source]

    def _data(self, command):
        _expect_query(command, True)
        return self.reply_block(self._capture(), "i4")

    def _preamble(self, command):
        _expect_query(command, True)
        batch, points, count = self._capture().shape
        adc = self.bench.oscillators.board.adc
        return f"{adc.bits},{adc.full_scale_v!r},{batch},{points},{count},{self.bench.clipped}".encode()

    def _count(self, command):
        _expect_query(command, True)
        return str(self.bench.captures).encode()


def _ascii(text: str) -> str:
    """SCPI strings are ASCII: the few symbols our messages use, spelt out; anything else as '?'."""
    for symbol, spelt in (("±", "+/-"), ("—", "-"), ("…", "..."), ('"', "'")):
        text = text.replace(symbol, spelt)
    return text.encode("ascii", errors="replace").decode("ascii")


def _expect_query(command: Command, query: bool) -> None:
    if command.query != query:
        raise ScpiError(-113, f"Undefined header; {command.header}{'' if query else '?'} is "
                              f"{'only a query' if query else 'not a query'}")


def _block(command: Command) -> bytes:
    if len(command.arguments) != 1 or not isinstance(command.arguments[0], bytes):
        raise ScpiError(-104, f"Data type error; {command.header} takes one definite-length block")
    return command.arguments[0]


def _integers(command: Command, count: int) -> list[int]:
    if len(command.arguments) != count:
        raise ScpiError(-109, f"Missing parameter; {command.header} takes {count} integers")
    try:
        return [int(argument) for argument in command.arguments]
    except (TypeError, ValueError):
        raise ScpiError(-104, f"Data type error; {command.header} takes {count} integers") from None


def _choice(command: Command, choices: dict[str, str]) -> str:
    if len(command.arguments) != 1 or not isinstance(command.arguments[0], str):
        raise ScpiError(-109, f"Missing parameter; {command.header} takes one of {', '.join(choices)}")
    word = command.arguments[0].upper()
    for name, value in choices.items():
        short = name[:4]
        if word in (name, short):
            return value
    raise ScpiError(-224, f"Illegal parameter value; {word} (expected one of {', '.join(choices)})")


# ---- serving ------------------------------------------------------------------------------------------

def serve_connection(connection: socket.socket, instrument: Instrument, stop: threading.Event) -> None:
    """Answer one client until it disconnects or ``stop`` is set."""
    buffer = bytearray()
    with connection:
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while not stop.is_set():
            if not select.select([connection], [], [], POLL_SECONDS)[0]:
                continue
            data = connection.recv(1 << 20)
            if not data:
                return
            buffer += data
            if len(buffer) > MAX_MESSAGE_BYTES:
                instrument.push(ScpiError(-223, "Too much data; message longer than the input buffer"))
                buffer.clear()
            while (message := take_message(buffer)) is not None:
                _answer(connection, instrument, message)


def _answer(connection: socket.socket, instrument: Instrument, message: bytes) -> None:
    """Execute a message's commands; send the replies of its queries, ``;``-joined, as one line."""
    try:
        commands = parse_message(message)
    except ScpiError as error:
        instrument.push(error)
        return
    replies = []
    for command in commands:
        try:
            reply = instrument.execute(command)
        except ScpiError as error:
            instrument.push(error)
            break
        if reply is not None:
            replies.append(reply)
    if replies:
        connection.sendall(b";".join(replies) + b"\n")


def _listen(listener: socket.socket, instrument: Instrument, stop: threading.Event) -> None:
    listener.settimeout(POLL_SECONDS)
    while not stop.is_set():
        try:
            connection, _ = listener.accept()
        except TimeoutError:
            continue
        try:
            serve_connection(connection, instrument, stop)
        except OSError as error:
            logger.info("%s: connection ends: %s", instrument.model, error)


def resource(host: str, port: int) -> str:
    return f"TCPIP::{host}::{port}::SOCKET"


def serve(settings, host: str, port: int) -> int:
    """Serve the instrument pair until SIGINT or SIGTERM; the first output line names both resources."""
    bench = Bench(Oscillators(settings.board, fabrication_seed=settings.fabrication_seed,
                              noise_seed=settings.noise_seed))
    instruments = (WaveformGenerator(bench), Digitizer(bench))
    if port == 65535:
        raise ValueError("--scpi 65535: the digitizer needs the next port — give a port below 65535, or 0")
    try:
        awg = socket.create_server((host, port))
        digitizer = socket.create_server((host, port + 1 if port else 0))
    except OSError as error:
        raise ValueError(f"cannot serve SCPI instruments on {host}:{port}: {error.strerror or error}") from error
    stop = threading.Event()
    previous = {number: signal.signal(number, lambda *_: stop.set()) for number in (signal.SIGINT, signal.SIGTERM)}
    threads = [threading.Thread(target=_listen, args=(listener, instrument, stop), daemon=True)
               for listener, instrument in zip((awg, digitizer), instruments)]
    try:
        names = [resource(host, listener.getsockname()[1]) for listener in (awg, digitizer)]
        print(" ".join(names), flush=True)
        print(f"echoforge board: analog twin {settings.board.id} as SCPI instruments: waveform generator "
              f"{names[0]}, digitizer {names[1]}; SIGINT or SIGTERM stops it", file=sys.stderr)
        for thread in threads:
            thread.start()
        while not stop.is_set():
            stop.wait(POLL_SECONDS)
    finally:
        stop.set()
        for thread in threads:
            if thread.is_alive():
                thread.join()
        awg.close()
        digitizer.close()
        for number, handler in previous.items():
            signal.signal(number, handler)
    print(f"echoforge board: stopped after {bench.captures} runs", file=sys.stderr)
    return 0
