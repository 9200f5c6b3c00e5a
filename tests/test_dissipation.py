"""Dissipation and RHEL (issue 16): the damped leapfrog is conformally symplectic, the echo with gain
retraces it, and the compensated echo gives BPTT's gradient of the damped model — and where it stops."""

import itertools

import numpy as np
import pytest
import torch

from echoforge.models.core import FloatCore, OscillatorParams
from echoforge.targets.analog import dissipation as dis

torch.set_num_threads(1)

# Measured: compensated RHEL vs autograd BPTT of the damped linear bank, 1e-14..2e-14 relative
# (Q from 20 to 1e5, ε from 1e-3 to 1); the bound leaves two orders of margin for other BLAS/CPUs.
EXACT = 1e-12
J = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)


def bank_params(kind, size=6, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "linear":
        return OscillatorParams("linear", rng.uniform(0.1, 1.0, size), rng.uniform(0.3, 0.7, size))
    return OscillatorParams("nonlinear", np.full(size, 0.5), rng.uniform(0.05, 0.2, size),
                            rng.uniform(0.5, 1.0, size), rng.uniform(-0.3, 0.3, size), rng.uniform(0.2, 0.8, size))


def coupled_bank(losses):
    params = bank_params("linear", size=3)
    params = OscillatorParams("linear", params.a, np.full(3, 0.5))
    coupling = np.array([[0.0, 0.2, 0.05], [0.2, 0.0, 0.1], [0.05, 0.1, 0.0]])
    return dis.DampedBank(params, np.array(losses), coupling)


def problem(size=6, length=300, batch=3, seed=1):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, length, size)), rng.normal(size=(batch, length, size))


def gradients(bank, forcing, nudges, epsilon, mode="compensated", **options):
    _, phi, pi = dis.forward(bank, forcing)
    return (dis.rhel(bank, forcing, phi, pi, nudges, epsilon, mode, **options),
            dis.bptt(bank, forcing, nudges))


@pytest.mark.parametrize("kind", ["linear", "nonlinear"])
def test_without_loss_it_is_the_float_core(kind):
    params = bank_params(kind)
    forcing, nudges = problem()
    zeros = np.zeros((3, 6))
    positions, phi, pi = dis.forward(dis.DampedBank(params, 0.0), forcing)
    core = FloatCore(params)
    expected, end_phi, end_pi = core.forward(forcing, zeros, zeros)
    np.testing.assert_allclose(positions, expected, rtol=0, atol=1e-13)
    echo = core.echo(forcing, end_phi, end_pi, nudges, 1e-3)
    ours = dis.rhel(dis.DampedBank(params, 0.0), forcing, phi, pi, nudges, 1e-3).grads
    for name in dis.TRAINED[kind]:
        np.testing.assert_allclose(ours[name], echo.grad_params[name].sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(ours["forcing"], echo.grad_forcing, rtol=0, atol=1e-12)


def step_jacobian(bank, phi, pi, f):
    p = dis._tensors(bank)
    factor = torch.exp(-0.5 * torch.from_numpy(bank.loss))

    def step(state):
        size = state.shape[0] // 2
        new_phi, new_pi = dis._step(bank.params.kind, p, factor, state[:size], state[size:], f)
        return torch.cat([new_phi, new_pi])

    return torch.autograd.functional.jacobian(step, torch.cat([phi, pi]))


def symplectic_form(size):
    return torch.kron(J, torch.eye(size, dtype=torch.float64))


def test_damped_step_is_conformally_symplectic_per_oscillator():
    """One nonlinear oscillator: MᵀJM = e^{−κ}J (any 2-D map scales J by its determinant)."""
    bank = dis.DampedBank(bank_params("nonlinear", size=1), 0.03)
    jac = step_jacobian(bank, torch.tensor([0.7], dtype=torch.float64), torch.tensor([-0.4], dtype=torch.float64),
                        torch.tensor([0.3], dtype=torch.float64))
    torch.testing.assert_close(jac.T @ J @ jac, np.exp(-0.03) * J, rtol=0, atol=1e-14)


@pytest.mark.parametrize("losses, conformal", [((0.02, 0.02, 0.02), True), ((0.005, 0.02, 0.05), False)])
def test_coupled_step_is_conformal_only_for_equal_losses(losses, conformal):
    bank = coupled_bank(losses)
    state = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)
    jac = step_jacobian(bank, state, -state, torch.zeros(3, dtype=torch.float64))
    form = jac.T @ symplectic_form(3) @ jac
    best = float((form * symplectic_form(3)).sum() / (symplectic_form(3) ** 2).sum())
    residual = float((form - best * symplectic_form(3)).abs().max())
    assert (residual < 1e-14) == conformal and (conformal or residual > 1e-4)


@pytest.mark.parametrize("kind", ["linear", "nonlinear"])
def test_the_echo_with_gain_retraces_the_damped_forward(kind):
    bank = dis.DampedBank.from_quality(bank_params(kind), 20.0)
    forcing, nudges = problem(length=500)
    positions, phi, pi = dis.forward(bank, forcing)
    scale = np.abs(positions).max()
    for mode, retraces in (("gain", True), ("damped", False)):
        end_phi, end_pi = dis.rhel(bank, forcing, phi, pi, nudges * 0, 1.0, mode).end
        error = max(np.abs(end_phi).max(), np.abs(end_pi).max()) / scale
        assert (error < 1e-12) == retraces and (retraces or error > 0.1)


@pytest.mark.parametrize("epsilon", [1.0, 1e-3])
def test_compensated_rhel_equals_bptt_of_the_damped_linear_bank(epsilon):
    """Per-oscillator Q from 20 to 1e5; the uncompensated echoes are measurably wrong on the same bank."""
    params = bank_params("linear")
    bank = dis.DampedBank.from_quality(params, np.array([20.0, 50.0, 100.0, 1e3, 1e4, 1e5]))
    forcing, nudges = problem()
    echo, reference = gradients(bank, forcing, nudges, epsilon)
    for name, (_, error) in dis.agreement(echo.grads, reference).items():
        assert error < EXACT, name
    for mode in ("damped", "gain"):
        echo, _ = gradients(bank, forcing, nudges, epsilon, mode)
        assert dis.agreement(echo.grads, reference)["all"][1] > 1e-2, mode


def test_compensated_nonlinear_rhel_error_falls_as_epsilon_squared():
    bank = dis.DampedBank.from_quality(bank_params("nonlinear"), 50.0)
    forcing, nudges = problem()
    errors = [dis.agreement(gradients(bank, forcing, nudges, eps)[0].grads,
                            dis.bptt(bank, forcing, nudges))["all"][1] for eps in (1e-2, 1e-3, 1e-4)]
    assert errors[0] > 1e-4
    for coarse, fine in itertools.pairwise(errors):
        assert 60 < coarse / fine < 160


@pytest.mark.parametrize("losses, exact", [((0.02, 0.02, 0.02), True), ((0.005, 0.02, 0.05), False)])
def test_coupled_bank_is_compensated_only_with_equal_losses(losses, exact):
    bank = coupled_bank(losses)
    forcing, nudges = problem(size=3, length=400)
    echo, reference = gradients(bank, forcing, nudges, 1.0)
    error = dis.agreement(echo.grads, reference)["all"][1]
    assert (error < EXACT) == exact and (exact or error > 1e-3)


def test_a_gain_error_leaves_an_error_that_grows_with_it():
    bank = dis.DampedBank.from_quality(bank_params("linear"), 100.0)
    forcing, nudges = problem()
    reference = dis.bptt(bank, forcing, nudges)
    _, phi, pi = dis.forward(bank, forcing)
    errors = [dis.agreement(dis.rhel(bank, forcing, phi, pi, nudges, 1.0,
                                     calibrated_loss=bank.loss * (1 + gain_error)).grads, reference)["all"][1]
              for gain_error in (1e-3, 1e-2, 1e-1)]
    assert 1e-5 < errors[0] < errors[1] < errors[2]


def test_bad_input_is_refused_with_a_message():
    params = bank_params("linear", size=2)
    with pytest.raises(ValueError, match="loss per step"):
        dis.DampedBank(params, -0.1)
    with pytest.raises(ValueError, match="quality factor"):
        dis.DampedBank.from_quality(params, 0.0)
    with pytest.raises(ValueError, match="symmetric"):
        dis.DampedBank(params, 0.0, np.array([[0.0, 1.0], [0.0, 0.0]]))
    with pytest.raises(ValueError, match="one step size"):
        dis.DampedBank(params, 0.0, np.array([[0.0, 1.0], [1.0, 0.0]]))
    forcing, nudges = problem(size=2, length=5)
    with pytest.raises(ValueError, match="echo mode"):
        dis.rhel(dis.DampedBank(params, 0.0), forcing, np.zeros((3, 2)), np.zeros((3, 2)), nudges, 1.0, "magic")
