"""DeviceCore against the board simulator, end to end on real lines: RHEL through a board is bit for bit
RHEL on the in-process emulator — over a pseudo-terminal, TCP (pyserial socket://) and VISA (TCPIP SOCKET,
ASRL on the pty) — and stays so through lost and damaged frames and through reboots mid-phase; a board
that dies fails the next call within its timeout; and the `board serve` / `devices` commands.

Boards run as `python -m echoforge.cli board serve` subprocesses for the end-to-end, kill and signal
tests, in threads for the others.
"""

import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest

from echoforge.cli import main
from echoforge.models.core import OscillatorParams
from echoforge.runtime.board import Board, Faults
from echoforge.runtime.commands import Capabilities, Opcode
from echoforge.runtime.device import Device, DeviceCore
from echoforge.runtime.errors import LinkTimeout
from echoforge.targets.emulator import EmulatorCore, FormatConfig

CONFIG = FormatConfig(24)
BATCH, LENGTH, SIZE = 3, 300, 5
CHUNK_STEPS = 64  # the boards' max_chunk_steps: LENGTH takes 5 chunks per phase
EPSILON = 0.05
FAST_LINK = {"retry_interval": 0.02, "max_retry_interval": 0.1}
KINDS = ("linear", "nonlinear")
STARTUP_SECONDS = 60


def bank_params(kind, seed, size=SIZE):
    rng = np.random.default_rng(seed)
    return OscillatorParams(kind, a=rng.uniform(0.2, 1.0, size), delta=rng.uniform(0.3, 0.7, size),
                            w=rng.uniform(0.5, 1.0, size), b=rng.uniform(-0.5, 0.5, size),
                            c=rng.uniform(0.3, 0.7, size))


def streams(seed, batch=BATCH, length=LENGTH, size=SIZE):
    """Forcing, a non-zero start state (so that the start state crosses the link) and ∂L/∂positions."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(batch, length, size)), 0.3 * rng.normal(size=(batch, size)), np.zeros((batch, size)),
            rng.normal(size=(batch, length, size)))


def rhel(core, params, data):
    """Load, forward, ±ε echoes: everything the contract returns, flattened."""
    forcing, phi, pi, nudges = data
    core.load(params)
    positions, end_phi, end_pi = core.forward(forcing, phi, pi)
    echo = core.echo(forcing, end_phi, end_pi, nudges, EPSILON)
    return [positions, end_phi, end_pi, echo.grad_forcing, *echo.grad_params.values(), *echo.final_state]


def in_process(kind, seed=0, data=None):
    return rhel(EmulatorCore(CONFIG), bank_params(kind, seed), data or streams(seed))


def assert_identical(got, expected):
    assert len(got) == len(expected)
    for index, (a, b) in enumerate(zip(got, expected)):
        assert np.array_equal(a, b), f"result {index} differs"


EXPECTED = {kind: in_process(kind) for kind in KINDS}


# ---- boards ---------------------------------------------------------------------------------------------

@contextmanager
def board_process(*options):
    """`echoforge board serve OPTIONS` in a subprocess: yields (process, uri); stops it with SIGTERM and
    checks that it exits cleanly (unless the test killed it)."""
    command = [sys.executable, "-m", "echoforge.cli", "board", "serve", "--max-chunk-steps", str(CHUNK_STEPS), *options]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([process.stdout], [], [], STARTUP_SECONDS)
        assert ready, "the board did not announce its URI"
        yield process, process.stdout.readline().strip()
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=10)
            assert process.returncode == 0 and "stopped after" in stderr, stderr
        else:
            process.communicate()


@contextmanager
def board_thread(faults=Faults(), capabilities=Capabilities(max_chunk_steps=CHUNK_STEPS), medium="pty"):
    """A Board served in a thread: yields (board, uri)."""
    board = Board(capabilities, faults, poll_interval=0.02)
    stop, announced = threading.Event(), queue.Queue()
    serve = board.serve_pty if medium == "pty" else lambda *args: board.serve_tcp("127.0.0.1", 0, *args)
    thread = threading.Thread(target=serve, args=(stop, announced.put), daemon=True)
    thread.start()
    try:
        yield board, announced.get(timeout=10)
    finally:
        stop.set()
        thread.join(10)
        assert not thread.is_alive()


@pytest.fixture(scope="module")
def pty_board():
    with board_process("--pty") as (_, uri):
        yield uri


@pytest.fixture(scope="module")
def tcp_board():
    with board_process("--tcp", "0") as (_, uri):
        yield uri


MEDIA = {
    "pty": lambda pty, tcp: pty,
    "socket": lambda pty, tcp: tcp,
    "visa-tcpip": lambda pty, tcp: "TCPIP::127.0.0.1::{}::SOCKET".format(tcp.rsplit(":", 1)[1]),
    "visa-asrl": lambda pty, tcp: f"ASRL{pty}::INSTR",
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("medium", MEDIA)
def test_rhel_through_a_board_is_bit_identical_to_the_emulator(medium, kind, pty_board, tcp_board):
    uri = MEDIA[medium](pty_board, tcp_board)
    with DeviceCore(uri, config=CONFIG, timeout=5.0) as core:
        assert_identical(rhel(core, bank_params(kind, 0), streams(0)), EXPECTED[kind])
        traffic = core.device.traffic
    assert traffic["FORWARD_CHUNK"]["calls"] == traffic["ECHO_CHUNK"]["calls"] == 5
    assert traffic["WRITE_STATE"]["calls"] == 1  # the forward's start; the echo starts where the forward ended


# ---- lossy lines and reboots (threaded boards) ------------------------------------------------------------

def test_one_percent_of_frames_lost_damaged_or_duplicated_changes_no_bit():
    faults = Faults(drop=0.01, corrupt=0.01, duplicate=0.01, delay=0.002, seed=5)
    capabilities = Capabilities(max_chunk_steps=16)  # more, smaller frames
    with board_thread(faults, capabilities) as (board, uri), DeviceCore(uri, config=CONFIG, **FAST_LINK) as core:
        for round_ in range(3):
            for kind in KINDS:
                assert_identical(rhel(core, bank_params(kind, 0), streams(0)), EXPECTED[kind])
        link = core.device.link.stats
    assert min(board.line_faults.values()) > 0 and len(board.line_faults) == 3, board.line_faults
    assert link["retries"] > 0 and link["failures"] == 0 and core.device.reboots == 0


@pytest.mark.parametrize("plan", [
    {"reset_after": 2},                          # the first command after LOAD_PROGRAM
    {"reset_at": ("FORWARD_CHUNK", 3)},          # mid forward
    {"reset_at": ("ECHO_CHUNK", 2)},             # mid echo
    {"reset_at": ("READ_OBSERVABLES", 1)},       # the last command of the echo phase
    {"reset_at": ("WRITE_PARAMS", 1)},           # a training step's parameter update
], ids=["after-load", "mid-forward", "mid-echo", "end-of-echo", "parameter-update"])
def test_a_reboot_is_detected_by_the_epoch_and_the_phase_replayed(plan):
    with board_thread(Faults(**plan)) as (board, uri), DeviceCore(uri, config=CONFIG, **FAST_LINK) as core:
        assert_identical(rhel(core, bank_params("nonlinear", 0), streams(0)), EXPECTED["nonlinear"])
        retrained = in_process("nonlinear", seed=1, data=streams(0))
        assert_identical(rhel(core, bank_params("nonlinear", 1), streams(0)), retrained)
        device = core.device
    assert board.reboots == device.reboots == 1
    assert device.traffic["LOAD_PROGRAM"]["calls"] == 2 and device.traffic["HELLO"]["calls"] == 2


class RebootsOnLoad:
    """A board device that reboots whenever a program is loaded (and so refuses it as stale)."""

    def __init__(self, device):
        self.device = device

    def reboot(self):
        self.device.reboot()

    def __call__(self, opcode, payload):
        if opcode == Opcode.LOAD_PROGRAM:
            self.device.reboot()
        return self.device(opcode, payload)


def test_a_board_that_keeps_rebooting_is_given_up_on():
    with board_thread() as (board, uri), DeviceCore(uri, config=CONFIG, max_replays=2, **FAST_LINK) as core:
        core.load(bank_params("linear", 0))
        board.device = RebootsOnLoad(board.device)
        board.device.reboot()
        with pytest.raises(RuntimeError, match="rebooted 3 times during one operation"):
            core.forward(*streams(0)[:3])


# ---- sessions, banks, training updates, sizes (threaded boards) -------------------------------------------

def stacked_pass(cores, forcing, nudges):
    """Forwards bank by bank, then the echoes in reverse bank order, as in a stack of HRUs; flattened."""
    zero = np.zeros((forcing.shape[0], forcing.shape[2]))
    for bank, kind in enumerate(KINDS):
        cores[bank].load(bank_params(kind, bank))
    forwards = [core.forward(forcing, zero, zero) for core in cores]
    echoes = [cores[bank].echo(forcing, *forwards[bank][1:], nudges, EPSILON) for bank in (1, 0)]
    return [*(x for f in forwards for x in f),
            *(x for e in echoes for x in (e.grad_forcing, *e.grad_params.values(), *e.final_state))]


def test_two_banks_share_a_session_and_keep_their_states_on_the_board():
    forcing, _, _, nudges = streams(3)
    expected = stacked_pass([EmulatorCore(CONFIG) for _ in KINDS], forcing, nudges)
    with board_thread(medium="tcp") as (_, uri), Device(uri, **FAST_LINK) as device:
        cores = [DeviceCore(device, bank=bank, config=CONFIG) for bank in range(len(KINDS))]
        assert_identical(stacked_pass(cores, forcing, nudges), expected)
    assert device.traffic["WRITE_STATE"]["calls"] == 0  # zero starts by flag, echoes from the kept end states


def test_a_training_step_rewrites_only_the_parameter_codes():
    data = streams(4)
    with board_thread(medium="tcp") as (_, uri), DeviceCore(uri, config=CONFIG, **FAST_LINK) as core:
        for seed in (0, 1, 2):
            assert_identical(rhel(core, bank_params("linear", seed), data), in_process("linear", seed, data))
        traffic = core.device.traffic
    assert traffic["LOAD_PROGRAM"]["calls"] == 1 and traffic["WRITE_PARAMS"]["calls"] == 2


@pytest.mark.parametrize("capabilities, batch, length, size, split", [
    # 7 rows in a 20-sample buffer: forward phases of 4 rows (2 of them), echo phases of 2 rows (4)
    (Capabilities(buffer_samples=20, max_chunk_steps=CHUNK_STEPS), 7, 9, SIZE, {"BEGIN_FORWARD": 2, "BEGIN_ECHO": 4}),
    # 200 rows fit one phase, but their accumulators fill two response pages
    (Capabilities(max_chunk_steps=CHUNK_STEPS), 200, 3, 10, {"BEGIN_FORWARD": 1, "READ_OBSERVABLES": 2}),
])
def test_batches_too_large_for_the_board_are_split_without_changing_a_bit(capabilities, batch, length, size, split):
    params, data = bank_params("nonlinear", 5, size), streams(5, batch, length, size)
    expected = rhel(EmulatorCore(CONFIG), params, data)
    with board_thread(capabilities=capabilities) as (_, uri), DeviceCore(uri, config=CONFIG, **FAST_LINK) as core:
        assert_identical(rhel(core, params, data), expected)
        traffic = core.device.traffic
    assert {command: traffic[command]["calls"] for command in split} == split


# ---- dead boards ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("medium, death", [("--pty", "kill"), ("--tcp", "kill"), ("--pty", "freeze")])
def test_a_dead_board_fails_the_next_call_within_the_timeout(medium, death):
    timeout = 1.0
    forcing, phi, pi, _ = streams(0, length=CHUNK_STEPS)
    with board_process(medium, *(["0"] if medium == "--tcp" else [])) as (process, uri):
        with DeviceCore(uri, config=CONFIG, timeout=timeout) as core:
            core.load(bank_params("linear", 0))
            core.forward(forcing, phi, pi)
            if death == "kill":
                process.kill()
                process.wait()
            else:
                os.kill(process.pid, signal.SIGSTOP)
            started = time.monotonic()
            with pytest.raises(LinkTimeout) as failure:
                core.forward(forcing, phi, pi)
            elapsed = time.monotonic() - started
            process.kill()
            process.wait()
    line_seconds = 10 * (BATCH * CHUNK_STEPS * SIZE * 3 * 2 + 64) / 115200  # one chunk and its answer at 115200 baud
    assert elapsed < timeout + line_seconds + 3.0  # wide slack for a busy machine; a retry loop past the deadline exceeds it
    message = str(failure.value)
    assert uri in message and "\n" not in message


def test_opening_a_board_that_is_not_there_fails_at_once_naming_it():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        uri = f"socket://127.0.0.1:{unused.getsockname()[1]}"
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=uri):
        DeviceCore(uri, timeout=30.0)
    assert time.monotonic() - started < 10.0  # "at once": far below the timeout, whatever the machine's load


# ---- command line -------------------------------------------------------------------------------------------

def test_board_serve_stops_cleanly_on_sigint():
    with board_process("--tcp", "0") as (process, uri):
        with Device(uri) as device:
            assert device.info.target == "emulator"
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0 and "stopped after 1 commands" in stderr


def test_devices_probe_reports_who_answers(capsys):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        nobody = f"socket://127.0.0.1:{unused.getsockname()[1]}"
    with board_thread() as (_, uri):
        assert main(["devices", "--probe", "--timeout", "0.3", uri, nobody]) == 0
    lines = {line.split("  ")[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "answers: emulator board, firmware 'echoforge-board-sim" in lines[uri]
    assert "no answer" in lines[nobody]


def test_devices_without_probe_lists_and_opens_nothing(capsys):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        uri = f"socket://127.0.0.1:{listener.getsockname()[1]}"
        assert main(["devices", uri]) == 0
        listener.settimeout(0)
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody connected: listing is not probing
    assert f"{uri}  (given)" in capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("arguments, message", [
    (["--drop", "2"], "argument --drop: expected a probability 0–1, got 2"),
    (["--reset-at", "BOGUS"], "reset_at must name a command"),
    (["--reset-at", "ECHO_CHUNK:x"], "expected NAME or NAME:K"),
    (["--max-chunk-steps", "0"], "argument --max-chunk-steps: expected a positive integer, got 0"),
    (["--delay", "-1"], "argument --delay: expected a finite number ≥ 0, got -1"),
])
def test_board_serve_user_errors_are_one_line(arguments, message, capsys):
    try:
        status = main(["board", "serve", *arguments])
    except SystemExit as usage_error:  # refused by the option's type, while parsing
        status = usage_error.code
    assert status == 2
    error = capsys.readouterr().err
    assert error.startswith("echoforge board") and message in error and error.count("\n") == 1


def test_board_serve_on_a_busy_port_is_a_user_error(capsys):
    with socket.create_server(("127.0.0.1", 0)) as busy:
        assert main(["board", "serve", "--tcp", str(busy.getsockname()[1])]) == 2
    error = capsys.readouterr().err
    assert "cannot serve on 127.0.0.1:" in error and error.count("\n") == 1
