"""Readers for the original NAS-Bench-360 files (spec/orca.md §7) with our splits (§8.1–§8.2).

Every reader takes the manual data dir ``root`` and returns ``Splits``
(``{"train", "val", "test"}`` × ``{"x", "y"}``), inputs channels-first:

============  ==========================================  ===================================
task          x                                           y
============  ==========================================  ===================================
cifar100      uint8 N×3×32×32 (raw pixels, not /255)      int32, 100 classes
spherical     float32 N×3×60×60 (/255)                    int32, 100 classes
darcy         float32 N×3×85×85 (coeff, grid x, grid y)   float32 N×1×85×85 (not normalised)
ninapro       float32 N×1×16×52                           int32, 18 classes
ecg           float32 N×1×1000 (lazy windows)             int32, 4 classes (N, A, O, ~)
satellite     float32 N×1×46                              int32, 24 classes (file's 1-based − 1)
deepsea       float32 N×4×1000 (lazy, memory-mapped)      float32 N×36 multi-label
============  ==========================================  ===================================

Files are parsed as the reference loaders (sjunhongshen/ORCA ``src/data_loaders.py``) parse them;
only the validation splits differ (the reference selected on test). ``ecg`` and ``deepsea`` x are
``LazyArray`` subclasses that gather a batch in one vectorised step and convert with
``np.asarray``. Every malformed file raises ``DataFormatError`` naming file and field.
"""

from __future__ import annotations

import gzip
import os
import pickle
import tarfile
import zipfile
from collections.abc import Callable, Mapping
from types import SimpleNamespace
from typing import Any

import numpy as np

from xmodal_jax.data.formats import (
    DataFormatError,
    LazyArray,
    Splits,
    check_dtype,
    check_finite,
    check_labels,
    check_lengths,
    check_shape,
    require_file,
    require_key,
)

NUM_CLASSES = {
    "cifar100": 100,
    "spherical": 100,
    "ninapro": 18,
    "ecg": 4,
    "satellite": 24,
    "deepsea": 36,
}

# ---------------------------------------------------------------------------------------------
# shared helpers


def _unpickle(load: Callable[[], Any], path: str, what: str) -> Any:
    """Runs a pickle/gzip/tar read, turning truncation and garbage into ``DataFormatError``."""
    try:
        return load()
    except DataFormatError:
        raise
    except Exception as e:  # EOFError, UnpicklingError, BadGzipFile, zlib.error, ReadError, ...
        raise DataFormatError(f"{path}: not a readable {what} (truncated or corrupt?): {e}") from e


def _get(d: Any, key: str, path: str) -> Any:
    """``d[key]``, accepting Python-2 era byte keys as well; errors name file and field."""
    if not isinstance(d, Mapping):
        raise DataFormatError(f"{path}: expected a dict holding field {key!r}, got {type(d)}")
    if key not in d and key.encode() in d:
        return d[key.encode()]
    return require_key(d, key, path)


def _int_labels(
    labels: Any, num_classes: int, path: str, field: str, offset: int = 0
) -> np.ndarray:
    """Integer class labels (integral floats accepted, as the reference casts them) → int32.

    ``offset`` is subtracted first (Satellite's labels are 1-based).
    """
    labels = np.asarray(labels)
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise DataFormatError(f"{path}: field {field!r} has non-integer labels")
        labels = labels.astype(np.int64)
    check_dtype(labels, "iu", path, field)
    if offset:
        field = f"{field} (stored {offset}-based; shown shifted to 0-based)"
        labels = labels.astype(np.int64) - offset
    return check_labels(labels, num_classes, path, field)


def _holdout(labels: np.ndarray, n_val: int, seed: int, path: str) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) index arrays: ``n_val`` class-stratified, seeded, disjoint.

    Reuses the pipeline's ``carve_validation`` on indices only, so x is copied once.
    """
    from xmodal_jax.data.pipeline import carve_validation

    n = len(labels)
    if not 0 < n_val < n:
        raise DataFormatError(
            f"{path}: cannot hold out {n_val} validation examples from {n} training examples"
        )
    train, val = carve_validation(
        {"y": np.asarray(labels), "i": np.arange(n)}, n_val, seed=seed, stratify="y"
    )
    return train["i"], val["i"]


def _split(x: Any, y: np.ndarray, path: str) -> dict[str, Any]:
    out = {"x": x, "y": y}
    check_lengths(out, path)
    return out


def _read_npy_header(f: Any, path: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        return np.lib.format.read_array_header_2_0(f)
    except Exception as e:
        raise DataFormatError(f"{path}: not a .npy array (bad or truncated header): {e}") from e


def _load_npy(path: str, field: str) -> np.ndarray:
    """A ``.npy`` memory-mapped read-only; arrays of Python objects are unpickled instead.

    Truncation is detected from the header's shape before anything is mapped.
    """
    with open(path, "rb") as f:
        shape, fortran, dtype = _read_npy_header(f, path)
        offset = f.tell()
    if dtype.hasobject:
        return _unpickle(
            lambda: np.load(path, allow_pickle=True, encoding="bytes"), path, f"{field!r} array"
        )
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if os.path.getsize(path) < need:
        raise DataFormatError(
            f"{path}: field {field!r} truncated: header says {shape} {dtype} ({need} bytes), "
            f"file has {os.path.getsize(path)}"
        )
    return np.load(path, mmap_mode="r")


def _npz_member(path: str, key: str) -> np.ndarray:
    """Array ``key`` of an ``.npz``: an ``np.memmap`` if stored uncompressed (``np.savez``), else
    loaded (that member only)."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataFormatError(f"{path}: not a readable .npz (truncated or corrupt?): {e}") from e
    with zf:
        name = key + ".npy"
        names = zf.namelist()
        if name not in names:
            have = sorted(n.removesuffix(".npy") for n in names)
            raise DataFormatError(f"{path}: missing field {key!r} (found {have})")
        info = zf.getinfo(name)
        if info.compress_type == zipfile.ZIP_STORED:
            with open(path, "rb") as f:
                # Local header: 30 fixed bytes, then name and extra field of the lengths at 26/28.
                f.seek(info.header_offset)
                local = f.read(30)
                if len(local) < 30 or local[:4] != b"PK\x03\x04":
                    raise DataFormatError(f"{path}: field {key!r}: corrupt zip local header")
                start = (
                    info.header_offset
                    + 30
                    + int.from_bytes(local[26:28], "little")
                    + int.from_bytes(local[28:30], "little")
                )
                f.seek(start)
                shape, fortran, dtype = _read_npy_header(f, f"{path}:{name}")
                offset = f.tell()
            if not dtype.hasobject and 0 in shape:
                return np.zeros(shape, dtype)  # mmap cannot map zero bytes
            if not dtype.hasobject:
                need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                if os.path.getsize(path) < need:
                    raise DataFormatError(
                        f"{path}: field {key!r} truncated: needs {need} bytes, file has "
                        f"{os.path.getsize(path)}"
                    )
                return np.memmap(
                    path,
                    dtype=dtype,
                    mode="r",
                    offset=offset,
                    shape=shape,
                    order="F" if fortran else "C",
                )
        try:
            with zf.open(name) as member:
                return np.lib.format.read_array(member, allow_pickle=False)
        except Exception as e:
            raise DataFormatError(
                f"{path}: field {key!r} unreadable (truncated or corrupt?): {e}"
            ) from e


# ---------------------------------------------------------------------------------------------
# CIFAR-100


def _parse_cifar100(d: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    data = np.asarray(_get(d, "data", name))
    labels = np.asarray(_get(d, "fine_labels", name))
    check_shape(data, (None, 3072), name, "data")
    check_dtype(data, "iu", name, "data")
    if data.size and (data.min() < 0 or data.max() > 255):
        raise DataFormatError(f"{name}: field 'data' has values outside 0..255")
    check_shape(labels, (len(data),), name, "fine_labels")
    # Rows are 1024 R, then G, then B values, each plane row-major: a plain reshape is NCHW.
    x = data.reshape(-1, 3, 32, 32).astype(np.uint8)
    return x, _int_labels(labels, 100, name, "fine_labels")


def read_cifar100(root: str, *, seed: int = 0) -> Splits:
    """CIFAR-100 from the python archive: ``root/cifar-100-python/{train,test}`` or
    ``root/cifar-100-python.tar.gz`` (members read in place, nothing extracted).

    x: raw uint8 pixels N×3×32×32 (scaling/normalisation is the task layer's job); y: fine
    labels, int32. No official validation split: ``len(test)`` training images are held out,
    class-stratified and seeded by ``seed`` (spec §8.1), disjoint from train.
    """
    folder = os.path.join(root, "cifar-100-python")
    archive = os.path.join(root, "cifar-100-python.tar.gz")
    parts = {}
    if os.path.isdir(folder):
        for split in ("train", "test"):
            path = require_file(folder, split)

            def load(path: str = path) -> Any:
                with open(path, "rb") as f:
                    return pickle.load(f, encoding="bytes")

            parts[split] = _parse_cifar100(_unpickle(load, path, "CIFAR-100 pickle"), path)
    elif os.path.exists(archive):
        with _unpickle(lambda: tarfile.open(archive, "r:gz"), archive, "tar.gz archive") as tar:
            for split in ("train", "test"):
                member = f"cifar-100-python/{split}"
                name = f"{archive}:{member}"

                def load(member: str = member) -> Any:
                    try:
                        f = tar.extractfile(member)
                    except KeyError as e:
                        raise DataFormatError(f"{archive}: no member {member!r}") from e
                    if f is None:
                        raise DataFormatError(f"{archive}: member {member!r} is not a file")
                    return pickle.load(f, encoding="bytes")

                parts[split] = _parse_cifar100(_unpickle(load, name, "CIFAR-100 pickle"), name)
    else:
        raise DataFormatError(
            f"{folder}: file not found (nor {archive}); expected the CIFAR-100 python archive"
        )
    (x, y), (xt, yt) = parts["train"], parts["test"]
    tr, va = _holdout(y, len(yt), seed, folder if os.path.isdir(folder) else archive)
    return {
        "train": _split(x[tr], y[tr], "cifar100/train"),
        "val": _split(x[va], y[va], "cifar100/train"),
        "test": _split(xt, yt, "cifar100/test"),
    }


# ---------------------------------------------------------------------------------------------
# Spherical CIFAR-100


def read_spherical(root: str, *, seed: int = 0) -> Splits:
    """Spherical CIFAR-100 from ``root/s2_cifar100.gz`` (a gzipped pickle of
    ``{"train"|"test": {"images": N×3×60×60, "labels": N}}``).

    x: float32 N×3×60×60 divided by 255 as the reference; y: int32, 100 classes. Validation:
    ``len(test)`` training images held out, class-stratified, seeded, disjoint (spec §8.1).
    """
    path = require_file(root, "s2_cifar100.gz")

    def load() -> Any:
        with gzip.open(path, "rb") as f:
            return pickle.load(f)

    dataset = _unpickle(load, path, "gzipped pickle")
    out = {}
    for split in ("train", "test"):
        part = _get(dataset, split, path)
        images = np.asarray(_get(part, "images", f"{path} [{split!r}]"))
        labels = np.asarray(_get(part, "labels", f"{path} [{split!r}]"))
        check_shape(images, (None, 3, 60, 60), path, f"{split}/images")
        check_dtype(images, "fiu", path, f"{split}/images")
        check_shape(labels, (len(images),), path, f"{split}/labels")
        x = images.astype(np.float32)
        del images
        x /= 255.0
        out[split] = (x, _int_labels(labels, 100, path, f"{split}/labels"))
    del dataset
    (x, y), (xt, yt) = out["train"], out["test"]
    tr, va = _holdout(y, len(yt), seed, path)
    return {
        "train": _split(x[tr], y[tr], path),
        "val": _split(x[va], y[va], path),
        "test": _split(xt, yt, path),
    }


# ---------------------------------------------------------------------------------------------
# Darcy flow

_DARCY_RES = 421


def _read_mat_field(path: str, field: str, rows: slice, r: int) -> np.ndarray:
    """``field[rows, ::r, ::r]`` of a MATLAB file as float32 (N, H, W), v5 or v7.3.

    v7.3 (HDF5) stores MATLAB's column-major arrays with reversed axes, so a MATLAB
    N×421×421 array is an HDF5 421×421×N dataset; only the requested hyperslab is read.
    """
    import h5py

    if h5py.is_hdf5(path):
        try:
            f = h5py.File(path, "r")
        except Exception as e:
            raise DataFormatError(f"{path}: not a readable MATLAB v7.3 file: {e}") from e
        with f:
            if field not in f or not isinstance(f[field], h5py.Dataset):
                raise DataFormatError(f"{path}: missing field {field!r} (found {sorted(f.keys())})")
            ds = f[field]
            logical = tuple(reversed(ds.shape))
            # check_shape/check_dtype only look at these attributes; nothing is read yet.
            meta = SimpleNamespace(shape=logical, ndim=len(logical), dtype=ds.dtype)
            check_shape(meta, (None, _DARCY_RES, _DARCY_RES), path, field)
            check_dtype(meta, "fiu", path, field)
            start, stop = _rows(rows, logical[0], path, field)
            try:
                block = ds[::r, ::r, start:stop]
            except Exception as e:
                raise DataFormatError(
                    f"{path}: field {field!r} unreadable (truncated?): {e}"
                ) from e
            return np.ascontiguousarray(block.transpose(2, 1, 0), dtype=np.float32)

    import scipy.io

    try:
        mat = scipy.io.loadmat(path, variable_names=[field])
    except Exception as e:
        raise DataFormatError(f"{path}: not a readable MATLAB file (truncated?): {e}") from e
    if field not in mat:
        try:
            have = sorted(name for name, *_ in scipy.io.whosmat(path))
        except Exception:
            have = "?"
        raise DataFormatError(f"{path}: missing field {field!r} (found {have})")
    arr = mat.pop(field)
    check_shape(arr, (None, _DARCY_RES, _DARCY_RES), path, field)
    check_dtype(arr, "fiu", path, field)
    start, stop = _rows(rows, len(arr), path, field)
    return np.ascontiguousarray(arr[start:stop, ::r, ::r], dtype=np.float32)


def _rows(rows: slice, n: int, path: str, field: str) -> tuple[int, int]:
    """``(start, stop)`` of ``rows``; a file with fewer samples than the split needs is an error
    (the reference would silently train on fewer)."""
    if rows.stop is not None and rows.stop > n:
        raise DataFormatError(
            f"{path}: field {field!r} has {n} samples, the split needs {rows.stop}"
        )
    start, stop, _ = rows.indices(n)
    return start, stop


def darcy_grid(s: int) -> np.ndarray:
    """The reference's 2×s×s coordinate channels: ``[0]`` = x (varies along columns),
    ``[1]`` = y (varies along rows), both ``linspace(0, 1, s)``.

    Reference: ``np.meshgrid`` (``xy`` indexing) of two ``linspace(0, 1, s)``, stacked as the
    last axis and permuted to channels (ORCA 19b8c1c ``src/data_loaders.py`` lines 360-377).
    """
    gx, gy = np.meshgrid(np.linspace(0, 1, s), np.linspace(0, 1, s))
    return np.stack([gx, gy]).astype(np.float32)


def read_darcy(
    root: str,
    *,
    r: int = 5,
    seed: int = 0,
    ntrain: int = 1000,
    nval: int = 100,
    ntest: int = 100,
) -> Splits:
    """Darcy flow (FNO's ``piececonst_r421_N1024_smooth{1,2}.mat``), MATLAB v5 or v7.3.

    Fields ``coeff`` and ``sol`` (N×421×421) subsampled every ``r``-th point (s = 420/r + 1,
    85 for r = 5). Train and val are the first ``ntrain`` samples of ``smooth1`` (val = the last
    ``nval`` of them: 900/100 by default), test the first ``ntest`` of ``smooth2``.
    x: float32 N×3×s×s = [coeff, grid x, grid y] (see :func:`darcy_grid`); y: float32 N×1×s×s.
    Nothing is normalised: the reference normalises the coefficient channel and ``sol``
    per position with train statistics (:func:`unit_gaussian_stats`); the grid stays raw.
    ``seed`` is unused (the split is fixed) and kept for a uniform signature.
    """
    del seed
    if not 0 < nval < ntrain:
        raise ValueError(f"nval={nval} must be in (0, ntrain={ntrain})")
    train_path = require_file(root, "piececonst_r421_N1024_smooth1.mat")
    test_path = require_file(root, "piececonst_r421_N1024_smooth2.mat")
    s = (_DARCY_RES - 1) // r + 1
    grid = darcy_grid(s)

    def fields(path: str, rows: slice) -> tuple[np.ndarray, np.ndarray]:
        coeff = _read_mat_field(path, "coeff", rows, r)[:, :s, :s]
        sol = _read_mat_field(path, "sol", rows, r)[:, :s, :s]
        x = np.empty((len(coeff), 3, s, s), np.float32)
        x[:, 0] = coeff
        x[:, 1:] = grid
        return x, sol[:, None]

    x, y = fields(train_path, slice(0, ntrain))
    xt, yt = fields(test_path, slice(0, ntest))
    cut = ntrain - nval
    return {
        "train": _split(x[:cut], y[:cut], train_path),
        "val": _split(x[cut:], y[cut:], train_path),
        "test": _split(xt, yt, test_path),
    }


# ---------------------------------------------------------------------------------------------
# NinaPro


def read_ninapro(root: str, *, seed: int = 0) -> Splits:
    """NinaPro DB5 from ``root/ninaPro/{ninapro,label}_{train,val,test}.npy`` (official splits).

    The files hold N×52×16 EMG windows; x is float32 N×1×16×52 as the reference's
    ``permute(0, 2, 1)`` + ``unsqueeze(1)``; y: int32, 18 classes. ``seed`` is unused.
    """
    del seed
    out = {}
    for split in ("train", "val", "test"):
        xpath = require_file(root, "ninaPro", f"ninapro_{split}.npy")
        ypath = require_file(root, "ninaPro", f"label_{split}.npy")
        data = _load_npy(xpath, "ninapro")
        labels = np.asarray(_load_npy(ypath, "label"))
        check_shape(data, (None, 52, 16), xpath, "ninapro")
        check_dtype(data, "fiu", xpath, "ninapro")
        check_finite(data, xpath, "ninapro")
        check_shape(labels, (None,), ypath, "label")
        x = np.ascontiguousarray(np.asarray(data).transpose(0, 2, 1)[:, None], dtype=np.float32)
        y = _int_labels(labels, NUM_CLASSES["ninapro"], ypath, "label")
        if len(x) != len(y):
            raise DataFormatError(f"{xpath} has {len(x)} examples but {ypath} has {len(y)} labels")
        out[split] = {"x": x, "y": y}
    return out


# ---------------------------------------------------------------------------------------------
# ECG (PhysioNet/CinC 2017)

ECG_LABELS = {"N": 0, "A": 1, "O": 2, "~": 3}
ECG_WINDOW, ECG_STRIDE = 1000, 500
# The reference's slide_and_cut (datatype 4) oversamples the rare classes with shorter strides:
# N 500, A 500//6, O 500//2, ~ 500//20 (ORCA 19b8c1c src/data_loaders.py lines 2171-2193).
ECG_CLASS_STRIDES = (ECG_STRIDE, ECG_STRIDE // 6, ECG_STRIDE // 2, ECG_STRIDE // 20)


def _ecg_windows(
    records: list[np.ndarray], labels: np.ndarray, class_strides: bool, name: str
) -> tuple[LazyArray, np.ndarray]:
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

    x = LazyArray(len(starts), (1, ECG_WINDOW), np.float32, name=name, gather=gather)
    return x, np.concatenate(ys) if ys else np.zeros(0, np.int32)


def reference_test_split(n: int, test_fraction: float, random_state: int) -> np.ndarray:
    """Test indices of ``sklearn.model_selection.train_test_split(range(n),
    test_size=test_fraction, random_state=random_state)`` (unstratified ShuffleSplit: the
    first ``ceil(test_fraction · n)`` entries of ``RandomState(random_state).permutation(n)``).

    Reproduced with NumPy so the reference's ECG test records are kept exactly.
    """
    n_test = int(np.ceil(test_fraction * n))
    return np.sort(np.random.RandomState(random_state).permutation(n)[:n_test])


def read_ecg(root: str, *, seed: int = 0, class_strides: bool = True) -> Splits:
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
    path = require_file(root, "challenge2017.pkl")

    def load() -> Any:
        with open(path, "rb") as f:
            return pickle.load(f)

    res = _unpickle(load, path, "pickle")
    data = _get(res, "data", path)
    raw_labels = _get(res, "label", path)
    try:
        n, n_labels = len(data), len(raw_labels)
    except TypeError as e:
        raise DataFormatError(f"{path}: fields 'data' and 'label' must be sequences") from e
    if n != n_labels:
        raise DataFormatError(f"{path}: {n} records in 'data' but {n_labels} entries in 'label'")
    labels = np.empty(n, np.int32)
    for i, lab in enumerate(raw_labels):
        lab = lab.decode() if isinstance(lab, bytes) else lab
        if lab not in ECG_LABELS:
            raise DataFormatError(
                f"{path}: field 'label' has {lab!r} at index {i}, expected one of "
                f"{sorted(ECG_LABELS)}"
            )
        labels[i] = ECG_LABELS[lab]
    records = []
    for i, rec in enumerate(data):
        rec = np.asarray(rec)
        if rec.ndim != 1 or rec.dtype.kind not in "fiu":
            raise DataFormatError(
                f"{path}: field 'data' record {i} has shape {rec.shape} dtype {rec.dtype}, "
                "expected a 1-D numeric signal"
            )
        rec = rec.astype(np.float64)
        std = rec.std()
        if not np.isfinite(std) or std == 0:
            raise DataFormatError(f"{path}: field 'data' record {i} is constant or non-finite")
        records.append(((rec - rec.mean()) / std).astype(np.float32))
    del res, data

    test = reference_test_split(n, 0.1, 0)
    rest = np.setdiff1d(np.arange(n), test)
    tr, va = _holdout(labels[rest], len(test), seed, path)
    out = {}
    for split, idx in (("train", rest[tr]), ("val", rest[va]), ("test", test)):
        x, y = _ecg_windows(
            [records[i] for i in idx], labels[idx], class_strides, f"{path} [{split}]"
        )
        out[split] = _split(x, y, path)
    return out


# ---------------------------------------------------------------------------------------------
# Satellite


def read_satellite(root: str, *, seed: int = 0) -> Splits:
    """Satellite image time series from ``root/satellite_{train,test}.npy`` (each a pickled dict
    ``{"data": N×46, "label": N}`` in a 0-d object array; labels 1-based).

    x: float32 N×1×46; y: int32 in 0..23 (file label − 1). Validation: ``len(test)`` training
    series held out, class-stratified, seeded, disjoint from train (spec §8.2: the reference's
    validation overlapped its training set).
    """
    out = {}
    for split in ("train", "test"):
        path = require_file(root, f"satellite_{split}.npy")
        obj = _unpickle(lambda path=path: np.load(path, allow_pickle=True), path, ".npy")
        if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.shape == ():
            obj = obj.item()
        data = np.asarray(_get(obj, "data", path))
        labels = np.asarray(_get(obj, "label", path))
        check_shape(data, (None, 46), path, "data")
        check_dtype(data, "fiu", path, "data")
        check_finite(data, path, "data")
        check_shape(labels, (len(data),), path, "label")
        y = _int_labels(labels, NUM_CLASSES["satellite"], path, "label", offset=1)
        out[split] = (data.astype(np.float32)[:, None, :], y, path)
    (x, y, path), (xt, yt, test_path) = out["train"], out["test"]
    tr, va = _holdout(y, len(yt), seed, path)
    return {
        "train": _split(x[tr], y[tr], path),
        "val": _split(x[va], y[va], path),
        "test": _split(xt, yt, test_path),
    }


# ---------------------------------------------------------------------------------------------
# DeepSEA


def read_deepsea(root: str, *, seed: int = 0) -> Splits:
    """DeepSEA (filtered to 36 chromatin labels) from ``root/deepsea_filtered.npz``: keys
    ``x_{train,val,test}`` (one-hot N×1000×4) and ``y_{train,val,test}`` (N×36); official splits.

    x: a lazy float32 N×4×1000 view: when the ``.npz`` is uncompressed (``np.savez``) each
    member is memory-mapped and batches are transposed and cast on access, so the multi-GB
    arrays are never read whole; a compressed member is decompressed alone. y: float32 N×36 in
    {0, 1}. The reference trains on train + val (spec §7); selection here uses val. ``seed`` is
    unused.
    """
    del seed
    path = require_file(root, "deepsea_filtered.npz")
    out = {}
    for split in ("train", "val", "test"):
        xk, yk = f"x_{split}", f"y_{split}"
        xs = _npz_member(path, xk)
        check_shape(xs, (None, 1000, 4), path, xk)
        check_dtype(xs, "biuf", path, xk)
        check_finite(xs, path, xk)
        ys = _npz_member(path, yk)
        check_shape(ys, (None, NUM_CLASSES["deepsea"]), path, yk)
        check_dtype(ys, "biuf", path, yk)
        y = np.asarray(ys, dtype=np.float32)
        bad = np.flatnonzero((y != 0) & (y != 1))
        if bad.size:
            i = int(bad[0])
            raise DataFormatError(
                f"{path}: field {yk!r} has value {y.flat[i]} at flat index {i}, expected 0 or 1 "
                f"({bad.size} such values)"
            )

        def gather(idx: np.ndarray, xs: np.ndarray = xs) -> np.ndarray:
            return np.asarray(xs[idx]).transpose(0, 2, 1)

        x = LazyArray(len(xs), (4, 1000), np.float32, name=f"{path} [{xk}]", gather=gather)
        out[split] = _split(x, y, path)
    return out


READERS: dict[str, Callable[..., Splits]] = {
    "cifar100": read_cifar100,
    "spherical": read_spherical,
    "darcy": read_darcy,
    "ninapro": read_ninapro,
    "ecg": read_ecg,
    "satellite": read_satellite,
    "deepsea": read_deepsea,
}
