"""Fault injection: a Transport wrapper that damages bytes like a bad line, reproducibly."""

import random

from .transport import Transport


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
        self.faults = {"dropped": 0, "corrupted": 0, "duplicated": 0}
        self._rates = (drop, drop + corrupt, drop + corrupt + duplicate)
        self._random = random.Random(seed)
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
        drop, corrupt, duplicate = self._rates
        out = bytearray()
        for byte in data:
            draw = self._random.random()
            if draw < drop:
                self.faults["dropped"] += 1
            elif draw < corrupt:
                self.faults["corrupted"] += 1
                out.append(byte ^ self._random.randrange(1, 256))
            elif draw < duplicate:
                self.faults["duplicated"] += 1
                out += bytes((byte, byte))
            else:
                out.append(byte)
        return bytes(out)
