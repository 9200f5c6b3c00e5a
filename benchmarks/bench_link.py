"""What one RHEL gradient step costs on the link: bytes on the wire, framing efficiency, and time over a
pseudo-terminal to the board simulator against the same step on the in-process emulator.

A step is what DESIGN §2 needs per batch: the forward pass of every bank (first to last), then the ±ε
echo pair of every bank (last to first). The board is `echoforge board serve --pty` in its own process,
with its default capabilities; both run the same integer arithmetic, and the gradients are checked
bit-identical. Wire bytes are counted at the host's transport (ACKs, delimiters and COBS included).
The step time a UART would give is the line time (10 bits a byte, 8N1) plus the emulator's compute.

Recovery: the same step on a clean board and on one that drops 1 % and corrupts 1 % of the frames in
both directions, the two taking turns step by step, mean step time (a median would hide the rare
retransmissions it is about). The link's retransmission timeouts follow the measured round trips
(runtime/link.py RoundTrip), so a lost frame costs about a round trip, not a fixed second.

    python benchmarks/bench_link.py [--batch 8 --size 16 --banks 2 --lengths 1000 4000 --repeats 5
                                     --fault-steps 40] [--write]

--write replaces this script's sections of docs/results.md.
"""

from __future__ import annotations

import argparse
import select
import signal
import statistics
import subprocess
import sys
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from echoforge.models.core import OscillatorParams
from echoforge.runtime.device import Device, DeviceCore
from echoforge.runtime.simulator import simulated_board
from echoforge.targets.emulator import EmulatorCore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_doc import median_seconds, turns_seconds, write_section  # noqa: E402

KINDS = ("linear", "nonlinear")
STREAM_COMMANDS = ("FORWARD_CHUNK", "ECHO_CHUNK")
BAUD_RATES = (115200, 921600)
EPSILON = 0.05
FAULTS = ("--drop", "0.01", "--corrupt", "0.01", "--seed", "1")  # per frame, both directions


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


def step_inputs(kind, args, length):
    """Forcing, nudges and per-bank parameters of the benchmark's step."""
    rng = np.random.default_rng(length)
    forcing = rng.normal(0.0, 0.3, (args.batch, length, args.size))
    nudges = rng.normal(0.0, 1.0, (args.batch, length, args.size))
    return forcing, nudges, [bank_params(kind, args.size, bank) for bank in range(args.banks)]


def loaded(cores, params):
    for core, bank in zip(cores, params):
        core.load(bank)
    return cores


def measure(device, kind, args, length):
    forcing, nudges, params = step_inputs(kind, args, length)
    emulators = loaded([EmulatorCore() for _ in params], params)
    boards = loaded([DeviceCore(device, bank=b) for b in range(args.banks)], params)
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


def fault_cost(args, kind="linear", length=1000) -> dict:
    """Mean step seconds on a clean board and on a faulty one (FAULTS), taking turns; link counters and
    whether every faulty step's results equal the emulator's bit for bit."""
    forcing, nudges, params = step_inputs(kind, args, length)
    expected = rhel_step(loaded([EmulatorCore() for _ in params], params), forcing, nudges)
    with ExitStack() as stack:
        uris = {"clean": stack.enter_context(simulated_board()), "faulty": stack.enter_context(simulated_board(*FAULTS))}
        devices = {name: stack.enter_context(Device(uri, timeout=10.0)) for name, uri in uris.items()}
        cores = {name: loaded([DeviceCore(device, bank=b) for b in range(args.banks)], params)
                 for name, device in devices.items()}
        identical = []

        def step(name):
            return lambda: identical.append(all(np.array_equal(a, b) for a, b in
                                                zip(rhel_step(cores[name], forcing, nudges), expected)))

        turns_seconds({name: step(name) for name in cores}, 2)  # warm-up: program loads, first chunks
        before = {name: dict(device.link.stats) for name, device in devices.items()}
        times = turns_seconds({name: step(name) for name in cores}, args.fault_steps)
        stats = {name: {key: device.link.stats[key] - before[name][key] for key in ("calls", "retries", "timeouts",
                                                                                     "crc_errors", "stale")}
                 for name, device in devices.items()}
    return {"kind": kind, "length": length, "mean_s": {name: statistics.fmean(t) for name, t in times.items()},
            "max_s": {name: max(t) for name, t in times.items()}, "stats": stats, "identical": all(identical)}


def fault_report(row, args) -> str:
    clean = row["mean_s"]["clean"]
    lines = ["| line | mean step s | slowest step s | × clean | calls | retries | timer expiries | CRC errors "
             "| bit-identical |", "|---|---|---|---|---|---|---|---|---|"]
    for name, label in (("clean", "clean"), ("faulty", "1 % dropped + 1 % corrupted frames")):
        stats = row["stats"][name]
        lines.append(f"| {label} | {row['mean_s'][name]:.4f} | {row['max_s'][name]:.4f} | "
                     f"{row['mean_s'][name] / clean:.2f}× | {stats['calls']} | {stats['retries']} | {stats['timeouts']} "
                     f"| {stats['crc_errors']} | {'yes' if row['identical'] else 'NO'} |")
    return (
        "## Recovery from lost and damaged frames (benchmarks/bench_link.py)\n\n"
        f"The step above ({row['kind']}, length {row['length']}, batch {args.batch}, {args.banks} banks of "
        f"{args.size}) on two simulated boards at once, one clean and one dropping 1 % and corrupting 1 % of the "
        f"frames in both directions (`board serve {' '.join(FAULTS)}`), {args.fault_steps} steps each, the two "
        "taking turns step by step. Retransmission timeouts follow each command's measured round trip (SRTT + "
        "4·RTTVAR, Karn's rule, never below the 50 ms first-resend interval before an ACK or after it), so a lost "
        "response costs about one round trip instead of the former fixed 1 s poll; every faulty step's results "
        "are checked bit-identical to the in-process emulator's.\n\n" + "\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=16, help="oscillators per bank")
    parser.add_argument("--banks", type=int, default=2)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1000, 4000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fault-steps", type=int, default=40, help="steps per board in the recovery comparison")
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
    faults = fault_report(fault_cost(args), args)
    print(faults)
    if args.write:
        write_section("bench_link", text)
        write_section("bench_link_faults", faults)


if __name__ == "__main__":
    main()
