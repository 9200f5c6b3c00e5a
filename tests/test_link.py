"""Link layer of the device runtime: COBS, frames, the stream reader, transports, Link and LinkServer.

Everything runs on real components, no mocks: pseudo-terminals (os.openpty) opened by path through
pyserial and VISA (ASRL), real TCP sockets through pyserial (socket://) and VISA (TCPIP ... SOCKET),
and an RFC 2217 server (pyserial's PortManager) in front of a pty for rfc2217://.
"""

import itertools
import pickle
import random
import socket
import threading
import time
import zlib
from collections import Counter
from types import SimpleNamespace

import pytest
import serial
import serial.rfc2217
from hypothesis import given, settings
from hypothesis import strategies as st

from echoforge.runtime import cobs
from echoforge.runtime.errors import ChecksumError, DeviceError, ErrorCode, FrameError, LinkTimeout
from echoforge.runtime.faults import FaultyTransport
from echoforge.runtime.frame import (
    DELIMITER,
    MAX_ENCODED_SIZE,
    MAX_PAYLOAD,
    PROTOCOL_BYTE,
    Flags,
    Frame,
    FrameReader,
    FrameType,
    decode_frame,
    encode_frame,
)
from echoforge.runtime.link import SYNC, Link, response_opcode, serve_link
from echoforge.runtime.transport import (
    PtyTransport,
    SerialTransport,
    SocketTransport,
    Transport,
    is_visa_resource,
    open_transport,
)

# pyserial 3.5's RFC 2217 client calls Thread.setDaemon/setName
pytestmark = pytest.mark.filterwarnings(r"ignore:set(Daemon|Name)\(\) is deprecated:DeprecationWarning")

REVERSE, FAIL, SLOW, CRASH, WRONG_OPCODE, OVERSIZED = 1, 2, 3, 4, 5, 6
OPCODE_NAMES = {REVERSE: "REVERSE", FAIL: "FAIL", SLOW: "SLOW", CRASH: "CRASH", WRONG_OPCODE: "WRONG_OPCODE",
                OVERSIZED: "OVERSIZED"}
SLOW_SECONDS = 0.4
# Scheduling slack allowed on top of a call's timeout: wide, since a shared 2-core machine can stall a thread
# for a second; what these bounds catch is a wait that ignores the deadline (a retry period or more: the
# attempt counts are asserted separately), not a few hundred milliseconds.
TIMING_MARGIN = 2.0


class RecordingHandler:
    """A device's command handler that counts how often each payload was executed."""

    def __init__(self):
        self.executions = Counter()

    def __call__(self, opcode: int, payload: bytes) -> tuple[int, bytes]:
        self.executions[payload] += 1
        if opcode == FAIL:
            raise DeviceError(0x0101, f"refused {payload.decode()}")
        if opcode == SLOW:
            time.sleep(SLOW_SECONDS)
        if opcode == CRASH:
            raise KeyError("no such register")
        if opcode == WRONG_OPCODE:
            return opcode, b""
        if opcode == OVERSIZED:
            return response_opcode(opcode), bytes(MAX_PAYLOAD + 1)
        if opcode not in (REVERSE, SLOW):
            raise DeviceError(ErrorCode.UNKNOWN_OPCODE)
        return response_opcode(opcode), payload[::-1]


class Board:
    """A device served by serve_link in a thread, on a pseudo-terminal or a TCP port.

    `stop()` ends the server but keeps the line open (a silent peer); `close()` hangs up.
    """

    def __init__(self, medium: str, handler=None, max_payload: int = MAX_PAYLOAD):
        self.handler = handler or RecordingHandler()
        self.stats: dict[str, int] = {}
        self.device: Transport | None = None
        self._stop_event = threading.Event()
        self._max_payload = max_payload
        self._listener = None
        if medium == "pty":
            pty = PtyTransport()
            self.address = {"path": pty.device_path}
            open_device = lambda: pty  # noqa: E731
        else:
            self._listener = socket.create_server(("127.0.0.1", 0))
            self._listener.settimeout(10)
            self.address = {"host": "127.0.0.1", "port": self._listener.getsockname()[1]}
            open_device = lambda: SocketTransport(self._listener.accept()[0])  # noqa: E731
        self._thread = threading.Thread(target=self._serve, args=(open_device,), daemon=True)
        self._thread.start()

    def _serve(self, open_device) -> None:
        self.device = open_device()
        self.stats = serve_link(
            self.device, self.handler, self._stop_event, poll_interval=0.01, max_payload=self._max_payload
        )

    def stop(self) -> dict[str, int]:
        self._stop_event.set()
        self._thread.join(10)
        assert not self._thread.is_alive()
        return self.stats

    def close(self) -> None:
        self.stop()
        if self.device is not None:
            self.device.close()
        if self._listener is not None:
            self._listener.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


class Rfc2217Bridge:
    """An RFC 2217 server in front of a board's pty, as ser2net or a terminal server would be.

    pyserial's PortManager speaks the telnet side. It queries modem lines, which ptys lack
    (TIOCMGET fails), so it manages a loop:// stand-in while the data goes to and from the pty.
    """

    def __init__(self, device_path: str):
        self._serial = serial.serial_for_url(device_path, timeout=0.05)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(10)
        self.port = self._listener.getsockname()[1]
        self._stop_event = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        connection, _ = self._listener.accept()
        connection.settimeout(0.05)
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        status_stand_in = serial.serial_for_url("loop://")
        manager = serial.rfc2217.PortManager(status_stand_in, SimpleNamespace(write=connection.sendall))
        upstream = threading.Thread(target=self._device_to_host, args=(manager, connection), daemon=True)
        upstream.start()
        with connection:
            self._host_to_device(manager, connection)
            upstream.join()

    def _host_to_device(self, manager, connection: socket.socket) -> None:
        try:
            while not self._stop_event.is_set():
                try:
                    data = connection.recv(4096)
                except TimeoutError:
                    continue
                if not data:
                    return
                self._serial.write(b"".join(manager.filter(data)))
        except serial.SerialException:
            pass  # the board hung up; the host then sees silence

    def _device_to_host(self, manager, connection: socket.socket) -> None:
        try:
            while not self._stop_event.is_set():
                data = self._serial.read(max(1, self._serial.in_waiting))
                connection.sendall(b"".join(manager.escape(data)))
        except serial.SerialException:
            pass  # the board hung up; the host then sees silence

    def close(self) -> None:
        self._stop_event.set()
        self._thread.join(10)
        self._serial.close()
        self._listener.close()


HOSTS = {
    "pyserial-pty": ("pty", "{path}"),
    "visa-asrl-pty": ("pty", "ASRL{path}::INSTR"),
    "pyserial-socket": ("tcp", "socket://{host}:{port}"),
    "visa-tcpip-socket": ("tcp", "TCPIP::{host}::{port}::SOCKET"),
    "pyserial-rfc2217": ("rfc2217", "rfc2217://127.0.0.1:{bridge_port}"),
}


@pytest.fixture(params=sorted(HOSTS))
def board_and_host(request):
    """A running board and a host transport connected to it, for each kind of host URI."""
    medium, template = HOSTS[request.param]
    board = Board("tcp" if medium == "tcp" else "pty")
    bridge = Rfc2217Bridge(board.address["path"]) if medium == "rfc2217" else None
    address = board.address | ({"bridge_port": bridge.port} if bridge else {})
    host = open_transport(template.format(**address), timeout=2.0)
    yield board, host
    host.close()
    if bridge:
        bridge.close()
    board.close()


def fast_link(transport: Transport, **overrides) -> Link:
    settings = {"timeout": 2.0, "retries": 5, "retry_interval": 0.02, "max_retry_interval": 0.2}
    return Link(transport, opcode_names=OPCODE_NAMES, **(settings | overrides))


# --- COBS ---------------------------------------------------------------------------------------

COBS_VECTORS = [  # Cheshire & Baker; the examples of the Wikipedia article on COBS
    ("00", "0101"),
    ("0000", "010101"),
    ("11220033", "0311220233"),
    ("11223344", "0511223344"),
    ("11000000", "0211010101"),
    (bytes(range(1, 255)).hex(), "ff" + bytes(range(1, 255)).hex()),
    (bytes(range(0, 255)).hex(), "01ff" + bytes(range(1, 255)).hex()),
    (bytes(range(1, 256)).hex(), "ff" + bytes(range(1, 255)).hex() + "02ff"),
    (bytes(range(2, 256)).hex() + "00", "ff" + bytes(range(2, 256)).hex() + "0101"),
    (bytes(range(3, 256)).hex() + "0001", "fe" + bytes(range(3, 256)).hex() + "0201"),
]


@pytest.mark.parametrize(("data", "encoded"), COBS_VECTORS)
def test_cobs_matches_reference_vectors(data, encoded):
    assert cobs.encode(bytes.fromhex(data)) == bytes.fromhex(encoded)
    assert cobs.decode(bytes.fromhex(encoded)) == bytes.fromhex(data)


@given(st.binary(max_size=3000))
def test_cobs_round_trips_without_zero_bytes(data):
    encoded = cobs.encode(data)
    assert 0 not in encoded
    assert len(encoded) <= cobs.max_encoded_length(len(data))
    assert cobs.decode(encoded) == data


@pytest.mark.parametrize("encoded", [b"", b"\x00", b"\x03\x11", b"\x02\x11\x00\x01", b"\xff\x01"])
def test_cobs_rejects_malformed_input(encoded):
    with pytest.raises(FrameError):
        cobs.decode(encoded)


def damaged_encoding(data: bytes, index: int, value: int) -> bytes:
    encoded = bytearray(cobs.encode(data))
    encoded[index % len(encoded)] = value
    return bytes(encoded)


@given(st.one_of(st.binary(max_size=600), st.binary(max_size=600).map(cobs.encode),
                 st.builds(damaged_encoding, st.binary(max_size=600), st.integers(0), st.integers(0, 255))))
def test_cobs_decoder_raises_only_frame_error_and_accepts_only_encodings(data):
    try:
        decoded = cobs.decode(data)
    except FrameError:
        return
    assert cobs.encode(decoded) == data  # what it accepts is exactly the encoding of what it returns


# --- frames -------------------------------------------------------------------------------------


def forge(body: bytes) -> bytes:
    """Wire bytes for an arbitrary header+payload, with a correct CRC: frames that pass the CRC."""
    return cobs.encode(body + zlib.crc32(body).to_bytes(4, "little")) + DELIMITER


def test_crc_is_crc32_iso_hdlc():
    assert zlib.crc32(b"123456789") == 0xCBF43926  # the CRC-32 check value docs/protocol.md cites


PROTOCOL_DOC_EXAMPLES = [  # docs/protocol.md, section 3.5
    (Frame(FrameType.DATA, 1, 0x0102, b"\x00\x01hi"), "03 E1 01 02 01 04 02 01 04 01 01 01 08 01 68 69 AE 58 77 6B 00"),
    (Frame(FrameType.DATA, 0, SYNC), "03 E1 01 01 01 01 01 01 01 01 01 05 B5 A6 FE 62 00"),
    (
        Frame(FrameType.DATA, 0, 0x8000, (65536).to_bytes(4, "little")),
        "03 E1 01 01 01 01 03 80 04 01 01 01 01 02 01 05 D5 B3 9A 04 00",
    ),
    (Frame(FrameType.ACK, 1), "03 E1 02 02 01 01 01 01 01 01 01 05 28 1D 63 45 00"),
    (Frame(FrameType.NACK, 0), "03 E1 03 01 01 01 01 01 01 01 01 05 88 76 0B 66 00"),
    (
        Frame(FrameType.DATA, 1, 0x8002, (0x0101).to_bytes(2, "little") + b"no", Flags.ERROR),
        "05 E1 01 01 01 04 02 80 04 01 01 09 01 01 6E 6F F1 F0 4A C0 00",
    ),
]


@pytest.mark.parametrize(("frame", "wire"), PROTOCOL_DOC_EXAMPLES)
def test_frames_match_the_protocol_doc_examples(frame, wire):
    assert encode_frame(frame) == bytes.fromhex(wire)
    assert decode_frame(bytes.fromhex(wire)) == frame


frames = st.builds(
    Frame,
    type=st.sampled_from(FrameType),
    seq=st.integers(0, 0xFFFF),
    opcode=st.integers(0, 0xFFFF),
    payload=st.binary(max_size=700),
    flags=st.integers(0, 0xFF),
)


@given(frames)
def test_frame_round_trips(frame):
    wire = encode_frame(frame)
    assert wire.endswith(DELIMITER) and 0 not in wire[:-1]
    assert decode_frame(wire) == frame
    assert decode_frame(wire[:-1]) == frame


def test_largest_frame_round_trips_within_the_encoded_bound():
    frame = Frame(FrameType.DATA, 0xFFFF, 0x7FFF, random.Random(1).randbytes(MAX_PAYLOAD))
    wire = encode_frame(frame)
    assert len(wire) - 1 <= MAX_ENCODED_SIZE
    assert decode_frame(wire) == frame


@pytest.mark.parametrize(
    ("field", "value"), [("seq", 0x10000), ("opcode", -1), ("flags", 0x100), ("payload", bytes(MAX_PAYLOAD + 1))]
)
def test_frame_refuses_fields_that_do_not_fit(field, value):
    with pytest.raises(ValueError):
        Frame(FrameType.DATA, **{"seq": 0, field: value})


def damaged(frame: Frame) -> bytes:
    """Wire bytes of `frame` with one payload bit flipped, still one well-delimited chunk."""
    raw = bytearray(cobs.decode(encode_frame(frame)[:-1]))
    raw[-5] ^= 0x20
    return cobs.encode(bytes(raw)) + DELIMITER


def test_frame_damage_is_a_checksum_error():
    with pytest.raises(ChecksumError):
        decode_frame(damaged(Frame(FrameType.DATA, 3, 1, b"payload")))


HEADER_OK = bytes([PROTOCOL_BYTE, FrameType.DATA, 0]) + (1).to_bytes(2, "little") + (1).to_bytes(2, "little")


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (bytes([0xE2]) + HEADER_OK[1:] + (0).to_bytes(4, "little"), "protocol byte"),
        (HEADER_OK[:1] + bytes([9]) + HEADER_OK[2:] + (0).to_bytes(4, "little"), "frame type"),
        (HEADER_OK + (5).to_bytes(4, "little") + b"abc", "length field"),
        (HEADER_OK[:6], "shorter"),
    ],
)
def test_well_checksummed_but_invalid_frames_are_malformed_not_crc_errors(body, problem):
    with pytest.raises(FrameError, match=problem) as raised:
        decode_frame(forge(body))
    assert not isinstance(raised.value, ChecksumError)


def test_decoder_enforces_a_smaller_payload_limit():
    wire = encode_frame(Frame(FrameType.DATA, 0, 1, bytes(101)))
    with pytest.raises(FrameError, match="exceeds"):
        decode_frame(wire, max_payload=100)


# --- the stream reader --------------------------------------------------------------------------


def mutate(wire: bytes, rng: random.Random) -> bytes:
    """Damage a frame's bytes like a bad line does: flip, drop, insert or cut."""
    data = bytearray(wire)
    position = rng.randrange(len(data))
    kind = rng.choice(["flip", "drop", "insert", "truncate"])
    if kind == "flip":
        data[position] ^= rng.randrange(1, 256)
    elif kind == "drop":
        del data[position]
    elif kind == "insert":
        data.insert(position, rng.randrange(256))
    else:
        del data[position:]
    return bytes(data)


def split(data: bytes, sizes: list[int]) -> list[bytes]:
    """Cut `data` into consecutive pieces, cycling through `sizes`: a stream as reads return it."""
    pieces, start = [], 0
    for size in itertools.cycle(sizes):
        if start >= len(data):
            return pieces
        pieces.append(data[start : start + size])
        start += size


stream_items = st.lists(
    st.one_of(
        st.tuples(st.just("intact"), frames),
        st.tuples(st.just("mutated"), frames),
        st.tuples(st.just("garbage"), st.binary(min_size=1, max_size=80)),
    ),
    max_size=12,
)


@settings(max_examples=150)
@given(stream_items, st.randoms(use_true_random=False), st.lists(st.integers(1, 200), min_size=1, max_size=30))
def test_reader_recovers_every_intact_frame_from_a_damaged_stream(items, rng, chunk_sizes):
    stream = bytearray()
    intact = []
    for kind, content in items:
        if kind == "garbage":
            stream += content
            continue
        wire = DELIMITER + encode_frame(content)  # senders delimit on both sides
        stream += wire if kind == "intact" else mutate(wire, rng)
        if kind == "intact":
            intact.append(content)

    reader = FrameReader()
    recovered = [frame for piece in split(bytes(stream), chunk_sizes) for frame in reader.feed(piece)]

    generated = [content for kind, content in items if kind != "garbage"]
    assert all(frame in generated for frame in recovered)
    remaining = iter(recovered)
    in_order = all(any(frame == candidate for candidate in remaining) for frame in intact)
    assert in_order, "intact frames lost or reordered"
    assert reader.frames == len(recovered)


def test_reader_loses_only_the_frames_whose_delimiter_was_lost():
    first, second, third = (encode_frame(Frame(FrameType.DATA, seq, 1, b"x" * 30)) for seq in (1, 2, 3))
    reader = FrameReader()
    recovered = reader.feed(first[:-1] + second + third)
    assert recovered == [decode_frame(third)]
    assert reader.rejected == 1


def test_reader_memory_stays_bounded_without_delimiters():
    reader = FrameReader()
    garbage = bytes(range(1, 256)) * 1200  # 306 kB without a single 0x00
    frame = Frame(FrameType.ACK, 7)
    for start in range(0, len(garbage), 4096):
        assert reader.feed(garbage[start : start + 4096]) == []
    assert reader.feed(DELIMITER + encode_frame(frame)) == [frame]
    assert reader.malformed == 1
    assert reader.discarded_bytes == len(garbage)


def test_reader_accepts_a_frame_one_byte_at_a_time_and_ignores_noise():
    frame = Frame(FrameType.DATA, 9, 0x8001, b"\x00" * 10 + b"tail")
    reader = FrameReader()
    stream = b"\x07\x00\x00" + encode_frame(frame)
    recovered = [got for byte in stream for got in reader.feed(bytes([byte]))]
    assert recovered == [frame]
    assert (reader.rejected, reader.discarded_bytes) == (0, 1)


# --- transports ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "visa"),
    [
        ("ASRL/dev/pts/3::INSTR", True),
        ("TCPIP::127.0.0.1::5025::SOCKET", True),
        ("tcpip0::10.0.0.2::inst0::INSTR", True),
        ("/dev/ttyUSB0", False),
        ("loop://", False),
        ("socket://[::1]:5025", False),
        ("rfc2217://localhost:7000", False),
    ],
)
def test_visa_resources_are_told_apart_from_pyserial_urls(uri, visa):
    assert is_visa_resource(uri) is visa


def test_unsupported_visa_resource_kinds_are_refused_before_opening():
    with pytest.raises(ValueError, match="unsupported VISA resource"):
        open_transport("TCPIP0::127.0.0.1::inst0::INSTR")


@pytest.mark.parametrize("uri", ["/dev/echoforge-no-such-port", "ASRL/dev/echoforge-no-such-port::INSTR"])
def test_opening_a_missing_port_is_a_connection_error_naming_it(uri):
    with pytest.raises(ConnectionError, match="echoforge-no-such-port"):
        open_transport(uri)


def test_loop_transport_returns_what_is_there_and_times_out_empty():
    with open_transport("loop://") as transport:
        assert isinstance(transport, SerialTransport)
        transport.write(b"abc\x00def")
        assert transport.read(100, 1.0) == b"abc\x00def"
        started = time.monotonic()
        assert transport.read(100, 0.1) == b""
        assert 0.09 <= time.monotonic() - started < 0.1 + TIMING_MARGIN


def test_every_host_transport_kind_moves_raw_bytes_and_times_out_empty(board_and_host):
    board, host = board_and_host
    started = time.monotonic()
    assert host.read(100, 0.15) == b""
    assert 0.14 <= time.monotonic() - started < 0.15 + TIMING_MARGIN
    board.stop()  # the bytes below would be garbage to a running server
    host.write(b"\n\r\x00\xff\x0a\x11")  # termination characters must pass untouched
    assert read_exactly(board.device, 6) == b"\n\r\x00\xff\x0a\x11"
    board.device.write(b"\x0a\x00\r\n\xfe")
    assert read_exactly(host, 5) == b"\x0a\x00\r\n\xfe"


def read_exactly(transport: Transport, count: int, timeout: float = 2.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < count and time.monotonic() < deadline:
        data += transport.read(count - len(data), deadline - time.monotonic())
    return data


def test_a_device_end_keeps_receiving_while_it_sends():
    """Both ends write more than the line holds at once — a host retransmitting a large request while the
    device writes a large response: the device takes the host's bytes in as it writes, so neither blocks."""
    big = bytes(range(1, 256)) * 1000
    failures = []

    def device_writes():
        try:
            device.write(big)
        except ConnectionError as error:
            failures.append(error)

    with PtyTransport(write_timeout=2.0) as device, open_transport(device.device_path, timeout=2.0) as host:
        sender = threading.Thread(target=device_writes)
        sender.start()
        host.write(big)
        assert read_exactly(host, len(big), timeout=5.0) == big
        sender.join(5.0)
        assert not failures and read_exactly(device, len(big)) == big


def test_fault_injection_is_reproducible():
    damaged = []
    for _ in range(2):
        with open_transport("loop://") as inner:
            faulty = FaultyTransport(inner, drop=0.05, corrupt=0.05, duplicate=0.05, seed=42)
            faulty.write(bytes(range(256)) * 4)
            damaged.append((read_exactly(faulty, 2000, timeout=0.1), dict(faulty.faults)))
    assert damaged[0] == damaged[1]
    assert all(count > 0 for count in damaged[0][1].values())


# --- Link and LinkServer over real lines --------------------------------------------------------


def test_calls_return_results_and_device_errors(board_and_host):
    board, host = board_and_host
    link = fast_link(host, retry_interval=0.25)  # a clean line needs no retries: exact counts below
    payloads = [b"", b"a", bytes(range(256)) * 2, random.Random(0).randbytes(5000)]
    for index, payload in enumerate(payloads):
        assert link.call(REVERSE, payload + b"#%d" % index) == (payload + b"#%d" % index)[::-1]
    with pytest.raises(DeviceError, match="refused it") as refused:
        link.call(FAIL, b"it")
    assert refused.value.code == 0x0101
    with pytest.raises(DeviceError) as unknown:
        link.call(0x0042, b"?")
    assert unknown.value.code == ErrorCode.UNKNOWN_OPCODE
    stats = board.stop()
    assert set(board.handler.executions.values()) == {1}
    assert link.stats == {
        "calls": 6, "frames_sent": 7, "frames_received": 13, "retries": 0, "timeouts": 0, "acks": 6,
        "nacks": 0, "stale": 0, "failures": 0, "crc_errors": 0, "malformed": 0,
    }  # fmt: skip
    assert (stats["requests"], stats["syncs"], stats["duplicates"], stats["error_responses"]) == (6, 1, 0, 2)


def test_handler_failures_become_internal_errors_and_the_server_survives():
    with Board("pty") as board, open_transport(board.address["path"]) as host:
        link = fast_link(host)
        with pytest.raises(DeviceError, match="KeyError") as crash:
            link.call(CRASH, b"")
        assert crash.value.code == ErrorCode.INTERNAL
        with pytest.raises(DeviceError, match="answered opcode 0x0005") as wrong:
            link.call(WRONG_OPCODE, b"")
        assert wrong.value.code == ErrorCode.INTERNAL
        assert link.call(REVERSE, b"still alive") == b"evila llits"


def test_a_response_too_large_for_a_frame_becomes_an_error_and_the_server_survives():
    with Board("pty") as board, open_transport(board.address["path"]) as host:
        link = fast_link(host)
        with pytest.raises(DeviceError, match=f"{MAX_PAYLOAD + 1} bytes > {MAX_PAYLOAD}") as too_large:
            link.call(OVERSIZED, b"")
        assert too_large.value.code == ErrorCode.RESPONSE_TOO_LARGE
        assert link.call(REVERSE, b"still alive") == b"evila llits"
        assert board.stop()["error_responses"] == 1


def test_sequence_numbers_wrap_from_0xffff_to_0():
    """16-bit sequence numbers: after 0xFFFF comes 0, a new request to the device (not a retransmission)."""
    with Board("pty") as board, open_transport(board.address["path"]) as host:
        link = fast_link(host, retry_interval=0.5)
        assert link.call(REVERSE, b"sync first") == b"tsrif cnys"
        link._next_seq = 0xFFFE  # 65,534 calls later
        for payload in (b"0xFFFE", b"0xFFFF", b"0x0000"):
            assert link.call(REVERSE, payload) == payload[::-1]
        assert link._next_seq == 1
        stats = board.stop()
    assert (stats["requests"], stats["duplicates"]) == (4, 0)
    assert set(board.handler.executions.values()) == {1}


def test_a_late_response_to_an_abandoned_call_is_counted_stale_and_skipped():
    """A call that timed out while the device still worked on it: its response arrives during the next call,
    which must skip it (stale) and return its own."""
    with Board("pty") as board, open_transport(board.address["path"]) as host:
        link = fast_link(host, retries=0, retry_interval=5.0)  # one transmission: one late response
        link.sync()
        with pytest.raises(LinkTimeout, match="acknowledged"):
            link.call(SLOW, b"late", timeout=SLOW_SECONDS / 4)
        assert link.stats["stale"] == 0
        assert link.call(REVERSE, b"next", timeout=5 * SLOW_SECONDS) == b"txen"
        assert link.stats["stale"] == 1
        board.stop()
    assert board.handler.executions == Counter({b"late": 1, b"next": 1})


def test_payload_limit_comes_from_the_device():
    with Board("pty", max_payload=100) as board, open_transport(board.address["path"]) as host:
        link = fast_link(host)
        assert link.call(REVERSE, bytes(100)) == bytes(100)
        assert link.peer_max_payload == 100
        with pytest.raises(ValueError, match="maximum 100"):
            link.call(REVERSE, bytes(101))


@pytest.mark.parametrize("opcode", [SYNC, 0x8000, 0x10000])
def test_request_opcodes_outside_the_application_range_are_refused(opcode):
    with open_transport("loop://") as transport, pytest.raises(ValueError, match="outside"):
        Link(transport).call(opcode)


@pytest.mark.parametrize("medium_and_uri", [("pty", "{path}"), ("tcp", "socket://{host}:{port}")], ids=["pty", "tcp"])
def test_lossy_line_still_gives_every_result_exactly_once(medium_and_uri):
    medium, template = medium_and_uri
    with Board(medium) as board, open_transport(template.format(**board.address)) as inner:
        line = FaultyTransport(inner, drop=0.0007, corrupt=0.0007, duplicate=0.0007, seed=7)
        link = fast_link(line, retries=10, timeout=10.0)
        rng = random.Random(3)
        for index in range(60):
            payload = b"%04d" % index + rng.randbytes(rng.randrange(50, 400))
            assert link.call(REVERSE, payload) == payload[::-1]
        stats = board.stop()
    assert len(board.handler.executions) == 60
    assert set(board.handler.executions.values()) == {1}, "a retransmitted request was executed twice"
    assert min(line.faults.values()) > 0
    assert link.stats["retries"] > 0 and stats["duplicates"] > 0 and stats["nacks_sent"] > 0
    assert link.stats["failures"] == 0


def test_acknowledged_slow_command_is_polled_not_abandoned():
    # Without the ACK, 1 retry at 20 ms then 40 ms of silence would give up long before the 0.4 s command ends.
    with Board("pty") as board, open_transport(board.address["path"]) as host:
        link = fast_link(host, retries=1, retry_interval=0.02, max_retry_interval=0.1, timeout=3.0)
        assert link.call(SLOW, b"slow") == b"wols"
        assert link.call(REVERSE, b"next") == b"txen"
        stats = board.stop()
    assert board.handler.executions == Counter({b"slow": 1, b"next": 1})
    assert link.stats["acks"] == 2 and link.stats["retries"] >= 2 and stats["duplicates"] >= 2


@pytest.fixture
def raw_board():
    """A pty board and a host transport that exchanges hand-made frames with it."""
    with Board("pty") as board, open_transport(board.address["path"]) as host:
        yield board, host


def exchange(host: Transport, wire: bytes, count: int, timeout: float = 2.0) -> list[Frame]:
    """Send raw bytes and collect `count` frames of the answer, or what came within `timeout`."""
    host.write(wire)
    reader = FrameReader()
    received = []
    deadline = time.monotonic() + timeout
    while len(received) < count and time.monotonic() < deadline:
        received += reader.feed(host.read(4096, deadline - time.monotonic()))
    return received


def request(seq: int, opcode: int, payload: bytes = b"") -> bytes:
    return DELIMITER + encode_frame(Frame(FrameType.DATA, seq, opcode, payload))


def test_retransmitted_request_is_answered_from_the_cache(raw_board):
    board, host = raw_board
    sync_response = exchange(host, request(500, SYNC), 1)
    assert sync_response == [Frame(FrameType.DATA, 500, response_opcode(SYNC), MAX_PAYLOAD.to_bytes(4, "little"))]
    first = exchange(host, request(501, REVERSE, b"once"), 2)
    assert first == [Frame(FrameType.ACK, 501), Frame(FrameType.DATA, 501, response_opcode(REVERSE), b"ecno")]
    assert exchange(host, request(501, REVERSE, b"once"), 1) == first[1:]  # no ACK, no execution
    assert exchange(host, request(502, REVERSE, b"once"), 2)[1].payload == b"ecno"
    stats = board.stop()
    assert board.handler.executions[b"once"] == 2  # seq 501 once, seq 502 once
    assert (stats["duplicates"], stats["requests"]) == (1, 2)


def test_sync_is_always_executed_and_restarts_duplicate_detection(raw_board):
    board, host = raw_board
    exchange(host, request(0, SYNC), 1)
    exchange(host, request(1, REVERSE, b"a"), 2)
    # A new host session restarts at seq 0: SYNC again, then seq 1 is new although the device saw seq 1 last.
    assert exchange(host, request(0, SYNC), 1)[0].seq == 0
    assert exchange(host, request(1, REVERSE, b"b"), 2)[1].payload == b"b"
    assert board.stop()["syncs"] == 2
    assert board.handler.executions == Counter({b"a": 1, b"b": 1})


def test_damaged_frames_are_nacked_and_noise_is_not(raw_board):
    board, host = raw_board
    damaged_request = DELIMITER + damaged(Frame(FrameType.DATA, 7, REVERSE, b"payload"))
    assert exchange(host, damaged_request, 1) == [Frame(FrameType.NACK, 0)]
    assert exchange(host, b"\x00\x13\x37\x00", 1, timeout=0.3) == []  # shorter than any frame: line noise
    stats = board.stop()
    assert (stats["nacks_sent"], stats["crc_errors"] + stats["malformed"], stats["requests"]) == (1, 1, 0)


def test_frames_a_device_does_not_answer_are_counted_ignored(raw_board):
    """An ACK, a NACK or a response arriving at the device is not a request: no answer, counted as ignored."""
    board, host = raw_board
    stray = [Frame(FrameType.ACK, 3), Frame(FrameType.NACK, 4), Frame(FrameType.DATA, 5, response_opcode(REVERSE), b"x")]
    assert exchange(host, b"".join(DELIMITER + encode_frame(frame) for frame in stray), 1, timeout=0.3) == []
    stats = board.stop()
    assert (stats["ignored"], stats["requests"], stats["nacks_sent"]) == (3, 0, 0)
    assert not board.handler.executions


def test_error_responses_carry_the_error_flag(raw_board):
    _, host = raw_board
    exchange(host, request(0, SYNC), 1)
    ack, response = exchange(host, request(1, FAIL, b"x"), 2)
    assert response.flags == Flags.ERROR and response.opcode == response_opcode(FAIL)
    assert response.payload == (0x0101).to_bytes(2, "little") + b"refused x"


def test_device_error_survives_pickling():
    error = pickle.loads(pickle.dumps(DeviceError(ErrorCode.BAD_PAYLOAD, "short")))
    assert (error.code, error.message, str(error)) == (2, "short", "device error 0x0002 BAD_PAYLOAD: short")


# --- dead peers ---------------------------------------------------------------------------------


def test_silent_peer_times_out_within_the_deadline(board_and_host):
    board, host = board_and_host
    link = fast_link(host, retries=50, timeout=0.6)
    assert link.call(REVERSE, b"up") == b"pu"
    board.stop()  # the line stays open, nobody answers
    started = time.monotonic()
    with pytest.raises(LinkTimeout) as timeout:
        link.call(REVERSE, b"anyone?")
    elapsed = time.monotonic() - started
    assert 0.6 <= elapsed < 0.6 + TIMING_MARGIN
    message = str(timeout.value)
    assert "\n" not in message and host.uri in message and "REVERSE (0x0001): no response after" in message
    assert link.stats["failures"] == 1 and link.stats["timeouts"] >= 3


def test_closed_peer_fails_within_the_deadline(board_and_host):
    board, host = board_and_host
    link = fast_link(host, retries=50, timeout=0.6)
    assert link.call(REVERSE, b"up") == b"pu"
    board.close()
    started = time.monotonic()
    with pytest.raises(LinkTimeout, match="REVERSE"):
        link.call(REVERSE, b"anyone?")
    assert time.monotonic() - started < 0.6 + TIMING_MARGIN


def test_retries_run_out_before_a_long_deadline():
    with Board("pty") as board, open_transport(board.address["path"]) as host:
        board.stop()
        link = fast_link(host, retries=2, retry_interval=0.05, max_retry_interval=1.0, timeout=5.0)
        started = time.monotonic()
        with pytest.raises(LinkTimeout, match=r"SYNC \(0x0000\): no response after 3 attempt\(s\)"):
            link.call(REVERSE, b"x")
        elapsed = time.monotonic() - started
    assert 0.05 + 0.1 + 0.2 <= elapsed < 0.35 + TIMING_MARGIN
    assert link.stats == {
        "calls": 1, "frames_sent": 3, "frames_received": 0, "retries": 2, "timeouts": 3, "acks": 0,
        "nacks": 0, "stale": 0, "failures": 1, "crc_errors": 0, "malformed": 0,
    }  # fmt: skip
