"""Retransmission timeouts that follow the measured round trip (issue 18 item 8): RFC 6298's estimator, and
a response lost after its ACK recovered after about a round trip instead of a fixed second — over a real
TCP connection to a LinkServer in a thread."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from echoforge.runtime.link import Link, LinkServer, RoundTrip, response_opcode
from echoforge.runtime.transport import SocketTransport, Transport, open_transport

ECHO = 0x0042
LOSE_ONE_RESPONSE = b"lose the first response to this"


def test_round_trip_estimator_follows_rfc_6298():
    estimate = RoundTrip(initial=1.0, floor=0.01, ceiling=1.0)
    assert estimate.rto == 1.0  # before any sample
    estimate.sample(0.1)
    assert estimate.srtt == pytest.approx(0.1) and estimate.rttvar == pytest.approx(0.05)
    assert estimate.rto == pytest.approx(0.1 + 4 * 0.05)
    estimate.sample(0.2)
    assert estimate.rttvar == pytest.approx(0.75 * 0.05 + 0.25 * 0.1)
    assert estimate.srtt == pytest.approx(0.875 * 0.1 + 0.125 * 0.2)
    for _ in range(200):
        estimate.sample(0.001)
    assert estimate.rto == 0.01  # the floor
    for _ in range(5):
        estimate.sample(9.0)
    assert estimate.rto == 1.0  # the ceiling


class LosesOneLongWrite(Transport):
    """Passes writes through, except the first one longer than `length` after `armed` is set."""

    def __init__(self, inner: Transport, length: int):
        self.inner, self.uri, self.length = inner, inner.uri, length
        self.armed = threading.Event()

    def write(self, data: bytes) -> None:
        if self.armed.is_set() and len(data) > self.length:
            self.armed.clear()
            return
        self.inner.write(data)

    def read(self, max_bytes: int, timeout: float) -> bytes:
        return self.inner.read(max_bytes, timeout)

    def close(self) -> None:
        self.inner.close()


def test_a_response_lost_after_its_ack_is_polled_for_after_about_a_round_trip():
    stop = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        lines = {}

        def handler(opcode, payload):
            if payload == LOSE_ONE_RESPONSE:
                lines["server"].armed.set()
            return response_opcode(opcode), payload * 4

        def serve():
            connection, _ = listener.accept()
            with SocketTransport(connection) as line:
                lines["server"] = LosesOneLongWrite(line, 3 * len(LOSE_ONE_RESPONSE))
                LinkServer(lines["server"], handler).serve(stop, 0.01)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with open_transport(f"socket://127.0.0.1:{port}") as host:
            link = Link(host, timeout=5.0, retry_interval=0.05, max_retry_interval=1.0)
            for _ in range(20):  # the round trip of ECHO is learnt: a few ms, so its timeout is the 50 ms floor
                assert link.call(ECHO, b"x") == b"xxxx"
            started = time.monotonic()
            assert link.call(ECHO, LOSE_ONE_RESPONSE) == LOSE_ONE_RESPONSE * 4
            recovered_in = time.monotonic() - started
            stats = link.stats
        stop.set()
        thread.join(5)
    assert stats["retries"] == 1 and stats["acks"] == 21  # one poll after the ACK, answered from the cache
    assert recovered_in < 0.5  # a fixed poll interval waited max_retry_interval (1 s) here
