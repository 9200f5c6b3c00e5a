"""Scale-out on torch.distributed (issue 12): step time and efficiency of 1 and 2 ranks, host training and
hardware-in-the-loop (one simulated board per rank, on ptys), and a model of step time against the number
of ranks (boards), calibrated on one process and checked against the measured 2-rank points.

Each configuration trains the same global batch B: one process (in this process), then 2 ranks (gloo on
localhost, started with torch.multiprocessing.spawn, each building its trainer as `echoforge train --nproc
2` / `hil train --device A --device B` do: models.distributed.make_trainer). A step is timed from the
trainer's train_step (batch, forward, backward with the collectives, optimizer step), median of --steps
steps after one warm-up step; efficiency = T₁ / (N·T_N).

The model. A rank and its board form one stream of CPU work: the rank waits on the link while its board
computes, and the board idles while the rank computes. A step of b rows costs W(b) CPU seconds (rank +
board), waits ℓ(b) with neither computing (the line, the pty, polls), and makes k collectives:

    T(N) = W(B/N) / σ(N) + ℓ(B/N) + k·a(N),      W(b) = w₀ + w₁·b,  ℓ(b) = ℓ₀ + ℓ₁·b,
    σ(N) = min(1, K / (1 + (N − 1)·d))            (the share of a core a stream gets),

with K the cores this program gets (C on a machine of its own; on a shared one less: Linux shares the
cores between sessions first — autogroup — so K hardly grows with our number of processes), d the
fraction of a step a stream wants a core (W/σ over T, solved with T), a(N) = (N − 1)·a(2) the latency of
an all_reduce (gloo's ring, a few kB: latency-bound) and k the collectives a step makes (3 a block:
batch-norm mean, variance and backward; 1 a bank in the loop: the echo's largest nudge; 1 for the
gradients). a(2) depends on what the cores do: back to back, with the cores idle, gloo answers in a few
tenths of a millisecond; when every core is busy with the ranks' work (this machine: as many streams as
cores), the thread that must answer waits for a core, and a collective costs several times that. So a(2)
is measured both ways: idle (a core per rank, with cores to spare for gloo's threads: the projections
for a cluster) and between work (each rank first spends the CPU seconds a 2-rank step spends between two
collectives, W(B/2)/k: the model of this machine).

K is measured, not fitted: as many processes as cores spin for 0.1 s and K is the sum of their CPU
seconds over the wall (Spinners), once a turn. The run goes side by side, turn by turn: a 2-rank step,
then (rank 0, the other rank waiting at a barrier) one step of each one-process trainer, a host step and
the spinners, so calibration and validation see the same machine. Calibration, from the one-process
steps only: w₀, w₁ by least squares from the CPU seconds of the rank (process_time) and of its board
simulator (/proc/PID/stat) at batch B/4, B/2 and B; σ(1) as the median CPU seconds over wall of the host
steps (a host step never waits, so that is the share of a core a stream got); ℓ₀, ℓ₁ from what the wall
time leaves, T₁ − W/σ(1), at the same batches (a wait is never negative: ℓ below 0 counts as 0); a(2)
from all_reduces between the two ranks outside the steps: 200 back to back at the end (idle, median), and
k a turn, each after W(B/2)/k of spinning (between work, mean: a step pays every one of them). The 2-rank
step times fit nothing: the model, given
the median K, predicts them (tolerance ±25 %). Projections: a core per rank (σ = 1: a cluster, one rank
a node) for boards on a pty and on a UART (the line adds a row's wire bytes × 10 bits / baud, in place of
the pty's per-row wait), and this machine's C cores shared by the ranks alone (K = C, a(2) between work).
--runs repeats the whole side-by-side measurement: the tables show the last run, and a line lists every
run's measured / model (the machine is shared: one run proves little).

    python benchmarks/bench_scale.py [--batch 16 --steps 20 --runs 3] [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from torch.distributed.elastic.utils.distributed import get_free_port

from echoforge.cli import main as echoforge
from echoforge.hil import distributed as hil_distributed
from echoforge.hil.distributed import BoardParallel
from echoforge.hil.trainer import ECHO_WARNINGS, HILTrainer, hil_config
from echoforge.models import distributed
from echoforge.models.training import Trainer, load_config
from echoforge.runtime.device import Device
from echoforge.runtime.simulator import simulated_board
from echoforge.targets.emulator.lower import load_program

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_doc import write_section

MODEL = ["model.hidden_size=16", "model.state_size=16", "model.num_blocks=2"]
CALIBRATION_ROWS = (4, 8, 16)  # the one-process batches, in 16ths of the global batch
BAUD_RATES = (921600, 115200)
BOARDS = (1, 2, 4, 8, 16)
TOLERANCE = 0.25
IDLE, LOADED = "all_reduce", "all_reduce_loaded"  # the model's all_reduce latency: cores idle, or all busy
PLOT = Path(__file__).resolve().parents[1] / "docs" / "scale.png"
TICK = 1 / os.sysconf("SC_CLK_TCK")


def quiet() -> None:
    """One thread, and no per-call echo warnings (a run counts them instead: hil.trainer)."""
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", ECHO_WARNINGS, RuntimeWarning)


# ---- what the processes use ------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3, the state, first); None: gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (clock-tick resolution)."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) * TICK


def _processes() -> dict[int, tuple[int, str]]:
    """pid → (parent pid, state) of every process."""
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def _children() -> set[int]:
    return {pid for pid, (parent, _) in _processes().items() if parent == os.getpid()}


def new_child(known: set[int]) -> int:
    """The one child of this process not in `known` (the board simulator just started)."""
    children = _children() - known
    assert len(children) == 1, children
    return children.pop()


SPINNER = """import sys, time
for line in sys.stdin:
    cpu, wall = time.process_time(), time.perf_counter()
    while time.perf_counter() - wall < float(line):
        pass
    print((time.process_time() - cpu) / (time.perf_counter() - wall), flush=True)
"""


class Spinners:
    """As many processes as cores, each spinning on request: the cores this program gets right now (K) is the
    sum of their CPU seconds over the wall."""

    def __init__(self):
        self.processes = [subprocess.Popen([sys.executable, "-c", SPINNER], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, text=True) for _ in range(os.cpu_count())]

    def cores(self, seconds: float = 0.1) -> float:
        for process in self.processes:
            process.stdin.write(f"{seconds}\n")
            process.stdin.flush()
        return sum(float(process.stdout.readline()) for process in self.processes)

    def close(self) -> None:
        for process in self.processes:
            process.stdin.close()
            process.wait()


# ---- trainers and steps ----------------------------------------------------------------------------------


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


def one_step(trainer, board_pid: int | None = None) -> dict:
    """A train_step's wall seconds, CPU seconds of this process and of the board simulator, seconds in link
    calls, and the share of a core this process got (CPU over wall: for a step that never waits)."""
    hil = isinstance(trainer, HILTrainer)
    link = trainer.device.link_seconds() if hil else 0.0
    board = cpu_seconds(board_pid) if board_pid else 0.0
    cpu, wall = time.process_time(), time.perf_counter()
    trainer.train_step()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"wall": wall, "cpu": cpu, "share": cpu / wall, "board_cpu": cpu_seconds(board_pid) - board if board_pid else 0.0,
            "link": trainer.device.link_seconds() - link if hil else 0.0}


def summarize(steps: list[dict]) -> dict:
    """Medians of wall and share, means of the CPU and link seconds."""
    return {key: (statistics.median if key in ("wall", "share") else statistics.mean)([s[key] for s in steps])
            for key in steps[0]}


def spin(seconds: float) -> None:
    """Keep this thread's core busy for `seconds` (a rank's work between two collectives)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def all_reduce_seconds(ranks, size: int, repeats: int = 200, work: float = 0.0) -> list[float]:
    """Seconds of each of `repeats` all_reduces of `size` float32s between the ranks, each after `work` seconds of
    CPU work (0: back to back, the latency of an idle machine)."""
    tensor = torch.zeros(size)
    times = []
    for _ in range(repeats):
        spin(work)
        started = time.perf_counter()
        distributed.all_reduce(tensor, ranks)
        times.append(time.perf_counter() - started)
    return times


def count_collective_seconds() -> dict:
    """Patch the collectives the trainers call to add up their seconds (the waits for the other rank included)."""
    spent = {"seconds": 0.0}
    plain = distributed.all_reduce

    def all_reduce(*args, **kwargs):
        started = time.perf_counter()
        try:
            return plain(*args, **kwargs)
        finally:
            spent["seconds"] += time.perf_counter() - started

    distributed.all_reduce = hil_distributed.all_reduce = all_reduce
    return spent


class Alone:
    """Rank 0's one-process side of the run: the trainers at B/4, B/2 and B (in the loop each on a board of its own),
    the host step that measures a stream's share of a core, and the spinners that measure K."""

    def __init__(self, kind: str, batch: int, work: Path, boards: list[tuple[str, int]]):
        sizes = [batch * sixteenths // 16 for sixteenths in CALIBRATION_ROWS]
        self.trainers = {rows: make(kind, rows, None, work, boards[i][0] if boards else None)
                         for i, rows in enumerate(sizes)}
        self.pids = {rows: boards[i][1] for i, rows in enumerate(sizes)} if boards else {}
        self.probe = make("host", batch, None, work / "probe", None) if kind == "hil" else self.trainers[batch]
        self.spinners = Spinners()
        self.steps = {rows: [] for rows in self.trainers} | {"probe": [], "cores": []}

    def turn(self, record: bool = True) -> None:
        taken = {rows: one_step(trainer, self.pids.get(rows)) for rows, trainer in self.trainers.items()}
        taken["probe"] = taken[max(self.trainers)] if self.probe is self.trainers[max(self.trainers)] else one_step(self.probe)
        taken["cores"] = self.spinners.cores()
        self.last = taken
        if record:
            for key, value in taken.items():
                self.steps[key].append(value)

    def work_between_collectives(self, collectives_a_step: int) -> float:
        """CPU seconds a rank and its board spend between two collectives of a 2-rank step: the last one-process
        step of half the batch, over the collectives a step makes."""
        half = self.last[max(self.trainers) // 2]  # B/2 is one of CALIBRATION_ROWS
        return (half["cpu"] + half["board_cpu"]) / collectives_a_step

    def results(self) -> dict:
        self.spinners.close()
        for trainer in self.trainers.values():
            if isinstance(trainer, HILTrainer):
                trainer.device.close()
        return {"one": {rows: summarize(self.steps[rows]) for rows in self.trainers},
                "sigma": statistics.median(step["share"] for step in self.steps["probe"]),
                "cores": statistics.median(self.steps["cores"]),
                "cores_quartiles": statistics.quantiles(self.steps["cores"], n=4)[::2]}


def _rank(rank: int, size: int, port: int, kind: str, batch: int, steps: int, work: str, boards: list[str],
          alone_boards: list[tuple[str, int]]):
    """One rank of the side-by-side run: turn by turn, a 2-rank step, then (rank 0, the other rank waiting at a
    barrier) one step of each one-process trainer and a measure of K, so both see the same machine."""
    quiet()
    k = collectives(kind, 2)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    ranks = distributed.join()
    barrier = torch.distributed.barrier
    trainer = make(kind, batch, ranks, Path(work), boards[rank] if boards else None)
    alone = Alone(kind, batch, Path(work), alone_boards) if ranks.leader else None
    spent = count_collective_seconds()
    size = sum(p.numel() for p in trainer.model.parameters())
    together, loaded = [], []
    for turn in range(steps + 1):  # turn 0 warms up
        barrier()
        before = spent["seconds"]
        together.append(one_step(trainer) | {"collectives": spent["seconds"] - before})
        barrier()
        if alone:
            alone.turn(record=turn > 0)
        if turn > 0:
            work_between = distributed.from_leader(alone.work_between_collectives(k) if alone else None, ranks)
            loaded += all_reduce_seconds(ranks, size, repeats=k, work=work_between)
        barrier()
    idle = statistics.median(all_reduce_seconds(ranks, size))
    measured = distributed.from_every_rank(summarize(together[1:]), ranks)
    if ranks.leader:
        reduces = {"all_reduce": idle, "all_reduce_loaded": statistics.mean(loaded), "work_between": work_between}
        Path(work, f"{kind}.json").write_text(json.dumps({"ranks": measured} | reduces | alone.results()))
    barrier()  # no rank tears the group down while another still uses it
    torch.distributed.destroy_process_group()


def side_by_side(kind: str, batch: int, steps: int, work: Path, boards: list[tuple[str, int]] = ()) -> dict:
    """The 2-rank run on the first two boards, with the one-process measurements taken in turns with its
    steps on the other two."""
    args = (2, get_free_port(), kind, batch, steps, str(work), [uri for uri, _ in boards[:2]], list(boards[2:]))
    torch.multiprocessing.spawn(_rank, args, nprocs=2)
    measured = json.loads((work / f"{kind}.json").read_text())
    measured["one"] = {int(rows): m for rows, m in measured["one"].items()}
    return measured


# ---- the model -------------------------------------------------------------------------------------------


def collectives(kind: str, blocks: int) -> int:
    """Collectives per training step (see the module docstring)."""
    return 3 * blocks + (blocks if kind == "hil" else 0) + 1


def line(fit: dict, b: float) -> float:
    return fit["fixed"] + fit["per_row"] * b


def fit_line(at: dict) -> dict:
    """The least-squares line through {rows: value}."""
    per_row, fixed = np.polyfit(list(at), list(at.values()), 1)
    return {"fixed": float(fixed), "per_row": float(per_row)}


def share(streams: float, cores: float) -> float:
    """The share of a core each of `streams` CPU-bound streams gets when this program gets `cores`."""
    return min(1.0, cores / streams)


def predict(model: dict, n: int, cores: float, latency: str, *, line_seconds_per_row: float = 0.0) -> float:
    """T(N) of the module docstring with the all_reduce latency `latency` ("all_reduce": idle cores,
    "all_reduce_loaded": every core busy); d (the fraction of a step a stream wants a core) solved with T."""
    rows = model["batch"] / n
    work = line(model["work"], rows)
    wait = max(0.0, line(model["wait"], rows)) + line_seconds_per_row * rows  # a wait is never negative
    sync = model["collectives"] * (n - 1) * model[latency]
    busy, step = 1.0, 0.0
    for _ in range(50):
        computing = work / share(1 + (n - 1) * busy, cores)
        step = computing + wait + sync
        busy = computing / step
    return step


def calibrate(kind: str, batch: int, one: dict, sigma: float, all_reduces: dict) -> dict:
    """The model's terms from the one-process steps at batch B/4, B/2 and B, during which a stream got `sigma` of a
    core (see the module docstring)."""
    work = {rows: m["cpu"] + m["board_cpu"] for rows, m in one.items()}
    wait = {rows: m["wall"] - work[rows] / sigma for rows, m in one.items()}
    return {"batch": batch, "work": fit_line(work), "wait": fit_line(wait), "collectives": collectives(kind, 2),
            "sigma": sigma} | all_reduces


def measure(kind: str, batch: int, steps: int, work: Path, boards: list[tuple[str, int]] = ()) -> dict:
    run = side_by_side(kind, batch, steps, work, boards)
    model = calibrate(kind, batch, run["one"], run["sigma"],
                      {key: run[key] for key in ("all_reduce", "all_reduce_loaded")})
    measured_two = max(rank["wall"] for rank in run["ranks"])
    return run | {"measured_two": measured_two, "model": model, "predicted_two": predict(model, 2, run["cores"], LOADED),
                  "dedicated": {n: predict(model, n, n, IDLE) for n in BOARDS},
                  "here": {n: predict(model, n, os.cpu_count(), LOADED) for n in BOARDS}}


def wire_bytes_per_row(work: Path, board: str, batch: int) -> float:
    """Bytes on the wire per batch row of a training step (the device's counters over a step)."""
    trainer = make("hil", batch, None, work, board)
    with trainer.device:
        trainer.train_step()
        before = sum(c["wire_bytes"] for c in trainer.device.traffic.values())
        trainer.train_step()
        return (sum(c["wire_bytes"] for c in trainer.device.traffic.values()) - before) / batch


def uart_projection(hil: dict, bytes_row: float) -> dict:
    """In the loop with a board on a UART per rank, a core per rank: the pty's waits replaced by the line's."""
    model = hil["model"] | {"wait": {"fixed": hil["model"]["wait"]["fixed"], "per_row": 0.0}}
    return {baud: {n: predict(model, n, n, IDLE, line_seconds_per_row=bytes_row * 10 / baud) for n in BOARDS}
            for baud in BAUD_RATES}


# ---- the report ------------------------------------------------------------------------------------------


def plot(results: dict, uart: dict, batch: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.8))
    for kind, label in (("host", "host training"), ("hil", "in the loop, boards on ptys")):
        r = results[kind]
        ax.plot(BOARDS, [1e3 * r["dedicated"][n] for n in BOARDS], "-", label=f"{label}: model, a core per rank")
        color = ax.lines[-1].get_color()
        ax.plot(BOARDS, [1e3 * r["here"][n] for n in BOARDS], ":", color=color,
                label=f"{label}: model, {os.cpu_count()} cores shared")
        ax.plot([1, 2], [1e3 * r["one"][batch]["wall"], 1e3 * r["measured_two"]], "o", color=color,
                label=f"{label}: measured (shared machine)")
        ax.plot([2], [1e3 * r["predicted_two"]], "x", color=color, markersize=9,
                label=f"{label}: model at the measured load")
    for baud, model in uart.items():
        ax.plot(BOARDS, [1e3 * model[n] for n in BOARDS], "--", label=f"in the loop, UART {baud} Bd: model")
    ax.set(xscale="log", yscale="log", xlabel="ranks (boards)", ylabel="step time (ms)",
           title=f"step time against ranks, global batch {batch}")
    ax.set_xticks(BOARDS, [str(n) for n in BOARDS])
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(PLOT, dpi=100)
    plt.close(fig)


def ratio(r: dict) -> float:
    return r["measured_two"] / r["predicted_two"]


def report(runs: list[dict], uart: dict, bytes_row: float, batch: int, steps: int) -> str:
    results = runs[-1]
    ms = 1e3
    lines = [(f"Global batch {batch}, BasicMotions, 2 blocks of 16 oscillators (16 features), gloo on localhost, "
              f"1 thread a rank, {os.cpu_count()} cores shared with other programs (load average at the end "
              f"{os.getloadavg()[0]:.1f}). Side by side: turn by turn ({steps} turns), a 2-rank step, then one step "
              "of each one-process trainer and a measure of K; medians. σ(1): the share of a core a stream got at 1 "
              "rank (host steps' CPU over wall); K: the cores this program got (spinners; median, quartiles)."), "",
             ("| | 1 rank (ms) | 2 ranks (ms) | speed-up | efficiency | σ(1) | K (cores) | model, 2 ranks (ms) | "
              "measured / model | in collectives, 2 ranks (ms a step) | all_reduce: idle / between work (ms) |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for kind, label in (("host", "host training"), ("hil", "in the loop (2 simulated boards on ptys)")):
        r = results[kind]
        one, two = r["one"][batch]["wall"], r["measured_two"]
        inside = max(rank["collectives"] for rank in r["ranks"])
        lines.append(f"| {label} | {ms * one:.1f} | {ms * two:.1f} | {one / two:.2f} | {one / two / 2:.2f} | "
                     f"{r['sigma']:.2f} | {r['cores']:.2f} ({r['cores_quartiles'][0]:.2f}–{r['cores_quartiles'][1]:.2f}) | "
                     f"{ms * r['predicted_two']:.1f} | "
                     f"{ratio(r):.2f} | {ms * inside:.1f} | {ms * r[IDLE]:.3f} / {ms * r[LOADED]:.3f} |")
    lines += ["", "Calibration (one process, batch B/4, B/2 and B; per step):", "",
              "| | rows | wall (ms) | rank CPU (ms) | board CPU (ms) | in link calls (ms) |", "|---|---|---|---|---|---|"]
    for kind, r in results.items():
        for rows, m in sorted(r["one"].items()):
            lines.append(f"| {kind} | {rows} | {ms * m['wall']:.1f} | {ms * m['cpu']:.1f} | {ms * m['board_cpu']:.1f} | "
                         f"{ms * m['link']:.1f} |")
    lines += ["", ("Model terms (W: CPU work of a rank and its board, ℓ: waits with neither computing, k collectives of "
              "a(N) = (N − 1)·a(2)) and projections (ms):"), "",
              "| | w₀ | w₁ (a row) | ℓ₀ | ℓ₁ (a row) | σ at 1 rank | k | "
              + " | ".join(f"N={n}" for n in BOARDS) + " |", "|---|---|---|---|---|---|---|" + "---|" * len(BOARDS)]
    for kind, r in results.items():
        m = r["model"]
        terms = (f"{ms * m['work']['fixed']:.1f} | {ms * m['work']['per_row']:.2f} | {ms * m['wait']['fixed']:.1f} | "
                 f"{ms * m['wait']['per_row']:.2f} | {m['sigma']:.2f} | {m['collectives']}")
        lines.append(f"| {kind}, a core per rank | {terms} | " + " | ".join(f"{ms * r['dedicated'][n]:.1f}" for n in BOARDS)
                     + " |")
        lines.append(f"| {kind}, {os.cpu_count()} cores shared by the ranks | | | | | | | "
                     + " | ".join(f"{ms * r['here'][n]:.1f}" for n in BOARDS) + " |")
    for baud, model in uart.items():
        lines.append(f"| in the loop, UART {baud} Bd, a core per rank | | | | | | | "
                     + " | ".join(f"{ms * model[n]:.0f}" for n in BOARDS) + " |")
    within = {kind: sum(abs(ratio(run[kind]) - 1) <= TOLERANCE for run in runs) for kind in results}
    lines += ["", (f"Validation, {len(runs)} runs: measured / model at 2 ranks "
                   + "; ".join(f"{kind} " + ", ".join(f"{ratio(run[kind]):.2f}" for run in runs) for kind in results)
                   + f" — within ±{TOLERANCE:.0%}: " + ", ".join(f"{kind} {within[kind]} of {len(runs)}" for kind in results)
                   + "."), "",
              f"A training step moves {bytes_row:.0f} wire bytes a batch row; on a UART that is "
              + ", ".join(f"{ms * bytes_row * 10 / baud:.1f} ms a row at {baud} Bd" for baud in BAUD_RATES)
              + ": the line divides by the number of boards, so in the loop the step time falls nearly as 1/N until "
              "the fixed part and the all_reduces (N − 1 latencies a collective) dominate. Plot: docs/scale.png."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=3, help="side-by-side measurements, one after the other")
    parser.add_argument("--write", action="store_true", help="replace this script's section of docs/results.md")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs {args.runs}: at least one run")
    quiet()
    with tempfile.TemporaryDirectory() as temporary, ExitStack() as stack:
        work = Path(temporary)
        tiny = ["--steps", "20", "--set", "eval_every=10", "--no-progress", *(a for s in MODEL for a in ("--set", s))]
        assert echoforge(["train", *tiny, "-o", str(work / "source")]) == 0
        assert echoforge(["compile", str(work / "source"), "--target", "emulator", "-o", str(work / "program"),
                          "--no-progress"]) == 0
        boards = []  # two for the ranks, one for each one-process trainer
        for _ in range(2 + len(CALIBRATION_ROWS)):
            known = {pid for _, pid in boards} | set(_children())
            uri = stack.enter_context(simulated_board())
            boards.append((uri, new_child(known)))
        runs = [{"host": measure("host", args.batch, args.steps, work),
                 "hil": measure("hil", args.batch, args.steps, work, boards)} for _ in range(args.runs)]
        bytes_row = wire_bytes_per_row(work, boards[0][0], args.batch)
    uart = uart_projection(runs[-1]["hil"], bytes_row)
    plot(runs[-1], uart, args.batch)
    body = report(runs, uart, bytes_row, args.batch, args.steps)
    print(body)
    if args.write:
        write_section("bench_scale", "## Scale-out: ranks and boards (bench_scale)\n\n" + body)


if __name__ == "__main__":
    main()
