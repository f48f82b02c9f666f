"""NAS-Bench-360 readers of the 1D tasks: ECG (PhysioNet/CinC 2017 windows), Satellite
(46-step series) and DeepSEA (4×1000 one-hot DNA, lazy and memory-mapped). See
:mod:`xmodal_jax.data.nb360` for the table of layouts; every malformed file raises
``DataFormatError`` naming file and field.
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np

from xmodal_jax.data import formats, nb360_files

# ---------------------------------------------------------------------------------------------
# ECG (PhysioNet/CinC 2017)

ECG_LABELS = {"N": 0, "A": 1, "O": 2, "~": 3}
ECG_WINDOW, ECG_STRIDE = 1000, 500
# The reference's slide_and_cut (datatype 4) oversamples the rare classes with shorter strides:
# N 500, A 500//6, O 500//2, ~ 500//20 (ORCA 19b8c1c src/data_loaders.py lines 2171-2193).
ECG_CLASS_STRIDES = (ECG_STRIDE, ECG_STRIDE // 6, ECG_STRIDE // 2, ECG_STRIDE // 20)


def _ecg_windows(
    records: list[np.ndarray], labels: np.ndarray, class_strides: bool, name: str
) -> tuple[formats.LazyArray, np.ndarray]:
    """Windows of the given z-scored records as a lazy N×1×1000 array + per-window labels.

    Window starts are ``range(0, len - 1000, stride)`` as the reference's: the last full
    window is skipped and records of ≤ 1000 samples give none.
    """
    lengths = np.array([len(rec) for rec in records], dtype=np.int64)
    base = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    starts, ys = [], []
    for k, (length, label) in enumerate(zip(lengths, labels, strict=True)):
        stride = ECG_CLASS_STRIDES[label] if class_strides else ECG_STRIDE
        s = np.arange(0, length - ECG_WINDOW, stride, dtype=np.int64)
        starts.append(base[k] + s)
        ys.append(np.full(len(s), label, np.int32))
    flat = (
        np.concatenate(records).astype(np.float32, copy=False)
        if records
        else np.zeros(0, np.float32)
    )
    starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
    offsets = np.arange(ECG_WINDOW, dtype=np.int64)

    def gather(idx: np.ndarray) -> np.ndarray:
        return flat[starts[idx][:, None] + offsets][:, None, :]

    x = formats.LazyArray(len(starts), (1, ECG_WINDOW), np.float32, name=name, gather=gather)
    return x, np.concatenate(ys) if ys else np.zeros(0, np.int32)


def reference_test_split(n: int, test_fraction: float, random_state: int) -> np.ndarray:
    """Test indices of ``sklearn.model_selection.train_test_split(range(n),
    test_size=test_fraction, random_state=random_state)`` (unstratified ShuffleSplit: the
    first ``ceil(test_fraction · n)`` entries of ``RandomState(random_state).permutation(n)``).

    Reproduced with NumPy so the reference's ECG test records are kept exactly.
    """
    n_test = int(np.ceil(test_fraction * n))
    return np.sort(np.random.RandomState(random_state).permutation(n)[:n_test])


def read_ecg(root: str, *, seed: int = 0, class_strides: bool = True) -> formats.Splits:
    """PhysioNet/CinC 2017 ECG from ``root/challenge2017.pkl`` (``{"data": records,
    "label": "N"|"A"|"O"|"~" per record}``).

    Each record is z-scored on its own (population std), then cut into 1000-sample windows with
    the reference's class-dependent strides (``class_strides=False``: 500 for every class); every
    window carries its record's label (int32: N 0, A 1, O 2, ~ 3). Splits are by record: test is
    exactly the reference's 10% (``train_test_split(test_size=0.1, random_state=0)``,
    unstratified); val is as many records carved from the rest, class-stratified and seeded by
    ``seed`` (80/10/10, spec §8.1). The reference windows its test records with the same
    class-dependent strides; so does this. x is a lazy float32 N×1×1000 view of the records.
    """
    path = formats.require_file(root, "challenge2017.pkl")

    def load() -> Any:
        with open(path, "rb") as f:
            return pickle.load(f)

    res = nb360_files.unpickle(load, path, "pickle")
    data = nb360_files.get_field(res, "data", path)
    raw_labels = nb360_files.get_field(res, "label", path)
    try:
        n, n_labels = len(data), len(raw_labels)
    except TypeError as e:
        raise formats.DataFormatError(f"{path}: fields 'data' and 'label' must be sequences") from e
    if n != n_labels:
        raise formats.DataFormatError(
            f"{path}: {n} records in 'data' but {n_labels} entries in 'label'"
        )
    labels = np.empty(n, np.int32)
    for i, lab in enumerate(raw_labels):
        lab = lab.decode() if isinstance(lab, bytes) else lab
        if lab not in ECG_LABELS:
            raise formats.DataFormatError(
                f"{path}: field 'label' has {lab!r} at index {i}, expected one of "
                f"{sorted(ECG_LABELS)}"
            )
        labels[i] = ECG_LABELS[lab]
    records = []
    for i, rec in enumerate(data):
        rec = np.asarray(rec)
        if rec.ndim != 1 or rec.dtype.kind not in "fiu":
            raise formats.DataFormatError(
                f"{path}: field 'data' record {i} has shape {rec.shape} dtype {rec.dtype}, "
                "expected a 1-D numeric signal"
            )
        rec = rec.astype(np.float64)
        std = rec.std()
        if not np.isfinite(std) or std == 0:
            raise formats.DataFormatError(
                f"{path}: field 'data' record {i} is constant or non-finite"
            )
        records.append(((rec - rec.mean()) / std).astype(np.float32))
    del res, data

    test = reference_test_split(n, 0.1, 0)
    rest = np.setdiff1d(np.arange(n), test)
    tr, va = nb360_files.holdout(labels[rest], len(test), seed, path)
    out = {}
    for split, idx in (("train", rest[tr]), ("val", rest[va]), ("test", test)):
        x, y = _ecg_windows(
            [records[i] for i in idx], labels[idx], class_strides, f"{path} [{split}]"
        )
        out[split] = nb360_files.checked_split(x, y, path)
    return out


# ---------------------------------------------------------------------------------------------
# Satellite


def read_satellite(root: str, *, seed: int = 0) -> formats.Splits:
    """Satellite image time series from ``root/satellite_{train,test}.npy`` (each a pickled dict
    ``{"data": N×46, "label": N}`` in a 0-d object array; labels 1-based).

    x: float32 N×1×46; y: int32 in 0..23 (file label − 1). Validation: ``len(test)`` training
    series held out, class-stratified, seeded, disjoint from train (spec §8.2: the reference's
    validation overlapped its training set).
    """
    out = {}
    for split in ("train", "test"):
        path = formats.require_file(root, f"satellite_{split}.npy")
        obj = nb360_files.unpickle(lambda path=path: np.load(path, allow_pickle=True), path, ".npy")
        if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.shape == ():
            obj = obj.item()
        data = np.asarray(nb360_files.get_field(obj, "data", path))
        labels = np.asarray(nb360_files.get_field(obj, "label", path))
        formats.check_shape(data, (None, 46), path, "data")
        formats.check_dtype(data, "fiu", path, "data")
        formats.check_finite(data, path, "data")
        formats.check_shape(labels, (len(data),), path, "label")
        y = nb360_files.int_labels(
            labels, nb360_files.NUM_CLASSES["satellite"], path, "label", offset=1
        )
        out[split] = (data.astype(np.float32)[:, None, :], y, path)
    (x, y, path), (xt, yt, test_path) = out["train"], out["test"]
    tr, va = nb360_files.holdout(y, len(yt), seed, path)
    return {
        "train": nb360_files.checked_split(x[tr], y[tr], path),
        "val": nb360_files.checked_split(x[va], y[va], path),
        "test": nb360_files.checked_split(xt, yt, test_path),
    }


# ---------------------------------------------------------------------------------------------
# DeepSEA


def read_deepsea(root: str, *, seed: int = 0) -> formats.Splits:
    """DeepSEA (filtered to 36 chromatin labels) from ``root/deepsea_filtered.npz``: keys
    ``x_{train,val,test}`` (one-hot N×1000×4) and ``y_{train,val,test}`` (N×36); official splits.

    x: a lazy float32 N×4×1000 view: when the ``.npz`` is uncompressed (``np.savez``) each
    member is memory-mapped and batches are transposed and cast on access, so the multi-GB
    arrays are never read whole; a compressed member is decompressed alone. y: float32 N×36 in
    {0, 1}. The reference trains on train + val (spec §7); selection here uses val. ``seed`` is
    unused.
    """
    del seed
    path = formats.require_file(root, "deepsea_filtered.npz")
    out = {}
    for split in ("train", "val", "test"):
        xk, yk = f"x_{split}", f"y_{split}"
        xs = nb360_files.npz_member(path, xk)
        formats.check_shape(xs, (None, 1000, 4), path, xk)
        formats.check_dtype(xs, "biuf", path, xk)
        formats.check_finite(xs, path, xk)
        ys = nb360_files.npz_member(path, yk)
        formats.check_shape(ys, (None, nb360_files.NUM_CLASSES["deepsea"]), path, yk)
        formats.check_dtype(ys, "biuf", path, yk)
        y = np.asarray(ys, dtype=np.float32)
        bad = np.flatnonzero((y != 0) & (y != 1))
        if bad.size:
            i = int(bad[0])
            raise formats.DataFormatError(
                f"{path}: field {yk!r} has value {y.flat[i]} at flat index {i}, expected 0 or 1 "
                f"({bad.size} such values)"
            )

        def gather(idx: np.ndarray, xs: np.ndarray = xs) -> np.ndarray:
            return np.asarray(xs[idx]).transpose(0, 2, 1)

        x = formats.LazyArray(len(xs), (4, 1000), np.float32, name=f"{path} [{xk}]", gather=gather)
        out[split] = nb360_files.checked_split(x, y, path)
    return out
