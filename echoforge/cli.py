"""The `echoforge` command: one subcommand per job.

User mistakes (bad config, missing file, malformed data) print one line on stderr and exit 2; a
traceback means a bug in echoforge.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .argtypes import OneLineParser, key_value, non_negative_int, positive_int

from .compiler.cli import add_commands as add_compiler_commands
from .demo import add_demo
from .targets.fpga.gateware.cli import add_commands as add_gateware_commands
from .hil.cli import add_commands as add_hil_commands
from .runtime.cli import add_commands as add_runtime_commands
from .targets.analog.calibration_cli import add_command as add_calibrate

USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, KeyError)


def add_train(commands) -> None:
    parser = commands.add_parser(
        "train", help="train an HSSM on a dataset (BPTT or RHEL)",
        description="Train an HSSM as CONFIG says (the embedded BasicMotions default without one).")
    parser.add_argument("config", nargs="?", help="YAML config; keys not given keep their defaults")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", type=key_value,
                        help="override a config key, e.g. --set model.hidden_size=32 (repeatable)")
    parser.add_argument("--learning", choices=("bptt", "rhel"), help="learning rule of every HRU")
    parser.add_argument("--steps", type=positive_int, help="number of optimizer steps (with --resume: extends the run)")
    parser.add_argument("--seed", type=non_negative_int, help="seed of data split, initialisation and dropout")
    parser.add_argument("--output", "-o", help="run directory")
    parser.add_argument("--resume", metavar="DIR", help="continue the run in DIR where it stopped")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch threads (default 1: small recurrent models gain nothing from more)")
    parser.add_argument("--nproc", type=positive_int, default=1,
                        help="data-parallel ranks on this machine, the global batch split over them (default 1; "
                             "under torchrun: the launcher's ranks, docs/scale.md)")
    parser.set_defaults(run=run_train)


def run_train(args) -> int:
    import torch

    from .models import distributed
    from .models.training import Trainer, describe, load_config, resume_config

    torch.set_num_threads(args.threads)
    flags = {"learning": args.learning, "steps": args.steps, "seed": args.seed, "output": args.output}
    overrides = args.overrides + [f"{k}={v}" for k, v in flags.items() if v is not None]
    if args.resume:
        if not (Path(args.resume) / "last.pt").exists():
            raise FileNotFoundError(f"{args.resume}: no last.pt to resume from — is this a run directory?")
        if args.config:
            raise ValueError(f"--resume {args.resume} continues that run with its own config; drop {args.config}")
        config = resume_config(args.resume, overrides)
        output = Path(args.resume)
    else:
        config = load_config(args.config, overrides)
        output = Path(config["output"])
    if args.nproc > 1 and not distributed.launched():
        distributed.rows_per_rank(config["batch_size"], args.nproc)
        return distributed.launch(args.nproc, args.argv)

    def train(ranks) -> int:
        trainer = distributed.make_trainer(Trainer, ranks, config, output)
        summary = trainer.run(resume=bool(args.resume), progress=False if args.no_progress else None)
        if summary is not None:
            print(describe(summary, output))
        return 0

    return distributed.run_as_rank(train)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="echoforge", description="Train Hamiltonian state-space models with RHEL and take them to hardware.")
    parser.add_argument("--version", action="version", version=f"echoforge {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train(commands)
    add_compiler_commands(commands)
    add_runtime_commands(commands)
    add_hil_commands(commands)
    add_calibrate(commands)
    add_demo(commands)
    add_gateware_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command again, for the ranks `--nproc` starts
    try:
        return args.run(args)
    except USER_ERRORS as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"echoforge {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"echoforge {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
