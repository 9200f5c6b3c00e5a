"""What one RHEL step of a BasicMotions-sized bank costs on the FPGA board image, against the software
board: bytes on the wire, the board's clocks, and the time it would take on an iCEBreaker.

A step is the forward and the ±ε echo pair of one bank (batch 16, 100 steps — BasicMotions' length —
16 oscillators, 16-bit words: what a UP5K multiplies in one DSP), run by the unchanged host
(`DeviceCore`) through a pseudo-terminal (1) to the board image under Verilator (`board serve --target
gateware`, its UART simulated bit by bit at 4 clocks a bit) and (2) to the Python board simulator
(`board serve --target emulator`). The gradients are checked bit-identical. The simulator's bridge counts
the clocks during which a byte was on a line or the image was working: at 4 clocks a bit they are the
time a 12 MHz board at 3 Mbaud would take (host turnaround aside). At another baud rate the line's
share (40 clocks a byte) becomes 10 bits a byte at that rate, the rest (the board's work: checking,
the core's lane-steps, reading and writing buffers) stays clocks.

    python benchmarks/bench_gateware.py [--batch 16 --length 100 --size 16 --word-bits 16] [--write]

--write replaces this script's section of docs/results.md.

With --images DIR it instead builds the board images for real boards (`echoforge build`'s flow: Yosys,
nextpnr, the packer; about 20 minutes here) into DIR — the protocol engine alone, a 4- and a 16-oscillator
16-bit linear image on the iCEBreaker, the 4-oscillator image on the ULX3S — and tabulates what each uses, its
fmax against the board's clock, or the resources a part lacks (section bench_gateware_images).
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from echoforge.models.core import OscillatorParams
from echoforge.runtime.board import Board
from echoforge.runtime.device import DeviceCore
from echoforge.targets.emulator import FormatConfig
from echoforge.targets.fpga import synth
from echoforge.targets.fpga.gateware.bitstream import BOARDS, build_image
from echoforge.targets.fpga.gateware.design import GatewareConfig
from echoforge.targets.fpga.gateware.sim import serve_pty

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_doc import write_section  # noqa: E402

CLOCK_HZ = 12e6                      # the iCEBreaker's oscillator
LINE_CLOCKS_PER_BYTE = 40            # 8N1 at 4 clocks a bit: 3 Mbaud at 12 MHz
BAUD_RATES = (115_200, 3_000_000)
LINK = {"timeout": 120.0, "retry_interval": 2.0, "max_retry_interval": 2.0}  # a slow simulated line: no early resends
EPSILON = 0.05


def workload(batch: int, length: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    params = OscillatorParams("linear", a=rng.uniform(0.2, 1, size), delta=rng.uniform(0.3, 0.7, size),
                              w=np.ones(size), b=np.zeros(size), c=np.zeros(size))
    return params, rng.normal(size=(batch, length, size)), rng.normal(size=(batch, length, size))


def rhel_step(core: DeviceCore, forcing, nudges) -> list[np.ndarray]:
    zeros = np.zeros((forcing.shape[0], forcing.shape[2]))
    positions, phi, pi = core.forward(forcing, zeros, zeros)
    echo = core.echo(forcing, phi, pi, nudges, EPSILON)
    return [positions, echo.grad_forcing, *echo.grad_params.values()]


def lane_step_clocks(config: FormatConfig, batch: int, length: int, size: int) -> int:
    """Clocks the bank's datapath spends on the step, row by row: forward P lanes, echo 2P."""
    from echoforge.targets.fpga.rtl import generate_core

    with tempfile.TemporaryDirectory() as scratch:
        design = generate_core(config, "linear", scratch, lanes=2 * size, oscillators=size)
    return batch * length * (design.clocks_per_step(size) + design.clocks_per_step(2 * size))


def wire_bytes(core: DeviceCore) -> int:
    return sum(counts["wire_bytes"] for counts in core.device.traffic.values())


def settled_cycles(path: Path) -> int:
    """The bridge's busy-clock count once it has gone idle (it rewrites the file then)."""
    previous = None
    while True:
        time.sleep(0.5)
        current = int(path.read_text()) if path.exists() else 0
        if current == previous:
            return current
        previous = current


def measure(uri: str, config: FormatConfig, params, forcing, nudges, cycles_file: Path | None = None) -> dict:
    with DeviceCore(uri, config=config, **LINK) as core:
        core.load(params)
        before_bytes = wire_bytes(core)
        before_cycles = settled_cycles(cycles_file) if cycles_file else 0
        start = time.perf_counter()
        result = rhel_step(core, forcing, nudges)
        seconds = time.perf_counter() - start
        cycles = settled_cycles(cycles_file) - before_cycles if cycles_file else 0
        return {"result": result, "seconds": seconds, "bytes": wire_bytes(core) - before_bytes, "cycles": cycles,
                "calls": sum(counts["calls"] for counts in core.device.traffic.values()),
                "board": core.device.info.describe()}


def served(serve, *args):
    stop, uris = threading.Event(), queue.Queue()
    thread = threading.Thread(target=serve, args=(*args, stop, uris.put), daemon=True)
    thread.start()
    return stop, thread, uris.get(timeout=1800)


# (image, board, its GatewareConfig, baud): what --images builds — BasicMotions' shape is 16 oscillators
BASIC_MOTIONS = GatewareConfig(formats=FormatConfig(16), kind="linear", oscillators=16)
IMAGES = (("protocol engine alone", "icebreaker", GatewareConfig(), 115_200),
          ("16-oscillator 16-bit linear", "icebreaker", BASIC_MOTIONS, 115_200),
          ("16-oscillator 16-bit linear", "icebreaker", BASIC_MOTIONS, 3_000_000),
          ("16-oscillator 16-bit linear", "ulx3s", BASIC_MOTIONS, 115_200))


def used_of(utilization: dict) -> dict:
    """resource → "used/available", as the table shows it."""
    return {resource: f"{u:,}/{a:,}" for resource, (u, a) in utilization.items()}


def image_row(name: str, board_name: str, config: GatewareConfig, baud: int, directory: Path) -> str:
    """One table row: the build's utilization and fmax, or what the fit check refused before placement."""
    board = BOARDS[board_name]
    start = time.perf_counter()
    try:
        image = build_image(config, board_name, directory, baud=baud)
    except ValueError as refused:   # check_fit: the packed cells exceed the part
        cells = synth.resources(synth.cell_counts(json.loads((directory / "stat.json").read_text())))
        used = used_of(synth.utilization(json.loads((directory / "packed.json").read_text())))
        return (f"| {name} | {board.name} ({board.part.device}) | {baud:,} | {used['logic']} packed ({cells['lut']:,} LUT4) | "
                f"{cells['ff']:,} | {used['dsp']} | {used['bram']} | {used.get('spram', '–')} | refused before "
                f"placement: {refused} | – | {(time.perf_counter() - start) / 60:.0f} min |")
    s = image.synthesis
    used = used_of(s.utilization)
    flip_flops = used.get("ff", f"{s.resources['ff']:,}")   # an iCE40 logic cell holds its flip-flop
    return (f"| {name} | {board.name} ({board.part.device}) | {baud:,} | {used['logic']} | {flip_flops} | "
            f"{used.get('dsp', '0')} | {used.get('bram', '0')} | {used.get('spram', '–')} | "
            f"{s.fmax_mhz:.1f} MHz, {'meets' if s.meets_timing else 'MISSES'} {s.clock_mhz:g} MHz | "
            f"{image.bitstream.stat().st_size:,} bytes | {sum(s.seconds.values()) / 60:.0f} min |")


def images(directory: Path) -> str:
    rows = [image_row(name, board, config, baud, directory / f"{board}-{index}")
            for index, (name, board, config, baud) in enumerate(tqdm(IMAGES, desc="board images", file=sys.stderr))]
    return "\n".join([
        "Board images as `echoforge build` makes them (YoWASP Yosys and nextpnr, seed 1; iCE40 logic = logic "
        "cells, ECP5 logic = LUT4s; the iCEBreaker build keeps the frame buffers in SPRAM):",
        "",
        "| image | board | baud | logic | FF | DSP | block RAM | SPRAM | fmax | bitstream | build |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|",
        *rows])


def line_share(step_seconds: float, gateware: dict, baud: int) -> float:
    """What part of a step at `baud` the bytes' time on the line is."""
    return 10 * gateware["bytes"] / baud / step_seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=100)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--word-bits", type=int, default=16)
    parser.add_argument("--write", action="store_true", help="write the section of docs/results.md")
    parser.add_argument("--images", type=Path, metavar="DIR", help="build the board images into DIR instead")
    args = parser.parse_args(argv)
    if args.images:
        text = images(args.images)
        print(text)
        if args.write:
            write_section("bench_gateware_images", "## FPGA board images for real boards\n\n" + text)
        return 0
    config = FormatConfig(args.word_bits)
    params, forcing, nudges = workload(args.batch, args.length, args.size)
    image = GatewareConfig(formats=config, kind="linear")

    with tempfile.TemporaryDirectory() as scratch:
        cycles_file = Path(scratch) / "cycles"
        stop, thread, uri = served(lambda *rest: serve_pty(image, *rest, cycles_file=cycles_file))
        try:
            gateware = measure(uri, config, params, forcing, nudges, cycles_file)
        finally:
            stop.set()
            thread.join(30)
    board = Board(poll_interval=0.01)
    stop, thread, uri = served(board.serve_pty)
    try:
        software = measure(uri, config, params, forcing, nudges)
    finally:
        stop.set()
        thread.join(30)
    identical = all(np.array_equal(a, b) for a, b in zip(gateware["result"], software["result"], strict=True))
    if not identical:
        raise SystemExit("the gateware's gradients differ from the software board's")

    line_cycles = LINE_CLOCKS_PER_BYTE * gateware["bytes"]
    work_cycles = max(gateware["cycles"] - line_cycles, 0)
    core_cycles = lane_step_clocks(config, args.batch, args.length, args.size)
    at_baud = {baud: work_cycles / CLOCK_HZ + 10 * gateware["bytes"] / baud for baud in BAUD_RATES}
    lines = [
        f"One RHEL step (forward + ±ε echo pair) of a linear bank of {args.size} oscillators, batch {args.batch}, "
        f"{args.length} steps, {args.word_bits}-bit words; gradients bit-identical on both boards.",
        "",
        "| board | calls | wire bytes | board clocks | of them line (40/byte) | on an iCEBreaker at 12 MHz, 3 Mbaud "
        "| at 115,200 baud | wall time here |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| gateware (Verilator, per-bit UART) | {gateware['calls']} | {gateware['bytes']:,} | {gateware['cycles']:,} | "
        f"{line_cycles:,} | {at_baud[3_000_000]:.3f} s | {at_baud[115_200]:.2f} s | {gateware['seconds']:.1f} s |",
        f"| software board (Python simulator) | {software['calls']} | {software['bytes']:,} | – | – | – | "
        f"{10 * software['bytes'] / 115_200:.2f} s on the line | {software['seconds']:.2f} s |",
        "",
        f"The board's own work is {work_cycles:,} clocks ({work_cycles / CLOCK_HZ * 1e3:.1f} ms at 12 MHz), of "
        f"which the core's lane-steps are {core_cycles:,} (a row at a time: max(lanes, pipeline depth) a step); "
        "the rest is the byte-serial work — the executor's program (two clocks a word: its checks, the range pass "
        "over every sample before a chunk runs), the feeder, the CRC pass (bit-serial: ~10 clocks a byte) and the "
        f"COBS scan. The line takes {line_share(at_baud[3_000_000], gateware, 3_000_000):.0%} of the step at 3 Mbaud, "
        f"{line_share(at_baud[115_200], gateware, 115_200):.0%} at 115,200 baud. The image declares batch 1 and 4 kB "
        "buffers, so the "
        "host sends a batch row by row; the software board takes the batch in one group. Boards: "
        f"{gateware['board']}; {software['board']}.",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section("bench_gateware", "## FPGA board image: an RHEL step on the gateware\n\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
