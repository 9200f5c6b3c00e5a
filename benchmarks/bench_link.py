"""What one RHEL gradient step costs on the link: bytes on the wire, framing efficiency, and time over a
pseudo-terminal to the board simulator against the same step on the in-process emulator.

A step is what DESIGN §2 needs per batch: the forward pass of every bank (first to last), then the ±ε
echo pair of every bank (last to first). The board is `echoforge board serve --pty` in its own process,
with its default capabilities; both run the same integer arithmetic, and the gradients are checked
bit-identical. Wire bytes are counted at the host's transport (ACKs, delimiters and COBS included).
The step time a UART would give is the line time (10 bits a byte, 8N1) plus the emulator's compute.

    python benchmarks/bench_link.py [--batch 8 --size 16 --banks 2 --lengths 1000 4000 --repeats 5] [--write]

--write replaces this script's section of docs/results.md.
"""

from __future__ import annotations

import argparse
import select
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from echoforge.models.core import OscillatorParams
from echoforge.runtime.device import Device, DeviceCore
from echoforge.targets.emulator import EmulatorCore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_doc import median_seconds, write_section  # noqa: E402

KINDS = ("linear", "nonlinear")
STREAM_COMMANDS = ("FORWARD_CHUNK", "ECHO_CHUNK")
BAUD_RATES = (115200, 921600)
EPSILON = 0.05


def bank_params(kind, size, seed):
    rng = np.random.default_rng(seed)
    return OscillatorParams(kind, a=rng.uniform(0.2, 1.0, size), delta=rng.uniform(0.3, 0.7, size),
                            w=rng.uniform(0.5, 1.0, size), b=rng.uniform(-0.5, 0.5, size),
                            c=rng.uniform(0.3, 0.7, size))


def rhel_step(cores, forcing, nudges):
    """Forwards first to last bank, echoes last to first (each bank's input is the same forcing here: the
    host layers in between do not touch the link). Returns the gradients, flattened."""
    zero = np.zeros((forcing.shape[0], forcing.shape[2]))
    forwards = [core.forward(forcing, zero, zero) for core in cores]
    echoes = [core.echo(forcing, phi, pi, nudges, EPSILON)
              for core, (_, phi, pi) in reversed(list(zip(cores, forwards)))]
    return [*(x for f in forwards for x in f), *(x for e in echoes for x in (e.grad_forcing, *e.grad_params.values()))]


def start_board():
    """The board simulator in its own process, and the pty it serves on."""
    process = subprocess.Popen([sys.executable, "-m", "echoforge.cli", "board", "serve", "--pty"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if not select.select([process.stdout], [], [], 60)[0]:
        process.kill()
        raise RuntimeError("the board simulator did not start")
    return process, process.stdout.readline().strip()


def traffic_of_one_step(device, cores, forcing, nudges):
    """{command: Counter(calls, payload_bytes, wire_bytes)} of one step, and its results."""
    before = {name: Counter(counts) for name, counts in device.traffic.items()}
    results = rhel_step(cores, forcing, nudges)
    return {name: counts - before.get(name, Counter()) for name, counts in device.traffic.items()
            if counts != before.get(name)}, results


def measure(device, kind, args, length):
    rng = np.random.default_rng(length)
    forcing = rng.normal(0.0, 0.3, (args.batch, length, args.size))
    nudges = rng.normal(0.0, 1.0, (args.batch, length, args.size))
    params = [bank_params(kind, args.size, bank) for bank in range(args.banks)]
    emulators, boards = [EmulatorCore() for _ in params], [DeviceCore(device, bank=b) for b in range(args.banks)]
    for core, bank in [*zip(emulators, params), *zip(boards, params)]:
        core.load(bank)
    expected = rhel_step(emulators, forcing, nudges)  # also the warm-up
    traffic, results = traffic_of_one_step(device, boards, forcing, nudges)
    identical = all(np.array_equal(a, b) for a, b in zip(results, expected))
    return {"kind": kind, "length": length, "traffic": traffic, "identical": identical,
            "emulator_s": median_seconds(lambda: rhel_step(emulators, forcing, nudges), args.repeats),
            "board_s": median_seconds(lambda: rhel_step(boards, forcing, nudges), args.repeats)}


def totals(traffic, names=None):
    selected = [counts for name, counts in traffic.items() if names is None or name in names]
    return {key: sum(counts[key] for counts in selected) for key in ("calls", "payload_bytes", "wire_bytes")}


def markdown(rows, args) -> str:
    head = ("| kind | length | calls | wire bytes | bytes / step·lane | payload/wire (stream) | payload/wire (all) "
            "| emulator s | pty s | pty / emulator | " + " | ".join(f"at {baud} baud s" for baud in BAUD_RATES)
            + " | bit-identical |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    lanes = args.batch * args.size * args.banks
    for row in rows:
        every, stream = totals(row["traffic"]), totals(row["traffic"], STREAM_COMMANDS)
        implied = [every["wire_bytes"] * 10 / baud + row["emulator_s"] for baud in BAUD_RATES]
        lines.append(
            f"| {row['kind']} | {row['length']} | {every['calls']} | {every['wire_bytes']:,} "
            f"| {every['wire_bytes'] / (lanes * row['length']):.2f} "
            f"| {stream['payload_bytes'] / stream['wire_bytes']:.1%} "
            f"| {every['payload_bytes'] / every['wire_bytes']:.1%} "
            f"| {row['emulator_s']:.4f} | {row['board_s']:.4f} | {row['board_s'] / row['emulator_s']:.1f}× | "
            + " | ".join(f"{seconds:.2f}" for seconds in implied) + f" | {'yes' if row['identical'] else 'NO'} |")
    return "\n".join(lines)


def per_command(row) -> str:
    lines = ["| command | calls | payload bytes | wire bytes | payload/wire |", "|---|---|---|---|---|"]
    for name, counts in sorted(row["traffic"].items(), key=lambda item: -item[1]["wire_bytes"]):
        lines.append(f"| {name} | {counts['calls']} | {counts['payload_bytes']:,} | {counts['wire_bytes']:,} "
                     f"| {counts['payload_bytes'] / counts['wire_bytes']:.1%} |")
    return "\n".join(lines)


def report(rows, args, info) -> str:
    largest = max(rows, key=lambda row: (row["length"], row["kind"]))
    return (
        "## Link cost of an RHEL step (benchmarks/bench_link.py)\n\n"
        f"One RHEL gradient step — forward of {args.banks} banks, then the ±ε echo pair of each — for batch "
        f"{args.batch}, {args.size} oscillators per bank, 24-bit words (3-byte samples, 4-byte observables). "
        f"Board: the simulator in its own process on a pseudo-terminal ({info.firmware}; chunks ≤ "
        f"{info.capabilities.max_chunk_steps} steps / {info.capabilities.buffer_samples} samples). Wire bytes are "
        "both directions at the host's transport (frames, ACKs, delimiters, COBS); payload/wire is the share "
        "that is command payload; \"bytes / step·lane\" divides the wire bytes by length × batch × oscillators "
        "× banks (the minimum is 3 + 3 for the forward plus 6 + 4 for the echo = 16). Times are the median of "
        f"{args.repeats} steps; the UART columns are line time (10 bits a byte) plus the emulator's compute.\n\n"
        f"{markdown(rows, args)}\n\n"
        f"Per command, {largest['kind']}, length {largest['length']}:\n\n{per_command(largest)}\n"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=16, help="oscillators per bank")
    parser.add_argument("--banks", type=int, default=2)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="write the section of docs/results.md")
    args = parser.parse_args(argv)
    process, uri = start_board()
    try:
        with Device(uri, timeout=10.0) as device:
            rows = [measure(device, kind, args, length) for kind in KINDS for length in args.lengths]
            info = device.info
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(10)
    text = report(rows, args, info)
    print(text)
    if args.write:
        write_section("bench_link", text)


if __name__ == "__main__":
    main()
