"""Real datasets that need no download: UCR/UEA series in the ``aeon`` wheel, scikit-learn's
bundled tables, and local OpenML-CC18-style ARFF/CSV files.

Every loader returns ``(splits, info)``: ``splits = {"train": {"x", "y"}, "test": {"x", "y"}}``
with float32 channels-first ``x`` (``N×C×L``; tables are ``N×1×F``) and int32 class ids ``y``
(regression: float32 ``N×1``); validation is carved from train by the trainer. ``info`` holds
``classes`` (class names, index = id), ``channels``, ``length`` and, for the task registry,
``task`` ("classification" | "regression") and, for regression, ``loss``, ``metric`` and
``normalize_targets``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from xmodal_jax.data import arff
from xmodal_jax.data.formats import DataFormatError, Splits

TEST_FRACTION = 0.3
SPLIT_SEED = 0
_REGRESSION_INFO = {
    "task": "regression",
    "loss": "mse",
    "metric": "rmse",
    "normalize_targets": True,
}


def _class_order(labels: Sequence[str]) -> list[str]:
    """Distinct labels sorted numerically when all are numbers ("2" < "10"), else as strings."""
    distinct = sorted(set(labels))
    try:
        return sorted(distinct, key=lambda s: (float(s), s))
    except ValueError:
        return distinct


# --- UCR / UEA (aeon) -----------------------------------------------------------------------------


def aeon_data_dir() -> str:
    """The folder of datasets shipped inside the installed ``aeon`` wheel."""
    try:
        import aeon.datasets
    except ImportError as e:  # aeon is optional: only the UCR task needs it
        raise ImportError("UCR/UEA datasets need aeon: pip install 'aeon==1.6.*'") from e
    return os.path.join(os.path.dirname(aeon.datasets.__file__), "data")


def bundled_ucr_datasets() -> dict[str, str]:
    """Name → folder of every ``<name>_TRAIN.ts`` / ``<name>_TEST.ts`` pair shipped by aeon.

    Includes aeon's equal-length ``<name>_eq`` versions of variable-length problems and its two
    regression problems (CardanoSentiment, Covid3Month).
    """
    root = aeon_data_dir()
    found = {}
    for folder in sorted(os.listdir(root)):
        d = os.path.join(root, folder)
        if not os.path.isdir(d):
            continue
        for f in os.listdir(d):
            m = re.fullmatch(r"(.+)_TRAIN\.ts", f)
            if m and os.path.exists(os.path.join(d, f"{m.group(1)}_TEST.ts")):
                found[m.group(1)] = d
    return dict(sorted(found.items()))


def _read_ts(path: str) -> tuple[list[np.ndarray], np.ndarray, dict]:
    from aeon.datasets import load_from_ts_file

    try:
        x, y, meta = load_from_ts_file(path, return_meta_data=True)
    except Exception as e:  # aeon raises IOError/TypeError/ValueError for bad files
        raise DataFormatError(f"{path}: cannot parse as a .ts file: {e}") from e
    series = [np.asarray(s, np.float32) for s in x]  # (C, L_i) each; aeon gives N×C×L or a list
    return series, np.asarray(y), meta


def load_ucr(name: str, *, max_length: int | None = None) -> tuple[Splits, dict]:
    """A UCR/UEA dataset bundled in the ``aeon`` wheel, by name (e.g. ``"GunPoint"``).

    Reads ``<aeon>/datasets/data/<folder>/<name>_{TRAIN,TEST}.ts`` directly with aeon's
    ``load_from_ts_file``; aeon's ``load_classification`` is not used because it downloads from
    Zenodo whatever it does not find, and this loader must never touch the network.

    ``x``: float32 ``N×C×L``, channels first. Series of different lengths (JapaneseVowels,
    PickupGestureWiimoteZ) are right-padded with zeros to the longest series of both splits, or
    to ``max_length``, which also truncates longer series (their tail is dropped). Missing
    values (NaN) become 0 like the padding. Values are used as shipped (UCR series are mostly
    z-normalised per series already; UEA ones are not).

    ``y``: int32 ids of the labels in ``info["classes"]``: the labels declared in the file
    header plus any seen, sorted numerically when all are numbers, else as strings. The two
    regression problems give float32 ``N×1`` targets and ``info["task"] == "regression"``.

    ``info``: ``classes``, ``channels``, ``length``, ``task``, ``variable_length``,
    ``truncated`` (series cut by ``max_length``), ``missing`` (NaNs set to 0).
    """
    bundled = bundled_ucr_datasets()
    if name not in bundled:
        by_lower = {k.lower(): k for k in bundled}
        if name.lower() not in by_lower:
            raise ValueError(
                f"UCR/UEA dataset {name!r} is not bundled with the installed aeon (nothing is "
                f"downloaded); bundled: {', '.join(bundled)}"
            )
        name = by_lower[name.lower()]
    folder = bundled[name]
    raw = {s: _read_ts(os.path.join(folder, f"{name}_{s.upper()}.ts")) for s in ("train", "test")}
    meta = raw["train"][2]
    channels = {s.shape[0] for part in raw.values() for s in part[0]}
    if len(channels) != 1:
        raise DataFormatError(f"{folder}/{name}: series have different channel counts {channels}")
    lengths = [s.shape[1] for part in raw.values() for s in part[0]]
    length = int(max_length) if max_length else max(lengths)
    if length < 1:
        raise ValueError(f"max_length must be ≥ 1, got {max_length}")
    info: dict[str, Any] = {
        "name": name,
        "channels": channels.pop(),
        "length": length,
        "variable_length": len(set(lengths)) > 1,
        "truncated": sum(n > length for n in lengths),
        "missing": 0,
    }
    regression = not meta.get("classlabel", True)
    if regression:
        info.update(_REGRESSION_INFO, classes=[])
    else:
        declared = [str(c) for c in meta.get("class_values", [])]
        seen = [str(v) for part in raw.values() for v in part[1]]
        info.update(task="classification", classes=_class_order(declared + seen))
    ids = {c: i for i, c in enumerate(info["classes"])}
    splits: Splits = {}
    for split, (series, labels, _) in raw.items():
        x = np.zeros((len(series), info["channels"], length), np.float32)
        for i, s in enumerate(series):
            x[i, :, : min(length, s.shape[1])] = s[:, :length]
        bad = ~np.isfinite(x)
        info["missing"] += int(bad.sum())
        x[bad] = 0.0
        if regression:
            y = np.asarray(labels, np.float32).reshape(-1, 1)
        else:
            y = np.array([ids[str(v)] for v in labels], np.int32)
        splits[split] = {"x": x, "y": y}
    return splits, info


# --- scikit-learn tables --------------------------------------------------------------------------


def _sklearn_tables() -> dict[str, tuple[Callable[[], Any], bool]]:
    from sklearn import datasets

    return {
        "iris": (datasets.load_iris, True),
        "wine": (datasets.load_wine, True),
        "breast_cancer": (datasets.load_breast_cancer, True),
        "diabetes": (datasets.load_diabetes, False),
    }


def _split_rows(y: np.ndarray, stratify: bool, where: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    if stratify:
        classes, counts = np.unique(y, return_counts=True)
        if (counts < 2).any():
            c = classes[np.argmax(counts < 2)]
            raise DataFormatError(
                f"{where}: class id {c} has a single row; a stratified split needs ≥ 2 per class "
                "(is the target a regression value?)"
            )
    idx = np.arange(len(y))
    train, test = train_test_split(
        idx, test_size=TEST_FRACTION, random_state=SPLIT_SEED, stratify=y if stratify else None
    )
    return np.sort(train), np.sort(test)


def _standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column z-score with train statistics; constant columns are only centred."""
    mean, std = train.mean(0), train.std(0)
    std = np.where(std > 0, std, 1.0)
    return (train - mean) / std, (test - mean) / std


def _table_splits(
    x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, standardize: np.ndarray
) -> Splits:
    xtr, xte = x[train].astype(np.float64), x[test].astype(np.float64)
    if standardize.any():
        xtr[:, standardize], xte[:, standardize] = _standardize(
            xtr[:, standardize], xte[:, standardize]
        )
    return {
        "train": {"x": xtr[:, None, :].astype(np.float32), "y": y[train]},
        "test": {"x": xte[:, None, :].astype(np.float32), "y": y[test]},
    }


def load_sklearn_table(name: str) -> tuple[Splits, dict]:
    """A table bundled with scikit-learn as ``N×1×F`` signals: iris, wine, breast_cancer, diabetes.

    70/30 train/test split (``random_state`` 0), stratified by class for the classification
    tables; features standardised with train statistics. diabetes is regression: float32
    ``N×1`` raw targets with ``info["task"] == "regression"``, ``loss`` "mse", ``metric``
    "rmse" and ``normalize_targets`` True (the targets are 25–346: the task should learn them
    normalised).
    """
    tables = _sklearn_tables()
    if name not in tables:
        raise ValueError(f"scikit-learn table {name!r} unknown; expected one of {sorted(tables)}")
    load, classification = tables[name]
    bunch = load()
    x = np.asarray(bunch.data, np.float64)
    if classification:
        y = np.asarray(bunch.target, np.int32)
        info: dict[str, Any] = {
            "task": "classification",
            "classes": [str(c) for c in bunch.target_names],
        }
    else:
        y = np.asarray(bunch.target, np.float32).reshape(-1, 1)
        info = dict(_REGRESSION_INFO, classes=[])
    train, test = _split_rows(y.reshape(len(y), -1)[:, 0], classification, f"sklearn {name}")
    splits = _table_splits(x, y, train, test, np.ones(x.shape[1], bool))
    info.update(
        name=name, channels=1, length=x.shape[1], features=[str(f) for f in bunch.feature_names]
    )
    return splits, info


# --- OpenML files (ARFF / CSV; parsed by data.arff) ----------------------------------------------


def load_openml_file(path: str, *, target: str | None = None) -> tuple[Splits, dict]:
    """A local OpenML-CC18-style table (ARFF, or CSV with a header row) as ``N×1×F`` signals.

    - Format: ARFF when the name ends in ``.arff`` or the file starts with ``@relation`` /
      ``%``; otherwise CSV (comma-separated, double quotes). Missing values: ARFF ``?``; CSV
      empty, ``?``, ``NA``, ``N/A``, ``nan``, ``null``, ``none`` (any case).
    - Target: the column named ``target``, else the last column; its values are class labels
      (classes sorted numerically when all are numbers, else as strings). Rows with a missing
      target are dropped (``info["dropped_rows"]``).
    - Features, in column order: numeric columns are standardised with train statistics, a
      missing value becoming the train mean (0 after standardising); categorical columns (ARFF
      nominal/string, CSV columns with no numeric cell) are one-hot over their levels (ARFF:
      the declared ones; else those in the file, sorted), a missing value all zeros. A CSV
      column mixing numbers and text is an error.
    - 70/30 train/test split, stratified by class, ``random_state`` 0.

    Raises ``DataFormatError`` naming the file (and line and column where there is one) for a
    missing or empty file, an unknown target column, unparseable values, rows of the wrong
    width, or a class with a single row.
    """
    if not os.path.isfile(path):
        raise DataFormatError(f"{path}: file not found")
    with open(path, encoding="utf-8", errors="replace") as f:
        start = f.read(4096).lstrip()
    if not start:
        raise DataFormatError(f"{path}: empty file")
    is_arff = path.lower().endswith(".arff") or start[:1] == "%" or start[:9].lower() == "@relation"
    cols = arff.read_arff(path) if is_arff else arff.read_csv(path)
    names = [c.name for c in cols]
    if target is None:
        tcol = cols[-1]
    elif target in names:
        tcol = cols[names.index(target)]
    else:
        raise DataFormatError(f"{path}: target column {target!r} not found; columns: {names}")
    if not tcol.cells:
        raise DataFormatError(f"{path}: no data rows")
    if len(cols) < 2:
        raise DataFormatError(f"{path}: no feature columns besides the target {tcol.name!r}")
    arff.infer_kind(tcol, path)
    rows = np.array([i for i, v in enumerate(tcol.cells) if v is not None], np.int64)
    if not len(rows):
        raise DataFormatError(f"{path}: target column {tcol.name!r} has no values")
    labels = arff.label_names(tcol, rows, path)
    classes = _class_order(labels)
    ids = {c: i for i, c in enumerate(classes)}
    y = np.array([ids[v] for v in labels], np.int32)

    blocks, feature_names, numeric = [], [], []
    for col in cols:
        if col is tcol:
            continue
        arff.infer_kind(col, path)
        if col.kind == "numeric":
            blocks.append(arff.to_float(col, path)[rows, None])
            feature_names.append(col.name)
            numeric.append(True)
            continue
        cells = [col.cells[i] for i in rows]
        levels = col.levels or sorted({v for v in col.cells if v is not None})
        index = {v: j for j, v in enumerate(levels)}
        onehot = np.zeros((len(rows), len(levels)))
        for r, (i, v) in enumerate(zip(rows, cells, strict=True)):
            if v is None:
                continue
            if v not in index:
                raise DataFormatError(
                    f"{path}:{col.lines[i]}: column {col.name!r}: value {v!r} not among the "
                    f"declared {levels}"
                )
            onehot[r, index[v]] = 1.0
        blocks.append(onehot)
        feature_names += [f"{col.name}={v}" for v in levels]
        numeric += [False] * len(levels)
    x = np.concatenate(blocks, axis=1)
    numeric_mask = np.array(numeric, bool)
    train, test = _split_rows(y, True, path)
    # Missing numeric values take the train mean (before standardising), so they end up 0.
    present = ~np.isnan(x[train])
    means = np.where(present, x[train], 0.0).sum(0) / np.maximum(present.sum(0), 1)
    x = np.where(np.isnan(x), means, x)
    splits = _table_splits(x, y, train, test, numeric_mask)
    info = {
        "name": os.path.basename(path),
        "task": "classification",
        "classes": classes,
        "channels": 1,
        "length": x.shape[1],
        "features": feature_names,
        "target": tcol.name,
        "dropped_rows": len(tcol.cells) - len(rows),
    }
    return splits, info
