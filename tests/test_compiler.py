"""The compiler: HWIR round trips and errors, frontends, ONNX export, passes, design rules."""

import copy
import dataclasses

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import yaml

from echoforge.compiler import (HWIR, DesignRuleError, IRError, calibrate, check_design_rules,
                                choose_formats, compile_model, drc, export_onnx, fold_norm,
                                from_checkpoint, from_model, from_onnx, load_ir, place, run, save_ir,
                                to_onnx, trace)
from echoforge.compiler.ir import KINDS, GraphBuilder, Provenance
from echoforge.compiler.migrations import MIGRATIONS
from echoforge.models.hssm import HSSM
from echoforge.models.data import load_dataset
from echoforge.models.training import Trainer, build_model, load_config
from echoforge.targets import capabilities

torch.set_num_threads(1)
EMULATOR = capabilities("emulator")

SMALL = {"hidden_size": 8, "state_size": 8, "num_blocks": 2}
VARIANTS = {
    "linear": {"hru": "linear"},
    "complex": {"hru": "linear", "complex_state": True},
    "nonlinear": {"hru": "nonlinear", "step": 0.1},
    "regression": {"hru": "linear", "task": "regression", "output_step": 5},
    "regression-mean": {"hru": "linear", "task": "regression", "readout": "mean"},
}


def make_model(variant: str, seed: int = 0) -> HSSM:
    """A small HSSM in eval mode whose norms hold non-trivial running statistics."""
    torch.manual_seed(seed)
    model = HSSM(6, 4, **SMALL, **VARIANTS[variant])
    with torch.no_grad():
        for _ in range(3):
            model(2 * torch.randn(4, 20, 6) + 1)
    return model.eval()


def inputs(length: int = 60, batch: int = 4, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.5, 1.5, (batch, length, 6)).astype(np.float32)


def torch_output(model: HSSM, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def models():
    return {variant: make_model(variant) for variant in VARIANTS}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, models):
    """A run directory as `echoforge train` leaves it: best.pt with the run's config (no task in it,
    so the frontend asks the dataset, BasicMotions: 6 inputs, 4 classes)."""
    config = load_config(None, [f"model.{key}={value}" for key, value in SMALL.items()])
    path = tmp_path_factory.mktemp("run")
    torch.save({"model": models["linear"].state_dict(), "step": 5, "config": config}, path / "best.pt")
    return path


def one_line_naming(error: pytest.ExceptionInfo, *parts: str) -> str:
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"
    return message


# ------------------------------------------------------------------------------------ round trips


def _graph_of_kind(kind: str) -> HWIR:
    """The smallest graph that holds a node of `kind` (every graph starts with an input)."""
    rng = np.random.default_rng(0)
    g = GraphBuilder()
    x = g.add("input", "x", shape=("batch", "time", 3))

    def vector(low=-1.0, high=1.0):
        return rng.uniform(low, high, 3)
    builders = {
        "input": lambda: x,
        "affine": lambda: g.add("affine", "map", [x], {"weight": rng.normal(size=(5, 3)), "bias": rng.normal(size=5)}),
        "norm": lambda: g.add("norm", "norm", [x], {"mean": vector(), "var": vector(0.5, 2)}, eps=1e-5),
        "hru_bank": lambda: g.add("hru_bank", "bank", [x], {"a": vector(0, 1), "delta": vector(0.1, 0.5),
                                                            "w": vector(0.5, 1), "b": vector(), "c": vector(0, 1)},
                                  hru_kind="nonlinear", integrator="leapfrog-dkd"),
        "readout": lambda: g.add("readout", "readout", [g.add("hru_bank", "bank", [x], {
            "a": vector(0, 1), "delta": vector(0.1, 0.5)}, hru_kind="linear", integrator="leapfrog-dkd"), x],
            {"C": rng.normal(size=(3, 3)), "D": vector()}),
        "pointwise": lambda: g.add("pointwise", "tanh", [g.add("pointwise", "gelu", [x], fn="gelu")], fn="tanh"),
        "glu": lambda: g.add("glu", "glu", [x], {"value_weight": rng.normal(size=(3, 3)), "value_bias": vector(),
                                                 "gate_weight": rng.normal(size=(3, 3)), "gate_bias": vector()}),
        "add": lambda: g.add("add", "add", [x, x]),
        "pool": lambda: g.add("pool", "mean", [g.add("pool", "every2", [x], mode="subsample", step=2)], mode="mean"),
        "head": lambda: g.add("head", "head", [x], {"weight": rng.normal(size=(2, 3))}),
    }
    output = builders[kind]()
    return g.build([output], {"num_inputs": 3}, Provenance(source="test", frontend="test"))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_node_kind_round_trips_with_all_annotations(kind, tmp_path):
    ir = _graph_of_kind(kind)
    assert any(node.kind == kind for node in ir.nodes)
    ir = place(choose_formats(calibrate(ir, inputs(batch=2, length=12)[..., :3]), EMULATOR), EMULATOR)
    loaded = load_ir(save_ir(ir, tmp_path / "g.yaml"))
    assert loaded == ir
    assert all(node.formats and node.ranges and node.saturation for node in loaded.nodes)


def test_compiled_model_round_trips_and_weights_file_is_content_addressed(models, tmp_path):
    ir = compile_model(models["nonlinear"], "emulator", inputs())
    first, second = save_ir(ir, tmp_path / "a.yaml"), save_ir(ir, tmp_path / "b.yaml")
    assert load_ir(first) == ir
    digest = [yaml.safe_load(p.read_text())["weights"]["sha256"] for p in (first, second)]
    assert digest[0] == digest[1]  # same weights, same bytes


# ------------------------------------------------------------------------------------ bad files


@pytest.fixture()
def saved(models, tmp_path):
    return save_ir(from_model(models["linear"]), tmp_path / "model.yaml")


def _edit(path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_malformed_yaml_names_file_and_line(saved):
    saved.write_text(saved.read_text() + "nodes: [\n  {name: x\n")
    with pytest.raises(IRError) as error:
        load_ir(saved)
    one_line_naming(error, f"{saved}:", "not valid YAML")


def test_unknown_node_kind_names_the_node(saved):
    _edit(saved, "kind: glu", "kind: conv1d")
    with pytest.raises(IRError) as error:
        load_ir(saved)
    one_line_naming(error, str(saved), "'blocks.0.glu'", "unknown node kind 'conv1d'")


def test_newer_schema_major_is_refused(saved):
    _edit(saved, "schema_version: '1.0'", "schema_version: '2.0'")
    with pytest.raises(IRError) as error:
        load_ir(saved)
    one_line_naming(error, str(saved), "2.0 is newer", "upgrade echoforge")


def test_newer_minor_loads_with_a_warning(saved, models):
    _edit(saved, "schema_version: '1.0'", "schema_version: '1.7'")
    with pytest.warns(UserWarning, match="1.7 is newer"):
        ir = load_ir(saved)
    assert ir.equivalent(from_model(models["linear"]))


def test_missing_weights_file(saved):
    saved.with_suffix(".npz").unlink()
    with pytest.raises(IRError) as error:
        load_ir(saved)
    one_line_naming(error, str(saved), "model.npz not found")


def test_altered_weights_fail_the_hash(saved):
    npz = saved.with_suffix(".npz")
    with np.load(npz) as archive:
        weights = {name: archive[name] for name in archive.files}
    weights["encoder.bias"] = weights["encoder.bias"] + 1e-3
    np.savez(npz, **weights)
    with pytest.raises(IRError) as error:
        load_ir(saved)
    one_line_naming(error, str(saved), "sha256", "altered")


def test_missing_tensor_names_node_and_tensor(saved):
    _edit(saved, "{weight: blocks.1.hru.input_map.weight}", "{weight: blocks.1.hru.input_map.W}")
    with pytest.raises(IRError) as error:
        load_ir(saved)
    one_line_naming(error, str(saved), "'blocks.1.hru.input_map'", "'blocks.1.hru.input_map.W'", "missing")


def test_shapes_that_disagree_between_connected_nodes(saved):
    _edit(saved, "shape: [batch, time, 6]", "shape: [batch, time, 5]")  # the input node
    with pytest.raises(IRError) as error:
        load_ir(saved)
    one_line_naming(error, str(saved), "node 'encoder'", "[batch, time, 5]", "expects 6 features")


def _as_0_9(document: dict) -> dict:
    """The synthetic 0.9 layout: a node's kind was `op`, the weights reference two flat fields."""
    document = copy.deepcopy(document)
    for node in document["nodes"]:
        node["op"] = node.pop("kind")
    weights = document.pop("weights")
    document.update(schema_version="0.9", weights_file=weights["file"], weights_sha256=weights["sha256"])
    return document


def test_older_schema_is_migrated(saved):
    current = load_ir(saved)
    saved.write_text(yaml.safe_dump(_as_0_9(yaml.safe_load(saved.read_text())), sort_keys=False))
    assert "op:" in saved.read_text() and "0.9" in MIGRATIONS
    assert load_ir(saved) == current


def test_older_schema_without_migration_is_refused(saved):
    _edit(saved, "schema_version: '1.0'", "schema_version: '0.5'")
    with pytest.raises(IRError) as error:
        load_ir(saved)
    one_line_naming(error, str(saved), "0.5 has no migration")


# ------------------------------------------------------------------------------------ frontends


@pytest.mark.parametrize("variant", VARIANTS)
def test_hwir_interpreter_equals_torch_model(models, variant):
    model, x = models[variant], inputs()
    error = np.abs(run(from_model(model), x) - torch_output(model, x)).max()
    assert error <= 1e-5


def test_checkpoint_of_a_run_directory(run_dir, models):
    ir = from_checkpoint(run_dir)
    assert ir.provenance.frontend == "checkpoint" and ir.provenance.source.endswith("best.pt")
    assert ir.model["num_inputs"] == 6 and ir.model["num_outputs"] == 4
    assert ir.model["hssm"]["task"] == "classification" and ir.model["hssm"]["dropout"] == 0.05
    x = inputs()
    assert np.abs(run(ir, x) - torch_output(models["linear"], x)).max() <= 1e-5
    assert ir.equivalent(from_model(models["linear"]).replace(model=ir.model))


def test_trained_run_compiles_from_last_pt_and_config_yaml(tmp_path):
    config = load_config(None, ["steps=2", "eval_every=2", "model.hidden_size=8", "model.state_size=8"])
    trainer = Trainer(config, tmp_path)
    trainer.run(progress=False)
    ir = from_checkpoint(tmp_path / "last.pt")  # last.pt holds no config: config.yaml supplies it
    x = trainer.data.test.x[:8]
    trainer.model.eval()
    assert np.abs(run(ir, x) - torch_output(trainer.model, x)).max() <= 1e-5


def test_regression_task_comes_from_the_dataset_when_the_config_does_not_say(tmp_path):
    config = load_config(None, ["dataset={name: adding, length: 20, size: 40}", "model.hidden_size=8",
                                "model.state_size=8"])
    data = load_dataset("adding", seed=0, length=20, size=40)
    model = build_model(config, data).eval()
    torch.save({"model": model.state_dict(), "step": 1, "config": config}, tmp_path / "best.pt")
    ir = from_checkpoint(tmp_path / "best.pt")
    assert ir.node("pool").attrs == {"mode": "subsample", "step": 20}
    x = data.test.x[:4]
    assert np.abs(run(ir, x) - torch_output(model, x)).max() <= 1e-5


def test_unreadable_checkpoint_is_one_line(tmp_path):
    (tmp_path / "best.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(IRError) as error:
        from_checkpoint(tmp_path)
    one_line_naming(error, "best.pt", "cannot rebuild the model")


# ------------------------------------------------------------------------------------ ONNX


@pytest.mark.parametrize("variant", VARIANTS)
def test_onnx_export_is_checker_clean_and_matches_torch(models, variant, tmp_path):
    model, x = models[variant], inputs(length=200)
    path = export_onnx(model, tmp_path / "model.onnx")
    onnx.checker.check_model(onnx.load(path), full_check=True)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {"input": x})
    assert output.dtype == np.float32
    assert np.abs(output - torch_output(model, x)).max() <= 1e-4


@pytest.mark.parametrize("variant", VARIANTS)
def test_onnx_frontend_recovers_the_exported_hwir(models, variant, tmp_path):
    ir = from_model(models[variant])
    recovered = from_onnx(export_onnx(ir, tmp_path / "model.onnx"))
    assert recovered.equivalent(ir) and recovered.provenance.frontend == "onnx"


def test_folded_hwir_exports_and_reads_back(models, tmp_path):
    folded, x = fold_norm(from_model(models["nonlinear"])), inputs()
    path = export_onnx(folded, tmp_path / "folded.onnx")
    (output,) = onnxruntime.InferenceSession(str(path)).run(None, {"input": x})
    assert np.abs(output - run(folded, x)).max() <= 1e-5
    assert from_onnx(path).equivalent(folded)
    assert not [n for n in onnx.load(path).graph.node if n.op_type == "BatchNormalization"]


def test_compiling_onnx_equals_compiling_the_checkpoint(run_dir, tmp_path):
    samples = inputs()
    from_ckpt = compile_model(run_dir, "emulator", samples)
    onnx_file = export_onnx(from_checkpoint(run_dir), tmp_path / "model.onnx")
    from_file = compile_model(onnx_file, "emulator", samples)
    assert from_file.equivalent(from_ckpt)
    assert from_file.provenance.source == str(onnx_file)


def test_onnx_metadata_carries_the_model(models):
    props = {p.key: p.value for p in to_onnx(from_model(models["nonlinear"])).metadata_props}
    assert props["echoforge.hru_kind"] == "nonlinear" and props["echoforge.hwir_schema_version"] == "1.0"
    assert '"num_inputs": 6' in props["echoforge.model"]


def test_unsupported_onnx_op_is_refused_by_name(models, tmp_path):
    model = to_onnx(from_model(models["linear"]))
    gelu = next(node for node in model.graph.node if node.op_type == "Gelu")
    gelu.op_type = "Softplus"
    onnx.save(model, tmp_path / "foreign.onnx")
    with pytest.raises(IRError) as error:
        from_onnx(tmp_path / "foreign.onnx")
    one_line_naming(error, "foreign.onnx", "'Softplus'", "'blocks.0.gelu/0'")


# ------------------------------------------------------------------------------------ passes


def _pure(pass_, ir, *args, **kwargs):
    before = copy.deepcopy(ir)
    out = pass_(ir, *args, **kwargs)
    assert ir == before and out is not ir
    assert out.provenance.passes[-1] == pass_.__name__
    return out


@pytest.mark.parametrize("variant", ["complex", "nonlinear"])
def test_fold_norm_removes_norms_and_keeps_outputs(models, variant):
    ir = from_model(models[variant])
    folded = _pure(fold_norm, ir)
    assert not [n for n in folded.nodes if n.kind == "norm"]
    bank_map = folded.node("blocks.0.hru.input_map")
    assert bank_map.inputs == ("encoder",) and "bias" in bank_map.params  # a bias on the forcing
    assert "bias" in folded.node("blocks.0.hru.readout").params  # from the skip D
    x = inputs()
    assert np.abs(run(folded, x) - run(ir, x)).max() <= 1e-5
    assert not any(name.endswith((".mean", ".var")) for name in folded.weights)


def test_calibrate_records_ranges_of_every_tensor(models):
    ir, x = fold_norm(from_model(models["nonlinear"])), inputs()
    calibrated = _pure(calibrate, ir, x)
    bank = calibrated.node("blocks.1.hru.bank")
    assert set(bank.ranges) == {"forcing", "positions", "momenta"}
    momenta = trace(ir, x)["blocks.1.hru.bank"]["momenta"]
    assert bank.ranges["momenta"].absmax == np.abs(momenta).max() > 0
    assert calibrated.calibration == {"samples": 4, "length": 60}
    assert all(node.ranges for node in calibrated.nodes)


def test_choose_formats_sizes_every_tensor_with_headroom(models):
    ir = calibrate(fold_norm(from_model(models["linear"])), inputs())
    chosen = _pure(choose_formats, ir, EMULATOR, 20, headroom_bits=1)
    for node in chosen.nodes:
        assert node.formats and node.saturation.risk == "low"
        for role, fmt in node.formats.items():
            assert fmt.word_bits == 20
            value = node.ranges[role].absmax if role in node.ranges else np.abs(chosen.param(node, role)).max()
            assert value * 2 <= fmt.max_value  # one bit of headroom
    bank = chosen.node("blocks.0.hru.bank")
    shared = {bank.formats[r] for r in ("forcing", "positions", "momenta")}
    assert shared == {chosen.node("blocks.0.hru.input_map").formats["out"]}
    assert chosen.target == {"name": "emulator", "word_bits": 20, "headroom_bits": 1}


def test_choose_formats_reports_saturation_risk(models):
    ir = calibrate(from_model(models["linear"]), 1e4 * inputs())  # far beyond a 16-bit word
    chosen = choose_formats(ir, EMULATOR, 16)
    assert chosen.node("input").saturation.risk == "high"
    findings = check_design_rules(place(chosen, EMULATOR), EMULATOR)
    assert any(f.rule == "saturation" and f.node == "input" and f.severity == "warning" for f in findings)
    with pytest.raises(IRError, match="word length 11"):
        choose_formats(ir, EMULATOR, 11)


def test_choose_formats_needs_calibration(models):
    with pytest.raises(IRError, match="run the calibrate pass first"):
        choose_formats(from_model(models["linear"]), EMULATOR)


def test_place_puts_banks_on_the_device(models):
    ir = from_model(models["linear"])
    placed = _pure(place, ir, EMULATOR)
    assert {n.name for n in placed.nodes if n.placement == "device"} == {"blocks.0.hru.bank", "blocks.1.hru.bank"}
    assert all(n.placement == "host" for n in placed.nodes if n.kind != "hru_bank")
    wider = dataclasses.replace(EMULATOR, device_kinds=("hru_bank", "readout"))
    assert place(ir, wider).node("blocks.0.hru.readout").placement == "device"


def _compiled_for_drc(model):
    ir = calibrate(fold_norm(from_model(model)), inputs())
    return place(choose_formats(ir, EMULATOR), EMULATOR)


def test_drc_passes_and_records_findings(models):
    ir = _compiled_for_drc(models["nonlinear"])
    checked = _pure(drc, ir, EMULATOR)
    assert checked.findings == ()


@pytest.mark.parametrize("limit, rule", [
    ({"max_oscillators": 4}, "oscillator-count"),
    ({"delta_range": (0.0, 0.05)}, "delta-range"),
    ({"hru_kinds": ("linear",)}, "hru-kind"),
    ({"word_bits": (16,), "default_word_bits": 16}, "word-length"),
    ({"max_stream_chunk": 10}, "stream-chunk"),
])
def test_drc_rejects_what_the_target_cannot_run(models, limit, rule):
    ir = _compiled_for_drc(models["nonlinear"])  # 8 oscillators, δ = 0.1, nonlinear, 24-bit, chunks of 60
    with pytest.raises(DesignRuleError) as error:
        drc(ir, dataclasses.replace(EMULATOR, **limit))
    one_line_naming(error, f"[{rule}]", "node 'blocks.0.hru.bank'")
    assert {f.rule for f in error.value.findings if f.severity == "error"} == {rule}


def test_drc_needs_placement(models):
    with pytest.raises(DesignRuleError, match=r"\[placed\].*run the place pass first"):
        drc(from_model(models["linear"]), EMULATOR)


# ------------------------------------------------------------------------------------ targets


def test_target_registry():
    assert capabilities("emulator") is EMULATOR and EMULATOR.name == "emulator"
    assert EMULATOR.max_oscillators == 4096 and EMULATOR.default_word_bits == 24
    assert set(EMULATOR.hru_kinds) == {"linear", "nonlinear"} and EMULATOR.max_stream_chunk == 4096
    with pytest.raises(ValueError, match="unknown target 'fpga9'"):
        capabilities("fpga9")


def test_emulator_word_lengths_are_what_its_formats_accept():
    from echoforge.targets.emulator.fixed import MAX_WORD_BITS, MIN_WORD_BITS

    assert EMULATOR.word_bits == tuple(range(MIN_WORD_BITS, MAX_WORD_BITS + 1))
