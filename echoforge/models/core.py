"""The Hamiltonian core contract (DESIGN §1) and its float64 reference implementation.

Everything that runs HRU dynamics — this float core, the fixed-point emulator, a board behind the
runtime — implements `HamiltonianCore`: load the oscillator bank's parameters, run a forward pass over a
forcing stream, and run the two nudged echoes RHEL needs. The forcing is the bank's input
``f = B u`` (the digital input map B stays on the host), one value per oscillator and time step.

Per-oscillator potential shared by both HRU kinds (``m`` is a position, ``f`` the forcing)::

    linear:    V(m) = a m²/2 − m f
    nonlinear: V(m) = a m²/2 + c log cosh(w m + f + b) / w

The integrator is the drift-kick-drift leapfrog with the kick at the mid position; the echo and
estimators follow PAPER.md §2 (nudge added to the momentum after each full step, observables at the
half step, overall factor −δ/2ε; the step size through H_δ = δ(π²/2 + V)).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import numpy as np

from . import kernels

KINDS = ("linear", "nonlinear")
# Time steps per kernel call: streams are produced and consumed a chunk at a time, so the working
# memory of a pass does not grow with the sequence (only its inputs and outputs do).
CHUNK = 1024
PARAM_NAMES = ("a", "delta", "w", "b", "c")


@dataclass(frozen=True)
class OscillatorParams:
    """Parameters of one oscillator bank, each a float64 array of shape (P,).

    ``a`` is the stiffness (A of the linear HRU, the shared α broadcast per oscillator for the
    nonlinear one); ``w``, ``b``, ``c`` are only used by the nonlinear HRU.
    """

    kind: str
    a: np.ndarray
    delta: np.ndarray
    w: np.ndarray = field(default=None)
    b: np.ndarray = field(default=None)
    c: np.ndarray = field(default=None)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown oscillator kind {self.kind!r}; expected one of {KINDS}")
        size = np.shape(self.a)[0]
        defaults = {"w": 1.0, "b": 0.0, "c": 0.0}
        for name in PARAM_NAMES:
            value = getattr(self, name)
            value = np.full(size, defaults[name]) if value is None else value
            object.__setattr__(self, name, np.ascontiguousarray(value, dtype=np.float64))
            if getattr(self, name).shape != (size,):
                raise ValueError(f"parameter {name} has shape {getattr(self, name).shape}, expected ({size},)")

    @property
    def size(self) -> int:
        return self.a.shape[0]

    @classmethod
    def from_table(cls, kind: str, table) -> "OscillatorParams":
        """Build from a (5, P) table in PARAM_NAMES order."""
        return cls(kind, **dict(zip(PARAM_NAMES, np.asarray(table, dtype=np.float64))))

    def table(self) -> np.ndarray:
        """(5, P) array in PARAM_NAMES order, the layout the compiled kernels take."""
        return np.stack([getattr(self, name) for name in PARAM_NAMES])


@dataclass
class EchoResult:
    """What the two echoes return: gradients, and the echoes' final states (for the retrace check).

    ``grad_forcing`` has shape (B, L, P) at forward time indices; ``grad_params`` maps each name of
    PARAM_NAMES to a (B, P) array (summed over time, not over the batch); ``final_state`` is a pair
    (phi, pi) of arrays (2, B, P), index 0 the +ε echo and 1 the −ε echo.
    """

    grad_forcing: np.ndarray
    grad_params: dict[str, np.ndarray]
    final_state: tuple[np.ndarray, np.ndarray]


class HamiltonianCore(Protocol):
    """The contract every executor of HRU dynamics implements."""

    def load(self, params: OscillatorParams) -> None:
        """Set the oscillator bank's parameters."""

    def forward(self, forcing: np.ndarray, phi: np.ndarray, pi: np.ndarray):
        """Integrate from (phi, pi) (each (B, P)) over forcing (B, L, P).

        Returns (positions (B, L, P) — the position after consuming each input — , final phi, final pi).
        """

    def echo(self, forcing: np.ndarray, phi: np.ndarray, pi: np.ndarray,
             nudges: np.ndarray, epsilon: float) -> EchoResult:
        """Run the ±ε echoes from the forward pass's final state (phi, pi).

        ``nudges`` (B, L, P) is ∂L/∂positions at forward time indices.
        """


def _kind_code(kind: str) -> int:
    return kernels.LINEAR if kind == "linear" else kernels.NONLINEAR


def _f64(array) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float64)


def _stream_dtype(stream) -> np.dtype:
    return stream.dtype if stream.dtype in (np.float32, np.float64) else np.dtype(np.float64)


def _stream(array) -> np.ndarray:
    """A (B, L, P) stream as given if float32/float64 (the kernels widen per element), no copy."""
    array = np.ascontiguousarray(array)
    return array if array.dtype in (np.float32, np.float64) else array.astype(np.float64)


def time_chunks(length: int, size: int | None = None) -> list[slice]:
    size = size or CHUNK
    return [slice(start, min(start + size, length)) for start in range(0, length, size)]


# Accumulators of a sum split over threads (in_slots): the most threads such a pass runs on.
SLOTS = 8
# Threads the float core runs its kernels on: None is every CPU this process may use.
_threads: int | None = None
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
NO_MOMENTA = np.empty((0, 0, 0))


def set_num_threads(count: int | None) -> None:
    """How many threads FloatCore's kernels use (None: every CPU this process may use).

    The batch is split into that many groups of rows, one per thread; rows are independent, so the
    results are the same bits on any number of threads.
    """
    global _threads
    if count is not None and count < 1:
        raise ValueError(f"the thread count must be ≥ 1, got {count}")
    _threads = count


def get_num_threads() -> int:
    return _threads or available_cpus()


def available_cpus() -> int:
    """The CPUs this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def share_cpus(processes: int) -> None:
    """Unless a thread count was set: run the kernels on this process's share of the CPUs, when
    `processes` processes (the ranks on this machine) run them side by side — each taking every CPU
    would oversubscribe the cores and make every collective wait on a descheduled thread."""
    if _threads is None:
        set_num_threads(max(1, available_cpus() // max(1, processes)))


def row_groups(batch: int, groups: int) -> list[slice]:
    """The batch rows split into at most `groups` contiguous runs of near-equal length."""
    groups = max(1, min(groups, batch))
    edges = [batch * i // groups for i in range(groups + 1)]
    return [slice(start, stop) for start, stop in zip(edges, edges[1:])]


def in_threads(calls: list) -> list:
    """Run the argument-free callables (kernels, which release the GIL): the first on this thread,
    the others on a pool; their results in order."""
    global _pool, _pool_size
    if len(calls) == 1:
        return [calls[0]()]
    if _pool_size < len(calls) - 1:
        _pool, _pool_size = ThreadPoolExecutor(len(calls) - 1, thread_name_prefix="echoforge-core"), len(calls) - 1
    others = [_pool.submit(call) for call in calls[1:]]
    return [calls[0](), *(future.result() for future in others)]


def in_slots(count: int, task, scratch=lambda: None) -> None:
    """task(slot, scratch, i) for every i < count: item i in slot i mod SLOTS and each slot's items in
    order, the slots split over the kernels' threads, each thread with its own scratch(). A sum kept
    per slot, then added slot by slot, has the same bits on any number of threads."""
    slots = [range(slot, count, SLOTS) for slot in range(min(SLOTS, count))]
    threads = min(get_num_threads(), len(slots))

    def thread(mine):
        own = scratch()
        for slot in mine:
            for i in slots[slot]:
                task(slot, own, i)

    in_threads([partial(thread, range(t, len(slots), threads)) for t in range(threads)])


class FloatCore:
    """The float64 reference core: compiled leapfrog, echoes and (for BPTT) the discrete adjoint.

    float64 whatever the model's dtype: rounding is what breaks reversibility, and in float32 an
    ε-sized nudge vanishes below a momentum's last bit at long lengths (DESIGN §2, "Precision").
    Streams (forcing, positions, nudges, gradients) stay in the caller's dtype; the state and every
    step's arithmetic are float64.
    """

    def __init__(self, params: OscillatorParams | None = None):
        self.params = params

    def load(self, params: OscillatorParams) -> None:
        self.params = params

    def _args(self):
        if self.params is None:
            raise RuntimeError("no parameters loaded into the core; call load() first")
        return _kind_code(self.params.kind), self.params.table()

    def forward(self, forcing, phi, pi):
        """See HamiltonianCore.forward; `forcing` may be any (B, L, P) object sliceable along time."""
        kind, table = self._args()
        positions = np.empty(forcing.shape, _stream_dtype(forcing))
        groups = row_groups(forcing.shape[0], get_num_threads())
        states = [(_f64(phi[rows]), _f64(pi[rows])) for rows in groups]
        for s in time_chunks(forcing.shape[1]):
            out = positions[:, s]
            # The kernel writes a contiguous block (a strided one would not vectorise), then it is placed.
            block = out if out.flags.c_contiguous else np.empty(out.shape, out.dtype)
            chunk = _stream(forcing[:, s])
            states = in_threads([partial(kernels.forward, kind, table, chunk[rows], *state, block[rows],
                                          NO_MOMENTA, False) for rows, state in zip(groups, states)])
            if block is not out:
                out[...] = block
        return positions, np.concatenate([phi for phi, _ in states]), np.concatenate([pi for _, pi in states])

    def echo(self, forcing, phi, pi, nudges, epsilon) -> EchoResult:
        grad_forcing = np.empty(forcing.shape, _stream_dtype(forcing))
        result = self.echo_stream(forcing, phi, pi, nudges, epsilon, lambda s, grad: None, out=grad_forcing)
        result.grad_forcing = grad_forcing
        return result

    def echo_stream(self, forcing, phi, pi, nudges, epsilon, sink, out=None) -> EchoResult:
        """The echoes chunk by chunk, latest first, handing each chunk's ∂L/∂f to sink(slice, array).

        Returns the EchoResult without grad_forcing: a caller that turns ∂L/∂f into something
        smaller as it arrives never holds the whole gradient stream. With ``out`` (B, L, P), every
        chunk also lands in it, written there in place where that slice is contiguous,
        which saves a sequence-sized allocation and copy when the whole sequence is one chunk.
        """
        if not epsilon > 0:
            raise ValueError(f"epsilon must be positive, got {epsilon}")
        kind, table = self._args()
        batch, length, size = forcing.shape
        groups = row_groups(batch, get_num_threads())
        start = np.stack([_f64(phi), np.zeros((batch, size)), -_f64(pi),
                          epsilon * _f64(nudges[:, length - 1])])
        states = [np.ascontiguousarray(start[:, rows]) for rows in groups]
        accs = [np.zeros((len(PARAM_NAMES), rows.stop - rows.start, size)) for rows in groups]
        for s in reversed(time_chunks(length)):
            before = _f64(nudges[:, s.start - 1]) if s.start > 0 else np.zeros((batch, size))
            kept = None if out is None else out[:, s]
            grad = kept if kept is not None and kept.flags.c_contiguous else \
                np.empty((batch, s.stop - s.start, size), _stream_dtype(forcing))
            chunk, nudge = _stream(forcing[:, s]), _stream(nudges[:, s])
            in_threads([partial(kernels.echo_chunk, kind, table, chunk[rows], nudge[rows], before[rows],
                                 float(epsilon), state, acc, grad[rows])
                         for rows, state, acc in zip(groups, states, accs)])
            if kept is not None and grad is not kept:
                kept[...] = grad
            sink(s, grad)
        state, acc = np.concatenate(states, axis=1), np.concatenate(accs, axis=1)
        step = self.params.delta
        scale = np.array([step, np.ones_like(step), step, step, step])[:, None, :] / (-2.0 * epsilon)
        centre_phi, half_phi, centre_pi, half_pi = state
        final = (np.stack([centre_phi + half_phi, centre_phi - half_phi]),
                 np.stack([centre_pi + half_pi, centre_pi - half_pi]))
        return EchoResult(None, dict(zip(PARAM_NAMES, acc * scale)), final)

    def trajectory(self, forcing, phi, pi):
        """Forward pass that keeps (positions, momenta) for every step: what BPTT stores."""
        kind, table = self._args()
        forcing, phi, pi = _stream(forcing), _f64(phi), _f64(pi)
        positions = np.empty_like(forcing)
        momenta = np.empty_like(forcing)
        in_threads([partial(kernels.forward, kind, table, forcing[rows], phi[rows], pi[rows], positions[rows],
                             momenta[rows], True) for rows in row_groups(len(forcing), get_num_threads())])
        return positions, momenta

    def adjoint(self, forcing, phi0, pi0, positions, momenta, grad_positions):
        """BPTT gradients over a stored trajectory: (grad_forcing, {name: (B, P)})."""
        kind, table = self._args()
        forcing, phi0, pi0, grad_positions = _stream(forcing), _f64(phi0), _f64(pi0), _stream(grad_positions)
        grad_forcing = np.empty_like(forcing)
        groups = row_groups(len(forcing), get_num_threads())
        grad_params = [np.empty((len(PARAM_NAMES), rows.stop - rows.start, forcing.shape[2])) for rows in groups]
        in_threads([partial(kernels.adjoint, kind, table, forcing[rows], phi0[rows], pi0[rows], positions[rows],
                             momenta[rows], grad_positions[rows], grad_forcing[rows], grads)
                     for rows, grads in zip(groups, grad_params)])
        return grad_forcing, dict(zip(PARAM_NAMES, np.concatenate(grad_params, axis=1)))


def echo_stream(core: HamiltonianCore, forcing, phi, pi, nudges, epsilon, sink) -> EchoResult:
    """core.echo_stream where the core streams its echo chunk by chunk, else one chunk: core.echo."""
    if hasattr(core, "echo_stream"):
        return core.echo_stream(forcing, phi, pi, nudges, epsilon, sink)
    result = core.echo(np.asarray(forcing), phi, pi, nudges, epsilon)
    sink(slice(None), result.grad_forcing)
    return result


def retrace(core: HamiltonianCore, forcing, phi, pi):
    """Un-nudged echo: from the flipped final state, replay the forcing backwards.

    Returns the state the echo ends in; on a reversible integrator it is the flipped initial state.
    """
    _, phi_back, pi_back = core.forward(np.ascontiguousarray(forcing[:, ::-1]), phi, -pi)
    return phi_back, -pi_back
