"""Command layer encodings, chunk-wise emulator streams and frame-level fault injection."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from echoforge.models.core import OscillatorParams
from echoforge.runtime.commands import (
    BankProgram,
    BoardInfo,
    Capabilities,
    Opcode,
    decode_hello,
    decode_program,
    decode_request,
    encode_hello,
    encode_program,
    encode_request,
    pack_samples,
    program_hash,
    sample_bytes,
    unpack_samples,
)
from echoforge.runtime.errors import DeviceError, ErrorCode
from echoforge.runtime.faults import FaultyFrameTransport
from echoforge.runtime.frame import Frame, FrameReader, FrameType, encode_frame
from echoforge.runtime.transport import Transport
from echoforge.targets.emulator import EmulatorCore, FormatConfig
from echoforge.targets.emulator.kernels import ACCUMULATORS
from echoforge.targets.emulator.stream import EchoStream, ForwardStream

EPOCH = 0x12345678


def loaded_core(kind, size, seed, config=FormatConfig()):
    rng = np.random.default_rng(seed)
    core = EmulatorCore(config)
    core.load(OscillatorParams(kind, a=rng.uniform(0.2, 1.0, size), delta=rng.uniform(0.3, 0.7, size),
                               w=rng.uniform(0.5, 1.0, size), b=rng.uniform(-0.5, 0.5, size),
                               c=rng.uniform(0.3, 0.7, size)))
    return core


# ---- samples and layouts --------------------------------------------------------------------------

@given(st.integers(16, 30).flatmap(
    lambda bits: st.tuples(st.just(bits), st.lists(st.integers(-(2 ** (bits - 1)) + 1, 2 ** (bits - 1) - 1),
                                                   max_size=50))))
def test_samples_round_trip_in_the_narrowest_width(bits_and_codes):
    bits, codes = bits_and_codes
    width = sample_bytes(bits)
    data = pack_samples(np.array(codes, dtype=np.int64), width)
    assert len(data) == width * len(codes)
    assert unpack_samples(data, (len(codes),), width).tolist() == codes


def test_sample_widths_follow_the_word():
    assert [sample_bytes(bits) for bits in (16, 17, 24, 25, 30, 31, 64)] == [2, 3, 3, 4, 4, 4, 8]


def test_wrong_amount_of_samples_is_a_bad_payload():
    with pytest.raises(DeviceError) as refused:
        unpack_samples(b"\x00" * 7, (2, 2), 2)
    assert refused.value.code == ErrorCode.BAD_PAYLOAD


def test_protocol_doc_examples():
    """The byte strings of docs/protocol.md, section 10.12."""
    begin = encode_request(Opcode.BEGIN_FORWARD, EPOCH, (0, 1, 2, 1000))
    assert begin.hex(" ").upper() == "78 56 34 12 00 01 02 00 E8 03 00 00"
    chunk = encode_request(Opcode.FORWARD_CHUNK, EPOCH, (0, 2), pack_samples(np.array([1, -1, 256, -65536]), 3))
    assert chunk.hex(" ").upper() == "78 56 34 12 00 00 00 00 02 00 00 00 01 00 00 FF FF FF 00 01 00 00 00 FF"
    image = encode_program([BankProgram("linear", FormatConfig(16), np.array([[1], [2], [3], [-1], [0]]))])
    assert image.hex(" ").upper() == "01 01 00 10 08 0C 0E 0C 0C 0E 0A 01 00 01 00 02 00 03 00 FF FF 00 00"
    assert program_hash(image) == 0x8919B478


def test_requests_check_length_before_epoch():
    with pytest.raises(DeviceError) as short:
        decode_request(Opcode.BEGIN_FORWARD, encode_request(Opcode.RESET, EPOCH), EPOCH)
    assert short.value.code == ErrorCode.BAD_PAYLOAD
    with pytest.raises(DeviceError, match="rebooted") as stale:
        decode_request(Opcode.RESET, encode_request(Opcode.RESET, EPOCH + 1), EPOCH)
    assert stale.value.code == ErrorCode.STALE_EPOCH
    fields, body = decode_request(Opcode.FORWARD_CHUNK, encode_request(Opcode.FORWARD_CHUNK, EPOCH, (5, 6), b"xy"),
                                  EPOCH)
    assert (fields, body) == ((5, 6), b"xy")


# ---- program image and HELLO ------------------------------------------------------------------------

@pytest.mark.parametrize("word_bits", [16, 24, 30])
def test_program_image_round_trips_canonically(word_bits):
    config = FormatConfig(word_bits)
    banks = [BankProgram(kind, config, loaded_core(kind, size, seed, config).param_codes)
             for kind, size, seed in (("linear", 3, 0), ("nonlinear", 5, 1))]
    image = encode_program(banks)
    decoded = decode_program(image)
    assert [(bank.kind, bank.config) for bank in decoded] == [(bank.kind, bank.config) for bank in banks]
    assert all(np.array_equal(got.codes, sent.codes) for got, sent in zip(decoded, banks))
    assert encode_program(decoded) == image


@pytest.mark.parametrize("damage, message", [
    (lambda image: b"\x02" + image[1:], "format version"),
    (lambda image: image[:1] + b"\x00" + image[2:], "0 banks"),
    (lambda image: image[:2] + b"\x07" + image[3:], "kind code 7"),
    (lambda image: image[:3] + b"\x0F" + image[4:], "word_bits"),
    (lambda image: image[:-1], "ends inside"),
    (lambda image: image + b"\x00", "after the last bank"),
])
def test_malformed_program_images_are_refused(damage, message):
    image = encode_program([BankProgram("linear", FormatConfig(16), np.zeros((5, 2), np.int64))])
    with pytest.raises(DeviceError, match=message) as refused:
        decode_program(damage(image))
    assert refused.value.code == ErrorCode.BAD_PROGRAM


def test_hello_round_trips():
    info = BoardInfo(1, "fpga", "rtl build 7f3e", 0xDEADBEEF, Capabilities(max_oscillators=512, hru_kinds=("linear",)))
    assert decode_hello(encode_hello(info)) == info
    assert "fpga board" in info.describe() and "0xDEADBEEF" in info.describe()


# ---- streams: a chunk at a time is the whole sequence -------------------------------------------------

def _chunks(length, sizes):
    """Slices covering 0..length with the given sizes (the last one takes the rest)."""
    bounds = np.minimum(np.cumsum([0, *sizes]), length).tolist() + [length]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


@settings(max_examples=20, deadline=None)
@given(kind=st.sampled_from(["linear", "nonlinear"]), sizes=st.lists(st.integers(1, 40), min_size=1, max_size=8),
       seed=st.integers(0, 2 ** 16))
def test_streams_in_chunks_match_the_whole_sequence_bit_for_bit(kind, sizes, seed):
    core = loaded_core(kind, 4, seed)
    rng = np.random.default_rng(seed)
    state = core.config.state
    forcing = state.quantize(rng.normal(size=(2, 97, 4)))[0]
    phi, pi = (state.quantize(rng.normal(size=(2, 4)))[0] for _ in range(2))
    nudges = state.quantize(0.05 * rng.normal(size=forcing.shape))[0]
    whole = core.forward_int(forcing, phi, pi)
    chunks = _chunks(forcing.shape[1], sizes)
    forward = ForwardStream(core, phi, pi)
    positions = np.concatenate([forward.run(forcing[:, s]) for s in chunks], axis=1)
    assert np.array_equal(positions, whole.positions)
    assert np.array_equal(forward.phi, whole.phi) and np.array_equal(forward.pi, whole.pi)

    expected = core.echo_int(forcing, whole.phi, whole.pi, nudges)
    echo = EchoStream(core, whole.phi, whole.pi)
    observable = np.empty_like(forcing)
    for s in reversed(chunks):
        observable[:, s] = echo.run(forcing[:, s], nudges[:, s])
    assert np.array_equal(observable, expected.forcing_observable)
    assert np.array_equal(echo.phi, expected.phi) and np.array_equal(echo.pi, expected.pi)
    for row, name in enumerate(ACCUMULATORS):
        assert np.array_equal(echo.accumulators[:, row], expected.accumulators[name]), name
    assert echo.counters.tolist() == [expected.saturation.counts[name] for name in ("state", "force", "preact",
                                                                                    "accumulator")]


# ---- frame faults ---------------------------------------------------------------------------------------

FRAMES = [b"\x00" + encode_frame(Frame(FrameType.DATA, seq, 1, bytes([seq]) * 40)) for seq in range(1, 201)]


class Pipe(Transport):
    """In memory: writes are kept in `written`, reads return what `feed` queued."""

    uri = "pipe://"

    def __init__(self):
        self.written = bytearray()
        self._queued = bytearray()

    def feed(self, data: bytes) -> None:
        self._queued += data

    def write(self, data: bytes) -> None:
        self.written += data

    def read(self, max_bytes: int, timeout: float) -> bytes:
        data, self._queued = bytes(self._queued[:max_bytes]), self._queued[max_bytes:]
        return data

    def close(self) -> None:
        pass


def _through_faults(seed, **rates):
    """What FRAMES become when written through a FaultyFrameTransport, and the faults counted."""
    pipe = Pipe()
    line = FaultyFrameTransport(pipe, seed=seed, **rates)
    for wire in FRAMES:
        line.write(wire)
    return bytes(pipe.written), dict(line.faults)


def test_frame_faults_hit_whole_frames_at_their_rate_reproducibly():
    received, faults = _through_faults(7, drop=0.1, corrupt=0.1, duplicate=0.1)
    assert (received, faults) == _through_faults(7, drop=0.1, corrupt=0.1, duplicate=0.1)
    assert all(5 <= n <= 40 for n in faults.values()), faults
    reader = FrameReader()
    frames = reader.feed(received)
    assert reader.crc_errors + reader.malformed == faults["corrupted"]
    assert len(frames) == len(FRAMES) - faults["dropped"] - faults["corrupted"] + faults["duplicated"]


def test_frame_faults_apply_to_received_frames_once_complete():
    pipe = Pipe()
    line = FaultyFrameTransport(pipe, drop=1.0)
    pipe.feed(FRAMES[0][:10])
    assert line.read(100, 0.0) == b"\x00"  # the leading delimiter passes; the frame is incomplete
    pipe.feed(FRAMES[0][10:] + FRAMES[1][:1])
    assert line.read(100, 0.0) == b"\x00"  # the frame is dropped, the next one's delimiter passes
    assert line.faults["dropped"] == 1


def test_fault_rates_are_checked():
    with pytest.raises(ValueError, match="drop rate"):
        FaultyFrameTransport(Pipe(), drop=1.5)
    with pytest.raises(ValueError, match="add up to"):
        FaultyFrameTransport(Pipe(), drop=0.6, corrupt=0.6)
