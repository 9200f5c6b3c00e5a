"""The generated FPGA Verilog equals the emulator's int64 kernels bit for bit, under Verilator and Icarus.

Every check runs the same integer calls on EmulatorCore and on RTLCore (the Verilated RTL behind the
core contract) and compares everything they return: forward positions and end states, echo forcing
observables, accumulators and end states, and the saturation counts. Programs are random: both kinds,
odd oscillator counts, 1–3 batch rows, inputs and states that saturate, random gaps on both streams.

What runs by default, and why: a Verilator build costs ~30 s on a loaded 2-core machine and a run
~0.1 s, so the default part builds two designs (linear at 16-bit words, the UP5K's multiplier width;
nonlinear at 24, the default word) and runs 50 random programs on each, the 50,000-step reversal on
both, a few Icarus programs (its builds take a second, its runs are slow) and the missing-simulator
line. The word-length sweep (12..24, 28 and 32 bits, both kinds: 28 more builds) is marked slow.
"""

import numpy as np
import pytest

from echoforge.models.core import OscillatorParams
from echoforge.targets.emulator import EmulatorCore, FormatConfig
from echoforge.targets.fpga import sim
from echoforge.targets.fpga.core import RTLCore
from echoforge.targets.fpga.rtl import generate, generate_core

DEFAULT_BANKS = [("linear", 16), ("nonlinear", 24)]
SWEEP = [(kind, word) for kind in ("linear", "nonlinear") for word in (*range(12, 25), 28, 32)
         if (kind, word) not in DEFAULT_BANKS]


def random_params(rng, kind: str, size: int) -> OscillatorParams:
    """Parameters across their formats' ranges (a up to ±8, δ up to 2), some saturating the force."""
    return OscillatorParams(kind, a=rng.uniform(-1.0, 6.0, size), delta=rng.uniform(0.0, 1.2, size),
                            w=rng.choice([-1, 1], size) * rng.uniform(0.2, 4.0, size), b=rng.uniform(-2, 2, size),
                            c=rng.uniform(-4.0, 4.0, size))


def random_codes(rng, shape, lim: int) -> np.ndarray:
    """Codes of one of three sizes: small, O(1) signals, or up to the word's limit (saturating)."""
    reach = rng.choice([lim // 64, lim // 8, lim])
    return rng.integers(-reach, reach + 1, shape)


def cores(kind: str, word_bits: int, params, **options):
    config = FormatConfig(word_bits)
    emulator, rtl = EmulatorCore(config), RTLCore(config, **options)
    emulator.load(params)
    rtl.load(params)
    return emulator, rtl


def assert_same_run(expected, got):
    """Every array and the saturation counts of a ForwardInt or EchoInt."""
    for name in ("positions", "forcing_observable", "phi", "pi"):
        if hasattr(expected, name):
            np.testing.assert_array_equal(getattr(got, name), getattr(expected, name), err_msg=name)
    for name, values in getattr(expected, "accumulators", {}).items():
        np.testing.assert_array_equal(got.accumulators[name], values, err_msg=name)
    assert got.saturation.counts == expected.saturation.counts


def check_random_program(rng, kind: str, word_bits: int, **options) -> dict:
    """One random program's forward and echo on both cores; returns its state and force saturations."""
    size, rows, steps = int(rng.choice([1, 3, 5, 7, 9, 11, 13])), int(rng.integers(1, 4)), int(rng.integers(1, 25))
    emulator, rtl = cores(kind, word_bits, random_params(rng, kind, size), stall_seed=int(rng.integers(0, 3)),
                          **options)
    lim = emulator.config.state.limit
    forcing = random_codes(rng, (rows, steps, size), lim)
    phi, pi = random_codes(rng, (rows, size), lim), random_codes(rng, (rows, size), lim)
    forward = emulator.forward_int(forcing, phi, pi)
    assert_same_run(forward, rtl.forward_int(forcing, phi, pi))
    nudges = random_codes(rng, (rows, steps, size), lim // 8)
    echo = emulator.echo_int(forcing, forward.phi, forward.pi, nudges)
    assert_same_run(echo, rtl.echo_int(forcing, forward.phi, forward.pi, nudges))
    return {name: forward.saturation.counts[name] + echo.saturation.counts[name] for name in ("state", "force")}


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the programs saturate on purpose
@pytest.mark.parametrize("kind, word_bits", DEFAULT_BANKS)
def test_fifty_random_programs_equal_the_emulator(kind, word_bits):
    rng = np.random.default_rng(word_bits)
    saturations = [check_random_program(rng, kind, word_bits) for _ in range(50)]
    # the clamps were exercised, and so were runs that never clamp
    assert sum(s["state"] > 0 for s in saturations) >= 5 and sum(s["force"] > 0 for s in saturations) >= 5
    assert sum(not any(s.values()) for s in saturations) >= 5


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("kind, word_bits", DEFAULT_BANKS)
def test_a_folded_pipeline_equals_the_emulator(kind, word_bits, tmp_path):
    """generate_core(fold=3), the board image's bank (three stages a register stage for its 12 MHz
    clock: fewer flip-flops, a shallower pipeline), on random programs with stalls and saturation."""
    rng = np.random.default_rng(40 + word_bits)
    saturations = [check_random_program(rng, kind, word_bits, fold=3) for _ in range(12)]
    assert sum(s["state"] > 0 for s in saturations) >= 1 and sum(s["force"] > 0 for s in saturations) >= 1
    depths = []
    for fold in (1, 3):
        _, rtl = cores(kind, word_bits, random_params(rng, kind, 3), fold=fold)
        depths.append(rtl.simulation().design.pipeline_depth)
    assert depths[1] <= depths[0] // 2 + 1   # the folded bank is the shallower one
    with pytest.raises(ValueError, match="fold = 0: at least one pipeline stage per register stage"):
        generate_core(FormatConfig(word_bits), kind, tmp_path, lanes=32, oscillators=16, fold=0)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("kind, word_bits", SWEEP)
def test_random_programs_across_word_lengths_equal_the_emulator(kind, word_bits):
    rng = np.random.default_rng(100 + word_bits)
    for _ in range(6):
        check_random_program(rng, kind, word_bits)


@pytest.mark.parametrize("kind, word_bits", DEFAULT_BANKS)
def test_fifty_thousand_steps_forward_flip_and_back_return_the_start_exactly(kind, word_bits):
    """On the RTL alone: 50,000 steps forward; then (a) the hardware flip (FLIP register) and 50,000 steps
    on the reversed forcing, and (b) the un-nudged echo pair — both end at the start state, bit for bit."""
    rng = np.random.default_rng(7)
    size, steps = 3, 50_000
    params = OscillatorParams(kind, a=rng.uniform(0.5, 1.5, size), delta=rng.uniform(0.1, 0.3, size),
                              w=rng.uniform(0.5, 1.0, size), b=rng.normal(0, 0.1, size), c=rng.uniform(0.2, 0.5, size))
    _, rtl = cores(kind, word_bits, params)
    lim = rtl.config.state.limit
    forcing = rng.integers(-lim // 256, lim // 256, (1, steps, size))
    phi, pi = rng.integers(-lim // 16, lim // 16, (1, size)), rng.integers(-lim // 16, lim // 16, (1, size))
    forward = rtl.forward_int(forcing, phi, pi)
    assert forward.saturation.reversible and not np.array_equal(forward.phi, phi)
    flipped = rtl.simulation().run(mode="forward", params=rtl.param_codes, phi=forward.phi[0], pi=forward.pi[0],
                                   forcing=forcing[0, ::-1].reshape(-1), steps=steps, flip=True)
    np.testing.assert_array_equal(flipped.phi, phi[0])
    np.testing.assert_array_equal(flipped.pi, -pi[0])
    echo = rtl.echo_int(forcing, forward.phi, forward.pi, np.zeros_like(forcing))
    for sign in (0, 1):
        np.testing.assert_array_equal(echo.phi[sign], phi)
        np.testing.assert_array_equal(echo.pi[sign], -pi)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("kind, word_bits", DEFAULT_BANKS)
def test_icarus_agrees_with_verilator_and_the_emulator(kind, word_bits):
    """A second simulator on a few short programs (Icarus runs ~1000× slower than Verilator), the same
    programs on Verilator (the default builds)."""
    rng = np.random.default_rng(3)
    for _ in range(2):
        state = rng.bit_generator.state
        check_random_program(rng, kind, word_bits, simulator="icarus")
        rng.bit_generator.state = state
        check_random_program(rng, kind, word_bits, simulator="verilator")


def test_a_missing_simulator_is_one_line_with_its_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    for simulator, package in (("verilator", "verilator"), ("icarus", "iverilog")):
        with pytest.raises(sim.SimulatorMissing, match=f"install it with `apt-get install {package}`"):
            RTLCore(FormatConfig(16), simulator=simulator)
    with pytest.raises(ValueError, match="unknown simulator"):
        sim.require("modelsim")


def test_generate_writes_the_design_its_tables_and_register_map(tmp_path):
    """The files synthesis reads: the Verilog, the $readmemh tables holding the emulator's integers, the
    parameter codes, and a register map whose addresses are distinct."""
    import json

    from echoforge.targets.emulator.lower import BankProgram

    config = FormatConfig(16)
    params = random_params(np.random.default_rng(0), "nonlinear", 5)
    design = generate(BankProgram("bank0", params, config), tmp_path, batch=4)
    assert design.lanes == 64 and design.oscillators == 8 and design.pipeline_depth >= 10
    assert "module echoforge_bank" in design.sources[0].read_text()
    table = EmulatorCore(config).functions.tanh_table
    low = [int(line, 16) for line in (tmp_path / "tanh_low.hex").read_text().split()]
    assert low == table.values[:-1].tolist()
    core = EmulatorCore(config)
    core.load(params)
    width = config.word_bits
    delta = [int(line, 16) for line in (tmp_path / "param_delta.hex").read_text().split()][:5]
    assert [v - (v >> (width - 1) << width) for v in delta] == core.param_codes[1].tolist()
    regmap = json.loads(design.regmap.read_text())
    addresses = [r["address"] for r in regmap["control"]["registers"].values()]
    bases = [regmap[region]["base"] for region in ("params", "phi", "pi", "acc")]
    assert len(set(addresses + bases)) == len(addresses) + len(bases)
    assert regmap["acc"]["rows"] == {"mm": 0, "pp": 1, "t": 2, "tm": 3, "lc": 4}
    names = {name for name, _, _ in design.multipliers}
    assert {"delta_pi", "w_m", "c_t", "a_m", "delta_force", "delta_pi_new"} <= names


def test_the_plan_the_design_rules_read_is_what_generate_writes(tmp_path):
    """rtl.plan (no files) names the multipliers and every memory generate_core instantiates, the block-RAM
    delay lines included, and each delay line is a memory in the Verilog."""
    from echoforge.targets.fpga.rtl import generate_core, plan

    config = FormatConfig(16)
    planned = plan(config, "linear", lanes=512, oscillators=16)
    design = generate_core(config, "linear", tmp_path, lanes=512, oscillators=16)
    assert planned.multipliers == design.multipliers and planned.memories == design.memories
    lines = [m for m in planned.memories if "_delay_" in m.name]
    assert lines, "a 16-oscillator bank carries its long delays in block RAM"
    verilog = design.sources[0].read_text()
    for line in lines:
        assert f"reg [{line.width - 1}:0] {line.name} [0:{line.depth - 1}];" in verilog


@pytest.mark.parametrize("kind, word_bits", DEFAULT_BANKS)
def test_accumulators_near_their_limit_clamp_and_count_as_the_kernels_do(kind, word_bits):
    """Echo chunks continued from accumulators a few products below ±2^62 (a stream's carried state):
    the RTL's split 65-bit adds and its clamp from the top bits give the kernels' values and counts."""
    from echoforge.targets.emulator.fixed import ACC_LIMIT
    from echoforge.targets.emulator.kernels import ACCUMULATORS

    rng = np.random.default_rng(11)
    size, rows, steps = 5, 2, 12
    emulator, rtl = cores(kind, word_bits, random_params(rng, kind, size))
    lim = emulator.config.state.limit
    forcing, nudges = random_codes(rng, (rows, steps, size), lim // 8), rng.integers(-lim, lim + 1, (rows, steps, size))
    phi, pi = rng.integers(-lim, lim + 1, (rows, 2, size)), rng.integers(-lim, lim + 1, (rows, 2, size))
    margin = rng.integers(0, 4 * lim * lim, (rows, len(ACCUMULATORS), size))
    acc = np.where(rng.random(margin.shape) < 0.5, ACC_LIMIT - margin, margin - ACC_LIMIT)
    results = []
    for core in (emulator, rtl):
        state = [np.array(x) for x in (phi, pi, acc)]
        observable, counters = np.empty_like(forcing), np.zeros(4, dtype=np.int64)
        core._bank_echo(forcing, nudges, *state[:2], state[2], observable, counters, core._conversion(),
                        np.ones(size), np.zeros(3, dtype=np.int64))
        results.append((state, observable, counters))
    (expected, expected_obs, expected_counts), (got, got_obs, got_counts) = results
    for name, a, b in zip(("phi", "pi", "acc"), expected, got):
        np.testing.assert_array_equal(b, a, err_msg=name)
    np.testing.assert_array_equal(got_obs, expected_obs)
    np.testing.assert_array_equal(got_counts, expected_counts)
    assert expected_counts[3] > 0 and np.any(np.abs(expected[2]) == ACC_LIMIT)  # clamps happened
