"""The board simulator's command handler: a full RHEL pass against the emulator, every refusal, reboots,
and hypothesis-generated garbage (clean DeviceErrors only, no hang, and a refused command changes nothing).

The handler is called directly, without a link: what the link adds is tested in test_link.py and
end to end in test_runtime_device.py.
"""

import time
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from echoforge.models.core import OscillatorParams
from echoforge.runtime.board import BoardDevice
from echoforge.runtime.commands import (
    ACCUMULATOR_BYTES,
    BankProgram,
    Capabilities,
    Opcode,
    PhaseFlags,
    Register,
    accumulator_rows,
    decode_hello,
    encode_program,
    encode_request,
    pack_samples,
    program_hash,
    unpack_samples,
)
from echoforge.runtime.errors import DeviceError, ErrorCode
from echoforge.runtime.link import response_opcode
from echoforge.targets.emulator import EmulatorCore, FormatConfig

CAPABILITIES = Capabilities(max_oscillators=16, max_banks=2, max_batch=4, max_chunk_steps=8, buffer_samples=96)
CONFIG = FormatConfig(20)
BATCH, LENGTH, SIZE = 2, 21, 3
KINDS = ("linear", "nonlinear")
HANDLER_SECONDS = 10.0  # no command may take longer (no hang); wide (they take milliseconds) for a busy machine


def bank_core(kind, seed, size=SIZE):
    rng = np.random.default_rng(seed)
    core = EmulatorCore(CONFIG)
    core.load(OscillatorParams(kind, a=rng.uniform(0.2, 1.0, size), delta=rng.uniform(0.3, 0.7, size),
                               w=rng.uniform(0.5, 1.0, size), b=rng.uniform(-0.5, 0.5, size),
                               c=rng.uniform(0.3, 0.7, size)))
    return core


class Driver:
    """Valid command sequences, sent straight to a BoardDevice."""

    def __init__(self, board: BoardDevice):
        self.board = board

    def send(self, opcode, fields=(), body=b""):
        payload = b"" if opcode == Opcode.HELLO else encode_request(opcode, self.board.epoch, fields, body)
        answered, reply = self.board(opcode, payload)
        assert answered == response_opcode(opcode)
        return reply

    def load(self, programs):
        return self.send(Opcode.LOAD_PROGRAM, body=encode_program(programs))

    def write_state(self, bank, program, phi, pi, page_rows=1):
        for first in range(0, len(phi), page_rows):
            rows = slice(first, first + page_rows)
            body = pack_samples(phi[rows], program.width) + pack_samples(pi[rows], program.width)
            self.send(Opcode.WRITE_STATE, (bank, len(phi), first, len(phi[rows])), body)

    def read_state(self, bank, program, register, batch):
        pair = (2,) if register == Register.ECHO else ()
        reply = self.send(Opcode.READ_STATE, (bank, register, 0, batch))
        half = len(reply) // 2
        return [unpack_samples(part, (*pair, batch, program.size), program.width) for part in (reply[:half],
                                                                                             reply[half:])]

    def forward(self, bank, program, forcing, phi=None, pi=None, chunk=5):
        """Positions, end ϕ, end π, counters; from zero unless (phi, pi) are given."""
        batch, length, _ = forcing.shape
        if phi is not None:
            self.write_state(bank, program, phi, pi)
        flags = PhaseFlags.ZERO_STATE if phi is None else PhaseFlags.NONE
        self.send(Opcode.BEGIN_FORWARD, (bank, flags, batch, length))
        positions = [self.forward_chunk(program, forcing, start, chunk) for start in range(0, length, chunk)]
        counters = self.send(Opcode.END_FORWARD)
        return (np.concatenate(positions, axis=1), *self.read_state(bank, program, Register.STATE, batch), counters)

    def echo_chunk(self, program, forcing, nudges, s):
        body = pack_samples(forcing[:, s], program.width) + pack_samples(nudges[:, s], program.width)
        reply = self.send(Opcode.ECHO_CHUNK, (s.start, s.stop - s.start), body)
        return unpack_samples(reply, (forcing.shape[0], s.stop - s.start, program.size), program.observable_width)

    def forward_chunk(self, program, forcing, start, chunk):
        steps = min(chunk, forcing.shape[1] - start)
        reply = self.send(Opcode.FORWARD_CHUNK, (start, steps),
                          pack_samples(forcing[:, start:start + steps], program.width))
        return unpack_samples(reply, (forcing.shape[0], steps, program.size), program.width)

    def echo(self, bank, program, forcing, nudges, chunk=4):
        """Forcing observable, pair end ϕ and π, accumulators (B, 6, P) — from the STATE register."""
        self.send(Opcode.BEGIN_ECHO, (bank, 0, forcing.shape[0], forcing.shape[1]))
        return self.finish_echo(bank, program, forcing, nudges, forcing.shape[1], chunk)

    def finish_echo(self, bank, program, forcing, nudges, end, chunk=4):
        """The echo's chunks before step `end`, END_ECHO and the reads."""
        batch = forcing.shape[0]
        observable = np.zeros_like(forcing)
        for stop in range(end, 0, -chunk):
            s = slice(max(stop - chunk, 0), stop)
            observable[:, s] = self.echo_chunk(program, forcing, nudges, s)
        self.send(Opcode.END_ECHO)
        phi, pi = self.read_state(bank, program, Register.ECHO, batch)
        rows = accumulator_rows(program.kind)
        accumulators = np.zeros((batch, 6, program.size), np.int64)
        accumulators[:, rows] = unpack_samples(self.send(Opcode.READ_OBSERVABLES, (bank, 0, batch)),
                                               (batch, len(rows), program.size), ACCUMULATOR_BYTES)
        return observable, phi, pi, accumulators


class Scenario:
    """Two banks (linear, nonlinear), their streams, and what the emulator computes for them."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        self.cores = [bank_core(kind, seed + bank) for bank, kind in enumerate(KINDS)]
        self.programs = [BankProgram(core.params.kind, CONFIG, core.param_codes) for core in self.cores]
        state = CONFIG.state
        self.forcing = state.quantize(rng.normal(size=(BATCH, LENGTH, SIZE)))[0]
        self.phi, self.pi = (state.quantize(0.3 * rng.normal(size=(BATCH, SIZE)))[0] for _ in range(2))
        self.nudges = state.quantize(0.02 * rng.normal(size=(BATCH, LENGTH, SIZE)))[0]
        self.expected_forward = [core.forward_int(self.forcing, self.phi, self.pi) for core in self.cores]
        self.expected_echo = [core.echo_int(self.forcing, run.phi, run.pi, self.nudges)
                              for core, run in zip(self.cores, self.expected_forward)]

    def check_forward(self, bank, result):
        positions, phi, pi, _ = result
        expected = self.expected_forward[bank]
        assert np.array_equal(positions, expected.positions)
        assert np.array_equal(phi, expected.phi) and np.array_equal(pi, expected.pi)

    def check_echo(self, bank, result):
        observable, phi, pi, accumulators = result
        expected = self.expected_echo[bank]
        assert np.array_equal(observable, expected.forcing_observable)
        assert np.array_equal(phi, expected.phi) and np.array_equal(pi, expected.pi)
        assert np.array_equal(accumulators, np.stack(list(expected.accumulators.values()), axis=1))

    def run(self, driver, bank):
        """Load, then a whole forward and echo of `bank`, checked against the emulator."""
        driver.load(self.programs)
        self.check_forward(bank, driver.forward(bank, self.programs[bank], self.forcing, self.phi, self.pi))
        self.check_echo(bank, driver.echo(bank, self.programs[bank], self.forcing, self.nudges))


SCENARIO = Scenario()


def fresh_board():
    return BoardDevice(CAPABILITIES)


@pytest.mark.parametrize("bank", [0, 1])
def test_full_pass_on_the_handler_matches_the_emulator(bank):
    SCENARIO.run(Driver(fresh_board()), bank)


def test_banks_keep_their_own_registers():
    driver = Driver(fresh_board())
    driver.load(SCENARIO.programs)
    forwards = [driver.forward(bank, program, SCENARIO.forcing, SCENARIO.phi, SCENARIO.pi)
                for bank, program in enumerate(SCENARIO.programs)]
    for bank in (1, 0):  # echoes in reverse bank order, each from its own forward's end state
        SCENARIO.check_forward(bank, forwards[bank])
        SCENARIO.check_echo(bank, driver.echo(bank, SCENARIO.programs[bank], SCENARIO.forcing, SCENARIO.nudges))


def test_hello_reports_capabilities_and_epoch():
    board = fresh_board()
    info = decode_hello(Driver(board).send(Opcode.HELLO))
    assert (info.version, info.target, info.epoch, info.capabilities) == (1, "emulator", board.epoch, CAPABILITIES)


def test_load_and_write_params_answer_the_program_hash():
    driver = Driver(fresh_board())
    assert driver.load(SCENARIO.programs) == program_hash(encode_program(SCENARIO.programs)).to_bytes(4, "little")
    retrained = bank_core("nonlinear", 99)
    programs = [SCENARIO.programs[0], BankProgram("nonlinear", CONFIG, retrained.param_codes)]
    reply = driver.send(Opcode.WRITE_PARAMS, (1,), pack_samples(retrained.param_codes, programs[1].width))
    assert reply == program_hash(encode_program(programs)).to_bytes(4, "little")
    positions, *_ = driver.forward(1, programs[1], SCENARIO.forcing)
    zeros = np.zeros((BATCH, SIZE), np.int64)
    assert np.array_equal(positions, retrained.forward_int(SCENARIO.forcing, zeros, zeros).positions)


def test_reboot_changes_the_epoch_and_loses_everything():
    board = fresh_board()
    driver = Driver(board)
    driver.load(SCENARIO.programs)
    stale = encode_request(Opcode.READ_STATE, board.epoch, (0, Register.STATE, 0, 1))
    board.reboot()
    with pytest.raises(DeviceError) as refused:
        board(Opcode.READ_STATE, stale)
    assert refused.value.code == ErrorCode.STALE_EPOCH
    assert decode_hello(driver.send(Opcode.HELLO)).epoch == board.epoch != int.from_bytes(stale[:4], "little")
    with pytest.raises(DeviceError) as empty:
        driver.send(Opcode.BEGIN_FORWARD, (0, PhaseFlags.ZERO_STATE, 1, 1))
    assert empty.value.code == ErrorCode.NO_PROGRAM


def test_reset_clears_everything_but_the_epoch():
    board = fresh_board()
    driver = Driver(board)
    driver.load(SCENARIO.programs)
    epoch = board.epoch
    driver.send(Opcode.RESET)
    assert board.epoch == epoch and not board.banks and board.phase is None


# ---- refusals ---------------------------------------------------------------------------------------

P0 = SCENARIO.programs[0]
W = P0.width


def _loaded(driver):
    driver.load(SCENARIO.programs)


def _forwarding(driver):
    driver.load(SCENARIO.programs)
    driver.send(Opcode.BEGIN_FORWARD, (0, PhaseFlags.ZERO_STATE, BATCH, LENGTH))


def _forwarding_3_steps(driver):
    driver.load(SCENARIO.programs)
    driver.send(Opcode.BEGIN_FORWARD, (0, PhaseFlags.ZERO_STATE, BATCH, 3))


def _echoing(driver):
    driver.load(SCENARIO.programs)
    driver.send(Opcode.BEGIN_ECHO, (0, PhaseFlags.ZERO_STATE, BATCH, LENGTH))


def _chunk(steps, value=0):
    return np.full((BATCH, steps, SIZE), value, np.int64)


REFUSALS = [
    # (name, setup, opcode, fields, body, code)
    ("no program", None, Opcode.BEGIN_FORWARD, (0, 1, 1, 1), b"", ErrorCode.NO_PROGRAM),
    ("bad bank", _loaded, Opcode.BEGIN_FORWARD, (2, 1, 1, 1), b"", ErrorCode.BAD_BANK),
    ("undefined flag", _loaded, Opcode.BEGIN_FORWARD, (0, 3, 1, 1), b"", ErrorCode.BAD_PAYLOAD),
    ("batch too big", _loaded, Opcode.BEGIN_FORWARD, (0, 1, 5, 1), b"", ErrorCode.OVER_CAPACITY),
    ("batch zero", _loaded, Opcode.BEGIN_ECHO, (0, 1, 0, 1), b"", ErrorCode.OVER_CAPACITY),
    ("empty echo", _loaded, Opcode.BEGIN_ECHO, (0, 1, 1, 0), b"", ErrorCode.BAD_PAYLOAD),
    ("no start state", _loaded, Opcode.BEGIN_ECHO, (0, 0, 1, 1), b"", ErrorCode.NO_STATE),
    ("no phase", _loaded, Opcode.FORWARD_CHUNK, (0, 1), pack_samples(_chunk(1), W), ErrorCode.NO_PHASE),
    ("wrong phase", _forwarding, Opcode.ECHO_CHUNK, (0, 1), pack_samples(_chunk(2), W), ErrorCode.NO_PHASE),
    ("skipped chunk", _forwarding, Opcode.FORWARD_CHUNK, (1, 1), pack_samples(_chunk(1), W), ErrorCode.OUT_OF_ORDER),
    ("past the end", _forwarding_3_steps, Opcode.FORWARD_CHUNK, (0, 4), pack_samples(_chunk(4), W),
     ErrorCode.OUT_OF_ORDER),
    ("forward order in an echo", _echoing, Opcode.ECHO_CHUNK, (0, 1), pack_samples(_chunk(2), W),
     ErrorCode.OUT_OF_ORDER),
    ("too many steps", _forwarding, Opcode.FORWARD_CHUNK, (0, 9), pack_samples(_chunk(9), W), ErrorCode.OVER_CAPACITY),
    ("short chunk", _forwarding, Opcode.FORWARD_CHUNK, (0, 2), pack_samples(_chunk(1), W), ErrorCode.BAD_PAYLOAD),
    ("code out of range", _forwarding, Opcode.FORWARD_CHUNK, (0, 1),
     pack_samples(_chunk(1, CONFIG.state.limit + 1), W), ErrorCode.BAD_PAYLOAD),
    ("end too early", _forwarding, Opcode.END_FORWARD, (), b"", ErrorCode.OUT_OF_ORDER),
    ("no echo yet", _loaded, Opcode.READ_OBSERVABLES, (0, 0, 1), b"", ErrorCode.NO_STATE),
    ("no register", _loaded, Opcode.READ_STATE, (0, 2, 0, 1), b"", ErrorCode.BAD_PAYLOAD),
    # a body of ϕ and π for 2 rows, valid: only the row range (rows 1..2 of a batch of 2) is wrong
    ("rows outside the batch", _loaded, Opcode.WRITE_STATE, (0, 2, 1, 2), 2 * pack_samples(_chunk(2)[0], W),
     ErrorCode.BAD_PAYLOAD),
    ("zero w", _loaded, Opcode.WRITE_PARAMS, (1,), pack_samples(np.zeros((5, SIZE), np.int64), W),
     ErrorCode.BAD_PROGRAM),
    ("too many oscillators", None, Opcode.LOAD_PROGRAM, (),
     encode_program([BankProgram("linear", CONFIG, np.zeros((5, 17), np.int64))]), ErrorCode.OVER_CAPACITY),
    ("word too long", None, Opcode.LOAD_PROGRAM, (),
     encode_program([BankProgram("linear", FormatConfig(30), np.zeros((5, 1), np.int64))]), ErrorCode.BAD_PROGRAM),
    ("undefined force rescale", None, Opcode.LOAD_PROGRAM, (),
     encode_program([BankProgram("linear", FormatConfig(20, c_frac=1, unit_frac=1), np.zeros((5, 1), np.int64))]),
     ErrorCode.BAD_PROGRAM),
    ("reset with a body", None, Opcode.RESET, (), b"x", ErrorCode.BAD_PAYLOAD),
]


@pytest.mark.parametrize("name, setup, opcode, fields, body, code", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals(name, setup, opcode, fields, body, code):
    board = BoardDevice(replace(CAPABILITIES, word_bits=(16, 24)))
    driver = Driver(board)
    if setup:
        setup(driver)
    with pytest.raises(DeviceError) as refused:
        driver.send(opcode, fields, body)
    assert refused.value.code == code, refused.value


def test_unknown_opcodes_and_hello_payloads_are_refused():
    board = fresh_board()
    with pytest.raises(DeviceError) as unknown:
        board(0x0042, b"")
    with pytest.raises(DeviceError) as hello:
        board(Opcode.HELLO, b"\x00")
    assert (unknown.value.code, hello.value.code) == (ErrorCode.UNKNOWN_OPCODE, ErrorCode.BAD_PAYLOAD)


# ---- garbage --------------------------------------------------------------------------------------------

def templates(board):
    """A valid payload of every command for `board` in its current epoch (each may still be refused by state)."""
    epoch = board.epoch
    forcing = pack_samples(SCENARIO.forcing[:, :4], W)
    nudged = forcing + pack_samples(SCENARIO.nudges[:, :4], W)
    state = pack_samples(SCENARIO.phi, W) + pack_samples(SCENARIO.pi, W)
    requests = {
        Opcode.RESET: ((), b""), Opcode.LOAD_PROGRAM: ((), encode_program(SCENARIO.programs)),
        Opcode.WRITE_PARAMS: ((0,), pack_samples(P0.codes, W)), Opcode.WRITE_STATE: ((0, BATCH, 0, BATCH), state),
        Opcode.READ_STATE: ((0, 0, 0, BATCH), b""), Opcode.BEGIN_FORWARD: ((0, 0, BATCH, LENGTH), b""),
        Opcode.FORWARD_CHUNK: ((4, 4), forcing), Opcode.END_FORWARD: ((), b""),
        Opcode.BEGIN_ECHO: ((0, 0, BATCH, LENGTH), b""), Opcode.ECHO_CHUNK: ((LENGTH - 4, 4), nudged),
        Opcode.END_ECHO: ((), b""), Opcode.READ_OBSERVABLES: ((0, 0, BATCH), b""),
    }
    payloads = [(opcode, encode_request(opcode, epoch, fields, body)) for opcode, (fields, body) in requests.items()]
    return payloads + [(Opcode.HELLO, b"")]


@st.composite
def garbage(draw, board):
    """A command derived from a valid one by damage, or made up."""
    opcode, payload = draw(st.sampled_from(templates(board)))
    payload = bytearray(payload)
    how = draw(st.sampled_from(["flip", "truncate", "extend", "field", "random body", "random", "opcode"]))
    if how == "flip" and payload:
        for _ in range(draw(st.integers(1, 4))):
            payload[draw(st.integers(0, len(payload) - 1))] ^= draw(st.integers(1, 255))
    elif how == "truncate":
        del payload[draw(st.integers(0, len(payload))):]
    elif how == "extend":
        payload += draw(st.binary(min_size=1, max_size=64))
    elif how == "field" and len(payload) > 4:
        offset = draw(st.integers(4, len(payload) - 1))
        value = draw(st.sampled_from([0, 1, 0xFF, 0xFFFF, 0xFFFFFFFF, 2 ** 31, LENGTH, BATCH]))
        payload[offset:offset + 4] = value.to_bytes(4, "little")
    elif how == "random body":
        payload = payload[:4] + draw(st.binary(max_size=200))
    elif how == "random":
        payload = draw(st.binary(max_size=200))
    elif how == "opcode":
        opcode = draw(st.integers(1, 0x7FFF))
    return opcode, bytes(payload)


def apply(board, command) -> bool:
    """Run one command; True if it was accepted. Only clean DeviceErrors, and quickly."""
    started = time.monotonic()
    try:
        board(*command)
        accepted = True
    except DeviceError as error:
        assert error.code != ErrorCode.INTERNAL, error
        accepted = False
    assert time.monotonic() - started < HANDLER_SECONDS
    return accepted


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_garbage_gives_clean_errors_and_a_valid_sequence_still_works(data):
    board = fresh_board()
    driver = Driver(board)
    steps = data.draw(st.integers(1, 12))
    for _ in range(steps):
        if data.draw(st.integers(0, 9)) == 0:
            SCENARIO.run(driver, bank=0)
        elif data.draw(st.booleans()):
            _forwarding(driver)
        apply(board, data.draw(garbage(board)))
    SCENARIO.run(driver, bank=data.draw(st.sampled_from([0, 1])))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_refused_command_changes_nothing(data):
    """Mid-phase (bank 0 forwarding or echoing, bank 1 with full registers), a refused command leaves the
    phase and every register as they were: the phase completes with the emulator's bits."""
    board = fresh_board()
    driver = Driver(board)
    SCENARIO.run(driver, bank=1)
    bank1 = [driver.read_state(1, SCENARIO.programs[1], register, BATCH) for register in Register]
    program = SCENARIO.programs[0]
    driver.forward(0, program, SCENARIO.forcing, SCENARIO.phi, SCENARIO.pi)
    in_echo = data.draw(st.booleans())
    last = slice(LENGTH - 4, LENGTH)
    if in_echo:
        driver.send(Opcode.BEGIN_ECHO, (0, 0, BATCH, LENGTH))
        first = driver.echo_chunk(program, SCENARIO.forcing, SCENARIO.nudges, last)
    else:
        driver.write_state(0, program, SCENARIO.phi, SCENARIO.pi)
        driver.send(Opcode.BEGIN_FORWARD, (0, 0, BATCH, LENGTH))
        first = driver.forward_chunk(program, SCENARIO.forcing, 0, 5)
    command = data.draw(garbage(board))
    # The damage may leave a valid command, which may change what it addresses: not this test's subject
    # (test_garbage_gives_clean_errors_… covers it), so hypothesis draws another instead of passing it.
    assume(not apply(board, command))
    if in_echo:
        observable, *rest = driver.finish_echo(0, program, SCENARIO.forcing, SCENARIO.nudges, last.start)
        observable[:, last] = first
        SCENARIO.check_echo(0, (observable, *rest))
    else:
        rest = [driver.forward_chunk(program, SCENARIO.forcing, start, 5) for start in range(5, LENGTH, 5)]
        driver.send(Opcode.END_FORWARD)
        positions = np.concatenate([first, *rest], axis=1)
        SCENARIO.check_forward(0, (positions, *driver.read_state(0, program, Register.STATE, BATCH), None))
    for register, before in zip(Register, bank1):
        after = driver.read_state(1, SCENARIO.programs[1], register, BATCH)
        assert all(np.array_equal(a, b) for a, b in zip(after, before))
