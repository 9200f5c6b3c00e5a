"""Lowering HWIR to the emulator, the emulated model against the float interpreter, and RHEL
gradients with the banks on a Hamiltonian core."""

import dataclasses
import warnings

import numpy as np
import pytest
import torch
import yaml

from echoforge.compiler import Format, IRError, compile_model, run
from echoforge.compiler.frontend_checkpoint import checkpoint_file, rebuild
from echoforge.compiler.report import score, trace_errors
from echoforge.hil import bank_parameter_names, gradients
from echoforge.models.core import FloatCore
from echoforge.models.data import load_dataset
from echoforge.models.hssm import HSSM
from echoforge.targets.emulator import EmulatorCore, FormatConfig
from echoforge.targets.emulator.emulated import EmulatedModel
from echoforge.targets.emulator.lower import (PROGRAM_FILE, STATE_ROLES, LoweringError, load_program, lower,
                                              save_program)

torch.set_num_threads(1)
# EmulatedModel vs the float interpreter at the default 24-bit word, relative to max|float output|:
# measured 5e-6…7e-6 on the tiny run (the state LSBs, 2^-16 and 2^-15, carried through two blocks).
OUTPUT_TOLERANCE = 1e-4
# RHEL on the emulator vs float64 BPTT at 24 bits (DESIGN §2: linear banks exact up to rounding):
# 1 − cosine measured 4.5e-9 (bank parameters) and 7.0e-9 (input); the bound leaves a margin of 14×.
# A word short by a few bits fails it: 20 bits give 3e-6, 18 bits 5e-5, 16 bits 3e-4.
MAX_ONE_MINUS_COSINE = 1e-7
DATASET = {"name": "basicmotions", "seed": 0, "time_channel": False}


@pytest.fixture(scope="module")
def data():
    return load_dataset("basicmotions", seed=0)


@pytest.fixture(scope="module")
def compiled(tiny_run, data):
    return compile_model(tiny_run, "emulator", data.train.x[:32])


@pytest.fixture(scope="module")
def nonlinear():
    torch.manual_seed(0)
    model = HSSM(6, 4, hidden_size=8, state_size=8, num_blocks=1, hru="nonlinear", step=0.1).eval()
    x = np.random.default_rng(0).normal(size=(4, 40, 6)).astype(np.float32)
    return compile_model(model, "emulator", x)


def one_line(error, *parts):
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


# ------------------------------------------------------------------------------------ lowering


@pytest.mark.parametrize("which", ["compiled", "nonlinear"])
def test_bank_formats_become_the_emulator_config(which, request):
    ir = request.getfixturevalue(which)
    program = lower(ir)
    nodes = [node for node in ir.nodes if node.kind == "hru_bank"]
    assert [bank.node for bank in program.banks] == [node.name for node in nodes]
    for bank, node in zip(program.banks, nodes):
        config, state = bank.config, node.formats["positions"]
        assert (config.word_bits, config.state_frac) == (24, state.frac_bits)
        for role in node.params:
            expected = state if role == "b" else node.formats[role]
            assert config.param(role).frac_bits == expected.frac_bits, role
            assert np.array_equal(getattr(bank.params, role), ir.param(node, role).astype(np.float64))
        headroom = config.state.max_value / max(node.ranges[role].absmax for role in STATE_ROLES)
        assert headroom >= 2  # choose_formats' one bit above the calibrated forcing, positions, momenta
        default = FormatConfig(word_bits=24, state_frac=state.frac_bits)
        if bank.params.kind == "linear":  # nudges of at least 2^-10 of the state range
            assert config.min_nudge_lsbs * 2 ** 10 >= config.state.limit > default.min_nudge_lsbs * 2 ** 10
        else:
            assert config.min_nudge_lsbs == default.min_nudge_lsbs


def test_few_state_fraction_bits_get_the_finest_tables_they_can_index():
    bits = {frac: FormatConfig(word_bits=16, state_frac=frac).table_bits for frac in (14, 8, 5, 1)}
    assert bits == {14: 10, 8: 10, 5: 7, 1: 3}
    for frac in bits:
        EmulatorCore(FormatConfig(word_bits=16, state_frac=frac))  # builds its tables


def test_program_round_trips_through_its_directory(compiled, tmp_path):
    program = lower(compiled, dataset=DATASET)
    path = save_program(program, tmp_path)
    assert path == tmp_path / PROGRAM_FILE and yaml.safe_load(path.read_text())["program_version"] == "1.0"
    loaded = load_program(tmp_path)
    assert loaded.ir == program.ir and loaded.dataset == DATASET
    assert [(b.node, b.config) for b in loaded.banks] == [(b.node, b.config) for b in program.banks]
    assert all(np.array_equal(a.params.table(), b.params.table()) for a, b in zip(loaded.banks, program.banks))


def _edit(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_program_yaml_must_agree_with_the_hwir(compiled, tmp_path):
    save_program(lower(compiled), tmp_path)
    _edit(tmp_path / PROGRAM_FILE, "state_frac: 16", "state_frac: 12")
    with pytest.raises(IRError) as error:
        load_program(tmp_path)
    one_line(error, str(tmp_path / PROGRAM_FILE), "node 'blocks.0.hru.bank'", "do not lower to")


def test_newer_program_version_is_refused(compiled, tmp_path):
    save_program(lower(compiled), tmp_path)
    _edit(tmp_path / PROGRAM_FILE, "program_version: '1.0'", "program_version: '2.0'")
    with pytest.raises(IRError) as error:
        load_program(tmp_path)
    one_line(error, PROGRAM_FILE, "2.0 is newer", "upgrade echoforge")


def _bank_changed(ir, weights=None, **changes):
    """`ir` with its first bank's node fields changed (and weights replaced)."""
    name = next(node.name for node in ir.nodes if node.kind == "hru_bank")
    nodes = [node.replace(**changes) if node.name == name else node for node in ir.nodes]
    return ir.replace(nodes=nodes, weights=ir.weights | (weights or {}))


def _formats(node, **replaced):
    return node.formats | replaced


def _refusals(ir):
    bank = next(node for node in ir.nodes if node.kind == "hru_bank")
    state = bank.formats["positions"]
    wide = {role: Format(fmt.int_bits + 9, fmt.frac_bits) for role, fmt in bank.formats.items()}  # 33 bits
    readout = next(node.name for node in ir.nodes if node.kind == "readout")
    return {
        "target": ir.replace(target={"name": "fpga", "word_bits": 24, "headroom_bits": 1.0}),
        "device-node": ir.replace(nodes=[n.replace(placement="device") if n.name == readout else n
                                         for n in ir.nodes]),
        "formats": _bank_changed(ir, formats={k: v for k, v in bank.formats.items() if k != "a"}),
        "arithmetic": _bank_changed(ir, formats=_formats(bank, a=dataclasses.replace(bank.formats["a"],
                                                                                     rounding="truncate"))),
        "word-length": _bank_changed(ir, formats=wide),
        "shared-state-format": _bank_changed(ir, formats=_formats(bank, momenta=Format(state.int_bits + 1,
                                                                                       state.frac_bits - 1))),
        "state-headroom": _bank_changed(ir, ranges=bank.ranges | {"momenta": dataclasses.replace(
            bank.ranges["momenta"], absmax=4 * state.max_value)}),
        "representable": _bank_changed(ir, formats=_formats(bank, **dict.fromkeys(
            [r for r in (*STATE_ROLES, "b") if r in bank.formats], Format(state.word_bits, 0)))),
        "param-range": _bank_changed(ir, weights={bank.params["a"]: np.full_like(ir.param(bank, "a"), 100.0)}),
    }


@pytest.mark.parametrize("rule", ["target", "device-node", "formats", "arithmetic", "word-length",
                                  "shared-state-format", "state-headroom", "representable", "param-range"])
def test_what_the_emulator_cannot_represent_is_refused_by_node_and_rule(nonlinear, rule):
    with pytest.raises(LoweringError) as error:
        lower(_refusals(nonlinear)[rule])
    one_line(error, f"[{rule}]")
    if rule != "target":
        assert "node 'blocks.0." in str(error.value)


# ------------------------------------------------------------------------------------ emulated model


def test_emulated_model_matches_the_float_interpreter(compiled, data):
    emulated = EmulatedModel(lower(compiled))
    reference, fixed = run(compiled, data.test.x), emulated.run(data.test.x)
    assert np.abs(fixed - reference).max() <= OUTPUT_TOLERANCE * np.abs(reference).max()
    assert np.array_equal(fixed.argmax(axis=1), reference.argmax(axis=1))
    assert emulated.saturated() == {}


def test_trace_has_every_node_and_what_the_device_exposes(compiled, data):
    emulated = EmulatedModel(lower(compiled))
    tensors = emulated.trace(data.test.x[:4])
    assert list(tensors) == [node.name for node in compiled.nodes]
    bank = tensors["blocks.0.hru.bank"]
    assert set(bank) == {"positions", "forcing"}  # the momenta stay on the device
    codes = bank["forcing"] * 2.0 ** emulated.program.banks[0].config.state_frac
    assert np.array_equal(codes, np.round(codes))  # the forcing as the core quantised it
    rows = trace_errors(emulated, data.test.x[:4])
    assert {row.node for row in rows} == set(tensors)
    assert all(row.error == 0 for row in rows if row.node in ("input", "encoder"))


def test_saturation_is_counted_per_bank_and_not_warned(compiled, data):
    emulated = EmulatedModel(lower(compiled))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        emulated.run(1e3 * data.test.x[:2])
    saturated = emulated.saturated()
    assert saturated["blocks.0.hru.bank"]["input"] > 0
    emulated.run(1e3 * data.test.x[:2])
    assert emulated.saturated()["blocks.0.hru.bank"]["input"] == 2 * saturated["blocks.0.hru.bank"]["input"]


def test_regression_is_scored_by_mse_on_the_last_output_step():
    outputs = np.zeros((2, 3, 1))
    outputs[:, -1] = [[1.0], [3.0]]
    assert score("regression", outputs, np.array([[0.0], [1.0]])) == 2.5
    assert score("classification", np.eye(3), np.array([0, 1, 0])) == 2 / 3


# ------------------------------------------------------------------------------------ gradients


@pytest.fixture(scope="module")
def model_and_batch(tiny_run, data):
    state = torch.load(checkpoint_file(tiny_run), weights_only=True)
    model = rebuild(state["config"], state["model"]).double()
    x = torch.from_numpy(data.train.x[:8]).double()
    return model, x, torch.from_numpy(data.train.y[:8])


def _cosine(a, b):
    a, b = torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b])
    return float(a @ b / (a.norm() * b.norm()))


def test_rhel_through_the_contract_on_float_cores_is_the_rhel_bank(model_and_batch):
    model, x, y = model_and_batch
    loss = torch.nn.functional.cross_entropy
    rhel = gradients(model, x, y, loss)
    contract = gradients(model, x, y, loss, [FloatCore(), FloatCore()])
    for name, grad in rhel.params.items():
        torch.testing.assert_close(contract.params[name], grad, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(contract.input, rhel.input, rtol=1e-10, atol=1e-14)
    assert all(hru.core is None for hru in model.hrus())  # the cores were detached again


def test_rhel_on_the_emulator_matches_float64_bptt(model_and_batch, compiled):
    model, x, y = model_and_batch
    loss = torch.nn.functional.cross_entropy
    model.set_learning("bptt")
    bptt = gradients(model, x, y, loss)
    model.set_learning("rhel")
    emulated = gradients(model, x, y, loss, [EmulatorCore(bank.config) for bank in lower(compiled).banks])
    names = bank_parameter_names(model)
    assert names and all(".hru." in name and not name.endswith((".C", ".D")) for name in names)
    assert 1 - _cosine([emulated.params[n] for n in names], [bptt.params[n] for n in names]) <= MAX_ONE_MINUS_COSINE
    assert 1 - _cosine([emulated.input], [bptt.input]) <= MAX_ONE_MINUS_COSINE
