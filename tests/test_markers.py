"""The slow marker does what pyproject and docs/testing.md say: deselected by default, `-m slow` runs only
the slow tests, `--runslow` runs everything (tests/conftest.py)."""

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TWO_TESTS = '''
import pytest

def test_quick():
    pass

@pytest.mark.slow
def test_long():
    pass
'''


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A directory with this repository's pytest settings (pyproject's) and conftest, and two tests."""
    directory = tmp_path_factory.mktemp("project")
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    markers = "".join(f"\n    {marker}" for marker in settings["markers"])
    (directory / "pytest.ini").write_text(f"[pytest]\nmarkers ={markers}\naddopts = {settings['addopts']}\n")
    shutil.copy(ROOT / "tests" / "conftest.py", directory / "conftest.py")
    (directory / "test_two.py").write_text(TWO_TESTS)
    return directory


@pytest.mark.parametrize("options, expected", [
    ((), {"test_quick"}), (("-m", "slow"), {"test_long"}), (("--runslow",), {"test_quick", "test_long"}),
])
def test_slow_tests_run_only_when_asked(project, options, expected):
    result = subprocess.run([sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", *options], cwd=project,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert {line.split("::")[1].split()[0] for line in result.stdout.splitlines() if " PASSED" in line} == expected
