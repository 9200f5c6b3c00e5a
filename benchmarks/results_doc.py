"""What every benchmark shares: writing its section of docs/results.md, and timing a call."""

import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results.md"
HEADER = "# Results\n\nEvery number below was produced by the command shown with it, on the machine it names.\n"


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section delimited by `<!-- name -->` markers."""
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    command = "python " + " ".join([Path(sys.argv[0]).as_posix().split("/main/")[-1], *sys.argv[1:]])
    section = (f"<!-- {name} -->\n{body.rstrip()}\n\nCommand: `{command}` — machine: {machine()}\n"
               f"<!-- /{name} -->")
    pattern = re.compile(rf"<!-- {re.escape(name)} -->.*?<!-- /{re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else f"{text.rstrip()}\n\n{section}\n"
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of `repeats` calls of fn."""
    return statistics.median(turns_seconds({None: fn}, repeats)[None])


def turns_seconds(contenders: dict, repeats: int) -> dict:
    """Wall times of `repeats` calls of each contender, the contenders taking turns call by call, so that
    a busy spell on a shared machine hits them all: {name: [seconds, ...]}."""
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times
