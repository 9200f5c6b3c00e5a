"""`echoforge compile --target analog --board BOARD [--calibration CAL.yaml]`: the mapping of every device
bank onto the board, its design rules, and the accuracy to expect on the board.

    OUT/mapping.yaml   per bank and oscillator: target, tuning code, programmed and expected frequency,
                       input and readout gain; the forcing and position scales; the board and calibration

Banks sit on consecutive oscillators of the board (bank 0 from oscillator 0). A frequency or gain
outside the board's range, or more oscillators than it has, is a finding naming node, oscillator,
parameter and limit: compile prints the report and exits 2. Otherwise the program's banks run on the
board's twin (fabrication seed --fabrication-seed, noise seed 0) over the validation split, beside the
float model and the fixed-point emulator: the report states the change the board is expected to make.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from echoforge.compiler.report import change_text, compare
from echoforge.targets import BuildContext, TargetReport

from .board import load_board
from .calibration_file import load_calibration
from .mapping import QUANTITIES, map_bank

MAPPING_FILE = "mapping.yaml"
MAPPING_VERSION = "1.0"


def build(ctx: BuildContext) -> TargetReport:
    args = ctx.args
    if not args.board:
        raise ValueError("--target analog needs --board BOARD (a shipped board: lc-tank-pcb, on-chip-array, "
                         "or a board YAML file; docs/analog.md)")
    board = load_board(args.board)
    calibration = load_calibration(args.calibration, board) if args.calibration else None
    mappings, first = [], 0
    for bank in ctx.program.banks:
        mappings.append(map_bank(board, bank.params, bank.config.state.max_value, node=bank.node, first=first,
                                 calibration=calibration))
        first += bank.params.size
    findings = [finding for mapping in mappings for finding in mapping.findings]
    _write_mapping(ctx.output / MAPPING_FILE, board, calibration, mappings)
    data = {"board": board.id, "board_file": board.source, "calibration": calibration and calibration.source,
            "oscillators_used": first, "oscillators": board.oscillators, "mapping": MAPPING_FILE,
            "ranges": _ranges(mappings)}
    if not findings:
        data["twin"] = _on_twin(ctx, board, calibration).to_json() | {"fabrication_seed": args.fabrication_seed}
        data["emulator"] = ctx.validation.to_json()
    return TargetReport(f"Analog board: {board.id}", _lines(data, board, findings), data, findings)


def _on_twin(ctx: BuildContext, board, calibration):
    """The validation split with every device bank on the board's twin (banks on consecutive oscillators)."""
    from echoforge.targets.emulator.emulated import EmulatedModel

    from .twin import AnalogTwin

    emulated, first = EmulatedModel(ctx.program), 0
    for bank in ctx.program.banks:
        twin = AnalogTwin(board, bank.config, fabrication_seed=ctx.args.fabrication_seed, noise_seed=0,
                          calibration=calibration, first_oscillator=first)
        twin.load(bank.params)
        emulated.cores[bank.node] = twin
        first += bank.params.size
    return compare(emulated, ctx.data.val.x, ctx.data.val.y, f"{ctx.validation.data} on the twin",
                   batch_size=ctx.args.batch_size, progress=False if ctx.args.no_progress else None)


def _write_mapping(path: Path, board, calibration, mappings) -> None:
    document = {"mapping_version": MAPPING_VERSION, "board": board.id, "board_file": board.source,
                "calibration": calibration and calibration.source, "sample_rate_hz": board.sample_rate_hz,
                "banks": [mapping.to_yaml() for mapping in mappings]}
    path.write_text(yaml.safe_dump(document, sort_keys=False, width=110))


def _ranges(mappings) -> dict:
    """Per quantity, the smallest and largest target over all banks."""
    return {name: [float(np.min(np.concatenate([m.target[name] for m in mappings]))),
                   float(np.max(np.concatenate([m.target[name] for m in mappings])))] for name in QUANTITIES}


def _lines(data: dict, board, findings: list[str]) -> list[str]:
    low_f, high_f = data["ranges"]["frequency_hz"]
    lines = [f"- board `{board.id}` ({board.source}): {data['oscillators_used']} of {board.oscillators} "
             f"oscillators, {board.sample_rate_hz:.4g} samples/s (Δt = {board.dt:.3g} s per HRU step), Q "
             f"{board.quality_factor:g}, mismatch σ {100 * board.mismatch_sigma:g} %, DAC {board.dac.bits} bits, "
             f"ADC {board.adc.bits} bits, tuning {board.tuning_bits} bits",
             f"- natural frequencies {low_f:.4g} … {high_f:.4g} Hz (board {board.natural_frequency_hz[0]:.4g} … "
             f"{board.natural_frequency_hz[1]:.4g} Hz); input gains {data['ranges']['input_gain'][0]:.4g} … "
             f"{data['ranges']['input_gain'][1]:.4g}; readout gain {data['ranges']['readout_gain'][0]:.4g}",
             f"- calibration: {data['calibration'] or 'none (the mapping trusts the nominal tuning curves)'}",
             f"- mapping per oscillator: {MAPPING_FILE}"]
    if findings:
        return lines + [f"- design rule: {finding}" for finding in findings]
    twin, emulator = data["twin"], data["emulator"]
    return lines + [f"- expected on the board (twin, fabrication seed {twin['fabrication_seed']}): "
                    f"{change_text(twin)}; the fixed-point emulator: {change_text(emulator)}",
                    f"- twin outputs within {twin['output_deviation']:.2g} of float (relative)"]
