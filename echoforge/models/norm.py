"""The block norm: batch normalisation over batch and time, no affine (the paper's), in compiled passes.

Its backward needs only its output û: ∂L/∂x = invstd·(g − mean(g) − û·mean(g·û)) with batch
statistics (column means of g and g·û over the batch's rows and steps), invstd·g with the running ones
(evaluation). A norm hands out its statistics with the `Means` its backward takes, so the same passes
serve one process, the global batch of data-parallel ranks (distributed.SyncTimeBatchNorm) and the fused
RHEL block (block.RHELBlock), which runs the norm's backward in place on its own ∂L/∂u.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from . import kernels

# (∂L/∂û, û) → (mean(g), mean(g·û)) per column, in û's dtype: what the backward subtracts.
Means = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def column_moments(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance of every column of a (rows, width) tensor, summed in float64 (kernels.c)."""
    flat = flat.contiguous()
    mean, var = (torch.empty(flat.shape[1], dtype=torch.float64) for _ in range(2))
    kernels.for_tensor(flat).ef_column_moments(*flat.shape, flat.data_ptr(), mean.data_ptr(), var.data_ptr())
    return mean.to(flat.dtype), var.to(flat.dtype)


def batch_means(grad: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Column means of g and g·û over this process's rows, summed in float64."""
    sum_g, sum_gu = (torch.empty(u.shape[1], dtype=torch.float64) for _ in range(2))
    kernels.for_tensor(u).ef_column_sums(*u.shape, grad.data_ptr(), u.data_ptr(), sum_g.data_ptr(), sum_gu.data_ptr())
    return (sum_g / len(u)).to(u.dtype), (sum_gu / len(u)).to(u.dtype)


def constant_means(grad: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Running statistics are constants: nothing to subtract."""
    zeros = u.new_zeros(u.shape[1])
    return zeros, zeros


def standardize(x: torch.Tensor, mean: torch.Tensor, invstd: torch.Tensor) -> torch.Tensor:
    """(x − mean)⊙invstd of a (rows, width) tensor, one compiled pass."""
    x = x.contiguous()
    u = torch.empty_like(x)
    kernels.for_tensor(x).ef_standardize(*x.shape, x.data_ptr(), mean.data_ptr(), invstd.data_ptr(), u.data_ptr())
    return u


def standardize_backward(grad: torch.Tensor, u: torch.Tensor, invstd: torch.Tensor, means: Means,
                         out: torch.Tensor | None = None) -> torch.Tensor:
    """∂L/∂x from ∂L/∂û (rows, width), into `out` (which may be `grad` itself: the pass is elementwise)."""
    grad = grad.contiguous()
    mean_g, projection = means(grad, u)
    out = torch.empty_like(u) if out is None else out
    kernels.for_tensor(u).ef_standardize_backward(*u.shape, grad.data_ptr(), u.data_ptr(), mean_g.data_ptr(),
                                                  projection.data_ptr(), invstd.data_ptr(), out.data_ptr())
    return out


class _Standardize(torch.autograd.Function):
    """(x − mean)·invstd whose backward needs only its output (the module docstring's formula), so the
    block keeps û, which the HRU needs anyway, instead of also keeping x."""

    @staticmethod
    def forward(ctx, x, mean, invstd, means):
        u = standardize(x, mean, invstd)
        ctx.save_for_backward(u, invstd)
        ctx.means = means
        return u

    @staticmethod
    def backward(ctx, grad):
        u, invstd = ctx.saved_tensors
        return standardize_backward(grad, u, invstd, ctx.means), None, None, None


class TimeBatchNorm(nn.Module):
    """Batch normalisation over batch and time, no affine (the paper's block norm).

    Same buffers as nn.BatchNorm1d(affine=False), so checkpoints read the same; its backward keeps
    only the normalised output (_Standardize).
    """

    def __init__(self, width: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.register_buffer("running_mean", torch.zeros(width))
        self.register_buffer("running_var", torch.ones(width))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    @torch.no_grad()
    def statistics(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Means]:
        """(mean, invstd, the backward's Means) for a (rows, width) input: the batch's in training
        (the running statistics updated), the running ones in evaluation."""
        if not self.training:
            return self.running_mean, torch.rsqrt(self.running_var + self.eps), constant_means
        mean, var = column_moments(flat)
        self.update_running(mean, var, len(flat))
        return mean, torch.rsqrt(var + self.eps), batch_means

    def update_running(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        self.running_mean.lerp_(mean, self.momentum)
        self.running_var.lerp_(var * count / (count - 1), self.momentum)
        self.num_batches_tracked += 1

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        return _Standardize.apply(flat, *self.statistics(flat)).view(x.shape)
