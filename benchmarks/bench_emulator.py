"""Speed of the fixed-point emulator against a float torch leapfrog, side by side on one core.

Oscillator-steps per second (batch × length × oscillators / seconds) of the emulator's forward and
±ε echo pair — through the float contract (quantise, integer kernels, dequantise) and through the
integer API alone — and of a float64 torch leapfrog vectorised over lanes with a Python loop over
time, doing the same work (the echo pair stacked as 2B lanes, the same half-step observables).
Median of a few runs after a warm-up that compiles the kernels.

    python benchmarks/bench_emulator.py [--batch 32 --length 4096 --size 256 --repeats 5] [--write]

--write replaces this script's section of docs/results.md with the table and the command line.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numba
import numpy as np
import torch

from echoforge.models.core import OscillatorParams
from echoforge.targets.emulator import EmulatorCore

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results.md"
BEGIN, END = "<!-- bench_emulator: begin -->", "<!-- bench_emulator: end -->"
KINDS = ("linear", "nonlinear")


# ---- the float torch reference: one leapfrog step per Python iteration, vectorised over lanes ---------

def torch_step(kind, p, phi, pi, f):
    """Drift-kick-drift step on (lanes, P) tensors; returns (ϕ', π', m, z)."""
    m = phi + p["delta"] / 2 * pi
    z = p["w"] * m + f + p["b"] if kind == "nonlinear" else None
    force = p["a"] * m - f if z is None else p["a"] * m + p["c"] * torch.tanh(z)
    pi = pi - p["delta"] * force
    return m + p["delta"] / 2 * pi, pi, m, z


def torch_forward(kind, p, forcing, phi, pi):
    positions = torch.empty_like(forcing)
    for k in range(forcing.shape[1]):
        phi, pi, _, _ = torch_step(kind, p, phi, pi, forcing[:, k])
        positions[:, k] = phi
    return positions, phi, pi


def torch_echo(kind, p, forcing, phi, pi, nudges, epsilon):
    """The ±ε echo pair as 2B lanes; returns the per-step forcing observables and the summed
    observable differences (the same work as the emulator's echo, in float64)."""
    batch, length, _ = forcing.shape
    sign = torch.tensor([1.0, -1.0], dtype=forcing.dtype).repeat_interleave(batch)[:, None]
    phi, pi = phi.repeat(2, 1), -pi.repeat(2, 1) + sign * epsilon * nudges[:, -1].repeat(2, 1)
    sums = [torch.zeros_like(phi) for _ in range(4)]
    forcing_obs = torch.empty_like(forcing)
    for k in range(length - 1, -1, -1):
        f = forcing[:, k].repeat(2, 1)
        pi_before = pi
        phi, pi, m, z = torch_step(kind, p, phi, pi, f)
        kinetic = pi_before ** 2 + pi ** 2
        if z is None:
            observables = (m * m, kinetic, f * m)
            forcing_obs[:, k] = (m[:batch] - m[batch:])
        else:
            t = torch.tanh(z)
            observables = (m * m, kinetic, t * m, torch.logaddexp(z, -z) - math.log(2.0))
            forcing_obs[:, k] = (t[:batch] - t[batch:])
        for total, value in zip(sums, observables):
            total += value
        if k > 0:
            pi = pi + sign * epsilon * nudges[:, k - 1].repeat(2, 1)
    return forcing_obs, [total[:batch] - total[batch:] for total in sums]


# ---- timing -------------------------------------------------------------------------------------------

def median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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

    p = {name: torch.from_numpy(getattr(core.params, name)) for name in ("a", "delta", "w", "b", "c")}
    forcing_t, nudges_t = torch.from_numpy(forcing), torch.from_numpy(nudges)
    zeros_t, phi_t, pi_t = torch.from_numpy(zeros), torch.from_numpy(phi), torch.from_numpy(pi)
    contenders = {
        ("forward", "emulator (float API)"): lambda: core.forward(forcing, zeros, zeros),
        ("forward", "emulator (integer API)"): lambda: core.forward_int(codes, zero_codes, zero_codes),
        ("forward", "torch float64"): lambda: torch_forward(kind, p, forcing_t, zeros_t, zeros_t),
        ("echo", "emulator (float API)"): lambda: core.echo(forcing, phi, pi, nudges, 0.01),
        ("echo", "emulator (integer API)"): lambda: core.echo_int(codes, phi_q, pi_q, nudge_codes),
        ("echo", "torch float64"): lambda: torch_echo(kind, p, forcing_t, phi_t, pi_t, nudges_t, 0.01),
    }
    return {key: median_seconds(fn, repeats) for key, fn in contenders.items()}


def report(results, batch, length, size, repeats, command):
    steps = batch * length * size
    lines = [
        f"Command: `{command}`",
        "",
        f"Machine: {cpu_name()}, {os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.1f} at the "
        "end (other jobs share the machine when it exceeds 0); one thread "
        f"(torch.set_num_threads(1), numba kernels are single-threaded); Python {platform.python_version()}, "
        f"numpy {np.__version__}, numba {numba.__version__}, torch {torch.__version__}.",
        "",
        f"Batch {batch}, length {length}, {size} oscillators; median of {repeats} runs after warm-up. "
        "Oscillator-steps/s = batch·length·oscillators / seconds; an echo call is the ±ε *pair* "
        "(two trajectories), counted once. The torch reference is a float64 leapfrog vectorised over "
        "lanes with a Python loop over time (the ±ε pair as 2B lanes, the same half-step observables) — "
        "a stand-in for a float HRU, not echoforge's own float core.",
        "",
        "| kind | pass | contender | seconds | M osc-steps/s | vs torch |",
        "|---|---|---|---|---|---|",
    ]
    for kind, timings in results.items():
        for (pass_name, contender), seconds in timings.items():
            torch_seconds = timings[(pass_name, "torch float64")]
            lines.append(f"| {kind} | {pass_name} | {contender} | {seconds:.3f} | {steps / seconds / 1e6:.0f} "
                         f"| {torch_seconds / seconds:.2f}× |")
    return "\n".join(lines)


def cpu_name():
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.machine()


def write_section(text):
    section = f"{BEGIN}\n## Fixed-point emulator speed (benchmarks/bench_emulator.py)\n\n{text}\n{END}\n"
    old = RESULTS.read_text() if RESULTS.exists() else "# Results\n"
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + section + rest.split(END, 1)[1].lstrip("\n")
    else:
        new = old.rstrip("\n") + "\n\n" + section
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(new)


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
        write_section(text)
        print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
