"""`echoforge demo`: the whole pipeline on the embedded default, in a few minutes.

    train with RHEL on BasicMotions → compile for the emulator → a simulated board on a pseudo-terminal
    → fine-tune in the loop through the serial link → report and plots

Each stage is the echoforge command a user would type, printed before it runs, so the demo is also the
tutorial. Only the board runs in a child process (`runtime.simulator`), stopped when the demo ends,
fails or is interrupted.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from .argtypes import non_negative_int, positive_int

DEFAULT_OUTPUT = "runs/demo"
# Training in the loop moves the parameters and sees training batches (batch statistics, dropout), so the
# ranges grow past the ones calibrated in eval mode: three bits of headroom keep every state unsaturated and
# every echo exactly reversible (docs/hil.md).
HEADROOM_BITS = "3"
# --faults: what the fault-tolerance test injects — 1% of frames dropped and 1% corrupted, both ways,
# and one reboot mid-run (the 100th echo chunk: around the tenth step of the default model).
FAULTS = ("--drop", "0.01", "--corrupt", "0.01", "--reset-at", "ECHO_CHUNK:100", "--seed", "1")


def add_demo(commands) -> None:
    parser = commands.add_parser(
        "demo", help="train, compile, and fine-tune in the loop on a simulated board, end to end",
        description="Train an HSSM with RHEL on BasicMotions, compile it for the emulator target, start a "
                    "simulated board on a pseudo-terminal and fine-tune the model through the serial link; "
                    "print a short report and write checkpoints and plots to OUTPUT.")
    parser.add_argument("--steps", type=positive_int, default=300, help="host training steps (default 300)")
    parser.add_argument("--hil-steps", type=positive_int, default=100, help="in-the-loop fine-tuning steps (default 100)")
    parser.add_argument("--fidelity-every", type=non_negative_int, default=10,
                        help="steps between gradient fidelity checks (default 10)")
    parser.add_argument("--output", "-o", default=DEFAULT_OUTPUT,
                        help=f"directory for everything (default {DEFAULT_OUTPUT}): the HIL run itself, "
                             "train/ and program/")
    parser.add_argument("--faults", action="store_true",
                        help="inject link faults and a board reboot: the result does not change")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=run_demo)


def run_demo(args) -> int:
    from .runtime.simulator import simulated_board

    output = Path(args.output)
    run, program = output / "train", output / "program"
    quiet = ["--no-progress"] if args.no_progress else []
    echoforge("train", "--steps", str(args.steps), "-o", str(run), *quiet)
    echoforge("compile", str(run), "--target", "emulator", "--headroom-bits", HEADROOM_BITS, "-o", str(program), *quiet)
    board = ("--target", "emulator", *(FAULTS if args.faults else ()))
    print(f"\n$ echoforge board serve --pty {shlex.join(board)} &", flush=True)
    with simulated_board(*board) as uri:
        print(f"simulated board on {uri}")
        echoforge("hil", "train", "--device", uri, "--program", str(program), "--steps", str(args.hil_steps),
                  "--fidelity-every", str(args.fidelity_every), "--output", str(output), *quiet)
    print(f"\ndemo done, board stopped: plots (curves.png, fidelity.png) and summary.json in {output}")
    return 0


def echoforge(*argv: str) -> None:
    """Run one echoforge command in this process, printing it first as a user would type it."""
    from .cli import build_parser

    print(f"\n$ echoforge {shlex.join(argv)}", flush=True)
    args = build_parser().parse_args(argv)
    args.run(args)
