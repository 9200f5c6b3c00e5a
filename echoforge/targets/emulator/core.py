"""The fixed-point emulator core: the HamiltonianCore contract (DESIGN §1) on integer arithmetic.

The float API (``forward``, ``echo``) runs the integer kernels on float streams, which they quantise
sample by sample and whose outputs they scale back as they go (one pass over each stream; the same
bits as quantising first); the integer API (``forward_int``, ``echo_int``) is what the FPGA core does,
bit for bit.
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

from . import float_lanes, kernels
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
    """Forward pass: positions (B, L, P) — int64 codes (frac S) from the integer API, values in the
    forcing's float dtype from the float API — and the end state phi, pi (B, P), int64 codes."""

    positions: np.ndarray
    phi: np.ndarray
    pi: np.ndarray
    saturation: SaturationReport


@dataclass(frozen=True)
class EchoInt:
    """Echo pair: accumulators {kernels.ACCUMULATORS name: (B, P)}, per-step forcing observable
    differences (B, L, P) — codes from the integer API, already ∂L/∂f from the float API — and end
    states phi, pi (2, B, P) (index 0 the +ε echo)."""

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
        self._lanes: np.ndarray | None = None           # float_lanes' parameters when it runs this bank

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
        shifts = self._kernel_args()[2]
        self._lanes = (float_lanes.lane_params(self.param_codes, shifts)
                       if float_lanes.applies(self.config, params.kind, self.param_codes) else None)

    def forward(self, forcing, phi, pi):
        """Floats in and out: positions in the forcing's float dtype (float32 stays float32), the end
        state as float64, which dequantises the integer state exactly."""
        forcing = _float_stream(forcing)
        (phi, pi), input_sat = self._quantize_state(forcing.shape, phi, pi)
        run = self._forward(forcing, phi, pi, input_sat)
        state = self.config.state
        return run.positions, state.dequantize(run.phi), state.dequantize(run.pi)

    def echo(self, forcing, phi, pi, nudges, epsilon) -> EchoResult:
        forcing = _float_stream(forcing)
        (phi, pi), input_sat = self._quantize_state(forcing.shape, phi, pi)
        nudges = _float_stream(nudges)
        self.epsilon_used = self._epsilon_for(nudges, epsilon)
        run = self._echo(forcing, phi, pi, nudges, input_sat, 0)
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
        nudges = _float_stream(nudges)
        self.epsilon_used = self._epsilon_for(nudges, epsilon)
        return self.config.state.quantize(nudges, prescale=self.epsilon_used)

    def _epsilon_for(self, nudges, epsilon: float) -> float:
        """ε_used: the caller's ε, raised until the largest nudge is min_nudge_lsbs state LSBs."""
        if not epsilon > 0:
            raise ValueError(f"epsilon must be positive, got {epsilon}")
        largest = max(float(nudges.max(initial=0.0)), -float(nudges.min(initial=0.0)))
        floor = self.config.min_nudge_lsbs * self.config.state.lsb / largest if largest > 0 else 0.0
        return max(float(epsilon), floor)

    # ---- internals -------------------------------------------------------------------------------

    def _kernel_args(self):
        if self.param_codes is None:
            raise RuntimeError("no parameters loaded into the emulator; call load() first")
        table = self.functions.tanh_table
        return (self.param_codes, self.params.kind == "nonlinear",
                kernels.product_shifts(self.config, table.seg_shift), self.config.state.limit, table.values,
                table.integral)

    def _conversion(self, nudge_prescale: float = 1.0) -> tuple[float, float, float]:
        """The kernels' float-stream conversion: (forcing gain, nudge gain, state LSB)."""
        gain = 2.0 ** self.config.state_frac
        return gain, nudge_prescale * gain, self.config.state.lsb

    def _forward(self, forcing, phi, pi, input_sat) -> ForwardInt:
        """The forward on a code stream (int64) or a float stream (positions then come as floats)."""
        positions = np.empty_like(forcing)
        stream_counts = np.zeros(3, dtype=np.int64)
        phi, pi, counters = self._bank_forward(forcing, phi, pi, positions, stream_counts)
        report = self._report(counters, input=input_sat + _checked(stream_counts)[kernels.INPUT_SATURATED])
        return ForwardInt(positions, phi, pi, report)

    def _bank_forward(self, forcing, phi, pi, positions, stream_counts):
        """``kernels.forward``, or for a bank ``float_lanes`` takes (set at ``load``) its float64-lane twin
        (the same bits and counts). Returns (ϕ, π, counters)."""
        params, nonlinear, shifts, lim, *tables = self._kernel_args()
        if self._lanes is not None:
            return float_lanes.linear_forward(forcing, phi, pi, params, shifts, lim, self._lanes, positions,
                                              self._conversion(), stream_counts)
        return kernels.forward(forcing, phi, pi, params, nonlinear, shifts, lim, *tables, positions,
                               self._conversion(), stream_counts)

    def _bank_echo(self, forcing, nudges, phi, pi, acc, forcing_obs, counters, conversion, obs_scale, stream_counts):
        """``kernels.echo_chunk`` (arguments as there), or its float64-lane twin like ``_bank_forward``."""
        params, nonlinear, shifts, lim, *tables = self._kernel_args()
        if self._lanes is not None:
            float_lanes.linear_echo(forcing, nudges, phi, pi, acc, params, shifts, lim, self._lanes, forcing_obs,
                                    counters, conversion, obs_scale, stream_counts)
        else:
            kernels.echo_chunk(forcing, nudges, phi, pi, acc, params, nonlinear, shifts, lim, *tables, forcing_obs,
                               counters, conversion, obs_scale, stream_counts)

    def _echo(self, forcing, phi, pi, nudges, input_sat, nudge_sat) -> EchoInt:
        """The echo pair on code streams, or on float streams (nudges at ε_used; the forcing
        observable then comes out as ∂L/∂f)."""
        check_echo_shapes(forcing, nudges)
        forcing_obs = np.empty_like(forcing)
        # The pair as (B, 2, P): the +ε echo at index 0, both from the flipped end state.
        pair_phi = np.repeat(phi[:, None], 2, axis=1)
        pair_pi = np.repeat(-pi[:, None], 2, axis=1)
        acc = np.zeros((forcing.shape[0], len(kernels.ACCUMULATORS), forcing.shape[2]), dtype=np.int64)
        counters = np.zeros(4, dtype=np.int64)
        stream_counts = np.zeros(3, dtype=np.int64)
        floats = forcing.dtype.kind == "f"
        obs_scale = self._forcing_scale(self.epsilon_used) if floats else np.ones(forcing.shape[2])
        conversion = self._conversion(self.epsilon_used if floats else 1.0)
        self._bank_echo(forcing, nudges, pair_phi, pair_pi, acc, forcing_obs, counters, conversion, obs_scale,
                        stream_counts)
        _checked(stream_counts)
        report = self._report(counters, input=input_sat + stream_counts[kernels.INPUT_SATURATED],
                              nudge=nudge_sat + stream_counts[kernels.NUDGE_SATURATED])
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

    def _quantize_state(self, forcing_shape, phi, pi):
        self._check_shapes(forcing_shape, np.shape(phi), np.shape(pi))
        quantized = [self.config.state.quantize(x) for x in (phi, pi)]
        return [codes for codes, _ in quantized], sum(n for _, n in quantized)

    def stream_codes(self, stream, prescale: float = 1.0) -> tuple[np.ndarray, int]:
        """A stream as state codes: integer streams are codes already; floats are quantised (Q of
        stream·prescale). Returns (codes, saturated) — for cores whose hardware takes codes."""
        if stream.dtype.kind == "f":
            return self.config.state.quantize(stream, prescale=prescale)
        return stream, 0

    def stream_values(self, codes, like) -> np.ndarray:
        """Output codes in the form the float API returns: values in ``like``'s float dtype."""
        if like.dtype.kind != "f":
            return codes
        return self.config.state.dequantize(codes).astype(like.dtype, copy=False)

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

    def _forcing_scale(self, epsilon: float) -> np.ndarray:
        """Per oscillator, ∂L/∂f per unit of the forcing observable difference (module docstring)."""
        cfg, p = self.config, self.params
        kappa = -1.0 / (2.0 * epsilon)
        if p.kind == "linear":
            return kappa * p.delta * -cfg.state.lsb
        return kappa * p.delta * (p.c / p.w) * 2.0 ** -cfg.unit_frac

    def _gradients(self, run: EchoInt, epsilon: float):
        """The estimators of the module docstring, from the integer accumulators."""
        cfg, p = self.config, self.params
        kappa = -1.0 / (2.0 * epsilon)
        state2 = 2.0 ** (cfg.acc_shift - 2 * cfg.state_frac)  # the product accumulators' LSB
        unit = 2.0 ** -cfg.unit_frac
        acc = run.accumulators
        mm, pp = acc["mm"] * state2, acc["pp"] * state2
        grads = {"a": kappa * p.delta * mm / 2}
        if p.kind == "linear":
            grads.update({name: np.zeros_like(mm) for name in ("w", "b", "c")},
                         delta=kappa * (p.a * mm / 2 - acc["fm"] * state2 + pp / 4))
        else:
            t, lc = acc["t"] * unit, acc["lc"] * unit
            tm = acc["tm"] * unit * cfg.state.lsb * 2.0 ** cfg.acc_shift
            gain = p.c / p.w
            grads.update(b=kappa * p.delta * gain * t, c=kappa * p.delta * lc / p.w,
                         w=kappa * p.delta * p.c * (tm / p.w - lc / p.w ** 2),
                         delta=kappa * (p.a * mm / 2 + gain * lc + pp / 4))
        grad_forcing = run.forcing_observable  # the float API's kernels scaled it already
        if grad_forcing.dtype.kind != "f":
            grad_forcing = grad_forcing * self._forcing_scale(epsilon)
        return grad_forcing, {name: grads[name] for name in PARAM_NAMES}


def _float_stream(stream) -> np.ndarray:
    """A float stream as a contiguous float32 or float64 array (other inputs become float64)."""
    array = np.asarray(stream)
    dtype = array.dtype if array.dtype in (np.float32, np.float64) else np.float64
    return np.ascontiguousarray(array, dtype=dtype)


def _checked(stream_counts) -> np.ndarray:
    if stream_counts[kernels.NAN_SAMPLES]:
        raise ValueError("cannot quantise NaN")
    return stream_counts


def check_echo_shapes(forcing, nudges) -> None:
    """The echo needs one nudge per forcing value, and at least one step."""
    if nudges.shape != forcing.shape or forcing.shape[1] == 0:
        raise ValueError(f"the echo needs nudges shaped like the forcing, at least one step long; "
                         f"got nudges {nudges.shape}, forcing {forcing.shape}")
