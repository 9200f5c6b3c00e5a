"""The README's first command, `echoforge demo`, run as a process (issue 18 item 5): no warning, every
fidelity figure it prints ≥ 0.99 cosine with the board equal to the emulator bit for bit, no negative
duration, no saturated echo."""

from __future__ import annotations

import json
import re

import pytest

from everyday import echoforge
from echoforge.hil.report import describe, summarize_timing


def check_demo_output(result, output) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warn" not in result.stderr.lower() and "warn" not in result.stdout.lower(), result.stderr
    assert "device = emulator bit for bit" in result.stdout
    cosines = [float(value) for value in re.findall(r"cosine ≥ (-?[\d.]+)", result.stdout)]
    assert cosines and min(cosines) >= 0.99, result.stdout
    assert not re.search(r"-\d[\d.]* ms", result.stdout), result.stdout
    assert "did not retrace" not in result.stdout
    hil = json.loads((output / "summary.json").read_text())["hil"]
    assert min(hil["fidelity"]["min_bptt_cosine"].values()) >= 0.99
    assert hil["fidelity"]["device_equals_emulator"] and hil["unretraced_steps"] == 0
    assert all(seconds is None or seconds >= 0 for seconds in hil["timing"]["hil_breakdown_s"].values())


def test_a_short_demo_prints_no_warning_and_faithful_figures(tmp_path):
    result = echoforge("demo", "--steps", "100", "--hil-steps", "10", "--fidelity-every", "5", "-o", tmp_path,
                       "--no-progress", cwd=tmp_path)
    check_demo_output(result, tmp_path)


@pytest.mark.slow
def test_the_readme_demo_prints_no_warning_and_faithful_figures(tmp_path):
    check_demo_output(echoforge("demo", cwd=tmp_path), tmp_path / "runs" / "demo")


def test_a_link_the_emulator_outran_is_reported_whole_never_negative():
    checks = [{"seconds": {"device": 0.05, "link": 0.010, "device_compute": 0.012, "host_rhel": 0.02}}] * 2
    timing = summarize_timing({"steps": 2, "seconds": 0.1, "link_seconds": 0.02}, checks)
    assert timing["hil_breakdown_s"]["link_transfer"] is None
    summary = {"dataset": "d", "hru": "linear", "test": {"accuracy": 1.0}, "best_step": 2, "steps": 2,
               "hil": {"board": "b", "device": "u", "test_float": {"accuracy": 1.0}, "unretraced_steps": 0,
                       "timing": timing, "link": {"calls": 1, "wire_bytes": 1, "retries": 1, "crc_errors": 0,
                                                  "replays": 1},
                       "fidelity": {"checks": 2, "device_equals_emulator": True, "warned_checks": 0,
                                    "min_bptt_cosine": {"bank": 0.999}, "min_host_rhel_cosine": {"bank": 1.0},
                                    "bptt_norm_ratio": {"bank": [0.99, 1.01]},
                                    "boards": {"u": {"checks": 2, "device_equals_emulator": True, "warned_checks": 0}}}}}
    text = describe(summary, "out")
    assert "link 10.0 ms, transfer and board compute together" in text and not re.search(r"-\d", text)
    assert "1 retry, 0 CRC errors, 1 replay after reboots" in text
