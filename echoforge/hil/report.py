"""What a HIL run reports: step times and where they go, gradient fidelity, plots, a printed summary."""

from __future__ import annotations

from pathlib import Path

from .fidelity import MIN_BPTT_COSINE, NORM_RATIO_RANGE, WHOLE_MODEL, divergences

TIMING_METHOD = (
    "At each fidelity check, on the same batch and parameters (host layers in float64), back to back: the HIL "
    "gradient (banks on the board) and the host RHEL gradient (banks on the float64 core). link = seconds inside "
    "link calls "
    "during the HIL gradient (request to response: the line both ways and the board's work meanwhile); "
    "device compute = the in-process emulator's integer passes on the same work, timed (the board reports "
    "no compute time); link transfer = link − device compute (with the simulator, its Python protocol "
    "handling too; null when the in-process emulator took longer than the whole link call, which then cannot be "
    "split); host = HIL − link (torch layers, quantisation, gradients from the accumulators). Means over the "
    "checks after the first (which also loads the program and warms up).")


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def summarize_timing(training: dict, checks: list[dict]) -> dict:
    """Seconds per training step, and per gradient at the fidelity checks if there were any (see
    TIMING_METHOD)."""
    steps = max(training.get("steps", 0), 1)
    summary = {"training_step_s": training.get("seconds", 0.0) / steps,
               "training_link_s": training.get("link_seconds", 0.0) / steps}
    timed = [check["seconds"] for check in (checks[1:] or checks)]
    if not timed:
        return summary
    hil, link = _mean(s["device"] for s in timed), _mean(s["link"] for s in timed)
    compute, host_rhel = _mean(s["device_compute"] for s in timed), _mean(s["host_rhel"] for s in timed)
    return summary | {
        "hil_gradient_s": hil, "host_rhel_gradient_s": host_rhel, "hil_vs_host_rhel": hil / host_rhel,
        "hil_breakdown_s": {"link": link, "link_transfer": link - compute if link >= compute else None,
                            "device_compute": compute, "host": hil - link},
        "checks_timed": len(timed), "method": TIMING_METHOD}


def _warned(check: dict) -> bool:
    return any(divergences(group, values) for group, values in check["fidelity"].items())


def _equal_to_emulator(check: dict) -> bool:
    return all(v["emulator_max_diff"] == 0 for v in check["fidelity"].values())


def summarize_fidelity(checks: list[dict]) -> dict:
    """Over all checks (of every board): was the device bit-identical to the emulator, how close to BPTT per
    group (and host RHEL, the yardstick), at how many checks the monitor warned, and per board (its URI)
    whether it equalled the emulator and at how many of its checks it warned."""
    groups = list(checks[0]["fidelity"]) if checks else []
    values = {group: [check["fidelity"][group] for check in checks] for group in groups}
    boards = {check.get("board") for check in checks}

    def lowest(key):
        return {group: min(v[key] for v in vs) for group, vs in values.items()}

    return {"checks": len(checks),
            "device_equals_emulator": all(map(_equal_to_emulator, checks)),
            "min_bptt_cosine": lowest("bptt_cosine"), "min_host_rhel_cosine": lowest("host_rhel_cosine"),
            "bptt_norm_ratio": {group: [min(v["bptt_norm_ratio"] for v in vs), max(v["bptt_norm_ratio"] for v in vs)]
                                for group, vs in values.items()},
            "warned_checks": sum(map(_warned, checks)),
            "boards": {board: {"checks": len(mine), "device_equals_emulator": all(map(_equal_to_emulator, mine)),
                               "warned_checks": sum(map(_warned, mine))}
                       for board in sorted(boards, key=str)
                       for mine in [[check for check in checks if check.get("board") == board]]}}


def plot_fidelity(checks: list[dict], path: Path) -> None:
    """Per bank, 1 − cosine and norm ratio to float BPTT's gradient against step: the device's (solid)
    and host RHEL's on the same batch (dotted), the yardstick."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    boards = sorted({check.get("board") for check in checks}, key=str)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    for board, group in ((board, group) for board in boards for group in checks[0]["fidelity"] if group != WHOLE_MODEL):
        mine = [check for check in checks if check.get("board") == board]
        steps, values = [check["step"] for check in mine], [check["fidelity"][group] for check in mine]
        label = f"{group} on {board}" if len(boards) > 1 else group
        device, = left.plot(steps, [max(1 - v["bptt_cosine"], 1e-17) for v in values], marker=".", label=label)
        color = device.get_color()
        left.plot(steps, [max(1 - v["host_rhel_cosine"], 1e-17) for v in values], ":", color=color,
                  label=f"{label}, host RHEL")
        right.plot(steps, [v["bptt_norm_ratio"] for v in values], marker=".", color=color)
        right.plot(steps, [v["host_rhel_norm_ratio"] for v in values], ":", color=color)
    left.axhline(1 - MIN_BPTT_COSINE, color="red", linewidth=0.8, label="warning")
    for bound in NORM_RATIO_RANGE:
        right.axhline(bound, color="red", linewidth=0.8)
    identical = sum(map(_equal_to_emulator, checks))
    left.set(xlabel="step", ylabel="1 − cosine", yscale="log", title="device vs float BPTT: direction")
    right.set(xlabel="step", ylabel="‖device‖ / ‖BPTT‖", title="device vs float BPTT: size")
    left.legend(fontsize=8)
    fig.suptitle(f"gradient fidelity — device = emulator bit for bit at {identical} of {len(checks)} checks",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _accuracy(test: dict) -> str:
    return f"MSE {test['mse']:.4f}" if "mse" in test else f"accuracy {100 * test['accuracy']:.1f}%"


def _count(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _link_text(parts: dict) -> str:
    """Link transfer and device compute, or the link time whole when it cannot be split (see TIMING_METHOD)."""
    compute = 1e3 * parts["device_compute"]
    if parts.get("link_transfer") is None:
        return (f"link {1e3 * parts['link']:.1f} ms, transfer and board compute together (the in-process emulator "
                f"took {compute:.1f} ms on the same work, more than the whole link, so they are not split)")
    return (f"link transfer {1e3 * parts['link_transfer']:.1f} ms, device compute {compute:.1f} ms (in-process "
            "emulator on the same work)")


def describe(summary: dict, output: Path) -> str:
    """The short printed report of a HIL run."""
    hil, timing, fidelity, link = summary["hil"], summary["hil"]["timing"], summary["hil"]["fidelity"], summary["hil"]["link"]
    lines = [f"{summary['dataset']}: {summary['hru']} HSSM fine-tuned in the loop on {hil['board']} at {hil['device']} "
             f"— test {_accuracy(summary['test'])} on the device (same parameters in float: "
             f"{_accuracy(hil['test_float'])}) at the best-validation step {summary['best_step']} of {summary['steps']}"]
    lines.append(f"  training: {1e3 * timing['training_step_s']:.1f} ms a step, {1e3 * timing['training_link_s']:.1f} ms "
                 "of it in link calls")
    if fidelity["checks"]:
        parts = timing["hil_breakdown_s"]
        lines.append(f"  HIL gradient {1e3 * timing['hil_gradient_s']:.1f} ms vs host RHEL "
                     f"{1e3 * timing['host_rhel_gradient_s']:.1f} ms ({timing['hil_vs_host_rhel']:.1f}×), same batch: "
                     f"{_link_text(parts)}, host {1e3 * parts['host']:.1f} ms")
        def banks(key):
            return [value for group, value in fidelity[key].items() if group != WHOLE_MODEL]

        ratios = [r for pair in banks("bptt_norm_ratio") for r in pair]
        lines.append(f"  fidelity ({fidelity['checks']} checks): device "
                     + ("= emulator bit for bit" if fidelity["device_equals_emulator"] else "≠ emulator")
                     + f"; vs float BPTT, per bank: cosine ≥ {min(banks('min_bptt_cosine')):.6f}, norm ratio "
                     f"{min(ratios):.4f}–{max(ratios):.4f} (host RHEL on the same batches, the yardstick: cosine ≥ "
                     f"{min(banks('min_host_rhel_cosine')):.6f}); "
                     + (f"warnings at {fidelity['warned_checks']} checks" if fidelity["warned_checks"] else "all within bounds"))
        if len(fidelity["boards"]) > 1:
            lines.append("  per board: " + "; ".join(
                f"{board} " + ("= emulator" if mine["device_equals_emulator"] else "≠ emulator")
                + (f", warnings at {mine['warned_checks']} of {mine['checks']} checks" if mine["warned_checks"] else "")
                for board, mine in fidelity["boards"].items()))
    if hil["unretraced_steps"]:
        lines.append(f"  the echo did not retrace the forward path at {hil['unretraced_steps']} of {summary['steps']} "
                     "steps: a state saturated, the program's formats leave too little headroom for those training "
                     "batches, and their gradients are less exact (the fidelity checks say how much)")
    lines.append(f"  link (this session): {link['calls']} calls, {link['wire_bytes'] / 1e6:.2f} MB on the wire, "
                 f"{_count(link['retries'], 'retry', 'retries')}, {_count(link['crc_errors'], 'CRC error')}, "
                 f"{_count(link['replays'], 'replay')} after reboots")
    lines.append(f"  plots (curves.png, fidelity.png), checkpoints and summary.json in {output}")
    return "\n".join(lines)
