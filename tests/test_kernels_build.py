"""The float core's C kernels: built once per source into their cache, rebuilt when the source
changes, refused in one line without a C compiler, and guarded against arrays of the wrong layout."""

import numpy as np
import pytest

from echoforge.models import kernels
from everyday import echoforge, one_line_error


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty kernel cache for this test; the process's own libraries are reloaded afterwards."""
    monkeypatch.setenv("ECHOFORGE_KERNEL_CACHE", str(tmp_path / "kernels"))
    kernels.library.cache_clear()
    yield tmp_path / "kernels"
    kernels.library.cache_clear()


def test_the_kernels_are_built_once_and_again_when_their_source_changes(fresh_cache, tmp_path, monkeypatch):
    kernels.library("double")
    built = sorted(fresh_cache.glob("*.so"))
    assert len(built) == 1 and built[0].name.startswith("kernels-double-")
    first_build = built[0].stat().st_mtime_ns
    kernels.library.cache_clear()
    kernels.library("double")
    assert sorted(fresh_cache.glob("*.so")) == built and built[0].stat().st_mtime_ns == first_build
    changed = tmp_path / "kernels.c"
    changed.write_text(kernels.SOURCE.read_text() + "\n/* changed */\n")
    monkeypatch.setattr(kernels, "SOURCE", changed)
    kernels.library.cache_clear()
    kernels.library("double")
    assert len(list(fresh_cache.glob("*.so"))) == 2
    assert not list(fresh_cache.glob("build-*")), "a scratch directory was left behind"


def test_train_without_a_c_compiler_is_one_line(fresh_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    result = echoforge("train", "--steps", "1", "-o", tmp_path / "run", "--set", "model.hidden_size=4",
                       "--set", "model.state_size=4", "--no-progress")
    one_line_error(result, "no C compiler", "no-such-cc", "apt-get install gcc")


def test_an_array_of_the_wrong_layout_is_refused_before_the_call():
    params = np.ones((5, 3))
    forcing = np.zeros((2, 4, 3))
    with pytest.raises(TypeError, match="C-contiguous float64"):
        kernels.forward(kernels.LINEAR, params.astype(np.float32), forcing, np.zeros((2, 3)), np.zeros((2, 3)),
                        np.empty_like(forcing), None, False)
    with pytest.raises(TypeError, match="strided"):
        kernels.forward(kernels.LINEAR, params, forcing, np.zeros((2, 3)), np.zeros((2, 3)),
                        np.empty((2, 8, 3))[:, ::2], None, False)
