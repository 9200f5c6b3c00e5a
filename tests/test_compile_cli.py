"""`echoforge export | compile | emulate` end to end, as a user runs them: one process per command.

Every bad input gives one line on stderr naming the file (and node, and rule) and exit status 2.
"""

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch

from echoforge.cli import main
from echoforge.models.data import load_dataset
from echoforge.models.training import build_model, load_config

torch.set_num_threads(1)


def echoforge(*args):
    return subprocess.run([sys.executable, "-m", "echoforge.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=300)


def assert_fails_with_one_line(result, *parts):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for part in parts:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"


@pytest.fixture(scope="module")
def compiled(tiny_run, tmp_path_factory):
    """`echoforge compile RUN --target emulator -o OUT`: (OUT, the finished process)."""
    out = tmp_path_factory.mktemp("build") / "tiny"
    result = echoforge("compile", tiny_run, "--target", "emulator", "-o", out, "--no-progress")
    assert result.returncode == 0, result.stderr
    return out, result


@pytest.fixture()
def program(compiled, tmp_path):
    """A copy of the compiled program directory, to damage."""
    return shutil.copytree(compiled[0], tmp_path / "program")


def _edit(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


# ------------------------------------------------------------------------------------ happy paths


def test_compile_writes_the_program_and_a_report(compiled):
    out, result = compiled
    assert result.stderr == ""
    assert {p.name for p in out.iterdir()} == {"program.yaml", "model.yaml", "model.npz", "report.md",
                                               "report.json"}
    assert "2 banks on the device" in result.stdout and "accuracy float" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["target"]["word_bits"] == 24 and report["calibration"]["data"] == "basicmotions train"
    validation = report["validation"]
    assert validation["metric"] == "accuracy" and validation["saturation"] == {}
    assert 0 < validation["output_deviation"] <= 1e-4  # fixed point moves the logits, a little
    assert abs(validation["change"]) <= 0.01 and validation["change"] == validation["fixed"] - validation["float"]
    bank = next(node for node in report["nodes"] if node["name"] == "blocks.0.hru.bank")
    assert set(bank["formats"]) >= {"positions", "forcing", "momenta", "a", "delta"}
    assert set(bank["ranges"]) == {"positions", "forcing", "momenta"}
    assert bank["headroom_bits"] >= 1 and bank["risk"] == "low"
    markdown = (out / "report.md").read_text()
    assert "Expected change" in markdown and "| blocks.1.hru.bank | hru_bank | device |" in markdown


def test_emulate_prints_float_vs_fixed_and_traces_every_node(compiled):
    out, _ = compiled
    result = echoforge("emulate", out, "--data", "basicmotions", "--split", "test", "--trace", "--no-progress")
    assert result.returncode == 0 and result.stderr == ""
    summary, trace = result.stdout.split("float vs fixed, node by node", 1)
    assert "basicmotions test (12 samples): accuracy float" in summary and "saturation: none" in summary
    nodes = [node["name"] for node in json.loads((out / "report.json").read_text())["nodes"]]
    rows = [line.split() for line in trace.strip().splitlines()[2:]]
    assert sorted({row[0] for row in rows}) == sorted(nodes)
    assert ["blocks.0.hru.bank", "positions", "device"] in [row[:3] for row in rows]


def test_export_then_compile_the_onnx_file(tiny_run, tmp_path):
    onnx_file = tmp_path / "tiny.onnx"
    result = echoforge("export", tiny_run, "-o", onnx_file)
    assert result.returncode == 0 and "wrote" in result.stdout
    onnx.checker.check_model(onnx.load(onnx_file), full_check=True)
    assert main(["compile", str(onnx_file), "-o", str(tmp_path / "out"), "--data", "basicmotions",
                 "--word-bits", "20", "--no-progress"]) == 0
    assert (tmp_path / "out" / "program.yaml").exists()


def test_headroom_bits_widen_the_integer_part(tiny_run, tmp_path, capsys):
    states = {}
    for headroom in ("1", "3"):
        assert main(["compile", str(tiny_run), "-o", str(tmp_path / headroom), "--headroom-bits", headroom,
                     "--no-progress"]) == 0
        states[headroom] = [line.split("state ")[1] for line in capsys.readouterr().out.splitlines()
                            if ": " in line and "oscillators, state" in line]
    # Two more bits of headroom: two more integer bits (two fewer fraction bits) in every bank's state.
    int_bits = {h: [int(s[1:].split(".")[0]) for s in states[h]] for h in states}
    assert [b + 2 for b in int_bits["1"]] == int_bits["3"]
    result = echoforge("compile", tiny_run, "-o", tmp_path / "bad", "--headroom-bits", "-1")
    assert result.returncode == 2 and "argument --headroom-bits: expected a number of bits 0–16" in result.stderr


def test_compile_from_the_hwir_it_wrote_gives_the_same_program(compiled, tmp_path):
    """An HWIR .yaml is a compile source too (with --data: it does not record the data protocol); compiled
    again on the same data it keeps every node, format and weight, and records the passes twice."""
    import yaml
    first = compiled[0]
    again = echoforge("compile", first / "model.yaml", "-o", tmp_path / "again", "--data", "basicmotions",
                      "--no-time-channel", "--no-progress")
    assert again.returncode == 0, again.stderr
    hwir = [yaml.safe_load((out / "model.yaml").read_text()) for out in (first, tmp_path / "again")]
    assert hwir[1]["nodes"] == hwir[0]["nodes"] and hwir[1]["weights"] == hwir[0]["weights"]
    assert hwir[1]["provenance"]["passes"] == 2 * hwir[0]["provenance"]["passes"]
    assert (tmp_path / "again" / "model.npz").read_bytes() == (first / "model.npz").read_bytes()


def test_onnx_without_data_is_a_one_line_error(tiny_run, tmp_path, capsys):
    onnx_file = tmp_path / "tiny.onnx"
    assert main(["export", str(tiny_run), "-o", str(onnx_file)]) == 0
    assert main(["compile", str(onnx_file), "-o", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.strip().endswith("give --data DATASET")


# ------------------------------------------------------------------------------------ bad input


def test_malformed_program_yaml(program):
    (program / "program.yaml").write_text("program_version: '1.0'\nbanks: [\n  {node: x\n")
    assert_fails_with_one_line(echoforge("emulate", program), "program.yaml:", "not valid YAML")


def test_unknown_node_kind(program):
    _edit(program / "model.yaml", "kind: glu", "kind: conv1d")
    assert_fails_with_one_line(echoforge("emulate", program), "model.yaml", "node 'blocks.0.glu'",
                               "unknown node kind 'conv1d'")


@pytest.mark.parametrize("file, field", [("model.yaml", "schema_version"), ("program.yaml", "program_version")])
def test_newer_schema_major(program, file, field):
    _edit(program / file, f"{field}: '1.0'", f"{field}: '2.0'")
    assert_fails_with_one_line(echoforge("emulate", program), file, "2.0 is newer", "upgrade echoforge")


def test_missing_weights_file(program):
    (program / "model.npz").unlink()
    assert_fails_with_one_line(echoforge("emulate", program), "model.yaml", "model.npz not found")


def test_altered_weights_file(program):
    npz = program / "model.npz"
    with np.load(npz) as archive:
        weights = {name: archive[name] for name in archive.files}
    weights["head.bias"] = weights["head.bias"] + 1e-3
    np.savez(npz, **weights)
    assert_fails_with_one_line(echoforge("emulate", program), "model.yaml", "sha256", "altered")


def test_shapes_that_do_not_agree(program):
    _edit(program / "model.yaml", "shape: [batch, time, 6]", "shape: [batch, time, 5]")  # the input
    assert_fails_with_one_line(echoforge("emulate", program), "model.yaml", "node 'encoder'",
                               "expects 6 features")


def test_data_with_other_channels_than_the_program(compiled):
    result = echoforge("emulate", compiled[0], "--data", "adding", "--no-progress")
    assert_fails_with_one_line(result, "adding: the data have 2 channels", "takes 6")


def test_program_yaml_that_disagrees_with_the_hwir(program):
    _edit(program / "program.yaml", "state_frac: 16", "state_frac: 12")
    assert_fails_with_one_line(echoforge("emulate", program), "program.yaml", "node 'blocks.0.hru.bank'",
                               "do not lower to")


def test_unsupported_onnx_op(tiny_run, tmp_path):
    onnx_file = tmp_path / "foreign.onnx"
    assert main(["export", str(tiny_run), "-o", str(onnx_file)]) == 0
    model = onnx.load(onnx_file)
    next(node for node in model.graph.node if node.op_type == "Gelu").op_type = "Softplus"
    onnx.save(model, onnx_file)
    result = echoforge("compile", onnx_file, "-o", tmp_path / "out", "--data", "basicmotions")
    assert_fails_with_one_line(result, "foreign.onnx", "'blocks.0.gelu/0'", "unsupported ONNX op 'Softplus'")


def test_model_larger_than_the_target_allows(tmp_path):
    config = load_config(None, ["model.hidden_size=2", "model.state_size=4097", "model.num_blocks=1"])
    model = build_model(config, load_dataset("basicmotions", seed=0))
    torch.save({"model": model.state_dict(), "step": 0, "config": config}, tmp_path / "best.pt")
    result = echoforge("compile", tmp_path, "-o", tmp_path / "out", "--samples", "2")
    assert_fails_with_one_line(result, "best.pt", "[oscillator-count]", "node 'blocks.0.hru.bank'",
                               "4097 oscillators exceed")


def saturating_dataset(path):
    """An .npz whose test series are 1000× larger than its training series, so that normalised with the
    training statistics they leave every calibrated range. Channel 0 numbers the series, which tells
    which of them load_dataset's seeded split puts in the test split."""
    count = 40
    x = np.random.default_rng(0).normal(size=(count, 50, 6))
    x[:, :, 0] = np.arange(count)[:, None]
    y = np.arange(count) % 4
    np.savez(path, x=x, y=y)
    data = load_dataset(path, seed=0)
    test = np.rint(data.test.x[:, 0, 0] * data.std[0] + data.mean[0]).astype(int)
    x[test, :, 1:] *= 1e3
    np.savez(path, x=x, y=y)
    return path


def test_inputs_that_saturate(compiled, tmp_path, capsys):
    out, _ = compiled
    loud = saturating_dataset(tmp_path / "loud.npz")
    result = echoforge("emulate", out, "--data", loud, "--no-progress")
    assert_fails_with_one_line(result, "program.yaml", "node 'blocks.0.hru.bank'", "[saturation]", "input=")
    assert "saturation: blocks.0.hru.bank input=" in result.stdout  # the numbers are printed first
    assert main(["emulate", str(out), "--data", str(loud), "--allow-saturation", "--no-progress"]) == 0
    assert "input=" in capsys.readouterr().out
