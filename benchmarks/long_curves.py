"""Training curves at long sequence lengths: RHEL against BPTT from the same start.

Both runs share the seed — initialisation, batches and dropout masks — so any gap between the
curves is the gradient's doing. The adding problem (predicting the mean scores MSE ≈ 0.167).

    python benchmarks/long_curves.py [--length 16000 --steps 100 --hru linear --dtype float32] [--write]

Float32 curves part after some steps however exact the gradient: RHEL and BPTT each round their float32
positions differently, and Adam divides every gradient by its own running size, so a difference of
one float32 rounding in a parameter whose gradient is near zero becomes a different step. --dtype
float64 shows what is left when the arithmetic is not the limit.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def trainer_for(rule: str, hru: str, length: int, seed: int, dtype: str, output: str):
    from echoforge.models.training import Trainer, load_config
    config = load_config(None, [
        f"dataset={{name: adding, length: {length}, size: 256}}", f"learning={rule}", f"seed={seed}",
        "batch_size=8", "optimizer.lr=0.001", "grad_clip=1.0", "model.dropout=0.0", "model.num_blocks=2",
        "model.readout=mean", f"model.hru={hru}", f"dtype={dtype}"])
    return Trainer(config, output)


def curve(rule: str, hru: str, length: int, steps: int, seed: int, dtype: str) -> tuple[list[float], float]:
    with tempfile.TemporaryDirectory() as output:
        trainer = trainer_for(rule, hru, length, seed, dtype, output)
        started = time.perf_counter()
        losses = [trainer.train_step() for _ in range(steps)]
    return losses, (time.perf_counter() - started) / steps


def first_step_agreement(hru: str, length: int, seed: int, dtype: str) -> tuple[float, float]:
    """RHEL's and BPTT's gradient at the same parameters and batch (the first step's): 1 − cosine, and
    the largest relative difference of one parameter tensor."""
    with tempfile.TemporaryDirectory() as output:
        trainer = trainer_for("bptt", hru, length, seed, dtype, output)
        x, y = trainer.batch(0)
        grads = {}
        for rule in ("bptt", "rhel"):
            trainer.model.set_learning(rule)
            trainer.model.zero_grad()
            trainer.loss(trainer.model(x), y).backward()
            grads[rule] = {n: p.grad.double().clone() for n, p in trainer.model.named_parameters()
                           if p.grad is not None}
    bptt, rhel = grads["bptt"], grads["rhel"]
    a, b = (torch.cat([g[n].flatten() for n in bptt]) for g in (rhel, bptt))
    worst = max(float((rhel[n] - bptt[n]).norm() / bptt[n].norm()) for n in bptt if bptt[n].norm() > 0)
    return 1 - float(a @ b / (a.norm() * b.norm())), worst


def plot(curves: dict, length: int, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for rule, losses in curves.items():
        ax.plot(np.arange(1, len(losses) + 1), losses, label=rule.upper(), alpha=0.8)
    ax.axhline(1 / 6, color="grey", linestyle=":", label="predict the mean")
    ax.set(xlabel="step", ylabel="training MSE", title=f"adding problem, length {length}", yscale="log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", type=int, default=16000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hru", choices=("linear", "nonlinear"), default="linear")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    curves, seconds = {}, {}
    for rule in ("bptt", "rhel"):
        curves[rule], seconds[rule] = curve(rule, args.hru, args.length, args.steps, args.seed, args.dtype)
    one_minus_cos, worst = first_step_agreement(args.hru, args.length, args.seed, args.dtype)
    bptt, rhel = np.array(curves["bptt"]), np.array(curves["rhel"])
    gap = np.abs(rhel - bptt) / bptt
    parted = int(np.argmax(gap > 1e-2)) + 1 if (gap > 1e-2).any() else None
    tag = f"{args.hru}-{args.length}" + ("" if args.dtype == "float32" else f"-{args.dtype}")
    figure = Path(__file__).resolve().parents[1] / "docs" / f"adding-{tag}-curves.png"
    plot(curves, args.length, figure)
    marks = sorted({1, min(10, args.steps), max(args.steps // 2, 1), args.steps})
    rows = "\n".join(f"| {k} | {bptt[k - 1]:.4f} | {rhel[k - 1]:.4f} |" for k in marks)
    report = (f"## Long sequences: RHEL tracks BPTT, {args.hru}, {args.dtype} (benchmarks/long_curves.py)\n\n"
              f"Adding problem, length {args.length}, {args.hru} HSSM (2 blocks, hidden 16, state 16, time-mean "
              f"readout as configs/adding-1000.yaml), {args.dtype}, batch 8, Adam 1e-3, gradient norm clipped "
              f"at 1, same seed for both rules. At the first step's parameters and batch, RHEL's gradient vs "
              f"BPTT's: 1 − cos {one_minus_cos:.1e}, largest relative difference of a parameter tensor "
              f"{worst:.1e}. Relative loss gap |RHEL − BPTT| / BPTT over {args.steps} steps: median "
              f"{np.median(gap):.2e}, max {gap.max():.2e}; first above 1%: "
              f"{'never' if parted is None else f'step {parted}'}. Seconds per step: BPTT "
              f"{seconds['bptt']:.2f}, RHEL {seconds['rhel']:.2f}. Plot: `docs/{figure.name}`.\n\n"
              f"| step | BPTT loss | RHEL loss |\n|---|---|---|\n{rows}")
    print(report)
    if args.write:
        from results_doc import write_section
        write_section(f"long_curves_{tag.replace('-', '_')}", report)


if __name__ == "__main__":
    main()
