"""`echoforge export | compile | emulate`: a trained model to ONNX, to a target program, and back to
numbers that say what the hardware will do with it.

    echoforge export runs/bm -o bm.onnx
    echoforge compile runs/bm --target emulator -o build/bm [--data DATASET] [--word-bits N]
    echoforge compile runs/bm --target fpga-up5k -o build/bm-fpga    # any registered target
    echoforge emulate build/bm [--data DATASET] [--split test] [--trace]

A model from a run (directory or checkpoint) brings its dataset, split seed and time channel; an
ONNX or HWIR file does not, so it needs --data. Data that saturate a bank make compile and emulate
fail with one line naming the program and the bank, after the numbers are printed and written
(--allow-saturation accepts them).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ..argtypes import headroom_bits, non_negative_float, non_negative_int, positive_int

WITHOUT_RUN = (".onnx", ".yaml", ".yml")  # model files that carry no training config
DEFAULT_MAX_CHANGE = 2.0  # percent: accuracy points, or the MSE's relative rise (--max-change)


def add_commands(commands) -> None:
    """Add export, compile and emulate to the `echoforge` subcommands."""
    add_export(commands)
    add_compile(commands)
    add_emulate(commands)


def add_export(commands) -> None:
    parser = commands.add_parser("export", help="write a trained model as ONNX",
                                 description="Write the model of CHECKPOINT (a run directory or .pt) as ONNX.")
    parser.add_argument("checkpoint", help="run directory (its best.pt) or checkpoint file")
    parser.add_argument("--output", "-o", required=True, help="the .onnx file to write")
    parser.set_defaults(run=run_export)


def _evaluation_options(parser) -> None:
    parser.add_argument("--batch-size", type=positive_int, default=64,
                        help="sequences per emulator call (default 64)")
    parser.add_argument("--allow-saturation", action="store_true",
                        help="exit 0 even when the data saturate a bank (the counts are still reported)")
    parser.add_argument("--max-change", type=non_negative_float, default=DEFAULT_MAX_CHANGE, metavar="PERCENT",
                        help="largest loss of the score fixed point may cause and still exit 0: accuracy points, or "
                             f"the MSE's rise in percent of float's (default {DEFAULT_MAX_CHANGE:g})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")


def add_compile(commands) -> None:
    parser = commands.add_parser(
        "compile", help="compile a model for a target and report what fixed point changes",
        description="Compile MODEL for TARGET into the directory OUT: the program (program.yaml, "
                    "model.yaml, model.npz) and report.md / report.json — per-node formats, calibrated "
                    "ranges, headroom, saturation risk, and float vs fixed accuracy on the validation split.")
    parser.add_argument("model", help="run directory, checkpoint (.pt), ONNX (.onnx) or HWIR (.yaml)")
    from ..targets import targets

    registered = targets()
    parser.add_argument("--target", choices=sorted(registered), default="emulator", metavar="TARGET",
                        help="; ".join(f"{name}: {t.summary}" for name, t in sorted(registered.items()))
                        + " (default emulator)")
    parser.add_argument("--output", "-o", required=True, metavar="OUT", help="directory to write")
    parser.add_argument("--data", metavar="DATASET",
                        help="calibration and validation data (default: the run's dataset)")
    parser.add_argument("--word-bits", type=positive_int, help="word length (default: the target's)")
    parser.add_argument("--headroom-bits", type=headroom_bits, default=1.0,
                        help="bits of range kept above the calibrated values (default 1; more for training "
                             "in the loop, where the ranges grow as the parameters move)")
    parser.add_argument("--samples", type=positive_int, default=64,
                        help="training sequences the formats are calibrated on (default 64)")
    parser.add_argument("--seed", type=non_negative_int, help="data split seed (default: the run's, else 0)")
    parser.add_argument("--time-channel", action=argparse.BooleanOptionalAction,
                        help="append the time channel to the data (default: as the run did)")
    _evaluation_options(parser)
    sharing = {}  # targets of one folder (e.g. FPGA parts) share their options: add them once
    for name, registered_target in sorted(registered.items()):
        if registered_target.add_options:
            sharing.setdefault(registered_target.add_options, []).append(name)
    for add_options, names in sharing.items():
        add_options(parser.add_argument_group(f"--target {' | '.join(names)}"))
    parser.set_defaults(run=run_compile)


def add_emulate(commands) -> None:
    parser = commands.add_parser(
        "emulate", help="run a compiled program on the emulator: float vs fixed accuracy",
        description="Run the program in OUT on a data split, float and fixed point side by side, and "
                    "print both scores and the saturation counts per bank.")
    parser.add_argument("program", metavar="OUT", help="directory written by `echoforge compile`")
    parser.add_argument("--data", metavar="DATASET", help="dataset (default: the one the program was "
                        "calibrated on, split and normalised the same way)")
    parser.add_argument("--split", choices=("train", "val", "test"), default="test", help="default test")
    parser.add_argument("--trace", action="store_true",
                        help="also print every node's float-vs-fixed error on the first batch")
    parser.add_argument("--output", "-o", metavar="FILE.json",
                        help="also write the scores, saturation counts and (with --trace) the trace as JSON")
    _evaluation_options(parser)
    parser.set_defaults(run=run_emulate)


# ------------------------------------------------------------------------------------ commands


def run_export(args) -> int:
    from .frontend_checkpoint import from_checkpoint
    from .onnx_export import export_onnx

    ir = from_checkpoint(args.checkpoint)
    path = export_onnx(ir, args.output)
    print(f"wrote {path}: {len(ir.nodes)} nodes, {sum(w.size for w in ir.weights.values())} weights, "
          f"from {ir.provenance.source}")
    return 0


def run_compile(args) -> int:
    _check_word_bits(args.target, args.word_bits)  # before the imports and data: a typo fails at once
    import torch

    from ..targets.emulator.emulated import EmulatedModel
    from ..targets.emulator.lower import lower, save_program
    from .pipeline import compile_model
    from .report import build_report, compare, write_report

    torch.set_num_threads(args.threads)
    options = _compile_dataset(Path(args.model), args)
    data = _load(options)
    samples = data.train.x[:args.samples]
    ir = compile_model(args.model, args.target, samples, word_bits=args.word_bits, headroom_bits=args.headroom_bits)
    _check_data(ir, data, options["name"], args.model)
    program = lower(ir, dataset=options)
    emulated = EmulatedModel(program)
    validation = compare(emulated, data.val.x, data.val.y, f"{options['name']} val",
                         batch_size=args.batch_size, progress=_progress(args))
    program_file = save_program(program, args.output)
    build = _build_for_target(program, args, data, validation)
    calibration = {"data": f"{options['name']} train"}
    write_report(build_report(program, validation, calibration, build), args.output)
    print(f"compiled {ir.provenance.source} for the {args.target} ({ir.target['word_bits']}-bit words): "
          f"{len(program.banks)} banks on the device, {len(ir.nodes) - len(program.banks)} nodes on the host")
    for bank in program.banks:
        print(f"  {bank.node}: {bank.params.size} {bank.params.kind} oscillators, state {bank.config.state}")
    print(f"expected change on {validation.describe()}")
    print(f"wrote {program_file} (+ model.yaml, model.npz, report.md, report.json)")
    if build is not None:
        print("\n".join([f"{build.title}:", *build.lines]))
    _refuse_saturation(validation, program_file, args.allow_saturation)
    _refuse_change(validation, program_file, args.max_change)
    if build is not None and build.findings:
        more = f" (and {len(build.findings) - 1} more in report.md)" if len(build.findings) > 1 else ""
        raise ValueError(f"{program_file}: {args.target}: {build.findings[0]}{more}")
    return 0


def run_emulate(args) -> int:
    import torch

    from ..targets.emulator.emulated import EmulatedModel
    from ..targets.emulator.lower import PROGRAM_FILE, load_program
    from .report import compare, trace_errors, trace_table

    torch.set_num_threads(args.threads)
    _check_compiled(Path(args.program))
    program = load_program(args.program)
    options = _emulate_dataset(program.dataset, args.data, Path(args.program))
    data = _load(options)
    split = getattr(data, args.split)
    _check_data(program.ir, data, options["name"], args.program)
    emulated = EmulatedModel(program)
    comparison = compare(emulated, split.x, split.y, f"{options['name']} {args.split}",
                         batch_size=args.batch_size, progress=_progress(args))
    print(f"{args.program} on the emulator, {comparison.describe()}")
    rows = trace_errors(emulated, split.x[:args.batch_size]) if args.trace else []
    if rows:
        print(f"\nfloat vs fixed, node by node, on the first {min(len(split.x), args.batch_size)} sequences:")
        print(trace_table(rows))
    if args.output:
        _write_json(args.output, {"program": str(args.program), "split": args.split, **comparison.to_json(),
                                  "trace": [dataclasses.asdict(row) | {"relative": row.relative} for row in rows]})
    _refuse_saturation(comparison, Path(args.program) / PROGRAM_FILE, args.allow_saturation)
    _refuse_change(comparison, Path(args.program) / PROGRAM_FILE, args.max_change)
    return 0


# ------------------------------------------------------------------------------------ helpers


def _build_for_target(program, args, data, validation):
    """The target's own artifacts and report section (RTL, synthesis, a board mapping), if it has any."""
    from ..targets import BuildContext, target

    chosen = target(args.target)
    if chosen.build is None:
        return None
    return chosen.build(BuildContext(program, Path(args.output), args, data, validation))


def _progress(args) -> bool | None:
    return False if args.no_progress else None


def _compile_dataset(model: Path, args) -> dict:
    """The data protocol to calibrate with: the run's, with --data/--seed/--time-channel applied."""
    from .frontend_checkpoint import run_config

    config = None if model.suffix in WITHOUT_RUN else run_config(model)
    if config is None and args.data is None:
        raise ValueError(f"{model}: an {model.suffix} file does not say which data the model was trained "
                         "on — give --data DATASET")
    protocol = _for_data({**config["dataset"], "seed": config["seed"]} if config else {}, args.data)
    flags = {"seed": args.seed, "time_channel": args.time_channel}
    return protocol | {key: value for key, value in flags.items() if value is not None}


def _emulate_dataset(recorded: dict | None, data: str | None, program: Path) -> dict:
    """The program's calibration protocol, or --data read with its seed and time channel."""
    if not recorded and data is None:
        raise ValueError(f"{program}: the program records no dataset — give --data DATASET")
    return _for_data(recorded or {}, data)


def _for_data(protocol: dict, data: str | None) -> dict:
    """`protocol` itself for its own dataset; for another, the same split seed and time channel."""
    if data is None or data == protocol.get("name"):
        return protocol
    return {"name": data, "seed": protocol.get("seed", 0), "time_channel": protocol.get("time_channel", False)}


def _check_data(ir, data, name: str, model: str) -> None:
    """The data fit the model: as many channels as its input, as many classes (or targets) as its head."""
    width = next(node for node in ir.nodes if node.kind == "input").shape[-1]
    if data.num_inputs != width:
        raise ValueError(f"{name}: the data have {data.num_inputs} channels but the model in {model} takes "
                         f"{width} — give the dataset it was trained on, with the same time channel")
    outputs = next(node for node in ir.nodes if node.name == ir.outputs[0]).shape[-1]
    if data.num_outputs != outputs:
        what = "targets" if data.task == "regression" else "classes"
        raise ValueError(f"{name}: the data have {data.num_outputs} {what} but the model in {model} has "
                         f"{outputs} outputs — give the dataset it was trained on (--data)")


def _write_json(path: str, document: dict) -> None:
    import json

    try:
        Path(path).write_text(json.dumps(document, indent=2) + "\n")
    except OSError as error:
        raise ValueError(f"cannot write {path}: {error.strerror}") from None
    print(f"wrote {path}")


def _check_compiled(directory: Path) -> None:
    """A run directory or a model file where a compiled program belongs: say what to do."""
    from .frontend_checkpoint import CHECKPOINTS

    if directory.is_file() or any((directory / name).exists() for name in CHECKPOINTS):
        raise ValueError(f"{directory} is a trained model, not a compiled program — compile it first: "
                         f"echoforge compile {directory} -o OUT, then echoforge emulate OUT")


def _check_word_bits(target: str, word_bits: int | None) -> None:
    """Refuse a word length the target cannot run before any data are loaded."""
    from ..targets import capabilities

    allowed = capabilities(target).word_bits
    if word_bits is not None and word_bits not in allowed:
        raise ValueError(f"--word-bits {word_bits}: the {target} target takes words of "
                         f"{min(allowed)}–{max(allowed)} bits")


def _refuse_change(comparison, program_file: Path, max_change: float) -> None:
    """One line when fixed point costs more of the score than `max_change` (percent, see --max-change)."""
    from .errors import fail
    from .report import change_text

    if comparison.metric == "accuracy":
        loss, unit = 100 * (comparison.float - comparison.fixed), "points of accuracy"
    else:
        loss, unit = 100 * comparison.change / max(comparison.float, 1e-300), "% more MSE"
    if loss > max_change:
        raise fail(str(program_file), None, f"[score] fixed point costs {loss:.1f} {unit} on {comparison.data} "
                   f"({change_text(comparison.to_json())}), more than --max-change {max_change:g}",
                   "use a longer word (--word-bits) or less headroom (--headroom-bits), or pass a larger "
                   "--max-change to accept it")


def _load(options: dict):
    from ..models.data import load_dataset

    options = dict(options)
    return load_dataset(options.pop("name"), **options)


def _refuse_saturation(comparison, program_file: Path, allowed: bool) -> None:
    """One line naming the program, the first bank that saturated and the rule; no-op if allowed."""
    from .errors import fail

    if allowed or not comparison.saturation:
        return
    node, counts = next(iter(comparison.saturation.items()))
    more = len(comparison.saturation) - 1
    raise fail(str(program_file), node, f"[saturation] {sum(counts.values())} values saturated on "
               f"{comparison.data} ({', '.join(f'{q}={n}' for q, n in counts.items())})"
               + (f", and {more} more bank(s) saturated" if more else ""),
               "these data leave the calibrated ranges: recompile with calibration data like them or a "
               "longer word (--word-bits), or pass --allow-saturation")
