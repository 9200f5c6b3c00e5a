"""Hamiltonian state-space model: encoder → blocks (norm → HRU → GELU → dropout → GLU → dropout → skip) → head.

Only the HRUs' recurrent cores use RHEL; every other layer is ordinary autograd, so RHEL chains
through the stack layer by layer (PAPER.md §2, Remark 8).
"""

from __future__ import annotations

import torch
from torch import nn

from .hru import LinHRU, NonlinHRU

HRU_KINDS = {"linear": LinHRU, "nonlinear": NonlinHRU}
TASKS = ("classification", "regression")
GLUE_CHUNK = 2048  # time steps per chunk when the glue is recomputed


class GLU(nn.Module):
    """Gated linear unit w₁(x) ⊙ σ(w₂(x)), width-preserving."""

    def __init__(self, width: int):
        super().__init__()
        self.value = nn.Linear(width, width)
        self.gate = nn.Linear(width, width)

    def forward(self, x):
        return self.value(x) * self.gate(x).sigmoid()


class ChunkedRecompute(torch.autograd.Function):
    """Apply a function that is pointwise in time without keeping its activations.

    The forward runs fn over time chunks under no_grad; the backward reruns it chunk by chunk with
    the same RNG state (the same dropout masks) and differentiates each chunk, so the transient
    memory is one chunk's activations, not the sequence's. (torch.utils.checkpoint recomputes the
    whole sequence at once, and its non-reentrant path loads torch's compiler stack, ~80 MB.)
    """

    @staticmethod
    def forward(ctx, fn, chunk, num_inputs, *tensors):
        ctx.fn, ctx.chunk, ctx.rng = fn, chunk, torch.get_rng_state()
        ctx.save_for_backward(*tensors[:num_inputs])
        ctx.params = tensors[num_inputs:]
        inputs = tensors[:num_inputs]
        with torch.no_grad():
            return torch.cat([fn(*(t[:, s] for t in inputs)) for s in _chunks(inputs[0], chunk)], 1)

    @staticmethod
    def backward(ctx, grad_output):
        inputs, params = ctx.saved_tensors, ctx.params
        input_grads = [torch.zeros_like(t) if t.requires_grad else None for t in inputs]
        param_grads = [torch.zeros_like(p) if p.requires_grad else None for p in params]
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.set_rng_state(ctx.rng)
            for s in _chunks(inputs[0], ctx.chunk):
                pieces = [t[:, s].detach().requires_grad_(t.requires_grad) for t in inputs]
                wanted = [t for t in (*pieces, *params) if t.requires_grad]
                grads = iter(torch.autograd.grad(ctx.fn(*pieces), wanted, grad_output[:, s],
                                                 allow_unused=True))
                for i, t in enumerate(pieces):
                    if t.requires_grad:
                        input_grads[i][:, s] = next(grads)
                for i, p in enumerate(params):
                    grad = next(grads) if p.requires_grad else None
                    if grad is not None:
                        param_grads[i] += grad
        return (None, None, None, *input_grads, *param_grads)


def _chunks(x: torch.Tensor, size: int):
    return [slice(start, start + size) for start in range(0, x.shape[1], size)]


class HSSMBlock(nn.Module):
    """norm → HRU → GELU → dropout → GLU → dropout, plus the skip.

    With checkpoint_glue, what follows the oscillator bank (readout, skip D, GELU, dropout, GLU) is
    recomputed during backward, chunk by chunk in time, instead of stored: it is cheap and pointwise,
    and what remains stored per block is the block input, the normalised input, the forcing and the
    bank's positions (BPTT adds the momenta). Dropout masks are then drawn per chunk.
    """

    def __init__(self, hru: nn.Module, width: int, dropout: float, checkpoint_glue: bool = False):
        super().__init__()
        self.norm = nn.BatchNorm1d(width, affine=False)
        self.hru = hru
        self.glu = GLU(width)
        self.dropout = nn.Dropout(dropout)
        self.checkpoint_glue = checkpoint_glue

    def glue(self, positions, u):
        h = self.dropout(nn.functional.gelu(self.hru.output(positions, u)))
        return self.dropout(self.glu(h))

    def forward(self, x):
        u = self.norm(x.transpose(1, 2)).transpose(1, 2)
        positions = self.hru.oscillate(self.hru.forcing(u))
        if self.checkpoint_glue and torch.is_grad_enabled():
            params = [*self.glu.parameters(), *self.hru.parameters()]  # unused ones get None
            return x + ChunkedRecompute.apply(self.glue, GLUE_CHUNK, 2, positions, u, *params)
        return x + self.glue(positions, u)


class HSSM(nn.Module):
    """A stack of HRU blocks with a classification (mean-pool → logits) or regression head.

    Regression outputs every `output_step`-th step starting at step output_step − 1 (1: every step;
    the sequence length: the last step only). checkpoint_glue trades a recomputation of the
    pointwise layers for their activations (HSSMBlock). Extra keyword arguments go to every HRU.
    """

    def __init__(self, input_size: int, num_outputs: int, *, hidden_size: int, state_size: int,
                 num_blocks: int, hru: str = "linear", task: str = "classification",
                 learning: str = "rhel", epsilon: float = 0.1, dropout: float = 0.05,
                 output_step: int = 1, checkpoint_glue: bool = False, **hru_options):
        super().__init__()
        if hru not in HRU_KINDS:
            raise ValueError(f"hru must be one of {sorted(HRU_KINDS)}, got {hru!r}")
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if output_step < 1:
            raise ValueError(f"output_step must be ≥ 1, got {output_step}")
        self.task, self.output_step = task, output_step
        self.encoder = nn.Linear(input_size, hidden_size)
        self.blocks = nn.ModuleList(
            HSSMBlock(HRU_KINDS[hru](hidden_size, state_size, learning=learning, epsilon=epsilon,
                                     **hru_options), hidden_size, dropout, checkpoint_glue)
            for _ in range(num_blocks))
        self.head = nn.Linear(hidden_size, num_outputs)

    def hrus(self):
        return [block.hru for block in self.blocks]

    def set_learning(self, rule: str) -> None:
        """Switch every HRU between "bptt" and "rhel" without touching parameters."""
        for hru in self.hrus():
            hru.learning = rule

    def forward(self, x):
        h = self.encoder(x)
        for block in self.blocks:
            h = block(h)
        if self.task == "classification":
            return self.head(h.mean(dim=1))
        return self.head(h[:, self.output_step - 1::self.output_step])
