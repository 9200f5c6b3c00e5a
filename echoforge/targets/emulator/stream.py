"""The emulator's passes a time chunk at a time, with the state carried between chunks.

A device with a bounded buffer receives a long sequence in pieces: the forward pass in time order, the
echo in reverse time order. These streams run the integer kernels of ``kernels`` on each piece and give
bit for bit what ``EmulatorCore.forward_int`` / ``echo_int`` give on the whole sequence, whatever the
chunking, because every step is the same integer operation on the same carried state.

Echo chunks. The echo reads: flip π, then for k = L−1 … 0 "π± ±= q[k], then step on f[k]" — the
paper's "step on f[k], then (k > 0) π± ±= q[k−1]" with each step owning its nudge index — so a chunk
[s, e) needs exactly f[s:e] and q[s:e], and the whole-sequence echo (``EmulatorCore.echo_int``) is
``kernels.echo_chunk`` over one chunk.
"""

from __future__ import annotations

import numpy as np

from echoforge.models.core import OscillatorParams

from . import kernels
from .core import EmulatorCore


def _counters() -> np.ndarray:
    return np.zeros(len(kernels.KERNEL_COUNTERS), dtype=np.int64)


class ForwardStream:
    """A forward pass of ``core`` from (phi, pi) (B, P) codes, fed forcing chunks (B, K, P) in time order."""

    def __init__(self, core: EmulatorCore, phi, pi):
        self._core = core
        self._stream_counts = np.zeros(3, dtype=np.int64)  # float-stream conversions: none here
        self.phi = np.array(phi, dtype=np.int64)
        self.pi = np.array(pi, dtype=np.int64)
        self.counters = _counters()

    def run(self, forcing) -> np.ndarray:
        """Consume the next chunk; return the positions after each of its steps (B, K, P)."""
        forcing = np.ascontiguousarray(forcing, dtype=np.int64)
        positions = np.empty_like(forcing)
        self.phi, self.pi, counters = self._core._bank_forward(forcing, self.phi, self.pi, positions,
                                                               self._stream_counts)
        self.counters += counters
        return positions


class EchoStream:
    """The ±ε echo pair of ``core`` from the forward's end state (phi, pi) (B, P), not flipped, fed
    (forcing, nudges) chunks (B, K, P) in reverse time order; nudges are the +ε codes q."""

    def __init__(self, core: EmulatorCore, phi, pi):
        self._core = core
        self._conversion = core._conversion()  # unused on code streams
        self._stream_counts = np.zeros(3, dtype=np.int64)  # float-stream conversions: none here
        phi, pi = np.asarray(phi, dtype=np.int64), np.asarray(pi, dtype=np.int64)
        self._unit_scale = np.ones(phi.shape[1])  # the observable stays in codes
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
        self._core._bank_echo(forcing, nudges, self._phi, self._pi, self.accumulators, observable, self.counters,
                              self._conversion, self._unit_scale, self._stream_counts)
        return observable

    @property
    def phi(self) -> np.ndarray:
        """Positions of the pair, (2, B, P), index 0 the +ε echo."""
        return np.moveaxis(self._phi, 1, 0).copy()

    @property
    def pi(self) -> np.ndarray:
        return np.moveaxis(self._pi, 1, 0).copy()


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernels the streams run, for both bank kinds, so that
    a board answers its first FORWARD or ECHO in milliseconds rather than after a compile that can
    outlast a host's timeout."""
    ones = np.ones(2)
    for kind in ("linear", "nonlinear"):
        core = EmulatorCore()
        core.load(OscillatorParams(kind, a=ones, delta=0.5 * ones, w=ones, b=0 * ones, c=0.5 * ones))
        codes = np.zeros((1, 2, 2), dtype=np.int64)
        forward = ForwardStream(core, codes[:, 0], codes[:, 0])
        forward.run(codes)
        EchoStream(core, forward.phi, forward.pi).run(codes, codes)
