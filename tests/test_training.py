"""`echoforge train`: configs, real-data training, checkpoints, bit-exact resume, clear errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from echoforge.models.training import ConfigError, Trainer, load_config

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def echoforge(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "echoforge.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, **kwargs)


def test_default_config_trains_on_basicmotions(tmp_path):
    config = load_config(None, ["steps=60", "eval_every=20"])
    summary = Trainer(config, tmp_path).run(progress=False)
    assert summary["dataset"] == "BasicMotions" and summary["learning"] == "rhel"
    assert summary["test"]["accuracy"] >= 0.75  # chance is 0.25
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [20, 40, 60]
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    assert (tmp_path / "best.pt").exists() and (tmp_path / "summary.json").exists()


def test_regression_on_the_adding_problem_learns(tmp_path):
    config = load_config(None, ["dataset={name: adding, length: 30, size: 1000}", "steps=300",
                                "eval_every=100", "batch_size=32", "optimizer.lr=0.01",
                                "model.hidden_size=32", "model.dropout=0.0"])
    summary = Trainer(config, tmp_path).run(progress=False)
    assert summary["test"]["mse"] < 0.05  # predicting the mean scores 0.167


def final_parameters(run: Path) -> dict:
    return torch.load(run / "last.pt", weights_only=True)["model"]


def test_killed_run_resumes_to_identical_parameters(tmp_path):
    args = ["train", "--steps", "150", "--set", "eval_every=10", "--set", "model.hidden_size=32",
            "--no-progress"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert echoforge(*args, "-o", str(straight)).returncode == 0
    process = subprocess.Popen([sys.executable, "-m", "echoforge.cli", *args, "-o", str(killed)],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = killed / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "summary.json").exists()  # it really died mid-run
    resumed = echoforge("train", "--resume", str(killed), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    a, b = final_parameters(straight), final_parameters(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert (straight / "metrics.jsonl").read_text().count("\n") == \
        (killed / "metrics.jsonl").read_text().count("\n")


def test_bptt_training_end_to_end_tracks_rhel(tmp_path):
    """`echoforge train --learning bptt` runs BPTT (its parameters are not RHEL's bits) and, the linear HRU's
    RHEL being exact, ends where RHEL does: in float64, 20 steps apart by 2e-16 (relative, measured); the
    bound leaves a margin of 5,000×."""
    args = ["train", "--steps", "20", "--set", "eval_every=10", "--set", "dtype=float64", "--set", "model.hidden_size=8",
            "--set", "model.state_size=8", "--no-progress"]
    runs = {rule: tmp_path / rule for rule in ("bptt", "rhel")}
    for rule, run in runs.items():
        result = echoforge(*args, "--learning", rule, "-o", str(run))
        assert result.returncode == 0, result.stderr
        assert json.loads((run / "summary.json").read_text())["learning"] == rule
    bptt, rhel = final_parameters(runs["bptt"]), final_parameters(runs["rhel"])
    assert any(not torch.equal(bptt[name], rhel[name]) for name in bptt)
    for name, value in bptt.items():
        if value.is_floating_point():
            assert float((value - rhel[name]).norm()) <= 1e-12 * float(value.norm()), name
        else:
            assert torch.equal(value, rhel[name]), name  # batch-norm counters


def test_cli_prints_the_result(tmp_path):
    result = echoforge("train", "--steps", "20", "--set", "eval_every=10", "-o", str(tmp_path),
                       "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "BasicMotions" in result.stdout and "test accuracy" in result.stdout


@pytest.mark.parametrize("content,args,message", [
    ("model: [unclosed", [], "not valid YAML"),
    ("stepz: 3\n", [], "unknown config key 'stepz'"),
    ("learning: backprop\n", [], "learning: expected bptt or rhel"),
    ("steps: -1\n", [], "steps: expected a positive integer"),
    ("dataset: {name: /nonexistent/data.npz}\n", [], "/nonexistent/data.npz"),
    ("model: {hidden_sise: 3}\n", [], "hidden_sise"),
    ("", ["--set", "nonsense"], "argument --set: expected KEY=VALUE"),
])
def test_bad_config_gives_one_line_and_exit_2(tmp_path, content, args, message):
    config = tmp_path / "config.yaml"
    config.write_text(content)
    result = echoforge("train", str(config), *args, "-o", str(tmp_path / "run"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_missing_config_and_bad_resume_directory(tmp_path):
    result = echoforge("train", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "cannot read config" in result.stderr
    result = echoforge("train", "--resume", str(tmp_path))
    assert result.returncode == 2 and "no last.pt" in result.stderr


def test_overrides_parse_yaml_values():
    config = load_config(None, ["model.hru=nonlinear", "optimizer.lr=1e-4", "steps=7"])
    assert config["model"]["hru"] == "nonlinear" and config["optimizer"]["lr"] == 1e-4
    assert config["steps"] == 7
    with pytest.raises(ConfigError):
        load_config(None, ["optimizer.name=lbfgs"])


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_build_and_take_a_gradient_step(path, tmp_path):
    """Each shipped config builds its data, model and optimizer, and a step on a slice of its first batch
    (2 series, 64 time steps) gives every parameter a finite gradient."""
    config = load_config(path)
    name = config["dataset"]["name"]
    assert name in ("scp1", "scp2", "adding")
    assert config["dataset"].get("time_channel") or name == "adding"  # the paper's UEA runs add time
    trainer = Trainer(config, tmp_path)
    x, y = trainer.batch(0)
    assert x.shape[0] == min(config["batch_size"], len(trainer.data.train.x))
    loss = trainer.loss(trainer.model(x[:2, :64]), y[:2])
    loss.backward()
    assert torch.isfinite(loss)
    for parameter_name, parameter in trainer.model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), parameter_name


@pytest.mark.parametrize("args,message", [
    (["train", "--threads", "0"], "argument --threads: expected a positive integer"),
    (["board", "serve", "--tcp", "99999"], "argument --tcp: expected a TCP port"),
])
def test_bad_option_values_give_one_usage_line(args, message):
    result = echoforge(*args)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
