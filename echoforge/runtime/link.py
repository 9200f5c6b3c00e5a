"""Reliable request/response over a Transport: the host's `Link` and the device's `LinkServer`.

Stop-and-wait: the host has at most one request outstanding. A request is a DATA frame with the
next sequence number; its response is a DATA frame with the same sequence number and the opcode
with RESPONSE_BIT set. The device executes each sequence number once and answers retransmissions
from a one-entry cache. The rules are written down in docs/protocol.md ("Sequencing and retries").
"""

import logging
import math
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping

from .errors import DeviceError, ErrorCode, FrameError, LinkTimeout
from .frame import DELIMITER, MAX_PAYLOAD, Flags, Frame, FrameReader, FrameType, encode_frame
from .transport import Transport

logger = logging.getLogger(__name__)

SYNC = 0x0000
RESPONSE_BIT = 0x8000
MAX_REQUEST_OPCODE = 0x7FFF
DEFAULT_CALL_TIMEOUT = 2.0
READ_CHUNK = 4096
_SYNC_RESPONSE = struct.Struct("<I")  # the device's maximum request payload
_ERROR_CODE = struct.Struct("<H")

Handler = Callable[[int, bytes], tuple[int, bytes]]


def response_opcode(opcode: int) -> int:
    """The opcode a response to `opcode` carries."""
    return opcode | RESPONSE_BIT


def encode_error(error: DeviceError) -> bytes:
    """Payload of an error response: u16 code, then the message in UTF-8 (truncated to fit)."""
    message = error.message.encode("utf-8")[: MAX_PAYLOAD - _ERROR_CODE.size]
    return _ERROR_CODE.pack(error.code) + message


def decode_error(payload: bytes) -> DeviceError:
    """The DeviceError an error response describes."""
    if len(payload) < _ERROR_CODE.size:
        return DeviceError(ErrorCode.INTERNAL, f"malformed error response {payload.hex()}")
    (code,) = _ERROR_CODE.unpack(payload[: _ERROR_CODE.size])
    return DeviceError(code, payload[_ERROR_CODE.size :].decode("utf-8", errors="replace"))


class _RetransmitTimer:
    """When to resend the outstanding request, and whether to give up.

    The timer measures silence: any byte from the peer postpones it, since a response may be in
    flight. Intervals double from `interval` up to `max_interval`. Until the peer ACKs the request,
    at most `retries` resends are made (for any reason) and the call fails once the last interval
    passes in silence. After an ACK the request is known to be executing: resends only poll for a
    lost response, every `max_interval` of silence, without limit, until the call's deadline.
    """

    def __init__(self, retries: int, interval: float, max_interval: float):
        self.transmissions = 0
        self.acked = False
        self.due = math.inf
        self._retries_left = retries
        self._interval = interval
        self._max_interval = max_interval

    @property
    def may_resend(self) -> bool:
        return self.acked or self._retries_left > 0

    def sent(self, now: float) -> None:
        if self.transmissions:  # a resend
            self._interval = min(2 * self._interval, self._max_interval)
            if not self.acked:
                self._retries_left -= 1
        self.transmissions += 1
        self.due = now + self._interval

    def heard_from_peer(self, now: float) -> None:
        self.due = max(self.due, now + self._interval)

    def acknowledged(self, now: float) -> None:
        if not self.acked:
            self.acked = True
            self._interval = self._max_interval
            self.due = now + self._interval


class Link:
    """The host end: `call(opcode, payload)` returns the device's response payload.

    Raises DeviceError when the device answers with an error, LinkTimeout when no answer arrives
    before the deadline or the connection is lost. Calls are serialized (stop-and-wait). The first
    call synchronizes the sequence numbers with the device (a SYNC exchange), sharing its deadline.
    """

    def __init__(
        self,
        transport: Transport,
        *,
        timeout: float = DEFAULT_CALL_TIMEOUT,
        retries: int = 5,
        retry_interval: float = 0.05,
        max_retry_interval: float = 1.0,
        opcode_names: Mapping[int, str] | None = None,
    ):
        self.transport = transport
        self.timeout = timeout
        self.retries = retries
        self.retry_interval = retry_interval
        self.max_retry_interval = max_retry_interval
        self._opcode_names = {SYNC: "SYNC", **(opcode_names or {})}
        self._reader = FrameReader()
        self._counts = Counter()
        self._next_seq = 0
        self.peer_max_payload: int | None = None
        self._lock = threading.Lock()

    @property
    def stats(self) -> dict[str, int]:
        """Counters for progress bars and diagnostics (see docs/protocol.md, "Counters")."""
        names = ("calls", "frames_sent", "frames_received", "retries", "timeouts", "acks", "nacks", "stale", "failures")
        counts = {name: self._counts[name] for name in names}
        return counts | {"crc_errors": self._reader.crc_errors, "malformed": self._reader.malformed}

    def sync(self, timeout: float | None = None) -> None:
        """Start a fresh sequence space on the device and learn its maximum request payload."""
        with self._lock:
            self._sync(self._deadline(timeout))

    def call(self, opcode: int, payload: bytes = b"", timeout: float | None = None) -> bytes:
        """Send request `opcode` with `payload`; return the response payload."""
        if not 1 <= opcode <= MAX_REQUEST_OPCODE:
            raise ValueError(f"request opcode 0x{opcode:04X} is outside 0x0001..0x{MAX_REQUEST_OPCODE:04X}")
        with self._lock:
            self._counts["calls"] += 1
            deadline = self._deadline(timeout)
            if self.peer_max_payload is None:
                self._sync(deadline)
            if len(payload) > self.peer_max_payload:
                raise ValueError(
                    f"payload of {len(payload)} bytes exceeds the device's maximum {self.peer_max_payload}"
                )
            return self._exchange(opcode, payload, deadline)

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def _sync(self, deadline: float) -> None:
        answer = self._exchange(SYNC, b"", deadline)
        if len(answer) != _SYNC_RESPONSE.size:
            raise FrameError(
                f"{self.transport.uri}: SYNC response of {len(answer)} bytes, expected {_SYNC_RESPONSE.size}"
            )
        (self.peer_max_payload,) = _SYNC_RESPONSE.unpack(answer)

    def _take_seq(self) -> int:
        seq, self._next_seq = self._next_seq, (self._next_seq + 1) & 0xFFFF
        return seq

    def _exchange(self, opcode: int, payload: bytes, deadline: float) -> bytes:
        seq = self._take_seq()
        wire = DELIMITER + encode_frame(Frame(FrameType.DATA, seq, opcode, payload))
        timer = _RetransmitTimer(self.retries, self.retry_interval, self.max_retry_interval)
        started = time.monotonic()
        try:
            self._send(wire, timer)
            while (now := time.monotonic()) < deadline:
                if now >= timer.due:
                    self._counts["timeouts"] += 1
                    if not timer.may_resend:
                        break
                    self._send(wire, timer)
                response, damage_seen = self._receive(seq, opcode, timer, min(timer.due, deadline) - now)
                if response is not None:
                    return self._result(response)
                if damage_seen and timer.may_resend:
                    self._send(wire, timer)
        except ConnectionError as error:
            self._counts["failures"] += 1
            raise LinkTimeout(self._describe_failure(opcode, started, timer, f"connection lost ({error})")) from error
        self._counts["failures"] += 1
        raise LinkTimeout(self._describe_failure(opcode, started, timer, "no response"))

    def _receive(self, seq: int, opcode: int, timer: _RetransmitTimer, wait: float) -> tuple[Frame | None, bool]:
        """Read once: the response if it came, and whether the line showed damage (a NACK, or a damaged
        frame here, which may have been the response: resending at once fetches it from the cache)."""
        rejected_before = self._reader.rejected
        data = self.transport.read(READ_CHUNK, wait)
        if data:
            timer.heard_from_peer(time.monotonic())
        frames = self._reader.feed(data)
        self._counts["frames_received"] += len(frames)
        damage_seen = self._reader.rejected > rejected_before
        for frame in frames:
            if frame.type is FrameType.DATA and frame.seq == seq and frame.opcode == response_opcode(opcode):
                return frame, False
            if frame.type is FrameType.ACK and frame.seq == seq:
                self._counts["acks"] += 1
                timer.acknowledged(time.monotonic())
            elif frame.type is FrameType.NACK:
                self._counts["nacks"] += 1
                damage_seen = True
            else:
                self._counts["stale"] += 1
        return None, damage_seen

    def _send(self, wire: bytes, timer: _RetransmitTimer) -> None:
        if timer.transmissions:
            self._counts["retries"] += 1
        self.transport.write(wire)
        self._counts["frames_sent"] += 1
        timer.sent(time.monotonic())

    @staticmethod
    def _result(frame: Frame) -> bytes:
        if frame.flags & Flags.ERROR:
            raise decode_error(frame.payload)
        return frame.payload

    def _describe_failure(self, opcode: int, started: float, timer: _RetransmitTimer, reason: str) -> str:
        name = self._opcode_names.get(opcode, "opcode")
        acked = " (the device had acknowledged it)" if timer.acked else ""
        stats = self.stats
        return (
            f"{self.transport.uri}: {name} (0x{opcode:04X}): {reason} after {timer.transmissions} attempt(s)"
            f" in {time.monotonic() - started:.2f} s"
            f"{acked}; link totals: {stats['frames_sent']} frames sent, {stats['frames_received']} received, "
            f"{stats['crc_errors']} CRC errors, {stats['malformed']} malformed"
        )


class LinkServer:
    """The device end: runs `handler(opcode, payload) -> (response_opcode, response_payload)` once
    per new request and answers retransmissions from its cache.

    For each valid request frame: SYNC is always executed (it answers with `max_payload` and
    becomes the cached response, which resets duplicate detection); a sequence number equal to the
    cached one is a retransmission, answered by re-sending the cached response; any other one is
    new: ACK, run the handler, send and cache the response. A handler that raises DeviceError
    produces an error response with its code; any other exception produces ErrorCode.INTERNAL.
    A read that contained a damaged frame attempt is answered with one NACK.
    """

    def __init__(self, transport: Transport, handler: Handler, *, max_payload: int = MAX_PAYLOAD):
        self.transport = transport
        self._handler = handler
        self._max_payload = max_payload
        self._reader = FrameReader(max_payload)
        self._counts = Counter()
        self._cached: tuple[int, bytes] | None = None  # (seq, wire bytes of the response)

    @property
    def stats(self) -> dict[str, int]:
        names = ("requests", "duplicates", "syncs", "error_responses", "nacks_sent", "ignored", "frames_sent")
        counts = {name: self._counts[name] for name in names}
        reader = self._reader
        received = {"frames_received": reader.frames, "crc_errors": reader.crc_errors, "malformed": reader.malformed}
        return counts | received

    def serve(self, stop_event: threading.Event, poll_interval: float = 0.05) -> None:
        """Answer requests until `stop_event` is set or the peer closes the connection."""
        try:
            while not stop_event.is_set():
                self.poll(poll_interval)
        except ConnectionError as error:
            logger.info("link server stops: %s", error)

    def poll(self, timeout: float) -> None:
        """Read once (waiting up to `timeout`) and answer every frame that read completed."""
        data = self.transport.read(READ_CHUNK, timeout)
        rejected_before = self._reader.rejected
        for frame in self._reader.feed(data):
            self._on_frame(frame)
        if self._reader.rejected > rejected_before:
            self._counts["nacks_sent"] += 1
            self._send(Frame(FrameType.NACK, 0))

    def _on_frame(self, frame: Frame) -> None:
        if frame.type is not FrameType.DATA or frame.opcode & RESPONSE_BIT:
            self._counts["ignored"] += 1
        elif frame.opcode == SYNC:
            self._counts["syncs"] += 1
            limit = _SYNC_RESPONSE.pack(self._max_payload)
            self._respond(Frame(FrameType.DATA, frame.seq, response_opcode(SYNC), limit))
        elif self._cached is not None and self._cached[0] == frame.seq:
            self._counts["duplicates"] += 1
            self._write(self._cached[1])
        else:
            self._counts["requests"] += 1
            self._send(Frame(FrameType.ACK, frame.seq))
            self._respond(self._execute(frame))

    def _execute(self, request: Frame) -> Frame:
        try:
            opcode, payload = self._handler(request.opcode, request.payload)
            if opcode != response_opcode(request.opcode):
                message = f"handler answered opcode 0x{opcode:04X} to 0x{request.opcode:04X}"
                raise DeviceError(ErrorCode.INTERNAL, message)
            if len(payload) > MAX_PAYLOAD:
                raise DeviceError(ErrorCode.RESPONSE_TOO_LARGE, f"{len(payload)} bytes > {MAX_PAYLOAD}")
            return Frame(FrameType.DATA, request.seq, opcode, payload)
        except DeviceError as error:
            return self._error_response(request, error)
        except Exception as error:
            logger.exception("handler failed on opcode 0x%04X", request.opcode)
            return self._error_response(request, DeviceError(ErrorCode.INTERNAL, f"{type(error).__name__}: {error}"))

    def _error_response(self, request: Frame, error: DeviceError) -> Frame:
        self._counts["error_responses"] += 1
        payload = encode_error(error)
        return Frame(FrameType.DATA, request.seq, response_opcode(request.opcode), payload, Flags.ERROR)

    def _respond(self, response: Frame) -> None:
        wire = DELIMITER + encode_frame(response)
        self._cached = (response.seq, wire)
        self._write(wire)

    def _send(self, frame: Frame) -> None:
        self._write(DELIMITER + encode_frame(frame))

    def _write(self, wire: bytes) -> None:
        self.transport.write(wire)
        self._counts["frames_sent"] += 1


def serve_link(
    transport: Transport,
    handler: Handler,
    stop_event: threading.Event,
    *,
    poll_interval: float = 0.05,
    max_payload: int = MAX_PAYLOAD,
) -> dict[str, int]:
    """Serve `handler` on `transport` until `stop_event` is set or the peer hangs up; return the stats."""
    server = LinkServer(transport, handler, max_payload=max_payload)
    server.serve(stop_event, poll_interval)
    return server.stats
