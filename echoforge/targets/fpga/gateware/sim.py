"""The board image under Verilator, on a pseudo-terminal: `echoforge board serve --target gateware --pty`.

The whole protocol side runs as RTL — UART receiver and transmitter included: the C++ bridge
(rtl/sim_main.cpp) moves the host's bytes bit by bit down a simulated serial line at `clks_per_bit`
clocks a bit, and the board's bytes back up the other. Per-bit simulation costs little here: at 4 clocks
a bit Verilator moves about 100 kB/s through the engine alone and 20 kB/s through an image with a core
on this (loaded, 2-core) machine — a 115,200-baud line's pace — and the UART is part of what is proven.

The binary is built once per distinct source and configuration, in a cache directory
(``$ECHOFORGE_GATEWARE_CACHE``, default ``~/.cache/echoforge/gateware``), and serves one pty: this
process creates the pty, keeps its slave open (so the master never reads EIO between host sessions),
hands the master to the binary and announces the slave's path.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import tty
from collections.abc import Callable
from pathlib import Path

from echoforge.runtime.simulator import stop

from .design import SIM_MAIN, GatewareConfig, write_sources

VERILATOR = "verilator"
INSTALL = "apt-get install verilator (Debian/Ubuntu; version 5.006 or later)"
BUILD_SECONDS = 600
BINARY = "ef_board_sim"
# Verilator's options besides sources, parameters and macros (part of the cache key)
VERILATOR_OPTIONS = ("--cc", "--exe", "--build", "-j", "2", "-Wno-fatal", "-Wno-lint", "-Wno-style",
                     "--top-module", "ef_sim_top", "-CFLAGS", "-O3")


class SimulatorMissing(FileNotFoundError):
    """Verilator is not installed; the message says how to install it."""


def cache_root() -> Path:
    return Path(os.environ.get("ECHOFORGE_GATEWARE_CACHE", Path.home() / ".cache" / "echoforge" / "gateware"))


def build(config: GatewareConfig = GatewareConfig()) -> Path:
    """The simulator binary for `config`, built with Verilator unless the cache has it."""
    if shutil.which(VERILATOR) is None:
        raise SimulatorMissing(f"{VERILATOR} not found: {INSTALL}")
    with tempfile.TemporaryDirectory() as scratch:
        sources = write_sources(config, Path(scratch), simulation=True)
        digest = _digest(Path(scratch), config)
        directory = cache_root() / digest
        binary = directory / "obj" / BINARY
        if binary.exists():
            return binary
        staging = Path(tempfile.mkdtemp(prefix=f"{digest}.", dir=_ensure(cache_root())))
        for path in Path(scratch).iterdir():
            shutil.copyfile(path, staging / path.name)
    _verilate(staging, [staging / path.name for path in sources], config)
    try:
        staging.rename(directory)       # atomic: a concurrent build of the same digest wins or loses whole
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    return binary


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _digest(directory: Path, config: GatewareConfig) -> str:
    hasher = hashlib.sha256(repr((sorted(config.parameters().items()), config.defines(), VERILATOR_OPTIONS)).encode())
    for path in sorted(directory.iterdir()):
        hasher.update(path.name.encode() + path.read_bytes())
    return hasher.hexdigest()[:16]


def _verilate(directory: Path, sources: list[Path], config: GatewareConfig) -> None:
    parameters = [f"-G{name}={value}" for name, value in config.parameters().items()]
    defines = [f"-D{name}" for name in config.defines()]
    command = [VERILATOR, *VERILATOR_OPTIONS, "-Mdir", "obj", "-o", BINARY, f"-I{directory}", *parameters, *defines,
               *(str(path) for path in sources), str(directory / SIM_MAIN)]
    result = subprocess.run(command, cwd=directory, capture_output=True, text=True, timeout=BUILD_SECONDS)
    if result.returncode != 0:
        errors = [line for line in (result.stderr + result.stdout).splitlines() if "%Error" in line or "error" in line]
        raise RuntimeError(f"verilator failed on the board image: {(errors or ['(no error line)'])[0]}")


def serve_pty(config: GatewareConfig, stop_event: threading.Event, announce: Callable[[str], None], *,
              cycles_file: Path | None = None, power_cycle: threading.Event | None = None) -> int:
    """Serve the board image on a new pseudo-terminal until `stop_event` is set; the bridge's exit code.
    `cycles_file` receives the count of clocks the board and its lines were busy (benchmarks); setting
    `power_cycle` reboots the board (a new epoch, everything lost), as a board losing power would."""
    binary = build(config)
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        counter = [str(cycles_file)] if cycles_file else []
        process = subprocess.Popen([str(binary), str(master), str(_entropy()), *counter], pass_fds=(master,),
                                   stdin=subprocess.DEVNULL, cwd=binary.parent.parent)  # its $readmemh files
        try:
            announce(os.ttyname(slave))
            while not stop_event.wait(0.01):
                if process.poll() is not None:
                    raise RuntimeError(f"the board image simulator exited with code {process.returncode}")
                if power_cycle is not None and power_cycle.is_set():
                    process.send_signal(signal.SIGUSR1)
                    power_cycle.clear()
        finally:
            stop(process)
        return process.returncode
    finally:
        os.close(master)
        os.close(slave)


def _entropy() -> int:
    """The boot epoch's seed: a board takes it from the clock count at the host's first byte."""
    return secrets.randbits(32)


if __name__ == "__main__":  # python -m echoforge.targets.fpga.gateware.sim: build and print the binary's path
    print(build(), file=sys.stdout)
