"""Speed of the fixed-point emulator against the float HRU's core, side by side on one core.

Oscillator-steps per second — one oscillator advanced by one leapfrog step: batch × length ×
oscillators per forward, twice that per ±ε echo pair (the two echoes of RHEL, each a full trajectory)
— of the emulator's forward and echoes, through the float contract (quantise, integer kernels,
dequantise) and through the integer API alone, and of `FloatCore`, the compiled float64 core that the
torch HRUs run, doing the same passes. Median of a few runs after a warm-up that compiles the kernels.

    python benchmarks/bench_emulator.py [--batch 32 --length 4096 --size 256 --repeats 5] [--write]

--write replaces this script's section of docs/results.md with the table and the command line.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

import numba
import numpy as np
import torch

from echoforge.argtypes import non_negative_float
from echoforge.models import kernels as float_kernels
from echoforge.models.core import FloatCore, OscillatorParams
from echoforge.models.hssm import HRU_KINDS
from echoforge.targets.emulator import EmulatorCore, float_lanes, kernels

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_doc import turns_seconds, write_section  # noqa: E402

KINDS = ("linear", "nonlinear")
# ∂L/∂positions fed to the layer's backward: a loss's gradient is small per position (a unit-variance
# one, summed by the echo over 4096 steps, drives the free-mass oscillators of the initialisation out of
# the emulator's ±128 state range).
GRAD_SCALE = 1e-2
FLOAT_KERNEL = "float HRU core (float64)"
UNCHECKED = "emulator arithmetic without its range checks (a bound, not a kernel)"


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
    return {key: statistics.median(times) for key, times in turns_seconds(contenders, repeats).items()}


def measure_layer(kind, batch, length, size, inputs, input_scale, repeats):
    """Seconds of the torch HRU layer's bank (input map B·u and oscillators, float32 streams) as users
    call it — forward, and backward (RHEL's echoes with ∂L/∂u, ∂L/∂B) — on each core: {(pass, core): s},
    and the emulator's saturation reports of both."""
    torch.manual_seed(0)
    hru = HRU_KINDS[kind](inputs, size)
    u = input_scale * torch.randn(batch, length, inputs)
    grad = GRAD_SCALE * torch.randn(batch, length, size)

    def forward():
        with torch.no_grad():
            hru.bank(u)

    def forward_backward():
        hru.bank(u.clone().requires_grad_()).backward(grad)

    cores = {"float core": FloatCore(), "emulator": EmulatorCore()}
    for core in cores.values():
        hru.core = core
        hru.bank(u[:1, :8].clone().requires_grad_()).backward(grad[:1, :8])  # warm-up

    def on(core, run):
        def run_on_core():
            hru.core = core
            run()
        return run_on_core

    seconds = turns_seconds({(pass_name, name): on(core, run) for name, core in cores.items()
                             for pass_name, run in (("forward", forward), ("forward + echo", forward_backward))},
                            repeats)
    timings = {}
    for name in cores:
        timings[("forward", name)] = statistics.median(seconds[("forward", name)])
        timings[("echo", name)] = statistics.median(seconds[("forward + echo", name)]) - timings[("forward", name)]
    # Float over emulator seconds turn by turn: how far one run's ratio strays from the median's.
    spread = {pass_name: [flt / emu for flt, emu in zip(seconds[(key, "float core")], seconds[(key, "emulator")])]
              for pass_name, key in (("forward", "forward"), ("gradient step", "forward + echo"))}
    forward()
    saturation = f"forward: {hru.core.stats}"
    forward_backward()
    return timings, spread, f"{saturation}; echo: {hru.core.stats}"


@numba.njit(fastmath={"contract"})
def _unchecked_rows(forcing, lanes, gain, lsb, positions, m, momenta):
    a, d, h = lanes[0], lanes[1], lanes[2]
    for p in range(m.shape[0]):
        m[p] = momenta[p] = 0.0
    for k in range(forcing.shape[0]):
        for p in range(m.shape[0]):
            code = float_lanes.lane_code(forcing[k, p], gain)
            position, m[p], momenta[p], _ = float_lanes.linear_step(code, m[p], momenta[p], a[p], d[p], h[p])
            positions[k, p] = float_lanes.lane_output(position, lsb, positions)


@numba.njit
def unchecked_linear_forward(forcing, lanes, gain, lsb, positions):
    """``float_lanes``' step from rest with its range checks taken out: wrong once a value leaves the word,
    so not a kernel — a lower bound on the exact arithmetic's cost (a row at a time, as there)."""
    m, momenta = np.empty(forcing.shape[2]), np.empty(forcing.shape[2])
    for bi in range(forcing.shape[0]):
        _unchecked_rows(forcing[bi], lanes, gain, lsb, positions[bi], m, momenta)


def measure_kernels(batch, length, size, repeats):
    """Seconds of the bare linear forward kernels on float32 streams into preallocated outputs — what is
    left of a forward once allocation and conversion are taken out: {contender: seconds}."""
    params, forcing, _ = random_problem("linear", batch, length, size)
    forcing = forcing.astype(np.float32)
    core = EmulatorCore()
    core.load(params)
    codes, nonlinear, shifts, lim, *tables = core._kernel_args()
    zeros, zero_codes, counts = np.zeros((batch, size)), np.zeros((batch, size), dtype=np.int64), np.zeros(3, np.int64)
    positions = np.empty_like(forcing)
    gain, _, lsb = core._conversion()
    contenders = {
        "emulator, float64 lanes (`float_lanes`)": lambda: float_lanes.linear_forward(
            forcing, zero_codes, zero_codes, codes, shifts, lim, core._lanes, positions, core._conversion(), counts),
        "emulator, int64 lanes (`kernels`)": lambda: kernels.forward(
            forcing, zero_codes, zero_codes, codes, nonlinear, shifts, lim, *tables, positions, core._conversion(),
            counts),
        UNCHECKED: lambda: unchecked_linear_forward(forcing, core._lanes, gain, lsb, positions),
        FLOAT_KERNEL: lambda: float_kernels.forward(
            float_kernels.LINEAR, params.table(), forcing, zeros, zeros, positions, np.empty((0, 0, 0)), False),
    }
    reference = None
    for name, run in contenders.items():
        run()  # warm-up; the emulator's three must agree on this in-range problem
        if name == FLOAT_KERNEL:
            continue
        if reference is None:
            reference = positions.copy()
        elif not np.array_equal(positions, reference):
            raise AssertionError(f"{name} gives other positions than the emulator's kernels")
    return {name: statistics.median(times) for name, times in turns_seconds(contenders, repeats).items()}


def kernel_report(kernel_timings, steps):
    flt = kernel_timings[FLOAT_KERNEL]
    lines = ["The bare linear forward kernels (same problem, float32 streams, outputs preallocated — no "
             "allocation, no validation of the inputs): the arithmetic alone. The third row is the float lanes' "
             "exact step with its range checks taken out (the same positions on this in-range problem, checked; "
             "wrong bits once a value leaves the word): what the exact arithmetic costs without the checks that "
             "keep it exact when a value saturates.", "",
             "| kernel | seconds | M osc-steps/s | vs float core |", "|---|---|---|---|"]
    lines += [f"| {name} | {seconds:.3f} | {steps / seconds / 1e6:.0f} | {flt / seconds:.2f}× |"
              for name, seconds in kernel_timings.items()]
    return "\n".join(lines)


def layer_report(layers, batch, length, size, inputs, input_scale):
    lines = [
        f"The torch HRU layer as training calls it: `hru.bank(u)` with u = {input_scale}·N(0, 1) (batch {batch}, "
        f"length {length}, {inputs} inputs) → {size} oscillators at their initialisation, float32 streams, on "
        "`FloatCore` and on `EmulatorCore` (`hru.core = …`); echo = backward (RHEL's ±ε echoes, ∂L/∂u and "
        f"∂L/∂B, from ∂L/∂positions = {GRAD_SCALE}·N(0, 1)), timed as forward + backward minus forward. The cores take turns, one call each per turn; "
        "the median over turns is shown, and the range of the turns' own ratios. The "
        "input and gradient scales keep the emulator's state in its "
        "word, as a compiled model's is: a run that saturates is not reversible, and its clamped steps run "
        "on the integer kernel.",
        "",
        "| kind | pass | float core s | emulator s | emulator speed vs float | turn by turn | emulator saturation |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, (timings, spread, saturation) in layers.items():
        for pass_name in ("forward", "echo", "gradient step"):
            flt, emu = (timings[(pass_name, core)] if pass_name != "gradient step" else
                        timings[("forward", core)] + timings[("echo", core)] for core in ("float core", "emulator"))
            turns = f"{min(spread[pass_name]):.2f}–{max(spread[pass_name]):.2f}×" if pass_name in spread else "—"
            lines.append(f"| {kind} | {pass_name} | {flt:.3f} | {emu:.3f} | {flt / emu:.2f}× | {turns} | {saturation} |")
    return "\n".join(lines)


def goal_lines(results, layers, kernel_timings, steps):
    """The issue's goals, checked on this run's numbers."""
    rates = {(kind, pass_name): steps * (2 if pass_name == "echo" else 1) / seconds / 1e6
             for kind, timings in results.items() for (pass_name, contender), seconds in timings.items()
             if contender == "emulator (integer API)"}
    slowest = min(rates, key=rates.get)
    slower = [f"{kind} {pass_name} ({timings[(pass_name, 'float core')] / timings[(pass_name, 'emulator')]:.2f}×)"
              for kind, (timings, _, _) in layers.items() for pass_name in ("forward", "echo")
              if timings[(pass_name, "emulator")] > timings[(pass_name, "float core")]]
    return [f"Goal ≥ 100 M oscillator-steps/s on one core: slowest pass {slowest[0]} {slowest[1]} at "
            f"{rates[slowest]:.0f} M/s — {'met' if rates[slowest] >= 100 else 'not met'}.",
            "Goal no slower than the float torch HRU: "
            + ("met in every pass." if not slower else "slower in " + ", ".join(slower) + "; a whole RHEL "
               "gradient step (forward + echoes) is compared in the last rows."),
            f"The exact arithmetic alone, with no range checks, runs the bare linear forward at "
            f"{kernel_timings[FLOAT_KERNEL] / kernel_timings[UNCHECKED]:.2f}× the float core's speed."]


def report(results, batch, length, size, repeats, command):
    steps = batch * length * size
    lines = [
        f"Machine: {cpu_name()}, {os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.1f} at the "
        "end (other jobs share the machine when it exceeds 0); one thread "
        f"(torch.set_num_threads(1), numba kernels are single-threaded); Python {platform.python_version()}, "
        f"numpy {np.__version__}, numba {numba.__version__}, torch {torch.__version__}.",
        "",
        f"Batch {batch}, length {length}, {size} oscillators; median of {repeats} runs after warm-up, the "
        "contenders taking turns call by call (in this table and the next two). "
        "An oscillator-step advances one oscillator by one leapfrog step: a forward makes "
        "batch·length·oscillators of them, an echo call — the ±ε *pair*, RHEL's two echoes, each a "
        "full trajectory — twice as many (the pair-steps/s column counts the pair once). The float "
        "reference is `FloatCore`, the compiled float64 core the torch HRUs run (echoforge.models.core).",
        "",
        "| kind | pass | contender | seconds | M osc-steps/s | M pair-steps/s | vs float core |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind, timings in results.items():
        for (pass_name, contender), seconds in timings.items():
            float_seconds = timings[(pass_name, "float HRU core (float64)")]
            trajectories = 2 if pass_name == "echo" else 1
            pairs = f"{steps / seconds / 1e6:.0f}" if pass_name == "echo" else "—"
            lines.append(f"| {kind} | {pass_name} | {contender} | {seconds:.3f} | "
                         f"{trajectories * steps / seconds / 1e6:.0f} | {pairs} | {float_seconds / seconds:.2f}× |")
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
    parser.add_argument("--inputs", type=int, default=64, help="input width of the torch HRU layer")
    parser.add_argument("--input-scale", type=non_negative_float, default=0.03,
                        help="standard deviation of the torch HRU layer's input (the emulator's state stays in range)")
    parser.add_argument("--write", action="store_true", help="replace this benchmark's section of docs/results.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = {kind: measure(kind, args.batch, args.length, args.size, args.repeats) for kind in KINDS}
    kernel_timings = measure_kernels(args.batch, args.length, args.size, args.repeats)
    layers = {kind: measure_layer(kind, args.batch, args.length, args.size, args.inputs, args.input_scale,
                                  args.repeats) for kind in KINDS}
    command = "python benchmarks/bench_emulator.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = "\n\n".join([report(results, args.batch, args.length, args.size, args.repeats, command.strip()),
                        kernel_report(kernel_timings, args.batch * args.length * args.size),
                        layer_report(layers, args.batch, args.length, args.size, args.inputs, args.input_scale),
                        "\n".join(goal_lines(results, layers, kernel_timings, args.batch * args.length * args.size))])
    print(text)
    if args.write:
        write_section("bench_emulator", "## Fixed-point emulator speed (benchmarks/bench_emulator.py)\n\n"
                      + text)


if __name__ == "__main__":
    main()
