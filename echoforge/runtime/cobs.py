"""Consistent Overhead Byte Stuffing: removes every 0x00 so that 0x00 can delimit frames.

Canonical COBS (Cheshire & Baker 1999): the data is cut at each zero into segments, every segment
is written as blocks of at most 254 bytes, each block preceded by a code byte = block length + 1.
A code of 0xFF means "254 bytes, no zero follows"; any smaller code means "a zero follows", except
for the final block, where the implied zero is dropped. Overhead: at most 1 byte per 254, plus 1.
"""

from .errors import FrameError

_MAX_BLOCK = 254


def max_encoded_length(data_length: int) -> int:
    """Upper bound of len(encode(data)) for len(data) == data_length (the delimiter not included)."""
    return data_length + data_length // _MAX_BLOCK + 1


def encode(data: bytes) -> bytes:
    """COBS-encode `data`; the result contains no 0x00 byte and is never empty."""
    out = bytearray()
    segments = bytes(data).split(b"\x00")
    for index, segment in enumerate(segments):
        is_last = index == len(segments) - 1
        full_blocks, remainder = divmod(len(segment), _MAX_BLOCK)
        for block in range(full_blocks):
            out.append(_MAX_BLOCK + 1)
            out += segment[block * _MAX_BLOCK : (block + 1) * _MAX_BLOCK]
        if remainder or not is_last or not segment:
            out.append(remainder + 1)
            out += segment[full_blocks * _MAX_BLOCK :]
    return bytes(out)


def decode(encoded: bytes) -> bytes:
    """Invert `encode`; raise FrameError on input that no encoder could have produced."""
    if not encoded:
        raise FrameError("empty COBS block")
    if 0 in encoded:
        raise FrameError("0x00 inside a COBS-encoded frame")
    out = bytearray()
    position = 0
    while position < len(encoded):
        code = encoded[position]
        end = position + code
        if end > len(encoded):
            raise FrameError(f"COBS block at offset {position} runs past the end of the frame")
        out += encoded[position + 1 : end]
        position = end
        if code != _MAX_BLOCK + 1 and position < len(encoded):
            out.append(0)
    return bytes(out)
