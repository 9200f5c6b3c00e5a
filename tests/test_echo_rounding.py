"""The nonlinear emulator echo's retrace miss (docs/compile.md) is rounding, not saturation, not the
nudge's O(ε²) effect and not a reversibility bug — and it stays below 1 % of the nudge response."""

import numpy as np

from echoforge.models.core import FloatCore, OscillatorParams
from echoforge.targets.emulator import EmulatorCore

BATCH, LENGTH, SIZE, EPSILON = 2, 4096, 64, 0.1


def test_the_nonlinear_echo_misses_by_rounding_only():
    rng = np.random.default_rng(0)
    params = OscillatorParams("nonlinear", a=rng.uniform(0.1, 1.0, SIZE), delta=np.full(SIZE, 1e-4),
                              w=rng.uniform(0.5, 1.0, SIZE), b=np.zeros(SIZE), c=rng.uniform(0.27, 0.73, SIZE))
    forcing = rng.normal(0.0, 0.6, (BATCH, LENGTH, SIZE))
    grad = 0.1 * rng.normal(size=(BATCH, LENGTH, SIZE))
    rest = np.zeros((BATCH, SIZE))
    emulator = EmulatorCore()
    emulator.load(params)
    lsb = emulator.config.state.lsb
    _, phi, pi = emulator.forward(forcing, rest, rest)
    assert not emulator.stats.saturated

    def miss_and_response(final_state):
        (phis, pis) = final_state
        miss = max(np.abs(phis.mean(axis=0)).max(), np.abs(pis.mean(axis=0)).max()) / lsb
        response = max(np.abs(phis[0] - phis[1]).max(), np.abs(pis[0] - pis[1]).max()) / 2 / lsb
        return miss, response

    unnudged = emulator.echo_int(emulator.config.state.quantize(forcing)[0], emulator.config.state.quantize(phi)[0],
                                 emulator.config.state.quantize(pi)[0], np.zeros((BATCH, LENGTH, SIZE), np.int64))
    assert not np.any(unnudged.phi) and not np.any(unnudged.pi)  # exact return to rest

    miss, response = miss_and_response(emulator.echo(forcing, phi, pi, grad, EPSILON).final_state)
    assert not emulator.stats.saturated
    float_core = FloatCore(params)
    _, float_phi, float_pi = float_core.forward(forcing, rest, rest)
    float_miss, _ = miss_and_response(float_core.echo(forcing, float_phi, float_pi, grad,
                                                      emulator.epsilon_used).final_state)
    assert miss > 10 * float_miss      # the nudge's own second-order effect is a small part of it
    assert 0 < miss < 0.01 * response  # and the rounding miss stays below 1 % of the response
