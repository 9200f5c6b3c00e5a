"""Byte transports: one interface over pyserial URLs, VISA resources and device-side endpoints.

Host side, chosen by `open_transport(uri)`:
  * pyserial URLs via serial.serial_for_url: /dev/ttyUSB0, /dev/pts/N, loop://, socket://host:port,
    rfc2217://host:port (the last with workarounds, Rfc2217Transport);
  * VISA resources through PyVISA's pure-Python backend ("@py"), in raw byte mode:
    ASRL<device>::INSTR and TCPIP::host::port::SOCKET.
Device side (what a board simulator serves on): PtyTransport, the master end of a fresh
pseudo-terminal, and SocketTransport, an accepted TCP connection.

Contract: `read` waits at most `timeout` seconds and returns b"" when nothing arrived; `write`
gives up after the transport's timeout plus the data's time on a UART at the configured baud rate
(exceptions: RFC 2217 and VISA sockets, see their classes). Every I/O failure, including a peer that
closed the connection, surfaces as ConnectionError naming the URI, whatever the backend raised.
"""

import math
import os
import select
import socket
import time
import tty
from abc import ABC, abstractmethod
from contextlib import contextmanager

import pyvisa
import serial
from pyvisa import constants as visa_constants
from pyvisa import rname

DEFAULT_TIMEOUT = 2.0
DEFAULT_BAUDRATE = 115200
_VISA_INTERFACES = ("ASRL", "TCPIP", "GPIB", "USB", "VXI", "PXI")
_VISA_DRAIN_QUIET = 0.001  # a VISA socket drain returns after this long without new bytes
READ_WHILE_WRITING = 65536  # bytes a device end takes in per read while it waits to write


class Transport(ABC):
    """A bidirectional byte stream to one peer; no call can block forever."""

    uri: str

    @abstractmethod
    def write(self, data: bytes) -> None:
        """Send all of `data`, or raise ConnectionError."""

    @abstractmethod
    def read(self, max_bytes: int, timeout: float) -> bytes:
        """Wait up to `timeout` s for data; return 1..max_bytes bytes, or b"" if none arrived."""

    @abstractmethod
    def close(self) -> None:
        """Release the connection; idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def __repr__(self):
        return f"{type(self).__name__}({self.uri!r})"


def open_transport(uri: str, *, timeout: float = DEFAULT_TIMEOUT, baudrate: int = DEFAULT_BAUDRATE) -> Transport:
    """Open `uri` as a VISA resource if it is written like one, otherwise as a pyserial URL.

    `timeout` bounds opening and every write; `baudrate` applies to real serial ports.
    """
    if is_visa_resource(uri):
        return _visa_transport_class(uri)(uri, timeout=timeout, baudrate=baudrate)
    serial_class = Rfc2217Transport if uri.lower().startswith("rfc2217://") else SerialTransport
    return serial_class(uri, timeout=timeout, baudrate=baudrate)


def is_visa_resource(uri: str) -> bool:
    """VISA resource strings start with an interface keyword and use "::" separators."""
    return uri.upper().startswith(_VISA_INTERFACES) and "::" in uri


@contextmanager
def _connection_errors(uri: str, *error_types: type[BaseException]):
    """Re-raise backend failures as ConnectionError naming the URI, the cause chained."""
    try:
        yield
    except (OSError, serial.SerialException, pyvisa.Error, *error_types) as error:
        raise ConnectionError(f"{uri}: {error}") from error


class SerialTransport(Transport):
    """Any pyserial URL: device paths, loop://, socket://."""

    def __init__(self, url: str, *, timeout: float = DEFAULT_TIMEOUT, baudrate: int = DEFAULT_BAUDRATE):
        self.uri = url
        self._write_timeout = timeout
        self._baudrate = baudrate
        with _connection_errors(url):
            self._port = serial.serial_for_url(url, baudrate=baudrate, timeout=0)

    def write(self, data: bytes) -> None:
        with _connection_errors(self.uri):
            self._set_write_timeout(_write_budget(self._write_timeout, len(data), self._baudrate))
            self._port.write(data)

    def read(self, max_bytes: int, timeout: float) -> bytes:
        # Block for the first byte only, then take whatever else is already there without waiting.
        with _connection_errors(self.uri):
            self._set_read_timeout(max(timeout, 0.0))
            first = self._port.read(1)
            if not first:
                return b""
            self._set_read_timeout(0)
            return first + self._port.read(max_bytes - 1)

    def _set_read_timeout(self, seconds: float) -> None:
        self._port.timeout = seconds

    def _set_write_timeout(self, seconds: float) -> None:
        self._port.write_timeout = seconds

    def close(self) -> None:
        self._port.close()


class Rfc2217Transport(SerialTransport):
    """rfc2217://host:port, with two workarounds for pyserial 3.5's RFC 2217 client."""

    def _set_read_timeout(self, seconds: float) -> None:
        # Assigning `timeout` renegotiates every port setting with the server (sleeping >= 50 ms),
        # although the read timeout is a purely local queue wait: set what its reads use instead.
        self._port._timeout = seconds

    def _set_write_timeout(self, seconds: float) -> None:
        # It refuses write timeouts (NotImplementedError), so its writes go unbounded into the TCP
        # send buffer, which holds far more than a frame; a dead peer is caught by read timeouts.
        pass


def _write_budget(timeout: float, size: int, baudrate: int) -> float:
    """A write may take `timeout` plus the time `size` bytes spend on a UART line (8N1: 10 bits each)."""
    return timeout + 10 * size / baudrate


class VisaTransport(Transport):
    """A VISA resource opened with pyvisa-py, used as a raw byte pipe.

    Termination characters and END handling are switched off, so reads return bytes as they are.
    pyvisa-py raises on a read timeout and drops whatever that read had gathered, so a read first
    waits for a single byte (nothing to lose), then drains what is already buffered in a way that
    cannot time out with data in hand; how to drain depends on the interface (subclasses).
    """

    resource_kind: tuple[str, str]

    def __init__(self, resource_name: str, *, timeout: float = DEFAULT_TIMEOUT, baudrate: int = DEFAULT_BAUDRATE):
        self.uri = resource_name
        self._write_timeout = timeout
        self._baudrate = baudrate
        self._manager = pyvisa.ResourceManager("@py")
        try:
            with _connection_errors(resource_name, Exception):  # pyvisa-py raises bare Exception on connect
                self._resource = self._manager.open_resource(resource_name, open_timeout=_visa_ms(timeout))
        except ConnectionError:
            self._manager.close()
            raise
        self._resource.read_termination = None
        self._resource.write_termination = ""
        self._configure(baudrate)

    @abstractmethod
    def _configure(self, baudrate: int) -> None:
        """Interface-specific settings for raw mode."""

    @abstractmethod
    def _drain(self, max_bytes: int) -> bytes:
        """Return up to max_bytes already-received bytes without waiting for more."""

    def write(self, data: bytes) -> None:
        # One VISA timeout governs reads and writes, and reads shorten it, so every write sets its own.
        # (On ASRL, setting it reconfigures the port, which fails like I/O when the device is gone.)
        with _connection_errors(self.uri):
            self._resource.timeout = _visa_ms(_write_budget(self._write_timeout, len(data), self._baudrate))
            self._resource.write_raw(data)

    def read(self, max_bytes: int, timeout: float) -> bytes:
        first = self._read_until_timeout(1, timeout)
        if not first:
            return b""
        return first + self._drain(max_bytes - 1)

    def _read_until_timeout(self, count: int, timeout: float) -> bytes:
        """One VISA read of at most `count` bytes; b"" on timeout."""
        with _connection_errors(self.uri):
            self._resource.timeout = _visa_ms(timeout)
            try:
                return self._resource.read_bytes(count, break_on_termchar=True)
            except pyvisa.VisaIOError as error:
                if error.error_code != visa_constants.StatusCode.error_timeout:
                    raise
        return b""

    def close(self) -> None:
        if self._manager is not None:
            self._resource.close()
            self._manager.close()
            self._manager = None


class VisaSerialTransport(VisaTransport):
    """ASRL<device>::INSTR. The serial END_IN default stops reads at the termchar (0x0A) even with
    read_termination off, so it is disabled; the drain reads exactly the bytes VISA reports waiting.
    """

    resource_kind = ("ASRL", "INSTR")

    def _configure(self, baudrate: int) -> None:
        self._resource.end_input = visa_constants.SerialTermination.none
        self._resource.end_output = visa_constants.SerialTermination.none
        self._resource.baud_rate = baudrate

    def _drain(self, max_bytes: int) -> bytes:
        waiting = min(self._resource.bytes_in_buffer, max_bytes)
        return self._read_until_timeout(waiting, DEFAULT_TIMEOUT) if waiting else b""


class VisaSocketTransport(VisaTransport):
    """TCPIP::host::port::SOCKET. With SUPPRESS_END off, a socket read returns what it has as soon
    as the socket stays quiet for its select interval, so a 1 ms timeout drains without loss.

    pyvisa-py sends in 4 KiB pieces, so with Nagle's algorithm on, the last piece of a larger frame
    waits ~40 ms for the peer's delayed ACK. pyvisa-py 0.8 declares VI_ATTR_TCPIP_NODELAY for SOCKET
    sessions without a setter (setting it raises UnknownAttribute), hence the option is set on the
    session's socket itself. Its socket writes ignore the VISA timeout: a write can block only once
    the kernel's send buffer is full, i.e. when the peer has stopped reading for many frames.
    """

    resource_kind = ("TCPIP", "SOCKET")

    def _configure(self, baudrate: int) -> None:
        self._resource.set_visa_attribute(visa_constants.ResourceAttribute.suppress_end_enabled, False)
        session = self._resource.visalib.sessions[self._resource.session]
        session.interface.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _drain(self, max_bytes: int) -> bytes:
        return self._read_until_timeout(max_bytes, _VISA_DRAIN_QUIET)


def _visa_transport_class(resource_name: str) -> type[VisaTransport]:
    parsed = rname.parse_resource_name(resource_name)
    kind = (parsed.interface_type, parsed.resource_class)
    supported = {cls.resource_kind: cls for cls in (VisaSerialTransport, VisaSocketTransport)}
    if kind not in supported:
        names = ", ".join(f"{interface}...::{resource_class}" for interface, resource_class in supported)
        raise ValueError(f"{resource_name}: unsupported VISA resource kind; supported: {names}")
    return supported[kind]


def _visa_ms(seconds: float) -> int:
    """VISA timeouts are whole milliseconds, and 0 means "immediate", so round up to at least 1."""
    return max(1, math.ceil(seconds * 1000))


class FdTransport(Transport):
    """The device end of a stream with a POSIX file descriptor, driven with select and
    non-blocking os.read/os.write (POSIX only).

    It keeps receiving while it sends, as a UART does: bytes that arrive while a write waits for
    room are kept for the next reads. Otherwise a host that retransmits a large request while the
    device writes a large response would deadlock with it, each blocked on a full buffer.
    """

    def __init__(self, fd: int, uri: str, write_timeout: float):
        self.uri = uri
        self._fd = fd
        self._write_timeout = write_timeout
        self._received = bytearray()  # arrived during writes, not yet read
        os.set_blocking(fd, False)

    def write(self, data: bytes) -> None:
        pending = memoryview(data)
        deadline = time.monotonic() + self._write_timeout
        while pending:
            remaining = deadline - time.monotonic()
            readable, writable, _ = select.select([self._fd], [self._fd], [], max(remaining, 0.0))
            if remaining <= 0 or not (readable or writable):
                raise ConnectionError(f"{self.uri}: write timed out after {self._write_timeout} s")
            if readable:
                self._received += self._read_available(READ_WHILE_WRITING)
            if writable:
                with _connection_errors(self.uri):
                    pending = pending[os.write(self._fd, pending) :]

    def read(self, max_bytes: int, timeout: float) -> bytes:
        if self._received:
            data = bytes(self._received[:max_bytes])
            del self._received[:max_bytes]
            return data
        if not select.select([self._fd], [], [], max(timeout, 0.0))[0]:
            return b""
        return self._read_available(max_bytes)

    def _read_available(self, max_bytes: int) -> bytes:
        with _connection_errors(self.uri):
            data = os.read(self._fd, max_bytes)
        if not data:
            raise ConnectionError(f"{self.uri}: closed by the peer")
        return data


class PtyTransport(FdTransport):
    """The master end of a new pseudo-terminal; hosts open `device_path` (/dev/pts/N) as a serial port.

    The slave is set raw so that no line discipline (echo, CR/LF mapping, line buffering) touches
    the bytes before a host configures it, and it stays open here: once every slave descriptor is
    closed, Linux fails reads on the master with EIO, which would look like a dead peer.
    """

    def __init__(self, *, write_timeout: float = DEFAULT_TIMEOUT):
        master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.device_path = os.ttyname(self._slave)
        super().__init__(master, f"pty:{self.device_path}", write_timeout)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            os.close(self._slave)
            self._fd = -1


class SocketTransport(FdTransport):
    """An accepted TCP connection, served by the device side.

    Nagle's algorithm is switched off: a device writes an ACK and then its response, and Nagle
    would hold the response back until the host's delayed ACK of the first write (~40 ms).
    """

    def __init__(self, connection: socket.socket, *, write_timeout: float = DEFAULT_TIMEOUT):
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._socket = connection
        host, port = connection.getpeername()[:2]
        super().__init__(connection.fileno(), f"tcp://{host}:{port}", write_timeout)

    def close(self) -> None:
        self._socket.close()


class MeteredTransport(Transport):
    """Counts the bytes crossing `inner`: what a session really puts on the wire, retransmissions included."""

    def __init__(self, inner: Transport):
        self.inner = inner
        self.uri = inner.uri
        self.bytes_sent = 0
        self.bytes_received = 0

    @property
    def bytes_total(self) -> int:
        return self.bytes_sent + self.bytes_received

    def write(self, data: bytes) -> None:
        self.inner.write(data)
        self.bytes_sent += len(data)

    def read(self, max_bytes: int, timeout: float) -> bytes:
        data = self.inner.read(max_bytes, timeout)
        self.bytes_received += len(data)
        return data

    def close(self) -> None:
        self.inner.close()
