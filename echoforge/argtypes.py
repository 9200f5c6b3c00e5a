"""argparse types shared by the subcommands: a bad value is argparse's one-line usage error.

Each numeric type refuses what is out of its range (negative, NaN, infinite, beyond a bound) at parse
time, before anything is loaded. `OUT_OF_RANGE` on a type lists values that are well-formed numbers
but out of its range beyond the ones every numeric option refuses (tests/test_option_sweep.py feeds
them to every option that uses the type).
"""

import argparse
import math
from collections.abc import Callable

MAX_HEADROOM_BITS = 16


def _ranged(name: str, convert: Callable[[str], float], expected: str, accept: Callable[[float], bool],
            out_of_range: tuple[str, ...] = ()) -> Callable[[str], float]:
    """An argparse type: `convert` the text, then refuse a value `accept` rejects, saying what was expected."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    parse.__name__ = name
    parse.OUT_OF_RANGE = out_of_range
    return parse


def _finite(accept: Callable[[float], bool]) -> Callable[[float], bool]:
    return lambda value: math.isfinite(value) and accept(value)


positive_int = _ranged("positive_int", int, "a positive integer", lambda v: v >= 1, ("0",))
non_negative_int = _ranged("non_negative_int", int, "an integer ≥ 0", lambda v: v >= 0)
tcp_port = _ranged("tcp_port", int, "a TCP port 0–65535", lambda v: 0 <= v <= 65535, ("65536",))
non_negative_float = _ranged("non_negative_float", float, "a finite number ≥ 0", _finite(lambda v: v >= 0))
positive_float = _ranged("positive_float", float, "a finite number > 0", _finite(lambda v: v > 0), ("0",))
probability = _ranged("probability", float, "a probability 0–1", _finite(lambda v: 0 <= v <= 1), ("1.5",))
headroom_bits = _ranged("headroom_bits", float, f"a number of bits 0–{MAX_HEADROOM_BITS}",
                        _finite(lambda v: 0 <= v <= MAX_HEADROOM_BITS), (str(MAX_HEADROOM_BITS + 1),))


def key_value(text: str) -> str:
    """A config override KEY=VALUE (the value is parsed as YAML later)."""
    key, sep, _ = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, e.g. optimizer.lr=1e-3, got {text!r}")
    return text


key_value.MISTYPED = ("lr",)


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line — what is wrong and where to read more —
    and exit status 2. Subcommand parsers inherit the class (argparse's add_subparsers default)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
