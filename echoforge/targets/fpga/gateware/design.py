"""The board image's sources: plain Verilog files (rtl/), generated includes and, with a core, the
generated oscillator bank (echoforge.targets.fpga.rtl).

ef_rom.vh holds every constant response: the HELLO payload — encoded by the host's own
`commands.encode_hello` from the `Capabilities` this image declares, so the host decodes exactly what
the RTL sends, the boot epoch patched in at run time — the SYNC payload (the largest request) and the
error responses (u16 code, then the message). ef_core.vh gives ef_commands' logic the bank's sizes;
ef_microcode.vh its program (microcode.py), which holds the formats LOAD_PROGRAM must match, the
register map, the accumulator rows and the limits HELLO declares.
The image's buffer sizes are Verilog parameters set from `GatewareConfig`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from echoforge import __version__
from echoforge.targets.emulator.fixed import FormatConfig

from . import microcode

RTL = Path(__file__).parent / "rtl"
SOURCES = ("ef_ram.v", "ef_crc32.v", "ef_uart_rx.v", "ef_uart_tx.v", "ef_frame_rx.v", "ef_frame_tx.v", "ef_engine.v", "ef_board.v")
CORE_SOURCES = ("ef_commands.v",)
INCLUDES = ("ef_crc32.vh", "ef_above.vh")
SIM_TOP = "ef_sim_top.v"
SIM_MAIN = "sim_main.cpp"
FIRMWARE = f"echoforge-gateware {__version__}"
HEADER_AND_CRC = 15            # bytes of a frame around its payload
CONTROL_REGION = 16            # transmit-buffer bytes kept for ACK and NACK frames

# Error responses the image sends: name → message (the code is errors.ErrorCode[name]). The RTL knows
# no numbers to quote; the message says which rule (docs/protocol.md §10) the request broke. Short: the
# ROM (HELLO, SYNC and these) must stay within one 512-byte block RAM (test_gateware).
ERROR_MESSAGES = {
    "UNKNOWN_OPCODE": "this board has no such command",
    "BAD_PAYLOAD": "a length, field or sample the command does not take",
    "RESPONSE_TOO_LARGE": "the answer exceeds the largest response (HELLO)",
    "INTERNAL": "the board image failed",
    "STALE_EPOCH": "another boot epoch: the board rebooted, send HELLO",
    "NO_PROGRAM": "no program loaded",
    "BAD_PROGRAM": "a kind or formats other than this image's",
    "BAD_BANK": "this board image holds one bank",
    "NO_STATE": "the register is empty",
    "NO_PHASE": "no phase of this kind is active",
    "OUT_OF_ORDER": "not the next chunk, or the phase is incomplete",
    "OVER_CAPACITY": "beyond the limits HELLO declares",
}
CORE_OSCILLATORS = 16          # oscillators an image's bank holds (its lanes: twice as many)


# What ef_commands reads on the bank's bus (its only reader): a chunk's saturation counters, the lanes at a
# phase's end, the accumulators at END_ECHO. The bank's read-back multiplexer (64 bits a source) keeps only these.
EXECUTOR_READS = frozenset({"COUNTER_STATE", "COUNTER_FORCE", "COUNTER_PREACT", "COUNTER_ACCUMULATOR", "phi", "pi", "acc"})


@dataclass(frozen=True)
class GatewareConfig:
    """Sizes of one board image. Buffers are powers of two (block RAM); the limits the image
    declares follow from them."""

    clks_per_bit: int = 4          # clock / baud: 12 MHz / 3 Mbaud on an iCEBreaker
    request_bits: int = 12         # request buffer 2^request_bits bytes
    response_bits: int = 12        # response buffer 2^response_bits bytes (the cache and ACK/NACK)
    firmware: str = field(default=FIRMWARE)
    formats: FormatConfig | None = None   # the bank's formats; None: an image without a core
    kind: str = "linear"
    oscillators: int = CORE_OSCILLATORS
    max_chunk_steps: int = 4096
    fold: int = 3                  # the bank's pipeline stages per register stage (rtl.generate_core)

    def __post_init__(self):
        if self.clks_per_bit < 4:
            raise ValueError(f"clks_per_bit = {self.clks_per_bit}: the UART needs at least 4 clocks a bit")
        for name in ("request_bits", "response_bits"):
            if not 6 <= getattr(self, name) <= 16:
                raise ValueError(f"{name} = {getattr(self, name)}: buffers of 2^6 to 2^16 bytes")

    @property
    def max_request_payload(self) -> int:
        """What SYNC announces: the request buffer holds the payload and the header (the CRC is not kept)."""
        return (1 << self.request_bits) - HEADER_AND_CRC

    @property
    def max_response_payload(self) -> int:
        return (1 << self.response_bits) - CONTROL_REGION - HEADER_AND_CRC

    @property
    def sample_bytes(self) -> int:
        return (self.formats.word_bits + 7) // 8

    def capabilities(self):
        """What HELLO declares: one bank of the image's kind and formats, batch 1, chunks as large as the
        request buffer holds. Without a core the board runs no program: no kinds, no oscillators."""
        from echoforge.runtime.commands import Capabilities

        if self.formats is None:
            return Capabilities(max_oscillators=0, max_banks=0, word_bits=(0, 0), table_bits=(0, 0), hru_kinds=(),
                                max_batch=0, max_chunk_steps=0, buffer_samples=0,
                                max_response_payload=self.max_response_payload)
        word, table = self.formats.word_bits, self.formats.table_bits
        return Capabilities(max_oscillators=self.oscillators, max_banks=1, word_bits=(word, word),
                            table_bits=(table, table), hru_kinds=(self.kind,), max_batch=1,
                            max_chunk_steps=self.max_chunk_steps,
                            buffer_samples=(self.max_request_payload - 12) // self.sample_bytes,
                            max_response_payload=self.max_response_payload)

    def defines(self) -> list[str]:
        """Verilog macros: EF_CORE when the image has a core."""
        return [] if self.formats is None else ["EF_CORE"]

    def parameters(self) -> dict[str, int]:
        """The top module's Verilog parameters."""
        return {"CLKS_PER_BIT": self.clks_per_bit, "RX_AW": self.request_bits,
                "MAX_REQ": self.max_request_payload, "TX_AW": self.response_bits}


def rom_entries(config: GatewareConfig) -> tuple[dict[str, tuple[int, int]], bytes]:
    """(name → (offset, length), ROM bytes) of every constant response payload."""
    from echoforge.runtime.commands import COMMAND_VERSION, BoardInfo, encode_hello
    from echoforge.runtime.errors import ErrorCode

    payloads = {
        "HELLO": encode_hello(BoardInfo(COMMAND_VERSION, "fpga", config.firmware, 0, config.capabilities())),
        "SYNC": config.max_request_payload.to_bytes(4, "little"),
        "EMPTY": b"",
    }
    for name, message in ERROR_MESSAGES.items():
        payloads[name] = ErrorCode[name].to_bytes(2, "little") + message.encode("utf-8")
    table, rom = {}, bytearray()
    for name, payload in payloads.items():
        table[name] = (len(rom), len(payload))
        rom += payload
    return table, bytes(rom)


def rom_include(config: GatewareConfig) -> str:
    """ef_rom.vh: the ROM as a Verilog function, with each entry's offset and length."""
    table, rom = rom_entries(config)
    bits = max(1, (len(rom) - 1).bit_length())
    lines = ["// Generated by echoforge.targets.fpga.gateware.design: constant response payloads.",
             f"localparam integer ROM_AW = {bits};"]
    for name, (offset, length) in table.items():
        lines.append(f"localparam [ROM_AW-1:0] {name}_AT = {bits}'d{offset};")
        lines.append(f"localparam [ROM_AW-1:0] {name}_LEN = {bits}'d{length};")
    lines += ["function [7:0] rom_byte;", "    input [ROM_AW-1:0] at;", "    begin", "        case (at)"]
    lines += [f"            {bits}'d{offset}: rom_byte = 8'h{value:02X};" for offset, value in enumerate(rom)]
    lines += ["            default: rom_byte = 8'h00;", "        endcase", "    end", "endfunction"]
    lines += _error_entries(table, bits)
    return "\n".join(lines) + "\n"


def _error_entries(table: dict[str, tuple[int, int]], bits: int) -> list[str]:
    """error_entry(code): {offset, length} of the code's error response (INTERNAL for any other)."""
    from echoforge.runtime.errors import ErrorCode

    lines = [f"function [{2 * bits - 1}:0] error_entry;", "    input [15:0] code;", "    begin", "        case (code)"]
    for name in ERROR_MESSAGES:
        offset, length = table[name]
        lines.append(f"            16'h{ErrorCode[name]:04X}: error_entry = {{{bits}'d{offset}, {bits}'d{length}}};")
    offset, length = table["INTERNAL"]
    lines += [f"            default: error_entry = {{{bits}'d{offset}, {bits}'d{length}}};", "        endcase", "    end",
              "endfunction"]
    return lines


def core_include(image) -> str:
    """ef_core.vh: what ef_commands' logic needs of the bank — word sizes, oscillators, bus width, the
    largest chunk and START's address (the rest of the image is in its program, ef_microcode.vh)."""
    aw = image.address_bits
    lines = ["// Generated by echoforge.targets.fpga.gateware.design: the bank behind ef_commands.",
             f"localparam integer WORD_BITS = {image.word_bits};",
             f"localparam integer WB = {image.wb};",
             f"localparam integer WOB = {image.wob};",
             f"localparam integer PMAX = {image.pmax};",
             f"localparam integer CORE_AW = {aw};",
             f"localparam [31:0] MAX_CHUNK_STEPS = 32'd{image.max_chunk_steps};",
             f"localparam [{aw - 1}:0] CONTROL_BASE = {aw}'d{image.bases['control']};",
             f"localparam [{aw - 1}:0] R_START = {aw}'d{image.control['START'] - image.bases['control']};", ""]
    return "\n".join(lines)


def core_image(config: GatewareConfig, regmap: dict):
    """What the executor's program (microcode) needs of the image: formats, sizes, limits, the bank's map."""
    from echoforge.runtime.commands import KIND_ACCUMULATORS, KIND_CODES, format_bytes

    from .microcode import Image

    rows = regmap["acc"]["rows"]
    return Image(word_bits=config.formats.word_bits, limit=config.formats.state.limit, kind=KIND_CODES[config.kind],
                 pmax=regmap["max_oscillators"], acc_rows=tuple(rows[name] for name in KIND_ACCUMULATORS[config.kind]),
                 address_bits=regmap["address_bits"],
                 format_bytes=bytes([KIND_CODES[config.kind]]) + format_bytes(config.formats),
                 max_oscillators=config.oscillators, max_batch=1, max_chunk_steps=config.max_chunk_steps,
                 buffer_samples=config.capabilities().buffer_samples, max_response=config.max_response_payload,
                 bases={region: regmap[region]["base"] for region in ("control", "params", "phi", "pi", "acc")},
                 control={name: entry["address"] for name, entry in regmap["control"]["registers"].items()})


def write_sources(config: GatewareConfig, directory: Path, *, simulation: bool = False) -> list[Path]:
    """Copy the board image's Verilog (and with `simulation` its harness and C++ bridge) into
    `directory`, generate the includes and the bank there (its $readmemh files too: run simulators
    and yosys in `directory`); return the Verilog files to compile, top module last."""
    directory.mkdir(parents=True, exist_ok=True)
    core = config.formats is not None
    names = SOURCES + INCLUDES + (CORE_SOURCES if core else ()) + ((SIM_TOP, SIM_MAIN) if simulation else ())
    for name in names:
        shutil.copyfile(RTL / name, directory / name)
    (directory / "ef_rom.vh").write_text(rom_include(config))
    verilog = [directory / name for name in SOURCES + (CORE_SOURCES if core else ())]
    if core:
        from echoforge.targets.fpga.rtl import generate_core

        design = generate_core(config.formats, config.kind, directory, lanes=2 * config.oscillators,
                               oscillators=config.oscillators, fold=config.fold, readback=EXECUTOR_READS,
                               max_steps=config.max_chunk_steps, flip=False,   # BEGIN_ECHO writes −π itself
                               pair_beats=True,                                   # the feeder offers each echo beat twice
                               one_row=True)                                      # the image declares batch 1
        image = core_image(config, json.loads(design.regmap.read_text()))
        (directory / "ef_core.vh").write_text(core_include(image))
        (directory / "ef_microcode.vh").write_text(microcode.include(image))
        verilog += list(design.sources)
    return verilog + ([directory / SIM_TOP] if simulation else [])
