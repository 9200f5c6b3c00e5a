"""The pytest plugin (issue 18 item 10), as a user meets it: pytest run as a process on a tiny project of
tests that ask for `echoforge_board` — one passing, one failing — and the board is gone afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

USER_TESTS = '''
    import os
    from pathlib import Path

    from echoforge.runtime.device import Device


    def board_processes():
        """This pytest's child processes that serve a board."""
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                command = (stat.parent / "cmdline").read_bytes().replace(b"\\0", b" ").decode()
            except (OSError, IndexError):
                continue
            if parent == os.getpid() and "board serve" in command:
                found.append(stat.parent.name)
        return found


    def test_the_board_answers(echoforge_board):
        with Device(echoforge_board, timeout=10) as device:
            assert device.info.target == "emulator"
        Path("board.pids").write_text(" ".join(board_processes()))


    def test_a_failure_does_not_leave_the_board_running(echoforge_board):
        assert echoforge_board == "not this"
'''


def test_the_fixture_serves_a_board_for_the_session_and_stops_it_after_a_failure(tmp_path):
    (tmp_path / "test_user.py").write_text(textwrap.dedent(USER_TESTS))
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600,
                            env=os.environ | {"PYTEST_ADDOPTS": ""})
    assert result.returncode == 1, result.stdout[-3000:]
    assert "1 failed, 1 passed" in result.stdout
    pids = (tmp_path / "board.pids").read_text().split()
    assert len(pids) == 1  # one board for the session, started by the fixture
    assert not Path(f"/proc/{pids[0]}").exists()  # stopped at the session's end, the failure notwithstanding


def test_an_unknown_board_target_is_a_one_line_fixture_error(tmp_path):
    (tmp_path / "test_user.py").write_text("def test_board(echoforge_board):\n    pass\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py",
                             "--echoforge-board", "no-such-board"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 1 and "1 error" in result.stdout
    assert "the board simulator exited at start" in result.stdout
