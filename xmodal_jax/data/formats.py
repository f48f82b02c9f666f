"""Shared checks for readers of the tasks' original files: every error names file and field.

Readers return ``Splits``: ``{"train": {"x": ..., "y": ...}, "val": {...}, "test": {...}}`` of
numpy arrays (or read-only memory maps), inputs channels-first as spec/orca.md §7 lists them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

Splits = dict[str, dict[str, np.ndarray]]


class DataFormatError(ValueError):
    """A task file is missing, truncated or does not have the documented layout."""


def require_file(root: str, *parts: str) -> str:
    """``os.path.join(root, *parts)``, or an error naming the missing path."""
    path = os.path.join(root, *parts)
    if not os.path.exists(path):
        raise DataFormatError(f"{path}: file not found (expected under the manual dir {root})")
    return path


def require_key(obj: Mapping[str, Any], key: str, path: str) -> Any:
    """``obj[key]``, or an error naming the file and the missing field."""
    try:
        return obj[key]
    except (KeyError, IndexError, ValueError) as e:
        have = sorted(map(str, obj.keys())) if hasattr(obj, "keys") else "?"
        raise DataFormatError(f"{path}: missing field {key!r} (found {have})") from e


def check_shape(arr: np.ndarray, shape: Sequence[int | None], path: str, field: str) -> np.ndarray:
    """Checks ``arr.shape`` against ``shape`` (``None`` = any size), naming file and field."""
    ok = arr.ndim == len(shape) and all(
        w is None or w == g for g, w in zip(arr.shape, shape, strict=True)
    )
    if not ok:
        want = "×".join("N" if w is None else str(w) for w in shape)
        raise DataFormatError(f"{path}: field {field!r} has shape {arr.shape}, expected {want}")
    return arr


def check_dtype(arr: np.ndarray, kinds: str, path: str, field: str) -> np.ndarray:
    """Checks ``arr.dtype.kind`` is one of ``kinds`` (e.g. ``"fiu"``), naming file and field."""
    if arr.dtype.kind not in kinds:
        raise DataFormatError(
            f"{path}: field {field!r} has dtype {arr.dtype}, expected one of kinds {kinds!r}"
        )
    return arr


def check_finite(arr: Any, path: str, field: str, first_row: int = 0, chunk: int = 4096) -> Any:
    """Every value of a float ``arr`` is finite; NaN/inf names the file, field, count and first
    bad row. Integer and boolean arrays pass as they are; memory-mapped arrays are scanned in
    chunks of ``chunk`` rows, so a multi-GB file is never held whole."""
    if np.dtype(arr.dtype).kind != "f":
        return arr
    bad_rows, first = 0, None
    for a in range(0, len(arr), chunk):
        block = np.asarray(arr[a : a + chunk])
        bad = ~np.isfinite(block.reshape(len(block), -1)).all(axis=1)
        if bad.any():
            bad_rows += int(bad.sum())
            first = a + int(np.flatnonzero(bad)[0]) if first is None else first
    if bad_rows:
        raise DataFormatError(
            f"{path}: field {field!r} has NaN/inf values in {bad_rows} samples "
            f"(first: sample {first_row + first})"
        )
    return arr


def check_labels(labels: np.ndarray, num_classes: int, path: str, field: str) -> np.ndarray:
    """Integer labels in ``[0, num_classes)``; an out-of-range label names its index and value."""
    labels = np.asarray(labels)
    check_dtype(labels, "iu", path, field)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise DataFormatError(
            f"{path}: field {field!r} has label {labels.flat[i]} at index {i}, outside "
            f"[0, {num_classes}) ({bad.size} such labels)"
        )
    return labels.astype(np.int32)


def check_lengths(split: Mapping[str, np.ndarray], path: str) -> None:
    """All arrays of a split share their leading dimension."""
    sizes = {k: len(v) for k, v in split.items()}
    if len(set(sizes.values())) > 1:
        raise DataFormatError(f"{path}: fields disagree on the number of examples: {sizes}")


def unit_gaussian_stats(x: Any, eps: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Per-position ``(mean, std + eps)`` over axis 0, as the reference's UnitGaussianNormalizer.

    Encode with ``(x - mean) / std`` and decode with ``x * std + mean``: ``eps`` is already in
    ``std``, as in the reference's encode and decode. ``std`` is the unbiased (n − 1) estimate,
    as ``torch.std``. Both are float32 with shape ``x.shape[1:]``.
    """
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        raise ValueError(f"need at least 2 examples for a standard deviation, got {len(x)}")
    mean = x.mean(axis=0)
    std = x.std(axis=0, ddof=1) + eps
    return mean.astype(np.float32), std.astype(np.float32)


class LazyArray:
    """An array-like over examples loaded on demand: ``len()``, ``.shape``, ``a[int | ints]``.

    For datasets too large for memory (PSICOV's 57×512×512 features, per-file images, memory-mapped
    arrays that need a transform): readers return one of these instead of an ndarray and the Grain
    pipeline indexes it like one. ``load(i)`` returns example ``i``; an optional vectorised
    ``gather(int_indices)`` returns a whole batch at once (one call instead of a Python loop).
    """

    def __init__(
        self,
        n: int,
        example_shape: Sequence[int],
        dtype: Any,
        load: Callable[[int], np.ndarray] | None = None,
        name: str = "",
        gather: Callable[[np.ndarray], np.ndarray] | None = None,
    ):
        if load is None and gather is None:
            raise ValueError("LazyArray needs load or gather")
        self.n, self.example_shape, self.dtype = n, tuple(example_shape), np.dtype(dtype)
        self._load = load if load is not None else (lambda i: gather(np.array([i]))[0])
        self._gather, self.name = gather, name

    def __len__(self) -> int:
        return self.n

    @property
    def shape(self) -> tuple[int, ...]:
        """``(n, *example_shape)``, like an ndarray."""
        return (self.n, *self.example_shape)

    @property
    def ndim(self) -> int:
        """Number of dimensions including the example axis."""
        return 1 + len(self.example_shape)

    def _one(self, i: int) -> np.ndarray:
        x = np.asarray(self._load(int(i)), dtype=self.dtype)
        if x.shape != self.example_shape:
            raise DataFormatError(
                f"{self.name}: example {i} has shape {x.shape}, expected {self.example_shape}"
            )
        return x

    def __getitem__(self, idx: Any) -> np.ndarray:
        if isinstance(idx, int | np.integer):
            return self._one(int(idx) + (self.n if idx < 0 else 0))
        idx = np.arange(self.n)[idx] if isinstance(idx, slice) else np.asarray(idx)
        if idx.dtype == bool:
            if idx.shape != (self.n,):
                raise IndexError(f"boolean index of shape {idx.shape} for {self.n} examples")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        if idx.size and (idx.min() < -self.n or idx.max() >= self.n):
            raise IndexError(f"index out of range for {self.n} examples of {self.name}")
        idx = np.where(idx < 0, idx + self.n, idx)
        if self._gather is not None:
            out = np.asarray(self._gather(idx), dtype=self.dtype)
            if out.shape != (len(idx), *self.example_shape):
                raise DataFormatError(
                    f"{self.name}: a batch has shape {out.shape}, expected "
                    f"{(len(idx), *self.example_shape)}"
                )
            return out
        out = np.empty((len(idx), *self.example_shape), self.dtype)
        for j, i in enumerate(idx):
            out[j] = self._one(int(i))
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[np.arange(self.n)]
        return out if dtype is None else out.astype(dtype)


def check_token_ids(ids: np.ndarray, vocab_size: int, where: str) -> np.ndarray:
    """Token ids in ``[0, vocab_size)``; otherwise a ValueError naming the bad id and where."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = ids[(ids < 0) | (ids >= vocab_size)]
        raise ValueError(
            f"{where}: token id {int(bad.flat[0])} is outside the vocabulary [0, {vocab_size}) "
            f"({bad.size} such ids); was the text tokenised with another model's tokenizer?"
        )
    return ids
