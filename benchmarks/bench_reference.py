"""Side by side with the public JAX reference: seconds and peak memory of one RHEL gradient step.

The reference (github: guillaumepourcel/rhel, MIT) runs from a checkout in its own virtual environment
through the shared harness's worker (official_jax_bench.py, ../shared/bench/README.md says how to set
both up); echoforge runs in its own process through this file's worker, which speaks the same protocol
(`--worker-config JSON`, so the harness can also run it with `--extra-impl`). Every configuration runs
in a fresh process per side, so a peak is that configuration's own; the two sides take turns process by
process (the order alternating between rounds), so a busy spell on the shared machine hits both, and the
speed-up is the median of the rounds' ratios. Both sides run their defaults: echoforge's HSSM as built
by `HSSM(...)`, the reference as its `create_model` builds it, dropout p = 0.05 on both.

    python benchmarks/bench_reference.py --reference-dir DIR [--reference-python /work/jaxenv/bin/python]
        [--harness ../shared/bench/official_jax_bench.py] [--rounds 3] [--sizes small scp1] [--write]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_hru import reset_peak, status_kb  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULT_MARKER = "@@RESULT@@"
HRUS = {"linear (complex)": ("LinHRU", True), "linear (real)": ("LinHRU", False),
        "nonlinear": ("NonlinHRU", True)}
# The harness's options per size: the model (2 blocks, hidden 16, state 16, batch 8) at two
# lengths, and the paper's SCP1 model (6 blocks, hidden 64, 256 oscillators, batch 32, length 896).
SIZES = {
    "16k": ["--lengths", "16000"],
    "50k": ["--lengths", "50000"],
    "scp1": ["--lengths", "896", "--batch", "32", "--data-dim", "7", "--num-classes", "2",
             "--hidden-dim", "64", "--ssm-dim", "256", "--num-blocks", "6"],
}
MIB = 2 ** 20


# ------------------------------------------------------------------------------ echoforge's worker

def synthetic_batch(cfg: dict):
    """The harness's synthetic classification data (same generator, same draws)."""
    import numpy as np
    import torch
    rng = np.random.default_rng(cfg["data_seed"])
    x = rng.standard_normal((cfg["batch"], cfg["seq_len"], cfg["data_dim"])).astype(np.float32)
    labels = rng.integers(0, cfg["num_classes"], size=cfg["batch"])
    return torch.from_numpy(x), torch.from_numpy(labels)


def echoforge_model(cfg: dict):
    """echoforge's HSSM for a harness configuration, with echoforge's defaults for everything else."""
    from echoforge.models import HSSM
    options = {"complex_state": cfg["complex_ssm"]} if cfg["model"] == "LinHRU" else {}
    if not cfg["dropout"]:
        options["dropout"] = 0.0
    return HSSM(cfg["data_dim"], cfg["num_classes"], hidden_size=cfg["hidden_dim"],
                state_size=cfg["ssm_dim"], num_blocks=cfg["num_blocks"],
                hru="linear" if cfg["model"] == "LinHRU" else "nonlinear",
                learning=cfg["algo"].lower(), epsilon=cfg["epsilon"], **options)


def run_worker(cfg: dict) -> dict:
    """Time gradient steps (forward + backward of the cross-entropy) as the harness's worker does:
    after a short warm-up that loads the compiled kernels, the peak is reset, then the first full
    step (untimed, its allocations count) and the timed steps."""
    import torch

    from echoforge.models import core
    torch.set_num_threads(1)  # as `echoforge train` runs (--threads 1); the kernels use every CPU
    torch.manual_seed(cfg["param_seed"])
    load_before = os.getloadavg()[0]
    model = echoforge_model(cfg)
    x, labels = synthetic_batch(cfg)

    def step(inputs):
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()

    started = time.perf_counter()
    step(x[:, :min(cfg["seq_len"], 64)].contiguous())
    compile_s = time.perf_counter() - started
    rss_before = status_kb("VmRSS")
    reset_peak()
    started = time.perf_counter()
    step(x)
    first_call_s = time.perf_counter() - started
    times, cpu0, loop_start = [], time.process_time(), time.perf_counter()
    while len(times) < cfg["repeats"]:
        started = time.perf_counter()
        step(x)
        times.append(time.perf_counter() - started)
        if time.perf_counter() - loop_start > cfg["max_run_seconds"] and len(times) >= cfg["min_repeats"]:
            break
    peak = status_kb("VmHWM")
    return dict(cfg, ok=True, times_s=times, median_s=statistics.median(times), min_s=min(times),
                max_s=max(times), n_runs=len(times), compile_s=compile_s, first_call_s=first_call_s,
                cpu_s_per_call=(time.process_time() - cpu0) / len(times),
                threads={"torch": torch.get_num_threads(), "kernels": core.get_num_threads()},
                loadavg_1min=[load_before, os.getloadavg()[0]],
                mem={"rss_after_compile_mib": rss_before / 1024, "peak_rss_steps_mib": peak / 1024,
                     "delta_rss_steps_mib": (peak - rss_before) / 1024,
                     "peak_rss_total_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


# ------------------------------------------------------------------------------ the driver

def load_harness(path: Path):
    spec = importlib.util.spec_from_file_location("official_jax_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def configs(harness, args, workdir: str) -> list[tuple[str, str, dict]]:
    """(hru label, size, harness configuration) for every wanted HRU and size."""
    out = []
    for size in args.sizes:
        for label in args.hrus:
            model, complex_ssm = HRUS[label]
            options = harness.build_parser().parse_args(
                [*SIZES[size], "--repeats", str(args.repeats), "--min-repeats", "2",
                 "--max-run-seconds", "60", "--complex-ssm" if complex_ssm else "--no-complex-ssm",
                 "--dropout" if args.dropout else "--no-dropout"])
            cfg = harness.make_config(options, harness.OFFICIAL_IMPL, model, "RHEL",
                                      options.lengths[0], workdir, args.reference_dir)
            cfg.update(grads_out=None, params_out=None, params_in=None)
            out.append((label, size, cfg))
    return out


def run_process(command: list[str], cfg: dict, impl: str, timeout: float) -> dict:
    cfg = dict(cfg, impl=impl)
    try:
        proc = subprocess.run([*command, "--worker-config", json.dumps(cfg)], capture_output=True,
                              text=True, timeout=timeout, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    except subprocess.TimeoutExpired:
        return dict(cfg, ok=False, error=f"timeout after {timeout:.0f} s")
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            return json.loads(line[len(RESULT_MARKER):])
    return dict(cfg, ok=False, error=f"exit code {proc.returncode}: {proc.stderr[-600:]}")


def measure(args, harness_path: Path) -> list[dict]:
    from tqdm import tqdm
    harness = load_harness(harness_path)
    sides = {"reference": [args.reference_python, str(harness_path)],
             "echoforge": [sys.executable, str(Path(__file__).resolve())]}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_reference_") as workdir:
        todo = configs(harness, args, workdir)
        bar = tqdm(total=len(todo) * args.rounds * 2, desc="processes", file=sys.stderr)
        for label, size, cfg in todo:
            runs = {side: [] for side in sides}
            for round_index in range(args.rounds):
                order = list(sides) if round_index % 2 == 0 else list(sides)[::-1]
                for side in order:
                    result = run_process(sides[side], cfg, side, args.timeout)
                    runs[side].append(result)
                    bar.update()
                    if not result.get("ok"):
                        bar.write(f"{label} {size} {side}: {result.get('error')}")
            rows.append({"hru": label, "size": size, "seq_len": cfg["seq_len"], "runs": runs})
            bar.write(summary_line(rows[-1]))
            if args.json:  # after every configuration: a long run interrupted keeps what it measured
                Path(args.json).write_text(json.dumps(rows, indent=1))
        bar.close()
    return rows


# ------------------------------------------------------------------------------ report

def side_stats(runs: list[dict]) -> dict | None:
    good = [r for r in runs if r.get("ok")]
    if not good:
        return None
    return {"seconds": statistics.median(r["median_s"] for r in good),
            "cpu_seconds": statistics.median(r["cpu_s_per_call"] for r in good),
            "mib": statistics.median(r["mem"]["peak_rss_steps_mib"] for r in good),
            "step_mib": statistics.median(r["mem"]["delta_rss_steps_mib"] for r in good),
            "spread": (min(r["median_s"] for r in good), max(r["median_s"] for r in good)),
            "threads": good[0].get("threads")}


def round_ratios(row: dict) -> list[float]:
    pairs = zip(row["runs"]["reference"], row["runs"]["echoforge"])
    return [ref["median_s"] / ours["median_s"] for ref, ours in pairs if ref.get("ok") and ours.get("ok")]


def summary_line(row: dict) -> str:
    ref, ours = side_stats(row["runs"]["reference"]), side_stats(row["runs"]["echoforge"])
    if not ref or not ours:
        return f"{row['hru']} {row['size']}: failed"
    ratios = round_ratios(row)
    return (f"{row['hru']:17s} {row['size']:5s} reference {ref['seconds']:.3f} s {ref['mib']:.0f} MiB, "
            f"echoforge {ours['seconds']:.3f} s {ours['mib']:.0f} MiB, speed-up "
            f"{statistics.median(ratios):.2f}× (rounds {min(ratios):.2f}–{max(ratios):.2f})")


def table(rows: list[dict]) -> str:
    lines = ["| HRU | size | reference s | echoforge s | speed-up (rounds) | CPU s reference / echoforge "
             "| reference MiB | echoforge MiB | memory ratio | reference step MiB | echoforge step MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ref, ours = side_stats(row["runs"]["reference"]), side_stats(row["runs"]["echoforge"])
        if not ref or not ours:
            errors = {s: next((r.get("error") for r in row["runs"][s] if not r.get("ok")), "")
                      for s in row["runs"]}
            lines.append(f"| {row['hru']} | {row['size']} | failed: {errors} | | | | | | | | |")
            continue
        ratios = round_ratios(row)
        lines.append(
            f"| {row['hru']} | {row['size']} | {ref['seconds']:.3f} | {ours['seconds']:.3f} | "
            f"{statistics.median(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f}) | "
            f"{ref['cpu_seconds']:.3f} / {ours['cpu_seconds']:.3f} | {ref['mib']:,.0f} | "
            f"{ours['mib']:,.0f} | {ours['mib'] / ref['mib']:.2f} | {ref['step_mib']:,.0f} | "
            f"{ours['step_mib']:,.0f} |")
    return "\n".join(lines)


def growth(rows: list[dict]) -> str:
    """Peak memory per 1,000 steps between the two lengths, per side."""
    lines = []
    for hru in dict.fromkeys(r["hru"] for r in rows):
        by_size = {r["size"]: r for r in rows if r["hru"] == hru}
        if "16k" not in by_size or "50k" not in by_size:
            continue
        parts = []
        for side in ("reference", "echoforge"):
            short, long = (side_stats(by_size[s]["runs"][side]) for s in ("16k", "50k"))
            if short and long:
                parts.append(f"{side} {(long['mib'] - short['mib']) / 34:.1f}")
        lines.append(f"- {hru}: MiB per 1,000 steps (16k → 50k): " + ", ".join(parts))
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    good = [(r, side_stats(r["runs"]["reference"]), side_stats(r["runs"]["echoforge"])) for r in rows]
    good = [(r, a, b) for r, a, b in good if a and b]
    labels = [f"{r['hru'].replace(' (', chr(10) + '(')}\n{r['size']}" for r, _, _ in good]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for ax, key, title in ((axes[0], "seconds", "seconds per RHEL step"),
                           (axes[1], "mib", "peak resident memory (MiB)")):
        positions = range(len(good))
        ax.bar([p - 0.2 for p in positions], [a[key] for _, a, _ in good], 0.4, label="JAX reference")
        ax.bar([p + 0.2 for p in positions], [b[key] for _, _, b in good], 0.4, label="echoforge")
        ax.set_xticks(list(positions), labels, fontsize=7)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def load_range(rows: list[dict]) -> str:
    """The 1-minute load average seen at the start and end of every process, both sides."""
    loads = [load for row in rows for runs in row["runs"].values() for run in runs
             for load in run.get("loadavg_1min") or [] if load is not None]
    return f"{min(loads):.1f}–{max(loads):.1f}" if loads else "not recorded"


def rounds_text(rows: list[dict]) -> str:
    """How many rounds each size ran (saved results of several runs may be merged)."""
    per_size = {}
    for row in rows:
        per_size.setdefault(len(row["runs"]["echoforge"]), []).append(row["size"])
    if len(per_size) == 1:
        return f"{next(iter(per_size))} round(s)"
    return "; ".join(f"{n} round(s) at {', '.join(dict.fromkeys(sizes))}" for n, sizes in per_size.items())


def report(rows: list[dict], args) -> str:
    ours = next((side_stats(r["runs"]["echoforge"]) for r in rows if side_stats(r["runs"]["echoforge"])), None)
    threads = ours["threads"] if ours else {}
    return "\n\n".join([
        "## Side by side with the public JAX reference (benchmarks/bench_reference.py)",
        f"RHEL gradient step (forward + backward of the cross-entropy), float32, "
        f"dropout {'on (p = 0.05, both sides)' if args.dropout else 'off'}, each side with its defaults; "
        f"sizes: 16k / 50k = 2 blocks, hidden 16, state 16, batch 8, 6 inputs, 4 classes at length "
        f"16,000 / 50,000; scp1 = the paper's SCP1 model (6 blocks, hidden 64, 256 oscillators, batch 32, "
        f"length 896, 7 inputs, 2 classes). Each side runs each configuration in a fresh process, "
        f"{rounds_text(rows)}, the two sides taking turns (order alternating); seconds: median over "
        f"rounds of each process's median wall time of up to {args.repeats} steps; speed-up: median of "
        f"the rounds' ratios (their range in brackets: how noisy the shared 2-core machine was). Memory: "
        f"peak resident set (VmHWM) from just before the first full step (compiled code and the "
        f"imported libraries included: torch alone is ~220 MiB resident) and, as 'step MiB', its rise "
        f"over the resident set before that step. Threads: the reference on XLA's defaults (its CPU "
        f"thread pool over every core: {os.cpu_count()} here), echoforge's torch on "
        f"{threads.get('torch')} (`echoforge train`'s default) and its compiled kernels on "
        f"{threads.get('kernels', 1)} (the batch rows split between them). 'CPU s': CPU time per "
        f"step, all threads: steadier than wall time when the machine is busy. The machine's "
        f"1-minute load average at the start and end of the processes: {load_range(rows)} "
        f"(the machine is shared: other work ran alongside).",
        table(rows), growth(rows), "![side by side](reference-side-by-side.png)"]
        + ([f"Rendered from the results a measuring run saved (`--json`, same sizes, --rounds and "
            f"--repeats, without --from-json)."] if args.from_json else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-dir", help="checkout of github: guillaumepourcel/rhel")
    parser.add_argument("--reference-python", default="/work/jaxenv/bin/python",
                        help="python of a venv with jax==0.6.2 equinox==0.13.4 optax==0.2.7")
    parser.add_argument("--harness", default=str(ROOT.parent / "shared" / "bench" / "official_jax_bench.py"))
    parser.add_argument("--hrus", nargs="+", choices=list(HRUS), default=list(HRUS))
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per process")
    parser.add_argument("--dropout", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per process")
    parser.add_argument("--json", help="also save the raw results here (after every configuration)")
    parser.add_argument("--from-json", help="report (and --write) the results saved by an earlier --json")
    parser.add_argument("--write", action="store_true", help="write the table into docs/results.md")
    parser.add_argument("--worker-config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_config:
        cfg = json.loads(args.worker_config)
        try:
            result = run_worker(cfg)
        except Exception as error:  # the driver records it and goes on
            result = dict(cfg, ok=False, error=repr(error))
        print(RESULT_MARKER + json.dumps(result), flush=True)
        return
    harness = Path(args.harness)
    missing = [] if args.from_json else [what for what, ok in (
        (f"the reference checkout (--reference-dir {args.reference_dir})",
         args.reference_dir and (Path(args.reference_dir) / "models" / "generate_model.py").is_file()),
        (f"the harness (--harness {harness})", harness.is_file()),
        (f"the reference's python (--reference-python {args.reference_python})",
         Path(args.reference_python).is_file()))
        if not ok]
    if missing:
        print(f"error: missing {', '.join(missing)}; set them up as ../shared/bench/README.md says "
              "(a checkout of github: guillaumepourcel/rhel, a venv with jax==0.6.2 jaxlib==0.6.2 "
              "equinox==0.13.4 optax==0.2.7)", file=sys.stderr)
        sys.exit(2)
    if args.from_json:
        rows = json.loads(Path(args.from_json).read_text())
    else:
        args.reference_dir = str(Path(args.reference_dir).resolve())
        rows = measure(args, harness)
    text = report(rows, args)
    print(text)
    if args.write:
        from results_doc import write_section
        plot(rows, ROOT / "docs" / "reference-side-by-side.png")
        write_section("bench_reference", text)


if __name__ == "__main__":
    main()
