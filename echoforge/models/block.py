"""A block's norm, oscillator bank and glue as one autograd Function, for RHEL on the host's float core.

Under RHEL the bank's positions feed only the glue. So the forward runs the bank a time chunk at a
time (core.time_chunks), each chunk from the state the previous one ended in, and the glue on each
chunk's positions as they come, keeping only the state at each chunk's start (two (B, P) arrays). The
echo then reads ∂L/∂positions latest chunk first (GlueNudges); each chunk of it is made when first
asked: the bank re-run over the chunk from its kept state (the forward's positions, bit for bit), the
glue's backward over the chunk (which writes that chunk's ∂L/∂u), and the echo's ∂L/∂f through B added
to it; the norm's backward then runs in place on that ∂L/∂u. Neither the positions nor ∂L/∂positions is
ever sequence-sized, nor a second ∂L/∂x: the block keeps its normalised input u, as the bank alone
does, for one more run of the bank's forward in the backward.
"""

from __future__ import annotations

import bisect

import numpy as np
import torch

from .core import time_chunks
from .glue import Glue, contiguous_rows
from .hru import Forcing, _core, _grad_table, _numpy, input_map_slots, through_input_map
from .norm import standardize, standardize_backward


class GlueNudges:
    """∂L/∂positions as an echo stream reads it (FloatCore.echo_stream: the last step, then each chunk
    and the step before it, latest first), each chunk made once by make(k) when first asked for, and
    only the chunk asked for and the one after it held."""

    def __init__(self, spans: list[slice], make):
        self.spans, self.make = spans, make
        self.starts = [s.start for s in spans]
        self.held: dict[int, np.ndarray] = {}

    def chunk(self, k: int) -> np.ndarray:
        if k not in self.held:
            expected = min(self.held, default=len(self.spans)) - 1
            if k != expected:
                raise RuntimeError(f"∂L/∂positions asked for chunk {k} where the echo's order gives {expected}")
            self.held = {j: held for j, held in self.held.items() if j == k + 1}
            self.held[k] = self.make(k)
        return self.held[k]

    def __getitem__(self, index) -> np.ndarray:
        _, steps = index
        if isinstance(steps, slice):
            k = self.starts.index(steps.start)
            if steps.stop != self.spans[k].stop:
                raise RuntimeError(f"∂L/∂positions asked for steps {steps}, not one of the echo's chunks")
            return self.chunk(k)
        k = bisect.bisect_right(self.starts, steps) - 1
        return self.chunk(k)[:, steps - self.starts[k]]


class RHELBlock(torch.autograd.Function):
    """x + glue(bank(norm(x)), norm(x)) with RHEL through the bank: the fused forward and backward
    described above, the norm given by its statistics (norm.TimeBatchNorm.statistics); the norm's
    backward runs in place on the block's own ∂L/∂u, to which the residual's gradient is added. With
    overwrite_input (the model's own activations: HSSM.forward) the output is written over x.
    Other arguments as glue.GlueFunction's, with the bank's input map, parameter table, kind, ε and
    monitor in place of its positions."""

    @staticmethod
    def forward(ctx, x, mean, invstd, means, input_map, table, readout, skip, weight, bias, masks, kind, epsilon,
                monitor, overwrite_input):
        # The residual written over x (no second activation) — not over a view, whose in-place change
        # autograd would replay with sequence-sized copies (CopySlices).
        if overwrite_input and x.is_contiguous() and not x._is_view():
            ctx.mark_dirty(x)
            out = x
        else:
            x = x.detach().contiguous()
            out = torch.empty_like(x)
        u = standardize(x.detach().view(-1, x.shape[-1]), mean, invstd).view(x.shape)
        core = _core(kind, table)
        forcing, glue = Forcing(u, input_map), Glue(u, readout, skip, weight, bias, masks)
        phi = pi = np.zeros((forcing.shape[0], forcing.shape[2]))
        starts = []
        for s in time_chunks(forcing.shape[1]):
            starts.append((phi, pi))
            positions, phi, pi = core.forward(_numpy(forcing.steps(s)), phi, pi)
            glue.forward(x.detach(), torch.from_numpy(positions), s, out.detach())
        ctx.save_for_backward(u, invstd, input_map, table, readout, skip, weight, bias)
        ctx.starts, ctx.end = starts, (phi, pi)
        ctx.means, ctx.masks, ctx.kind, ctx.epsilon, ctx.monitor = means, masks, kind, epsilon, monitor
        return out

    @staticmethod
    def backward(ctx, grad):
        u, invstd, input_map, table, readout, skip, weight, bias = ctx.saved_tensors
        input_map = input_map.detach()  # the rows' products run on other threads
        core = _core(ctx.kind, table)
        forcing, glue = Forcing(u, input_map), Glue(u, readout, skip, weight, bias, ctx.masks)
        sums, grad, grad_map = glue.gradients(), contiguous_rows(grad), input_map_slots(input_map, len(u))
        spans = time_chunks(u.shape[1])

        def make(k):
            positions, _, _ = core.forward(_numpy(forcing.steps(spans[k])), *ctx.starts[k])
            return _numpy(glue.backward(grad, torch.from_numpy(positions), spans[k], sums))

        echo = core.echo_stream(forcing, *ctx.end, GlueNudges(spans, make), ctx.epsilon,
                                through_input_map(u, input_map, sums.u, grad_map, add=True))
        ctx.monitor.record(echo.final_state, *ctx.end)
        grad_u, *grad_glue = sums.totals()
        flat = grad_u.view(-1, u.shape[-1])
        standardize_backward(flat, u.view(-1, u.shape[-1]), invstd, ctx.means, out=flat)
        return (grad_u.add_(grad), None, None, None, grad_map.sum(0), _grad_table(echo.grad_params, table),
                *grad_glue, None, None, None, None, None)
