"""The exactness properties of DESIGN §2 for HRUs and HSSMs (issue: foundation and models)."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from echoforge.models import HSSM, FloatCore, LinHRU, NonlinHRU, OscillatorParams
from echoforge.models import core as core_module
from echoforge.models.core import PARAM_NAMES, retrace
from echoforge.models.hru import BPTTBank, EchoMonitor, RHELBank
from reference import leapfrog_positions

torch.set_num_threads(1)


def relative_error(a, b):
    return float((a - b).norm() / b.norm())


def cosine(a, b):
    return float((a.flatten() @ b.flatten()) / (a.norm() * b.norm()))


def random_bank(kind, size, step, seed=0):
    rng = np.random.default_rng(seed)
    return OscillatorParams(kind, a=rng.uniform(0.2, 1.0, size), delta=np.full(size, step),
                            w=rng.uniform(0.5, 1.0, size), b=rng.normal(0, 0.1, size),
                            c=rng.uniform(0.2, 0.8, size))


def bank_gradients(function, forcing, table, target):
    """∂L/∂(forcing, table) for L = mean squared distance of the positions to a target."""
    loss = ((function(forcing, table) - target) ** 2).mean()
    return torch.autograd.grad(loss, [forcing, table])


def bank_problem(kind, step, length=300, batch=4, size=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    forcing = torch.randn(batch, length, size, dtype=torch.float64, generator=generator)
    table = torch.from_numpy(random_bank(kind, size, step, seed).table()).requires_grad_()
    target = torch.randn(batch, length, size, dtype=torch.float64, generator=generator)
    return forcing.requires_grad_(), table, target


def identity_map(forcing):
    return torch.eye(forcing.shape[-1], dtype=forcing.dtype)


def rhel(kind, epsilon, monitor=None):
    """The bank alone: an identity input map makes the bank's input its forcing."""
    return lambda f, t: RHELBank.apply(f, identity_map(f), t, kind, epsilon, monitor or EchoMonitor(),
                                       FloatCore())


def bptt(kind):
    return lambda f, t: BPTTBank.apply(f, identity_map(f), t, kind)


# 1. The un-nudged echo retraces the forward path.

@pytest.mark.parametrize("kind,step", [("linear", 0.5), ("nonlinear", 1e-4)])
def test_echo_retraces_forward_path_over_10000_steps(kind, step):
    rng = np.random.default_rng(1)
    core = FloatCore(random_bank(kind, 16, step))
    forcing = rng.normal(size=(4, 10_000, 16))
    zeros = np.zeros((4, 16))
    positions, phi, pi = core.forward(forcing, zeros, zeros)
    phi0, pi0 = retrace(core, forcing, phi, pi)
    scale = max(np.abs(positions).max(), np.abs(pi).max())
    assert max(np.abs(phi0).max(), np.abs(pi0).max()) / scale <= 1e-12


def test_echo_retraces_every_intermediate_state():
    rng = np.random.default_rng(2)
    core = FloatCore(random_bank("nonlinear", 4, 0.1))
    forcing = rng.normal(size=(2, 500, 4))
    zeros = np.zeros((2, 4))
    positions, phi, pi = core.forward(forcing, zeros, zeros)
    back, _, _ = core.forward(np.ascontiguousarray(forcing[:, ::-1]), phi, -pi)
    # After j echo steps the echo sits at the forward state K − j.
    np.testing.assert_allclose(back[:, :-1], positions[:, -2::-1], rtol=0, atol=1e-12)


def test_the_retrace_error_of_a_bank_at_rest_is_relative_to_the_nudges_response():
    """A forward that ends at 0 (a bank whose state never left rest) used to divide by 1e-300."""
    from echoforge.models.hru import EchoMonitor
    monitor = EchoMonitor()
    pair = np.array([[0.5, -0.2], [-0.5, 0.2]])  # the ±ε echoes end as mirror images: mean 0
    monitor.record((pair, pair), np.zeros(2), np.zeros(2))
    assert monitor.retrace_error == 0.0
    with pytest.warns(RuntimeWarning, match="relative error 2.00e-02"):
        monitor.record((pair + 0.01, pair), np.zeros(2), np.zeros(2))
    assert monitor.retrace_error == pytest.approx(0.02)


def test_chaotic_regime_is_detected_and_reported():
    torch.manual_seed(0)
    hru = NonlinHRU(6, 16, step=1.5).double()
    u = 3 * torch.randn(2, 2000, 6, dtype=torch.float64)
    assert hru.retrace_error(u) > 1e-3
    regular = NonlinHRU(6, 16).double()
    assert regular.retrace_error(u) < 1e-12
    with pytest.warns(RuntimeWarning, match="did not retrace"):
        hru(u).pow(2).mean().backward()
    assert hru.monitor.retrace_error > 1e-3


def test_energy_stays_bounded_without_input():
    params = random_bank("linear", 8, 0.6)
    core = FloatCore(params)
    rng = np.random.default_rng(3)
    phi, pi = rng.normal(size=(1, 8)), rng.normal(size=(1, 8))
    positions, _, _ = core.forward(np.zeros((1, 20_000, 8)), phi, pi)
    amplitude = np.abs(positions).reshape(10, 2000, 8).max(axis=1)
    assert np.all(amplitude[-1] < 1.2 * amplitude[0])


# 2. Linear HRU: RHEL is exact at any ε.

@pytest.mark.parametrize("kind", ["linear", "nonlinear"])
def test_bptt_equals_torch_autograd_through_unrolled_leapfrog(kind):
    forcing, table, target = bank_problem(kind, 0.1, length=120)
    reference = bank_gradients(lambda f, t: leapfrog_positions(kind, t, f), forcing, table, target)
    ours = bank_gradients(bptt(kind), forcing, table, target)
    for r, o in zip(reference, ours):
        assert relative_error(o, r) < 1e-12


@pytest.mark.parametrize("chunk", [4096, 37])  # one chunk; many, with a ragged last one
@pytest.mark.parametrize("epsilon", [1.0, 0.1, 0.001])
@pytest.mark.parametrize("complex_state", [False, True])
def test_linear_hru_rhel_equals_bptt(epsilon, complex_state, chunk, monkeypatch):
    monkeypatch.setattr("echoforge.models.core.CHUNK", chunk)
    torch.manual_seed(0)
    hru = LinHRU(5, 8, complex_state=complex_state, epsilon=epsilon).double()
    u = torch.randn(3, 400, 5, dtype=torch.float64, requires_grad=True)
    target = torch.randn(3, 400, 5, dtype=torch.float64)
    grads = {}
    for rule in ("bptt", "rhel"):
        hru.learning = rule
        loss = ((hru(u) - target) ** 2).mean()
        grads[rule] = torch.autograd.grad(loss, [u, *hru.parameters()])
    names = ["u"] + [n for n, _ in hru.named_parameters()]
    assert "step_raw" in names and "A_raw" in names
    for name, b, r in zip(names, grads["bptt"], grads["rhel"]):
        assert relative_error(r, b) <= 1e-10, name


@pytest.mark.parametrize("chunk", [4096, 37])
@pytest.mark.parametrize("batch", [1, 3])
def test_float_core_echo_equals_its_stream(chunk, batch, monkeypatch):
    """echo writes a chunk's ∂L/∂f into its result in place where that slice is contiguous and copies it
    otherwise: the numbers echo_stream hands out chunk by chunk, either way."""
    monkeypatch.setattr("echoforge.models.core.CHUNK", chunk)
    rng = np.random.default_rng(0)
    core = FloatCore(OscillatorParams("linear", a=rng.uniform(0.2, 1.0, 6), delta=rng.uniform(0.3, 0.7, 6)))
    forcing, nudges = rng.normal(size=(2, batch, 300, 6))
    zeros = np.zeros((batch, 6))
    _, phi, pi = core.forward(forcing, zeros, zeros)
    whole = core.echo(forcing, phi, pi, nudges, 0.01).grad_forcing
    streamed = np.full_like(whole, np.nan)
    core.echo_stream(forcing, phi, pi, nudges, 0.01, lambda s, grad: streamed.__setitem__((slice(None), s), grad))
    assert np.array_equal(whole, streamed)


def float_core_outputs(kind, threads):
    """Every FloatCore result on a bank whose echo pairs are far apart in some rows (the far-apart
    formulas run for some lane blocks only), over several chunks, on `threads` threads."""
    core_module.set_num_threads(threads)
    try:
        rng = np.random.default_rng(1)
        core = FloatCore(random_bank(kind, 7, 0.3, seed=1))
        forcing, nudges = rng.normal(size=(2, 5, 300, 7))
        nudges[1:3] *= 300.0  # ε·g large enough that pairs separate by more than kernels.FAR
        start = rng.normal(size=(2, 5, 7))
        positions, phi, pi = core.forward(forcing, *start)
        echo = core.echo(forcing, phi, pi, nudges, 0.01)
        trajectory = core.trajectory(forcing, *start)
        grad_forcing, grad_params = core.adjoint(forcing, *start, *trajectory, nudges)
        return [positions, phi, pi, echo.grad_forcing, *echo.grad_params.values(), *echo.final_state,
                *trajectory, grad_forcing, *grad_params.values()]
    finally:
        core_module.set_num_threads(None)


@pytest.mark.parametrize("kind", ["linear", "nonlinear"])
def test_float_core_gives_the_same_bits_on_one_and_several_threads(kind, monkeypatch):
    """The kernels run on groups of batch rows in threads (5 rows: groups of 2, 2, 1 on 3 threads, of
    1 on 8); rows are independent, so every output is the same bits as on one thread."""
    monkeypatch.setattr("echoforge.models.core.CHUNK", 128)
    one = float_core_outputs(kind, 1)
    for threads in (3, 8):
        assert all(np.array_equal(a, b) for a, b in zip(one, float_core_outputs(kind, threads)))


def test_hssm_gradient_is_the_same_bits_on_one_and_two_kernel_threads():
    grads = []
    for threads in (1, 2):
        core_module.set_num_threads(threads)
        try:
            torch.manual_seed(0)
            model = HSSM(6, 4, hidden_size=8, state_size=8, num_blocks=2, hru="nonlinear")
            x, y = torch.randn(4, 500, 6), torch.randint(0, 4, (4,))
            grads.append(stack_gradients(model, x, y, "rhel"))
        finally:
            core_module.set_num_threads(None)
    assert all(torch.equal(grads[0][name], grads[1][name]) for name in grads[0])


def test_ranks_on_one_machine_share_its_cpus_unless_a_thread_count_was_set(monkeypatch):
    """Ranks side by side each take their share of the CPUs (at least one), not every CPU; a count the
    user set stays."""
    monkeypatch.setattr(core_module, "available_cpus", lambda: 8)
    try:
        for processes, threads in ((1, 8), (2, 4), (3, 2), (16, 1)):
            core_module.set_num_threads(None)
            core_module.share_cpus(processes)
            assert core_module.get_num_threads() == threads
        core_module.set_num_threads(5)
        core_module.share_cpus(2)
        assert core_module.get_num_threads() == 5
    finally:
        core_module.set_num_threads(None)


def test_float_core_rejects_a_thread_count_below_one():
    with pytest.raises(ValueError, match="thread count must be ≥ 1"):
        core_module.set_num_threads(0)


RETAINED_AFTER_FREE = """
import numpy as np
from echoforge.models import HSSM

def resident_mib():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2 ** 20

{build}
for _ in range(2):  # the first free is what raises glibc's own threshold
    start = resident_mib()
    block = np.ones(2 ** 20)  # 8 MiB, a sequence-sized buffer
    del block
print(resident_mib() - start)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc and /proc are Linux's")
def test_building_an_hru_makes_freed_sequence_sized_buffers_leave_the_process():
    """Without heap.return_large_buffers, the second 8 MiB buffer comes from the heap and stays
    resident after it is freed (glibc raised its mmap threshold when the first was freed)."""
    def retained(build):
        code = RETAINED_AFTER_FREE.format(build=build)
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                                check=False, env={k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")})
        assert result.returncode == 0, result.stderr
        return float(result.stdout)
    assert retained("") > 7  # glibc's default: the buffer stays (the check can fail)
    assert retained("HSSM(2, 2, hidden_size=4, state_size=4, num_blocks=1)") < 1  # builds an HRU


# 3. Nonlinear HRU: the finite-ε bias falls as ε².

def test_nonlinear_rhel_error_falls_as_epsilon_squared():
    forcing, table, target = bank_problem("nonlinear", 0.1, length=300)
    reference = bank_gradients(bptt("nonlinear"), forcing, table, target)
    with torch.no_grad():
        loss = float(((bptt("nonlinear")(forcing, table) - target) ** 2).mean())
    assert 0.3 < loss < 3  # a loss of order one
    errors = []
    for epsilon in (1.0, 0.1, 0.01):
        grads = bank_gradients(rhel("nonlinear", epsilon), forcing, table, target)
        errors.append(max(relative_error(g, r) for g, r in zip(grads, reference)))
    assert errors[0] > 1e-6  # the dynamics move: there is a bias to shrink
    for coarse, fine in zip(errors, errors[1:]):
        assert 60 < coarse / fine < 160
    grads = bank_gradients(rhel("nonlinear", 1e-4), forcing, table, target)
    for g, r in zip(grads, reference):
        assert relative_error(g, r) <= 1e-6


def test_nonlinear_step_size_gradient_is_exact_in_the_limit():
    forcing, table, target = bank_problem("nonlinear", 0.1, length=200)
    reference = bank_gradients(bptt("nonlinear"), forcing, table, target)[1]
    grads = bank_gradients(rhel("nonlinear", 1e-3), forcing, table, target)[1]
    for row, name in enumerate(PARAM_NAMES):
        assert relative_error(grads[row], reference[row]) < 1e-7, name


# 4. Whole HSSMs: RHEL chains through the stack.

def stack_gradients(model, x, y, rule):
    model.set_learning(rule)
    model.zero_grad()
    torch.manual_seed(123)  # identical dropout masks for both rules
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


# Relative error of every parameter's gradient, RHEL against BPTT, measured 3.2e-15 (linear: exact) and
# 3.6e-9 (nonlinear, ε = 0.1 at δ = 0.05: the ε² bias); the bounds leave a margin of 30×.
@pytest.mark.parametrize("kind,tolerance", [("linear", 1e-13), ("nonlinear", 1e-7)])
def test_hssm_rhel_gradients_match_bptt(kind, tolerance):
    torch.manual_seed(0)
    options = {"step": 0.05} if kind == "nonlinear" else {}
    model = HSSM(6, 4, hidden_size=16, state_size=16, num_blocks=3, hru=kind, **options).double()
    x = torch.randn(8, 200, 6, dtype=torch.float64)
    y = torch.randint(0, 4, (8,))
    bptt_grads = stack_gradients(model, x, y, "bptt")
    rhel_grads = stack_gradients(model, x, y, "rhel")
    for name, reference in bptt_grads.items():
        assert relative_error(rhel_grads[name], reference) <= tolerance, name


def test_set_learning_switches_every_hru_and_rejects_unknown_rules():
    model = HSSM(3, 2, hidden_size=8, state_size=4, num_blocks=3)
    model.set_learning("bptt")
    assert [h.learning for h in model.hrus()] == ["bptt"] * 3
    with pytest.raises(ValueError, match="learning must be one of"):
        model.set_learning("adjoint")


def test_regression_head_subsamples_steps():
    model = HSSM(2, 1, hidden_size=8, state_size=4, num_blocks=1, task="regression", output_step=50)
    assert model(torch.randn(3, 200, 2)).shape == (3, 4, 1)


def test_regression_head_can_read_the_time_average():
    torch.manual_seed(0)
    model = HSSM(2, 1, hidden_size=8, state_size=4, num_blocks=1, task="regression", readout="mean").eval()
    x = torch.randn(3, 200, 2)
    features = model.blocks[0](model.encoder(x))
    assert torch.allclose(model(x), model.head(features.mean(dim=1)), atol=1e-6)
    for bad in (dict(readout="last"), dict(task="classification", readout="steps")):
        with pytest.raises(ValueError, match="readout"):
            HSSM(2, 1, hidden_size=8, state_size=4, num_blocks=1, **{"task": "regression", **bad})


@pytest.mark.parametrize("hru_class", [LinHRU, NonlinHRU])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hru_shapes_and_dtypes(hru_class, dtype):
    hru = hru_class(5, 7).to(dtype)
    u = torch.randn(2, 30, 5, dtype=dtype, requires_grad=True)
    out = hru(u)
    assert out.shape == u.shape and out.dtype == dtype
    out.sum().backward()
    assert u.grad.dtype == dtype and all(p.grad is not None for p in hru.parameters())


# 5. The RHEL backward keeps no trajectory.

def test_rhel_saves_only_inputs_and_final_state():
    batch, length, size = 2, 5000, 8
    hru = LinHRU(4, size)
    u = torch.randn(batch, length, 4)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        hru.bank(u)
    trajectory_sized = [t for t in saved if t.numel() >= length]
    assert len(trajectory_sized) == 1 and trajectory_sized[0] is u
    assert sum(t.numel() for t in saved) <= u.numel() + 4 * 5 * size + size * 4 + 2 * batch * size
    hru.learning = "bptt"
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        hru.bank(u)
    trajectory = [t for t in saved if t is not u and t.numel() >= length * size]
    assert len(trajectory) == 2  # BPTT keeps positions and momenta


# 6. Long sequences in float32 models.

@pytest.mark.parametrize("hru_class,options", [(LinHRU, {}), (NonlinHRU, {})])
def test_rhel_at_50k_steps_in_float32_matches_float64_bptt(hru_class, options):
    torch.manual_seed(0)
    hru = hru_class(6, 16, **options)
    u = torch.randn(2, 50_000, 6)
    target = torch.randn(2, 50_000, 6)

    def grads(module, rule, dtype):
        module.learning = rule
        loss = ((module(u.to(dtype)) - target.to(dtype)) ** 2).mean()
        return torch.autograd.grad(loss, list(module.parameters()))

    rhel32 = grads(hru, "rhel", torch.float32)
    reference = grads(hru.double(), "bptt", torch.float64)
    for (name, _), g, r in zip(hru.named_parameters(), rhel32, reference):
        assert g.dtype == torch.float32
        assert cosine(g.double(), r) >= 0.9999, name


def test_hru_rejects_wrong_input_shape():
    with pytest.raises(ValueError, match=r"expects \(batch, length, 5\)"):
        LinHRU(5, 4)(torch.randn(2, 10, 3))


def test_no_warning_on_regular_dynamics():
    hru = LinHRU(3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hru(torch.randn(2, 100, 3)).sum().backward()
    assert hru.monitor.retrace_error < 1e-10


def glue_gradients(rule, dropout, checkpoint_glue, dtype=torch.float64, hru="linear"):
    torch.manual_seed(0)
    model = HSSM(6, 4, hidden_size=8, state_size=8, num_blocks=3, dropout=dropout, hru=hru,
                 checkpoint_glue=checkpoint_glue).to(dtype)
    x, y = torch.randn(4, 150, 6, dtype=dtype), torch.randint(0, 4, (4,))
    return stack_gradients(model, x, y, rule)


@pytest.mark.parametrize("rule", ["bptt", "rhel"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_recomputed_glue_gives_the_gradients_of_the_stored_glue(rule, dropout, monkeypatch):
    """glue.GlueFunction (recomputed, derivative by hand, several chunks, one ragged) against the same
    glue under plain autograd (HSSMBlock.glue, every activation kept); with dropout on, both must
    apply the same masks, in the forward and in the recomputation."""
    monkeypatch.setattr("echoforge.models.glue.CHUNK", 64)
    stored = glue_gradients(rule, dropout, checkpoint_glue=False)
    recomputed = glue_gradients(rule, dropout, checkpoint_glue=True)
    for name in stored:
        torch.testing.assert_close(recomputed[name], stored[name], rtol=1e-12, atol=1e-14)


def test_recomputed_glue_is_the_same_bits_on_any_number_of_threads(monkeypatch):
    monkeypatch.setattr("echoforge.models.glue.CHUNK", 40)  # 16 chunks: more than the slots
    grads = []
    for threads in (1, 2, 3):
        monkeypatch.setattr("echoforge.models.core._threads", threads)
        grads.append(glue_gradients("rhel", 0.3, True, torch.float32, hru="nonlinear"))
    for other in grads[1:]:
        assert all(torch.equal(other[name], grads[0][name]) for name in grads[0])


def test_recomputed_glue_replays_dropout_masks(monkeypatch):
    monkeypatch.setattr("echoforge.models.glue.CHUNK", 64)
    torch.manual_seed(0)
    model = HSSM(6, 4, hidden_size=8, state_size=8, num_blocks=3, dropout=0.3,
                 checkpoint_glue=True).double()
    x, y = torch.randn(4, 150, 6, dtype=torch.float64), torch.randint(0, 4, (4,))
    bptt_grads = stack_gradients(model, x, y, "bptt")
    rhel_grads = stack_gradients(model, x, y, "rhel")
    for name, reference in bptt_grads.items():
        assert cosine(rhel_grads[name], reference) >= 0.9999999, name


def block_gradients(hru, dropout, fused):
    """The output and gradients of a 3-block RHEL HSSM: the blocks fused (block.RHELBlock, host float
    core) or apart (glue.GlueFunction after hru.RHELBank, as on a device's core: a FloatCore set)."""
    from echoforge.hil.banks import banks_on
    torch.manual_seed(0)
    model = HSSM(6, 4, hidden_size=8, state_size=12, num_blocks=3, dropout=dropout, hru=hru).double()
    x, y = torch.randn(4, 150, 6, dtype=torch.float64), torch.randint(0, 4, (4,))
    cores = [] if fused else [FloatCore() for _ in model.hrus()]
    with banks_on(model, cores) if cores else warnings.catch_warnings():
        torch.manual_seed(123)
        out = model(x)
        torch.nn.functional.cross_entropy(out, y).backward()
    return out.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("hru", ["linear", "nonlinear"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_fused_block_gives_the_output_and_gradients_of_bank_and_glue_apart(hru, dropout, monkeypatch):
    """RHELBlock re-runs the bank chunk by chunk (several chunks, a ragged last one) from the states it
    kept: the forward's positions bit for bit, so the same output, and the gradients up to the order
    of the glue's sums."""
    monkeypatch.setattr("echoforge.models.core.CHUNK", 64)
    monkeypatch.setattr("echoforge.models.glue.CHUNK", 40)
    apart_out, apart = block_gradients(hru, dropout, fused=False)
    fused_out, fused = block_gradients(hru, dropout, fused=True)
    assert torch.equal(fused_out, apart_out)
    for name in apart:
        torch.testing.assert_close(fused[name], apart[name], rtol=1e-12, atol=1e-15)


def test_rhel_blocks_keep_only_their_normalised_input(monkeypatch):
    """What an RHEL step saves for its backward that grows with the sequence: per block the normalised
    input (the norm's and the fused block's, one tensor) and the encoder's input, which the caller
    holds anyway — no positions."""
    monkeypatch.setattr("echoforge.models.core.CHUNK", 64)
    torch.manual_seed(0)
    model = HSSM(6, 4, hidden_size=8, state_size=12, num_blocks=3, hru="nonlinear")
    x = torch.randn(2, 300, 6)
    saved = {}

    def pack(tensor):
        if tensor.numel() >= 600:  # a row per step of the batch, or more
            saved[tensor.untyped_storage().data_ptr()] = tensor.numel()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(x).sum().backward()
    assert sorted(saved.values()) == [2 * 300 * 6] + [2 * 300 * 8] * 3


def test_dropout_masks_are_the_global_batch_s_rows_and_drop_p():
    """A rank's mask is its rows of the one-process mask (row_offset), and drops a fraction p."""
    from echoforge.models.hssm import Dropout
    whole, part = Dropout(0.25), Dropout(0.25)
    part.row_offset = 3
    torch.manual_seed(7)
    expected = whole(torch.ones(8, 500, 16))
    torch.manual_seed(7)
    assert torch.equal(part(torch.ones(2, 500, 16)), expected[3:5])
    dropped = (expected == 0).double().mean().item()
    assert abs(dropped - 0.25) < 0.005 and torch.all(expected[expected != 0] == 1 / 0.75)
    assert not torch.equal(whole(torch.ones(8, 500, 16)), expected)  # the next draw, another mask


def test_time_batch_norm_matches_torch_batch_norm():
    from echoforge.models.norm import TimeBatchNorm
    x = torch.randn(4, 50, 6, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(4, 50, 6, dtype=torch.float64)
    ours, reference = TimeBatchNorm(6).double(), torch.nn.BatchNorm1d(6, affine=False).double()
    grads = []
    for norm, out in ((ours, lambda: ours(x)),
                      (reference, lambda: reference(x.reshape(-1, 6)).view(x.shape))):
        for _ in range(3):
            y = out()
        grads.append(torch.autograd.grad((y * weights).sum(), x)[0])
        norm.eval()
        grads.append(out())
    torch.testing.assert_close(grads[0], grads[2], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads[1], grads[3], rtol=1e-12, atol=1e-12)
    assert ours.state_dict().keys() == reference.state_dict().keys()


def test_log_uniform_stiffness_initialisation():
    hru = LinHRU(3, 64, stiffness_range=(1e-5, 1.0))
    a = torch.relu(hru.A_raw)
    assert a.min() >= 1e-5 and a.max() <= 1.0 and (a < 1e-3).sum() >= 10
    with pytest.raises(ValueError, match="stiffness_range"):
        LinHRU(3, 4, stiffness_range=(0.0, 1.0))


def documented_nonlinear_hru(hru, u):
    """The nonlinear HRU as docs/models.md writes it, from its raw parameters: c = sigmoid(c_raw) once,
    δ = exp(log δ), V = α m²/2 + c log cosh(W m + Bu + b)/W, positions read out by C plus the skip D⊙u."""
    table = torch.stack([hru.alpha.expand(hru.state_size), torch.exp(hru.log_step), hru.W, hru.b,
                         torch.sigmoid(hru.c_raw)])
    return leapfrog_positions("nonlinear", table, u @ hru.B.T) @ hru.C.T + hru.D * u


# Against autograd through the plain leapfrog, worst relative error over the parameters: measured 1.9e-15
# for BPTT (round-off) and 1.8e-12 for RHEL at ε = 1e-4 (its ε² bias); the bounds leave a margin of 50× / 10×.
@pytest.mark.parametrize("rule,tolerance", [("bptt", 1e-13), ("rhel", 2e-11)])
def test_a_trained_nonlinear_step_gets_the_documented_gradient(rule, tolerance):
    """NonlinHRU(train_step=True): δ = exp(log δ) is a parameter and its gradient, like every other, is
    autograd's through the documented model (the reference code gives the step no gradient)."""
    torch.manual_seed(0)
    hru = NonlinHRU(3, 6, step=0.05, train_step=True, epsilon=1e-4, learning=rule).double()
    assert "log_step" in dict(hru.named_parameters())
    u = torch.randn(2, 120, 3, dtype=torch.float64)
    target = torch.randn(2, 120, 3, dtype=torch.float64)
    ours = torch.autograd.grad(((hru(u) - target) ** 2).mean(), list(hru.parameters()))
    reference = torch.autograd.grad(((documented_nonlinear_hru(hru, u) - target) ** 2).mean(),
                                    list(hru.parameters()))
    for (name, _), got, expected in zip(hru.named_parameters(), ours, reference):
        assert relative_error(got, expected) <= tolerance, name


def test_nonlinear_hru_potential_is_the_documented_one():
    """The forward is the documented model to round-off: c is sigmoid(c_raw), applied once."""
    torch.manual_seed(0)
    hru = NonlinHRU(3, 6, step=0.05).double()
    u = torch.randn(2, 120, 3, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(hru(u), documented_nonlinear_hru(hru, u), rtol=1e-12, atol=1e-13)
