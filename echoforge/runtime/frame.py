"""The link-layer frame: header, payload, CRC32, COBS-encoded and delimited by 0x00.

Decoded layout (little-endian, no padding), specified in docs/protocol.md:

    offset 0   u8   protocol byte (0xE0 | PROTOCOL_VERSION)
    offset 1   u8   frame type (FrameType)
    offset 2   u8   flags (Flags)
    offset 3   u16  sequence number
    offset 5   u16  opcode
    offset 7   u32  payload length N
    offset 11  N    payload
    offset 11+N u32 CRC-32 (zlib.crc32) of bytes 0 .. 11+N-1
"""

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from . import cobs
from .errors import ChecksumError, FrameError

PROTOCOL_VERSION = 1
PROTOCOL_BYTE = 0xE0 | PROTOCOL_VERSION
MAX_PAYLOAD = 64 * 1024
DELIMITER = b"\x00"

_HEADER = struct.Struct("<BBBHHI")
_CRC = struct.Struct("<I")
MIN_FRAME_SIZE = _HEADER.size + _CRC.size
MIN_ENCODED_SIZE = cobs.max_encoded_length(MIN_FRAME_SIZE)
MAX_ENCODED_SIZE = cobs.max_encoded_length(MIN_FRAME_SIZE + MAX_PAYLOAD)


class FrameType(IntEnum):
    DATA = 1
    ACK = 2
    NACK = 3


class Flags(IntFlag):
    NONE = 0
    ERROR = 0x01  # a response whose payload is an error code and message, not a result


_FRAME_TYPES = frozenset(FrameType)

@dataclass(frozen=True)
class Frame:
    """One decoded frame; construction checks every field fits its wire width."""

    type: FrameType
    seq: int
    opcode: int = 0
    payload: bytes = b""
    flags: int = 0

    def __post_init__(self):
        object.__setattr__(self, "type", FrameType(self.type))
        object.__setattr__(self, "payload", bytes(self.payload))
        _check_range("seq", self.seq, 0xFFFF)
        _check_range("opcode", self.opcode, 0xFFFF)
        _check_range("flags", self.flags, 0xFF)
        if len(self.payload) > MAX_PAYLOAD:
            raise ValueError(f"payload of {len(self.payload)} bytes exceeds MAX_PAYLOAD = {MAX_PAYLOAD}")


def _check_range(name: str, value: int, maximum: int) -> None:
    if not 0 <= value <= maximum:
        raise ValueError(f"{name} = {value} is outside 0..{maximum}")


def encode_frame(frame: Frame) -> bytes:
    """The wire bytes of `frame`: COBS(header + payload + CRC32) followed by the 0x00 delimiter."""
    header = _HEADER.pack(PROTOCOL_BYTE, frame.type, frame.flags, frame.seq, frame.opcode, len(frame.payload))
    body = header + frame.payload
    return cobs.encode(body + _CRC.pack(zlib.crc32(body))) + DELIMITER


def decode_frame(wire: bytes, max_payload: int = MAX_PAYLOAD) -> Frame:
    """Parse the wire bytes of one frame (trailing delimiter optional).

    Raises ChecksumError when the CRC does not match, FrameError for anything else malformed.
    The CRC is checked before the header fields, so random damage reads as a CRC error and a
    well-checksummed but unacceptable frame (other protocol version, oversize) as malformed.
    """
    raw = cobs.decode(wire[:-1] if wire.endswith(DELIMITER) else wire)
    if len(raw) < MIN_FRAME_SIZE:
        raise FrameError(f"frame of {len(raw)} bytes is shorter than the minimum {MIN_FRAME_SIZE}")
    body, (crc,) = raw[: -_CRC.size], _CRC.unpack(raw[-_CRC.size :])
    if zlib.crc32(body) != crc:
        raise ChecksumError(f"CRC mismatch: frame says 0x{crc:08X}, content gives 0x{zlib.crc32(body):08X}")
    protocol, type_, flags, seq, opcode, length = _HEADER.unpack(body[: _HEADER.size])
    payload = body[_HEADER.size :]
    if protocol != PROTOCOL_BYTE:
        raise FrameError(f"protocol byte 0x{protocol:02X}, expected 0x{PROTOCOL_BYTE:02X}")
    if type_ not in _FRAME_TYPES:
        raise FrameError(f"unknown frame type {type_}")
    if length != len(payload):
        raise FrameError(f"length field says {length} bytes, frame carries {len(payload)}")
    if length > max_payload:
        raise FrameError(f"payload of {length} bytes exceeds the maximum {max_payload}")
    return Frame(FrameType(type_), seq, opcode, payload, flags)


class FrameReader:
    """Turns an arbitrarily chunked byte stream into valid frames, never raising on bad input.

    Bytes accumulate until a 0x00 delimiter. A delimited chunk shorter than the smallest possible
    frame is line noise (counted in `discarded_bytes` only); a longer one that fails to decode is a
    damaged frame attempt (`crc_errors` or `malformed`). A chunk that grows past the largest
    possible frame (its delimiter was lost) is dropped up to the next delimiter and counted as
    malformed, so memory stays bounded whatever arrives.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD):
        self.max_payload = max_payload
        self.frames = 0
        self.crc_errors = 0
        self.malformed = 0
        self.discarded_bytes = 0
        self.last_error = ""
        self._buffer = bytearray()
        self._overflowed = False
        self._limit = cobs.max_encoded_length(MIN_FRAME_SIZE + max_payload)

    @property
    def rejected(self) -> int:
        """Frame attempts that were received but unusable: the cue for a NACK."""
        return self.crc_errors + self.malformed

    def feed(self, data: bytes) -> list[Frame]:
        """Consume `data`; return the frames it completed, in order."""
        frames = []
        start = 0
        while (end := data.find(0, start)) != -1:
            self._append(data[start:end])
            frame = self._finish_chunk()
            if frame is not None:
                frames.append(frame)
            start = end + 1
        self._append(data[start:])
        return frames

    def _append(self, piece: bytes) -> None:
        if self._overflowed:
            self.discarded_bytes += len(piece)
        elif len(self._buffer) + len(piece) > self._limit:
            self._overflowed = True
            self.malformed += 1
            self.last_error = f"no delimiter within {self._limit} bytes"
            self.discarded_bytes += len(self._buffer) + len(piece)
            self._buffer.clear()
        else:
            self._buffer += piece

    def _finish_chunk(self) -> Frame | None:
        chunk = bytes(self._buffer)
        self._buffer.clear()
        if self._overflowed:
            self._overflowed = False
            return None
        if len(chunk) < MIN_ENCODED_SIZE:
            self.discarded_bytes += len(chunk)
            return None
        try:
            frame = decode_frame(chunk, self.max_payload)
        except ChecksumError as error:
            self.crc_errors += 1
            self.last_error = str(error)
        except FrameError as error:
            self.malformed += 1
            self.last_error = str(error)
        else:
            self.frames += 1
            return frame
        return None
