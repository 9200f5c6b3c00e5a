import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))

# Hypothesis times each example (200 ms deadline) and its data generation (the too_slow health check):
# wall-clock checks that fail on a busy shared 2-core machine, not on a wrong answer. Turned off.
settings.register_profile("echoforge", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("echoforge")

DEFAULT_MARKS = "not slow"  # pyproject's addopts


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true",
                     help="run the tests marked slow too (by default they are deselected; -m slow runs only them)")


def pytest_configure(config):
    """--runslow lifts the default `-m 'not slow'`; an explicit -m (given after addopts) wins over both."""
    if config.getoption("runslow") and config.option.markexpr == DEFAULT_MARKS:
        config.option.markexpr = ""


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run directory as `echoforge train` leaves it: BasicMotions, 20 RHEL steps, 8 features and
    8 oscillators per block (about a second)."""
    from echoforge.models.training import Trainer, load_config

    output = tmp_path_factory.mktemp("tiny-run")
    config = load_config(None, ["steps=20", "eval_every=10", "model.hidden_size=8", "model.state_size=8"])
    Trainer(config, output).run(progress=False)
    return output
