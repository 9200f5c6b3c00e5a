"""Gradients of an HSSM whose oscillator banks run on given Hamiltonian cores (DESIGN §1, §6).

Host layers (encoder, norms, input maps, readouts, GLUs, head) run in torch with autograd; each
HRU's bank runs its forward pass and the ±ε echoes on its core through the contract
(`models.hru.RHELBank`). With float cores this is host RHEL training, with EmulatorCores it is what
the fixed-point hardware computes, with a board's cores it is hardware-in-the-loop training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from ..models.core import HamiltonianCore
from ..models.hssm import HSSM

# Parameters of an HRU that its bank's echo does not differentiate: the readout C and the skip D.
OUTSIDE_THE_BANK = ("C", "D")


@contextmanager
def banks_on(model: HSSM, cores: Sequence[HamiltonianCore]):
    """Inside the block, the i-th HRU's bank runs on cores[i]."""
    hrus = model.hrus()
    if len(cores) != len(hrus):
        raise ValueError(f"the model has {len(hrus)} HRU banks but {len(cores)} cores were given")
    previous = [hru.core for hru in hrus]
    for hru, core in zip(hrus, cores):
        hru.core = core
    try:
        yield model
    finally:
        for hru, core in zip(hrus, previous):
            hru.core = core


@dataclass(frozen=True)
class Gradients:
    """One batch's loss, ∂loss/∂parameter by parameter name, and ∂loss/∂input."""

    loss: float
    params: dict[str, torch.Tensor]
    input: torch.Tensor


def gradients(model: HSSM, x: torch.Tensor, y: torch.Tensor,
              loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
              cores: Sequence[HamiltonianCore] | None = None) -> Gradients:
    """The gradients of loss_fn(model(x), y) with the banks on `cores` (None: the model's own
    float64 core and learning rule). The model's .grad fields are left cleared."""
    x = x.detach().clone().requires_grad_(True)
    model.zero_grad(set_to_none=True)
    with banks_on(model, cores) if cores is not None else nullcontext():
        loss = loss_fn(model(x), y)
        loss.backward()
    params = {name: torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
              for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return Gradients(loss.item(), params, x.grad.detach())


def bank_parameter_names(model: HSSM) -> list[str]:
    """Names of the parameters whose gradients come from the banks' echoes: oscillator parameters
    and input maps B of every HRU."""
    return [f"blocks.{index}.hru.{name}" for index, hru in enumerate(model.hrus())
            for name, _ in hru.named_parameters() if name not in OUTSIDE_THE_BANK]
