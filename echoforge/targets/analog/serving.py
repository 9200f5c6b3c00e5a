"""`echoforge board serve --target analog-twin`: the twin behind the device protocol or as SCPI instruments.

The board simulator (runtime/board.py) asks the board kind for one core per bank of each program it
loads; ``twin_cores`` builds AnalogTwins from the settings `board serve` gave (by default the
lc-tank-pcb board, seeds 0). The twin plays the firmware: it maps the parameter codes it
receives onto its oscillators with its own calibration. Bank k sits on the board's oscillators after
bank k − 1's (the simulator's BankSlot), with their mismatch; each core gets its own noise stream,
numbered in the order the cores are made. On a board that can apply echo gain the echo is the
dissipation-compensated one (twin.py; γ̂ from the calibration's Q, else the board's nominal Q) unless
--no-echo-compensation: then plain RHEL, the echo keeping the board's loss.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import dataclass

from .board import Board, load_board
from .calibration_file import Calibration, load_calibration


@dataclass(frozen=True)
class TwinSettings:
    board: Board
    calibration: Calibration | None = None
    fabrication_seed: int = 0
    noise_seed: int = 0
    echo_compensation: bool = True


def serve(args) -> int:
    """Apply `board serve`'s --board, --calibration and seeds (ValueError on a bad file), compile the
    twin's kernel so that the board answers its first run at once, then serve the SCPI instruments
    (--scpi) or the device protocol with one twin core per bank."""
    from echoforge.runtime.cli import serve_protocol

    board = load_board(args.board)
    calibration = load_calibration(args.calibration, board) if args.calibration else None
    settings = TwinSettings(board, calibration, args.fabrication_seed, args.noise_seed, not args.no_echo_compensation)
    warm_up(board)
    if args.scpi is not None:
        from .scpi import serve as serve_instruments

        return serve_instruments(settings, args.host, args.scpi)
    hello = argparse.Namespace(**{**vars(args), "target": "analog"})  # HELLO's target family (protocol §10.3)
    return serve_protocol(hello, twin_cores(settings), capabilities(board))


def capabilities(board: Board):
    """What HELLO reports: linear banks, the board's oscillators over all banks of a program."""
    from dataclasses import replace

    from echoforge.runtime.commands import Capabilities

    return replace(Capabilities(), hru_kinds=("linear",), max_oscillators=board.oscillators)


def twin_cores(settings: TwinSettings):
    """The board simulator's core factory: a fresh AnalogTwin per bank on the bank's oscillators (its
    BankSlot), each with its own noise stream, numbered in the order the cores are made."""
    from .twin import AnalogTwin

    numbers = itertools.count()
    return lambda config, slot: AnalogTwin(settings.board, config, fabrication_seed=settings.fabrication_seed,
                                           noise_seed=(settings.noise_seed, next(numbers)),
                                           calibration=settings.calibration, first_oscillator=slot.first_oscillator,
                                           echo_compensation=settings.echo_compensation)


def warm_up(board: Board) -> None:
    """Run the physics kernel once (numba compiles it, or loads it from its cache)."""
    import numpy as np

    from .physics import Oscillators

    oscillators = Oscillators(board.ideal())
    oscillators.program(0, {name: np.zeros(1, dtype=np.int64)
                            for name in ("frequency_hz", "input_gain", "readout_gain")})
    oscillators.start(np.zeros((1, 1, 1)), np.zeros((1, 1, 1)))
    oscillators.advance(np.zeros((1, 1, 1, 1), dtype=np.int64))
