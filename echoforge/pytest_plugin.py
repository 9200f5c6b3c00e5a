"""The pytest plugin (entry point `pytest11`: installed with echoforge, active in every pytest session):
tests of a project that deploys an echoforge model run against a simulated board, as echoforge's own do.

    def test_the_board_runs_my_program(echoforge_board):      # the URI, e.g. /dev/pts/5
        with Device(echoforge_board) as device: ...

The board — `echoforge board serve --pty --target TARGET` in its own process — starts when the first test
asks for `echoforge_board` and stops when the session ends, whether tests failed or the run was
interrupted (and with the pytest process, if that is killed: runtime.simulator). Choose the target with
`--echoforge-board TARGET` or the ini option `echoforge_board`, further `board serve` options (faults,
capabilities) with the ini option `echoforge_board_options`. docs/ci.md shows a CI job using it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

DEFAULT_TARGET = "emulator"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("echoforge", "echoforge simulated board")
    group.addoption("--echoforge-board", metavar="TARGET",
                    help=f"target of the board the echoforge_board fixture serves (default: the ini option "
                         f"echoforge_board, else {DEFAULT_TARGET})")
    parser.addini("echoforge_board", f"target of the echoforge_board fixture's board (default {DEFAULT_TARGET})",
                  default=DEFAULT_TARGET)
    parser.addini("echoforge_board_options", "more `echoforge board serve` options for that board, "
                  "e.g. --drop 0.01 --seed 1", type="args", default=[])


@pytest.fixture(scope="session")
def echoforge_board(request: pytest.FixtureRequest) -> Iterator[str]:
    """The URI of a simulated board of the chosen target, served for the whole session."""
    from echoforge.runtime.simulator import simulated_board

    config = request.config
    target = config.getoption("echoforge_board") or config.getini("echoforge_board")
    with simulated_board("--target", target, *config.getini("echoforge_board_options")) as uri:
        yield uri
