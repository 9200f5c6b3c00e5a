"""Fault injection: Transport wrappers that damage bytes or whole frames like a bad line, reproducibly."""

import random
import time

from .frame import DELIMITER
from .transport import Transport


def check_rates(**rates: float) -> None:
    """Each fault rate is a probability; together they must not exceed 1."""
    for name, rate in rates.items():
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} rate must be in [0, 1], got {rate}")
    if sum(rates.values()) > 1.0:
        raise ValueError(f"fault rates add up to {sum(rates.values())}, more than 1")


class _Dice:
    """One seeded RNG that decides, unit by unit (a byte or a frame), which fault if any hits it."""

    def __init__(self, drop: float, corrupt: float, duplicate: float, seed: int):
        check_rates(drop=drop, corrupt=corrupt, duplicate=duplicate)
        self.random = random.Random(seed)
        self.faults = {"dropped": 0, "corrupted": 0, "duplicated": 0}
        self._thresholds = (drop, drop + corrupt, drop + corrupt + duplicate)

    def roll(self) -> str | None:
        """"dropped", "corrupted", "duplicated" or None (intact), counted."""
        draw = self.random.random()
        for fault, threshold in zip(self.faults, self._thresholds):
            if draw < threshold:
                self.faults[fault] += 1
                return fault
        return None

    def flip(self, byte: int) -> int:
        """`byte` with a random non-empty set of its bits inverted."""
        return byte ^ self.random.randrange(1, 256)


class FaultyTransport(Transport):
    """Drops, corrupts or duplicates each byte crossing `inner`, in both directions.

    Each rate is a per-byte probability; the faults are drawn from one RNG seeded with `seed`, so a
    run is repeatable for a given sequence of reads and writes. Counts are in `faults`.
    """

    def __init__(
        self, inner: Transport, *, drop: float = 0.0, corrupt: float = 0.0, duplicate: float = 0.0, seed: int = 0
    ):
        self.inner = inner
        self.uri = inner.uri
        self._dice = _Dice(drop, corrupt, duplicate, seed)
        self.faults = self._dice.faults
        self._pending = b""  # damaged input beyond what the last read could return

    def write(self, data: bytes) -> None:
        self.inner.write(self._damage(data))

    def read(self, max_bytes: int, timeout: float) -> bytes:
        if not self._pending:
            self._pending = self._damage(self.inner.read(max_bytes, timeout))
        data, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return data

    def close(self) -> None:
        self.inner.close()

    def _damage(self, data: bytes) -> bytes:
        out = bytearray()
        for byte in data:
            fault = self._dice.roll()
            if fault == "corrupted":
                out.append(self._dice.flip(byte))
            elif fault == "duplicated":
                out += bytes((byte, byte))
            elif fault is None:
                out.append(byte)
        return bytes(out)


class FaultyFrameTransport(Transport):
    """Drops, corrupts (one byte), duplicates or delays whole frames crossing `inner`, in both directions.

    A frame here is what precedes a 0x00 delimiter; the empty leading delimiters are passed through.
    Rates are per frame, drawn from one RNG seeded with `seed`. Incoming bytes are held until their
    delimiter arrives (a receiver cannot use a frame before that anyway). Every outgoing frame waits a
    uniformly random time in [0, `delay`] seconds before it is written. Counts are in `faults`.
    """

    def __init__(self, inner: Transport, *, drop: float = 0.0, corrupt: float = 0.0, duplicate: float = 0.0,
                 delay: float = 0.0, seed: int = 0):
        self.inner = inner
        self.uri = inner.uri
        self._dice = _Dice(drop, corrupt, duplicate, seed)
        self.faults = self._dice.faults
        self._delay = max(delay, 0.0)
        self._incomplete = b""  # received bytes after the last delimiter
        self._ready = b""       # damaged complete frames not yet returned

    def write(self, data: bytes) -> None:
        for frame in _frames(data):
            damaged = self._damage(frame)
            if damaged and self._delay:
                time.sleep(self._dice.random.uniform(0.0, self._delay))
            self.inner.write(damaged)

    def read(self, max_bytes: int, timeout: float) -> bytes:
        if not self._ready:
            received = self._incomplete + self.inner.read(max_bytes, timeout)
            complete_end = received.rfind(DELIMITER) + 1
            self._incomplete = received[complete_end:]
            self._ready = b"".join(self._damage(frame) for frame in _frames(received[:complete_end]))
        data, self._ready = self._ready[:max_bytes], self._ready[max_bytes:]
        return data

    def close(self) -> None:
        self.inner.close()

    def _damage(self, frame: bytes) -> bytes:
        if frame == DELIMITER:
            return frame
        fault = self._dice.roll()
        if fault == "dropped":
            return b""
        if fault == "duplicated":
            return frame + frame
        if fault == "corrupted":
            position = self._dice.random.randrange(len(frame) - 1) if len(frame) > 1 else 0
            return frame[:position] + bytes([self._dice.flip(frame[position])]) + frame[position + 1:]
        return frame


def _frames(data: bytes) -> list[bytes]:
    """`data` cut after each delimiter (the last piece may lack one)."""
    pieces = data.split(DELIMITER)
    frames = [piece + DELIMITER for piece in pieces[:-1]]
    return frames + [pieces[-1]] if pieces[-1] else frames
