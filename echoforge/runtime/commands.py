"""The command layer: opcodes and the byte layout of every request and response (docs/protocol.md §10).

Host (device.py) and board simulator (board.py) both encode and decode through this module, so the
layouts live in one place. Everything is little-endian. Every request except HELLO starts with the u32
boot epoch the host learnt from HELLO; a board refuses a request whose epoch is not its own
(STALE_EPOCH), so a board that rebooted never runs a command meant for its previous life.

Arrays cross the link as *samples*: integer codes in two's complement, as many bytes as their word
needs (`sample_bytes`): a word of n bits takes ⌈n/8⌉ bytes, the echo's forcing observable (a difference
of two words) n + 1 bits, the accumulators 8 bytes. Arrays are sent in C order of the shapes named in
the protocol, batch row first.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum, IntFlag

import numpy as np

from echoforge.models.core import PARAM_NAMES
from echoforge.targets.emulator import FormatConfig
from echoforge.targets.emulator.fixed import SHORTEST_TABLE_RANGE_LOG2
from echoforge.targets.emulator.target import CAPABILITIES as EMULATOR
from echoforge.targets.emulator.kernels import ACCUMULATORS

from .errors import DeviceError, ErrorCode
from .frame import MAX_PAYLOAD

COMMAND_VERSION = 1
PROGRAM_FORMAT = 1
ACCUMULATOR_BYTES = 8


class Opcode(IntEnum):
    HELLO = 0x0001
    RESET = 0x0002
    LOAD_PROGRAM = 0x0010
    WRITE_PARAMS = 0x0011
    WRITE_STATE = 0x0012
    READ_STATE = 0x0013
    BEGIN_FORWARD = 0x0020
    FORWARD_CHUNK = 0x0021
    END_FORWARD = 0x0022
    BEGIN_ECHO = 0x0030
    ECHO_CHUNK = 0x0031
    END_ECHO = 0x0032
    READ_OBSERVABLES = 0x0033


OPCODE_NAMES = {opcode.value: opcode.name for opcode in Opcode}


class PhaseFlags(IntFlag):
    NONE = 0
    ZERO_STATE = 0x01  # start from ϕ = π = 0 instead of the STATE register


class Register(IntEnum):
    STATE = 0  # a bank's (ϕ, π), (B, P): a forward's start, then its end; an echo's start
    ECHO = 1   # the last completed echo pair's end state, (2, B, P)


KIND_CODES = {"linear": 0, "nonlinear": 1}
TARGET_CODES = {"emulator": 1, "fpga": 2, "analog": 3}
# The accumulators a board reports, per HRU kind (the others are identically zero).
KIND_ACCUMULATORS = {"linear": ("mm", "pp", "fm"), "nonlinear": ("mm", "pp", "t", "tm", "lc")}

_EPOCH = struct.Struct("<I")
_CRC = struct.Struct("<I")
COUNTERS = struct.Struct("<4I")  # saturation counters: state, force, preact, accumulator
# The fixed fields that follow the epoch in each request; arrays (the body) come after them.
REQUEST_FIELDS = {
    Opcode.RESET: struct.Struct("<"),
    Opcode.LOAD_PROGRAM: struct.Struct("<"),       # body: the program image
    Opcode.WRITE_PARAMS: struct.Struct("<B"),      # bank; body: codes (5, P)
    Opcode.WRITE_STATE: struct.Struct("<BHHH"),    # bank, batch, first row, rows; body: ϕ, π (rows, P)
    Opcode.READ_STATE: struct.Struct("<BBHH"),     # bank, register, first row, rows
    Opcode.BEGIN_FORWARD: struct.Struct("<BBHI"),  # bank, flags, batch, length
    Opcode.FORWARD_CHUNK: struct.Struct("<II"),    # start, steps; body: forcing (B, steps, P)
    Opcode.END_FORWARD: struct.Struct("<"),
    Opcode.BEGIN_ECHO: struct.Struct("<BBHI"),     # bank, flags, batch, length
    Opcode.ECHO_CHUNK: struct.Struct("<II"),       # start, steps; body: forcing, nudges (B, steps, P)
    Opcode.END_ECHO: struct.Struct("<"),
    Opcode.READ_OBSERVABLES: struct.Struct("<BHH"),  # bank, first row, rows
}
_HELLO = struct.Struct("<HBBIHBBBBBHII")
_RESPONSE_LIMIT = struct.Struct("<I")  # after the firmware id: the largest response payload
_BANK_HEADER = struct.Struct("<9BH")  # kind, word, state/a/delta/w/c/unit fracs, table bits, P
_FRAC_FIELDS = ("state_frac", "a_frac", "delta_frac", "w_frac", "c_frac", "unit_frac")


def request_header_size(opcode: Opcode) -> int:
    """Bytes before the body: the epoch and the fixed fields."""
    return _EPOCH.size + REQUEST_FIELDS[opcode].size


def encode_request(opcode: Opcode, epoch: int, fields: tuple = (), body: bytes = b"") -> bytes:
    """The payload of a request other than HELLO."""
    return _EPOCH.pack(epoch) + REQUEST_FIELDS[opcode].pack(*fields) + body


def decode_request(opcode: Opcode, payload: bytes, epoch: int) -> tuple[tuple, bytes]:
    """(fields, body) of a request; refuses a short payload and a stale epoch."""
    header = REQUEST_FIELDS[opcode]
    if len(payload) < _EPOCH.size + header.size:
        raise bad_payload(f"{opcode.name} needs at least {_EPOCH.size + header.size} bytes, got {len(payload)}")
    (request_epoch,) = _EPOCH.unpack_from(payload)
    if request_epoch != epoch:
        raise DeviceError(ErrorCode.STALE_EPOCH, f"request for epoch 0x{request_epoch:08X}, "
                                                 f"the board's is 0x{epoch:08X}: it has rebooted, send HELLO")
    return header.unpack_from(payload, _EPOCH.size), payload[_EPOCH.size + header.size:]


def bad_payload(message: str) -> DeviceError:
    return DeviceError(ErrorCode.BAD_PAYLOAD, message)


# ---- samples --------------------------------------------------------------------------------------

def sample_bytes(bits: int) -> int:
    """Bytes per sample of a signed integer of `bits` bits."""
    return (bits + 7) // 8


def pack_samples(codes, width: int) -> bytes:
    """int64 codes as `width`-byte little-endian two's-complement samples, in C order."""
    little = np.ascontiguousarray(codes, dtype="<i8").reshape(-1, 1).view(np.uint8)
    return little[:, :width].tobytes()


def unpack_samples(data: bytes, shape: tuple[int, ...], width: int) -> np.ndarray:
    """The int64 array of `shape` that `data` (exactly that many samples) encodes."""
    count = int(np.prod(shape))
    if len(data) != count * width:
        raise bad_payload(f"expected {count} samples of {width} bytes ({count * width} bytes), got {len(data)}")
    raw = np.zeros((count, 8), dtype=np.uint8)
    raw[:, :width] = np.frombuffer(data, dtype=np.uint8).reshape(count, width)
    shift = 64 - 8 * width
    return ((raw.view("<i8").reshape(shape) << shift) >> shift).astype(np.int64)


def split_body(body: bytes, *sizes: int) -> list[bytes]:
    """Cut `body` into consecutive pieces of `sizes` bytes; it must hold exactly that much."""
    if len(body) != sum(sizes):
        raise bad_payload(f"expected {sum(sizes)} bytes of arrays, got {len(body)}")
    offsets = np.cumsum((0,) + sizes)
    return [body[start:stop] for start, stop in zip(offsets[:-1], offsets[1:])]


# ---- the program image ----------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class BankProgram:
    """What a board needs to run one oscillator bank: HRU kind, number formats, parameter codes (5, P)
    in PARAM_NAMES order, each in its format of ``config`` (all of ``config.word_bits`` bits)."""

    kind: str
    config: FormatConfig
    codes: np.ndarray

    @property
    def size(self) -> int:
        return self.codes.shape[1]

    @property
    def width(self) -> int:
        """Bytes per state, forcing, nudge or parameter sample."""
        return sample_bytes(self.config.word_bits)

    @property
    def observable_width(self) -> int:
        return sample_bytes(self.config.word_bits + 1)

    def same_layout(self, other: BankProgram) -> bool:
        """True when `other` differs at most in parameter codes (so WRITE_PARAMS can turn one into the other)."""
        return (self.kind, self.size, format_bytes(self.config)) == (other.kind, other.size, format_bytes(other.config))


def format_bytes(config: FormatConfig) -> bytes:
    """The number-format fields of a bank header (what the board's arithmetic depends on)."""
    return bytes([config.word_bits, *(getattr(config, name) for name in _FRAC_FIELDS), config.table_bits])


def encode_program(banks) -> bytes:
    """The program image: u8 format version, u8 bank count, then each bank's header and codes."""
    image = bytearray([PROGRAM_FORMAT, len(banks)])
    for bank in banks:
        image += _BANK_HEADER.pack(KIND_CODES[bank.kind], *format_bytes(bank.config), bank.size)
        image += pack_samples(bank.codes, bank.width)
    return bytes(image)


def program_hash(image: bytes) -> int:
    """The CRC-32 of a program image, which LOAD_PROGRAM and WRITE_PARAMS answer with."""
    return zlib.crc32(image)


def decode_program(image: bytes, max_banks: int = 255) -> list[BankProgram]:
    """The banks of a program image; DeviceError(BAD_PROGRAM) for anything malformed."""
    if len(image) < 2 or image[0] != PROGRAM_FORMAT:
        raise DeviceError(ErrorCode.BAD_PROGRAM, f"program image must start with format version {PROGRAM_FORMAT}")
    count, offset, banks = image[1], 2, []
    if not 1 <= count <= max_banks:
        raise DeviceError(ErrorCode.BAD_PROGRAM, f"{count} banks; this board takes 1 to {max_banks}")
    for _ in range(count):
        bank, offset = _decode_bank(image, offset)
        banks.append(bank)
    if offset != len(image):
        raise DeviceError(ErrorCode.BAD_PROGRAM, f"{len(image) - offset} bytes after the last bank")
    return banks


def _decode_bank(image: bytes, offset: int) -> tuple[BankProgram, int]:
    if len(image) < offset + _BANK_HEADER.size:
        raise DeviceError(ErrorCode.BAD_PROGRAM, "program image ends inside a bank header")
    kind_code, word, *fracs, table_bits, size = _BANK_HEADER.unpack_from(image, offset)
    kinds = {code: kind for kind, code in KIND_CODES.items()}
    if kind_code not in kinds or size == 0:
        raise DeviceError(ErrorCode.BAD_PROGRAM, f"bank of kind code {kind_code} with {size} oscillators")
    try:
        config = FormatConfig(word, **dict(zip(_FRAC_FIELDS, fracs)), table_bits=table_bits)
    except ValueError as error:
        raise DeviceError(ErrorCode.BAD_PROGRAM, str(error)) from None
    offset += _BANK_HEADER.size
    width = sample_bytes(word)
    data = image[offset:offset + len(PARAM_NAMES) * size * width]
    try:
        codes = unpack_samples(data, (len(PARAM_NAMES), size), width)
    except DeviceError:
        raise DeviceError(ErrorCode.BAD_PROGRAM, "program image ends inside a bank's parameter codes") from None
    return BankProgram(kinds[kind_code], config, codes), offset + len(data)


# ---- HELLO ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Capabilities:
    """What a board can run, as HELLO reports it (docs/protocol.md §10.3). The defaults are the board
    simulator's: what the emulator compile target accepts (its oscillators, words, kinds and chunk),
    so a program compiled for the emulator runs on it."""

    max_oscillators: int = EMULATOR.max_oscillators  # over all banks of a program
    max_banks: int = 8
    word_bits: tuple[int, int] = (min(EMULATOR.word_bits), max(EMULATOR.word_bits))
    table_bits: tuple[int, int] = (SHORTEST_TABLE_RANGE_LOG2, 12)  # FormatConfig's fewest: state_frac 1
    hru_kinds: tuple[str, ...] = EMULATOR.hru_kinds
    max_batch: int = 256
    max_chunk_steps: int = EMULATOR.max_stream_chunk
    buffer_samples: int = 16384     # samples one chunk request may carry
    max_response_payload: int = MAX_PAYLOAD  # the largest response the board builds (and keeps for resends)


@dataclass(frozen=True)
class BoardInfo:
    """A board's answer to HELLO."""

    version: int
    target: str
    firmware: str
    epoch: int
    capabilities: Capabilities

    def describe(self) -> str:
        caps = self.capabilities
        return (f"{self.target} board, firmware {self.firmware!r}, command protocol {self.version}, "
                f"{caps.max_oscillators} oscillators in ≤ {caps.max_banks} banks, words {caps.word_bits[0]}–"
                f"{caps.word_bits[1]} bits, kinds {'/'.join(caps.hru_kinds)}, chunks ≤ {caps.max_chunk_steps} "
                f"steps / {caps.buffer_samples} samples, batch ≤ {caps.max_batch}, responses ≤ "
                f"{caps.max_response_payload} bytes, boot epoch 0x{self.epoch:08X}")


def encode_hello(info: BoardInfo) -> bytes:
    caps = info.capabilities
    kinds = sum(1 << KIND_CODES[kind] for kind in caps.hru_kinds)
    firmware = info.firmware.encode("utf-8")[:255]
    fixed = _HELLO.pack(info.version, TARGET_CODES[info.target], kinds, info.epoch, caps.max_oscillators,
                        caps.max_banks, *caps.word_bits, *caps.table_bits, caps.max_batch, caps.max_chunk_steps,
                        caps.buffer_samples)
    return fixed + bytes([len(firmware)]) + firmware + _RESPONSE_LIMIT.pack(caps.max_response_payload)


def decode_hello(payload: bytes) -> BoardInfo:
    fixed = _HELLO.size + 1
    if len(payload) < fixed or len(payload) != fixed + payload[_HELLO.size] + _RESPONSE_LIMIT.size:
        raise bad_payload(f"HELLO response of {len(payload)} bytes is malformed")
    (version, target, kinds, epoch, oscillators, banks, word_low, word_high, table_low, table_high, batch, steps,
     samples) = _HELLO.unpack_from(payload)
    targets = {code: name for name, code in TARGET_CODES.items()}
    (response_limit,) = _RESPONSE_LIMIT.unpack_from(payload, len(payload) - _RESPONSE_LIMIT.size)
    caps = Capabilities(oscillators, banks, (word_low, word_high), (table_low, table_high),
                        tuple(kind for kind, code in KIND_CODES.items() if kinds >> code & 1), batch, steps, samples,
                        response_limit)
    firmware = payload[fixed:-_RESPONSE_LIMIT.size].decode("utf-8", errors="replace")
    return BoardInfo(version, targets.get(target, f"target {target}"), firmware, epoch, caps)


def accumulator_rows(kind: str) -> list[int]:
    """Indices into kernels.ACCUMULATORS of the accumulators a board reports for `kind`."""
    return [ACCUMULATORS.index(name) for name in KIND_ACCUMULATORS[kind]]
