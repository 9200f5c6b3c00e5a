"""Host training of HSSMs: config, seeded batching, evaluation, checkpoints that resume bit for bit.

A run is a directory: config.yaml (the resolved config), last.pt (everything needed to resume: model,
optimizer, RNG, progress), best.pt (the best-validation model), metrics.jsonl, curves.png and
summary.json. The trainer holds no global state beyond torch's RNG, which it saves and restores.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import json
import math
import os
import re
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from tqdm import tqdm

from .data import REGRESSION, Dataset, adding_problem, copy_memory, load_dataset
from .hssm import HRU_KINDS, HSSM

DEFAULT_CONFIG = {
    "dataset": {"name": "basicmotions", "time_channel": False},
    "model": {"hidden_size": 16, "state_size": 16, "num_blocks": 2, "hru": "linear",
              "epsilon": 0.1, "dropout": 0.05},
    "learning": "rhel",
    "optimizer": {"name": "adam", "lr": 3e-3, "weight_decay": 0.0},
    "steps": 300,
    "batch_size": 16,
    "eval_every": 25,
    "eval_batch_size": 64,
    "grad_clip": None,
    "seed": 0,
    "dtype": "float32",
    "output": "runs/basicmotions-rhel",
}
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class _ConfigLoader(yaml.SafeLoader):
    """yaml.SafeLoader that also reads 1e-4 as a float (YAML 1.1 wants 1.0e-4)."""


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789."))


def _parse_yaml(text: str):
    return yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader: builds plain data, runs nothing


class ConfigError(ValueError):
    """A config the trainer cannot run; the message names the key and what to do."""


def merge(base: dict, update: dict) -> dict:
    """Deep-merge `update` into a copy of `base` (the keys are checked by `check_keys`)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = merge(base[key], value)
        else:
            out[key] = value
    return out


# ---- the schema: which keys a config may have ---------------------------------------------------
# The sections' keys are the keyword arguments of what they configure, read from the signatures,
# so a new model or optimizer option needs no entry here.
SECTIONS = ("dataset", "model", "optimizer")


def _keywords(function, *filled: str) -> dict:
    """Keyword arguments of `function` that a config may set (not those the trainer fills in), with
    their defaults (None if they have none)."""
    kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return {name: None if parameter.default is inspect.Parameter.empty else parameter.default
            for name, parameter in inspect.signature(function).parameters.items()
            if parameter.kind not in kinds and name not in ("self", *filled)}


def schema(config: dict) -> dict[str, dict]:
    """Per section of `config` (top level: ""), the keys it may have and an example value of each (the
    default; None: any), given its HRU kind and optimizer."""
    hru = HRU_KINDS.get(config["model"].get("hru"), HRU_KINDS["linear"])
    optimizer = OPTIMIZERS.get(config["optimizer"].get("name"), OPTIMIZERS["adam"])
    synthetic = _keywords(adding_problem, "seed") | _keywords(copy_memory, "seed") | {"num_series": 1}
    model = (_keywords(HSSM.__init__, "input_size", "num_outputs", "learning")
             | _keywords(hru.__init__, "input_size", "state_size", "learning", "epsilon"))
    return {"": dict(DEFAULT_CONFIG),
            "dataset": {"name": "", **_keywords(load_dataset, "name_or_path", "seed"), **synthetic},
            "model": {key: DEFAULT_CONFIG["model"].get(key, default) for key, default in model.items()},
            "optimizer": {"name": "", **{key: float(default) if type(default) is int else default  # rates, decays
                                         for key, default in _keywords(optimizer.__init__, "params").items()}}}


def _same_kind(value, example) -> bool:
    """Whether `value` can stand where the schema's `example` does (numbers by kind, strings, flags)."""
    if example is None or value is None:
        return True
    if isinstance(example, bool) or isinstance(value, bool):
        return isinstance(value, bool) == isinstance(example, bool)
    if isinstance(example, (int, float)):
        return isinstance(value, int) if isinstance(example, int) else isinstance(value, (int, float))
    if isinstance(example, (list, tuple)):
        return isinstance(value, (list, tuple))
    return isinstance(value, type(example))


def _paths(update: dict, where: str = "") -> list[str]:
    """The dotted key paths `update` sets, down to the sections' keys."""
    paths = []
    for key, value in update.items():
        path = f"{where}{key}"
        paths += _paths(value, f"{path}.") if isinstance(value, dict) and key in SECTIONS and not where else [path]
    return paths


def check_keys(config: dict, layers: list[tuple[str, dict]]) -> None:
    """Refuse a key the schema does not know, naming where it was set and the nearest valid key."""
    for section in SECTIONS:
        if not isinstance(config.get(section), dict):
            source = next((source for source, update in reversed(layers) if section in update), "the config")
            raise ConfigError(f"{source}: {section} must be a mapping of keys, got {config.get(section)!r}")
    known = schema(config)
    for source, update in layers:
        for path in _paths(update):
            section, _, key = path.rpartition(".")
            keys = known[section]
            if key not in keys:
                near = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
                prefix = f"{section}." if section else ""
                hint = f"did you mean {prefix + near[0]!r}?" if near else f"valid keys: {', '.join(sorted(keys))}"
                raise ConfigError(f"{source}: unknown config key {path!r} — {hint}")
            value = _lookup(config, path)
            if section and not _same_kind(value, keys[key]):
                raise ConfigError(f"{source}: {path} must be like {keys[key]!r}, got {value!r}")


def _lookup(config: dict, path: str):
    for part in path.split("."):
        config = config[part]
    return config


def load_config(path: str | Path | None, overrides: list[str] = (), base: dict = DEFAULT_CONFIG) -> dict:
    """`base` (the default config), updated by a YAML file and `key.sub=value` overrides (values
    parsed as YAML); every key they set is checked against the schema, every value validated."""
    layers = []
    if path is not None:
        try:
            data = _parse_yaml(Path(path).read_text())
        except OSError as error:
            raise ConfigError(f"cannot read config {path}: {error.strerror}") from None
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{line}: not valid YAML — fix the syntax there") from None
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
        layers.append((str(path), data))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        update = _parse_yaml(text)
        for part in reversed(key.split(".")):
            update = {part: update}
        layers.append((f"--set {item}", update))
    config = base
    for _, update in layers:
        config = merge(config, update)
    check_keys(config, layers)
    validate(config)
    return config


# What a resumed run may change: it continues the same run, so only how far it goes.
RESUMABLE = ("steps",)


def resume_config(run: str | Path, overrides: list[str] = ()) -> dict:
    """The config of the run in `run` (its config.yaml), with the overrides a resume may apply
    (RESUMABLE: steps, to extend it); any other is refused with one line."""
    for item in overrides:
        if item.partition("=")[0] not in RESUMABLE:
            raise ConfigError(f"--resume {run} continues that run as configured: only {', '.join(RESUMABLE)} may "
                              f"change, not {item!r} — start a new run (another --output) to change it")
    return load_config(Path(run) / "config.yaml", overrides)


def validate(config: dict) -> None:
    if config["learning"] not in ("bptt", "rhel"):
        raise ConfigError(f"learning: expected bptt or rhel, got {config['learning']!r}")
    if config["optimizer"].get("name") not in OPTIMIZERS:
        raise ConfigError(f"optimizer.name: expected one of {sorted(OPTIMIZERS)}, "
                          f"got {config['optimizer'].get('name')!r}")
    if config["dtype"] not in DTYPES:
        raise ConfigError(f"dtype: expected one of {sorted(DTYPES)}, got {config['dtype']!r}")
    clip = config["grad_clip"]
    if clip is not None and not (isinstance(clip, (int, float)) and clip > 0):
        raise ConfigError(f"grad_clip: expected a positive number or null, got {clip!r}")
    for key in ("steps", "batch_size", "eval_every", "eval_batch_size"):
        if not _integer(config[key]) or config[key] < 1:
            raise ConfigError(f"{key}: expected a positive integer, got {config[key]!r}")
    if not _integer(config["seed"]) or config["seed"] < 0:
        raise ConfigError(f"seed: expected an integer ≥ 0, got {config['seed']!r}")
    if not isinstance(config["output"], str) or not config["output"]:
        raise ConfigError(f"output: expected a directory name, got {config['output']!r}")


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _atomic_save(obj, path: Path) -> None:
    """Write then rename, so a run killed mid-write never leaves a torn checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def build_model(config: dict, data: Dataset) -> HSSM:
    options = dict(config["model"])
    if data.task == REGRESSION:
        options.setdefault("task", "regression")
        if options.get("readout", "steps") == "steps":
            options.setdefault("output_step", data.train.x.shape[1])
    elif data.task != "classification":
        raise ConfigError(f"dataset {data.name!r} is a {data.task} task, which the HSSM heads do not "
                          "support yet; choose a classification or regression dataset")
    try:
        model = HSSM(data.num_inputs, data.num_outputs, learning=config["learning"], **options)
    except TypeError as error:
        raise ConfigError(f"model: {error}") from None
    return model.to(DTYPES[config["dtype"]])


class Trainer:
    """Trains one HSSM on one dataset as a config says, into an output directory.

    Subclasses change where the oscillator banks run (hil.HILTrainer) through a few hooks — what the
    progress bar shows, the metrics file, the checkpoint state, the summary and plots — never the loop.
    """

    label = "train"  # the progress bar's name for the run

    def __init__(self, config: dict, output: str | Path | None = None):
        self.config = config
        self.output = Path(output or config["output"])
        self.dtype = DTYPES[config["dtype"]]
        torch.manual_seed(config["seed"])
        dataset = dict(config["dataset"])
        try:
            self.data = load_dataset(dataset.pop("name", None), seed=config["seed"], **dataset)
        except TypeError as error:
            raise ConfigError(f"dataset: {error}") from None
        self.model = build_model(config, self.data)
        optimizer = dict(config["optimizer"])
        try:
            self.optimizer = OPTIMIZERS[optimizer.pop("name")](self.model.parameters(), **optimizer)
        except (TypeError, ValueError) as error:
            raise ConfigError(f"optimizer: {error}") from None
        self.step = 0
        self.records: list[dict] = []
        self.best = {"metric": -math.inf, "loss": math.inf, "step": 0}

    # -- data -------------------------------------------------------------------------------

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The training batch of a step: a function of (seed, step) alone, so resuming needs no state."""
        n, size = len(self.data.train.x), min(self.config["batch_size"], len(self.data.train.x))
        per_epoch = n // size
        epoch, index = divmod(step, per_epoch)
        order = np.random.default_rng([self.config["seed"], epoch]).permutation(n)
        chosen = order[index * size:(index + 1) * size]
        return self.tensors(self.data.train.x[chosen], self.data.train.y[chosen])

    def tensors(self, x, y):
        y = torch.from_numpy(np.asarray(y))
        return torch.from_numpy(x).to(self.dtype), y.to(self.dtype) if self.regression else y

    @property
    def regression(self) -> bool:
        return self.data.task == REGRESSION

    # -- objective --------------------------------------------------------------------------

    def loss(self, output, y):
        if self.regression:
            last = output.dim() == 3 and y.dim() == 2  # "steps" readout scored at its last output
            return torch.nn.functional.mse_loss(output[:, -1] if last else output, y)
        return torch.nn.functional.cross_entropy(output, y)

    @torch.no_grad()
    def evaluate(self, split) -> dict:
        """Loss and metric (accuracy, or MSE for regression) over a split, in eval mode."""
        self.model.eval()
        total_loss, correct, count = 0.0, 0, 0
        size = self.config["eval_batch_size"]
        for start in range(0, len(split.x), size):
            x, y = self.tensors(split.x[start:start + size], split.y[start:start + size])
            output = self.model(x)
            total_loss += float(self.loss(output, y)) * len(x)
            if not self.regression:
                correct += int((output.argmax(dim=1) == y).sum())
            count += len(x)
        self.model.train()
        loss = total_loss / count
        if self.regression:
            return {"loss": loss, "mse": loss, "metric": -loss}
        return {"loss": loss, "accuracy": correct / count, "metric": correct / count}

    def train_step(self) -> float:
        x, y = self.batch(self.step)
        self.optimizer.zero_grad()
        loss = self.loss(self.model(x), y)
        self.backward(loss)
        if self.config["grad_clip"] is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config["grad_clip"])
        self.optimizer.step()
        self.step += 1
        return loss.item()

    def backward(self, loss) -> None:
        """The step's gradients (a data-parallel trainer also sums them over ranks: models.distributed)."""
        loss.backward()

    # -- persistence ------------------------------------------------------------------------

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": torch.get_rng_state(), "step": self.step, "records": self.records,
                "best": self.best}

    def save(self) -> None:
        self.output.mkdir(parents=True, exist_ok=True)
        (self.output / "config.yaml").write_text(yaml.safe_dump(self.config, sort_keys=False))
        _atomic_save(self.state(), self.output / "last.pt")
        with open(self.output / "metrics.jsonl", "w") as stream:
            stream.writelines(json.dumps(record) + "\n" for record in self.metrics())

    def metrics(self) -> list[dict]:
        """The lines of metrics.jsonl: one validation record per eval_every steps."""
        return self.records

    def restore(self) -> dict:
        """Continue from last.pt; the run then ends exactly as if it had never stopped. Returns the
        checkpoint, for what subclasses keep in it."""
        state = torch.load(self.output / "last.pt", weights_only=True)
        self.load_state(state)
        return state

    def load_state(self, state: dict) -> None:
        """Put the trainer back to a `state()`."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        self.step, self.records, self.best = state["step"], state["records"], state["best"]

    # -- the run ----------------------------------------------------------------------------

    def validate_and_checkpoint(self, train_loss: float, started: float) -> dict:
        val = self.evaluate(self.data.val)
        record = {"step": self.step, "train_loss": train_loss, "val_loss": val["loss"],
                  "val_metric": val["metric"], "seconds": time.perf_counter() - started}
        self.records.append(record)
        # Ties in accuracy (common on a small validation split) go to the lower validation loss.
        if (val["metric"], -val["loss"]) > (self.best["metric"], -self.best["loss"]):
            self.best = {"metric": val["metric"], "loss": val["loss"], "step": self.step}
            self.output.mkdir(parents=True, exist_ok=True)
            _atomic_save({"model": self.model.state_dict(), "step": self.step, "config": self.config},
                         self.output / "best.pt")
        self.save()
        return record

    def run(self, *, resume: bool = False, progress: bool | None = None) -> dict:
        """Train to config["steps"], validating and checkpointing every eval_every steps."""
        if resume:
            self.restore()
            self._check_resumable()
        steps, every = self.config["steps"], self.config["eval_every"]
        started = time.perf_counter() - (self.records[-1]["seconds"] if self.records else 0.0)
        bar = tqdm(total=steps, initial=self.step, desc=f"{self.label} {self.config['learning']}",
                   unit="step", disable=None if progress is None else not progress,
                   dynamic_ncols=True)
        losses = []
        while self.step < steps:
            losses.append(self.train_step())
            bar.update(1)
            bar.set_postfix(self.progress(losses[-1]))
            if self.step % every == 0 or self.step == steps:
                self.validate_and_checkpoint(float(np.mean(losses)), started)
                losses = []
        bar.close()
        return self.finish()

    def _check_resumable(self) -> None:
        """A resumed run must have steps left to run, or a finish (summary, plots) still to write."""
        steps = self.config["steps"]
        if self.step > steps:
            raise ConfigError(f"{self.output}: the run has done {self.step} steps already; steps={steps} would not "
                              "extend it — give more steps (--steps N)")
        if self.step == steps and (self.output / "summary.json").exists():
            raise ConfigError(f"{self.output}: the run has finished its {steps} steps — extend it with --steps N "
                              f"(N > {steps})")

    def progress(self, loss: float) -> dict:
        """What the progress bar shows after a step."""
        return {"loss": f"{loss:.4f}", "best_val": f"{self.best['metric']:.4f}"}

    def finish(self) -> dict:
        """Test the best-validation model; write summary.json and the plots."""
        best = torch.load(self.output / "best.pt", weights_only=True)
        self.model.load_state_dict(best["model"])
        summary = self.summary(best["step"])
        (self.output / "summary.json").write_text(json.dumps(summary, indent=2))
        self.plot()
        return summary

    def summary(self, best_step: int) -> dict:
        test = self.evaluate(self.data.test)
        return {"dataset": self.data.name, "learning": self.config["learning"],
                "hru": self.config["model"].get("hru", "linear"), "best_step": best_step,
                "best_val_metric": self.best["metric"],
                "test": {k: v for k, v in test.items() if k != "metric"},
                "seconds": self.records[-1]["seconds"] if self.records else 0.0,
                "steps": self.step}

    def plot(self) -> None:
        plot_curves(self.records, self.output / "curves.png", self.regression)


def plot_curves(records: list[dict], path: Path, regression: bool) -> None:
    """Learning curves: training loss and validation metric against step."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    steps = [r["step"] for r in records]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.plot(steps, [r["train_loss"] for r in records], label="train")
    left.plot(steps, [r["val_loss"] for r in records], label="validation")
    left.set(xlabel="step", ylabel="loss", title="loss")
    left.legend()
    right.plot(steps, [-r["val_metric"] if regression else r["val_metric"] for r in records])
    right.set(xlabel="step", ylabel="MSE" if regression else "accuracy", title="validation")
    if regression:  # errors span decades; a spike would flatten the rest on a linear axis
        left.set_yscale("log")
        right.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def describe(summary: dict, output: Path) -> str:
    test = summary["test"]
    metric = (f"test MSE {test['mse']:.4f}" if "mse" in test
              else f"test accuracy {100 * test['accuracy']:.1f}%")
    return (f"{summary['dataset']}: {summary['hru']} HSSM trained with {summary['learning'].upper()} — "
            f"{metric} at the best-validation step {summary['best_step']} of {summary['steps']} "
            f"({summary['seconds']:.0f} s); curves and checkpoints in {output}")
