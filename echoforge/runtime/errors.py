"""Exceptions of the device runtime, shared by every layer from framing to commands."""

from enum import IntEnum


class FrameError(ValueError):
    """Bytes that are not a valid frame: bad COBS, size, protocol byte, type or length field."""


class ChecksumError(FrameError):
    """A structurally complete frame whose CRC32 does not match: it was damaged in transit."""


class LinkTimeout(TimeoutError):
    """The peer did not answer a call before its deadline, or the connection to it is gone."""


class ErrorCode(IntEnum):
    """Error codes a device puts in an error response (docs/protocol.md, "Error codes").

    0x0001-0x00FF belong to the link layer and generic request handling;
    0x0100-0xFFFF are for the command layer.
    """

    UNKNOWN_OPCODE = 0x0001
    BAD_PAYLOAD = 0x0002
    RESPONSE_TOO_LARGE = 0x0003
    INTERNAL = 0x00FF
    # command layer (docs/protocol.md, section 10.9)
    STALE_EPOCH = 0x0100
    NO_PROGRAM = 0x0101
    BAD_PROGRAM = 0x0102
    BAD_BANK = 0x0103
    NO_STATE = 0x0104
    NO_PHASE = 0x0105
    OUT_OF_ORDER = 0x0106
    OVER_CAPACITY = 0x0107
    BUSY = 0x0108  # another host holds the board (a TCP board serves one session at a time)


class DeviceError(RuntimeError):
    """The device received the request and refused or failed it; `code` says why."""

    def __init__(self, code: int, message: str = ""):
        self.code = int(code)
        self.message = message
        detail = f": {message}" if message else ""
        super().__init__(f"device error {describe_error_code(self.code)}{detail}")

    def __reduce__(self):
        return type(self), (self.code, self.message)


def describe_error_code(code: int) -> str:
    """"0x00FF INTERNAL" for a code the protocol defines, "0x0123" for one it does not."""
    try:
        return f"0x{code:04X} {ErrorCode(code).name}"
    except ValueError:
        return f"0x{code:04X}"
