"""What one training step of the paper's own SCP1 models costs on this machine.

The paper trains 6 blocks, hidden 64 (linear) / 128 (nonlinear), 256 oscillators, batch 32, for 100,000
steps. This builds that model on SCP1 from configs/scp1-*.yaml with the paper's sizes and times a few
RHEL steps after one warm-up step, to say how long the paper's runs would take here.

    python benchmarks/paper_scale.py [--steps 3] [--write]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]
PAPER = {"linear": ["model.num_blocks=6", "model.hidden_size=64", "model.state_size=256", "model.dropout=0.05"],
         "nonlinear": ["model.num_blocks=6", "model.hidden_size=128", "model.state_size=256", "model.dropout=0.05"]}
PAPER_STEPS = 100_000


def seconds_per_step(kind: str, steps: int) -> float:
    from echoforge.models.training import Trainer, load_config
    config = load_config(ROOT / "configs" / f"scp1-{kind}.yaml", PAPER[kind])
    with tempfile.TemporaryDirectory() as output:
        trainer = Trainer(config, output)
        trainer.train_step()  # warm-up
        started = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    for kind in PAPER:
        seconds = seconds_per_step(kind, args.steps)
        rows.append(f"| SCP1 {kind} | {', '.join(s.split('=', 1)[1] for s in PAPER[kind][:3])} | {seconds:.2f} | "
                    f"{seconds * PAPER_STEPS / 3600:.0f} |")
    report = "\n".join([
        "## The paper's SCP1 models on this machine (benchmarks/paper_scale.py)", "",
        f"RHEL training step of the paper's model size (blocks, hidden, oscillators), batch 32, one thread, "
        f"mean of {args.steps} steps after a warm-up; hours for the paper's {PAPER_STEPS:,} steps.", "",
        "| model | blocks, hidden, oscillators | s / step | hours / run |", "|---|---|---|---|", *rows])
    print(report)
    if args.write:
        from results_doc import write_section
        write_section("paper_scale", report)


if __name__ == "__main__":
    main()
