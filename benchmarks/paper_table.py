"""Reproduce the paper's Table 1 rows for SCP1/SCP2 — and any config, such as the adding problem:
BPTT vs RHEL over seeds.

Each run is `echoforge train CONFIG --learning RULE --seed S` in its own process; the table reports
mean ± std of the test metric (accuracy, or MSE for regression) at the best-validation checkpoint and
the wall time per run.

    python benchmarks/paper_table.py --configs configs/scp1-linear.yaml configs/scp1-nonlinear.yaml \
        --seeds 0 1 2 [--write]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parents[1]


def run(config: Path, rule: str, seed: int, runs: Path) -> dict:
    output = runs / f"{config.stem}-{rule}-seed{seed}"
    summary_path = output / "summary.json"
    if not summary_path.exists():
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "echoforge.cli", "train", str(config), "--learning", rule,
                        "--seed", str(seed), "-o", str(output), "--no-progress"], check=True, cwd=ROOT)
        print(f"  {output.name}: {time.perf_counter() - started:.0f} s", flush=True)
    return json.loads(summary_path.read_text())


# How each task's test metric is shown: (summary key, scale, decimals, column name).
METRICS = {"accuracy": ("accuracy", 100, 1, "test acc. (%)"), "mse": ("mse", 1, 4, "test MSE")}


def metric_of(summary: dict) -> str:
    return "accuracy" if "accuracy" in summary["test"] else "mse"


def mean_std(values: list[float], scale: float, decimals: int) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.mean(values):.{decimals}f} ± {scale * spread:.{decimals}f}"


def table(results: dict) -> str:
    lines = ["| config | metric | BPTT | RHEL | RHEL − BPTT | s/run BPTT | s/run RHEL | seeds |",
             "|---|---|---|---|---|---|---|---|"]
    for config, by_rule in results.items():
        key, scale, decimals, name = METRICS[metric_of(by_rule["rhel"][0])]
        values = {rule: [s["test"][key] for s in runs] for rule, runs in by_rule.items()}
        secs = {rule: statistics.mean(s["seconds"] for s in runs) for rule, runs in by_rule.items()}
        gap = scale * (statistics.mean(values["rhel"]) - statistics.mean(values["bptt"]))
        lines.append(f"| {config} | {name} | {mean_std(values['bptt'], scale, decimals)} | "
                     f"{mean_std(values['rhel'], scale, decimals)} | {gap:+.{decimals}f} | "
                     f"{secs['bptt']:.0f} | {secs['rhel']:.0f} | {len(values['rhel'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=Path, nargs="+", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "paper")
    parser.add_argument("--write", action="store_true", help="write the table into docs/results.md")
    args = parser.parse_args()
    results = {}
    for config in args.configs:
        results[config.stem] = {rule: [run(config, rule, seed, args.runs) for seed in args.seeds]
                                for rule in ("bptt", "rhel")}
    report = "\n\n".join([
        f"## BPTT vs RHEL on real and long tasks: {', '.join(results)} (benchmarks/paper_table.py)",
        "Test metric at the best-validation checkpoint, mean ± std over seeds (each seed changes the "
        "70/15/15 split, the initialisation and dropout). Configs in `configs/` say how they scale the "
        "paper's hyper-parameters down. s/run is wall time on the 2-core machine while other jobs "
        "shared it — an upper bound; `echoforge train` on an idle machine is faster.",
        table(results)])
    if args.write:
        figures = [copy_curves(args.runs, config.stem, args.seeds[0]) for config in args.configs]
        report += "\n\nLearning curves (RHEL, seed {}): {}".format(
            args.seeds[0], ", ".join(f"`docs/{figure.name}`" for figure in figures))
    print(report)
    if args.write:
        from results_doc import write_section
        write_section("paper_table_" + "_".join(c.stem for c in args.configs), report)


def copy_curves(runs: Path, config: str, seed: int) -> Path:
    """The RHEL run's learning-curve plot, kept beside the results."""
    figure = ROOT / "docs" / f"{config}-rhel-curves.png"
    shutil.copyfile(runs / f"{config}-rhel-seed{seed}" / "curves.png", figure)
    return figure


if __name__ == "__main__":
    main()
