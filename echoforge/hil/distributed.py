"""One rank per board: hardware-in-the-loop training over several boards at once (DESIGN §7).

`echoforge hil train --device URI --device URI …` (or `--devices FILE`) runs one rank per board, each
driving its own board through the runtime for its rows of the global batch: models.distributed's data
parallelism (global-batch batch norm and dropout, gradients summed with one all_reduce), with the
banks on `DeviceCore`s. After each step every rank holds the same parameters, so every board receives
the same re-quantised codes (WRITE_PARAMS) before the next forward.

One thing more makes B boards compute what one board computes on the whole batch: the echo's nudge
scale. A core raises ε until the largest nudge of its batch is a few state LSBs (EmulatorCore,
ε_used); each rank takes that largest nudge over the global batch (all_reduce MAX), so every board
quantises its nudges with the ε one board would use.

The fidelity monitor checks every board: at a check each rank compares its own board's gradient, on its
rows of the step's batch, with the in-process emulator's (bit for bit) and float BPTT's. Its passes take
ε from the rank's own rows, device and emulator alike, with no collective inside a check, so a board
that computes wrong shows on its own record and warning only (a shared ε would carry one board's wrong
nudges into the others' checks); every rank then holds every board's records.

Under torchrun across machines with one board per node, give the node's board once (`--device
/dev/ttyUSB0`): every rank uses it; with several URIs, rank r drives the r-th.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from echoforge.models.distributed import (
    DataParallel,
    Ranks,
    all_reduce,
    from_every_rank,
)
from echoforge.runtime.device import DeviceCore

from .fidelity import FidelityMonitor


class GlobalNudgeDeviceCore(DeviceCore):
    """A DeviceCore whose ε_used is the global batch's (the largest nudge over every rank's rows)."""

    ranks: Ranks

    def _epsilon_for(self, nudges, epsilon: float) -> float:
        local = np.abs(np.asarray(nudges)).max(initial=0.0)
        largest = all_reduce(torch.tensor([float(local)], dtype=torch.float64), self.ranks, dist.ReduceOp.MAX)
        return super()._epsilon_for(largest.numpy(), epsilon)


class EveryBoardMonitor(FidelityMonitor):
    """The fidelity monitor of one rank among several: checks this rank's board, then gathers every board's
    record of the check."""

    ranks: Ranks

    def check(self, step: int, x, y) -> dict:
        record = super().check(step, x, y)
        self.records[-1:] = from_every_rank(record, self.ranks)
        return record


class BoardParallel(DataParallel):
    """DataParallel for hil.HILTrainer: also the echo's ε from the global batch on every bank core, and the
    fidelity monitor on every board (its own cores: ε from the rank's rows)."""

    def __init__(self, *args, ranks: Ranks, **kwargs):
        super().__init__(*args, ranks=ranks, **kwargs)
        self.monitor.cores = [DeviceCore(core.device, bank=core.bank, config=core.config) for core in self.cores]
        self.monitor.__class__ = EveryBoardMonitor
        self.monitor.ranks = ranks
        for core in self.cores:
            core.__class__ = GlobalNudgeDeviceCore
            core.ranks = ranks


def stopped_at(run: Path) -> str:
    """How a run stopped by a board continues: its checkpoint's step and the --resume (empty: none)."""
    if not (run / "last.pt").exists():
        return ""
    step = torch.load(run / "last.pt", weights_only=True)["step"]
    return f" — stopped with a checkpoint at step {step}; continue with --resume {run} once the board is back"


def read_devices(path: str | Path) -> list[str]:
    """The board URIs of a devices file: one per line; blank lines and # comments ignored."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise FileNotFoundError(f"cannot read the devices file {path}: {error.strerror}") from None
    uris = [line.split("#", 1)[0].strip() for line in lines]
    uris = [uri for uri in uris if uri]
    if not uris:
        raise ValueError(f"{path}: no board URIs — one per line, e.g. /dev/ttyUSB0")
    return uris


def board_of(devices: list[str], ranks: Ranks | None) -> str:
    """The board this rank drives: the r-th URI, or the only one (one board per node)."""
    if ranks is None or len(devices) == 1:
        return devices[0]
    if len(devices) != ranks.size:
        raise ValueError(f"{len(devices)} boards given for {ranks.size} ranks — give one URI per rank, or one "
                         "URI that every rank (one per node) uses")
    return devices[ranks.rank]
