"""The command executor's program (ef_commands.v's sequencer): every core command's checks, in the board
simulator's order, and its execution, as words of one block-RAM ROM.

The machine: a 32-bit accumulator A with one adder (zero and carry flags), indices X (the registers) and
Y (the bank's bus), a loop count C, the request reader (RD), the response writer (EM), bus writes (BW)
and reads into the registers (SV), the program hash's CRC unit (HASH) and a chunk's streams (RUN). Its
data memory is the board's register file (`registers`: accumulators, STATE, ECHO, counters), which also
holds the program's variables and the constants too wide for an immediate. A word is 24 bits: operation
(5), mode (3), immediate (16); `Program` assembles it, with labels, and `build` writes the whole program
for one image (ef_microcode.vh) — its sizes, formats and limits are the image's, so they are immediates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

OPERATIONS = ("LD", "ADD", "SUB", "CMP", "AND", "ST", "J", "JF", "CALL", "RET", "FAIL", "JOP", "RD", "MOV", "GET",
              "EM", "BW", "SV", "HASH", "RUN", "LOOP", "DONE", "FSET", "XY", "MUL", "IXY", "CHK")
CODE = {name: index for index, name in enumerate(OPERATIONS)}
CONDITIONS = {"always": 0, "eq": 1, "ne": 2, "lt": 3, "ge": 4, "le": 5, "gt": 6}   # after CMP: A vs the operand
FLAG_CLEAR = 7                                                                         # FAIL's: a board flag is clear
CARRY, NO_CARRY = "lt", "ge"                                                           # after ADD
MOVES = ("X", "Y", "C", "RP", "RL", "P", "K", "FF", "FQ", "FB", "OA", "OB")             # MOV's destinations
FLAGS = {"LOADED": 0, "STATE_VALID": 1, "ECHO_VALID": 2, "FORWARD": 3, "ECHO": 4, "E": 5}   # E: an echo's command
PC_BITS = 9                                                                             # 512 words: 3 block RAMs
IMMEDIATE = 1 << 16

# docs/protocol.md's error codes the commands refuse with (runtime.errors.ErrorCode)
UNKNOWN_OPCODE, BAD_PAYLOAD, RESPONSE_TOO_LARGE = 0x0001, 0x0002, 0x0003
NO_PROGRAM, BAD_PROGRAM, BAD_BANK, NO_STATE, NO_PHASE, OUT_OF_ORDER, OVER_CAPACITY = (
    0x0101, 0x0102, 0x0103, 0x0104, 0x0105, 0x0106, 0x0107)
# FAIL and CHK name a code by its place here (4 bits)
ERROR_CODES = (UNKNOWN_OPCODE, BAD_PAYLOAD, RESPONSE_TOO_LARGE, NO_PROGRAM, BAD_PROGRAM, BAD_BANK, NO_STATE, NO_PHASE,
               OUT_OF_ORDER, OVER_CAPACITY)
SHORT = 1 << 10                                                     # CHK's immediates


class MicrocodeError(ValueError):
    """The program does not fit the machine (a ROM, an immediate or the registers too small)."""


def _factor(factor: int) -> int:
    if not 0 <= factor < 256:
        raise MicrocodeError(f"MUL's factor {factor} is not a byte")
    return factor


@dataclass
class Program:
    """An assembler: words in order, labels resolved at the end. The register file's `free` words hold
    variables (`variable`) and wide constants (`constant`)."""

    free: list
    words: list = field(default_factory=list)
    labels: dict = field(default_factory=dict)
    variables: dict = field(default_factory=dict)
    constants: dict = field(default_factory=dict)

    def _word(self, operation: str, mode: int = 0, immediate: int | str = 0) -> None:
        self.words.append((CODE[operation], mode, immediate))

    def label(self, name: str) -> None:
        if name in self.labels:
            raise MicrocodeError(f"label {name} twice")
        self.labels[name] = len(self.words)

    def _register(self) -> int:
        taken = len(self.variables) + len(self.constants)
        if taken >= len(self.free):
            raise MicrocodeError(f"the registers have no word left for the program ({len(self.free)})")
        return self.free[taken]

    def variable(self, name: str) -> int:
        if name not in self.variables:
            self.variables[name] = self._register()
        return self.variables[name]

    def constant(self, value: int) -> int:
        if value not in self.constants:
            self.constants[value] = self._register()
        return self.constants[value]

    # ---- the adder: an operand is an immediate (int, < 2^16 — wider ones become constants) or a register
    # ("name": a variable; ("at", address); (address, "X") indexed, (address, "X+") post-incremented) ----
    def _operand(self, value) -> tuple[int, int]:
        if value == "LEN":                                       # the request's payload length
            return 4, 0
        if value == "SIZE":                                      # the loaded program's P
            return 6, 0
        if isinstance(value, int):
            if 0 <= value < IMMEDIATE:
                return 0, value
            if not 0 <= value < 1 << 32:
                raise MicrocodeError(f"operand {value} is not a u32")
            return 1, self.constant(value)
        return self._address(value, reads=True)

    def _address(self, where, reads: bool = False) -> tuple[int, int]:
        """(mode, address) of a register operand: mode bit 0 reads the register, bit 1 adds X, bit 2 X++."""
        mode = 1 if reads else 0
        if isinstance(where, str):
            return mode, self.variable(where)
        address, index = where
        return mode | {"": 0, "X": 2, "X+": 6}[index], address

    def alu(self, operation: str, operand) -> None:
        mode, immediate = self._operand(operand)
        self._word(operation, mode, immediate)

    def ld(self, operand):
        self.alu("LD", operand)

    def add(self, operand):
        self.alu("ADD", operand)

    def sub(self, operand):
        self.alu("SUB", operand)

    def cmp(self, operand):
        self.alu("CMP", operand)

    def and_(self, operand):
        self.alu("AND", operand)

    def st(self, where) -> None:
        mode, address = self._address(where)
        self._word("ST", mode, address)

    def size_times(self, factor: int) -> None:
        """A ← P · factor."""
        self._word("MUL", 6, _factor(factor) << 8)

    def times(self, factor: int) -> None:
        """A ← A · factor (a small constant), by additions: the adder is the machine's only arithmetic."""
        if factor == 0:
            self.ld(0)
        elif factor > 1:
            self.st("times")
            self._word("MUL", 1, _factor(factor) << 8 | self.variable("times"))

    # ---- control ----
    def j(self, label: str, condition: str = "always") -> None:
        self._word("J", CONDITIONS[condition], label)

    def jf(self, flag: str, is_set: bool, label: str) -> None:
        """Jump when the board flag `flag` is set (or clear)."""
        self._word("JF", int(is_set), (1 << (9 + FLAGS[flag]), label))

    def call(self, label: str) -> None:
        self._word("CALL", 0, label)

    def ret(self) -> None:
        self._word("RET")

    def fail(self, code: int, condition: str = "always") -> None:
        """Refuse with `code` if the last compare's `condition` holds; a CMP just before fuses into CHK."""
        index = ERROR_CODES.index(code)
        if condition != "always" and self.words and self.words[-1][0] == CODE["CMP"] \
                and len(self.words) not in self.labels.values():
            _, mode, immediate = self.words.pop()
            if mode == 4:                                          # LEN
                kind, operand = 2, 0
            elif mode == 0 and immediate < SHORT:
                kind, operand = 0, immediate
            else:
                kind, operand = 1, immediate if mode == 1 else self.constant(immediate)
            self._word("CHK", CONDITIONS[condition], index << 12 | kind << 10 | operand)
        else:
            self._word("FAIL", CONDITIONS[condition], index)

    def fail_unless(self, flag: str, code: int) -> None:
        """Refuse with `code` unless the board flag `flag` is set."""
        self._word("FAIL", FLAG_CLEAR, 1 << (9 + FLAGS[flag]) | ERROR_CODES.index(code))

    def loop(self, label: str) -> None:
        """C ← C − 1, and back to `label` unless it was the last (C counts ≥ 1 passes)."""
        self._word("LOOP", 0, label)

    def done(self) -> None:
        self._word("DONE")

    def fset(self, **flags: bool) -> None:
        mask = sum(1 << FLAGS[name] for name in flags)
        value = sum(1 << FLAGS[name] for name, on in flags.items() if on)
        self._word("FSET", 0, mask << 8 | value)

    # ---- data ----
    def rd(self, count: int, signed: bool = False, at: int | None = None) -> None:
        """A ← `count` request bytes (little-endian), from payload offset `at` (else where the last ended)."""
        self._word("RD", int(at is not None), (at or 0) << 4 | int(signed) << 3 | count)

    def mov(self, destination: str) -> None:
        self._word("MOV", 0, MOVES.index(destination))

    def get_hash(self) -> None:
        """A ← the program hash (the CRC unit's register, inverted)."""
        self._word("GET")

    def em(self, count: int, where=None) -> None:
        """`count` bytes of A (where None) or of a register to the response."""
        mode, address = (0, 0) if where is None else self._address(where, reads=True)
        self._word("EM", mode, count << 8 | address)

    def bw(self, base: int, index: str = "") -> None:
        """bank[base | Y] ← A (index "Y": add Y, "Y+": then Y++)."""
        self._word("BW", {"": 0, "Y": 2, "Y+": 6}[index], base)

    def sv(self, base: int, register, x_step: bool = False, y_step: bool = False) -> None:
        """registers[register] ← bank[base | Y] (base a multiple of 2^(address bits − 8))."""
        mode, address = self._address(register)
        self._word("SV", (mode & 2) | int(x_step) | int(y_step) << 2, (base, address))

    def hash_init(self) -> None:
        self._word("HASH", 2)

    def hash(self, byte: int | None = None) -> None:
        self._word("HASH", int(byte is not None), byte or 0)

    def run(self) -> None:
        self._word("RUN")

    def loop_over_p(self, x: int = 0, y: int = 0) -> None:
        """X ← x, Y ← y, C ← P: a loop over the program's oscillators."""
        self._word("IXY", 0, y << 8 | x)

    def xy(self, x: int = 0, y: int = 0) -> None:
        self._word("XY", 0, (y & 0xFF) << 8 | (x & 0xFF))

    def jop(self, label: str) -> None:
        self._word("JOP", 0, label)

    def assemble(self, bank_shift: int) -> list[int]:
        """The 24-bit words."""
        if len(self.words) > 1 << PC_BITS:
            raise MicrocodeError(f"the program takes {len(self.words)} words, the ROM holds {1 << PC_BITS}")

        def resolve(immediate):
            if isinstance(immediate, str):
                return self.labels[immediate]
            return immediate

        out = []
        for operation, mode, immediate in self.words:
            if operation == CODE["JF"]:
                immediate = immediate[0] | resolve(immediate[1])
            elif operation == CODE["SV"]:
                base, address = immediate
                if base % (1 << bank_shift) or address >= 256:
                    raise MicrocodeError(f"SV's bank base {base} or register {address} cannot be encoded")
                immediate = (base >> bank_shift) << 8 | address
            immediate = resolve(immediate)
            if not 0 <= immediate < IMMEDIATE:
                raise MicrocodeError(f"immediate {immediate} of {OPERATIONS[operation]}")
            out.append(operation << 19 | mode << 16 | immediate)
        return out


@dataclass(frozen=True)
class Image:
    """What the program needs of one board image (design.core_constants)."""

    word_bits: int
    limit: int                      # a sample's bound: |code| ≤ limit
    kind: int                       # KIND_CODES: 1 nonlinear (its w must not be 0)
    pmax: int                       # oscillators the bank holds (a power of two)
    acc_rows: tuple                 # the bank's row of each reported accumulator
    address_bits: int               # the bank's bus
    format_bytes: bytes             # kind, then the formats: LOAD_PROGRAM's payload bytes 6..14
    max_oscillators: int
    max_batch: int
    max_chunk_steps: int
    buffer_samples: int
    max_response: int
    bases: dict                     # control, params, phi, pi, acc
    control: dict                   # control register name → address

    @property
    def wb(self) -> int:
        return (self.word_bits + 7) // 8

    @property
    def wob(self) -> int:
        return (self.word_bits + 8) // 8


# Where the program finds the board's registers (64-bit words; ϕ/π sign-extended): an echo's accumulators
# at p·8 + row, STATE ϕ at 8·PMAX + p and π at 9·PMAX + p, ECHO ϕ at 10·PMAX + σ·PMAX + p and π at
# 12·PMAX + σ·PMAX + p, the phase's four saturation counters at 14·PMAX + k; the program's words after them
# and in the accumulator rows the bank does not report.
VARIABLE_WORDS = 24


def layout(pmax: int, acc_rows: int) -> dict:
    scratch = 14 * pmax + 4
    words = 1 << (scratch + VARIABLE_WORDS - 1).bit_length()
    if words > 256:
        raise MicrocodeError(f"{pmax} oscillators a bank: the executor's registers would need {words} words, it "
                             "addresses 256 — compile a model of at most 16 oscillators a bank for a board image")
    free = list(range(scratch, words)) + [p * 8 + row for row in range(acc_rows, 8) for p in range(pmax)]
    return {"state": 8 * pmax, "echo": 10 * pmax, "counters": 14 * pmax, "free": free, "words": words}


def program(image: Image) -> Program:
    """Every core command, in docs/protocol.md §10's rules and the board simulator's order."""
    if image.word_bits > 24:   # a sample's range check adds ±limit in the 32-bit accumulator
        raise MicrocodeError(f"{image.word_bits}-bit words: the executor checks samples of at most 24 bits — "
                             "compile with --word-bits 24 or fewer for a board image")
    where = layout(image.pmax, len(image.acc_rows))
    p = Program(where["free"])
    wb, wob, pmax = image.wb, image.wob, image.pmax
    state, echo, counters = where["state"], where["echo"], where["counters"]
    control = {name: image.bases["control"] + address for name, address in image.control.items()}

    def length_is(header: int, samples: str | None = None) -> None:
        """BAD_PAYLOAD unless the payload is `header` bytes and the samples' (a variable, or none)."""
        if samples is None:
            p.ld(header)
            p.cmp("LEN")
        else:
            p.ld(samples)
            p.times(wb)
            p.add(header)
            p.cmp("LEN")
        p.fail(BAD_PAYLOAD, "ne")

    def check(source, operand, condition: str, code: int) -> None:
        """Refuse with `code` if `source` compares to `operand` as `condition` says; `source`: (bytes, offset)
        of the request, a register or "LEN"/"SIZE", or None (A as it is)."""
        if isinstance(source, tuple):
            p.rd(*source[:1], at=source[1])
        elif source is not None:
            p.ld(source)
        p.cmp(operand)
        p.fail(code, condition)

    def between_one_and(limit: int, code: int) -> None:
        """Refuse with `code` unless 1 ≤ A ≤ limit."""
        check(None, 0, "eq", code)
        check(None, limit, "gt", code)

    def response_is() -> None:
        """A is the response's size: kept, and RESPONSE_TOO_LARGE beyond HELLO's largest."""
        p.st("response")
        check(None, image.max_response, "gt", RESPONSE_TOO_LARGE)

    def bank_zero() -> None:
        p.rd(1, at=4)
        p.cmp(0)
        p.fail(BAD_BANK, "ne")

    def range_in(count_at: int, first_at: int, limit) -> None:
        """BAD_PAYLOAD unless count ≠ 0 and first + count ≤ limit (u16 fields)."""
        p.rd(2, at=count_at)
        p.cmp(0)
        p.fail(BAD_PAYLOAD, "eq")
        p.st("count")
        p.rd(2, at=first_at)
        p.add("count")
        p.cmp(limit)
        p.fail(BAD_PAYLOAD, "gt")

    def in_bounds(code: int) -> None:
        """`code` unless −limit ≤ A ≤ limit; leaves A + limit."""
        p.add(image.limit)
        p.cmp(2 * image.limit)
        p.fail(code, "gt")

    def echo_doubles(label: str) -> None:
        """A ← 2A in the echo's commands (E)."""
        p.jf("E", False, label)
        p.st("twice")
        p.add("twice")
        p.label(label)

    # ---- dispatch: JOP adds the command's number (ef_commands' `op`) ----
    p.jop("table")
    p.label("table")
    p.fail(UNKNOWN_OPCODE)
    for name in ("load_program", "write_params", "write_state", "read_state", "begin", "chunk", "end", "begin",
                 "chunk", "end", "read_observables"):
        p.j(name)

    # ---- LOAD_PROGRAM: format 1, one bank, this image's kind and formats, P within HELLO's ----
    p.label("load_program")
    p.rd(2, at=15)
    p.st("P")
    formats = [((count, offset), int.from_bytes(image.format_bytes[offset - 6:offset - 6 + count], "little"), "ne")
               for offset, count in ((7, 3), (10, 3), (13, 2))]          # payload bytes 7..14
    for source, operand, condition in [("LEN", 5, "le"), ((2, 4), 0x0101, "ne"), ("LEN", 16, "le"), ((1, 6), 1, "gt"),
                                       ("P", 0, "eq"), *formats]:
        check(source, operand, condition, BAD_PROGRAM)
    p.ld("P")
    p.times(5 * wb)
    p.add(17)
    check(None, "LEN", "ne", BAD_PROGRAM)
    check("P", image.max_oscillators, "gt", OVER_CAPACITY)
    check((1, 6), image.format_bytes[0], "ne", BAD_PROGRAM)
    p.ld(17)
    p.call("codes")
    p.fset(LOADED=True, FORWARD=False, ECHO=False, STATE_VALID=False, ECHO_VALID=False)
    p.done()

    # ---- WRITE_PARAMS: the loaded program's codes replaced ----
    p.label("write_params")
    p.fail_unless("LOADED", NO_PROGRAM)
    bank_zero()
    p.ld("SIZE")
    p.st("P")
    p.times(5)
    p.st("samples")
    length_is(5, "samples")
    p.ld(5)
    p.call("codes")
    p.fset(LOADED=True, FORWARD=False, ECHO=False)
    p.done()

    # codes (subroutine; A: the header's length, P: the program's size): (5, P) codes from the request, each
    # in range (a nonlinear bank's w ≠ 0), into the bank; the program hash, sent; P the program's
    p.label("codes")
    p.st("header")
    for rows_pass in ("range", "apply"):
        p.ld("header")
        p.mov("RP")
        p.ld(0)
        p.st("row")
        p.mov("Y")
        p.label(f"{rows_pass}_row")
        p.ld("P")
        p.mov("C")
        p.label(f"{rows_pass}_code")
        p.rd(wb, signed=True)
        if rows_pass == "range":
            in_bounds(BAD_PROGRAM)
            if image.kind == 1:
                p.cmp(image.limit)                               # the code was 0
                p.j("range_next", "ne")
                p.ld("row")
                p.cmp(2)                                         # w
                p.fail(BAD_PROGRAM, "eq")
                p.label("range_next")
        else:
            p.bw(image.bases["params"], "Y")                     # params | p·8 | row
            p.xy(y=8)
        p.loop(f"{rows_pass}_code")
        p.ld("row")
        p.add(1)
        p.st("row")
        if rows_pass == "apply":
            p.mov("Y")
        p.cmp(5)
        p.j(f"{rows_pass}_row", "lt")
    p.hash_init()                                                # the image header: format 1, one bank, …
    for byte in bytes([1, 1]) + image.format_bytes:
        p.hash(byte)
    p.ld("P")
    p.hash()
    p.hash(0)                                                    # P < 256
    p.ld("header")
    p.mov("RP")
    p.ld("LEN")
    p.sub("header")
    p.mov("C")
    p.label("hash_code")
    p.rd(1)
    p.hash()
    p.loop("hash_code")
    p.ld("P")
    p.mov("P")
    p.ld(4)
    p.mov("RL")
    p.get_hash()
    p.em(4)
    p.ret()

    # ---- WRITE_STATE: (2, P) samples into STATE ----
    p.label("write_state")
    p.fail_unless("LOADED", NO_PROGRAM)
    bank_zero()
    p.rd(2, at=5)
    p.st("batch")
    between_one_and(image.max_batch, OVER_CAPACITY)
    range_in(9, 7, "batch")
    p.ld("SIZE")
    p.st("twice")
    p.add("twice")
    p.st("samples")
    length_is(11, "samples")
    p.ld(11)
    p.mov("RP")
    p.ld("samples")
    p.mov("C")
    p.call("samples_in_range")
    p.ld(11)
    p.mov("RP")
    for register in (state, state + pmax):
        p.loop_over_p()
        p.label(f"ws_{register}")
        p.rd(wb, signed=True)
        p.st((register, "X+"))
        p.loop(f"ws_{register}")
    p.fset(STATE_VALID=True)
    p.done()

    # samples_in_range (subroutine): C samples from RP, each within ±limit, else BAD_PAYLOAD
    p.label("samples_in_range")
    p.rd(wb, signed=True)
    in_bounds(BAD_PAYLOAD)
    p.loop("samples_in_range")
    p.ret()

    # ---- READ_STATE: STATE (ϕ, π) or ECHO (ϕ σ0, ϕ σ1, π σ0, π σ1), P samples a row ----
    p.label("read_state")
    length_is(10)
    p.fail_unless("LOADED", NO_PROGRAM)
    bank_zero()
    p.rd(1, at=5)
    p.cmp(1)
    p.fail(BAD_PAYLOAD, "gt")
    p.st("register")
    p.j("rs_echo", "eq")
    p.fail_unless("STATE_VALID", NO_STATE)
    p.j("rs_range")
    p.label("rs_echo")
    p.fail_unless("ECHO_VALID", NO_STATE)
    p.label("rs_range")
    range_in(8, 6, image.max_batch)
    p.size_times(2 * wb)
    p.st("response")
    p.ld("register")
    p.cmp(0)
    p.ld("response")
    p.j("rs_size", "eq")
    p.add("response")
    p.label("rs_size")
    response_is()
    p.mov("RL")
    p.ld(2)
    p.st("rows")
    p.ld(state)
    p.st("base")
    p.ld("register")
    p.cmp(0)
    p.j("rs_row", "eq")
    p.ld(4)
    p.st("rows")
    p.ld(echo)
    p.st("base")
    p.label("rs_row")
    p.ld("base")
    p.mov("X")
    p.ld("SIZE")
    p.mov("C")
    p.label("rs_sample")
    p.em(wb, (0, "X+"))
    p.loop("rs_sample")
    p.ld("base")
    p.add(pmax)
    p.st("base")
    p.ld("rows")
    p.sub(1)
    p.st("rows")
    p.j("rs_row", "ne")
    p.done()

    # ---- BEGIN_FORWARD / BEGIN_ECHO: the lanes from STATE (or zero), an echo's accumulators 0 ----
    p.label("begin")
    length_is(12)
    p.fail_unless("LOADED", NO_PROGRAM)
    bank_zero()
    p.jf("E", False, "b_flags")
    p.rd(4, at=8)
    p.cmp(0)
    p.fail(BAD_PAYLOAD, "eq")                                   # an echo of no steps
    p.label("b_flags")
    p.rd(1, at=5)
    p.and_(0xFE)
    p.fail(BAD_PAYLOAD, "ne")                                   # undefined flags
    p.rd(2, at=6)
    between_one_and(image.max_batch, OVER_CAPACITY)
    p.rd(1, at=5)
    p.and_(1)
    p.j("b_ok", "ne")                                           # ZERO_STATE
    p.fail_unless("STATE_VALID", NO_STATE)
    p.label("b_ok")
    p.rd(4, at=8)                                               # L: the phase's length
    p.st("L")
    p.jf("E", True, "b_echo")
    p.ld(0)
    p.fset(FORWARD=True, ECHO=False)
    p.j("b_position")
    p.label("b_echo")
    p.fset(FORWARD=False, ECHO=True)
    p.label("b_position")
    p.st("position")                                            # forward from 0, the echo from L back
    p.rd(1, at=5)                                               # lanes & mask: 0 for ZERO_STATE
    p.and_(1)
    p.sub(1)
    p.st("mask")
    p.ld(0)
    for k in range(4):
        p.st((counters + k, ""))
    for lane_base, register in ((image.bases["phi"], state), (image.bases["pi"], state + pmax)):
        p.loop_over_p()
        tag = f"b_{register}"
        p.label(tag)
        p.ld((register, "X"))
        p.and_("mask")
        if register != state:                                   # both echoes start at (ϕ, −π)
            p.jf("E", False, f"{tag}_write")
            p.st("lane")
            p.ld(0)
            p.sub("lane")
        p.label(f"{tag}_write")
        p.xy(x=1)
        p.bw(lane_base, "Y+")
        p.jf("E", False, f"{tag}_next")
        p.bw(lane_base, "Y+")                                   # lane 2p + 1
        p.label(f"{tag}_next")
        p.loop(tag)
    p.jf("E", False, "b_done")
    p.loop_over_p()
    p.ld(0)
    p.label("b_accumulators")
    for _ in image.acc_rows:
        p.bw(image.bases["acc"], "Y+")                          # acc | p·8 | row
    p.xy(y=8 - len(image.acc_rows))
    p.loop("b_accumulators")
    p.label("b_done")
    p.done()

    # phase (subroutine): NO_PHASE unless the phase is the command's (E: the echo)
    p.label("phase")
    p.jf("E", True, "phase_echo")
    p.jf("FORWARD", True, "phase_ok")
    p.fail(NO_PHASE)
    p.label("phase_echo")
    p.jf("ECHO", True, "phase_ok")
    p.fail(NO_PHASE)
    p.label("phase_ok")
    p.ret()

    # ---- FORWARD_CHUNK / ECHO_CHUNK: K steps of (forcing[, nudges]) through the bank ----
    p.label("chunk")
    p.call("phase")
    p.rd(4, at=8)
    p.st("K")
    between_one_and(image.max_chunk_steps, OVER_CAPACITY)
    p.ld("SIZE")
    p.mov("C")
    p.ld(0)
    p.label("c_multiply")
    p.add("K")
    p.loop("c_multiply")
    p.st("KP")
    echo_doubles("c_samples")
    p.st("samples")
    p.cmp(image.buffer_samples)
    p.fail(OVER_CAPACITY, "gt")
    p.ld("KP")
    p.jf("E", True, "c_wob")
    p.times(wb)
    p.j("c_response")
    p.label("c_wob")
    p.times(wob)
    p.label("c_response")
    response_is()
    p.rd(4, at=4)                                               # the chunk's first step
    p.st("start")
    p.jf("E", True, "c_echo_order")
    p.cmp("position")                                           # forward: the next chunk, within L
    p.fail(OUT_OF_ORDER, "ne")
    p.add("K")
    p.fail(OUT_OF_ORDER, CARRY)
    p.cmp("L")
    p.fail(OUT_OF_ORDER, "gt")
    p.j("c_order")
    p.label("c_echo_order")
    p.add("K")                                                  # the echo: the chunk ending where the last began
    p.fail(OUT_OF_ORDER, CARRY)
    p.cmp("position")
    p.fail(OUT_OF_ORDER, "ne")
    p.ld("start")
    p.label("c_order")
    p.st("next")
    length_is(12, "samples")
    p.ld(12)
    p.mov("RP")
    p.ld("samples")
    p.mov("C")
    p.call("samples_in_range")
    p.ld(0)                                                     # the bank's settings
    p.jf("E", False, "c_mode")
    p.ld(1)
    p.label("c_mode")
    p.bw(control["MODE"])
    p.ld(0)
    p.bw(control["FLIP"])                                       # the lanes hold −π already
    p.ld("SIZE")
    p.bw(control["OSCILLATORS"])
    echo_doubles("c_lanes")
    p.bw(control["LANES"])
    p.ld("K")
    p.bw(control["STEPS"])
    p.mov("K")
    # the feeder: q's last row ends the request; f's starts at 12 (forward) or K·P·WB before q's (echo)
    p.size_times(wb)
    p.st("row")
    p.ld("LEN")
    p.sub("row")
    p.mov("FQ")
    p.jf("E", True, "c_f_echo")
    p.ld(12)
    p.j("c_f")
    p.label("c_f_echo")
    p.st("q")
    p.ld("KP")
    p.times(wb)
    p.st("row")
    p.ld("q")
    p.sub("row")
    p.label("c_f")
    p.mov("FF")
    p.size_times(2 * wb)
    p.st("row")
    p.ld(0)
    p.sub("row")
    p.mov("FB")
    # the collector: from 0 (forward) or the response's last row (echo), back two rows after each
    p.size_times(wob)
    p.st("row")
    p.ld(0)
    p.jf("E", False, "c_out")
    p.ld("response")
    p.sub("row")
    p.label("c_out")
    p.mov("OA")
    p.size_times(2 * wob)
    p.st("row")
    p.ld(0)
    p.sub("row")
    p.mov("OB")
    p.run()
    # the chunk's saturation counters added to the phase's (u32, saturating)
    p.ld(0)
    p.mov("X")
    p.ld(control["COUNTER_STATE"])
    p.mov("Y")
    p.ld(4)
    p.mov("C")
    p.label("c_counter")
    p.sv(image.bases["control"], "counter", y_step=True)
    p.ld((counters, "X"))
    p.add("counter")
    p.j("c_counter_sum", NO_CARRY)
    p.ld(0)
    p.sub(1)
    p.label("c_counter_sum")
    p.st((counters, "X+"))
    p.loop("c_counter")
    p.ld("response")
    p.mov("RL")
    p.ld("next")
    p.st("position")
    p.done()

    # ---- END_FORWARD / END_ECHO: the lanes (and accumulators) into the registers, the counters sent ----
    p.label("end")
    length_is(4)
    p.call("phase")
    p.ld("position")                                            # forward at L, the echo back at 0
    p.jf("E", True, "e_echo_end")
    p.cmp("L")
    p.j("e_order")
    p.label("e_echo_end")
    p.cmp(0)
    p.label("e_order")
    p.fail(OUT_OF_ORDER, "ne")
    p.jf("E", True, "e_echo")
    for lane_base, register in ((image.bases["phi"], state), (image.bases["pi"], state + pmax)):
        p.loop_over_p()
        p.label(f"e_{register}")
        p.sv(lane_base, (register, "X"), x_step=True, y_step=True)
        p.loop(f"e_{register}")
    p.fset(STATE_VALID=True)
    p.j("e_counters")
    p.label("e_echo")                                           # lane 2p + σ → σ·PMAX + p
    for lane_base, register in ((image.bases["phi"], echo), (image.bases["pi"], echo + 2 * pmax)):
        p.loop_over_p()
        p.label(f"e_{register}")
        p.sv(lane_base, (register, "X"), y_step=True)
        p.sv(lane_base, (register + pmax, "X"), x_step=True, y_step=True)
        p.loop(f"e_{register}")
    p.ld(0)                                                     # accumulators: bank acc | p·8 | row → p·8 + k
    p.mov("X")
    p.mov("Y")
    p.ld("SIZE")
    p.mov("C")
    p.label("e_accumulators")
    for k, row in enumerate(image.acc_rows):
        p.xy(y=row)
        p.sv(image.bases["acc"], (k, "X"))
        p.xy(y=-row)
    p.xy(x=8, y=8)
    p.loop("e_accumulators")
    p.fset(ECHO_VALID=True)
    p.label("e_counters")
    p.fset(FORWARD=False, ECHO=False)
    p.ld(16)
    p.mov("RL")
    for k in range(4):
        p.em(4, (counters + k, ""))
    p.done()

    # ---- READ_OBSERVABLES: the echo's accumulators, (A, P) u64 ----
    p.label("read_observables")
    length_is(9)
    p.fail_unless("LOADED", NO_PROGRAM)
    bank_zero()
    p.fail_unless("ECHO_VALID", NO_STATE)
    range_in(7, 5, image.max_batch)
    p.ld("SIZE")
    p.times(8 * len(image.acc_rows))
    response_is()
    p.mov("RL")
    p.ld(0)
    p.st("row")
    p.label("ro_row")
    p.ld("row")
    p.mov("X")
    p.ld("SIZE")
    p.mov("C")
    p.label("ro_value")
    p.em(8, (0, "X"))
    p.xy(x=8)
    p.loop("ro_value")
    p.ld("row")
    p.add(1)
    p.st("row")
    p.cmp(len(image.acc_rows))
    p.j("ro_row", "lt")
    p.done()
    return p


def include(image: Image) -> str:
    """ef_microcode.vh: the machine's sizes, operation codes, the ROM and the registers' constants."""
    p = program(image)
    where = layout(image.pmax, len(image.acc_rows))
    words = p.assemble(image.address_bits - 8)
    lines = ["// Generated by echoforge.targets.fpga.gateware.microcode: the command executor's program.",
             f"localparam integer MC_PCW = {PC_BITS};",
             f"localparam integer MC_RF_WORDS = {where['words']};",
             f"localparam integer MC_RF_AW = {(where['words'] - 1).bit_length()};"]
    lines += [f"localparam [4:0] MC_{name} = 5'd{code};" for name, code in CODE.items()]
    lines += [f"localparam [3:0] MC_TO_{name} = 4'd{index};" for index, name in enumerate(MOVES)]
    lines += ["function [15:0] mc_error;", "    input [3:0] index;", "    case (index)"]
    lines += [f"        4'd{index}: mc_error = 16'h{code:04X};" for index, code in enumerate(ERROR_CODES)]
    lines += ["        default: mc_error = 16'h0001;", "    endcase", "endfunction"]
    constants = " ".join(f"registers[{address}] = 64'd{value};" for value, address in p.constants.items())
    lines += [f"`define MC_CONSTANTS {constants}", "function [23:0] microcode;", f"    input [{PC_BITS - 1}:0] at;",
              "    case (at)"]
    lines += [f"        {PC_BITS}'d{at}: microcode = 24'h{word:06X};" for at, word in enumerate(words)]
    lines += ["        default: microcode = 24'h000000;", "    endcase", "endfunction", ""]
    return "\n".join(lines)
