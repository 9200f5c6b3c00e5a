"""Hamiltonian recurrent units (HRUs) as torch modules, trained by BPTT or by RHEL.

An HRU is input map B → oscillator bank → readout C, plus a skip D⊙u (DESIGN §2). The oscillator bank
runs in the float64 core (core.FloatCore); its backward is either BPTT (stored trajectory, discrete
adjoint) or RHEL (final state only, two nudged echoes). B, C and D are ordinary torch layers around
the bank: RHEL returns ∂L/∂(Bu), and B, u get their gradients through Bu by autograd — the same
numbers as RHEL's ∇_B H estimator, since H is linear in Bu.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import nn

from .core import PARAM_NAMES, SLOTS, FloatCore, OscillatorParams, echo_stream, in_slots, retrace
from .heap import return_large_buffers

LEARNING_RULES = ("bptt", "rhel")
# Relative distance between the echoes' mean end state and the start state above which the echo did
# not retrace the forward path (chaotic dynamics, or an ε² bias from an outsized nudge): RHEL's
# gradient is then unreliable.
RETRACE_WARN = 1e-3


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    """A numpy view of a float32/float64 tensor (the core widens streams itself)."""
    return tensor.detach().cpu().numpy()


def _core(kind: str, table: torch.Tensor) -> FloatCore:
    return FloatCore(OscillatorParams.from_table(kind, _numpy(table)))


def _grad_table(grad_params: dict, like: torch.Tensor) -> torch.Tensor:
    """Sum the per-sample parameter gradients over the batch, in the table layout."""
    return torch.from_numpy(np.stack([grad_params[n].sum(axis=0) for n in PARAM_NAMES])).to(like)


class EchoMonitor:
    """Records how well the last RHEL echoes retraced the forward path."""

    def __init__(self):
        self.retrace_error = float("nan")

    def record(self, final_state, phi_end, pi_end) -> None:
        """The echo pair's mean end state (the forward started at rest, so it should be 0) relative to
        the larger of the forward's end state and the pair's half-difference (the nudges' response):
        a bank whose state stays at 0 still gets a finite, meaningful number."""
        phis, pis = final_state
        drift = max(np.abs(phis.mean(axis=0)).max(), np.abs(pis.mean(axis=0)).max())
        response = max(np.abs(phis[0] - phis[1]).max(), np.abs(pis[0] - pis[1]).max()) / 2
        scale = max(np.abs(phi_end).max(), np.abs(pi_end).max(), response, 1e-300)
        self.retrace_error = float(drift / scale)
        if self.retrace_error > RETRACE_WARN:
            warnings.warn(
                f"RHEL echo did not retrace the forward path (relative error {self.retrace_error:.2e}): "
                "either the dynamics are chaotic at this step size or the nudge ε·∂L/∂y dwarfs the "
                "state, and the gradient is unreliable; reduce the step size or ε, or train this "
                "layer with learning='bptt'",
                RuntimeWarning, stacklevel=2)


class Forcing:
    """The bank's forcing f = B u as a (B, L, lanes) stream that is computed a chunk at a time when
    sliced along time, so the RHEL passes never hold a second sequence-sized tensor."""

    def __init__(self, u: torch.Tensor, input_map: torch.Tensor):
        self.u, self.input_map = u.detach(), input_map.detach()
        self.shape = (*u.shape[:2], input_map.shape[0])
        self.dtype = _numpy(u[:0, :0]).dtype

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, tuple) and len(index) == 2 and index[0] == slice(None) and isinstance(index[1], slice):
            return _numpy(self.steps(index[1]))
        with torch.no_grad():
            return _numpy(self.u[index] @ self.input_map.T)

    def steps(self, s: slice) -> torch.Tensor:
        """f[:, s], a batch row at a time on the kernels' threads (the same products whatever their number)."""
        start, stop, _ = s.indices(self.shape[1])
        out = self.u.new_empty(self.shape[0], max(0, stop - start), self.shape[2])
        in_slots(self.shape[0], lambda slot, _, b: torch.mm(self.u[b, start:stop], self.input_map.T, out=out[b]))
        return out

    def __array__(self, dtype=None, copy=None):
        """The whole stream, for cores that take arrays."""
        return np.asarray(self[:], dtype=dtype)


class RHELBank(torch.autograd.Function):
    """Input map and oscillator bank whose backward is RHEL, on any HamiltonianCore.

    Keeps the input u, the parameters and the bank's final state — no trajectory. Forward: load the
    bank's parameters into the core and run core.forward from rest. Backward: load them again
    (another bank may share the core) and run the ±ε echoes from the kept state, turning each
    chunk's ∂L/∂f into ∂L/∂u and ∂L/∂B as it arrives. These are the calls a device executes, so host
    training and hardware-in-the-loop training differ only in the core.
    """

    @staticmethod
    def forward(ctx, u, input_map, table, kind, epsilon, monitor, core):
        core.load(OscillatorParams.from_table(kind, _numpy(table)))
        zeros = np.zeros((u.shape[0], input_map.shape[0]))
        positions, phi, pi = core.forward(Forcing(u, input_map), zeros, zeros)
        ctx.save_for_backward(u, input_map, table, torch.from_numpy(phi), torch.from_numpy(pi))
        ctx.kind, ctx.epsilon, ctx.monitor, ctx.core = kind, epsilon, monitor, core
        return torch.from_numpy(np.asarray(positions)).to(u.dtype)

    @staticmethod
    def backward(ctx, grad_positions):
        u, input_map, table, phi, pi = ctx.saved_tensors
        u, input_map = u.detach(), input_map.detach()  # the rows' products run on other threads, where grad mode is on
        grad_u = torch.empty_like(u)
        grad_map = input_map_slots(input_map, len(u))
        ctx.core.load(OscillatorParams.from_table(ctx.kind, _numpy(table)))
        echo = echo_stream(ctx.core, Forcing(u, input_map), phi.numpy(), pi.numpy(), _numpy(grad_positions),
                           ctx.epsilon, through_input_map(u, input_map, grad_u, grad_map))
        ctx.monitor.record(echo.final_state, phi.numpy(), pi.numpy())
        return grad_u, grad_map.sum(0), _grad_table(echo.grad_params, table), None, None, None, None


def input_map_slots(input_map: torch.Tensor, batch: int) -> torch.Tensor:
    """∂L/∂B's accumulators, one per slot of core.in_slots."""
    return input_map.new_zeros(min(SLOTS, batch), *input_map.shape)


def through_input_map(u: torch.Tensor, input_map: torch.Tensor, grad_u: torch.Tensor, grad_map: torch.Tensor,
                      add: bool = False):
    """An echo's sink: each chunk's ∂L/∂f through f = B u, into ∂L/∂u (written, or with `add` added to
    what another layer wrote there) and ∂L/∂B's slots, a batch row at a time on the kernels' threads."""

    def sink(s, grad_forcing):
        grad_forcing = torch.from_numpy(np.asarray(grad_forcing)).to(u.dtype)

        def row(slot, _, b):
            if add:
                grad_u[b, s] += grad_forcing[b] @ input_map
            else:
                torch.mm(grad_forcing[b], input_map, out=grad_u[b, s])
            grad_map[slot].addmm_(grad_forcing[b].T, u[b, s])

        in_slots(len(u), row)

    return sink


class BPTTBank(torch.autograd.Function):
    """Input map and oscillator bank whose backward is BPTT: stores the trajectory, runs the adjoint."""

    @staticmethod
    def forward(ctx, u, input_map, table, kind):
        forcing = Forcing(u, input_map)[:]
        zeros = np.zeros((forcing.shape[0], forcing.shape[2]))
        positions, momenta = _core(kind, table).trajectory(forcing, zeros, zeros)
        positions, momenta = torch.from_numpy(positions), torch.from_numpy(momenta)
        ctx.save_for_backward(u, input_map, table, positions, momenta)
        ctx.kind = kind
        return positions

    @staticmethod
    def backward(ctx, grad_positions):
        u, input_map, table, positions, momenta = ctx.saved_tensors
        forcing = Forcing(u, input_map)[:]
        zeros = np.zeros((forcing.shape[0], forcing.shape[2]))
        grad_forcing, grad_params = _core(ctx.kind, table).adjoint(
            forcing, zeros, zeros, positions.numpy(), momenta.numpy(), _numpy(grad_positions))
        grad_forcing = torch.from_numpy(grad_forcing)
        grad_map = grad_forcing.reshape(-1, grad_forcing.shape[-1]).T @ u.reshape(-1, u.shape[-1])
        return grad_forcing @ input_map, grad_map, _grad_table(grad_params, table), None


class HRU(nn.Module):
    """Shared machinery of the two HRU kinds: learning rule, oscillator bank call, skip D.

    Building one sets glibc's mmap threshold for the process, so that the sequence-sized tensors a
    training step frees go back to the OS (heap.py).
    """

    kind: str

    def __init__(self, input_size: int, state_size: int, learning: str, epsilon: float):
        super().__init__()
        return_large_buffers()
        self.input_size, self.state_size = input_size, state_size
        self.learning = learning
        self.epsilon = epsilon
        self.monitor = EchoMonitor()
        self.core = None  # a HamiltonianCore to run the bank on (RHEL), else the float64 core
        self.D = nn.Parameter(torch.randn(input_size))

    @property
    def learning(self) -> str:
        return self._learning

    @learning.setter
    def learning(self, rule: str) -> None:
        if rule not in LEARNING_RULES:
            raise ValueError(f"learning must be one of {LEARNING_RULES}, got {rule!r}")
        self._learning = rule

    def oscillator_table(self) -> torch.Tensor:
        """(5, lanes) parameters of the oscillator bank, in core.PARAM_NAMES order."""
        raise NotImplementedError

    def input_map(self) -> torch.Tensor:
        """B as a (lanes, input_size) matrix: the forcing is f = u Bᵀ."""
        raise NotImplementedError

    def readout_matrix(self) -> torch.Tensor:
        """C as an (input_size, lanes) matrix: the readout is positions Cᵀ."""
        raise NotImplementedError

    def readout(self, positions: torch.Tensor) -> torch.Tensor:
        return positions @ self.readout_matrix().T

    def forcing(self, u: torch.Tensor) -> torch.Tensor:
        return u @ self.input_map().T

    def on_float_core_rhel(self) -> bool:
        """Whether the bank runs RHEL on the host's float core (no device core set): then a block runs
        its bank and glue as one function (block.RHELBlock) that never stores the positions."""
        return self.learning == "rhel" and self.core is None

    def bank(self, u: torch.Tensor) -> torch.Tensor:
        """Positions of the oscillator bank driven by f = B u, u of shape (batch, length, input).

        On ``self.core`` when one is set (its backward is then RHEL on that core), else on the
        float64 core with the backward ``learning`` names.
        """
        if self.learning == "rhel" or self.core is not None:
            return RHELBank.apply(u, self.input_map(), self.oscillator_table(), self.kind,
                                  self.epsilon, self.monitor, self.core or FloatCore())
        return BPTTBank.apply(u, self.input_map(), self.oscillator_table(), self.kind)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if u.dim() != 3 or u.shape[-1] != self.input_size:
            raise ValueError(f"{type(self).__name__} expects (batch, length, {self.input_size}), "
                             f"got {tuple(u.shape)}")
        return self.output(self.bank(u), u)

    def output(self, positions: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Readout of the bank's positions plus the skip D⊙u."""
        return self.readout(positions) + self.D * u

    def core_params(self) -> OscillatorParams:
        """The oscillator bank's current parameters, for another core (emulator, device)."""
        return OscillatorParams.from_table(self.kind, _numpy(self.oscillator_table()))

    @torch.no_grad()
    def retrace_error(self, u: torch.Tensor) -> float:
        """Run forward then the un-nudged echo; relative distance of its end from the start (zero).

        Near 1e-16·steps on a regular trajectory; O(1) where the dynamics are chaotic and no float
        integrator retraces them.
        """
        forcing = _numpy(self.forcing(u))
        core = FloatCore(self.core_params())
        zeros = np.zeros((forcing.shape[0], forcing.shape[2]))
        positions, phi, pi = core.forward(forcing, zeros, zeros)
        phi0, pi0 = retrace(core, forcing, phi, pi)
        scale = max(np.abs(positions).max(), np.abs(pi).max(), 1e-300)
        return float(max(np.abs(phi0).max(), np.abs(pi0).max()) / scale)


def _log_uniform(size: int, low: float, high: float) -> torch.Tensor:
    if not 0 < low <= high:
        raise ValueError(f"stiffness_range must satisfy 0 < low ≤ high, got ({low}, {high})")
    return torch.exp(torch.empty(size).uniform_(math.log(low), math.log(high)))


def _uniform(shape, bound: float) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


class LinHRU(HRU):
    """Linear HRU (LinOSS-like): V = ½ϕᵀAϕ − ϕᵀBu, A = relu(raw) ≥ 0, δ = sigmoid(raw) per oscillator.

    With complex_state, B and C are complex and A, δ real: the real and imaginary parts of the state are
    then two independent real banks driven by Re(Bu) and Im(Bu), and the output is Re(Cϕ) + D⊙u.
    A starts uniform in [0, 1) (the paper's LinOSS initialisation), or log-uniform in stiffness_range
    = (low, high): slow oscillators (A ≪ 1) are what remembers over thousands of steps.
    """

    kind = "linear"

    def __init__(self, input_size: int, state_size: int, *, learning: str = "rhel",
                 epsilon: float = 0.1, complex_state: bool = False, train_step: bool = True,
                 stiffness_range: tuple[float, float] | None = None):
        super().__init__(input_size, state_size, learning, epsilon)
        self.complex_state = complex_state
        parts = 2 if complex_state else 1
        self.A_raw = nn.Parameter(torch.rand(state_size) if stiffness_range is None
                                  else _log_uniform(state_size, *stiffness_range))
        step_raw = torch.rand(state_size)
        if train_step:
            self.step_raw = nn.Parameter(step_raw)
        else:
            self.register_buffer("step_raw", step_raw)
        self.B = _uniform((parts, state_size, input_size), 1 / math.sqrt(input_size))
        self.C = _uniform((parts, input_size, state_size), 1 / math.sqrt(state_size))

    def oscillator_table(self) -> torch.Tensor:
        a = torch.relu(self.A_raw)
        table = torch.stack([a, torch.sigmoid(self.step_raw), torch.ones_like(a),
                             torch.zeros_like(a), torch.zeros_like(a)])
        return table.repeat(1, self.B.shape[0])

    def input_map(self):
        return self.B.reshape(-1, self.input_size)

    def readout_matrix(self):
        """[C_re, −C_im] with complex_state (Re(Cϕ) of the two real banks), else C."""
        return torch.cat([self.C[0], -self.C[1]], dim=1) if self.complex_state else self.C[0]


class NonlinHRU(HRU):
    """Nonlinear HRU: V = (α/2)‖ϕ‖² + Σᵢ cᵢ log cosh(Wᵢϕᵢ + (Bu)ᵢ + bᵢ)/Wᵢ, c = sigmoid(raw).

    The paper's step size δ = 1e-4 is the default; with train_step it is learned as exp(log δ).
    """

    kind = "nonlinear"

    def __init__(self, input_size: int, state_size: int, *, learning: str = "rhel",
                 epsilon: float = 0.1, step: float = 1e-4, train_step: bool = False):
        super().__init__(input_size, state_size, learning, epsilon)
        self.W = nn.Parameter(torch.empty(state_size).uniform_(0.5, 1.0))
        self.b = nn.Parameter(torch.zeros(state_size))
        self.c_raw = _uniform(state_size, 1.0)
        self.alpha = nn.Parameter(torch.empty(()).uniform_(0.1, 1.0))
        log_step = torch.full((state_size,), math.log(step))
        if train_step:
            self.log_step = nn.Parameter(log_step)
        else:
            self.register_buffer("log_step", log_step)
        self.B = _uniform((state_size, input_size), 1 / math.sqrt(input_size))
        self.C = _uniform((input_size, state_size), 1 / math.sqrt(state_size))

    def oscillator_table(self) -> torch.Tensor:
        return torch.stack([self.alpha.expand(self.state_size), torch.exp(self.log_step), self.W,
                            self.b, torch.sigmoid(self.c_raw)])

    def input_map(self):
        return self.B

    def readout_matrix(self):
        return self.C
