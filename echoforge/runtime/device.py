"""The host side of the command layer: a session with one board (`Device`), and the HamiltonianCore
contract on it (`DeviceCore`).

Only what RHEL needs crosses the link: integer codes in the board's word (docs/protocol.md §10). The
host splits a sequence into chunks the board's buffer holds, a batch into groups whose single time step
fits, and register transfers into pages that fit a frame; results do not depend on the splits.

Reset detection and replay. Every request carries the boot epoch the board reported in HELLO, and a
board refuses a request for another epoch (STALE_EPOCH) before doing anything, so a reboot is noticed
at the first request after it, whatever that request is. `Device.replaying` runs one operation (a load,
or one phase of one batch group) and on STALE_EPOCH handshakes again, re-synchronises the link,
re-loads the program and runs the operation again from its start. A phase is a pure function of what
the host sends (program, start state, streams), so the replay gives the same bits.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import TypeVar

import numpy as np

from echoforge.models.core import time_chunks
from echoforge.targets.emulator import EchoInt, EmulatorCore, ForwardInt, FormatConfig
from echoforge.targets.emulator.core import check_echo_shapes
from echoforge.targets.emulator.kernels import ACCUMULATORS

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
    decode_hello,
    encode_program,
    encode_request,
    pack_samples,
    program_hash,
    request_header_size,
    split_body,
    unpack_samples,
)
from .errors import DeviceError, ErrorCode
from .link import Link
from .transport import DEFAULT_BAUDRATE, DEFAULT_TIMEOUT, MeteredTransport, open_transport

logger = logging.getLogger(__name__)
T = TypeVar("T")
_HASH_BYTES = 4


class _Rebooted(Exception):
    """The board refused a request with STALE_EPOCH: it rebooted since the host's last HELLO."""


class Device:
    """A session with one board at `uri`: handshake, program, phases; reboots are replayed over.

    Every call has a deadline of `timeout` seconds plus the time its bytes take on a UART at `baudrate`
    (8N1), so a dead board fails a call with a one-line LinkTimeout naming the URI. `link_options` go to
    `Link` (retries, retry_interval, max_retry_interval). `traffic` counts calls, payload bytes and wire
    bytes per command, and the seconds its calls took from request to response (the line both ways
    plus whatever the board spends computing meanwhile).
    """

    def __init__(self, uri: str, *, timeout: float = DEFAULT_TIMEOUT, baudrate: int = DEFAULT_BAUDRATE,
                 max_replays: int = 3, **link_options):
        self.uri = uri
        self.timeout = timeout
        self.baudrate = baudrate
        self.max_replays = max_replays
        self.banks: list[BankProgram] = []
        self.reboots = 0
        self.traffic: dict[str, Counter] = defaultdict(Counter)
        self._program_loaded = False
        self._held: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # STATE registers the host knows
        self._transport = MeteredTransport(open_transport(uri, timeout=timeout, baudrate=baudrate))
        self.link = Link(self._transport, timeout=timeout, opcode_names=OPCODE_NAMES, **link_options)
        try:
            self.info = self._hello()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def handshake(self) -> BoardInfo:
        """HELLO: what the board is. A boot epoch other than the last one means the board rebooted: its
        program and registers are gone, and the next operation re-loads the program."""
        info = self._hello()
        if info.epoch != self.info.epoch:
            logger.warning("%s: the board rebooted (boot epoch 0x%08X, now 0x%08X)", self.uri, self.info.epoch,
                           info.epoch)
            self.reboots += 1
            self._program_loaded = False
            self._held.clear()
        self.info = info
        return info

    def set_bank(self, index: int, program: BankProgram) -> None:
        """Put `program` in bank `index` of the board's program: WRITE_PARAMS when only the parameter codes
        change (training), a new LOAD_PROGRAM otherwise. Banks are added in order."""
        if index > len(self.banks):
            raise ValueError(f"{self.uri}: load bank {len(self.banks)} before bank {index}")
        old = self.banks[index] if index < len(self.banks) else None
        if old is not None and old.same_layout(program) and np.array_equal(old.codes, program.codes):
            return
        rewrite = old is not None and old.same_layout(program) and self._program_loaded
        self.banks[index:index + 1] = [program]
        if rewrite:
            self.replaying(functools.partial(self._write_params, index))
        else:
            self._program_loaded = False
            self.replaying(lambda: None)

    def replaying(self, operation: Callable[[], T]) -> T:
        """Run `operation` on the loaded program; after a reboot, re-load and run it again from its start."""
        for _ in range(self.max_replays + 1):
            try:
                self._ensure_program()
                return operation()
            except _Rebooted:
                self.handshake()
                self.link.sync()
        raise RuntimeError(f"{self.uri}: the board rebooted {self.max_replays + 1} times during one operation")

    # ---- phases on integer codes -----------------------------------------------------------------

    def forward(self, bank: int, forcing, phi, pi):
        """The forward phase: (positions (B, L, P), end ϕ, end π (B, P), saturation counters (4,))."""
        program = self.banks[bank]
        groups = self._in_groups(forcing.shape[0], self._group_rows(program, echo=False),
                                 lambda rows: self._forward_rows(bank, forcing[rows], phi[rows], pi[rows]))
        positions, end_phi, end_pi, counters = zip(*groups)
        return np.concatenate(positions), np.concatenate(end_phi), np.concatenate(end_pi), sum(counters)

    def echo(self, bank: int, forcing, phi, pi, nudges):
        """The ±ε echo pair from the forward's end state (ϕ, π), with +ε nudge codes: (accumulators
        (B, 6, P) in kernels.ACCUMULATORS order, forcing observable (B, L, P), end ϕ and π (2, B, P),
        saturation counters (4,))."""
        program = self.banks[bank]
        groups = self._in_groups(forcing.shape[0], self._group_rows(program, echo=True),
                                 lambda rows: self._echo_rows(bank, forcing[rows], phi[rows], pi[rows], nudges[rows]))
        accumulators, observable, end_phi, end_pi, counters = zip(*groups)
        return (np.concatenate(accumulators), np.concatenate(observable), np.concatenate(end_phi, axis=1),
                np.concatenate(end_pi, axis=1), sum(counters))

    def _in_groups(self, batch: int, group_rows: int, run_rows: Callable[[slice], tuple]) -> list[tuple]:
        """run_rows on each group of batch rows, each group a replayable operation."""
        return [self.replaying(functools.partial(run_rows, rows)) for rows in _pages(batch, group_rows)]

    def _forward_rows(self, bank: int, forcing, phi, pi):
        program = self.banks[bank]
        batch, length, size = forcing.shape
        flags = self._prepare_state(bank, phi, pi)
        self.call(Opcode.BEGIN_FORWARD, (bank, flags, batch, length))
        positions = np.empty_like(forcing)
        for s in time_chunks(length, self._chunk_steps(program, batch, echo=False)):
            steps = s.stop - s.start
            reply = self.call(Opcode.FORWARD_CHUNK, (s.start, steps), pack_samples(forcing[:, s], program.width),
                              reply_bytes=batch * steps * size * program.width)
            positions[:, s] = unpack_samples(reply, (batch, steps, size), program.width)
        self._held.pop(bank, None)
        counters = self._end_phase(Opcode.END_FORWARD)
        end_phi, end_pi = self._read_register(bank, Register.STATE, batch)
        self._held[bank] = (end_phi, end_pi)
        return positions, end_phi, end_pi, counters

    def _echo_rows(self, bank: int, forcing, phi, pi, nudges):
        program = self.banks[bank]
        batch, length, size = forcing.shape
        flags = self._prepare_state(bank, phi, pi)
        self.call(Opcode.BEGIN_ECHO, (bank, flags, batch, length))
        observable = np.empty_like(forcing)
        for s in reversed(time_chunks(length, self._chunk_steps(program, batch, echo=True))):
            steps = s.stop - s.start
            body = pack_samples(forcing[:, s], program.width) + pack_samples(nudges[:, s], program.width)
            reply = self.call(Opcode.ECHO_CHUNK, (s.start, steps), body,
                              reply_bytes=batch * steps * size * program.observable_width)
            observable[:, s] = unpack_samples(reply, (batch, steps, size), program.observable_width)
        counters = self._end_phase(Opcode.END_ECHO)
        end_phi, end_pi = self._read_register(bank, Register.ECHO, batch)
        return self._read_observables(bank, batch), observable, end_phi, end_pi, counters

    def _end_phase(self, opcode: Opcode) -> np.ndarray:
        return np.array(COUNTERS.unpack(self.call(opcode, reply_bytes=COUNTERS.size)), dtype=np.int64)

    def _prepare_state(self, bank: int, phi, pi) -> PhaseFlags:
        """Make the bank's STATE register hold (ϕ, π), unless it is zero (a flag says so) or already there."""
        if not phi.any() and not pi.any():
            return PhaseFlags.ZERO_STATE
        held = self._held.get(bank)
        if held is None or not (np.array_equal(held[0], phi) and np.array_equal(held[1], pi)):
            self._held.pop(bank, None)
            self._write_register(bank, phi, pi)
            self._held[bank] = (phi.copy(), pi.copy())
        return PhaseFlags.NONE

    # ---- registers, in pages that fit a frame ------------------------------------------------------

    def _write_register(self, bank: int, phi, pi) -> None:
        program = self.banks[bank]
        batch, size = phi.shape
        row_bytes = 2 * size * program.width
        limit = self.link.peer_max_payload - request_header_size(Opcode.WRITE_STATE)
        for rows in _pages(batch, _rows_fitting(limit, row_bytes)):
            body = pack_samples(phi[rows], program.width) + pack_samples(pi[rows], program.width)
            self.call(Opcode.WRITE_STATE, (bank, batch, rows.start, rows.stop - rows.start), body)

    def _read_register(self, bank: int, register: Register, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """STATE: (ϕ, π) each (B, P); ECHO: each (2, B, P)."""
        program = self.banks[bank]
        pair = (2,) if register == Register.ECHO else ()
        row_bytes = 2 * int(np.prod(pair)) * program.size * program.width
        parts = []
        for rows in _pages(batch, _rows_fitting(self.info.capabilities.max_response_payload, row_bytes)):
            count = rows.stop - rows.start
            reply = self.call(Opcode.READ_STATE, (bank, register, rows.start, count), reply_bytes=count * row_bytes)
            halves = split_body(reply, count * row_bytes // 2, count * row_bytes // 2)
            parts.append([unpack_samples(half, (*pair, count, program.size), program.width) for half in halves])
        phi, pi = zip(*parts)
        return np.concatenate(phi, axis=-2), np.concatenate(pi, axis=-2)

    def _read_observables(self, bank: int, batch: int) -> np.ndarray:
        """The echo's accumulators (B, 6, P), zero for those the bank's kind does not have."""
        program = self.banks[bank]
        reported = accumulator_rows(program.kind)
        row_bytes = len(reported) * program.size * ACCUMULATOR_BYTES
        accumulators = np.zeros((batch, len(ACCUMULATORS), program.size), dtype=np.int64)
        for rows in _pages(batch, _rows_fitting(self.info.capabilities.max_response_payload, row_bytes)):
            count = rows.stop - rows.start
            reply = self.call(Opcode.READ_OBSERVABLES, (bank, rows.start, count), reply_bytes=count * row_bytes)
            accumulators[rows, reported] = unpack_samples(reply, (count, len(reported), program.size),
                                                          ACCUMULATOR_BYTES)
        return accumulators

    # ---- how much fits -----------------------------------------------------------------------------

    def _lane_steps(self, program: BankProgram, echo: bool) -> int:
        """Most lane-steps (batch rows × oscillators × time steps) one chunk may hold: the board's buffer,
        its request limit and its largest response all bound it."""
        chunk = Opcode.ECHO_CHUNK if echo else Opcode.FORWARD_CHUNK
        samples_in = 2 if echo else 1
        response_width = program.observable_width if echo else program.width
        request_room = self.link.peer_max_payload - request_header_size(chunk)
        return min(self.info.capabilities.buffer_samples // samples_in, request_room // (samples_in * program.width),
                   self.info.capabilities.max_response_payload // response_width)

    def _group_rows(self, program: BankProgram, echo: bool) -> int:
        """Batch rows per phase: as many as the board takes while one time step still fits a chunk."""
        rows = min(self.info.capabilities.max_batch, self._lane_steps(program, echo) // program.size)
        if rows == 0:
            raise ValueError(f"{self.uri}: one time step of {program.size} oscillators does not fit the board's "
                             f"chunk buffer ({self.info.capabilities.buffer_samples} samples)")
        return rows

    def _chunk_steps(self, program: BankProgram, batch: int, echo: bool) -> int:
        lanes = batch * program.size
        return min(self.info.capabilities.max_chunk_steps, self._lane_steps(program, echo) // lanes)

    # ---- requests ----------------------------------------------------------------------------------

    def call(self, opcode: Opcode, fields: tuple = (), body: bytes = b"", reply_bytes: int = 0) -> bytes:
        """One request of the current epoch; its response payload. Raises _Rebooted on STALE_EPOCH."""
        try:
            return self._exchange(opcode, encode_request(opcode, self.info.epoch, fields, body), reply_bytes)
        except DeviceError as error:
            if error.code == ErrorCode.STALE_EPOCH:
                raise _Rebooted(error.message) from error
            raise

    def _exchange(self, opcode: Opcode, payload: bytes, reply_bytes: int) -> bytes:
        wire_before, started = self._transport.bytes_total, time.perf_counter()
        traffic = self.traffic[opcode.name]
        traffic["calls"] += 1
        try:
            reply = self.link.call(opcode, payload, self.timeout + self._line_seconds(len(payload) + reply_bytes))
        finally:
            traffic["wire_bytes"] += self._transport.bytes_total - wire_before
            traffic["seconds"] += time.perf_counter() - started
        traffic["payload_bytes"] += len(payload) + len(reply)
        return reply

    def link_seconds(self) -> float:
        """Seconds spent in calls so far, all commands."""
        return sum(counts["seconds"] for counts in self.traffic.values())

    def _line_seconds(self, payload_bytes: int) -> float:
        """Time `payload_bytes` spend on a UART at the session's baud rate (8N1: 10 bits a byte)."""
        return 10 * payload_bytes / self.baudrate

    def _hello(self) -> BoardInfo:
        try:
            info = decode_hello(self._exchange(Opcode.HELLO, b"", reply_bytes=64))
        except DeviceError as error:
            if error.code == ErrorCode.BUSY:  # another host's session: say so, not "device error"
                raise ConnectionRefusedError(f"{self.uri}: the board is busy: {error.message}") from None
            raise
        if info.version != COMMAND_VERSION:
            raise RuntimeError(f"{self.uri}: the board speaks command protocol {info.version}, "
                               f"this host {COMMAND_VERSION}")
        return info

    def check_fits(self, banks: list[tuple[str, FormatConfig, int]], program: str = "the program") -> None:
        """Refuse, before anything is sent, a program the board's HELLO says it cannot run: banks given as
        (HRU kind, formats, oscillators); one line naming the device, what does not fit, and the fix."""
        problems = unfit(self.info.capabilities, banks)
        if problems:
            raise ValueError(f"{self.uri}: the {self.info.target} board ({self.info.firmware}) cannot run {program}: "
                             + "; ".join(problems))

    def _ensure_program(self) -> None:
        if self.banks and not self._program_loaded:
            self.check_fits([(bank.kind, bank.config, bank.size) for bank in self.banks])
            image = encode_program(self.banks)
            self._check_hash(self.call(Opcode.LOAD_PROGRAM, body=image, reply_bytes=_HASH_BYTES), image)
            self._program_loaded = True
            self._held.clear()

    def _write_params(self, index: int) -> None:
        program = self.banks[index]
        reply = self.call(Opcode.WRITE_PARAMS, (index,), pack_samples(program.codes, program.width), _HASH_BYTES)
        self._check_hash(reply, encode_program(self.banks))

    def _check_hash(self, reply: bytes, image: bytes) -> None:
        expected = program_hash(image)
        if reply != expected.to_bytes(_HASH_BYTES, "little"):
            raise RuntimeError(f"{self.uri}: the board reports program hash {reply.hex()}, "
                               f"the host's program has {expected:08x}")


def unfit(caps: Capabilities, banks: list[tuple[str, FormatConfig, int]]) -> list[str]:
    """What in a program (banks as (kind, formats, oscillators)) a board with `caps` cannot run, each with
    what to recompile with; empty if it fits."""
    problems = []
    words = sorted({config.word_bits for _, config, _ in banks})
    low, high = caps.word_bits
    if words and not (low <= words[0] and words[-1] <= high):
        problems.append(f"it takes words of {low}–{high} bits, the program has {'/'.join(map(str, words))}-bit "
                        f"words — recompile with --word-bits {min(max(words[0], low), high)}")
    tables = sorted({config.table_bits for _, config, _ in banks})
    low, high = caps.table_bits
    if tables and not (low <= tables[0] and tables[-1] <= high):
        problems.append(f"it takes function tables of 2^{low}–2^{high} segments, the program has "
                        f"2^{'/2^'.join(map(str, tables))} — recompile with a longer word (--word-bits)")
    kinds = sorted({kind for kind, _, _ in banks} - set(caps.hru_kinds))
    if kinds:
        problems.append(f"it runs {'/'.join(caps.hru_kinds)} banks, not {'/'.join(kinds)} — train a "
                        f"{caps.hru_kinds[0]} model (model.hru) and recompile")
    total = sum(size for _, _, size in banks)
    if total > caps.max_oscillators or len(banks) > caps.max_banks:
        problems.append(f"it holds {caps.max_oscillators} oscillators in ≤ {caps.max_banks} banks, the program has "
                        f"{total} in {len(banks)} — train a smaller model (model.state_size, model.num_blocks)")
    return problems


def _pages(total: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, total)) for start in range(0, total, size)]


def _rows_fitting(limit: int, row_bytes: int) -> int:
    if row_bytes > limit:
        raise ValueError(f"one batch row of {row_bytes} bytes does not fit a {limit}-byte payload")
    return limit // row_bytes


class DeviceCore(EmulatorCore):
    """The HamiltonianCore contract on bank `bank` of a board.

    The emulator's host half — quantisation of parameters, inputs and nudges, the choice of ε, the
    gradients from the integer accumulators — with the integer passes run by the board. So the float
    results are bit for bit those of an in-process EmulatorCore with the same `config` whenever the
    board computes what the emulator computes. `target` is a URI (a session of its own) or a Device
    shared by the cores of several banks.
    """

    def __init__(self, target: str | Device, *, bank: int = 0, config: FormatConfig | None = None,
                 timeout: float = DEFAULT_TIMEOUT, **device_options):
        super().__init__(config)
        self.device = target if isinstance(target, Device) else Device(target, timeout=timeout, **device_options)
        self.bank = bank

    def handshake(self) -> BoardInfo:
        return self.device.handshake()

    def close(self) -> None:
        """Close the session (shared with every core on the same Device)."""
        self.device.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def load(self, params) -> None:
        super().load(params)
        self.device.set_bank(self.bank, BankProgram(params.kind, self.config, self.param_codes))

    def _forward(self, forcing, phi, pi, input_sat) -> ForwardInt:
        codes, saturated = self.stream_codes(forcing)  # the board takes codes
        positions, phi, pi, counters = self.device.forward(self.bank, codes, phi, pi)
        return ForwardInt(self.stream_values(positions, forcing), phi, pi,
                          self._report(counters, input=input_sat + saturated))

    def _echo(self, forcing, phi, pi, nudges, input_sat, nudge_sat) -> EchoInt:
        check_echo_shapes(forcing, nudges)
        forcing, input_saturated = self.stream_codes(forcing)
        nudges, nudge_saturated = self.stream_codes(nudges, prescale=self.epsilon_used)
        accumulators, observable, end_phi, end_pi, counters = self.device.echo(self.bank, forcing, phi, pi, nudges)
        report = self._report(counters, input=input_sat + input_saturated, nudge=nudge_sat + nudge_saturated)
        return EchoInt(dict(zip(ACCUMULATORS, np.moveaxis(accumulators, 1, 0))), observable, end_phi, end_pi, report)
