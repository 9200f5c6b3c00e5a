"""A board shared by several hosts (issue 18 item 9): `board serve --tcp` in its own process; while one host
holds it, another's `hil train` ends at once with one line saying who holds it since when; once the holder
hangs up, the next host holds it."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from everyday import echoforge, one_line_error, compiled_tiny_program  # noqa: F401 (the tiny_program fixture)
from echoforge.runtime.device import Device
from echoforge.runtime.simulator import stop


@pytest.fixture
def tcp_board():
    process = subprocess.Popen([sys.executable, "-m", "echoforge", "board", "serve", "--tcp", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        yield process.stdout.readline().strip()
    finally:
        stop(process)


def test_a_busy_board_says_who_holds_it_and_the_next_host_gets_it(tcp_board, tiny_program, tmp_path):
    with Device(tcp_board, timeout=5) as holder:
        started = time.monotonic()
        line = one_line_error(echoforge("hil", "train", "--device", tcp_board, "--program", tiny_program,
                                        "-o", tmp_path / "second", "--no-progress"),
                              f"{tcp_board}: the board is busy: held by another host (127.0.0.1:", "since")
        assert "attempt" not in line  # refused in its first command, not after retries
        assert holder.handshake().target == "emulator"  # the holder's session is untouched
    assert time.monotonic() - started < 120
    with Device(tcp_board, timeout=5) as next_host:
        assert next_host.info.target == "emulator"
