"""What the NAS-Bench-360 readers share: class counts, label checks, the seeded validation
hold-out, and ``.npy`` / ``.npz`` / pickle readers that memory-map where they can and turn
truncated or corrupt files into ``DataFormatError`` naming file and field.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from xmodal_jax.data.formats import (
    DataFormatError,
    check_dtype,
    check_labels,
    check_lengths,
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


def unpickle(load: Callable[[], Any], path: str, what: str) -> Any:
    """Runs a pickle/gzip/tar read, turning truncation and garbage into ``DataFormatError``."""
    try:
        return load()
    except DataFormatError:
        raise
    except Exception as e:  # EOFError, UnpicklingError, BadGzipFile, zlib.error, ReadError, ...
        raise DataFormatError(f"{path}: not a readable {what} (truncated or corrupt?): {e}") from e


def get_field(d: Any, key: str, path: str) -> Any:
    """``d[key]``, accepting Python-2 era byte keys as well; errors name file and field."""
    if not isinstance(d, Mapping):
        raise DataFormatError(f"{path}: expected a dict holding field {key!r}, got {type(d)}")
    if key not in d and key.encode() in d:
        return d[key.encode()]
    return require_key(d, key, path)


def int_labels(labels: Any, num_classes: int, path: str, field: str, offset: int = 0) -> np.ndarray:
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


def holdout(labels: np.ndarray, n_val: int, seed: int, path: str) -> tuple[np.ndarray, np.ndarray]:
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


def checked_split(x: Any, y: np.ndarray, path: str) -> dict[str, Any]:
    """``{"x", "y"}`` of one split, their lengths checked against each other."""
    out = {"x": x, "y": y}
    check_lengths(out, path)
    return out


def read_npy_header(f: Any, path: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of the ``.npy`` header at ``f``'s position."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        return np.lib.format.read_array_header_2_0(f)
    except Exception as e:
        raise DataFormatError(f"{path}: not a .npy array (bad or truncated header): {e}") from e


def load_npy(path: str, field: str) -> np.ndarray:
    """A ``.npy`` memory-mapped read-only; arrays of Python objects are unpickled instead.

    Truncation is detected from the header's shape before anything is mapped.
    """
    with open(path, "rb") as f:
        shape, fortran, dtype = read_npy_header(f, path)
        offset = f.tell()
    if dtype.hasobject:
        return unpickle(
            lambda: np.load(path, allow_pickle=True, encoding="bytes"), path, f"{field!r} array"
        )
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if os.path.getsize(path) < need:
        raise DataFormatError(
            f"{path}: field {field!r} truncated: header says {shape} {dtype} ({need} bytes), "
            f"file has {os.path.getsize(path)}"
        )
    return np.load(path, mmap_mode="r")


def npz_member(path: str, key: str) -> np.ndarray:
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
                shape, fortran, dtype = read_npy_header(f, f"{path}:{name}")
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
