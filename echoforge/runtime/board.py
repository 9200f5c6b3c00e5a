"""The board simulator: the command layer (docs/protocol.md §10) on the fixed-point emulator, served on
a real pseudo-terminal or a TCP port, with faults on demand.

`BoardDevice` is what firmware would be: a link handler holding the program, the per-bank registers and
the one active phase, refusing anything malformed with a DeviceError and changing nothing when it does.
`Board` serves it: a LinkServer per connection, frame faults on the line, and scheduled reboots.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from echoforge import __version__
from echoforge.models.core import PARAM_NAMES, OscillatorParams
from echoforge.targets import BankSlot, CoreFactory, unplaced
from echoforge.targets.emulator import EmulatorCore
from echoforge.targets.emulator.kernels import product_shifts
from echoforge.targets.emulator.stream import EchoStream, ForwardStream

from .commands import (
    ACCUMULATOR_BYTES,
    COMMAND_VERSION,
    COUNTERS,
    OPCODE_NAMES,
    BankProgram,
    BoardInfo,
    Capabilities,
    Opcode,
    PhaseFlags,
    Register,
    accumulator_rows,
    bad_payload,
    decode_program,
    decode_request,
    encode_hello,
    encode_program,
    pack_samples,
    program_hash,
    split_body,
    unpack_samples,
)
from .errors import DeviceError, ErrorCode
from .faults import FaultyFrameTransport, check_rates
from .link import LinkServer, response_opcode
from .transport import PtyTransport, SocketTransport, Transport

logger = logging.getLogger(__name__)

FIRMWARE = f"echoforge-board-sim {__version__}"
_U32_MAX = 0xFFFFFFFF


@dataclass
class _Bank:
    program: BankProgram
    core: EmulatorCore
    state: tuple[np.ndarray, np.ndarray] | None = None  # the STATE register (ϕ, π), each (B, P)
    echo: EchoStream | None = None                      # the last completed echo (ECHO register, accumulators)


@dataclass
class _Phase:
    chunk: Opcode      # FORWARD_CHUNK or ECHO_CHUNK
    bank: int
    batch: int
    length: int
    position: int      # forward: the next chunk's start; echo: the next chunk's end
    stream: ForwardStream | EchoStream

    @property
    def done(self) -> bool:
        return self.position == (self.length if self.chunk == Opcode.FORWARD_CHUNK else 0)


class BoardDevice:
    """The device side of the command layer, backed by the emulator; call it as a link handler."""

    def __init__(self, capabilities: Capabilities = Capabilities(), target: str = "emulator",
                 cores: CoreFactory = unplaced(EmulatorCore)):
        self.capabilities = capabilities
        self.target = target  # the name HELLO reports
        self._cores = cores   # a fresh core for a bank's formats and slot (a BoardKind's factory)
        self.epoch = 0
        self.banks: list[_Bank] = []
        self.phase: _Phase | None = None
        self._handlers = {
            Opcode.RESET: self._reset, Opcode.LOAD_PROGRAM: self._load_program,
            Opcode.WRITE_PARAMS: self._write_params, Opcode.WRITE_STATE: self._write_state,
            Opcode.READ_STATE: self._read_state, Opcode.BEGIN_FORWARD: self._begin_forward,
            Opcode.FORWARD_CHUNK: self._forward_chunk, Opcode.END_FORWARD: self._end_forward,
            Opcode.BEGIN_ECHO: self._begin_echo, Opcode.ECHO_CHUNK: self._echo_chunk,
            Opcode.END_ECHO: self._end_echo, Opcode.READ_OBSERVABLES: self._read_observables,
        }
        self.reboot()

    def reboot(self) -> None:
        """Power-cycle: every program, register and phase is lost and the boot epoch changes."""
        self.epoch = _new_epoch(self.epoch)
        self._clear()

    def info(self) -> BoardInfo:
        return BoardInfo(COMMAND_VERSION, self.target, FIRMWARE, self.epoch, self.capabilities)

    def __call__(self, opcode: int, payload: bytes) -> tuple[int, bytes]:
        try:
            command = Opcode(opcode)
        except ValueError:
            raise DeviceError(ErrorCode.UNKNOWN_OPCODE, f"no command 0x{opcode:04X}") from None
        if command is Opcode.HELLO:
            _expect_empty(payload)
            return response_opcode(opcode), encode_hello(self.info())
        fields, body = decode_request(command, payload, self.epoch)
        return response_opcode(opcode), self._handlers[command](*fields, body)

    # ---- program and registers -------------------------------------------------------------------

    def _clear(self) -> None:
        self.banks = []
        self.phase = None

    def _reset(self, body: bytes) -> bytes:
        _expect_empty(body)
        self._clear()
        return b""

    def _load_program(self, image: bytes) -> bytes:
        programs = decode_program(image, self.capabilities.max_banks)
        total = sum(program.size for program in programs)
        if total > self.capabilities.max_oscillators:
            raise DeviceError(ErrorCode.OVER_CAPACITY,
                              f"{total} oscillators; this board has {self.capabilities.max_oscillators}")
        firsts = np.cumsum([0] + [program.size for program in programs[:-1]])
        banks = [_Bank(program, self._core(program, BankSlot(k, int(first))))
                 for k, (program, first) in enumerate(zip(programs, firsts))]
        self.banks, self.phase = banks, None
        return program_hash(image).to_bytes(4, "little")

    def _write_params(self, bank_index: int, body: bytes) -> bytes:
        bank = self._bank(bank_index)
        old = bank.program
        codes = unpack_samples(body, (len(PARAM_NAMES), old.size), old.width)
        program = BankProgram(old.kind, old.config, codes)
        _load_codes(bank.core, program)
        bank.program, self.phase = program, None
        return program_hash(encode_program([bank.program for bank in self.banks])).to_bytes(4, "little")

    def _write_state(self, bank_index: int, batch: int, first: int, rows: int, body: bytes) -> bytes:
        bank = self._bank(bank_index)
        self._check_batch(batch)
        _check_rows(first, rows, batch)
        size = bank.program.size
        row_bytes = rows * size * bank.program.width
        phi, pi = (_codes(part, (rows, size), bank.program) for part in split_body(body, row_bytes, row_bytes))
        if bank.state is not None and len(bank.state[0]) == batch:
            new_phi, new_pi = (part.copy() for part in bank.state)
        else:
            new_phi, new_pi = np.zeros((2, batch, size), np.int64)
        new_phi[first:first + rows], new_pi[first:first + rows] = phi, pi
        bank.state = (new_phi, new_pi)
        return b""

    def _read_state(self, bank_index: int, register: int, first: int, rows: int, body: bytes) -> bytes:
        _expect_empty(body)
        bank = self._bank(bank_index)
        if register == Register.STATE:
            arrays = bank.state
        elif register == Register.ECHO:
            arrays = (bank.echo.phi, bank.echo.pi) if bank.echo else None
        else:
            raise bad_payload(f"no register {register}")
        if arrays is None:
            raise DeviceError(ErrorCode.NO_STATE, f"bank {bank_index} has no {Register(register).name} register yet")
        _check_rows(first, rows, arrays[0].shape[-2])
        width = bank.program.width
        _check_response_size(2 * arrays[0][..., first:first + rows, :].size * width, self.capabilities)
        return b"".join(pack_samples(part[..., first:first + rows, :], width) for part in arrays)

    def _read_observables(self, bank_index: int, first: int, rows: int, body: bytes) -> bytes:
        _expect_empty(body)
        bank = self._bank(bank_index)
        if bank.echo is None:
            raise DeviceError(ErrorCode.NO_STATE, f"bank {bank_index} has run no echo yet")
        _check_rows(first, rows, len(bank.echo.accumulators))
        selected = bank.echo.accumulators[first:first + rows][:, accumulator_rows(bank.program.kind)]
        _check_response_size(selected.size * ACCUMULATOR_BYTES, self.capabilities)
        return pack_samples(selected, ACCUMULATOR_BYTES)

    # ---- phases ----------------------------------------------------------------------------------

    def _begin_forward(self, bank_index: int, flags: int, batch: int, length: int, body: bytes) -> bytes:
        _expect_empty(body)
        bank = self._bank(bank_index)
        phi, pi = self._start_state(bank, flags, batch)
        self.phase = _Phase(Opcode.FORWARD_CHUNK, bank_index, batch, length, 0, ForwardStream(bank.core, phi, pi))
        return b""

    def _begin_echo(self, bank_index: int, flags: int, batch: int, length: int, body: bytes) -> bytes:
        _expect_empty(body)
        bank = self._bank(bank_index)
        if length == 0:
            raise bad_payload("an echo needs at least one step")
        phi, pi = self._start_state(bank, flags, batch)
        self.phase = _Phase(Opcode.ECHO_CHUNK, bank_index, batch, length, length, EchoStream(bank.core, phi, pi))
        return b""

    def _forward_chunk(self, start: int, steps: int, body: bytes) -> bytes:
        phase, program = self._active(Opcode.FORWARD_CHUNK)
        self._check_chunk(phase, program, steps, samples_per_step=1, response_width=program.width)
        if start != phase.position or start + steps > phase.length:
            raise _out_of_order(phase, start, steps, f"the next chunk starts at step {phase.position}")
        forcing = _codes(body, (phase.batch, steps, program.size), program)
        positions = phase.stream.run(forcing)
        phase.position += steps
        return pack_samples(positions, program.width)

    def _echo_chunk(self, start: int, steps: int, body: bytes) -> bytes:
        phase, program = self._active(Opcode.ECHO_CHUNK)
        self._check_chunk(phase, program, steps, samples_per_step=2, response_width=program.observable_width)
        if start + steps != phase.position:
            raise _out_of_order(phase, start, steps, f"the next chunk ends at step {phase.position} (reverse order)")
        part = phase.batch * steps * program.size * program.width
        forcing, nudges = (_codes(piece, (phase.batch, steps, program.size), program)
                           for piece in split_body(body, part, part))
        observable = phase.stream.run(forcing, nudges)
        phase.position = start
        return pack_samples(observable, program.observable_width)

    def _end_forward(self, body: bytes) -> bytes:
        phase = self._finished(Opcode.FORWARD_CHUNK, body)
        self.banks[phase.bank].state = (phase.stream.phi, phase.stream.pi)
        return _counters(phase.stream.counters)

    def _end_echo(self, body: bytes) -> bytes:
        phase = self._finished(Opcode.ECHO_CHUNK, body)
        self.banks[phase.bank].echo = phase.stream
        return _counters(phase.stream.counters)

    def _finished(self, chunk: Opcode, body: bytes) -> _Phase:
        """The active phase of `chunk`s, checked complete and closed."""
        _expect_empty(body)
        phase, _ = self._active(chunk)
        if not phase.done:
            raise DeviceError(ErrorCode.OUT_OF_ORDER, f"the phase is incomplete: {phase.length} steps, the next chunk "
                                                      f"{'starts' if chunk == Opcode.FORWARD_CHUNK else 'ends'} at "
                                                      f"{phase.position}")
        self.phase = None
        return phase

    # ---- checks ----------------------------------------------------------------------------------

    def _core(self, program: BankProgram, slot: BankSlot) -> EmulatorCore:
        caps = self.capabilities
        word, table = program.config.word_bits, program.config.table_bits
        if program.kind not in caps.hru_kinds:
            raise DeviceError(ErrorCode.BAD_PROGRAM, f"this board runs no {program.kind} banks")
        word_ok = caps.word_bits[0] <= word <= caps.word_bits[1]
        if not (word_ok and caps.table_bits[0] <= table <= caps.table_bits[1]):
            raise DeviceError(ErrorCode.BAD_PROGRAM, f"{word}-bit words, 2^{table}-segment tables: this board takes "
                                                     f"words of {caps.word_bits} bits, tables of {caps.table_bits}")
        try:
            core = self._cores(program.config, slot)
            if min(product_shifts(program.config, core.functions.tanh_table.seg_shift)) < 0:
                raise ValueError("c_frac + unit_frac < state_frac: the force c·T(z) has no valid rescale")
        except ValueError as error:
            raise DeviceError(ErrorCode.BAD_PROGRAM, str(error)) from None
        _load_codes(core, program)
        return core

    def _bank(self, index: int) -> _Bank:
        if not self.banks:
            raise DeviceError(ErrorCode.NO_PROGRAM, "no program loaded")
        if index >= len(self.banks):
            raise DeviceError(ErrorCode.BAD_BANK, f"bank {index}; the program has {len(self.banks)}")
        return self.banks[index]

    def _check_batch(self, batch: int) -> None:
        if not 1 <= batch <= self.capabilities.max_batch:
            raise DeviceError(ErrorCode.OVER_CAPACITY, f"batch {batch}; this board takes 1 to "
                                                       f"{self.capabilities.max_batch}")

    def _start_state(self, bank: _Bank, flags: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
        if flags & ~PhaseFlags.ZERO_STATE.value:
            raise bad_payload(f"undefined phase flags 0x{flags:02X}")
        self._check_batch(batch)
        if flags & PhaseFlags.ZERO_STATE:
            zeros = np.zeros((batch, bank.program.size), np.int64)
            return zeros, zeros
        if bank.state is None or len(bank.state[0]) != batch:
            raise DeviceError(ErrorCode.NO_STATE, f"the STATE register does not hold {batch} rows")
        return bank.state

    def _active(self, chunk: Opcode) -> tuple[_Phase, BankProgram]:
        if self.phase is None or self.phase.chunk != chunk:
            name = "forward" if chunk == Opcode.FORWARD_CHUNK else "echo"
            raise DeviceError(ErrorCode.NO_PHASE, f"no {name} phase is active")
        return self.phase, self.banks[self.phase.bank].program

    def _check_chunk(self, phase: _Phase, program: BankProgram, steps: int, samples_per_step: int,
                     response_width: int) -> None:
        caps = self.capabilities
        lanes = phase.batch * program.size
        if not 1 <= steps <= caps.max_chunk_steps or samples_per_step * lanes * steps > caps.buffer_samples:
            raise DeviceError(ErrorCode.OVER_CAPACITY,
                              f"a chunk of {steps} steps × {lanes} lanes; this board takes ≤ {caps.max_chunk_steps} "
                              f"steps and ≤ {caps.buffer_samples} samples")
        _check_response_size(lanes * steps * response_width, caps)


def _new_epoch(previous: int) -> int:
    """A random non-zero u32 that differs from the previous boot's."""
    while (epoch := secrets.randbits(32)) in (0, previous):
        pass
    return epoch


def _expect_empty(body: bytes) -> None:
    if body:
        raise bad_payload(f"{len(body)} unexpected bytes")


def _check_rows(first: int, rows: int, batch: int) -> None:
    if rows == 0 or first + rows > batch:
        raise bad_payload(f"rows {first}..{first + rows - 1} of a batch of {batch}")


def _check_response_size(size: int, capabilities: Capabilities) -> None:
    if size > capabilities.max_response_payload:
        raise DeviceError(ErrorCode.RESPONSE_TOO_LARGE, f"{size} bytes > this board's {capabilities.max_response_payload}"
                                                        f"; ask for fewer rows or steps")


def _codes(data: bytes, shape: tuple[int, ...], program: BankProgram) -> np.ndarray:
    """Samples of the bank's state word, each within its range."""
    codes = unpack_samples(data, shape, program.width)
    limit = program.config.state.limit
    if codes.size and np.abs(codes).max() > limit:
        raise bad_payload(f"a code outside ±{limit}, the {program.config.word_bits}-bit word")
    return codes


def _load_codes(core: EmulatorCore, program: BankProgram) -> None:
    """Load the program's parameter codes into `core` (unchanged if they are refused)."""
    limit = program.config.state.limit
    if np.abs(program.codes).max() > limit:
        raise DeviceError(ErrorCode.BAD_PROGRAM, f"a parameter code outside ±{limit}")
    formats = (program.config.param(name) for name in PARAM_NAMES)
    params = OscillatorParams(program.kind, **{name: fmt.dequantize(code)
                                               for name, fmt, code in zip(PARAM_NAMES, formats, program.codes)})
    try:
        core.load(params)  # dequantised codes quantise back to themselves
    except ValueError as error:
        raise DeviceError(ErrorCode.BAD_PROGRAM, str(error)) from None


def _counters(counters: np.ndarray) -> bytes:
    return COUNTERS.pack(*(min(int(n), _U32_MAX) for n in counters))


def _out_of_order(phase: _Phase, start: int, steps: int, expected: str) -> DeviceError:
    return DeviceError(ErrorCode.OUT_OF_ORDER, f"chunk of steps {start}..{start + steps - 1} of {phase.length}: "
                                               f"{expected}")


# ---- serving ------------------------------------------------------------------------------------------

class BoardReset(BaseException):
    """The simulated board loses power in the middle of a command.

    A BaseException so that it unwinds through LinkServer, which answers any Exception of a handler
    with an INTERNAL error response: a board that reboots answers nothing.
    """


@dataclass(frozen=True)
class Faults:
    """What goes wrong on the simulated line and board; rates are per frame, in both directions."""

    drop: float = 0.0
    corrupt: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.0                    # each frame the board sends waits up to this many seconds
    reset_after: int | None = None        # reboot on receipt of command reset_after + 1
    reset_at: tuple[str, int] | None = None  # reboot on receipt of the k-th command of this name
    seed: int = 0

    def __post_init__(self):
        check_rates(drop=self.drop, corrupt=self.corrupt, duplicate=self.duplicate)
        if self.delay < 0:
            raise ValueError(f"delay must be ≥ 0 seconds, got {self.delay}")
        if self.reset_after is not None and self.reset_after < 0:
            raise ValueError(f"reset_after must be ≥ 0, got {self.reset_after}")
        if self.reset_at is not None and (self.reset_at[0] not in Opcode.__members__ or self.reset_at[1] < 1):
            raise ValueError(f"reset_at must name a command ({', '.join(Opcode.__members__)}) and an occurrence ≥ 1,"
                             f" got {self.reset_at}")

    @property
    def on_line(self) -> bool:
        return any((self.drop, self.corrupt, self.duplicate, self.delay))


def parse_reset_at(text: str) -> tuple[str, int]:
    """"ECHO_CHUNK" or "ECHO_CHUNK:3" → ("ECHO_CHUNK", 3)."""
    name, _, occurrence = text.partition(":")
    if occurrence and not occurrence.isdigit():
        raise ValueError(f"--reset-at {text!r}: expected NAME or NAME:K with K a positive integer")
    return name.upper(), int(occurrence or 1)


class Board:
    """A simulated board: a BoardDevice behind a link server, on a pseudo-terminal or a TCP port.

    The board outlives connections (a host may close the port and open it again) but not reboots:
    `faults` may reboot it once after a number of commands and once at a chosen command. The command
    that triggers a reboot is lost, unanswered; afterwards the board has a new epoch and no program.
    """

    def __init__(self, capabilities: Capabilities = Capabilities(), faults: Faults = Faults(),
                 poll_interval: float = 0.05, target: str = "emulator",
                 cores: CoreFactory = unplaced(EmulatorCore)):
        self.device = BoardDevice(capabilities, target, cores)
        self.faults = faults
        self.poll_interval = poll_interval
        self.commands = Counter()  # by opcode name, and "total"
        self.reboots = 0
        self.line_faults = Counter()
        self._pending_resets = {"after": faults.reset_after is not None, "at": faults.reset_at is not None}

    def serve_pty(self, stop_event: threading.Event, announce: Callable[[str], None]) -> None:
        """Serve on a new pseudo-terminal, announcing its slave path, until `stop_event` is set."""
        with PtyTransport() as pty:
            announce(pty.device_path)
            while not stop_event.is_set():
                self._serve_connection(pty, stop_event)

    def serve_tcp(self, host: str, port: int, stop_event: threading.Event, announce: Callable[[str], None]) -> None:
        """Serve on host:port (0: any free port), announcing socket://host:port. One connection at a time holds
        the board; any other is answered at once, every request with BUSY naming the holder and since when,
        until it hangs up (docs/protocol.md §6)."""
        holder, since = None, None
        with socket.create_server((host, port)) as listener:
            listener.settimeout(self.poll_interval)
            announce(f"socket://{host}:{listener.getsockname()[1]}")
            while not stop_event.is_set():
                try:
                    connection, peer = listener.accept()
                except TimeoutError:
                    continue
                if holder is not None:
                    holder.join(2 * self.poll_interval)  # a host that just hung up: its server notices in one poll
                if holder is not None and holder.is_alive():
                    refusal = DeviceError(ErrorCode.BUSY, f"held by another host ({since[0]}) since {since[1]} — try "
                                                          "again when its session ends")
                    threading.Thread(target=self._refuse_all, args=(connection, refusal, stop_event), daemon=True).start()
                    continue
                since = (f"{peer[0]}:{peer[1]}", time.strftime("%Y-%m-%d %H:%M:%S %Z"))
                holder = threading.Thread(target=self._serve_socket, args=(connection, stop_event), daemon=True)
                holder.start()
            if holder is not None:
                holder.join()

    def _serve_socket(self, connection: socket.socket, stop_event: threading.Event) -> None:
        with SocketTransport(connection) as line:
            self._serve_connection(line, stop_event)

    def _refuse_all(self, connection: socket.socket, refusal: DeviceError, stop_event: threading.Event) -> None:
        """A link server on `connection` whose every request is refused with `refusal` (SYNC still answers)."""

        def busy(opcode: int, payload: bytes):
            raise refusal

        with SocketTransport(connection) as line:
            LinkServer(line, busy).serve(stop_event, self.poll_interval)

    def summary(self) -> str:
        faults = ", ".join(f"{n} {name}" for name, n in self.line_faults.items() if n) or "no line faults"
        return f"{self.commands['total']} commands, {self.reboots} reboots, {faults}"

    def _serve_connection(self, transport: Transport, stop_event: threading.Event) -> None:
        """Answer requests until stopped or the line fails; a reboot starts a fresh link server (a rebooted
        board has no duplicate cache)."""
        line = self._faulty(transport)
        server = LinkServer(line, self._handle)
        try:
            while not stop_event.is_set():
                try:
                    server.poll(self.poll_interval)
                except BoardReset:
                    server = LinkServer(line, self._handle)
        except ConnectionError as error:
            logger.info("connection ends: %s", error)
        finally:
            self.line_faults.update(getattr(line, "faults", {}))

    def _faulty(self, transport: Transport) -> Transport:
        faults = self.faults
        if not faults.on_line:
            return transport
        return FaultyFrameTransport(transport, drop=faults.drop, corrupt=faults.corrupt, duplicate=faults.duplicate,
                                    delay=faults.delay, seed=faults.seed)

    def _handle(self, opcode: int, payload: bytes) -> tuple[int, bytes]:
        name = OPCODE_NAMES.get(opcode, f"0x{opcode:04X}")
        self.commands.update(("total", name))
        if self._reset_due(name):
            self.reboots += 1
            self.device.reboot()
            logger.info("board reboots on command %d (%s)", self.commands["total"], name)
            raise BoardReset
        return self.device(opcode, payload)

    def _reset_due(self, name: str) -> bool:
        faults, pending = self.faults, self._pending_resets
        due_after = pending["after"] and self.commands["total"] == faults.reset_after + 1
        due_at = pending["at"] and (name, self.commands[name]) == faults.reset_at
        pending["after"] &= not due_after
        pending["at"] &= not due_at
        return due_after or due_at
