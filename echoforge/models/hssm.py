"""Hamiltonian state-space model: encoder → blocks (norm → HRU → GELU → dropout → GLU → dropout → skip) → head.

Only the HRUs' recurrent cores use RHEL; every other layer is ordinary autograd, so RHEL chains
through the stack layer by layer (PAPER.md §2, Remark 8).
"""

from __future__ import annotations

from torch import nn

from .hru import LinHRU, NonlinHRU

HRU_KINDS = {"linear": LinHRU, "nonlinear": NonlinHRU}
TASKS = ("classification", "regression")


class GLU(nn.Module):
    """Gated linear unit w₁(x) ⊙ σ(w₂(x)), width-preserving."""

    def __init__(self, width: int):
        super().__init__()
        self.value = nn.Linear(width, width)
        self.gate = nn.Linear(width, width)

    def forward(self, x):
        return self.value(x) * self.gate(x).sigmoid()


class HSSMBlock(nn.Module):
    def __init__(self, hru: nn.Module, width: int, dropout: float):
        super().__init__()
        self.norm = nn.BatchNorm1d(width, affine=False)
        self.hru = hru
        self.glu = GLU(width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        h = self.norm(x.transpose(1, 2)).transpose(1, 2)
        h = self.dropout(nn.functional.gelu(self.hru(h)))
        return x + self.dropout(self.glu(h))


class HSSM(nn.Module):
    """A stack of HRU blocks with a classification (mean-pool → logits) or regression head.

    Regression outputs every `output_step`-th step starting at step output_step − 1 (1: every step;
    the sequence length: the last step only). Extra keyword arguments go to every HRU.
    """

    def __init__(self, input_size: int, num_outputs: int, *, hidden_size: int, state_size: int,
                 num_blocks: int, hru: str = "linear", task: str = "classification",
                 learning: str = "rhel", epsilon: float = 0.1, dropout: float = 0.05,
                 output_step: int = 1, **hru_options):
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
                                     **hru_options), hidden_size, dropout)
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
