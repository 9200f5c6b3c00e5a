"""Every option of every `echoforge` command, given a mistyped or out-of-range value, ends in one line and
exit status 2 (issue 18). The options are found by walking build_parser()'s subcommands, so an option added
later is swept too: a numeric option must refuse a mistyped value, a negative one, NaN and infinity (and
whatever its type lists in OUT_OF_RANGE), a choice option anything off its list, a typed text option
what its type lists in MISTYPED. Parsing alone decides, so nothing runs; a few cases also run as processes."""

from __future__ import annotations

import argparse

import pytest

from echoforge.cli import build_parser
from everyday import echoforge, one_line_error

NUMERIC_BAD = ("abc", "1.5x", "-1", "nan", "inf")


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command path, its parser) for every leaf command."""
    subparsers = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    if not subparsers:
        yield path, parser
    for action in subparsers:
        for name, child in action.choices.items():
            yield from commands(child, (*path, name))


def numeric(kind) -> bool:
    try:
        return isinstance(kind("1"), (int, float))
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return False


def bad_values(action: argparse.Action) -> list[str]:
    if action.choices is not None:
        return ["no-such-choice"]
    if action.type is not None and numeric(action.type):
        return [*NUMERIC_BAD, *getattr(action.type, "OUT_OF_RANGE", ())]
    return list(getattr(action.type, "MISTYPED", ()))


def minimal_argv(parser: argparse.ArgumentParser, skip: argparse.Action) -> list[str]:
    """Placeholders for the required positionals and options, so that only the swept option can fail."""
    argv = []
    for action in parser._actions:
        if action is skip or isinstance(action, argparse._HelpAction):
            continue
        if not action.option_strings and action.nargs in (None, 1):
            argv.append(_placeholder(action))
        elif action.option_strings and action.required:
            argv += [action.option_strings[0], _placeholder(action)]
    return argv


def _placeholder(action: argparse.Action) -> str:
    return sorted(action.choices)[0] if action.choices else "1" if action.type and numeric(action.type) else "x"


def cases():
    for path, parser in commands(build_parser()):
        for action in parser._actions:
            if not action.option_strings or action.nargs == 0 or isinstance(action, argparse._HelpAction):
                continue
            for value in bad_values(action):
                option = action.option_strings[-1]
                yield pytest.param(path, option, value, minimal_argv(parser, action),
                                   id=f"{' '.join(path)} {option}={value}")


ALL_CASES = list(cases())


def test_the_sweep_covers_every_command_with_valued_options():
    swept = {case.values[0] for case in ALL_CASES}
    assert {("train",), ("compile",), ("emulate",), ("board", "serve"), ("devices",), ("hil", "train"),
            ("demo",)} <= swept


@pytest.mark.parametrize("path, option, value, argv", ALL_CASES)
def test_a_bad_option_value_is_one_line_and_exit_2(path, option, value, argv, capsys):
    with pytest.raises(SystemExit) as refused:
        build_parser().parse_args([*path, *argv, f"{option}={value}"])
    assert refused.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"argument {option}" in error and "Traceback" not in error, error


@pytest.mark.parametrize("argv, option", [
    (["train", "--steps", "-3"], "--steps"),
    (["compile", "run", "-o", "out", "--headroom-bits", "nan"], "--headroom-bits"),
    (["board", "serve", "--drop", "1.5"], "--drop"),
    (["hil", "train", "--device", "x", "--timeout", "inf"], "--timeout"),
])
def test_as_a_process_too(argv, option):
    one_line_error(echoforge(*argv), f"argument {option}")
