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


class RoundTrip:
    """A retransmission timeout that follows the measured round trip (RFC 6298, as TCP's does).

    Each sample updates the smoothed round trip SRTT and its mean deviation RTTVAR; the timeout is
    RTO = SRTT + max(G, 4·RTTVAR), kept within [floor, ceiling]. Before the first sample it is `initial`.
    Only unambiguous exchanges are sampled (Karn's rule: the caller skips retransmitted requests).
    """

    ALPHA, BETA, K = 1 / 8, 1 / 4, 4
    GRANULARITY = 0.001  # G: the clock and scheduling granularity a timeout must exceed

    def __init__(self, initial: float, floor: float, ceiling: float):
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = initial
        self._floor, self._ceiling = floor, ceiling

    def sample(self, seconds: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = seconds, seconds / 2
        else:
            self.rttvar = (1 - self.BETA) * self.rttvar + self.BETA * abs(self.srtt - seconds)
            self.srtt = (1 - self.ALPHA) * self.srtt + self.ALPHA * seconds
        self.rto = min(max(self.srtt + max(self.GRANULARITY, self.K * self.rttvar), self._floor), self._ceiling)


class _RetransmitTimer:
    """When to resend the outstanding request, and whether to give up.

    Before the peer ACKs the request, a resend is due after `ack_timeout` of silence (the measured
    request-to-ACK round trip's RTO), doubling at each resend up to `max_interval`; any byte from the
    peer postpones it, since a response may be in flight. At most `retries` resends are made (for any
    reason), and the call fails once they are spent and the line has been silent for `give_up`
    seconds since the first transmission. After an ACK the request is known to be executing: a poll
    for a lost response is due `response_timeout` after the last transmission (the measured
    request-to-response round trip's RTO), doubling at each poll up to `max_interval`, without limit
    until the call's deadline.
    """

    def __init__(self, retries: int, ack_timeout: float, response_timeout: float, max_interval: float,
                 give_up: float):
        self.transmissions = 0
        self.acked = False
        self.due = math.inf
        self.first_sent = self.last_sent = math.nan
        self._retries_left = retries
        self._interval = ack_timeout
        self._poll = response_timeout
        self._max_interval = max_interval
        self._give_up = give_up

    @property
    def may_resend(self) -> bool:
        return self.acked or self._retries_left > 0

    def sent(self, now: float) -> None:
        if self.transmissions:  # a resend
            if self.acked:
                self._poll = min(2 * self._poll, self._max_interval)
            else:
                self._interval = min(2 * self._interval, self._max_interval)
                self._retries_left -= 1
        else:
            self.first_sent = now
        self.transmissions += 1
        self.last_sent = now
        self.due = now + (self._poll if self.acked else self._interval)
        if not self.may_resend:  # the last transmission: give up only after the full silence budget
            self.due = max(self.due, self.first_sent + self._give_up)

    def heard_from_peer(self, now: float) -> None:
        self.due = max(self.due, now + (self._poll if self.acked else self._interval))

    def acknowledged(self, now: float) -> None:
        if not self.acked:
            self.acked = True
            self.due = max(self.last_sent + self._poll, now)


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
        # Per opcode (commands differ in size and work): the request-to-ACK and request-to-response RTOs.
        self._round_trips: dict[int, tuple[RoundTrip, RoundTrip]] = {}
        # A silent peer is given up on no sooner than the fixed schedule would: every interval doubled
        # from retry_interval, however short the measured round trips have made them.
        self._give_up = sum(min(retry_interval * 2 ** i, max_retry_interval) for i in range(retries + 1))

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
        ack, response = self._round_trip(opcode)
        timer = _RetransmitTimer(self.retries, ack.rto, response.rto, self.max_retry_interval, self._give_up)
        started = time.monotonic()
        try:
            self._send(wire, timer)
            while (now := time.monotonic()) < deadline:
                if now >= timer.due:
                    self._counts["timeouts"] += 1
                    if not timer.may_resend:
                        break
                    self._send(wire, timer)
                answer, damage_seen = self._receive(seq, opcode, timer, min(timer.due, deadline) - now)
                if answer is not None:
                    if timer.transmissions == 1:  # Karn's rule: a resent request's round trip is ambiguous
                        response.sample(time.monotonic() - timer.first_sent)
                    return self._result(answer)
                if damage_seen and timer.may_resend:
                    self._send(wire, timer)
        except ConnectionError as error:
            self._counts["failures"] += 1
            reason = f"connection lost ({error})" if timer.transmissions else str(error)
            raise LinkTimeout(self._describe_failure(opcode, started, timer, reason)) from error
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
                if timer.transmissions == 1 and not timer.acked:  # Karn's rule
                    self._round_trip(opcode)[0].sample(time.monotonic() - timer.first_sent)
                timer.acknowledged(time.monotonic())
            elif frame.type is FrameType.NACK:
                self._counts["nacks"] += 1
                damage_seen = True
            else:
                self._counts["stale"] += 1
        return None, damage_seen

    def _round_trip(self, opcode: int) -> tuple[RoundTrip, RoundTrip]:
        """The request-to-ACK and request-to-response estimators of `opcode`."""
        if opcode not in self._round_trips:
            # A timeout never goes below the first resend's interval: on a clean line nothing is resent, however
            # the machine's load makes round trips vary; above it, it follows the measured round trip.
            floor = self.retry_interval
            self._round_trips[opcode] = (RoundTrip(self.retry_interval, floor, self.max_retry_interval),
                                         RoundTrip(self.max_retry_interval, floor, self.max_retry_interval))
        return self._round_trips[opcode]

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
        if not timer.transmissions:  # the request never left: nothing was lost on the way
            return f"{self.transport.uri}: {name} (0x{opcode:04X}): cannot send to the device: {reason}"
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
