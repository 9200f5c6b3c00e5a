"""Data-parallel training on torch.distributed: N ranks train as one process would (DESIGN §7).

A run launched by `torchrun` (or by `echoforge train --nproc N`, which starts N local ranks through
torch's elastic launcher) has RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT in its environment; each
rank joins the process group (gloo on CPU, NCCL where CUDA is present) and trains on its rows of the
global batch. What makes N ranks equal one process on the same global batch:

- batches: the trainer's batch of a step is a function of (seed, step); rank r keeps rows
  [r·b, (r+1)·b) of it, b = batch / N;
- loss: in training each rank's loss is its share of the global batch's mean, mean/N, so every
  gradient reaching a layer, an oscillator bank's echo nudges included, is the one-process value for
  those rows; the parameter gradients are then summed over ranks with one all_reduce after backward;
- batch norm (TimeBatchNorm, statistics over batch and time): the statistics and the backward's two
  means are taken over the global batch (all_reduce of sums) — SyncTimeBatchNorm;
- dropout: a mask is a hash of (seed, element index in the global batch) (hssm.Dropout), and every
  rank draws the same seeds from torch's RNG as one process does, so rank r computes its rows of the
  one-process mask (Dropout.row_offset = r·b) and torch's RNG state is the same on every rank and
  equal to one process's: a checkpoint holds global state only and resumes on any number of ranks.

What remains is floating-point reduction order: sums over the batch are split by rank (the batch-norm
statistics, every weight gradient's sum over rows) and added in another order, so parameters agree to
rounding, not bit for bit (tests/test_distributed.py, docs/scale.md state the measured tolerance).

Rank 0 alone evaluates, writes checkpoints, metrics, plots and the summary, and sends each validation
record to the other ranks, so every rank holds the whole run's state and any of them can write it. A
rank that fails leaves the run: its peers' next collective fails (`PeerLeft`) and they stop quietly, so
the run ends with the failing rank's own message and the last checkpoint, from which `--resume`
continues on any number of ranks. A peer that vanishes without closing its connections (a node that
lost power) cannot block the others for ever: a collective gives up after COLLECTIVE_TIMEOUT seconds
(environment ECHOFORGE_COLLECTIVE_TIMEOUT), and that rank says so in one line.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from functools import partial

import torch
import torch.distributed as dist
from torch import nn

from .core import share_cpus
from .norm import TimeBatchNorm
from .training import ConfigError

LAUNCHER_LOGGER = "torch.distributed.elastic"
# Seconds a collective waits for the other ranks: longer than any rank's work between two collectives
# (in the loop, rank 0 validates on its board while the others wait).
COLLECTIVE_TIMEOUT = 600.0
TIMEOUT_VARIABLE = "ECHOFORGE_COLLECTIVE_TIMEOUT"


class PeerLeft(RuntimeError):
    """Another rank stopped (and said why on its own stderr): this rank ends quietly, exit 2."""


class PeerSilent(PeerLeft):
    """No other rank answered within the collective timeout: the message says so (no rank said why)."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in the process group."""

    rank: int
    size: int
    backend: str

    @property
    def leader(self) -> bool:
        """Rank 0: writes the run directory and talks to the user."""
        return self.rank == 0

    def device(self) -> torch.device:
        """Where collectives run: the rank's GPU under NCCL, else the CPU."""
        if self.backend == "nccl":
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")


def launched() -> bool:
    """Whether a launcher (torchrun, `--nproc`) started this process as one rank of several."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def choose_backend() -> str:
    """NCCL where CUDA and a torch built with NCCL are there, else gloo (CPU collectives)."""
    return "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


def collective_timeout() -> float:
    """Seconds a collective waits: ECHOFORGE_COLLECTIVE_TIMEOUT, else COLLECTIVE_TIMEOUT."""
    text = os.environ.get(TIMEOUT_VARIABLE)
    if text is None:
        return COLLECTIVE_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ValueError(f"{TIMEOUT_VARIABLE}={text!r}: expected a positive number of seconds")
    return seconds


def join() -> Ranks:
    """Join the process group the launcher's environment describes."""
    backend = choose_backend()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=timedelta(seconds=collective_timeout()))
    return Ranks(dist.get_rank(), dist.get_world_size(), backend)


def run_as_rank(body) -> int:
    """Run `body(ranks)` in the launcher's process group (`ranks` is None without a launcher): a
    collective that fails because another rank left ends this rank with exit 2 and no message (the
    rank that left printed why)."""
    if not launched():
        return body(None)
    ranks = join()
    try:
        status = body(ranks)
        with collective():
            dist.barrier()  # no rank tears the group down while another still uses it (gloo aborts: "terminate called")
        return status
    except PeerSilent as silent:
        raise ValueError(f"rank {ranks.rank} of {ranks.size}: {silent}") from None
    except PeerLeft:
        return 2
    finally:
        dist.destroy_process_group()


def launch(nproc: int, argv: list[str]) -> int:
    """Run `echoforge ARGV` as `nproc` ranks on this machine through torch's elastic launcher, as
    `torchrun --standalone --nproc-per-node N -m echoforge.cli ARGV` would; returns the worst rank's
    exit status. Each rank is a process of its own: one that fails exits, its sockets close, and the
    launcher stops the others (SIGTERM), so the run ends with the failing rank's one line."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    logging.getLogger(LAUNCHER_LOGGER).setLevel(logging.CRITICAL)  # the ranks report their own errors
    try:
        elastic_launch(config, sys.executable)("-m", "echoforge.cli", *argv)
    except ChildFailedError as error:
        return max(failure.exitcode for failure in error.failures.values())
    return 0


# ---- the model: batch statistics and dropout masks of the global batch ---------------------------------


@contextmanager
def collective():
    """A collective's errors as PeerLeft (gloo: "Connection reset by peer" once a rank has left the group),
    or PeerSilent when it timed out."""
    try:
        yield
    except RuntimeError as error:
        if "timed out" in str(error).lower():
            raise PeerSilent(f"no answer from the other ranks within {collective_timeout():g} s (a rank or node "
                             f"stopped without closing its connections; {TIMEOUT_VARIABLE} sets the wait)") from None
        raise PeerLeft(str(error)) from None


def all_reduce(tensor: torch.Tensor, ranks: Ranks, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all_reduce on the ranks' collective device; a peer that left raises PeerLeft."""
    device = ranks.device()
    moved = tensor.to(device)
    with collective():
        dist.all_reduce(moved, op=op)
    if moved is not tensor:
        tensor.copy_(moved)
    return tensor


def from_every_rank(value, ranks: Ranks) -> list:
    """Every rank's `value` (any picklable object), in rank order, on every rank."""
    values = [None] * ranks.size
    with collective():
        dist.all_gather_object(values, value)
    return values


def from_leader(value, ranks: Ranks):
    """Rank 0's `value` (any picklable object), on every rank; a peer that left raises PeerLeft."""
    box = [value]
    with collective():
        dist.broadcast_object_list(box, src=0, device=ranks.device())
    return box[0]


def global_means(grad: torch.Tensor, u: torch.Tensor, ranks: Ranks, count: int):
    """norm.Means over the global batch: the column sums of g and g·û all-reduced over the ranks."""
    sums = all_reduce(torch.cat([grad.sum(0), (grad * u).sum(0)]), ranks)
    return (sums / count).chunk(2)


class SyncTimeBatchNorm(TimeBatchNorm):
    """TimeBatchNorm whose training statistics, and its backward's means, are the global batch's (all
    ranks' rows)."""

    ranks: Ranks

    @torch.no_grad()
    def statistics(self, flat):
        if not self.training:
            return super().statistics(flat)
        count = len(flat) * self.ranks.size
        mean = all_reduce(flat.sum(0), self.ranks) / count
        var = all_reduce((flat - mean).square().sum(0), self.ranks) / count
        self.update_running(mean, var, count)
        return mean, torch.rsqrt(var + self.eps), partial(global_means, ranks=self.ranks, count=count)


def data_parallel_modules(model: nn.Module, ranks: Ranks, rows: int) -> None:
    """Give the model's batch norms their global-batch versions and its dropouts this rank's row offset
    in the global batch of `rows` rows per rank (the state_dict is unchanged: checkpoints stay those of
    one process)."""
    for module in model.modules():
        if type(module) is TimeBatchNorm:
            module.__class__ = SyncTimeBatchNorm
            module.ranks = ranks
    for block in model.blocks:
        block.dropout.row_offset = ranks.rank * rows


# ---- the trainer ------------------------------------------------------------------------------------------


def rows_per_rank(batch: int, ranks: int) -> int:
    """The rows of a global batch each rank trains on; a batch that does not split evenly is refused."""
    if batch % ranks:
        raise ConfigError(f"batch_size: the global batch of {batch} does not split over {ranks} ranks — "
                          f"give a multiple of {ranks}")
    return batch // ranks


class DataParallel:
    """Mixin over a Trainer (or a subclass: hil.HILTrainer) that trains on `ranks` as described in the
    module docstring. Constructed with the trainer's arguments plus `ranks=`."""

    def __init__(self, *args, ranks: Ranks, **kwargs):
        super().__init__(*args, **kwargs)
        self.ranks = ranks
        self.rows = rows_per_rank(min(self.config["batch_size"], len(self.data.train.x)), ranks.size)
        data_parallel_modules(self.model, ranks, self.rows)
        self.loss_sum = 0.0

    def batch(self, step: int):
        """This rank's rows of the step's global batch."""
        x, y = super().batch(step)
        rows = slice(self.ranks.rank * self.rows, (self.ranks.rank + 1) * self.rows)
        return x[rows], y[rows]

    def loss(self, output, y):
        """In training, this rank's share of the global batch's mean loss (evaluation: the plain mean)."""
        loss = super().loss(output, y)
        return loss / self.ranks.size if self.model.training else loss

    def backward(self, loss) -> None:
        """Backward on this rank's rows, then one all_reduce of every gradient and of the loss."""
        loss.backward()
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        flat = torch.cat([*(p.grad.reshape(-1) for p in parameters), loss.detach().reshape(1)])
        all_reduce(flat, self.ranks)
        offset = 0
        for p in parameters:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
            offset += p.numel()
        self.loss_sum = float(flat[-1])

    def train_step(self) -> float:
        """The step; returns the global batch's loss."""
        super().train_step()
        return self.loss_sum

    def run(self, *, resume: bool = False, progress: bool | None = None) -> dict:
        return super().run(resume=resume, progress=progress if self.ranks.leader else False)

    def validate_and_checkpoint(self, train_loss: float, started: float) -> dict:
        """Rank 0 validates and writes the checkpoint, then sends the record and the best step to the others:
        every rank then holds the state that checkpoint holds."""
        record = super().validate_and_checkpoint(train_loss, started) if self.ranks.leader else None
        record, best = from_leader((record, self.best), self.ranks)
        if not self.ranks.leader:
            self.records.append(record)
            self.best = best
        return record

    def finish(self) -> dict | None:
        """Rank 0 tests the best model and writes the summary and plots."""
        return super().finish() if self.ranks.leader else None


def make_trainer(trainer_class: type, ranks: Ranks | None, *args, mixin: type = DataParallel, **kwargs):
    """A `trainer_class(*args, **kwargs)`, data-parallel over `ranks` (through `mixin`) when there are ranks."""
    if ranks is None:
        return trainer_class(*args, **kwargs)
    share_cpus(int(os.environ.get("LOCAL_WORLD_SIZE", ranks.size)))  # the ranks on this machine
    parallel = type(f"{mixin.__name__}{trainer_class.__name__}", (mixin, trainer_class), {})
    return parallel(*args, ranks=ranks, **kwargs)
