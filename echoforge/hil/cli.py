"""`echoforge hil train`: fine-tune a compiled model with its HRU banks on a board (docs/hil.md).

    echoforge hil train --device /dev/ttyUSB0 --program build/bm [CONFIG.yaml] [--output runs/hil]
    echoforge hil train --device /dev/ttyUSB0 --resume runs/hil
    echoforge hil train --device /dev/pts/3 --device /dev/pts/5 --program build/bm   # one rank per board

A board that cannot be reached, or stops answering, is a user error like a bad config: one line on
stderr naming it, exit 2; a run stopped that way keeps its last completed step in a checkpoint and
continues from it with --resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from ..argtypes import key_value, non_negative_int, positive_float, positive_int

if TYPE_CHECKING:
    from ..targets.emulator.lower import Program

DEFAULT_TIMEOUT = 2.0


class RunPlan(NamedTuple):
    """What a new or resumed HIL run trains, where, and how often the fidelity monitor looks."""

    config: dict
    output: Path
    program: Program
    program_dir: str
    fidelity_every: int


class BoardUnavailable(ValueError):
    """The board at the URI cannot be reached or stopped answering; the message says which and why."""


def add_commands(commands) -> None:
    """Add `hil train` to the `echoforge` subcommands."""
    hil = commands.add_parser("hil", help="hardware-in-the-loop training",
                              description="Train with the HRU banks on a board, the host layers in torch.")
    actions = hil.add_subparsers(dest="action", required=True, metavar="ACTION")
    train = actions.add_parser(
        "train", help="fine-tune a compiled model with its banks on a board",
        description="Fine-tune the model PROGRAM was compiled from, its HRU banks on the board at URI. CONFIG "
                    "updates the source run's config (steps, optimizer, batch size, …).")
    train.add_argument("config", nargs="?", help="YAML config; keys not given keep the source run's")
    boards = train.add_mutually_exclusive_group(required=True)
    boards.add_argument("--device", action="append", metavar="URI",
                        help="the board: /dev/ttyUSB0, /dev/pts/N, socket://host:port, ASRL…::INSTR, TCPIP::…::SOCKET; "
                             "repeated: one rank per board, the batch split over them (docs/scale.md)")
    boards.add_argument("--devices", metavar="FILE", help="the boards' URIs, one per line (one rank per board)")
    train.add_argument("--program", metavar="OUT", help="directory written by `echoforge compile` "
                       "(with --resume: default the run's own)")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", type=key_value,
                       help="override a config key, e.g. --set optimizer.lr=1e-3 (repeatable)")
    train.add_argument("--steps", type=positive_int, help="number of optimizer steps (with --resume: extends the run)")
    train.add_argument("--output", "-o", help="run directory (default runs/hil)")
    train.add_argument("--resume", metavar="DIR", help="continue the HIL run in DIR where it stopped")
    train.add_argument("--fidelity-every", type=non_negative_int, metavar="N",
                       help="compare the device's gradient with the emulator's and float BPTT's every N steps "
                            "(0: never; default 10, or the run's own with --resume)")
    train.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT,
                       help=f"seconds a board may take to answer a call (default {DEFAULT_TIMEOUT})")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    train.set_defaults(run=run_hil_train)


def run_hil_train(args) -> int:
    import torch

    from ..models import distributed
    from .distributed import read_devices

    torch.set_num_threads(args.threads)
    devices = read_devices(args.devices) if args.devices else args.device
    plan = _plan(args)
    if len(devices) > 1 and not distributed.launched():
        distributed.rows_per_rank(plan.config["batch_size"], len(devices))
        return distributed.launch(len(devices), args.argv)
    return distributed.run_as_rank(lambda ranks: _train_on_board(args, plan, devices, ranks))


def _train_on_board(args, plan: RunPlan, devices: list[str], ranks) -> int:
    """This rank's part of the run, on its board; a board that fails is one line naming it."""
    from ..models.distributed import make_trainer
    from ..runtime.device import Device
    from .distributed import BoardParallel, board_of, stopped_at
    from .report import describe
    from .trainer import BOARD_FAILURES, HILTrainer

    try:
        with Device(board_of(devices, ranks), timeout=args.timeout) as device:
            trainer = make_trainer(HILTrainer, ranks, plan.config, plan.output, plan.program, plan.program_dir,
                                   device, fidelity_every=plan.fidelity_every, mixin=BoardParallel)
            summary = trainer.run(resume=bool(args.resume), progress=False if args.no_progress else None)
    except BOARD_FAILURES as error:
        rank = f"rank {ranks.rank} of {ranks.size}: " if ranks else ""
        raise BoardUnavailable(f"{rank}{error}{stopped_at(plan.output)}") from None
    if summary is not None:
        print(describe(summary, plan.output))
    return 0


def _plan(args) -> RunPlan:
    from ..models.training import resume_config
    from ..targets.emulator.lower import load_program
    from .trainer import DEFAULT_FIDELITY_EVERY, check_same_program, hil_config, read_run_file

    flags = {"steps": args.steps, "output": args.output}
    overrides = args.overrides + [f"{key}={value}" for key, value in flags.items() if value is not None]
    if args.resume:
        if args.config:
            raise ValueError(f"--resume {args.resume} continues that run with its own config; drop {args.config}")
        recorded = read_run_file(args.resume)
        program_dir = args.program or recorded["program"]
        program = load_program(program_dir)
        check_same_program(program, program_dir, recorded, args.resume)
        every = recorded["fidelity_every"] if args.fidelity_every is None else args.fidelity_every
        return RunPlan(resume_config(args.resume, overrides), Path(args.resume), program, program_dir, every)
    if args.program is None:
        raise ValueError("give the compiled program with --program OUT (or --resume DIR)")
    program = load_program(args.program)
    config = hil_config(program, args.program, args.config, overrides)
    every = DEFAULT_FIDELITY_EVERY if args.fidelity_every is None else args.fidelity_every
    return RunPlan(config, Path(config["output"]), program, args.program, every)
