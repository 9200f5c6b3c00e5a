"""The HSSM block's glue with its vector-Jacobian product written out, chunk by chunk on the kernels' threads.

What follows a block's oscillator bank (hssm.HSSMBlock.glue is the same function under autograd):

    a = ϕ Rᵀ + D ⊙ u,   h = drop₁(GELU(a)),   [v g] = h Wᵀ + b,   out = x + drop₂(v ⊙ σ(g))

with R the HRU's readout matrix, D its skip, W and b the GLU's two linear maps stacked. The forward
keeps nothing but its inputs; the backward recomputes a, h and [v g] a chunk at a time and runs the
chain rule by hand: torch's matrix products, GELU and sigmoid, and a compiled pass (kernels.c, "The
block's glue") for each of the other pointwise stages and their derivatives. So a block's memory grows with the sequence by its
inputs and outputs only, and a chunk costs a few calls instead of autograd's replay of a dozen ops.

Chunks are (batch row, time span) pairs, processed on core's threads. Each parameter gradient is
summed per slot (chunk i into slot i mod SLOTS, in order) and the slots then in order, so the bits do
not depend on the number of threads. Dropout masks are counter-based (Mask): element (b, t, k) of
the global batch is kept or not by a hash of (seed, index), so the recomputation, any chunking and
every rank of a data-parallel run see the same mask without storing it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import core, kernels

# Time steps per chunk; None: as many as keep a chunk's widest activation at CHUNK_ELEMENTS elements
# (512 KiB in float32: below heap.MMAP_THRESHOLD, so the scratch comes from the heap and is reused).
CHUNK = None
CHUNK_ELEMENTS = 2 ** 17


@dataclass(frozen=True)
class Mask:
    """A dropout mask over the global batch: element (b, t, k) of a (B, L, H) activation is scaled by
    `scale` when hash(seed, index) ≥ threshold, index = ((row_offset + b)·L + t)·H + k, else zeroed.

    row_offset is the batch rows before this process's in the global batch (data-parallel ranks).
    """

    seed: int = 0
    threshold: int = 0
    scale: float = 1.0
    row_offset: int = 0

    def args(self, row: int, step: int, length: int, width: int) -> tuple:
        """The kernels' dropout arguments for the block of rows starting at (batch row, time step)."""
        return self.seed, ((self.row_offset + row) * length + step) * width, self.threshold, self.scale


KEEP_ALL = Mask()


def apply_mask(x: torch.Tensor, mask: Mask) -> torch.Tensor:
    """x (B, L, H) scaled by the mask's factors (Dropout's forward, and its backward on the gradient)."""
    x = x.contiguous()
    out = torch.empty_like(x)
    seed, base, threshold, scale = mask.args(0, 0, x.shape[1], x.shape[2])
    kernels.for_tensor(x).ef_dropout(x.numel(), x.data_ptr(), out.data_ptr(), seed, base, threshold, scale)
    return out


def chunks(batch: int, span: slice, width: int) -> list[tuple[int, slice]]:
    """(batch row, time span) pairs covering the batch over the steps of `span`."""
    size = CHUNK or max(1, CHUNK_ELEMENTS // width)
    return [(b, slice(t, min(t + size, span.stop))) for b in range(batch) for t in range(span.start, span.stop, size)]


class Scratch:
    """One thread's chunk buffers, n rows each: the GELU's input a (then ∂L/∂a), its output (then
    ∂L/∂h after dropout's backward), h (then ∂L/∂h), [v g], σ(g) and ∂L/∂[v g]."""

    def __init__(self, rows: int, width: int, like: torch.Tensor):
        self.a, self.gelu, self.h, self.gate = (like.new_empty(rows, width) for _ in range(4))
        self.vg, self.grad_vg = like.new_empty(rows, 2 * width), like.new_empty(rows, 2 * width)

    def rows(self, n: int) -> "Scratch":
        view = object.__new__(Scratch)
        view.__dict__ = {name: buffer[:n] for name, buffer in self.__dict__.items()}
        return view


@dataclass
class GlueGradients:
    """What the glue's backward accumulates over its spans: ∂L/∂u (each span writes its own steps) and
    the parameter gradients per slot (core.in_slots), added slot by slot at the end."""

    u: torch.Tensor
    readout: torch.Tensor
    skip: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def totals(self) -> tuple:
        """(∂L/∂u, ∂L/∂readout, ∂L/∂skip, ∂L/∂weight, ∂L/∂bias)."""
        return (self.u, self.readout.sum(0), self.skip.sum(0).to(self.u.dtype), self.weight.sum(0),
                self.bias.sum(0))


@dataclass
class Glue:
    """The glue's input u and parameters (contiguous, one dtype) and its two masks. The positions come
    with each call, a time span's worth: the whole sequence (GlueFunction), or one chunk of the bank
    at a time (block.RHELBlock, which never holds them all)."""

    u: torch.Tensor
    readout: torch.Tensor
    skip: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    masks: tuple[Mask, Mask]

    def __post_init__(self):
        for name in ("u", "readout", "skip", "weight", "bias"):
            setattr(self, name, getattr(self, name).detach().to(self.u.dtype).contiguous())
        self.lib = kernels.for_tensor(self.u)
        self.batch, self.length, self.width = self.u.shape

    def run(self, positions: torch.Tensor, span: slice, task) -> None:
        """task(slot, scratch, b, s, ϕ) for every chunk of the span (core.in_slots), ϕ the chunk's
        positions; `positions` holds the span's."""
        pieces = chunks(self.batch, span, max(positions.shape[2], 2 * self.width))
        rows = pieces[0][1].stop - pieces[0][1].start

        def piece(slot, scratch, i):
            b, s = pieces[i]
            task(slot, scratch, b, s, positions[b, s.start - span.start:s.stop - span.start])

        core.in_slots(len(pieces), piece, lambda: Scratch(rows, self.width, self.u))

    def mask_args(self, which: int, b: int, s: slice) -> tuple:
        return self.masks[which].args(b, s.start, self.length, self.width)

    def head(self, scratch: Scratch, b: int, s: slice, phi: torch.Tensor) -> tuple[int, Scratch]:
        """One chunk's forward up to the GLU's product: a = ϕRᵀ + D⊙u, GELU(a), h, [v g] and σ(g)."""
        n = s.stop - s.start
        k = scratch.rows(n)
        torch.mm(phi, self.readout.T, out=k.a)
        self.lib.ef_glue_skip(n, self.width, k.a.data_ptr(), self.u[b, s].data_ptr(), self.skip.data_ptr())
        torch._C._nn.gelu(k.a, out=k.gelu)
        self.lib.ef_dropout(k.gelu.numel(), k.gelu.data_ptr(), k.h.data_ptr(), *self.mask_args(0, b, s))
        torch.addmm(self.bias, k.h, self.weight.T, out=k.vg)
        torch.sigmoid_(k.gate.copy_(k.vg[:, self.width:]))  # contiguous: torch's vectorised sigmoid (7× the strided one)
        return n, k

    def forward(self, x: torch.Tensor, positions: torch.Tensor, span: slice, out: torch.Tensor) -> None:
        """out = x + the glue over the steps of `span` (x and out contiguous, (B, L, H))."""

        def task(slot, scratch, b, s, phi):
            n, k = self.head(scratch, b, s, phi)
            self.lib.ef_glue_glu(n, self.width, k.vg.data_ptr(), k.gate.data_ptr(), x[b, s].data_ptr(),
                                 out[b, s].data_ptr(), *self.mask_args(1, b, s))

        self.run(positions, span, task)

    def gradients(self) -> GlueGradients:
        slots = core.SLOTS
        return GlueGradients(torch.empty_like(self.u), self.readout.new_zeros(slots, *self.readout.shape),
                             torch.zeros(slots, self.width, dtype=torch.float64),
                             self.weight.new_zeros(slots, *self.weight.shape), self.bias.new_zeros(slots, *self.bias.shape))

    def backward(self, grad: torch.Tensor, positions: torch.Tensor, span: slice, sums: GlueGradients) -> torch.Tensor:
        """∂L/∂positions over the steps of `span` from ∂L/∂out (a broadcast along time is read as it is,
        not copied, when its last dimension is contiguous); ∂L/∂u and the parameters' go into `sums`."""

        grad_positions = torch.empty_like(positions)

        def task(slot, scratch, b, s, phi):
            n, k = self.head(scratch, b, s, phi)
            upstream = grad[b, s]
            self.lib.ef_glue_glu_backward(n, self.width, k.vg.data_ptr(), k.gate.data_ptr(), upstream.data_ptr(),
                                          upstream.stride(0), k.grad_vg.data_ptr(), *self.mask_args(1, b, s))
            sums.weight[slot].addmm_(k.grad_vg.T, k.h)
            sums.bias[slot].add_(k.grad_vg.sum(0))
            torch.mm(k.grad_vg, self.weight, out=k.h)  # ∂L/∂h
            self.lib.ef_dropout(k.h.numel(), k.h.data_ptr(), k.gelu.data_ptr(), *self.mask_args(0, b, s))
            torch.ops.aten.gelu_backward.grad_input(k.gelu, k.a, grad_input=k.h)  # ∂L/∂a
            self.lib.ef_glue_skip_backward(n, self.width, k.h.data_ptr(), self.u[b, s].data_ptr(),
                                           self.skip.data_ptr(), sums.u[b, s].data_ptr(), sums.skip[slot].data_ptr())
            torch.mm(k.h, self.readout, out=grad_positions[b, s.start - span.start:s.stop - span.start])
            sums.readout[slot].addmm_(k.h.T, phi)

        self.run(positions, span, task)
        return grad_positions


def contiguous_rows(grad: torch.Tensor) -> torch.Tensor:
    """∂L/∂out as the glue's backward reads it: a broadcast along time stays a view."""
    return grad if grad.stride(2) == 1 else grad.contiguous()


class GlueFunction(torch.autograd.Function):
    """x + glue(positions, u) whose backward recomputes the glue (Glue.backward) instead of storing it."""

    @staticmethod
    def forward(ctx, x, positions, u, readout, skip, weight, bias, masks):
        ctx.save_for_backward(positions, u, readout, skip, weight, bias)
        ctx.masks = masks
        x = x.detach().contiguous()
        out = torch.empty_like(x)
        Glue(u, readout, skip, weight, bias, masks).forward(x, positions.detach().to(x.dtype).contiguous(),
                                                            slice(0, x.shape[1]), out)
        return out

    @staticmethod
    def backward(ctx, grad):
        positions, u, readout, skip, weight, bias = ctx.saved_tensors
        glue = Glue(u, readout, skip, weight, bias, ctx.masks)
        sums = glue.gradients()
        grad_positions = glue.backward(contiguous_rows(grad), positions.detach().to(u.dtype).contiguous(),
                                       slice(0, u.shape[1]), sums)
        grad_u, *grad_params = sums.totals()
        return (grad, grad_positions, grad_u, *grad_params, None)
