import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A run directory as `echoforge train` leaves it: BasicMotions, 20 RHEL steps, 8 features and
    8 oscillators per block (about a second)."""
    from echoforge.models.training import Trainer, load_config

    output = tmp_path_factory.mktemp("tiny-run")
    config = load_config(None, ["steps=20", "eval_every=10", "model.hidden_size=8", "model.state_size=8"])
    Trainer(config, output).run(progress=False)
    return output
