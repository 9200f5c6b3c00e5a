"""Time and memory of a gradient step, BPTT vs RHEL, linear vs nonlinear HRU, over sequence length.

Config (issue "Foundation and models"): 2 blocks, hidden 16, state 16, batch 8, 6 inputs, 4 classes,
float32 models. Each configuration runs in its own process so peak memory is its own; the table puts
RHEL and BPTT side by side from one run, in rounds that run every configuration once each (interleaved:
a swing in the shared machine's load lands on all of them, and the rounds' spread shows it).

    python benchmarks/bench_hru.py [--lengths 1000 4000 16000 50000] [--rounds 3] [--write]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

def status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak() -> None:
    """Reset VmHWM (peak resident memory) to the current RSS (Linux clear_refs, value 5)."""
    Path("/proc/self/clear_refs").write_text("5")


VARIANTS = ("bptt", "rhel", "rhel+store", "bptt+store")  # rule, and "+store": checkpoint_glue=False


def worker(kind: str, variant: str, length: int, repeats: int) -> dict:
    import torch

    from echoforge.models import HSSM
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rule, _, store = variant.partition("+")
    model = HSSM(6, 4, hidden_size=16, state_size=16, num_blocks=2, hru=kind, learning=rule,
                 checkpoint_glue=not store)
    x, y = torch.randn(8, length, 6), torch.randint(0, 4, (8,))

    def step():
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()

    for _ in range(2):
        step()  # compile, warm up
    idle = status_kb("VmRSS") * 1024
    reset_peak()
    times = []
    for _ in range(repeats):
        start = time.process_time()  # CPU time (all threads): the machine is shared
        step()
        times.append(time.process_time() - start)
    peak = status_kb("VmHWM") * 1024
    return {"seconds": statistics.median(times), "peak_bytes": peak, "step_bytes": peak - idle}


def layer_backward_extra(kind: str, rule: str, length: int) -> int:
    """Memory the HRU layer's backward adds beyond its inputs and outputs (one layer alone).

    Peak during backward minus the memory held before it, minus the gradient stream the backward
    must return (∂L/∂u, same size and dtype as the input u).
    """
    import torch

    from echoforge.models import LinHRU, NonlinHRU
    import ctypes

    torch.set_num_threads(1)
    hru = (LinHRU if kind == "linear" else NonlinHRU)(16, 16, learning=rule)
    hru.bank(torch.randn(8, 100, 16, requires_grad=True)).sum().backward()  # compile
    u = torch.randn(8, length, 16, requires_grad=True)
    positions = hru.bank(u)
    upstream = 1e-3 * torch.randn_like(positions)  # a loss gradient's scale
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed memory back so new allocations show
    baseline = status_kb("VmRSS") * 1024
    reset_peak()
    positions.backward(upstream)
    extra = status_kb("VmHWM") * 1024 - baseline
    return extra - u.numel() * u.element_size()


def measured(kind: str, variant: str, length: int) -> dict:
    """One configuration in a process of its own."""
    repeats = 3 if length <= 16000 else 2
    out = subprocess.run([sys.executable, __file__, "--worker", kind, variant, str(length), str(repeats)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def run_all(lengths: list[int], rounds: int) -> list[dict]:
    """Every configuration once a round; a row holds the median over rounds and each round's seconds."""
    configs = [(kind, variant, length) for length in lengths for kind in ("linear", "nonlinear") for variant in VARIANTS]
    draws = {config: [] for config in configs}
    for round_ in range(rounds):
        for kind, variant, length in configs:
            draw = measured(kind, variant, length)
            draws[(kind, variant, length)].append(draw)
            print(f"  round {round_ + 1}: {kind:9s} {variant:10s} L={length:6d}: {draw['seconds']:.3f} s/step, "
                  f"peak {draw['peak_bytes'] / 2**20:.0f} MiB", flush=True)
    rows = []
    for (kind, variant, length), found in draws.items():
        row = {"kind": kind, "variant": variant, "length": length, "rounds": [d["seconds"] for d in found]}
        row.update({key: statistics.median(d[key] for d in found) for key in ("seconds", "peak_bytes", "step_bytes")})
        if variant == "rhel":
            out = subprocess.run([sys.executable, __file__, "--layer", kind, "rhel", str(length)],
                                 check=True, capture_output=True, text=True)
            row["echo_extra_bytes"] = int(out.stdout)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    by = {(r["kind"], r["variant"], r["length"]): r for r in rows}
    mib = 2 ** 20
    lines = ["| HRU | length | variant | s/step | × BPTT time (rounds' range) | peak MiB | × BPTT peak | step MiB "
             "| × BPTT step |", "|---|---|---|---|---|---|---|---|---|"]
    for kind in ("linear", "nonlinear"):
        for length in sorted({r["length"] for r in rows}):
            bptt = by[(kind, "bptt", length)]
            for variant in VARIANTS:
                r = by[(kind, variant, length)]
                lines.append(
                    f"| {kind} | {length} | {variant} | {r['seconds']:.3f} | "
                    f"{r['seconds'] / bptt['seconds']:.2f} ({round_ratios(r, bptt)}) | {r['peak_bytes'] / mib:.0f} | "
                    f"{r['peak_bytes'] / bptt['peak_bytes']:.2f} | {r['step_bytes'] / mib:.0f} | "
                    f"{r['step_bytes'] / bptt['step_bytes']:.2f} |")
    return "\n".join(lines)


def round_ratios(row: dict, bptt: dict) -> str:
    """The lowest and highest of the rounds' time ratios (each round's against the same round's BPTT)."""
    ratios = [seconds / base for seconds, base in zip(row["rounds"], bptt["rounds"])]
    return f"{min(ratios):.2f}–{max(ratios):.2f}"


def flatness(rows: list[dict]) -> str:
    lines = []
    for kind in ("linear", "nonlinear"):
        extra = {r["length"]: r["echo_extra_bytes"] for r in rows
                 if r["kind"] == kind and r["variant"] == "rhel"}
        lo, hi = min(extra), max(extra)
        lines.append(f"- {kind} HRU layer alone: RHEL backward adds {extra[hi] / 2**20:.2f} MiB at "
                     f"L={hi} and {extra[lo] / 2**20:.2f} MiB at L={lo} (ratio {extra[hi] / extra[lo]:.2f})")
        peaks = {(r["variant"], r["length"]): r["peak_bytes"] for r in rows if r["kind"] == kind}
        growth = [f"{variant} {(peaks[(variant, hi)] - peaks[(variant, lo)]) / 2**20 / (hi - lo) * 1000:.2f}"
                  for variant in VARIANTS]
        lines.append(f"- {kind} HSSM: peak growth in MiB per 1,000 steps (L={lo} → {hi}): " + ", ".join(growth)
                     + f"; the input itself is {8 * 6 * 4 * 1000 / 2**20:.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1000, 4000, 16000, 50000])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the table: their medians)")
    parser.add_argument("--write", action="store_true", help="write the table into docs/results.md")
    parser.add_argument("--worker", nargs=4, metavar=("KIND", "VARIANT", "LENGTH", "REPEATS"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--layer", nargs=3, metavar=("KIND", "RULE", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: at least one round")
    if args.layer:
        kind, rule, length = args.layer
        print(layer_backward_extra(kind, rule, int(length)))
        return
    if args.worker:
        kind, variant, length, repeats = args.worker
        print(json.dumps(worker(kind, variant, int(length), int(repeats))))
        return
    rows = run_all(args.lengths, args.rounds)
    report = "\n\n".join([
        "## HRU gradient step: BPTT vs RHEL (benchmarks/bench_hru.py)",
        "2 blocks, hidden 16, state 16, batch 8, 6 inputs, 4 classes, float32 models, torch on one "
        "thread and the compiled kernels on every CPU (their default); median CPU seconds per gradient "
        "step, all threads (forward + backward; CPU time rather than wall time because the machine is "
        f"shared), the median of {args.rounds} rounds that each run every configuration once, with the range of "
        "the rounds' ratios to BPTT (the kernels' idle threads count, so the times swing with scheduling); peak "
        "resident memory of the process "
        "(\"peak\") and the part of it above the idle process after warm-up (\"step\"); each "
        "configuration in its own process. Variants: BPTT and RHEL as built by default (the feed-forward "
        "glue recomputed in backward, chunk by chunk), and each with the glue's activations stored "
        "(`checkpoint_glue=False`, \"+store\"). Against the public JAX reference, side by side: "
        "benchmarks/bench_reference.py.",
        table(rows), flatness(rows)])
    print(report)
    if args.write:
        from results_doc import write_section
        write_section("bench_hru", report)


if __name__ == "__main__":
    main()
