"""The fixed-point emulator core: the HamiltonianCore contract (DESIGN §1) on integer arithmetic.

The float API (``forward``, ``echo``) quantises its float64 inputs, runs the integer kernels and
converts back; the integer API (``forward_int``, ``echo_int``) is what the FPGA core does, bit for bit.
Host-side steps, normative like the kernels (Q = quantisation of ``fixed``, S = state_frac,
U = unit_frac):

Parameters
    Each parameter is quantised in its own format (``FormatConfig.param``); ``load`` counts saturations
    (quantity "param"). The gradients are scaled with the dequantised codes, the values the core runs.

Nudges and ε
    q = Q_S(ε_used · g), g = ∂L/∂positions, with ε_used = max(ε, min_nudge_lsbs · 2^−S / max|g|).
    The caller's ε is kept when its largest nudge is at least ``min_nudge_lsbs`` state LSBs (2^−6 in
    state units by default: 1024 LSBs at Q8.16), so that the nonlinear bank's O(ε²) bias is the float
    core's at the same ε; otherwise ε is raised until it is, since a smaller nudge drowns in the echo's
    rounding (about one LSB per shear, on each echo independently). The estimator divides by the ε
    actually used, which undoes the rescale exactly (for the linear bank the gradient does not depend
    on ε at all). ``epsilon_used`` reports it. The hardware receives q; the −ε echo uses −q.

Gradients from the accumulators (κ = −1/(2ε_used); per oscillator; MM, PP, FM, T, TM, LC and the
per-step forcing observable o_k are the integer sums of ``kernels`` read as reals, code·2^−frac)
    a:        κ·δ·MM/2
    forcing:  κ·δ·(−o_k)                           linear;   κ·δ·(c/w)·o_k              nonlinear
    b:        0                                    linear;   κ·δ·(c/w)·T
    c:        0                                    linear;   κ·δ·LC/w
    w:        0                                    linear;   κ·δ·c·(TM/w − LC/w²)
    δ:        κ·(a·MM/2 − FM + PP/4)               linear;   κ·(a·MM/2 + (c/w)·LC + PP/4)
    (∂V/∂b = ∂V/∂f = c·T(z)/w for V = c·G(z)/w; δ enters through H_δ = δ(π²/2 + V), whose half-step
    derivative is V(m) + (π² + π'²)/4.) These products and quotients of per-oscillator constants are
    the host's float64 arithmetic, once per call; everything along the time axis is integer.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from echoforge.models.core import PARAM_NAMES, EchoResult, OscillatorParams

from . import kernels
from .fixed import FormatConfig, count_outside
from .tables import FixedFunctions

QUANTITIES = ("param", "input", "nudge") + kernels.KERNEL_COUNTERS


@dataclass(frozen=True)
class SaturationReport:
    """How many values saturated in one run, per quantity (QUANTITIES).

    param: parameter quantisation; input: forcing and initial state quantisation; nudge: nudge
    quantisation; state: ϕ/π updates (these break exact reversibility); force: ∂V/∂ϕ; preact: the
    tanh input z; accumulator: the echo's observable sums.
    """

    counts: dict[str, int]

    @property
    def saturated(self) -> bool:
        return any(self.counts.values())

    @property
    def reversible(self) -> bool:
        """Exactly reversible: no state update saturated (force/preact clamps keep the shears exact)."""
        return self.counts["state"] == 0

    def __str__(self) -> str:
        active = ", ".join(f"{name}={n}" for name, n in self.counts.items() if n)
        return f"saturated: {active}" if active else "no saturation"


@dataclass(frozen=True)
class ForwardInt:
    """Integer forward pass: positions (B, L, P), end state phi, pi (B, P), all int64 codes (frac S)."""

    positions: np.ndarray
    phi: np.ndarray
    pi: np.ndarray
    saturation: SaturationReport


@dataclass(frozen=True)
class EchoInt:
    """Integer echo pair: accumulators {kernels.ACCUMULATORS name: (B, P)}, per-step forcing observable
    differences (B, L, P), end states phi, pi (2, B, P) (index 0 the +ε echo)."""

    accumulators: dict[str, np.ndarray]
    forcing_observable: np.ndarray
    phi: np.ndarray
    pi: np.ndarray
    saturation: SaturationReport


class EmulatorCore:
    """Bit-accurate fixed-point oscillator bank implementing the HamiltonianCore contract."""

    def __init__(self, config: FormatConfig | None = None):
        self.config = config or FormatConfig()
        self.functions = FixedFunctions(self.config)
        self.params: OscillatorParams | None = None  # the dequantised codes the core runs
        self.param_codes: np.ndarray | None = None   # (5, P) int64 in PARAM_NAMES order
        self.stats: SaturationReport | None = None   # of the last run
        self.epsilon_used: float | None = None       # of the last echo
        self._param_saturation = 0

    # ---- contract --------------------------------------------------------------------------------

    def load(self, params: OscillatorParams) -> None:
        """Quantise the parameters into their formats (saturations are reported with every run)."""
        codes, saturated = [], 0
        for name in PARAM_NAMES:
            code, n = self.config.param(name).quantize(getattr(params, name))
            codes.append(code)
            saturated += n
        if params.kind == "nonlinear" and not codes[PARAM_NAMES.index("w")].all():
            raise ValueError("the nonlinear bank needs w ≠ 0 in its format (V = c·log cosh(z)/w)")
        self.param_codes = np.stack(codes)
        self._param_saturation = saturated
        self.params = OscillatorParams(params.kind, **{
            name: self.config.param(name).dequantize(code) for name, code in zip(PARAM_NAMES, codes)})

    def forward(self, forcing, phi, pi):
        """Float64 in and out; the returned end state dequantises the integer state exactly."""
        (forcing, phi, pi), input_sat = self._quantize_inputs(forcing, phi, pi)
        run = self._forward(forcing, phi, pi, input_sat)
        state = self.config.state
        return state.dequantize(run.positions), state.dequantize(run.phi), state.dequantize(run.pi)

    def echo(self, forcing, phi, pi, nudges, epsilon) -> EchoResult:
        (forcing, phi, pi), input_sat = self._quantize_inputs(forcing, phi, pi)
        codes, nudge_sat = self.quantize_nudges(nudges, epsilon)
        run = self._echo(forcing, phi, pi, codes, input_sat, nudge_sat)
        state = self.config.state
        grad_forcing, grad_params = self._gradients(run, self.epsilon_used)
        return EchoResult(grad_forcing, grad_params, (state.dequantize(run.phi), state.dequantize(run.pi)))

    # ---- integer API -----------------------------------------------------------------------------

    def forward_int(self, forcing, phi, pi) -> ForwardInt:
        """The forward pass on integer codes (state format), as the hardware runs it."""
        return self._forward(*self._check_codes(forcing, phi, pi), input_sat=0)

    def echo_int(self, forcing, phi, pi, nudges) -> EchoInt:
        """The ±ε echo pair on integer codes from the forward's end state (phi, pi, not flipped);
        ``nudges`` are the +ε nudge codes q (B, L, P)."""
        forcing, phi, pi = self._check_codes(forcing, phi, pi)
        (nudges,) = self._check_codes(nudges)
        return self._echo(forcing, phi, pi, nudges, input_sat=0, nudge_sat=0)

    def quantize_nudges(self, nudges, epsilon: float) -> tuple[np.ndarray, int]:
        """q = Q_S(ε_used·g) (see module docstring); sets ``epsilon_used``. Returns (q, saturated)."""
        if not epsilon > 0:
            raise ValueError(f"epsilon must be positive, got {epsilon}")
        nudges = np.ascontiguousarray(nudges, dtype=np.float64)
        largest = max(float(nudges.max(initial=0.0)), -float(nudges.min(initial=0.0)))
        floor = self.config.min_nudge_lsbs * self.config.state.lsb / largest if largest > 0 else 0.0
        self.epsilon_used = max(float(epsilon), floor)
        return self.config.state.quantize(nudges, prescale=self.epsilon_used)

    # ---- internals -------------------------------------------------------------------------------

    def _kernel_args(self):
        if self.param_codes is None:
            raise RuntimeError("no parameters loaded into the emulator; call load() first")
        table = self.functions.tanh_table
        return (self.param_codes, self.params.kind == "nonlinear",
                kernels.product_shifts(self.config, table.seg_shift), self.config.state.limit, table.values,
                table.integral)

    def _forward(self, forcing, phi, pi, input_sat) -> ForwardInt:
        positions = np.empty_like(forcing)
        phi, pi, counters = kernels.forward(forcing, phi, pi, *self._kernel_args(), positions)
        report = self._report(counters, input=input_sat)
        return ForwardInt(positions, phi, pi, report)

    def _echo(self, forcing, phi, pi, nudges, input_sat, nudge_sat) -> EchoInt:
        check_echo_shapes(forcing, nudges)
        forcing_obs = np.empty_like(forcing)
        # The pair as (B, 2, P): the +ε echo at index 0, both from the flipped end state.
        pair_phi = np.repeat(phi[:, None], 2, axis=1)
        pair_pi = np.repeat(-pi[:, None], 2, axis=1)
        acc = np.zeros((forcing.shape[0], len(kernels.ACCUMULATORS), forcing.shape[2]), dtype=np.int64)
        counters = np.zeros(4, dtype=np.int64)
        kernels.echo_chunk(forcing, nudges, pair_phi, pair_pi, acc, *self._kernel_args(), forcing_obs, counters)
        report = self._report(counters, input=input_sat, nudge=nudge_sat)
        return EchoInt(dict(zip(kernels.ACCUMULATORS, np.moveaxis(acc, 1, 0))), forcing_obs,
                       np.moveaxis(pair_phi, 1, 0).copy(), np.moveaxis(pair_pi, 1, 0).copy(), report)

    def _report(self, counters, **host_counts) -> SaturationReport:
        counts = {"param": self._param_saturation, **host_counts}
        counts.update(zip(kernels.KERNEL_COUNTERS, (int(n) for n in counters)))
        self.stats = SaturationReport({name: int(counts.get(name, 0)) for name in QUANTITIES})
        if self.stats.saturated:
            warnings.warn(f"fixed-point emulator {self.stats}"
                          + ("" if self.stats.reversible else "; the run is no longer exactly reversible"),
                          RuntimeWarning, stacklevel=4)
        return self.stats

    def _quantize_inputs(self, forcing, phi, pi):
        self._check_shapes(np.shape(forcing), np.shape(phi), np.shape(pi))
        quantized = [self.config.state.quantize(x) for x in (forcing, phi, pi)]
        return [codes for codes, _ in quantized], sum(n for _, n in quantized)

    def _check_codes(self, *arrays):
        arrays = [np.ascontiguousarray(x, dtype=np.int64) for x in arrays]
        if len(arrays) == 3:
            self._check_shapes(*(x.shape for x in arrays))
        lim = self.config.state.limit
        if any(count_outside(x, lim) for x in arrays):
            raise ValueError(f"integer codes must lie in ±{lim} (the {self.config.state} word)")
        return arrays

    def _check_shapes(self, forcing, phi, pi):
        if self.param_codes is None:
            raise RuntimeError("no parameters loaded into the emulator; call load() first")
        size = self.param_codes.shape[1]
        if len(forcing) != 3 or forcing[2] != size or phi != (forcing[0], size) or pi != phi:
            raise ValueError(f"expected forcing (B, L, {size}) and phi, pi (B, {size}); "
                             f"got {forcing}, {phi}, {pi}")

    def _gradients(self, run: EchoInt, epsilon: float):
        """The estimators of the module docstring, from the integer accumulators."""
        cfg, p = self.config, self.params
        kappa = -1.0 / (2.0 * epsilon)
        state2 = 2.0 ** (-2 * cfg.state_frac)
        unit = 2.0 ** -cfg.unit_frac
        acc = run.accumulators
        mm, pp = acc["mm"] * state2, acc["pp"] * state2
        grads = {"a": kappa * p.delta * mm / 2}
        if p.kind == "linear":
            forcing_scale = kappa * p.delta * -cfg.state.lsb
            grads.update({name: np.zeros_like(mm) for name in ("w", "b", "c")},
                         delta=kappa * (p.a * mm / 2 - acc["fm"] * state2 + pp / 4))
        else:
            t, lc = acc["t"] * unit, acc["lc"] * unit
            tm = acc["tm"] * unit * cfg.state.lsb
            gain = p.c / p.w
            forcing_scale = kappa * p.delta * gain * unit
            grads.update(b=kappa * p.delta * gain * t, c=kappa * p.delta * lc / p.w,
                         w=kappa * p.delta * p.c * (tm / p.w - lc / p.w ** 2),
                         delta=kappa * (p.a * mm / 2 + gain * lc + pp / 4))
        grad_forcing = run.forcing_observable * forcing_scale  # one pass over (B, L, P)
        return grad_forcing, {name: grads[name] for name in PARAM_NAMES}


def check_echo_shapes(forcing, nudges) -> None:
    """The echo needs one nudge per forcing value, and at least one step."""
    if nudges.shape != forcing.shape or forcing.shape[1] == 0:
        raise ValueError(f"the echo needs nudges shaped like the forcing, at least one step long; "
                         f"got nudges {nudges.shape}, forcing {forcing.shape}")
