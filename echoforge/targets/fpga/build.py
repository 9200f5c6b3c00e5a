"""`echoforge compile --target fpga-PART`: the RTL of every device bank, synthesized, placed and routed
for the part, and what the compile report adds — resources, fmax, clocks per time step, oscillator-steps
per second, and the time an RHEL step of the model takes on the part.

    OUT/rtl/<bank>/     echoforge_bank.v, its memory-init files, regmap.json (rtl.generate)
    OUT/synth/<bank>/   netlist.json, stat.json, report.json, the tools' logs (synth.synthesize)

Each bank is its own design: banks run one after another (the host computes the layers between them),
so the part holds one bank at a time; the report says whether all of them would fit at once. A bank
holds `batch` rows of lanes (2·batch·oscillators for the echo pair): --fpga-batch, by default the
largest power of two up to 16 (the training default) whose memories fit the part. Timing not met at
--clock is a finding: compile prints the report and exits 2 naming the bank, its fmax and its
critical path.
"""

from __future__ import annotations

import math

from tqdm import tqdm

from echoforge.targets import BuildContext, TargetReport

from .parts import PARTS, Part, bank_plan_of, block_rams, dsps_for
from .synth import NEXTPNR, YOSYS, Synthesis, synthesize, tool

DEFAULT_BATCH = 16  # the training default (models/training.py DEFAULT_CONFIG)


def choose_batch(part: Part, bank, requested: int | None) -> int:
    """The batch rows a bank's RTL holds: as requested (ValueError naming block RAM if it does not fit),
    else the largest power of two ≤ DEFAULT_BATCH that fits."""
    def fits(batch: int) -> bool:
        return block_rams(part, bank_plan_of(bank.params.kind, bank.config, bank.params.size, batch).memories) \
            <= part.bram.count

    if requested is not None:
        if not fits(requested):
            raise ValueError(f"{bank.node}: batch {requested} needs more than the {part.device}'s "
                             f"{part.bram.count} {part.bram.cell} blocks — use a smaller --fpga-batch")
        return requested
    return next(DEFAULT_BATCH >> k for k in range(DEFAULT_BATCH.bit_length()) if fits(DEFAULT_BATCH >> k))


def build(ctx: BuildContext) -> TargetReport:
    from .rtl import generate

    part = PARTS[ctx.args.target]
    clock = ctx.args.clock or part.clock_mhz
    if not ctx.args.no_synth:  # refuse a missing tool before any work
        tool(YOSYS)
        tool(NEXTPNR[part.family])
    batch = min(choose_batch(part, bank, ctx.args.fpga_batch) for bank in ctx.program.banks)
    built = []
    for bank in tqdm(ctx.program.banks, desc=f"synthesize for {part.device}", unit="bank",
                     disable=True if ctx.args.no_progress else None):
        design = generate(bank, ctx.output / "rtl" / bank.node, batch=batch)
        synthesis = None if ctx.args.no_synth else synthesize(
            list(design.sources), design.top, part.tools, ctx.output / "synth" / bank.node, clock_mhz=clock)
        built.append((bank, design, batch, synthesis))
    data = _data(part, clock, built, int(ctx.data.train.x.shape[1]))
    return TargetReport(f"FPGA: {part.device} ({part.board})", _lines(data), data, _findings(part, clock, built))


# ------------------------------------------------------------------------------------ numbers


def _lanes(bank, batch: int) -> tuple[int, int]:
    """(forward lanes, echo lanes) of one batch: batch·P, and the ± pair 2·batch·P."""
    lanes = batch * bank.params.size
    return lanes, 2 * lanes


def _bank_numbers(part: Part, clock: float, bank, design, batch: int, synthesis: Synthesis | None) -> dict:
    forward, echo = _lanes(bank, batch)
    clocks = {"forward": design.clocks_per_step(forward), "echo": design.clocks_per_step(echo)}
    numbers = {"node": bank.node, "kind": bank.params.kind, "word_bits": bank.config.word_bits,
               "oscillators": bank.params.size, "batch": batch, "lanes": design.lanes,
               "pipeline_depth": design.pipeline_depth, "clocks_per_step": clocks,
               "planned": {"dsp": sum(dsps_for(part, a, b) for _, a, b in design.multipliers),
                           "bram": block_rams(part, bank_plan_of(bank.params.kind, bank.config,
                                                                 bank.params.size, batch).memories)},
               "rtl": str(design.directory)}
    if synthesis is not None:
        frequency = synthesis.fmax_mhz * 1e6
        numbers |= {"synthesis": synthesis.to_json(),
                    "oscillator_steps_per_second": frequency * bank.params.size * batch / clocks["forward"]}
    return numbers


def _rhel_clocks(entry: dict, length: int) -> int:
    """Clocks of one RHEL step of one bank: a forward and the ± echo pair, `length` steps each."""
    return length * (entry["clocks_per_step"]["forward"] + entry["clocks_per_step"]["echo"])


def _data(part: Part, clock: float, built: list, length: int) -> dict:
    banks = [_bank_numbers(part, clock, *entry) for entry in built]
    data = {"part": part.target, "device": part.device, "board": part.board, "clock_mhz": clock,
            "banks": banks}
    clocks = [_rhel_clocks(entry, length) for entry in banks]
    rhel = {"batch": banks[0]["batch"], "length": length,
            "seconds_at_clock": sum(clocks) / (clock * 1e6)}
    if all("synthesis" in entry for entry in banks):
        rhel["seconds_at_fmax"] = sum(c / (entry["synthesis"]["fmax_mhz"] * 1e6) for c, entry in zip(clocks, banks))
        data["all_banks_fit_at_once"] = _fit_at_once(part, banks)
    return data | {"rhel_step": rhel}


def _fit_at_once(part: Part, banks: list[dict]) -> bool:
    used = {name: sum(entry["synthesis"]["utilization"].get(name, {"used": 0})["used"] for entry in banks)
            for name in ("logic", "dsp", "bram")}
    available = {name: banks[0]["synthesis"]["utilization"][name]["available"] for name in used}
    return all(used[name] <= available[name] for name in used)


def _findings(part: Part, clock: float, built: list) -> list[str]:
    findings = []
    for bank, _, _, synthesis in built:
        if synthesis is not None and not synthesis.meets_timing:
            findings.append(f"node {bank.node!r}: [timing] fmax {synthesis.fmax_mhz:.1f} MHz misses the "
                            f"{clock:g} MHz clock on the {part.device} (critical path "
                            f"{synthesis.critical_summary()}) — compile with --clock "
                            f"{math.floor(synthesis.fmax_mhz)} or less")
    return findings


# ------------------------------------------------------------------------------------ report lines


def _used(synthesis: dict, name: str) -> str:
    entry = synthesis["utilization"].get(name)
    return f"{entry['used']}/{entry['available']}" if entry else "0"


def _lines(data: dict) -> list[str]:
    clock = data["clock_mhz"]
    lines = [f"Target clock {clock:g} MHz. RTL in `rtl/<bank>/`"
             + ("; synthesis, placement and routing in `synth/<bank>/` (YoWASP Yosys + nextpnr)."
                if all("synthesis" in entry for entry in data["banks"]) else " (--no-synth: not synthesized)."),
             "", "| bank | kind | word | batch | logic | FF | DSP | BRAM | fmax MHz | clocks/step fwd, echo "
             "| osc-steps/s at fmax |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for entry in data["banks"]:
        steps = entry["clocks_per_step"]
        synthesis = entry.get("synthesis")
        if synthesis:
            resources = (f"{_used(synthesis, 'logic')} | {synthesis['resources']['ff']} | "
                         f"{_used(synthesis, 'dsp')} | {_used(synthesis, 'bram')} | {synthesis['fmax_mhz']:.1f} | ")
            rate = f"{entry['oscillator_steps_per_second']:.3g}"
        else:
            resources = f"– | – | {entry['planned']['dsp']} (planned) | {entry['planned']['bram']} (planned) | – | "
            rate = "–"
        lines.append(f"| {entry['node']} | {entry['kind']} | {entry['word_bits']} | {entry['batch']} | {resources}"
                     f"{steps['forward']}, {steps['echo']} | {rate} |")
    rhel = data["rhel_step"]
    at_fmax = (f", {1e3 * rhel['seconds_at_fmax']:.3g} ms at the banks' fmax" if "seconds_at_fmax" in rhel else "")
    lines += ["", f"RHEL step (forward + two echoes) of a batch of {rhel['batch']} sequences of {rhel['length']} steps, "
              f"device compute only (no transfers): {1e3 * rhel['seconds_at_clock']:.3g} ms at {clock:g} MHz"
              f"{at_fmax}."]
    if "all_banks_fit_at_once" in data:
        lines.append("All banks fit the part at once." if data["all_banks_fit_at_once"] else
                     "The banks do not all fit the part at once: each bank is its own image, loaded in turn.")
    return lines
