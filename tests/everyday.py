"""Running `echoforge` as a user does — a separate process — and reading what it printed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def echoforge(*argv: str, cwd: str | Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m echoforge ARGV` in a fresh interpreter (one torch thread), its output captured."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    return subprocess.run([sys.executable, "-m", "echoforge", *map(str, argv)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=env)


def one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """The single stderr line of a command that refused its input with exit status 2, which must
    contain every fragment."""
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module", name="tiny_program")
def compiled_tiny_program(tiny_run, tmp_path_factory) -> Path:
    """tiny_run compiled for the emulator (three bits of headroom, as in-the-loop training wants)."""
    out = tmp_path_factory.mktemp("tiny-program")
    result = echoforge("compile", tiny_run, "-o", out, "--headroom-bits", "3", "--no-progress")
    assert result.returncode == 0, result.stderr
    return out
