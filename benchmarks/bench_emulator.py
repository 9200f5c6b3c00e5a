"""Speed of the fixed-point emulator against the float HRU's core, side by side on one core.

Oscillator-steps per second (batch × length × oscillators / seconds) of the emulator's forward and
±ε echo pair — through the float contract (quantise, integer kernels, dequantise) and through the
integer API alone — and of `FloatCore`, the compiled float64 core that the torch HRUs run, doing the
same passes. Median of a few runs after a warm-up that compiles the kernels.

    python benchmarks/bench_emulator.py [--batch 32 --length 4096 --size 256 --repeats 5] [--write]

--write replaces this script's section of docs/results.md with the table and the command line.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import numba
import numpy as np
import torch

from echoforge.models.core import FloatCore, OscillatorParams
from echoforge.targets.emulator import EmulatorCore

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_doc import median_seconds, write_section  # noqa: E402

KINDS = ("linear", "nonlinear")


# ---- timing -------------------------------------------------------------------------------------------

def random_problem(kind, batch, length, size, seed=0):
    rng = np.random.default_rng(seed)
    params = OscillatorParams(kind, a=rng.uniform(0.2, 1.0, size), delta=rng.uniform(0.3, 0.7, size),
                              w=rng.uniform(0.5, 1.0, size), b=rng.uniform(-0.5, 0.5, size),
                              c=rng.uniform(0.3, 0.7, size))
    forcing = rng.normal(0.0, 0.3, (batch, length, size))
    nudges = rng.normal(0.0, 1.0, (batch, length, size))
    return params, forcing, nudges


def measure(kind, batch, length, size, repeats):
    """Seconds per call of each contender for one HRU kind: {(pass, contender): seconds}."""
    params, forcing, nudges = random_problem(kind, batch, length, size)
    zeros = np.zeros((batch, size))
    core = EmulatorCore()
    core.load(params)
    small = (slice(0, 1), slice(0, 8))
    core.echo(forcing[small], zeros[:1], zeros[:1], nudges[small], 0.01)   # warm-up: load/compile kernels
    _, phi, pi = core.forward(forcing, zeros, zeros)
    state = core.config.state
    codes, phi_q, pi_q = state.quantize(forcing)[0], state.quantize(phi)[0], state.quantize(pi)[0]
    zero_codes = np.zeros((batch, size), dtype=np.int64)
    nudge_codes, _ = core.quantize_nudges(nudges, 0.01)

    float_core = FloatCore(params)
    float_core.echo(forcing[small], zeros[:1], zeros[:1], nudges[small], 0.01)  # warm-up
    contenders = {
        ("forward", "emulator (float API)"): lambda: core.forward(forcing, zeros, zeros),
        ("forward", "emulator (integer API)"): lambda: core.forward_int(codes, zero_codes, zero_codes),
        ("forward", "float HRU core (float64)"): lambda: float_core.forward(forcing, zeros, zeros),
        ("echo", "emulator (float API)"): lambda: core.echo(forcing, phi, pi, nudges, 0.01),
        ("echo", "emulator (integer API)"): lambda: core.echo_int(codes, phi_q, pi_q, nudge_codes),
        ("echo", "float HRU core (float64)"): lambda: float_core.echo(forcing, phi, pi, nudges, 0.01),
    }
    return {key: median_seconds(fn, repeats) for key, fn in contenders.items()}


def report(results, batch, length, size, repeats, command):
    steps = batch * length * size
    lines = [
        f"Machine: {cpu_name()}, {os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.1f} at the "
        "end (other jobs share the machine when it exceeds 0); one thread "
        f"(torch.set_num_threads(1), numba kernels are single-threaded); Python {platform.python_version()}, "
        f"numpy {np.__version__}, numba {numba.__version__}, torch {torch.__version__}.",
        "",
        f"Batch {batch}, length {length}, {size} oscillators; median of {repeats} runs after warm-up. "
        "Oscillator-steps/s = batch·length·oscillators / seconds; an echo call is the ±ε *pair* "
        "(two trajectories), counted once. The float reference is `FloatCore`, the compiled float64 "
        "core the torch HRUs run (echoforge.models.core).",
        "",
        "| kind | pass | contender | seconds | M osc-steps/s | vs float core |",
        "|---|---|---|---|---|---|",
    ]
    for kind, timings in results.items():
        for (pass_name, contender), seconds in timings.items():
            float_seconds = timings[(pass_name, "float HRU core (float64)")]
            lines.append(f"| {kind} | {pass_name} | {contender} | {seconds:.3f} | {steps / seconds / 1e6:.0f} "
                         f"| {float_seconds / seconds:.2f}× |")
    return "\n".join(lines)


def cpu_name():
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.machine()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="replace this benchmark's section of docs/results.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {kind: measure(kind, args.batch, args.length, args.size, args.repeats) for kind in KINDS}
    command = "python benchmarks/bench_emulator.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report(results, args.batch, args.length, args.size, args.repeats, command.strip())
    print(text)
    if args.write:
        write_section("bench_emulator", "## Fixed-point emulator speed (benchmarks/bench_emulator.py)\n\n"
                      + text)


if __name__ == "__main__":
    main()
