"""The everyday commands as a new user meets them (issue 18), each run as a process: wrong results
refused, config typos named, resume with new settings, board limits, conventions, the Python API."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from everyday import echoforge, one_line_error

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def accurate_run(tmp_path_factory) -> Path:
    """A run that reaches 100 % validation accuracy (8 features and oscillators, 100 steps, ~2 s), so
    that a compile ruining it shows."""
    from echoforge.models.training import Trainer, load_config

    output = tmp_path_factory.mktemp("accurate-run")
    config = load_config(None, ["steps=100", "eval_every=25", "model.hidden_size=8", "model.state_size=8"])
    Trainer(config, output).run(progress=False)
    return output


# ---- 1. a ruined result exits 0 -------------------------------------------------------------------

def test_compile_refuses_headroom_beyond_its_bound_before_loading(tiny_run, tmp_path):
    one_line_error(echoforge("compile", tiny_run, "-o", tmp_path / "b", "--headroom-bits", "40"),
                   "--headroom-bits", "0–16")
    assert not (tmp_path / "b").exists()


def test_compile_whose_fixed_point_costs_accuracy_is_a_finding_unless_accepted(accurate_run, tmp_path):
    ruined = echoforge("compile", accurate_run, "-o", tmp_path / "b", "--headroom-bits", "12", "--no-progress")
    line = one_line_error(ruined, "[score]", "points of accuracy", "--max-change")
    assert "float 100.0%" in line
    assert (tmp_path / "b" / "report.md").exists()  # the numbers are written before the refusal
    accepted = echoforge("compile", accurate_run, "-o", tmp_path / "b", "--headroom-bits", "12",
                         "--max-change", "100", "--no-progress")
    assert accepted.returncode == 0, accepted.stderr


def test_compile_refuses_data_with_another_class_count(tiny_run, tmp_path):
    assert echoforge("export", tiny_run, "-o", tmp_path / "m.onnx").returncode == 0
    one_line_error(echoforge("compile", tmp_path / "m.onnx", "-o", tmp_path / "b", "--data", "scp1"),
                   "scp1", "2 classes", "4 outputs")
    assert not (tmp_path / "b").exists()
