"""Hardware-in-the-loop training: the host trainer with the HRU banks on a board (DESIGN §6).

`HILTrainer` is `models.training.Trainer` — the same batches, loop, optimizer, validation, checkpoints
and resume — with each HRU's bank on a `DeviceCore` of one `Device` session, configured with the
program's per-bank formats. Host layers stay in torch. Every forward loads the bank's current
parameters into its core, which re-quantises them and, when the codes changed (after each optimizer
step), writes them to the board with WRITE_PARAMS. The model starts from the checkpoint the program
was compiled from: HIL training fine-tunes the compiled model. That start is validated on the board
before the first step (metrics.jsonl's step 0, without a training loss), so when fine-tuning does not
help, the best-validation model is the program as compiled.

The board holds nothing the host needs to resume: a killed run reopens a session, loads the program
again and continues from last.pt, and since every phase is a pure function of what the host sends, it
ends bit-identical to an uninterrupted run. A board that fails mid-step (or, with several ranks, a peer
that left) does not lose the steps since the last periodic checkpoint: the trainer keeps the state of
the last completed step and writes it as last.pt before the run stops. Lost or damaged frames are retried and reboots replayed
below (runtime.device), with the same bits. The run directory adds to the Trainer's: hil.yaml (the
program and the monitor's period), the fidelity records in metrics.jsonl, fidelity.png, and a "hil"
section in summary.json.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sys
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from echoforge.compiler.frontend_checkpoint import run_config
from echoforge.models.core import FloatCore
from echoforge.models.distributed import PeerLeft
from echoforge.models.hru import RETRACE_WARN
from echoforge.models.training import DEFAULT_CONFIG, ConfigError, Trainer, build_model, load_config, merge
from echoforge.runtime.device import Device, DeviceCore
from echoforge.runtime.errors import DeviceError
from echoforge.targets.emulator.lower import Program

from .fidelity import FidelityMonitor
from .banks import banks_on
from .report import plot_fidelity, summarize_fidelity, summarize_timing

DEFAULT_OUTPUT = "runs/hil"
DEFAULT_FIDELITY_EVERY = 10
RUN_FILE = "hil.yaml"
# Config keys a fine-tuning run cannot change: they fix the data split the program was calibrated on.
DATA_PROTOCOL = ("dataset", "seed")
# Per-call warnings of the cores (saturation) and of the HRUs (an echo that did not retrace): a run
# counts the steps whose echo did not retrace instead (progress bar, summary), as one line per call
# would bury the progress bar.
ECHO_WARNINGS = "fixed-point emulator saturated|RHEL echo did not retrace"
# A board that cannot be reached or stopped answering (after the link's retries and timeouts).
BOARD_FAILURES = (ConnectionError, TimeoutError, DeviceError)


def _say(message: str) -> None:
    """A warning for the user: one plain line on stderr, above the progress bar."""
    tqdm.write(f"echoforge hil: {message}", file=sys.stderr)


# ---- the program's source ----------------------------------------------------------------------


def source_checkpoint(program: Program, where: str | Path) -> Path:
    """The checkpoint the program was compiled from, as it was then (its SHA-256 is checked)."""
    provenance = program.ir.provenance
    if provenance.frontend != "checkpoint":
        raise ConfigError(f"{where}: compiled from {provenance.source} ({provenance.frontend}), which holds no "
                          "training state — compile a run directory or checkpoint for HIL training")
    path = Path(provenance.source)
    if not path.is_file():
        raise ConfigError(f"{where}: the program was compiled from {path}, which is not there (relative paths "
                          f"start at {Path.cwd()}) — run from where `echoforge compile` ran, or recompile")
    if hashlib.sha256(path.read_bytes()).hexdigest() != provenance.source_sha256:
        raise ConfigError(f"{where}: {path} has changed since the program was compiled from it — recompile")
    return path


def hil_config(program: Program, where: str | Path, path: str | Path | None = None,
               overrides: list[str] = ()) -> dict:
    """The source run's config (over the defaults, for keys newer than the run), with output runs/hil,
    updated by a YAML file and overrides.

    The dataset and seed stay the source run's (the program was calibrated on that split), and the
    learning rule is RHEL: that is what a board computes.
    """
    source = merge(DEFAULT_CONFIG, run_config(source_checkpoint(program, where)))
    config = load_config(path, overrides, base=source | {"learning": "rhel", "output": DEFAULT_OUTPUT})
    for key in DATA_PROTOCOL:
        if config[key] != source[key]:
            raise ConfigError(f"{key}: the program was calibrated on the source run's {key} {source[key]!r}; "
                              "a HIL run keeps it — remove the key")
    if config["learning"] != "rhel":
        raise ConfigError(f"learning: a board trains with RHEL, got {config['learning']!r}")
    return config


def program_identity(program: Program, directory: str | Path) -> dict:
    """What a HIL run depends on in its program: where it is, its source and its bank formats."""
    return {"program": str(Path(directory).resolve()), "source_sha256": program.ir.provenance.source_sha256,
            "banks": [bank.to_yaml() for bank in program.banks]}


def read_run_file(run: str | Path) -> dict:
    run = Path(run)
    if not (run / "last.pt").exists() or not (run / RUN_FILE).exists():
        raise FileNotFoundError(f"{run}: no last.pt and {RUN_FILE} to resume from — is this a HIL run directory?")
    return yaml.safe_load((run / RUN_FILE).read_text())


def check_same_program(program: Program, directory: str | Path, recorded: dict, run: str | Path) -> None:
    identity = program_identity(program, directory)
    if {k: identity[k] for k in ("source_sha256", "banks")} != {k: recorded[k] for k in ("source_sha256", "banks")}:
        raise ValueError(f"{run} was trained with the program in {recorded['program']}; {directory} is another "
                         f"program (source or bank formats differ) — resume with --program {recorded['program']}")


# ---- the trainer -------------------------------------------------------------------------------


def snapshot(state):
    """A copy of a state() that later steps leave alone: tensors cloned, containers rebuilt (a tenth of
    copy.deepcopy's time: it runs every step)."""
    if isinstance(state, torch.Tensor):
        return state.clone()
    if isinstance(state, dict):
        return type(state)((key, snapshot(value)) for key, value in state.items())
    if isinstance(state, (list, tuple)):
        return type(state)(snapshot(value) for value in state)
    return state


@contextmanager
def locked(directory: Path):
    """An exclusive lock on a directory (flock: released when the process ends, however it ends)."""
    directory.mkdir(parents=True, exist_ok=True)
    handle = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


def device_cores(device: Device, program: Program, model, where: str | Path = "") -> list[DeviceCore]:
    """One DeviceCore per HRU bank, in model order, each with its bank's formats from the program."""
    hrus = model.hrus()
    names = [f"blocks.{index}.hru.bank" for index in range(len(hrus))]
    if names != [bank.node for bank in program.banks]:
        raise ConfigError(f"the program's device banks {[bank.node for bank in program.banks]} are not the "
                          f"model's HRU banks {names} — compile with every bank on the device")
    for hru, bank in zip(hrus, program.banks):
        if (hru.kind, hru.core_params().size) != (bank.params.kind, bank.params.size):
            raise ConfigError(f"{bank.node}: the program has {bank.params.size} {bank.params.kind} oscillators, "
                              f"the model {hru.core_params().size} {hru.kind} ones")
    device.check_fits([(bank.params.kind, bank.config, bank.params.size) for bank in program.banks],
                      f"the program in {where}" if where else "the program")
    return [DeviceCore(device, bank=index, config=bank.config) for index, bank in enumerate(program.banks)]


class HILTrainer(Trainer):
    """Trains the program's source model with its HRU banks on `device` (see the module docstring).

    `program_dir` is recorded in hil.yaml for --resume; `fidelity_every` is the fidelity monitor's
    period in steps (0: off).
    """

    label = "hil"

    def __init__(self, config: dict, output: str | Path | None, program: Program, program_dir: str | Path,
                 device: Device, *, fidelity_every: int = DEFAULT_FIDELITY_EVERY):
        super().__init__(config, output)
        self.device = device
        self.identity = program_identity(program, program_dir) | {"fidelity_every": fidelity_every}
        self.source = source_checkpoint(program, program_dir)
        self._load_source()
        self.cores = device_cores(device, program, self.model, program_dir)
        for hru, core in zip(self.model.hrus(), self.cores):
            hru.core = core
        self.monitor = FidelityMonitor(self.model, self._reference_model(), self.loss, device, self.cores,
                                       fidelity_every, warn=_say)
        # Training steps: how many, their seconds, the seconds in link calls, and how many had an echo
        # that did not retrace the forward path (a saturated state breaks the exact reversibility).
        self.tally = Counter()
        self.completed: dict | None = None  # state() at the start of the step under way
        self.saved_step = 0  # the step of the last checkpoint this trainer wrote

    def _load_source(self) -> None:
        state = torch.load(self.source, weights_only=True, map_location="cpu")["model"]
        try:
            self.model.load_state_dict(state)
        except RuntimeError as error:
            problem = str(error).splitlines()[1].strip() if "\n" in str(error) else str(error)
            raise ConfigError(f"model: the config does not build the program's model ({problem}) — "
                              "remove the model keys that change its shape") from None

    def _reference_model(self):
        """The float64 BPTT copy the monitor compares with; built without touching torch's RNG, so
        that a HIL run and a host run of the same config draw the same dropout masks."""
        with torch.random.fork_rng(devices=[]):
            return build_model(self.config | {"dtype": "float64", "learning": "bptt"}, self.data)

    # -- steps ------------------------------------------------------------------------------

    def run(self, *, resume: bool = False, progress: bool | None = None) -> dict:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ECHO_WARNINGS, RuntimeWarning)
            try:
                if not resume:  # the program as compiled: the best step may be the start (module docstring)
                    self.validate_and_checkpoint(None, time.perf_counter())
                return super().run(resume=resume, progress=progress)
            except (*BOARD_FAILURES, PeerLeft):
                self.save_completed()
                raise

    def train_step(self) -> float:
        self.completed = snapshot(self.state())
        if self.monitor.due(self.step):
            self.monitor.check(self.step, *self.batch(self.step))
        link, started = self.device.link_seconds(), time.perf_counter()
        loss = super().train_step()
        self.tally.update(steps=1, seconds=time.perf_counter() - started,
                          link_seconds=self.device.link_seconds() - link,
                          unretraced=any(hru.monitor.retrace_error > RETRACE_WARN for hru in self.model.hrus()))
        return loss

    def progress(self, loss: float) -> dict:
        link = self.device.link.stats
        return super().progress(loss) | {"retries": link["retries"], "crc": link["crc_errors"],
                                         "replays": self.device.reboots, "unretraced": self.tally["unretraced"]}

    # -- persistence ------------------------------------------------------------------------

    def metrics(self) -> list[dict]:
        """Validation records and fidelity records, by step (a fidelity record has "fidelity")."""
        return sorted(self.records + self.monitor.records, key=lambda record: record["step"])

    def state(self) -> dict:
        return super().state() | {"fidelity": self.monitor.records, "tally": dict(self.tally)}

    def save(self) -> None:
        """hil.yaml first, by rename: wherever a kill lands, a last.pt has its hil.yaml beside it."""
        self.output.mkdir(parents=True, exist_ok=True)
        partial = self.output / f"{RUN_FILE}.tmp"
        partial.write_text(yaml.safe_dump(self.identity, sort_keys=False))
        os.replace(partial, self.output / RUN_FILE)
        super().save()
        self.saved_step = self.step

    def save_completed(self) -> None:
        """After a failure mid-step: the last completed step's checkpoint, unless one as recent is there.

        Every rank holds the same state at the start of a step (data parallelism: same parameters,
        optimizer, RNG, records), and none can finish a step without all the others, so whichever ranks
        write it — the one whose board failed, and rank 0 when it sees a peer leave — write the same
        step; a lock on the run directory keeps them from writing at once."""
        if self.completed is None or self.completed["step"] <= self.saved_step:
            return
        self.load_state(self.completed)
        with locked(self.output):
            self.save()

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.monitor.records, self.tally = state["fidelity"], Counter(state["tally"])

    # -- the end ----------------------------------------------------------------------------

    def summary(self, best_step: int) -> dict:
        summary = super().summary(best_step)
        with banks_on(self.model, [FloatCore() for _ in self.cores]):
            in_float = self.evaluate(self.data.test)
        link = self.device.link.stats
        traffic = self.device.traffic.values()
        summary["hil"] = {
            "device": self.device.uri, "board": f"{self.device.info.target} board ({self.device.info.firmware})",
            "program": self.identity["program"], "source": str(self.source),
            "test_float": {k: v for k, v in in_float.items() if k != "metric"},
            "link": {"calls": sum(c["calls"] for c in traffic), "wire_bytes": sum(c["wire_bytes"] for c in traffic),
                     "retries": link["retries"], "crc_errors": link["crc_errors"], "timeouts": link["timeouts"],
                     "replays": self.device.reboots},
            "unretraced_steps": self.tally["unretraced"],
            "timing": summarize_timing(self.tally, self.monitor.records),
            "fidelity": summarize_fidelity(self.monitor.records),
        }
        return summary

    def plot(self) -> None:
        super().plot()
        if self.monitor.records:
            plot_fidelity(self.monitor.records, self.output / "fidelity.png")

