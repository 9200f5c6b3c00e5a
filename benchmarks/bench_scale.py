"""Scale-out on torch.distributed (issue 12): step time and efficiency of 1 and 2 ranks, host training and
hardware-in-the-loop (one simulated board per rank, on ptys), and a model of step time against the number
of boards, checked against the measured 2-rank points.

Each configuration trains the same global batch: one process (in this process), then 2 ranks (gloo on
localhost, started with torch.multiprocessing.spawn, each building the trainer as `echoforge train
--nproc 2` / `hil train --device A --device B` do: models.distributed.make_trainer). A step is timed
from the trainer's train_step (batch, forward, backward with the all_reduces, optimizer step), median of
--steps steps after one warm-up step; efficiency = T₁ / (N·T_N).

The model: a step is a fixed part h (per-step host work and link round trips), a part per batch row s
(host layers and, in the loop, the board's compute and the line's transfer for that row), and k
collectives of latency a(N):

    T(N) = h + s·B/N + k·a(N),   a(N) = (N − 1)·a(2)   (gloo's ring all_reduce of a few kB: latency-bound)

h and s come from one process at batch B and B/2, a(2) from timing all_reduces between the 2 ranks, k
from the model (3 per block: batch-norm mean, variance and backward; 1 per bank in the loop: the echo's
largest nudge; 1 for the gradients). The 2-rank measurement is not used to fit it. For a board on a
UART, s gains the line time of a row's bytes (10 bits a byte; bytes from the device's counters).

    python benchmarks/bench_scale.py [--batch 16 --steps 15] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from echoforge.cli import main as echoforge
from echoforge.hil.distributed import BoardParallel
from echoforge.hil.trainer import ECHO_WARNINGS, HILTrainer, hil_config
from echoforge.models import distributed
from echoforge.models.training import Trainer, load_config
from echoforge.runtime.device import Device
from echoforge.runtime.simulator import simulated_board
from echoforge.targets.emulator.lower import load_program

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_doc import turns_seconds, write_section

MODEL = ["model.hidden_size=16", "model.state_size=16", "model.num_blocks=2"]
BAUD_RATES = (921600, 115200)
BOARDS = (1, 2, 4, 8, 16)
PLOT = Path(__file__).resolve().parents[1] / "docs" / "scale.png"


def quiet() -> None:
    """One thread, and no per-call echo warnings (a run counts them instead: hil.trainer)."""
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", ECHO_WARNINGS, RuntimeWarning)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def make(kind: str, batch: int, ranks, work: Path, board: str | None):
    """The trainer of one configuration (host or HIL), on `ranks` (None: one process)."""
    settings = [*MODEL, f"batch_size={batch}", "steps=1000", "eval_every=1000"]
    if kind == "host":
        return distributed.make_trainer(Trainer, ranks, load_config(None, settings), work / "host")
    program = load_program(work / "program")
    config = hil_config(program, work / "program", overrides=settings[len(MODEL):])
    device = Device(board, timeout=10.0)
    return distributed.make_trainer(HILTrainer, ranks, config, work / "hil", program, work / "program", device,
                                    fidelity_every=0, mixin=BoardParallel)


def step_seconds(trainers: dict, steps: int) -> dict:
    """Median seconds of a train_step of each trainer, after one warm-up step, the trainers taking turns step
    by step (a busy spell on a shared machine hits them all); closes their board sessions."""
    try:
        for trainer in trainers.values():
            trainer.train_step()
        return {name: statistics.median(times)
                for name, times in turns_seconds({name: t.train_step for name, t in trainers.items()}, steps).items()}
    finally:
        for trainer in trainers.values():
            if isinstance(trainer, HILTrainer):
                trainer.device.close()


def all_reduce_seconds(ranks, size: int, repeats: int = 200) -> float:
    """Median seconds of an all_reduce of `size` float32s between the ranks."""
    tensor = torch.zeros(size)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        distributed.all_reduce(tensor, ranks)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _rank(rank: int, size: int, port: int, kind: str, batch: int, steps: int, work: str, boards: list[str]):
    quiet()
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ranks = distributed.join()
    trainer = make(kind, batch, ranks, Path(work), boards[rank] if boards else None)
    parameters = sum(p.numel() for p in trainer.model.parameters())
    seconds = step_seconds({"step": trainer}, steps)["step"]
    reduce = all_reduce_seconds(ranks, parameters)
    if ranks.leader:
        Path(work, f"{kind}.json").write_text(json.dumps({"step": seconds, "all_reduce": reduce}))
    torch.distributed.barrier()  # no rank tears the group down while another still uses it
    torch.distributed.destroy_process_group()


def on_two_ranks(kind: str, batch: int, steps: int, work: Path, boards: list[str] = ()) -> dict:
    torch.multiprocessing.spawn(_rank, (2, free_port(), kind, batch, steps, str(work), list(boards)), nprocs=2)
    return json.loads((work / f"{kind}.json").read_text())


def collectives(kind: str, blocks: int) -> int:
    """Collectives per training step (see the module docstring)."""
    return 3 * blocks + (blocks if kind == "hil" else 0) + 1


def measure(kind: str, batch: int, steps: int, work: Path, boards: list[str] = ()) -> dict:
    sizes = (batch // 2, batch)  # in the loop each on a board of its own
    one = step_seconds({rows: make(kind, rows, None, work, boards[i] if boards else None)
                        for i, rows in enumerate(sizes)}, steps)
    two = on_two_ranks(kind, batch, steps, work, boards)
    per_row = (one[batch] - one[batch // 2]) / (batch - batch // 2)
    fixed = one[batch] - per_row * batch
    k = collectives(kind, 2)
    model = {n: fixed + per_row * batch / n + k * (n - 1) * two["all_reduce"] for n in BOARDS}
    return {"one": one[batch], "half": one[batch // 2], "two": two["step"], "all_reduce": two["all_reduce"],
            "fixed": fixed, "per_row": per_row, "collectives": k, "model": model}


def wire_bytes_per_row(work: Path, board: str, batch: int) -> float:
    """Bytes on the wire per batch row of a training step (the device's counters over a few steps)."""
    trainer = make("hil", batch, None, work, board)
    with trainer.device:
        trainer.train_step()
        before = sum(c["wire_bytes"] for c in trainer.device.traffic.values())
        trainer.train_step()
        return (sum(c["wire_bytes"] for c in trainer.device.traffic.values()) - before) / batch


def plot(results: dict, uart: dict, batch: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for kind, label in (("host", "host training"), ("hil", "in the loop, pty")):
        r = results[kind]
        ax.plot(BOARDS, [1e3 * r["model"][n] for n in BOARDS], "-", label=f"{label}: model")
        ax.plot([1, 2], [1e3 * r["one"], 1e3 * r["two"]], "o", color=ax.lines[-1].get_color(),
                label=f"{label}: measured")
    for baud, model in uart.items():
        ax.plot(BOARDS, [1e3 * model[n] for n in BOARDS], "--", label=f"in the loop, UART {baud} Bd: model")
    ax.set(xscale="log", yscale="log", xlabel="ranks (boards)", ylabel="step time (ms)",
           title=f"step time against ranks, global batch {batch}")
    ax.set_xticks(BOARDS, [str(n) for n in BOARDS])
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=100)
    plt.close(fig)


def report(results: dict, uart: dict, bytes_row: float, batch: int) -> str:
    lines = [(f"Global batch {batch}, BasicMotions, 2 blocks of 16 oscillators (16 features), gloo on localhost, "
             f"1 thread a rank; load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
             "(shared: the 2-rank times include waiting for a core)."), "",
             ("| | 1 rank (ms) | 2 ranks (ms) | speed-up | efficiency | model, 2 ranks (ms) | measured / model | "
             "all_reduce (ms) |"),
             "|---|---|---|---|---|---|---|---|"]
    for kind, label in (("host", "host training"), ("hil", "in the loop (2 simulated boards on ptys)")):
        r = results[kind]
        speedup = r["one"] / r["two"]
        lines.append(f"| {label} | {1e3 * r['one']:.1f} | {1e3 * r['two']:.1f} | {speedup:.2f} | {speedup / 2:.2f} | "
                     f"{1e3 * r['model'][2]:.1f} | {r['two'] / r['model'][2]:.2f} | {1e3 * r['all_reduce']:.2f} |")
    lines += ["", ("Model T(N) = h + s·B/N + k·a(N), fitted on one process at batch B and B/2 (not on the 2-rank "
              "point it predicts):"), "",
              "| | h (ms) | s (ms a row) | k | " + " | ".join(f"N={n} (ms)" for n in BOARDS) + " |",
              "|---|---|---|---|" + "---|" * len(BOARDS)]
    for kind, r in results.items():
        lines.append(f"| {kind} | {1e3 * r['fixed']:.1f} | {1e3 * r['per_row']:.2f} | {r['collectives']} | "
                     + " | ".join(f"{1e3 * r['model'][n]:.1f}" for n in BOARDS) + " |")
    for baud, model in uart.items():
        lines.append(f"| in the loop, UART {baud} Bd | | | | " + " | ".join(f"{1e3 * model[n]:.0f}" for n in BOARDS)
                     + " |")
    lines += ["", f"A training step moves {bytes_row:.0f} wire bytes a batch row; on a UART that is "
              + ", ".join(f"{1e3 * bytes_row * 10 / baud:.1f} ms a row at {baud} Bd" for baud in BAUD_RATES)
              + ": the line, shared by nothing, divides by the number of boards, so in the loop the step time "
              "falls nearly as 1/N until the fixed part and the all_reduces (N − 1 latencies a collective) "
              "dominate. Plot: docs/scale.png.", "",
              ("The model assumes a core for every rank and board. Here the ranks and the board simulators "
               "share 2 cores with other jobs (the load above): a measured step includes waiting for a core, "
               "and step times move between runs of this script by up to 2× (docs/scale.md), so on this "
               "machine measured / model says how busy it was as much as how good the model is.")]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--write", action="store_true", help="replace this script's section of docs/results.md")
    args = parser.parse_args()
    quiet()
    with tempfile.TemporaryDirectory() as temporary, simulated_board() as first, simulated_board() as second:
        work = Path(temporary)
        tiny = ["--steps", "20", "--set", "eval_every=10", "--no-progress", *(a for s in MODEL for a in ("--set", s))]
        assert echoforge(["train", *tiny, "-o", str(work / "source")]) == 0
        assert echoforge(["compile", str(work / "source"), "--target", "emulator", "-o", str(work / "program"),
                          "--no-progress"]) == 0
        results = {"host": measure("host", args.batch, args.steps, work),
                   "hil": measure("hil", args.batch, args.steps, work, [first, second])}
        bytes_row = wire_bytes_per_row(work, first, args.batch)
    hil = results["hil"]
    uart = {baud: {n: hil["model"][n] + bytes_row * 10 / baud * args.batch / n for n in BOARDS} for baud in BAUD_RATES}
    plot(results, uart, args.batch)
    body = report(results, uart, bytes_row, args.batch)
    print(body)
    if args.write:
        write_section("bench_scale", "## Scale-out: ranks and boards (bench_scale)\n\n" + body)


if __name__ == "__main__":
    main()
