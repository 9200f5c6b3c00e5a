"""Consistent Overhead Byte Stuffing: removes every 0x00 so that 0x00 can delimit frames.

Canonical COBS (Cheshire & Baker 1999): the data is cut at each zero into segments, every segment
is written as blocks of at most 254 bytes, each block preceded by a code byte = block length + 1.
A code of 0xFF means "254 bytes, no zero follows"; any smaller code means "a zero follows", except
for the final block, where the implied zero is dropped. Overhead: at most 1 byte per 254, plus 1.
"""

import numpy as np
from numba import njit

from .errors import FrameError

_MAX_BLOCK = 254
_FULL = _MAX_BLOCK + 1  # the code of a block of 254 bytes that no zero follows


def max_encoded_length(data_length: int) -> int:
    """Upper bound of len(encode(data)) for len(data) == data_length (the delimiter not included)."""
    return data_length + data_length // _MAX_BLOCK + 1


def encode(data: bytes) -> bytes:
    """COBS-encode `data`; the result contains no 0x00 byte and is never empty."""
    source = np.frombuffer(bytes(data), dtype=np.uint8)
    out = np.empty(max_encoded_length(len(source)), dtype=np.uint8)
    return out[: _encode(source, out)].tobytes()


def decode(encoded: bytes) -> bytes:
    """Invert `encode`; raise FrameError on input that no encoder could have produced."""
    if not encoded:
        raise FrameError("empty COBS block")
    if 0 in encoded:
        raise FrameError("0x00 inside a COBS-encoded frame")
    source = np.frombuffer(bytes(encoded), dtype=np.uint8)
    out = np.empty(len(source), dtype=np.uint8)
    length = _decode(source, out)
    if length < 0:
        raise FrameError(f"COBS block at offset {-length - 1} runs past the end of the frame")
    return out[:length].tobytes()


# Byte loops compiled with numba: a frame of 64 KiB costs microseconds instead of the tens of
# milliseconds a Python loop over its blocks takes.

@njit(cache=True)
def _encode(data, out) -> int:
    """Write COBS(data) to `out`; return its length. A full block opens a new one only if data follow,
    so a final segment whose length is a multiple of 254 gets no trailing empty block."""
    code_at, position, code = 0, 1, 1
    for index in range(data.shape[0]):
        byte = data[index]
        if byte == 0:
            out[code_at] = code
            code_at, position, code = position, position + 1, 1
            continue
        out[position] = byte
        position += 1
        code += 1
        if code == _FULL and index + 1 < data.shape[0]:
            out[code_at] = code
            code_at, position, code = position, position + 1, 1
    out[code_at] = code
    return position


@njit(cache=True)
def _decode(encoded, out) -> int:
    """Write the decoded bytes of `encoded` (no zero in it) to `out`; return their length, or −1 − offset
    of a block that runs past the end."""
    position = length = 0
    while position < encoded.shape[0]:
        code = encoded[position]
        end = position + code
        if end > encoded.shape[0]:
            return -1 - position
        for index in range(position + 1, end):
            out[length] = encoded[index]
            length += 1
        position = end
        if code != _FULL and position < encoded.shape[0]:
            out[length] = 0
            length += 1
    return length
