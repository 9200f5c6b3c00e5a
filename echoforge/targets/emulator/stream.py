"""The emulator's passes a time chunk at a time, with the state carried between chunks.

A device with a bounded buffer receives a long sequence in pieces: the forward pass in time order, the
echo in reverse time order. These streams run the integer kernels of ``kernels`` on each piece and give
bit for bit what ``EmulatorCore.forward_int`` / ``echo_int`` give on the whole sequence, whatever the
chunking, because every step is the same integer operation on the same carried state.

Echo chunks. The whole-sequence echo (``kernels.echo``) reads: flip π, then for k = L−1 … 0
"step on f[k], then (k > 0) π± ±= q[k−1]". Regrouped so that each step owns its own nudge index, that is
"π± ±= q[k], then step on f[k]" for k = L−1 … 0, starting from (ϕ, −π) without a nudge: the same
sequence of operations, so a chunk [s, e) needs exactly f[s:e] and q[s:e].
"""

from __future__ import annotations

import numpy as np
from numba import njit

from . import kernels
from .core import EmulatorCore
from .kernels import ACCUMULATOR, STATE, _copy, _nudge, _observe, _step


def _counters() -> np.ndarray:
    return np.zeros(len(kernels.KERNEL_COUNTERS), dtype=np.int64)


class ForwardStream:
    """A forward pass of ``core`` from (phi, pi) (B, P) codes, fed forcing chunks (B, K, P) in time order."""

    def __init__(self, core: EmulatorCore, phi, pi):
        self._args = core._kernel_args()
        self.phi = np.array(phi, dtype=np.int64)
        self.pi = np.array(pi, dtype=np.int64)
        self.counters = _counters()

    def run(self, forcing) -> np.ndarray:
        """Consume the next chunk; return the positions after each of its steps (B, K, P)."""
        forcing = np.ascontiguousarray(forcing, dtype=np.int64)
        positions = np.empty_like(forcing)
        self.phi, self.pi, counters = kernels.forward(forcing, self.phi, self.pi, *self._args, positions)
        self.counters += counters
        return positions


class EchoStream:
    """The ±ε echo pair of ``core`` from the forward's end state (phi, pi) (B, P), not flipped, fed
    (forcing, nudges) chunks (B, K, P) in reverse time order; nudges are the +ε codes q."""

    def __init__(self, core: EmulatorCore, phi, pi):
        self._args = core._kernel_args()
        phi, pi = np.asarray(phi, dtype=np.int64), np.asarray(pi, dtype=np.int64)
        # The pair's state as (B, 2, P): index 1 is the pair (+ε, −ε), each batch row contiguous.
        self._phi = np.ascontiguousarray(np.stack([phi, phi], axis=1))
        self._pi = np.ascontiguousarray(np.stack([-pi, -pi], axis=1))
        self.accumulators = np.zeros((phi.shape[0], len(kernels.ACCUMULATORS), phi.shape[1]), dtype=np.int64)
        self.counters = _counters()

    def run(self, forcing, nudges) -> np.ndarray:
        """Consume the chunk preceding the last one consumed; return its forcing observable differences."""
        forcing = np.ascontiguousarray(forcing, dtype=np.int64)
        nudges = np.ascontiguousarray(nudges, dtype=np.int64)
        observable = np.empty_like(forcing)
        _echo_chunk(forcing, nudges, self._phi, self._pi, self.accumulators, *self._args, observable, self.counters)
        return observable

    @property
    def phi(self) -> np.ndarray:
        """Positions of the pair, (2, B, P), index 0 the +ε echo."""
        return np.moveaxis(self._phi, 1, 0).copy()

    @property
    def pi(self) -> np.ndarray:
        return np.moveaxis(self._pi, 1, 0).copy()


@njit(cache=True)
def _echo_chunk(forcing, nudges, phi, pi, acc, params, nonlinear, shifts, lim, tanh_values, tanh_integral,
                forcing_obs, counters):
    """For k = K−1 … 0: π± ±= q[k], one step of the pair on f[k], accumulate the half-step observables.

    ``phi``, ``pi`` (B, 2, P), ``acc`` (B, 6, P) and ``counters`` (4,) are updated in place; fills
    ``forcing_obs`` (B, K, P). The operations and their order per step are those of ``kernels.echo``.
    """
    nb, nt, npos = forcing.shape
    lanes = 2 * npos
    pair_params = np.concatenate((params, params), axis=1)
    pi_before = np.empty((2, npos), dtype=np.int64)
    f = np.empty((2, npos), dtype=np.int64)
    scratch = np.zeros((4, 2, npos), dtype=np.int64)
    for bi in range(nb):
        phi_b, pi_b = phi[bi], pi[bi]
        for k in range(nt - 1, -1, -1):
            counters[STATE] += _nudge(pi_b[0], pi_b[1], nudges[bi, k], lim)
            _copy(f[0], forcing[bi, k])
            _copy(f[1], forcing[bi, k])
            _copy(pi_before.reshape(lanes), pi_b.reshape(lanes))
            _step(phi_b.reshape(lanes), pi_b.reshape(lanes), f.reshape(lanes), pair_params, nonlinear, shifts, lim,
                  tanh_values, tanh_integral, scratch.reshape(4, lanes), counters, True)
            counters[ACCUMULATOR] += _observe(scratch, pi_before, pi_b, forcing[bi, k], nonlinear, acc[bi],
                                              forcing_obs[bi, k])
