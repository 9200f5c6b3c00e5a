"""A simulated board in a child process: `echoforge board serve --pty` for demos, benchmarks and tests.

The board runs in its own process, as a real board would, so everything between the host and it
crosses a real serial device file. It is stopped when the block ends, on an exception or Ctrl-C
included, and on Linux the kernel also stops it if the host dies without cleaning up (kill -9).
"""

from __future__ import annotations

import ctypes
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

STARTUP_SECONDS = 60  # a cold start imports numpy, numba and the emulator's compiled kernels
STOP_SECONDS = 10
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: have the kernel send SIGTERM when the parent dies."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@contextmanager
def simulated_board(*options: str) -> Iterator[str]:
    """Run `echoforge board serve --pty OPTIONS` (e.g. "--drop", "0.01") and yield its URI."""
    command = [sys.executable, "-m", "echoforge.cli", "board", "serve", "--pty", *options]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    try:
        if not select.select([process.stdout], [], [], STARTUP_SECONDS)[0]:
            raise RuntimeError(f"the board simulator did not announce its URI within {STARTUP_SECONDS} s")
        uri = process.stdout.readline().strip()
        if not uri:
            raise ValueError(f"the board simulator exited at start (code {process.wait()}): "
                             f"check its options {' '.join(options)}")
        yield uri
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (the board stops cleanly), then SIGKILL if it does not."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()
