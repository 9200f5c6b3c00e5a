"""`echoforge flash GATEWARE_DIR`: the bitstream `echoforge build` wrote, onto the board, by the board's
own loader — iceprog (Debian fpga-icestorm) for the iCEBreaker; openFPGALoader, or fujprog where it is
the one installed, for the ULX3S.

Before a loader runs, the directory must hold what `build` writes: report.json naming the board and the
family's bitstream, which must start as that family's bitstreams do (a renamed ECP5 .bit is not an
iCE40 image). A missing tool, a missing or foreign bitstream, or a loader that fails is one line and
exit 2; `--dry-run` prints the exact command and runs nothing.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .bitstream import BITSTREAM, board_named

LOADER_SECONDS = 300.0   # a UP5K image programs in seconds, an ECP5-25F's in under a minute
# The sync word that opens a family's configuration, within the first bytes (after an optional comment).
PREAMBLE = {"ice40": b"\x7e\xaa\x99\x7e", "ecp5": b"\xff\xff\xbd\xb3"}
PREAMBLE_WITHIN = 1024


@dataclass(frozen=True)
class Loader:
    tool: str
    arguments: tuple[str, ...]    # before the bitstream's path
    install: str


# Per board: the loaders to try, in order of preference.
LOADERS = {
    "icebreaker": (Loader("iceprog", (), "apt-get install fpga-icestorm"),),
    "ulx3s": (Loader("openFPGALoader", ("-b", "ulx3s"), "apt-get install openfpgaloader"),
              Loader("fujprog", (), "https://github.com/kost/fujprog/releases")),
}


def bitstream_of(directory: Path, board_name: str | None) -> tuple[str, Path]:
    """(board, bitstream) of a build directory; ValueError/FileNotFoundError saying what is wrong."""
    report_file = directory / "report.json"
    if not report_file.is_file():
        raise FileNotFoundError(f"{report_file}: no such file — flash the directory `echoforge build -o DIR` wrote")
    try:
        built_for = json.loads(report_file.read_text())["board"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{report_file}: not an `echoforge build` report (no board) — rebuild the image") from None
    board = board_named(board_name or built_for)
    if board.name != built_for:
        raise ValueError(f"{directory} holds an image built for the {built_for}, not the {board.name} — "
                         f"build one with `echoforge build OUT/ --board {board.name}`")
    family = board.part.family
    bitstream = directory / BITSTREAM[family]
    if not bitstream.is_file():
        raise FileNotFoundError(f"{bitstream}: no such file — the build did not finish; run `echoforge build` again")
    if PREAMBLE[family] not in bitstream.read_bytes()[:PREAMBLE_WITHIN]:
        raise ValueError(f"{bitstream} is not an {family.upper()} bitstream (no {PREAMBLE[family].hex()} sync word "
                         "at its start) — rebuild the image")
    return board.name, bitstream


def loader_command(board_name: str, bitstream: Path, *, installed_only: bool) -> list[str]:
    """The command that flashes `bitstream`: the first of the board's loaders that is installed (or, when
    `installed_only` is False and none is, the preferred one); ValueError naming the install otherwise."""
    loaders = LOADERS[board_name]
    found = next((loader for loader in loaders if shutil.which(loader.tool)), None)
    if found is None and installed_only:
        names = " or ".join(loader.tool for loader in loaders)
        raise ValueError(f"{names} not found on PATH — install it ({loaders[0].install}) to flash the {board_name}")
    loader = found or loaders[0]
    return [loader.tool, *loader.arguments, str(bitstream)]


def flash(directory: Path, board_name: str | None, *, dry_run: bool) -> int:
    board, bitstream = bitstream_of(directory, board_name)
    command = loader_command(board, bitstream, installed_only=not dry_run)
    if dry_run:
        print(shlex.join(command))
        return 0
    print(f"echoforge flash: {shlex.join(command)}", flush=True)
    try:
        result = subprocess.run(command, stdin=subprocess.DEVNULL, timeout=LOADER_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        raise ValueError(f"{command[0]} did not finish within {LOADER_SECONDS:.0f} s — is the {board} connected?") from None
    if result.returncode != 0:
        raise ValueError(f"{command[0]} exited with status {result.returncode} (its output is above) — "
                         f"is the {board} connected over USB?")
    return 0
