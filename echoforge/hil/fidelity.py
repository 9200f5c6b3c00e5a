"""The fidelity monitor: is the board computing the gradient it should? (DESIGN §6)

Every N steps, on that step's batch and parameters, the monitor takes the model's gradient four ways,
each with the host layers in float64 (a float64 copy of the model):

    device     banks on the board (DeviceCores): what hardware-in-the-loop training uses
    emulator   banks on in-process EmulatorCores with the same formats: the board's reference
               semantics, so the device's gradient must equal it bit for bit
    bptt       learning="bptt": the float model's exact gradient
    host_rhel  banks on the float64 core: host RHEL training, timed for the step-time comparison

Float64 host layers make the comparison with BPTT mean something on every batch: once the model fits a
batch to float32 roundoff (loss ~1e-7, or 0), a gradient through float32 layers is rounding noise next to
BPTT's whatever the banks compute, while the banks' echo scales its nudges to the gradient's size
(EmulatorCore ε_used), so in float64 the check measures the banks' fixed point and nothing else.

and records (naming the board), per bank parameter group (an HRU's oscillator parameters and input
map B) and for the whole model, the largest |device − emulator|, the cosine and norm ratio of device to
BPTT and, as a yardstick, of host RHEL to BPTT, plus what each took. It warns when they diverge (the thresholds below).

The gradients are taken as the training step takes its own, in train mode, and each starts from the
same torch RNG state and batch-norm statistics: the four see the step's dropout masks and batch
statistics, so they are gradients of exactly the same function, and afterwards both are put back, so a
monitored run ends bit-identical to an unmonitored one.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager

import torch

from echoforge.models.core import FloatCore
from echoforge.models.hssm import HSSM
from echoforge.runtime.device import Device, DeviceCore
from echoforge.targets.emulator import EmulatorCore

from .banks import OUTSIDE_THE_BANK, Gradients, gradients

# Largest |device − emulator| gradient difference tolerated: none. The board and the emulator run the
# same integer arithmetic on the same codes, so any difference means the board computes something
# else (a firmware or format mismatch, or damaged data that got past the link's CRC).
EMULATOR_TOLERANCE = 0.0
# Smallest cosine between the device's and float BPTT's gradient of a bank. The default 24-bit word
# gives 1 − cos ≈ 4e-8 on BasicMotions and a 16-bit word, too short for it, 3e-3 (docs/results.md,
# bench_wordlength): below 0.99 (8°) the steps no longer follow the float model's descent direction —
# a saturating state, a word too short for the model, or an echo that no longer retraces.
MIN_BPTT_COSINE = 0.99
# Range of ‖device‖/‖BPTT‖ per bank. Rounding in a healthy word keeps it within 5% (18 bits: 0.955);
# the 16-bit word's 0.69 is a gradient that has lost a third of its size to underflowed nudges.
NORM_RATIO_RANGE = (0.9, 1.1)
WHOLE_MODEL = "model"  # the group of every parameter, beside one group per bank


class TimedEmulatorCore(EmulatorCore):
    """An EmulatorCore that adds up the seconds of its integer passes (`seconds`): the work a board
    does for the same calls, timed in-process, since the board does not report its compute time."""

    def __init__(self, config):
        super().__init__(config)
        self.seconds = 0.0

    def _timed(self, run, *args):
        started = time.perf_counter()
        try:
            return run(*args)
        finally:
            self.seconds += time.perf_counter() - started

    def _forward(self, *args):
        return self._timed(super()._forward, *args)

    def _echo(self, *args):
        return self._timed(super()._echo, *args)


def parameter_groups(model: HSSM) -> dict[str, list[str]]:
    """Bank parameter group (blocks.i.hru) → its parameter names, and "model" → every parameter."""
    groups = {f"blocks.{index}.hru": [f"blocks.{index}.hru.{name}" for name, _ in hru.named_parameters()
                                      if name not in OUTSIDE_THE_BANK]
              for index, hru in enumerate(model.hrus())}
    return groups | {WHOLE_MODEL: [name for name, _ in model.named_parameters()]}


def _flat(grads: Gradients, names: list[str]) -> torch.Tensor:
    return torch.cat([grads.params[name].reshape(-1).double() for name in names])


def _against(got: torch.Tensor, exact: torch.Tensor) -> tuple[float, float]:
    """Cosine and norm ratio of `got` to `exact`."""
    return float(torch.dot(got, exact) / (got.norm() * exact.norm())), float(got.norm() / exact.norm())


def compare(device: Gradients, emulator: Gradients, host_rhel: Gradients, bptt: Gradients,
            names: list[str]) -> dict:
    """How one group's device gradient compares with the emulator's and with float BPTT's, and how
    host RHEL's compares with float BPTT's."""
    got, exact = _flat(device, names), _flat(bptt, names)
    cosine, ratio = _against(got, exact)
    host_cosine, host_ratio = _against(_flat(host_rhel, names), exact)
    return {"emulator_max_diff": float((got - _flat(emulator, names)).abs().max()),
            "bptt_cosine": cosine, "bptt_norm_ratio": ratio,
            "host_rhel_cosine": host_cosine, "host_rhel_norm_ratio": host_ratio}


def close_to_bptt(cosine: float, norm_ratio: float) -> bool:
    low, high = NORM_RATIO_RANGE
    return cosine >= MIN_BPTT_COSINE and low <= norm_ratio <= high


def divergences(group: str, values: dict) -> list[str]:
    """What is wrong with one group's comparison, one phrase each (empty: all is well).

    The BPTT thresholds count only where host RHEL — the same host layers, the banks on the float64
    core — meets them on the same batch: on a batch the model fits to the last bit of its float32
    logits (loss ~1e-7, or 0) every float32 gradient is rounding noise next to float64 BPTT, and that
    is no fault of the board.
    """
    problems = []
    if values["emulator_max_diff"] > EMULATOR_TOLERANCE:
        problems.append(f"{group}: the device's gradient differs from the emulator's by up to "
                        f"{values['emulator_max_diff']:.3g}")
    device_close = close_to_bptt(values["bptt_cosine"], values["bptt_norm_ratio"])
    host_close = close_to_bptt(values["host_rhel_cosine"], values["host_rhel_norm_ratio"])
    if group != WHOLE_MODEL and host_close and not device_close:
        low, high = NORM_RATIO_RANGE
        problems.append(f"{group}: cosine {values['bptt_cosine']:.4f} and norm ratio {values['bptt_norm_ratio']:.4f} "
                        f"to float BPTT, outside ≥ {MIN_BPTT_COSINE} and [{low}, {high}] (host RHEL: "
                        f"{values['host_rhel_cosine']:.6f}, {values['host_rhel_norm_ratio']:.4f})")
    return problems


def _warn(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=4)


class FidelityMonitor:
    """Compares the device's gradient with the emulator's and float BPTT's every `every` steps
    (0: never); `records` holds one entry per check, for metrics.jsonl and the plots. `reference` is a
    float64 copy of the model's architecture (any learning rule); a divergence is passed to `warn` as
    one line (default: a RuntimeWarning)."""

    def __init__(self, model: HSSM, reference: HSSM, loss: Callable, device: Device,
                 cores: Sequence[DeviceCore], every: int, warn: Callable[[str], None] = _warn):
        self.model, self.loss, self.warn = model, loss, warn
        self.reference = reference.double()
        self.reference.set_learning("bptt")
        self.rhel = copy.deepcopy(self.reference)  # the same float64 model, its banks on cores (RHEL)
        self.rhel.set_learning("rhel")
        self.device, self.cores, self.every = device, list(cores), every
        self.emulators = [TimedEmulatorCore(core.config) for core in cores]
        self.groups = parameter_groups(model)
        self.records: list[dict] = []

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def check(self, step: int, x: torch.Tensor, y: torch.Tensor) -> dict:
        """Compare the four gradients at `step` (the parameters after `step` updates) on batch (x, y);
        record and return the comparison, warning about any divergence."""
        seconds = {}
        for copy_ in (self.rhel, self.reference):
            copy_.load_state_dict(self.model.state_dict())
            copy_.train(self.model.training)
        x, y = x.double(), y.double() if y.is_floating_point() else y
        with same_draws(self.model) as again:
            link, computed = self.device.link_seconds(), self._emulator_seconds()
            device = self._timed(seconds, "device", self.rhel, x, y, self.cores)
            seconds["link"] = self.device.link_seconds() - link
            self._restore(again)
            emulator = self._timed(seconds, "emulator", self.rhel, x, y, self.emulators)
            seconds["device_compute"] = self._emulator_seconds() - computed
            self._restore(again)
            host_rhel = self._timed(seconds, "host_rhel", self.rhel, x, y, [FloatCore() for _ in self.cores])
            self._restore(again)
            bptt = self._timed(seconds, "bptt", self.reference, x, y, None)
        record = {"step": step, "board": self.device.uri,
                  "fidelity": {group: compare(device, emulator, host_rhel, bptt, names)
                               for group, names in self.groups.items()},
                  "seconds": seconds}
        self.records.append(record)
        self._warn(record)
        return record

    def _restore(self, again: Callable[[], None]) -> None:
        """The RNG as at the check's start, and the float64 copy's batch-norm statistics the model's."""
        again()
        for mine, theirs in zip(self.rhel.buffers(), self.model.buffers()):
            mine.copy_(theirs)

    def _timed(self, seconds: dict, name: str, model, x, y, cores) -> Gradients:
        started = time.perf_counter()
        result = gradients(model, x, y, self.loss, cores)
        seconds[name] = time.perf_counter() - started
        return result

    def _emulator_seconds(self) -> float:
        return sum(core.seconds for core in self.emulators)

    def _warn(self, record: dict) -> None:
        problems = [problem for group, values in record["fidelity"].items()
                    for problem in divergences(group, values)]
        if problems:
            self.warn(f"gradient fidelity at step {record['step']} on {record['board']}: " + "; ".join(problems))


@contextmanager
def same_draws(model: torch.nn.Module):
    """Yields `again()`, which puts torch's RNG and the model's buffers (batch-norm statistics) back to
    what they were on entry; leaving the block does too."""
    rng = torch.get_rng_state()
    buffers = [(buffer, buffer.clone()) for buffer in model.buffers()]

    def again() -> None:
        torch.set_rng_state(rng)
        for buffer, saved in buffers:
            buffer.copy_(saved)

    try:
        yield again
    finally:
        again()
