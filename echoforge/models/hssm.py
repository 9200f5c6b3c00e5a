"""Hamiltonian state-space model: encoder → blocks (norm → HRU → GELU → dropout → GLU → dropout → skip) → head.

Only the HRUs' recurrent cores use RHEL; every other layer is ordinary autograd, so RHEL chains
through the stack layer by layer (PAPER.md §2, Remark 8).
"""

from __future__ import annotations

import torch
from torch import nn

from . import glue
from .block import RHELBlock
from .hru import LinHRU, NonlinHRU
from .norm import TimeBatchNorm

HRU_KINDS = {"linear": LinHRU, "nonlinear": NonlinHRU}
TASKS = ("classification", "regression")
READOUTS = ("mean", "steps")


class GLU(nn.Module):
    """Gated linear unit w₁(x) ⊙ σ(w₂(x)), width-preserving."""

    def __init__(self, width: int):
        super().__init__()
        self.value = nn.Linear(width, width)
        self.gate = nn.Linear(width, width)

    def forward(self, x):
        return self.value(x) * self.gate(x).sigmoid()


class _Masked(torch.autograd.Function):
    """x scaled by a dropout mask's factors; the backward scales the gradient by the same factors."""

    @staticmethod
    def forward(ctx, x, mask):
        ctx.mask = mask
        return glue.apply_mask(x, mask)

    @staticmethod
    def backward(ctx, grad):
        return glue.apply_mask(grad, ctx.mask), None


class Dropout(nn.Module):
    """Inverted dropout whose mask is a hash of (seed, element index) (glue.Mask): one draw of torch's
    generator per call instead of one per element, the same mask however the glue is chunked or the
    batch split over ranks, and nothing to store for the recomputation. An element is dropped when its
    32-bit hash is below round(p·2³²).

    row_offset: the batch rows before this process's in the global batch (set for data-parallel ranks).
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p
        self.threshold = min(round(p * 2 ** 32), 2 ** 32 - 1)
        self.row_offset = 0

    def active(self) -> bool:
        return self.training and self.threshold > 0

    def mask(self) -> glue.Mask:
        """A new mask (one draw from torch's generator), or the identity when inactive."""
        if not self.active():
            return glue.KEEP_ALL
        seed = int(torch.empty((), dtype=torch.int64).random_())
        return glue.Mask(seed, self.threshold, 2 ** 32 / (2 ** 32 - self.threshold), self.row_offset)

    def forward(self, x):
        return _Masked.apply(x, self.mask()) if self.active() else x


class HSSMBlock(nn.Module):
    """norm → HRU → GELU → dropout → GLU → dropout, plus the skip.

    With checkpoint_glue (the default), what follows the oscillator bank (readout, skip D, GELU,
    dropout, GLU) runs as glue.GlueFunction: recomputed chunk by chunk in backward instead of stored,
    with its derivative written out, on the kernels' threads. Under RHEL on the host's float core the
    norm, bank and glue run as one function (block.RHELBlock) that stores only the normalised input, so
    RHEL's memory grows with the sequence by the block's input and output; on a device's core, and
    under BPTT, the bank's positions are stored too (BPTT adds the momenta). Without gradients (evaluation)
    the same compiled forward runs. checkpoint_glue=False runs `glue` (the same function in torch ops)
    under plain autograd, which stores every activation.
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

    def forward(self, x, overwrite_input: bool = False):
        """x + the block of x; with overwrite_input (x is the caller's to give up: HSSM.forward's own
        activations) the fused RHEL block writes its output over x."""
        if not (self.checkpoint_glue or not torch.is_grad_enabled()):
            u = self.norm(x)
            return x + self.glue(self.hru.bank(u), u)
        masks = (self.dropout.mask(), self.dropout.mask())  # the order glue() draws them in
        weight = torch.cat([self.glu.value.weight, self.glu.gate.weight])
        bias = torch.cat([self.glu.value.bias, self.glu.gate.bias])
        glue_args = (self.hru.readout_matrix(), self.hru.D, weight, bias, masks)
        if self.hru.on_float_core_rhel():
            statistics = self.norm.statistics(x.reshape(-1, x.shape[-1]))
            return RHELBlock.apply(x, *statistics, self.hru.input_map(), self.hru.oscillator_table(), *glue_args,
                                   self.hru.kind, self.hru.epsilon, self.hru.monitor, overwrite_input)
        u = self.norm(x)
        return glue.GlueFunction.apply(x, self.hru.bank(u), u, *glue_args)


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
            h = block(h, overwrite_input=True)
        if self.readout == "mean":
            return self.head(h.sum(dim=1) / h.shape[1])  # backward: a broadcast view, no copy
        return self.head(h[:, self.output_step - 1::self.output_step])
