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
READOUTS = ("mean", "steps")
# Time steps per chunk when the glue is recomputed; None: as many as keep a chunk's tensors at
# GLUE_CHUNK_ELEMENTS elements (512 KiB in float32: below heap.MMAP_THRESHOLD, so they are reused
# from the heap, and small beside the sequence-sized tensors a block keeps).
GLUE_CHUNK = None
GLUE_CHUNK_ELEMENTS = 2 ** 17


class GLU(nn.Module):
    """Gated linear unit w₁(x) ⊙ σ(w₂(x)), width-preserving."""

    def __init__(self, width: int):
        super().__init__()
        self.value = nn.Linear(width, width)
        self.gate = nn.Linear(width, width)

    def forward(self, x):
        return self.value(x) * self.gate(x).sigmoid()


class Dropout(nn.Module):
    """Inverted dropout whose mask costs a third of torch's random draws.

    Each 64-bit draw of torch's global generator (bits 0–62 uniform) gives three 16-bit uniforms; an
    element is dropped when its uniform is below round(p·2¹⁶), so p is kept to within 2⁻¹⁷. torch's
    dropout draws one number per element, and on a long sequence those draws cost more than the rest
    of the glue (which draws its masks twice: forward and the chunked recomputation).
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p
        self.threshold = round(p * 2 ** 16)

    def forward(self, x):
        if not self.training or self.threshold == 0:
            return x
        draws = torch.empty((x.numel() + 2) // 3, dtype=torch.int64).random_()
        # Compared where they lie (int16 uniforms span [−2¹⁵, 2¹⁵)): the (draws, 3) mask comes out
        # contiguous, so only it is laid out, not a copy of the uniforms.
        keep = draws.view(torch.int16).view(-1, 4)[:, :3] >= self.threshold - 2 ** 15
        keep = keep.view(-1)[:x.numel()].view(x.shape)
        return (x * keep).mul_(2 ** 16 / (2 ** 16 - self.threshold))


class ChunkedRecompute(torch.autograd.Function):
    """residual + fn(*inputs) for an fn that is pointwise in time, without keeping its activations.

    The forward runs fn over time chunks under no_grad, writing residual + fn chunk by chunk into
    the output (no separate sequence-sized fn output); the backward reruns fn chunk by chunk with the same RNG state
    (the same dropout masks) and differentiates each chunk, so the transient memory is one chunk's
    activations, not the sequence's. (torch.utils.checkpoint recomputes the whole sequence at once,
    and its non-reentrant path loads torch's compiler stack, ~80 MB resident.)
    """

    @staticmethod
    def forward(ctx, fn, chunk, num_inputs, residual, *tensors):
        ctx.fn, ctx.chunk, ctx.rng = fn, chunk, torch.get_rng_state()
        inputs, ctx.params = tensors[:num_inputs], tensors[num_inputs:]
        ctx.save_for_backward(*inputs)
        output = torch.empty_like(residual)
        with torch.no_grad():
            for s in _chunks(residual, chunk):
                torch.add(residual[:, s], fn(*(t[:, s] for t in inputs)), out=output[:, s])
        return output

    @staticmethod
    def backward(ctx, grad_output):
        inputs, params = ctx.saved_tensors, ctx.params
        input_grads = [torch.empty_like(t) if t.requires_grad else None for t in inputs]
        param_grads = [torch.zeros_like(p) if p.requires_grad else None for p in params]
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.set_rng_state(ctx.rng)
            for s in _chunks(inputs[0], ctx.chunk):
                pieces = [t[:, s].detach().requires_grad_(t.requires_grad) for t in inputs]
                wanted = [t for t in (*pieces, *params) if t.requires_grad]
                # ⟨fn, grad⟩ as a scalar: its gradient is the vector-Jacobian product, and
                # autograd.grad with tensor grad_outputs would import sympy (35 MB resident).
                inner = (ctx.fn(*pieces) * grad_output[:, s]).sum()
                grads = iter(torch.autograd.grad(inner, wanted, allow_unused=True))
                for i, t in enumerate(pieces):
                    if t.requires_grad:
                        input_grads[i][:, s] = next(grads)
                for i, p in enumerate(params):
                    grad = next(grads) if p.requires_grad else None
                    if grad is not None:
                        param_grads[i] += grad
        return (None, None, None, grad_output, *input_grads, *param_grads)


def _chunks(x: torch.Tensor, size: int):
    return [slice(start, start + size) for start in range(0, x.shape[1], size)]


class _Standardize(torch.autograd.Function):
    """(x − mean)·invstd with batch statistics, whose backward needs only its output.

    Batch norm's gradient can be written in the normalised output û alone:
    ∂L/∂x = invstd·(g − mean(g) − û·mean(g·û)); so the block keeps û, which the HRU needs anyway,
    instead of also keeping x.
    """

    @staticmethod
    def forward(ctx, x, mean, invstd):
        u = (x - mean).mul_(invstd)
        ctx.save_for_backward(u, invstd)
        return u

    @staticmethod
    def backward(ctx, grad):
        u, invstd = ctx.saved_tensors
        projection = (grad * u).mean(0)
        # In place where it is safe, so the backward holds one sequence-sized temporary at a time.
        return (grad - grad.mean(0)).addcmul_(u, projection, value=-1).mul_(invstd), None, None


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

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        if not self.training:
            return ((flat - self.running_mean) * torch.rsqrt(self.running_var + self.eps)).view(x.shape)
        with torch.no_grad():
            var, mean = torch.var_mean(flat, dim=0, correction=0)
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * len(flat) / (len(flat) - 1), self.momentum)
            self.num_batches_tracked += 1
        return _Standardize.apply(flat, mean, torch.rsqrt(var + self.eps)).view(x.shape)


class HSSMBlock(nn.Module):
    """norm → HRU → GELU → dropout → GLU → dropout, plus the skip.

    With checkpoint_glue (the default), what follows the oscillator bank (readout, skip D, GELU,
    dropout, GLU) is recomputed during backward, chunk by chunk in time, instead of stored: it is cheap
    and pointwise, and what remains stored per block under RHEL is the normalised input and the bank's
    positions (BPTT adds the momenta), so RHEL's memory grows with the sequence by little more than
    the bank's inputs and outputs. Dropout masks are then drawn per chunk and replayed in backward.
    """

    def __init__(self, hru: nn.Module, width: int, dropout: float, checkpoint_glue: bool = True):
        super().__init__()
        self.norm = TimeBatchNorm(width)
        self.hru = hru
        self.glu = GLU(width)
        self.dropout = Dropout(dropout)
        self.checkpoint_glue = checkpoint_glue

    def glue(self, positions, u):
        h = self.dropout(nn.functional.gelu(self.hru.output(positions, u)))
        return self.dropout(self.glu(h))

    def forward(self, x):
        u = self.norm(x)
        positions = self.hru.bank(u)
        if self.checkpoint_glue and torch.is_grad_enabled():
            params = [*self.glu.parameters(), *self.hru.parameters()]  # unused ones get None
            chunk = GLUE_CHUNK or max(1, GLUE_CHUNK_ELEMENTS // (x.shape[0] * x.shape[2]))
            return ChunkedRecompute.apply(self.glue, chunk, 2, x, positions, u, *params)
        return x + self.glue(positions, u)


class HSSM(nn.Module):
    """A stack of HRU blocks with a classification (mean-pool → logits) or regression head.

    readout "mean" pools over time before the head (classification always does; a sequence-level
    regression such as the adding problem may); "steps" outputs every `output_step`-th step starting
    at step output_step − 1 (1: every step; the sequence length: the last step only) — the default
    for regression. checkpoint_glue (default on) trades a recomputation of the pointwise layers for
    their activations (HSSMBlock); False keeps them, a little faster and sequence-sized. Extra keyword
    arguments go to every HRU.
    """

    def __init__(self, input_size: int, num_outputs: int, *, hidden_size: int, state_size: int,
                 num_blocks: int, hru: str = "linear", task: str = "classification",
                 learning: str = "rhel", epsilon: float = 0.1, dropout: float = 0.05,
                 output_step: int = 1, readout: str | None = None, checkpoint_glue: bool = True,
                 **hru_options):
        super().__init__()
        if hru not in HRU_KINDS:
            raise ValueError(f"hru must be one of {sorted(HRU_KINDS)}, got {hru!r}")
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if output_step < 1:
            raise ValueError(f"output_step must be ≥ 1, got {output_step}")
        readout = readout or ("mean" if task == "classification" else "steps")
        if readout not in READOUTS or (task == "classification" and readout != "mean"):
            raise ValueError(f"readout must be one of {READOUTS} (classification: mean), got {readout!r}")
        self.task, self.output_step, self.readout = task, output_step, readout
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
        if self.readout == "mean":
            return self.head(h.sum(dim=1) / h.shape[1])  # backward: a broadcast view, no copy
        return self.head(h[:, self.output_step - 1::self.output_step])
