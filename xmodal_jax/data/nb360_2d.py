"""NAS-Bench-360 readers of the 2D tasks: CIFAR-100, Spherical CIFAR-100, Darcy flow (MATLAB
v5 / v7.3) and NinaPro (16×52 EMG maps). See :mod:`xmodal_jax.data.nb360` for the table of
layouts; every malformed file raises ``DataFormatError`` naming file and field.
"""

from __future__ import annotations

import gzip
import os
import pickle
import tarfile
from types import SimpleNamespace
from typing import Any

import numpy as np

from xmodal_jax.data import formats, nb360_files

# ---------------------------------------------------------------------------------------------
# CIFAR-100


def _parse_cifar100(d: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    data = np.asarray(nb360_files.get_field(d, "data", name))
    labels = np.asarray(nb360_files.get_field(d, "fine_labels", name))
    formats.check_shape(data, (None, 3072), name, "data")
    formats.check_dtype(data, "iu", name, "data")
    if data.size and (data.min() < 0 or data.max() > 255):
        raise formats.DataFormatError(f"{name}: field 'data' has values outside 0..255")
    formats.check_shape(labels, (len(data),), name, "fine_labels")
    # Rows are 1024 R, then G, then B values, each plane row-major: a plain reshape is NCHW.
    x = data.reshape(-1, 3, 32, 32).astype(np.uint8)
    return x, nb360_files.int_labels(labels, 100, name, "fine_labels")


def read_cifar100(root: str, *, seed: int = 0) -> formats.Splits:
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
            path = formats.require_file(folder, split)

            def load(path: str = path) -> Any:
                with open(path, "rb") as f:
                    return pickle.load(f, encoding="bytes")

            parts[split] = _parse_cifar100(
                nb360_files.unpickle(load, path, "CIFAR-100 pickle"), path
            )
    elif os.path.exists(archive):
        with nb360_files.unpickle(
            lambda: tarfile.open(archive, "r:gz"), archive, "tar.gz archive"
        ) as tar:
            for split in ("train", "test"):
                member = f"cifar-100-python/{split}"
                name = f"{archive}:{member}"

                def load(member: str = member) -> Any:
                    try:
                        f = tar.extractfile(member)
                    except KeyError as e:
                        raise formats.DataFormatError(f"{archive}: no member {member!r}") from e
                    if f is None:
                        raise formats.DataFormatError(f"{archive}: member {member!r} is not a file")
                    return pickle.load(f, encoding="bytes")

                parts[split] = _parse_cifar100(
                    nb360_files.unpickle(load, name, "CIFAR-100 pickle"), name
                )
    else:
        raise formats.DataFormatError(
            f"{folder}: file not found (nor {archive}); expected the CIFAR-100 python archive"
        )
    (x, y), (xt, yt) = parts["train"], parts["test"]
    tr, va = nb360_files.holdout(y, len(yt), seed, folder if os.path.isdir(folder) else archive)
    return {
        "train": nb360_files.checked_split(x[tr], y[tr], "cifar100/train"),
        "val": nb360_files.checked_split(x[va], y[va], "cifar100/train"),
        "test": nb360_files.checked_split(xt, yt, "cifar100/test"),
    }


# ---------------------------------------------------------------------------------------------
# Spherical CIFAR-100


def read_spherical(root: str, *, seed: int = 0) -> formats.Splits:
    """Spherical CIFAR-100 from ``root/s2_cifar100.gz`` (a gzipped pickle of
    ``{"train"|"test": {"images": N×3×60×60, "labels": N}}``).

    x: float32 N×3×60×60 divided by 255 as the reference; y: int32, 100 classes. Validation:
    ``len(test)`` training images held out, class-stratified, seeded, disjoint (spec §8.1).
    """
    path = formats.require_file(root, "s2_cifar100.gz")

    def load() -> Any:
        with gzip.open(path, "rb") as f:
            return pickle.load(f)

    dataset = nb360_files.unpickle(load, path, "gzipped pickle")
    out = {}
    for split in ("train", "test"):
        part = nb360_files.get_field(dataset, split, path)
        images = np.asarray(nb360_files.get_field(part, "images", f"{path} [{split!r}]"))
        labels = np.asarray(nb360_files.get_field(part, "labels", f"{path} [{split!r}]"))
        formats.check_shape(images, (None, 3, 60, 60), path, f"{split}/images")
        formats.check_dtype(images, "fiu", path, f"{split}/images")
        formats.check_shape(labels, (len(images),), path, f"{split}/labels")
        x = images.astype(np.float32)
        del images
        x /= 255.0
        out[split] = (x, nb360_files.int_labels(labels, 100, path, f"{split}/labels"))
    del dataset
    (x, y), (xt, yt) = out["train"], out["test"]
    tr, va = nb360_files.holdout(y, len(yt), seed, path)
    return {
        "train": nb360_files.checked_split(x[tr], y[tr], path),
        "val": nb360_files.checked_split(x[va], y[va], path),
        "test": nb360_files.checked_split(xt, yt, path),
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
            raise formats.DataFormatError(f"{path}: not a readable MATLAB v7.3 file: {e}") from e
        with f:
            if field not in f or not isinstance(f[field], h5py.Dataset):
                raise formats.DataFormatError(
                    f"{path}: missing field {field!r} (found {sorted(f.keys())})"
                )
            ds = f[field]
            logical = tuple(reversed(ds.shape))
            # check_shape/check_dtype only look at these attributes; nothing is read yet.
            meta = SimpleNamespace(shape=logical, ndim=len(logical), dtype=ds.dtype)
            formats.check_shape(meta, (None, _DARCY_RES, _DARCY_RES), path, field)
            formats.check_dtype(meta, "fiu", path, field)
            start, stop = _rows(rows, logical[0], path, field)
            try:
                block = ds[::r, ::r, start:stop]
            except Exception as e:
                raise formats.DataFormatError(
                    f"{path}: field {field!r} unreadable (truncated?): {e}"
                ) from e
            return np.ascontiguousarray(block.transpose(2, 1, 0), dtype=np.float32)

    import scipy.io

    try:
        mat = scipy.io.loadmat(path, variable_names=[field])
    except Exception as e:
        raise formats.DataFormatError(
            f"{path}: not a readable MATLAB file (truncated?): {e}"
        ) from e
    if field not in mat:
        try:
            have = sorted(name for name, *_ in scipy.io.whosmat(path))
        except Exception:
            have = "?"
        raise formats.DataFormatError(f"{path}: missing field {field!r} (found {have})")
    arr = mat.pop(field)
    formats.check_shape(arr, (None, _DARCY_RES, _DARCY_RES), path, field)
    formats.check_dtype(arr, "fiu", path, field)
    start, stop = _rows(rows, len(arr), path, field)
    return np.ascontiguousarray(arr[start:stop, ::r, ::r], dtype=np.float32)


def _rows(rows: slice, n: int, path: str, field: str) -> tuple[int, int]:
    """``(start, stop)`` of ``rows``; a file with fewer samples than the split needs is an error
    (the reference would silently train on fewer)."""
    if rows.stop is not None and rows.stop > n:
        raise formats.DataFormatError(
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
) -> formats.Splits:
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
    train_path = formats.require_file(root, "piececonst_r421_N1024_smooth1.mat")
    test_path = formats.require_file(root, "piececonst_r421_N1024_smooth2.mat")
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
        "train": nb360_files.checked_split(x[:cut], y[:cut], train_path),
        "val": nb360_files.checked_split(x[cut:], y[cut:], train_path),
        "test": nb360_files.checked_split(xt, yt, test_path),
    }


# ---------------------------------------------------------------------------------------------
# NinaPro


def read_ninapro(root: str, *, seed: int = 0) -> formats.Splits:
    """NinaPro DB5 from ``root/ninaPro/{ninapro,label}_{train,val,test}.npy`` (official splits).

    The files hold N×52×16 EMG windows; x is float32 N×1×16×52 as the reference's
    ``permute(0, 2, 1)`` + ``unsqueeze(1)``; y: int32, 18 classes. ``seed`` is unused.
    """
    del seed
    out = {}
    for split in ("train", "val", "test"):
        xpath = formats.require_file(root, "ninaPro", f"ninapro_{split}.npy")
        ypath = formats.require_file(root, "ninaPro", f"label_{split}.npy")
        data = nb360_files.load_npy(xpath, "ninapro")
        labels = np.asarray(nb360_files.load_npy(ypath, "label"))
        formats.check_shape(data, (None, 52, 16), xpath, "ninapro")
        formats.check_dtype(data, "fiu", xpath, "ninapro")
        formats.check_finite(data, xpath, "ninapro")
        formats.check_shape(labels, (None,), ypath, "label")
        x = np.ascontiguousarray(np.asarray(data).transpose(0, 2, 1)[:, None], dtype=np.float32)
        y = nb360_files.int_labels(labels, nb360_files.NUM_CLASSES["ninapro"], ypath, "label")
        if len(x) != len(y):
            raise formats.DataFormatError(
                f"{xpath} has {len(x)} examples but {ypath} has {len(y)} labels"
            )
        out[split] = {"x": x, "y": y}
    return out
