"""Frontend from torch: an HSSM (in memory, or a run's checkpoint) lowered to HWIR nodes.

Each block becomes norm → affine input map B → hru_bank → readout (C and the skip D) → pointwise
GELU → dropout → glu → dropout → add. Weights are the values the model computes with in eval mode,
rounded to float32: the bank's a = relu(A_raw) (or α) and δ = sigmoid(raw) (or exp(log δ)), not the
raw trainable parameters. A complex linear HRU becomes one bank of 2P real lanes (real parts
first): B stacks [B_re; B_im] (HRU.input_map) and C concatenates [C_re, −C_im], so Re(Cϕ) is an
ordinary matrix product.
"""

from __future__ import annotations

import hashlib
import pickle
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..models.core import PARAM_NAMES
from ..models.data import load_dataset
from ..models.hru import HRU
from ..models.hssm import HSSM, HSSMBlock
from ..models.training import DTYPES, build_model, load_config
from .errors import IRError, fail
from .ir import BATCH, INTEGRATOR, MEMORY, TIME, HWIR, GraphBuilder, Provenance

CHECKPOINTS = ("best.pt", "last.pt")  # what a run directory is compiled from, in order of preference


def _array(tensor: torch.Tensor):
    return tensor.detach().cpu().to(torch.float32).numpy()


def _model_section(model: HSSM, config: dict | None = None) -> dict:
    """What rebuilds `model` without its dataset: HSSM(num_inputs, num_outputs, learning=…, **hssm)."""
    hru = model.hrus()[0]
    facts = {"hidden_size": model.encoder.out_features, "state_size": hru.state_size,
             "num_blocks": len(model.blocks), "hru": hru.kind, "task": model.task,
             "output_step": model.output_step, "readout": model.readout}
    hssm = dict(config["model"]) if config else {}
    return {"num_inputs": model.encoder.in_features, "num_outputs": model.head.out_features,
            "learning": hru.learning, "dtype": str(model.encoder.weight.dtype).removeprefix("torch."),
            "hssm": hssm | facts}


def _readout_matrix(hru: HRU):
    if hru.C.dim() == 2:  # nonlinear HRU
        return hru.C
    return torch.cat([hru.C[0], -hru.C[1]] if hru.complex_state else [hru.C[0]], dim=1)


def _bank_params(hru: HRU) -> dict:
    """a and δ; w, b and c too for the nonlinear HRU (the linear one has no use for them)."""
    table = dict(zip(PARAM_NAMES, hru.oscillator_table()))
    roles = PARAM_NAMES[:2] if hru.kind == "linear" else PARAM_NAMES
    return {role: _array(table[role]) for role in roles}


def _lower_block(graph: GraphBuilder, prefix: str, block: HSSMBlock, x: str) -> str:
    hru = block.hru
    u = graph.add("norm", f"{prefix}.norm", [x], {"mean": _array(block.norm.running_mean),
                                                  "var": _array(block.norm.running_var)},
                  eps=float(np.float32(block.norm.eps)))  # float32 like every HWIR number
    forcing = graph.add("affine", f"{prefix}.hru.input_map", [u], {"weight": _array(hru.input_map())})
    positions = graph.add("hru_bank", f"{prefix}.hru.bank", [forcing], _bank_params(hru),
                          hru_kind=hru.kind, integrator=INTEGRATOR)
    y = graph.add("readout", f"{prefix}.hru.readout", [positions, u],
                  {"C": _array(_readout_matrix(hru)), "D": _array(hru.D)})
    y = graph.add("pointwise", f"{prefix}.gelu", [y], fn="gelu")
    y = graph.add("pointwise", f"{prefix}.gelu.dropout", [y], fn="identity")
    glu = block.glu
    y = graph.add("glu", f"{prefix}.glu", [y], {
        "value_weight": _array(glu.value.weight), "value_bias": _array(glu.value.bias),
        "gate_weight": _array(glu.gate.weight), "gate_bias": _array(glu.gate.bias)})
    y = graph.add("pointwise", f"{prefix}.glu.dropout", [y], fn="identity")
    return graph.add("add", f"{prefix}.skip", [x, y])


def _linear_params(layer: torch.nn.Linear) -> dict:
    return {"weight": _array(layer.weight), "bias": _array(layer.bias)}


def from_model(model: HSSM, config: dict | None = None, *, source: str = MEMORY,
               source_sha256: str | None = None, frontend: str = "torch") -> HWIR:
    """Lower an HSSM, as it computes in eval mode, to an HWIR (unfolded norms, no formats)."""
    graph = GraphBuilder()
    section = _model_section(model, config)
    x = graph.add("input", "input", shape=(BATCH, TIME, section["num_inputs"]))
    x = graph.add("affine", "encoder", [x], _linear_params(model.encoder))
    for index, block in enumerate(model.blocks):
        x = _lower_block(graph, f"blocks.{index}", block, x)
    if model.readout == "mean":
        x = graph.add("pool", "pool", [x], mode="mean")
    else:
        x = graph.add("pool", "pool", [x], mode="subsample", step=model.output_step)
    head = graph.add("head", "head", [x], _linear_params(model.head))
    provenance = Provenance(source=source, frontend=frontend, source_sha256=source_sha256)
    return graph.build([head], section, provenance)


# ------------------------------------------------------------------------------------ checkpoints


def checkpoint_file(path: str | Path) -> Path:
    """The checkpoint a path means: the file itself, or a run directory's best.pt (else last.pt)."""
    path = Path(path)
    if path.is_dir():
        for name in CHECKPOINTS:
            if (path / name).exists():
                return path / name
        raise fail(str(path), None, f"no {' or '.join(CHECKPOINTS)} in this directory",
                   "give a run directory written by `echoforge train`, or a checkpoint file")
    if not path.exists():
        raise fail(str(path), None, "no such checkpoint", "check the path")
    return path


def _run_config(file: Path, state: dict) -> dict:
    """The run's config: stored in best.pt; last.pt relies on the run directory's config.yaml."""
    if "config" in state:
        return state["config"]
    config = file.parent / "config.yaml"
    if not config.exists():
        raise fail(str(file), None, "checkpoint holds no config and there is no config.yaml beside it",
                   "compile best.pt, or keep the run directory together")
    return load_config(config)


def rebuild(config: dict, state_dict: dict) -> HSSM:
    """The HSSM of a run, weights loaded, in eval mode.

    Input and output sizes come from the weights; the task from config["model"], or — as in
    training, where the dataset decides it — from the dataset when the config does not say.
    """
    if "task" in config["model"]:
        model = HSSM(state_dict["encoder.weight"].shape[1], state_dict["head.weight"].shape[0],
                     learning=config["learning"], **config["model"])
    else:
        options = dict(config["dataset"])
        model = build_model(config, load_dataset(options.pop("name"), seed=config["seed"], **options))
    model = model.to(DTYPES[config["dtype"]])
    model.load_state_dict(state_dict)
    return model.eval()


@contextmanager
def _reading(file: Path):
    """Turn whatever reading a foreign or damaged checkpoint raises into one IRError line."""
    try:
        yield
    except IRError:
        raise
    except (OSError, EOFError, pickle.UnpicklingError, RuntimeError, KeyError, TypeError,
            ValueError) as error:
        # torch's refusal of a non-checkpoint advises weights_only=False, i.e. running the file's code: never
        # pass that on.
        first_line = ("not a torch checkpoint of tensors and plain data" if isinstance(error, pickle.UnpicklingError)
                      else next(iter(str(error).splitlines()), ""))
        raise fail(str(file), None, f"cannot rebuild the model ({type(error).__name__}: {first_line})",
                   "give a run directory or a checkpoint (.pt) written by `echoforge train`") from None


def run_config(path: str | Path) -> dict:
    """The training config of a checkpoint or run directory: its dataset, seed and model options."""
    file = checkpoint_file(path)
    with _reading(file):
        return _run_config(file, torch.load(file, weights_only=True, map_location="cpu"))


def _load(file: Path) -> tuple[dict, HSSM]:
    """(run config, model in eval mode) of a checkpoint file."""
    with _reading(file):
        state = torch.load(file, weights_only=True, map_location="cpu")
        config = _run_config(file, state)
        return config, rebuild(config, state["model"])


def load_model(path: str | Path) -> HSSM:
    """The trained HSSM of a checkpoint or run directory (its best.pt), in eval mode, for inference."""
    return _load(checkpoint_file(path))[1]


def from_checkpoint(path: str | Path) -> HWIR:
    """Lower the model of a checkpoint (best.pt/last.pt) or run directory to an HWIR."""
    file = checkpoint_file(path)
    config, model = _load(file)
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    return from_model(model, config, source=str(file), source_sha256=digest, frontend="checkpoint")
