"""Word length against accuracy and RHEL gradient fidelity on the fixed-point emulator.

Trains the default BasicMotions model (`echoforge train`'s embedded config: a linear HSSM trained with
RHEL for 300 steps, seed 0) into a temporary run directory, or reuses --run DIR, then for each word
length compiles it for the emulator (formats calibrated on the training split) and measures:

* test accuracy of the float interpreter and of the EmulatedModel (banks in fixed point), and the
  saturation counts on the test split;
* the RHEL gradient of one training batch with every bank's forward and ±ε echoes on EmulatorCores of
  that word length (host layers in float64 torch, through the core contract), against the float64
  torch model's BPTT gradient: cosine and norm ratio for the bank parameters (oscillator parameters
  and input maps B) and for ∂L/∂x. The float64 RHEL row is the same measurement on the float core.

Word lengths 12..32 bits, the emulator's range. At 12–14 bits the trained model still fits (block 1's
positions reach ~820: eleven integer bits with the sign, so a 12-bit word keeps one fraction bit and the
function tables shrink to what such a state can index); at 32 bits the echo's product accumulators
drop two bits a step so that they stay inside int64 (targets/emulator/fixed.py).

    python benchmarks/bench_wordlength.py [--run DIR] [--words 12 14 16 18 20 24 28 30 32] [--write]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from echoforge.compiler import compile_model
from echoforge.compiler.frontend_checkpoint import checkpoint_file, rebuild
from echoforge.compiler.report import compare
from echoforge.hil import bank_parameter_names, gradients
from echoforge.models.core import FloatCore
from echoforge.models.data import load_dataset
from echoforge.models.training import Trainer, load_config
from echoforge.targets import capabilities
from echoforge.targets.emulator import EmulatorCore
from echoforge.targets.emulator.emulated import EmulatedModel
from echoforge.targets.emulator.lower import lower

sys.path.insert(0, str(Path(__file__).resolve().parent))
WORDS = (12, 14, 16, 18, 20, 24, 28, 30, 32)
GOAL_POINTS, GOAL_COSINE = 1.0, 0.999  # at the default word length


def train(run: Path, seed: int) -> tuple[dict, float]:
    started = time.perf_counter()
    trainer = Trainer(load_config(None, [f"seed={seed}"]), run)
    trainer.run(progress=False)
    return trainer.config, time.perf_counter() - started


def alignment(got: list[torch.Tensor], reference: list[torch.Tensor]) -> tuple[float, float]:
    """Cosine and norm ratio of two gradients given as lists of tensors."""
    a, b = torch.cat([t.flatten() for t in got]), torch.cat([t.flatten() for t in reference])
    return float(a @ b / (a.norm() * b.norm())), float(a.norm() / b.norm())


class GradientCheck:
    """One training batch's float64 BPTT gradient, and how a set of cores' RHEL gradient aligns with it."""

    def __init__(self, run: Path, x: np.ndarray, y: np.ndarray):
        state = torch.load(checkpoint_file(run), weights_only=True)
        self.model = rebuild(state["config"], state["model"]).double()
        self.x, self.y = torch.from_numpy(x).double(), torch.from_numpy(y)
        self.names = bank_parameter_names(self.model)
        self.model.set_learning("bptt")
        self.reference = self.gradients(None)
        self.model.set_learning("rhel")

    def gradients(self, cores):
        return gradients(self.model, self.x, self.y, torch.nn.functional.cross_entropy, cores)

    def measure(self, cores) -> dict:
        got, ref = self.gradients(cores), self.reference
        bank = alignment([got.params[n] for n in self.names], [ref.params[n] for n in self.names])
        inputs = alignment([got.input], [ref.input])
        echo_saturation = sum(sum(core.stats.counts.values()) for core in cores if hasattr(core, "stats"))
        return {"bank_cosine": bank[0], "bank_norm": bank[1], "input_cosine": inputs[0],
                "input_norm": inputs[1], "echo_saturation": echo_saturation}


def measure_word(run: Path, data, word: int, check: GradientCheck) -> dict:
    started = time.perf_counter()
    program = lower(compile_model(run, "emulator", data.train.x, word_bits=word))
    test = compare(EmulatedModel(program), data.test.x, data.test.y, "test", progress=False)
    cores = [EmulatorCore(bank.config) for bank in program.banks]
    return {"word": word, "states": [str(bank.config.state) for bank in program.banks],
            "float": test.float, "fixed": test.fixed, "deviation": test.deviation,
            "saturation": test.saturation,
            **check.measure(cores), "seconds": time.perf_counter() - started}


def default_nudge(run: Path, data, word: int, check: GradientCheck) -> dict:
    """The gradient measurement with the emulator's default nudge floor (2^-6 state units) instead of
    the linear banks' 2^-10 of the state range that lowering sets."""
    program = lower(compile_model(run, "emulator", data.train.x, word_bits=word))
    return check.measure([EmulatorCore(dataclasses.replace(bank.config, min_nudge_lsbs=None))
                          for bank in program.banks])


def table(rows: list[dict], float_rhel: dict, nudge: dict, word: int) -> str:
    lines = ["| word bits | state formats (block 0, 1) | test acc. float | test acc. fixed | Δ points | "
             "output deviation | saturation (test) | 1 − cos, bank params | norm ratio | 1 − cos, ∂L/∂x | "
             "norm ratio | echo saturation | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        saturation = ", ".join(f"{node}: {sum(c.values())}" for node, c in r["saturation"].items())
        lines.append(f"| {r['word']} | {', '.join(r['states'])} | {100 * r['float']:.1f}% | "
                     f"{100 * r['fixed']:.1f}% | {100 * (r['fixed'] - r['float']):+.1f} | {r['deviation']:.1e} | "
                     f"{saturation or 'none'} | {gradient_cells(r)} | "
                     f"{r['seconds']:.2f} |")
    lines.append(f"| {word}, default nudge | — | — | — | — | — | — | {gradient_cells(nudge)} | — |")
    lines.append(f"| float64 RHEL | — | — | — | — | — | — | {gradient_cells(float_rhel)} | — |")
    return "\n".join(lines)


def gradient_cells(r: dict) -> str:
    return (f"{1 - r['bank_cosine']:.1e} | {r['bank_norm']:.4f} | {1 - r['input_cosine']:.1e} | "
            f"{r['input_norm']:.4f} | {r['echo_saturation'] or 'none'}")


def verdict(rows: list[dict], default: int) -> str:
    row = next((r for r in rows if r["word"] == default), None)
    if row is None:
        return f"The default word length ({default} bits) was not measured."
    points = abs(100 * (row["fixed"] - row["float"]))
    cosine = min(row["bank_cosine"], row["input_cosine"])
    met = points <= GOAL_POINTS and cosine >= GOAL_COSINE
    return (f"Goal at the default {default}-bit word: accuracy within {GOAL_POINTS:g} point of float "
            f"(measured {points:.1f}) and gradient cosine ≥ {GOAL_COSINE} (measured 1 − cos ≤ "
            f"{1 - cosine:.1e}) — {'met' if met else 'NOT met'}.")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="reuse this run directory instead of training one")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--words", type=int, nargs="+", default=list(WORDS))
    parser.add_argument("--batch", type=int, default=16, help="training sequences in the gradient batch")
    parser.add_argument("--write", action="store_true",
                        help="replace this benchmark's section of docs/results.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        run = args.run or Path(scratch) / "basicmotions-rhel"
        config, train_seconds = (load_config(run / "config.yaml"), 0.0) if args.run else train(run, args.seed)
        dataset = dict(config["dataset"])
        data = load_dataset(dataset.pop("name"), seed=config["seed"], **dataset)
        check = GradientCheck(run, data.train.x[:args.batch], data.train.y[:args.batch])
        rows = [measure_word(run, data, word, check) for word in args.words]
        float_rhel = check.measure([FloatCore() for _ in check.model.hrus()])
        default_word = capabilities("emulator").default_word_bits
        nudge = default_nudge(run, data, default_word, check)
    trained = f"trained in {train_seconds:.1f} s" if not args.run else f"reused from {args.run}"
    text = (f"## Word length vs accuracy and RHEL gradient fidelity (benchmarks/bench_wordlength.py)\n\n"
            f"BasicMotions, the default `echoforge train` config ({config['model']['hru']} HSSM, "
            f"{config['model']['num_blocks']} blocks × {config['model']['state_size']} oscillators, "
            f"{config['learning'].upper()}, {config['steps']} steps, seed {config['seed']}; {trained}). "
            f"Test split: {len(data.test.x)} sequences; gradient batch: the first {args.batch} training "
            "sequences, cross-entropy, model in eval mode. Output deviation: max |fixed − float| / "
            "max |float| of the logits over the test split. Formats calibrated on the training split with "
            "1 bit of headroom. Gradients are RHEL with the banks on EmulatorCores (host layers float64 "
            "torch) against float64 BPTT; bank params = oscillator parameters and input maps B of both "
            "HRUs. The row 'default nudge' repeats the gradient measurement with the emulator's default echo "
            "nudge (largest nudge 2^-6 state units) instead of the 2^-10 of the state range that lowering "
            "gives linear banks.\n\n" + table(rows, float_rhel, nudge, default_word) + "\n\n"
            + verdict(rows, default_word))
    print(text)
    if args.write:
        from results_doc import write_section
        write_section("bench_wordlength", text)


if __name__ == "__main__":
    main()
