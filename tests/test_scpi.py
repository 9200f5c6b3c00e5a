"""The analog twin as SCPI instruments, driven with PyVISA through pyvisa-py over real TCP sockets."""

import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
import pyvisa

from echoforge.models.core import OscillatorParams
from echoforge.runtime.cli import probe
from echoforge.runtime.simulator import simulated_board
from echoforge.targets.analog import scpi
from echoforge.targets.analog.board import load_board
from echoforge.targets.analog.instruments import InstrumentCore, InstrumentError, Instruments
from echoforge.targets.analog.physics import Oscillators
from echoforge.targets.analog.twin import AnalogTwin
from echoforge.targets.emulator import FormatConfig

CONFIG = FormatConfig(24, state_frac=17)


@contextmanager
def _serving(handler):
    """A real TCP server on a free port; ``handler(connection)`` answers each connection."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def accept():
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            with connection:
                handler(connection, stop)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield scpi.resource("127.0.0.1", listener.getsockname()[1])
    finally:
        stop.set()
        thread.join()
        listener.close()


@contextmanager
def _instrument_pair(board_name="lc-tank-pcb"):
    """The twin's AWG and digitizer in this process, each on a real TCP port."""
    bench = scpi.Bench(Oscillators(load_board(board_name), fabrication_seed=1, noise_seed=1))
    awg, digitizer = scpi.WaveformGenerator(bench), scpi.Digitizer(bench)
    with _serving(lambda c, stop: scpi.serve_connection(c, awg, stop)) as awg_name, \
            _serving(lambda c, stop: scpi.serve_connection(c, digitizer, stop)) as digitizer_name:
        yield awg_name, digitizer_name


@pytest.fixture
def manager():
    manager = pyvisa.ResourceManager("@py")
    yield manager
    manager.close()


def _open(manager, name):
    return manager.open_resource(name, read_termination="\n", write_termination="\n", timeout=5000)


# ---- messages ----------------------------------------------------------------------------------------

def test_a_message_ends_at_a_newline_outside_its_blocks():
    payload = b"\x0a;\x0a,#9"
    buffer = bytearray(b"SOUR:DATA " + scpi.block(payload) + b";:*OPC?\nSYST:ERR?\npartial")
    message = scpi.take_message(buffer)
    commands = scpi.parse_message(message)
    assert [(c.header, c.query) for c in commands] == [("SOUR:DATA", False), ("*OPC", True)]
    assert commands[0].arguments == [payload]
    assert scpi.take_message(buffer) == b"SYST:ERR?" and scpi.take_message(buffer) is None
    assert buffer == bytearray(b"partial")
    half = bytearray(b"SOUR:DATA #15ab\ncd")  # the block's newline is data, the message is incomplete
    assert scpi.take_message(half) is None


def test_compound_commands_follow_the_path_rule_and_mnemonics_take_either_form():
    commands = scpi.parse_message(b"SOURce:SHAPe 2,3;MODE ECHO;:WAV:SOUR POS;*OPC?")
    assert [c.header for c in commands] == ["SOURCE:SHAPE", "SOURCE:MODE", "WAV:SOUR", "*OPC"]
    assert scpi.matches("SOURCE:MODE", "SOURce:MODE") and scpi.matches("SOUR:MODE", "SOURce:MODE")
    assert scpi.matches("SYST:ERR", "SYSTem:ERRor[:NEXT]") and scpi.matches("SYST:ERR:NEXT", "SYSTem:ERRor[:NEXT]")
    assert not scpi.matches("SOURC:MODE", "SOURce:MODE")


# ---- the instruments over PyVISA ----------------------------------------------------------------------

@pytest.mark.parametrize("order, big_endian", [("NORMal", True), ("SWAPped", False)])
def test_a_block_holding_newlines_round_trips_in_both_byte_orders(manager, order, big_endian):
    codes = np.array([10, 0x0A0A, -10, 0x0A00, 0x1A0A, -2570], dtype=np.int32)  # 0x0A bytes, within the DAC
    with _instrument_pair() as (awg_name, _):
        awg = _open(manager, awg_name)
        awg.write(f"FORMat:BORDer {order};:TUNE:BANK 0,2;:SOURce:SHAPe 1,3")
        awg.write_binary_values("SOURce:DATA ", codes, datatype="i", is_big_endian=big_endian)
        assert awg.query("SYSTem:ERRor?") == '0,"No error"'
        back = awg.query_binary_values("SOURce:DATA?", datatype="i", is_big_endian=big_endian, container=np.array)
        awg.close()
    np.testing.assert_array_equal(back, codes)


def test_common_commands_and_the_error_queue(manager):
    with _instrument_pair() as (awg_name, digitizer_name):
        awg, digitizer = _open(manager, awg_name), _open(manager, digitizer_name)
        assert awg.query("*IDN?").split(",")[:3] == ["echoforge", "ANALOG-TWIN-AWG", "lc-tank-pcb-rev-a"]
        assert digitizer.query("*idn?").split(",")[1] == "ANALOG-TWIN-DIGITIZER"
        awg.write("SOURce:BOGus 1")
        awg.write("TUNE:BANK 0,99")
        assert awg.query("*ESR?") == str(scpi.ESR_COMMAND | scpi.ESR_EXECUTION)
        assert awg.query("SYSTem:ERRor?").startswith('-113,"Undefined header')
        assert awg.query("SYST:ERR:NEXT?").startswith('-222,"Data out of range; oscillators 0..98 of 16')
        assert awg.query("SYSTem:ERRor?") == '0,"No error"'
        assert awg.query("*OPC?") == "1"
        digitizer.write("WAVeform:DATA?")  # nothing captured: an error, and no reply
        assert digitizer.query("SYSTem:ERRor?").startswith("-230")
        awg.close()
        digitizer.close()


def test_an_rhel_gradient_through_the_served_instruments_is_the_in_process_twins():
    """`echoforge board serve --target analog-twin --scpi 0` in its own process, a real pyvisa-py
    session: forward, echo +ε, echo −ε as three runs of the instruments, with mismatch, noise and the
    echo gain on. The positions and gradients are bit for bit the in-process twin's (same seeds)."""
    rng = np.random.default_rng(0)
    params = OscillatorParams("linear", a=rng.uniform(0.1, 0.9, 8), delta=rng.uniform(0.4, 0.7, 8))
    forcing, nudges = rng.normal(size=(3, 150, 8)), rng.normal(size=(3, 150, 8))
    rest = np.zeros((3, 8))
    board = load_board("lc-tank-pcb")

    def rhel(core):
        core.load(params)
        core.set_echo_gain(2 * core.mapping.expected_omega / board.quality_factor)
        positions, phi, pi = core.forward(forcing, rest, rest)
        return positions, core.echo(forcing, phi, pi, nudges, 0.1)

    local_positions, local = rhel(AnalogTwin(board, CONFIG, fabrication_seed=2, noise_seed=5, first_oscillator=4))
    options = ("--target", "analog-twin", "--fabrication-seed", "2", "--noise-seed", "5", "--scpi", "0")
    with simulated_board(*options) as names:
        with Instruments(*names.split(), timeout=10) as instruments:
            positions, remote = rhel(InstrumentCore(board, instruments, CONFIG, first_oscillator=4))
        identities = [probe(name, 2.0) for name in names.split()]  # each instrument serves one session at a time
    np.testing.assert_array_equal(positions, local_positions)
    for name in ("a", "delta"):
        np.testing.assert_array_equal(remote.grad_params[name], local.grad_params[name])
    np.testing.assert_array_equal(remote.grad_forcing, local.grad_forcing)
    assert identities[0].startswith("answers SCPI *IDN?: echoforge,ANALOG-TWIN-AWG,lc-tank-pcb-rev-a,")
    assert identities[1].startswith("answers SCPI *IDN?: echoforge,ANALOG-TWIN-DIGITIZER,lc-tank-pcb-rev-a,")


def test_an_error_the_instrument_reports_fails_the_call_in_one_line():
    with _instrument_pair() as names, Instruments(*names, timeout=5) as instruments:
        with pytest.raises(InstrumentError) as error:  # an echo before any forward
            instruments.run(np.zeros((1, 4, 1), dtype=np.int64), np.zeros((1, 4, 1)))
    message = str(error.value)
    assert "\n" not in message and "error -221" in message and "Settings conflict" in message


def test_instruments_of_another_board_are_refused():
    with _instrument_pair("on-chip-array") as names, Instruments(*names, timeout=5) as instruments:
        with pytest.raises(InstrumentError, match="drive board 'on-chip-array-64', not 'lc-tank-pcb-rev-a'"):
            InstrumentCore(load_board("lc-tank-pcb"), instruments, CONFIG)


def _replying(replies):
    """A SCPI-looking instrument: answers the queries in ``replies`` (upper case, long form), ignores the rest."""
    def handler(connection, stop):
        connection.settimeout(0.05)
        buffer = bytearray()
        while not stop.is_set():
            try:
                data = connection.recv(4096)
            except TimeoutError:
                continue
            if not data:
                return
            buffer += data
            while b"\n" in buffer:
                line, _, rest = bytes(buffer).partition(b"\n")
                buffer = bytearray(rest)
                if line.upper() in replies:
                    connection.sendall(replies[line.upper()] + b"\n")
    return handler


DIGITIZER_IDN = b"echoforge,ANALOG-TWIN-DIGITIZER,lc-tank-pcb-rev-a,0"
ASCII_DIGITIZER = {b"*IDN?": DIGITIZER_IDN, b"SYSTEM:ERROR?": b'0,"No error"', b"WAVEFORM:DATA?": b"1,2,3,4"}
_ascii_digitizer = _replying(ASCII_DIGITIZER)  # answers WAVeform:DATA? in ASCII: what pyvisa's block reader refuses


def test_an_ascii_reply_where_a_block_is_expected_is_one_line():
    with _instrument_pair() as (awg_name, _), _serving(_ascii_digitizer) as digitizer_name:
        with Instruments(awg_name, digitizer_name, timeout=5) as instruments:
            with pytest.raises(InstrumentError) as error:
                instruments.digitizer.read_block("WAVeform:DATA?", "i")
            assert instruments.digitizer.query("*IDN?").startswith("echoforge")  # the session is still in step
    message = str(error.value)
    assert "\n" not in message and "answered without a definite-length block" in message


_hung = _replying({})  # takes every byte, answers nothing


def test_a_hung_instrument_times_out():
    with _serving(_hung) as name:
        started = time.monotonic()
        with pytest.raises(InstrumentError) as error:
            Instruments(name, name, timeout=0.5)
        assert time.monotonic() - started < 5
        assert "no answer to *IDN? within 0.5 s" in str(error.value)
        started = time.monotonic()
        assert probe(name, 0.5).startswith("no answer")  # `devices --probe` neither: SCPI, then the protocol
        assert time.monotonic() - started < 10


def _calibrate(awg, digitizer, tmp_path, timeout=5):
    """`echoforge calibrate` through the instruments, as its own process: (exit code, stderr)."""
    command = [sys.executable, "-m", "echoforge.cli", "calibrate", "--device", awg, "--digitizer", digitizer,
               "--board", "lc-tank-pcb", "-o", str(tmp_path / "cal.yaml"), "--timeout", str(timeout), "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert not (tmp_path / "cal.yaml").exists()
    return result.returncode, result.stderr


@pytest.mark.parametrize("digitizer, expected", [
    (ASCII_DIGITIZER, "WAVeform:DATA? answered without a definite-length block"),
    ({b"*IDN?": DIGITIZER_IDN, b"SYSTEM:ERROR?": b'-310,"System error; ADC overload"'},
     "*CLS failed: error -310 System error; ADC overload"),
], ids=["ascii-for-a-block", "syst-err-reports"])
def test_calibrate_through_a_misbehaving_digitizer_is_one_line_and_exit_2(tmp_path, digitizer, expected):
    """The real twin AWG on one TCP port, a digitizer that misbehaves on another; `echoforge calibrate`
    runs as a process of its own: one line on stderr naming the resource and what went wrong, exit 2."""
    with _instrument_pair() as (awg_name, _), _serving(_replying(digitizer)) as digitizer_name:
        code, error = _calibrate(awg_name, digitizer_name, tmp_path)
    assert code == 2 and error.count("\n") == 1, error
    assert error.startswith(f"echoforge calibrate: error: {digitizer_name}: ") and expected in error, error


def test_calibrate_through_a_hung_instrument_times_out_in_one_line(tmp_path):
    with _serving(_hung) as name:
        started = time.monotonic()
        code, error = _calibrate(name, name, tmp_path, timeout=1)
    assert code == 2 and error.count("\n") == 1, error
    assert f"{name}: no answer to *IDN? within 1 s" in error
    assert time.monotonic() - started < 30
