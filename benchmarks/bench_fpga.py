"""What the generated bank costs on each FPGA part and how fast it runs there, and how fast its RTL
co-simulates.

Synthesis: the bank's Verilog (targets/fpga/rtl) through the real tools (targets/fpga/synth: YoWASP
Yosys + nextpnr at the part's default clock), for a linear bank of 16 oscillators × 16 batch rows
(512 lanes, the echo pair of the default model's banks) at each word length the part multiplies, and
for growing oscillator counts at one batch row at the part's widest word, up to the most the design
rules accept (and a nonlinear bank where the rules accept one). Per row: logic, FFs, DSPs and block
RAMs used, fmax, whether timing is met at the part's clock, clocks per step and oscillator-steps per
second at fmax, and the tools' wall times.

Co-simulation: oscillator-steps per second of the RTL under Verilator (targets/fpga/core.RTLCore) and
of the emulator (the integer kernels), the same integer forward and echo pair taking turns.

    python benchmarks/bench_fpga.py [--parts up5k ecp5-25f] [--quick] [--write]

--write replaces this script's section of docs/results.md and writes docs/fpga-resources.png.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from echoforge.targets.emulator.fixed import FormatConfig
from echoforge.targets.fpga.parts import PARTS, bank_plan_of, block_rams, dsps_for
from echoforge.targets.fpga.rtl import generate_core
from echoforge.targets.fpga.synth import ToolFailed, synthesize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_doc import turns_seconds, write_section  # noqa: E402

PLOT = Path(__file__).resolve().parents[1] / "docs" / "fpga-resources.png"
BANK_OSCILLATORS, BANK_BATCH = 16, 16


def configurations(part, quick: bool) -> list[tuple[str, int, int, int]]:
    """(kind, word bits, oscillators, batch) to synthesize on `part`: the 16 × 16 linear bank at the
    widest word (and, on the UP5K, the shortest), the largest linear bank the rules accept (one batch
    row), and a nonlinear bank."""
    bank = [("linear", part.dsp_width, BANK_OSCILLATORS, BANK_BATCH)]
    if quick:
        return bank
    shortest = [("linear", part.word_bits[0], BANK_OSCILLATORS, BANK_BATCH)] if part.name == "up5k" else []
    return [*shortest, *bank, ("linear", part.dsp_width, part.max_oscillators, 1),
            ("nonlinear", part.dsp_width, BANK_OSCILLATORS, 1)]


def refusal(part, kind: str, word: int, oscillators: int, batch: int) -> str | None:
    """The design rule that refuses this bank on the part, if any (as the compiler's rules count)."""
    plan = bank_plan_of(kind, FormatConfig(word_bits=word), oscillators, batch)
    dsps = sum(dsps_for(part, a, b) for _, a, b in plan.multipliers)
    if dsps > part.dsps:
        return f"dsp-count ({dsps} > {part.dsps})"
    blocks = block_rams(part, plan.memories)
    if blocks > part.bram.count:
        return f"block-ram ({blocks} > {part.bram.count})"
    return None


def generate_bank(part, kind: str, word: int, oscillators: int, batch: int, workdir: Path) -> dict:
    """The row of one bank, with its generated design unless the design rules refuse it."""
    row = {"part": part.name, "kind": kind, "word": word, "oscillators": oscillators, "batch": batch}
    refused = refusal(part, kind, word, oscillators, batch)
    if refused:
        return row | {"refused": refused}
    return row | {"design": generate_core(FormatConfig(word_bits=word), kind, workdir / "rtl",
                                          lanes=2 * batch * oscillators, oscillators=oscillators)}


def synthesize_bank(part, row: dict, workdir: Path) -> dict:
    """The row with the design's resources, fmax and speed on the part (at the part's clock)."""
    design = row.pop("design")
    try:
        result = synthesize(list(design.sources), design.top, part.tools, workdir / "synth", clock_mhz=part.clock_mhz)
    except ToolFailed as failure:
        return row | {"failed": str(failure)}
    lanes = row["batch"] * row["oscillators"]
    clocks = design.clocks_per_step(lanes)
    return row | {"logic": result.utilization["logic"], "ff": result.resources["ff"],
                  "dsp": result.utilization["dsp"], "bram": result.utilization["bram"], "fmax": result.fmax_mhz,
                  "met": result.meets_timing, "clocks": clocks, "rate": result.fmax_mhz * 1e6 * lanes / clocks,
                  "critical": result.critical_summary(), "seconds": result.seconds}


def synthesis_table(rows: list[dict]) -> str:
    lines = ["| part | kind | word | osc × batch | logic | FF | DSP | BRAM | fmax MHz | meets clock "
             "| clocks/step | osc-steps/s at fmax | critical path | yosys + nextpnr s |", "|" + "---|" * 14]
    for row in rows:
        head = f"| {row['part']} | {row['kind']} | {row['word']} | {row['oscillators']} × {row['batch']} |"
        if "refused" in row or "failed" in row:
            reason = f"refused by the design rules: {row['refused']}" if "refused" in row else row["failed"]
            lines.append(f"{head} {reason} |" + " |" * 9)
            continue
        used = {name: f"{row[name][0]}/{row[name][1]}" for name in ("logic", "dsp", "bram")}
        clock = PARTS[f"fpga-{row['part']}"].clock_mhz
        lines.append(f"{head} {used['logic']} | {row['ff']} | {used['dsp']} | {used['bram']} | {row['fmax']:.1f} | "
                     f"{'yes' if row['met'] else 'no'} ({clock:g} MHz) | {row['clocks']} | {row['rate']:.3g} | "
                     f"{row['critical']} | "
                     f"{row['seconds']['synthesis']:.0f} + {row['seconds']['place_and_route']:.0f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ co-simulation


def cosimulation(batch: int, length: int, size: int, repeats: int) -> list[str]:
    """Oscillator-steps per second of the RTL under Verilator and of the emulator, forward and echo."""
    from echoforge.models.core import OscillatorParams
    from echoforge.targets.emulator import EmulatorCore
    from echoforge.targets.fpga.core import RTLCore

    rng = np.random.default_rng(0)
    config = FormatConfig(word_bits=16)
    params = OscillatorParams("linear", a=rng.uniform(0.2, 1.0, size), delta=rng.uniform(0.3, 0.7, size),
                              w=np.ones(size), b=np.zeros(size), c=np.zeros(size))
    limit = config.state.limit // 64
    forcing = rng.integers(-limit, limit, (batch, length, size))
    nudges = rng.integers(-limit // 8, limit // 8, (batch, length, size))
    zeros = np.zeros((batch, size), dtype=np.int64)
    cores = {"RTL (Verilator)": RTLCore(config), "emulator": EmulatorCore(config)}
    for core in cores.values():
        core.load(params)
        core.forward_int(forcing, zeros, zeros)  # builds the simulator / compiles the kernels
        core.echo_int(forcing, zeros, zeros, nudges)
    steps = batch * length * size
    lines = [f"Linear bank, 16-bit words, {batch} rows × {size} oscillators × {length} steps; median of "
             f"{repeats} calls taking turns.", "", "| pass | contender | osc-steps/s | simulated clocks/s |",
             "|---|---|---|---|"]
    for name, call, count in (("forward", lambda core: core.forward_int(forcing, zeros, zeros), steps),
                              ("echo pair", lambda core: core.echo_int(forcing, zeros, zeros, nudges), 2 * steps)):
        times = turns_seconds({label: (lambda core=core: call(core)) for label, core in cores.items()}, repeats)
        for label, core in cores.items():
            seconds = statistics.median(times[label])
            run = getattr(core, "last_run", None)
            clocks = f"{run.cycles / seconds:.3g}" if run is not None else "–"
            lines.append(f"| {name} | {label} | {count / seconds:.3g} | {clocks} |")
    return lines


# ------------------------------------------------------------------------------------ plot


def plot(rows: list[dict], path: Path) -> None:
    """fmax against the part's clock, and the share of the part used, for each synthesized bank."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [row for row in rows if "fmax" in row]
    labels = [f"{r['part']} {r['kind'][:3]} {r['word']}b\n{r['oscillators']}×{r['batch']}" for r in done]
    x = np.arange(len(done))
    figure, (speed, used) = plt.subplots(1, 2, figsize=(12, 4.5))
    speed.bar(x, [r["fmax"] for r in done], color=["tab:green" if r["met"] else "tab:red" for r in done])
    speed.scatter(x, [PARTS[f"fpga-{r['part']}"].clock_mhz for r in done], marker="_", s=400, color="k",
                  label="the part's clock", zorder=3)
    speed.set(ylabel="fmax (MHz)", title="fmax (green: meets the part's clock)")
    for k, name in enumerate(("logic", "dsp", "bram")):
        used.bar(x + (k - 1) * 0.27, [100 * r[name][0] / r[name][1] for r in done], 0.27, label=name)
    used.set(ylabel="% of the part used", title="resources", ylim=(0, 105))
    for axes in (speed, used):
        axes.set_xticks(x, labels, fontsize=7)
        axes.grid(alpha=0.3, axis="y")
        axes.legend(fontsize=8)
    figure.suptitle("generated oscillator bank (osc × batch rows), YoWASP Yosys + nextpnr", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def revision() -> str:
    """The commit the generator ran at (and whether rtl/ had uncommitted changes)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    commit = subprocess.run(["git", "log", "-1", "--format=%h", "--", "echoforge/targets/fpga/rtl"], cwd=root,
                            capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "echoforge/targets/fpga/rtl"], cwd=root,
                           capture_output=True, text=True).stdout
    return f"commit {commit.strip()}" + (" with uncommitted changes in targets/fpga/rtl" if dirty.strip() else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=[part.name for part in PARTS.values()],
                        choices=[part.name for part in PARTS.values()])
    parser.add_argument("--quick", action="store_true", help="one bank per part (the 16 × 16 linear bank)")
    parser.add_argument("--cosim-length", type=int, default=2000, help="time steps of the co-simulated runs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="write docs/results.md's section and the plot")
    args = parser.parse_args()
    parts = [PARTS[f"fpga-{name}"] for name in args.parts]
    jobs = [(part, *config) for part in parts for config in configurations(part, args.quick)]
    cosim = cosimulation(batch=4, length=args.cosim_length, size=BANK_OSCILLATORS, repeats=args.repeats)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-fpga-") as scratch:
        # every design first, so that all of them come from one state of the generator
        designs = [generate_bank(*job, Path(scratch) / str(k)) for k, job in enumerate(jobs)]
        generator = revision()
        for k, (job, row) in enumerate(tqdm(list(zip(jobs, designs)), desc="synthesize", unit="bank")):
            start = time.perf_counter()
            rows.append(synthesize_bank(job[0], row, Path(scratch) / str(k)) if "design" in row else row)
            tqdm.write(f"{rows[-1]} ({time.perf_counter() - start:.0f} s)")
            if args.write and "fmax" in rows[-1]:  # as each bank is done: a stopped run keeps what it measured
                plot(rows, PLOT)
                write_section("bench_fpga", section(rows, len(jobs), generator, cosim))
    print(section(rows, len(jobs), generator, cosim))


def section(rows: list[dict], planned: int, generator: str, cosim: list[str]) -> str:
    progress = "" if len(rows) == planned else f" ({len(rows)} of the {planned} banks measured so far)"
    return "\n".join(["## FPGA: resources, fmax and co-simulation", "", f"RTL generator at {generator}{progress}.",
                      "", "Each bank's generated Verilog synthesized, placed and routed at the part's clock "
                      "(YoWASP Yosys 0.70 + nextpnr 0.11, inside the serial I/O shell); logic is LUT4 cells "
                      "(iCE40: logic cells), BRAM the part's block RAMs. ![resources](fpga-resources.png)",
                      "", synthesis_table(rows), "", "Co-simulation:", "", *cosim])


if __name__ == "__main__":
    main()
