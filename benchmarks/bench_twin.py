"""The analog twin: how close an ideal one is to the float core, what a board's faults do to the RHEL
gradient, and what one gradient costs in process, behind the device protocol and through SCPI instruments.

One RHEL gradient of one linear bank (forward, then the ±ε echo pair) on a BasicMotions-sized batch:
batch 16, length 100, 8 oscillators, Q8.16 words. Contenders, taking turns call by call:
the float core (float64), the fixed-point emulator, the twin in process, the twin behind
`echoforge board serve --target analog-twin --pty` (device protocol on a pseudo-terminal, its own
process), and the twin as SCPI instruments (`--scpi 0`, its own process, pyvisa-py over TCP). The
three twin paths run the same board instance and are checked bit-identical on the first call.
Then the served echo through the runtime: `board serve --target analog-twin` (a pty) of lc-tank-pcb
at several Q, compensated (the default on a board with echo gain) and plain (--no-echo-compensation),
against BPTT of the board instance's true damped bank (dissipation.py: its true ω and loss γΔt).

    python benchmarks/bench_twin.py [--batch 16 --length 100 --size 8 --repeats 5 --seeds 3] [--write]

--write replaces this script's section of docs/results.md and writes docs/twin-gradients.png.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

from echoforge.models.core import FloatCore, OscillatorParams
from echoforge.runtime.device import DeviceCore
from echoforge.runtime.simulator import simulated_board
from echoforge.targets.analog.board import load_board
from echoforge.targets.analog.instruments import InstrumentCore, Instruments
from echoforge.targets.analog.twin import AnalogTwin
from echoforge.targets.emulator import EmulatorCore, FormatConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_doc import turns_seconds, write_section  # noqa: E402

CONFIG = FormatConfig(24)  # Q8.16
EPSILON = 0.1
SIGMAS = (0.001, 0.01, 0.05)
QUALITIES = (100.0, 1000.0, np.inf)
SERVED_QUALITIES = (100.0, 200.0, 1000.0)
PLOT = Path(__file__).resolve().parents[1] / "docs" / "twin-gradients.png"


def problem(args):
    rng = np.random.default_rng(0)
    params = OscillatorParams("linear", a=rng.uniform(0.1, 0.9, args.size), delta=rng.uniform(0.4, 0.7, args.size))
    forcing = rng.normal(0.0, 0.5, (args.batch, args.length, args.size))
    nudges = rng.normal(0.0, 1.0, (args.batch, args.length, args.size))
    return params, forcing, nudges


def gradient(core, forcing, nudges):
    """Positions and the RHEL gradient (a, δ summed over the batch; ∂L/∂forcing), flattened."""
    rest = np.zeros((forcing.shape[0], forcing.shape[2]))
    positions, phi, pi = core.forward(forcing, rest, rest)
    echo = core.echo(forcing, phi, pi, nudges, EPSILON)
    return positions, np.concatenate([echo.grad_params["a"].sum(0), echo.grad_params["delta"].sum(0),
                                      echo.grad_forcing.ravel()])


def agreement(x, reference):
    return (float(x @ reference / (np.linalg.norm(x) * np.linalg.norm(reference))),
            float(np.linalg.norm(x - reference) / np.linalg.norm(reference)))


def fault_table(args, params, forcing, nudges):
    """Cosine and relative error of the twin's gradient to the float core's, per σ and Q (mean over
    fabrication seeds), the other faults as the lc-tank-pcb board has them."""
    board = load_board("lc-tank-pcb")
    _, reference = gradient(FloatCore(params), forcing, nudges)
    rows = {}
    for sigma in SIGMAS:
        for quality in QUALITIES:
            results = []
            for seed in range(args.seeds):
                twin = AnalogTwin(board.replace(mismatch_sigma=sigma, quality_factor=quality), CONFIG,
                                  fabrication_seed=seed, noise_seed=seed)
                twin.load(params)
                results.append(agreement(gradient(twin, forcing, nudges)[1], reference))
            rows[sigma, quality] = np.mean(results, axis=0)
    ideal = AnalogTwin(board.ideal(), CONFIG)
    ideal.load(params)
    positions, ideal_gradient = gradient(ideal, forcing, nudges)
    float_positions, _ = gradient(FloatCore(ideal.params), forcing, nudges)
    closeness = (float(np.abs(positions - float_positions).max() / np.abs(float_positions).max()),
                 agreement(ideal_gradient, gradient(FloatCore(ideal.params), forcing, nudges)[1])[1])
    return rows, closeness


def timing(args, params, forcing, nudges):
    board = load_board("lc-tank-pcb")
    seeds = ("--fabrication-seed", "1", "--noise-seed", "2")
    with simulated_board("--target", "analog-twin", *seeds, "--no-echo-compensation") as tty, \
            simulated_board("--target", "analog-twin", *seeds, "--scpi", "0") as resources, \
            DeviceCore(tty, config=CONFIG) as protocol, Instruments(*resources.split()) as instruments:
        cores = {"float core (float64)": FloatCore(params), "emulator (fixed point)": EmulatorCore(CONFIG),
                 "twin, in process": AnalogTwin(board, CONFIG, fabrication_seed=1, noise_seed=2),
                 "twin, device protocol (pty)": protocol,
                 "twin, SCPI instruments (pyvisa-py)": InstrumentCore(board, instruments, CONFIG)}
        for core in cores.values():
            core.load(params)
        twins = [gradient(cores[name], forcing, nudges)[1] for name in list(cores)[2:]]  # also the warm-up
        # the protocol twin numbers its noise per core: seed (2, 0) in process is what it runs
        check = AnalogTwin(board, CONFIG, fabrication_seed=1, noise_seed=(2, 0))
        check.load(params)
        identical = (np.array_equal(twins[0], twins[2]),
                     np.array_equal(gradient(check, forcing, nudges)[1], twins[1]))
        times = turns_seconds({name: (lambda core=core: gradient(core, forcing, nudges)) for name, core in cores.items()},
                              args.repeats)
    return {name: float(np.median(seconds)) for name, seconds in times.items()}, identical


def plot(rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 3.6))
    for quality in QUALITIES:
        axis.plot([100 * s for s in SIGMAS], [rows[s, quality][0] for s in SIGMAS], "o-",
                  label=f"Q = {'∞' if quality == np.inf else f'{quality:g}'}")
    axis.set_xscale("log")
    axis.set_xlabel("mismatch σ (%)")
    axis.set_ylabel("cosine to the float gradient")
    axis.set_title("RHEL gradient on the lc-tank-pcb twin")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(PLOT, dpi=120)


def served_echo(params, forcing, nudges):
    """(cosine, rel. error) of the served twin's gradient to BPTT of the board's true damped bank, per
    (Q, compensated); the lc-tank-pcb board's faults otherwise."""
    from echoforge.targets.analog.dissipation import DampedBank, bptt

    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        for quality in SERVED_QUALITIES:
            board = load_board("lc-tank-pcb").replace(quality_factor=quality)
            path = Path(folder) / f"q{quality:g}.yaml"
            path.write_text(yaml.safe_dump(board.to_yaml(), sort_keys=False))
            truth = AnalogTwin(board, CONFIG, fabrication_seed=1)
            truth.load(params)
            physics, delta = truth.physics, truth.params.delta
            true_bank = OscillatorParams("linear", a=(physics.omega * board.dt / delta) ** 2, delta=delta)
            reference = bptt(DampedBank(true_bank, physics.gamma * board.dt), forcing, nudges)
            reference = np.concatenate([reference["a"], reference["delta"], reference["forcing"].ravel()])
            for compensated, flags in ((True, ()), (False, ("--no-echo-compensation",))):
                options = ("--target", "analog-twin", "--board", str(path), "--fabrication-seed", "1", *flags)
                with simulated_board(*options) as tty, DeviceCore(tty, config=CONFIG) as core:
                    core.load(params)
                    rows[quality, compensated] = agreement(gradient(core, forcing, nudges)[1], reference)
    return rows


def served_report(rows) -> str:
    lines = [f"| {q:g} | {rows[q, True][0]:.5f} / {rows[q, True][1]:.3g} | {rows[q, False][0]:.5f} / "
             f"{rows[q, False][1]:.3g} |" for q in SERVED_QUALITIES]
    return ("**The served echo** (`board serve --target analog-twin`, a pty, lc-tank-pcb with its faults, "
            "fabrication seed 1): cosine / relative error of the served gradient to BPTT of the board "
            "instance's true damped bank (its ω and γ; the gains' mismatch is not in that model). "
            "Compensated: echo gain 2γ̂ and the weights, γ̂ from the board's nominal Q (oscillators needing more "
            "than the board's 1e5/s keep the plain echo); plain: --no-echo-compensation.\n\n"
            "| Q | compensated | plain |\n|---|---|---|\n" + "\n".join(lines) + "\n")


def report(args, rows, closeness, times, identical) -> str:
    fastest = times["emulator (fixed point)"]
    time_rows = "\n".join(f"| {name} | {seconds * 1000:.1f} | {seconds / fastest:.1f}× |" for name, seconds in times.items())
    fault_rows = "\n".join(
        f"| {100 * sigma:g} % | " + " | ".join(f"{rows[sigma, q][0]:.4f} / {rows[sigma, q][1]:.3f}" for q in QUALITIES)
        + " |" for sigma in SIGMAS)
    return (
        "## The analog twin (benchmarks/bench_twin.py)\n\n"
        f"One RHEL gradient of one linear bank: batch {args.batch}, length {args.length}, {args.size} "
        f"oscillators, {CONFIG.state} words, ε = {EPSILON}.\n\n"
        f"**Ideal twin** (`board.ideal()`: σ = 0, Q = ∞, no noise or drift, 24-bit converters and tuning) "
        f"against the float core on the same (quantised) parameters: positions within "
        f"{closeness[0]:.1e}, gradient within {closeness[1]:.1e} (relative): what is left is rounding to "
        "words (docs/analog.md).\n\n"
        f"**Faults**: cosine / relative error of the twin's gradient to the float core's on the nominal "
        f"parameters, mean over {args.seeds} board instances (fabrication and noise seeds 0…{args.seeds - 1}); "
        "the lc-tank-pcb board's noise, offsets, drift and 14-bit converters, no echo gain. Mismatch moves "
        "the model itself (the twin computes a different model's gradient); finite Q breaks RHEL's "
        "conservation (docs/analog.md; the dissipation analysis measures that part alone). "
        f"Plot: docs/{PLOT.name}.\n\n"
        "| σ | " + " | ".join(f"Q = {'∞' if q == np.inf else f'{q:g}'}" for q in QUALITIES) + " |\n"
        "|---|" + "---|" * len(QUALITIES) + "\n" + fault_rows + "\n\n"
        f"**Time** of one gradient, median of {args.repeats} (contenders taking turns); the three twin paths "
        f"bit-identical: SCPI = in process {'yes' if identical[0] else 'NO'}, device protocol = in process "
        f"{'yes' if identical[1] else 'NO'}.\n\n"
        "| core | ms | × emulator |\n|---|---|---|\n" + time_rows + "\n"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=100)
    parser.add_argument("--size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="write the section of docs/results.md and the plot")
    args = parser.parse_args(argv)
    params, forcing, nudges = problem(args)
    rows, closeness = fault_table(args, params, forcing, nudges)
    times, identical = timing(args, params, forcing, nudges)
    text = report(args, rows, closeness, times, identical) + "\n" + served_report(served_echo(params, forcing, nudges))
    print(text)
    if args.write:
        plot(rows)
        write_section("bench_twin", text)


if __name__ == "__main__":
    main()
