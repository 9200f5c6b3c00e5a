"""What compiling changes, measured and written down: float vs fixed point, model-wide and per node.

`compare` runs data through the float interpreter and a target's emulated model side by side (the
metric the model was trained for, and saturation per bank); `trace_errors` says, node by node, how
far fixed point moves each tensor; `build_report` gathers per-node formats, calibrated ranges,
headroom and risk with the measured change, and `write_report` writes report.json and report.md.

The emulated model is anything with ``program.ir``, ``run(x)``, ``trace(x)`` and ``saturated()``
(targets/emulator/emulated.py's EmulatedModel).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .interpret import run, trace
from .ir import HWIR


def task(ir: HWIR) -> str:
    return ir.model.get("hssm", {}).get("task", "classification")


def score(task_name: str, outputs: np.ndarray, y: np.ndarray) -> float:
    """Accuracy (classification) or MSE (regression, on the last output step as training scores it)."""
    if task_name == "classification":
        return float((outputs.argmax(axis=-1) == y).mean())
    prediction = outputs[:, -1] if outputs.ndim == 3 else outputs
    return float(((prediction - y) ** 2).mean())


@dataclass(frozen=True)
class Comparison:
    """The float and the fixed-point score of one data split, how far fixed point moved the outputs
    (max |fixed − float| / max |float|), and what saturated on the way."""

    data: str
    samples: int
    metric: str
    float: float
    fixed: float
    deviation: float
    saturation: dict[str, dict[str, int]]

    @property
    def change(self) -> float:
        return self.fixed - self.float

    def to_json(self) -> dict:
        return {"data": self.data, "samples": self.samples, "metric": self.metric, "float": self.float,
                "fixed": self.fixed, "change": self.change, "output_deviation": self.deviation,
                "saturation": self.saturation}

    def describe(self) -> str:
        return (f"{self.data} ({self.samples} samples): {change_text(self.to_json())}; outputs within "
                f"{self.deviation:.1e} of float (relative); saturation: {saturation_text(self.saturation)}")


def change_text(comparison: dict) -> str:
    """'accuracy float 91.7% → fixed 91.7% (+0.0 points)' from a Comparison's JSON."""
    if comparison["metric"] == "accuracy":
        return (f"accuracy float {100 * comparison['float']:.1f}% → fixed {100 * comparison['fixed']:.1f}% "
                f"({100 * comparison['change']:+.1f} points)")
    return (f"MSE float {comparison['float']:.5g} → fixed {comparison['fixed']:.5g} "
            f"({comparison['change']:+.3g})")


def saturation_text(saturation: dict[str, dict[str, int]]) -> str:
    if not saturation:
        return "none"
    return "; ".join(f"{node} " + ", ".join(f"{q}={n}" for q, n in counts.items())
                     for node, counts in saturation.items())


def compare(emulated, x: np.ndarray, y: np.ndarray, data: str, *, batch_size: int = 64,
            progress: bool | None = None) -> Comparison:
    """Score `x` through the float interpreter and through `emulated`, batch by batch."""
    ir = emulated.program.ir
    starts = range(0, len(x), batch_size)
    reference, fixed = [], []
    for start in tqdm(starts, desc=f"emulate {data}", unit="batch", dynamic_ncols=True,
                      disable=None if progress is None else not progress):
        batch = x[start:start + batch_size]
        reference.append(run(ir, batch))
        fixed.append(emulated.run(batch))
    name, reference, fixed = task(ir), np.concatenate(reference), np.concatenate(fixed)
    deviation = float(np.abs(fixed - reference).max() / max(np.abs(reference).max(), np.finfo(float).tiny))
    return Comparison(data, len(x), "accuracy" if name == "classification" else "mse",
                      score(name, reference, y), score(name, fixed, y), deviation, emulated.saturated())


@dataclass(frozen=True)
class TraceError:
    """How far fixed point moved one tensor: max |float| and max |fixed − float| over a batch."""

    node: str
    tensor: str
    placement: str
    scale: float
    error: float

    @property
    def relative(self) -> float:
        return self.error / self.scale if self.scale else 0.0


def trace_errors(emulated, x: np.ndarray) -> list[TraceError]:
    """Every tensor the emulated model exposes, node by node in graph order, against the float trace."""
    ir = emulated.program.ir
    reference, fixed = trace(ir, x), emulated.trace(x)
    return [TraceError(node.name, role, node.placement or "-", float(np.abs(value).max(initial=0.0)),
                       float(np.abs(fixed[node.name][role] - value).max(initial=0.0)))
            for node in ir.nodes for role, value in reference[node.name].items() if role in fixed[node.name]]


def trace_table(rows: list[TraceError]) -> str:
    """The trace as an aligned text table, one row per tensor."""
    width = max(len(row.node) for row in rows)
    lines = [f"{'node':<{width}}  {'tensor':<9}  {'on':<6}  {'max|float|':>10}  {'max|Δ|':>10}  "
             f"{'relative':>9}"]
    lines += [f"{r.node:<{width}}  {r.tensor:<9}  {r.placement:<6}  {r.scale:>10.4g}  {r.error:>10.3g}  "
              f"{r.relative:>9.2e}" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ report


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no infinity


def _q(fmt) -> str:
    return f"Q{fmt.int_bits}.{fmt.frac_bits}"


def _node_entry(node, saturation: dict[str, int]) -> dict:
    entry = {"name": node.name, "kind": node.kind, "placement": node.placement,
             "formats": {role: _q(fmt) for role, fmt in node.formats.items()},
             "ranges": {role: {"min": r.min, "max": r.max, "absmax": r.absmax}
                        for role, r in node.ranges.items()}}
    if node.saturation:
        entry |= {"tightest": node.saturation.tensor, "headroom_bits": _finite(node.saturation.headroom_bits),
                  "risk": node.saturation.risk}
    return entry | ({"saturated": saturation} if saturation else {})


def build_report(program, validation: Comparison, calibration: dict, build=None) -> dict:
    """The compile report: target, calibration, banks, every node, findings, the measured change, and
    what the target's build added (a TargetReport, under "build").

    `program` has ``ir`` and ``banks`` (each with ``to_yaml()``); `calibration` says which data
    calibrated the formats.
    """
    ir = program.ir
    report = {"source": ir.provenance.source, "target": ir.target,
              "calibration": calibration | (ir.calibration or {}),
              "validation": validation.to_json(),
              "banks": [bank.to_yaml() for bank in program.banks],
              "nodes": [_node_entry(node, validation.saturation.get(node.name, {})) for node in ir.nodes],
              "findings": [f.to_yaml() for f in ir.findings]}
    if build is not None:
        report["build"] = {"title": build.title, "lines": build.lines, "data": build.data,
                           "findings": list(build.findings)}
    return report


def _param_formats(bank: dict) -> list[str]:
    """Q formats of a, δ, w, c ('-' for w, c of a linear bank, which has neither)."""
    f, used = bank["format"], ("a", "delta") if bank["hru_kind"] == "linear" else ("a", "delta", "w", "c")
    return [f"Q{f['word_bits'] - f[f'{p}_frac']}.{f[f'{p}_frac']}" if p in used else "-"
            for p in ("a", "delta", "w", "c")]


def _headroom(entry: dict) -> str:
    bits = entry.get("headroom_bits", "-")
    return "∞" if bits is None else bits if isinstance(bits, str) else f"{bits:.2f}"


def render_markdown(report: dict) -> str:
    """report.md: the summary, then the banks, the nodes and the design-rule findings as tables."""
    lines = [*_summary(report), "", "## Banks on the device", "", *_bank_table(report["banks"]), "",
             "## Nodes", "", *_node_table(report["nodes"]), "", "## Design-rule findings", ""]
    lines += [f"- {f['severity']} [{f['rule']}] node `{f['node']}`: {f['message']}"
              for f in report["findings"]] or ["None."]
    if "build" in report:
        build = report["build"]
        lines += ["", f"## {build['title']}", "", *build["lines"]]
    return "\n".join(lines) + "\n"


def _summary(report: dict) -> list[str]:
    target, validation, calibration = report["target"], report["validation"], report["calibration"]
    return [f"# Compile report: {report['source']} → {target['name']}", "",
            f"Word length {target['word_bits']} bits; formats leave {target['headroom_bits']} bit(s) of "
            f"headroom above the calibrated abs-max ({calibration.get('samples')} sequences of "
            f"{calibration.get('length')} steps from {calibration.get('data')}).", "",
            f"**Expected change** on {validation['data']} ({validation['samples']} samples): "
            f"{change_text(validation)}; outputs within {validation['output_deviation']:.1e} of float "
            f"(max |fixed − float| / max |float|); saturation: {saturation_text(validation['saturation'])}."]


def _bank_table(banks: list[dict]) -> list[str]:
    lines = ["| node | kind | oscillators | state | a | δ | w | c | table bits |",
             "|---|---|---|---|---|---|---|---|---|"]
    return lines + [f"| {bank['node']} | {bank['hru_kind']} | {bank['oscillators']} | {bank['state']} | "
                    f"{' | '.join(_param_formats(bank))} | {bank['format']['table_bits']} |" for bank in banks]


def _node_table(nodes: list[dict]) -> list[str]:
    lines = ["Formats per tensor, calibrated abs-max per activation, headroom of the tightest tensor (bits "
             "above its abs-max) and its saturation risk (high: saturates on the calibration data; medium: "
             "less headroom than asked for). Nodes on the host run in float, so they have neither (report.json "
             "keeps the formats they would take on a device).", "",
             "| node | kind | on | formats | calibrated abs-max | tightest | headroom (bits) | risk |",
             "|---|---|---|---|---|---|---|---|"]
    for entry in nodes:
        ranges = ", ".join(f"{role} {r['absmax']:.4g}" for role, r in entry["ranges"].items())
        if entry["placement"] == "host":
            fixed_point = ["float", "-", "-", "-"]
        else:
            fixed_point = [", ".join(f"{role} {q}" for role, q in entry["formats"].items()),
                           entry.get("tightest", "-"), _headroom(entry), entry.get("risk", "-")]
        formats, tightest, headroom, risk = fixed_point
        lines.append(f"| {entry['name']} | {entry['kind']} | {entry['placement']} | {formats} | {ranges} | "
                     f"{tightest} | {headroom} | {risk} |")
    return lines


def write_report(report: dict, directory: str | Path) -> tuple[Path, Path]:
    """report.json and report.md in `directory`."""
    directory = Path(directory)
    json_path, md_path = directory / "report.json", directory / "report.md"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    md_path.write_text(render_markdown(report))
    return json_path, md_path
