"""The command executor's program (echoforge/targets/fpga/gateware/microcode.py): that it fits the
machine of every image the target builds, keeps off the board's registers, and that the assembler
refuses what the machine cannot encode. What the program does is tested on the simulated gateware
(tests/test_gateware.py: every core command against the Python board simulator, RHEL bit for bit)."""

import json

import pytest

from echoforge.targets.emulator import FormatConfig
from echoforge.targets.fpga.gateware import microcode
from echoforge.targets.fpga.gateware.design import GatewareConfig, core_image, write_sources

IMAGES = [(word, kind, oscillators) for word in (16, 24) for kind in ("linear", "nonlinear") for oscillators in (4, 16)]


def image_of(tmp_path, word: int, kind: str, oscillators: int):
    """The program's view of the image `echoforge build` writes (its sources: the bank's register map)."""
    config = GatewareConfig(formats=FormatConfig(word), kind=kind, oscillators=oscillators)
    write_sources(config, tmp_path)
    return core_image(config, json.loads((tmp_path / "regmap.json").read_text()))


@pytest.mark.parametrize("word, kind, oscillators", IMAGES)
def test_the_program_fits_its_rom_and_keeps_off_the_boards_registers(tmp_path, word, kind, oscillators):
    image = image_of(tmp_path, word, kind, oscillators)
    program = microcode.program(image)
    words = program.assemble(image.address_bits - 8)
    assert 400 < len(words) <= 1 << microcode.PC_BITS and all(0 <= w < 1 << 24 for w in words)
    where = microcode.layout(image.pmax, len(image.acc_rows))
    pmax = image.pmax
    board = {p * 8 + row for p in range(pmax) for row in range(len(image.acc_rows))}       # accumulators
    board |= set(range(8 * pmax, 14 * pmax + 4))                                           # STATE, ECHO, counters
    used = set(program.variables.values()) | set(program.constants.values())
    assert used and not used & board and max(used) < where["words"] <= 256
    assert len(used) == len(program.variables) + len(program.constants)                   # one word each
    # the constants are the values too wide for an immediate, each once
    assert all(value >= microcode.SHORT for value in program.constants)
    text = microcode.include(image)
    assert text.count("microcode = 24'h") == len(words) + 1                                # and the default


def test_a_compare_and_its_refusal_fuse_unless_a_jump_lands_between():
    program = microcode.Program(free=list(range(8)))
    program.cmp(5)
    program.fail(microcode.BAD_PAYLOAD, "gt")
    program.cmp(70000)                                      # too wide for an immediate: a constant register
    program.fail(microcode.OVER_CAPACITY, "eq")
    program.cmp(4096)                                       # an immediate, but wider than CHK's 10 bits: too
    program.fail(microcode.RESPONSE_TOO_LARGE, "gt")
    program.cmp(3)
    program.label("between")
    program.fail(microcode.NO_STATE, "ne")
    program.j("between")
    ops = [microcode.OPERATIONS[operation] for operation, _, _ in program.words]
    assert ops == ["CHK", "CHK", "CHK", "CMP", "FAIL", "J"]
    words = program.assemble(2)
    index = microcode.ERROR_CODES.index
    assert words[0] == microcode.CODE["CHK"] << 19 | 6 << 16 | index(microcode.BAD_PAYLOAD) << 12 | 5
    assert words[1] & 0xFFFF == index(microcode.OVER_CAPACITY) << 12 | 1 << 10 | program.constants[70000]
    assert words[2] & 0xFFFF == index(microcode.RESPONSE_TOO_LARGE) << 12 | 1 << 10 | program.constants[4096]
    assert words[5] & 0x1FF == program.labels["between"] == 4


def test_words_wider_than_the_range_check_are_refused_in_one_line(tmp_path):
    with pytest.raises(microcode.MicrocodeError) as refused:
        image_of(tmp_path, 32, "linear", 16)
    assert str(refused.value) == ("32-bit words: the executor checks samples of at most 24 bits — compile with "
                                  "--word-bits 24 or fewer for a board image")


@pytest.mark.parametrize("build, message", [
    (lambda p: [p.done() for _ in range(513)], "the program takes 513 words, the ROM holds 512"),
    (lambda p: [p.ld(f"v{k}") for k in range(3)], "the registers have no word left for the program (2)"),
    (lambda p: p.sv(6, "v"), "SV's bank base 6 or register 0 cannot be encoded"),
    (lambda p: p.times(300), "MUL's factor 300 is not a byte"),
    (lambda p: p.ld(-1), "operand -1 is not a u32"),
])
def test_the_assembler_refuses_what_the_machine_cannot_encode(build, message):
    program = microcode.Program(free=[0, 1])
    with pytest.raises(microcode.MicrocodeError) as refused:
        build(program)
        program.assemble(2)
    assert str(refused.value) == message
