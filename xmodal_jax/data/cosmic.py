"""Cosmic (NAS-Bench-360): cosmic-ray masks of HST ACS/WFC images (deepCR data).

Layout under the manual data dir ``root`` (sjunhongshen/ORCA ``load_cosmic`` and
``src/datasets/preprocess_cosmic.py``)::

    cosmic/train_dirs.npy, cosmic/test_dirs.npy   1-D string arrays of example paths, as written
        by preprocess_cosmic.py: ./cosmic/npy_{train,test}/f435w/<prop_id>/<vis_num>/<k>_*.npy
    <each example>.npy    stacked (3, H, W): image, cosmic-ray mask, ignore mask ((2, H, W): no
                          ignore mask, taken as zeros)
    <its dir>/sky.npy     optional: sky level per exposure; example ``<k>_*.npy`` uses entry k−1

The reference joins ``root`` with each path minus its first two characters (``./``); paths from
other machines are absolute. :func:`resolve_under_root` covers both: the longest tail of the path
that exists under ``root``. Every example is the fixed crop ``[64:192, 64:192]`` (reference
``get_fixed_crop``).

The reference adds ``sky × U(-0.9, 3)`` to every image it loads, test included (deepCR's
sky-level augmentation). The reader returns clean images and, for train, the per-example
``"sky"`` level, so training can apply :func:`sky_augment` and evaluation stays deterministic.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

from xmodal_jax.data.formats import DataFormatError, LazyArray, Splits, require_file

CROP = 128
CROP_OFFSET = 64
SKY_AUG = (-0.9, 3.0)


def resolve_under_root(
    root: str, path: str, listing: str, entry: int | str, *, isdir: bool = False
) -> str:
    """``path`` (relative or absolute, from another machine) re-rooted under ``root``.

    Tries ``root`` joined with successively shorter tails of ``path`` (all its directories, then
    without the first, ...; a file keeps at least its parent directory) and returns the first
    that exists (as a directory when ``isdir``); otherwise raises naming the listing file, the
    entry (an index, or a phrase such as ``"line 3"``) and the paths tried.
    ``./cosmic/npy_train/...`` resolves to ``root/cosmic/npy_train/...``, the reference's rule.
    """
    parts = os.path.normpath(str(path)).replace("\\", "/").split("/")
    parts = [p for p in parts if p not in ("", ".", "..")]
    keep = 1 if isdir else 2
    tried = [os.path.join(root, *parts[k:]) for k in range(len(parts) - keep + 1)]
    exists = os.path.isdir if isdir else os.path.isfile
    for candidate in tried:
        if exists(candidate):
            return candidate
    shown = ", ".join(tried[:2]) + (", ..." if len(tried) > 2 else "")
    where = f"entry {entry}" if isinstance(entry, int) else entry
    raise DataFormatError(
        f"{listing}: {where} {str(path)!r} not found under the manual dir {root} (tried {shown})"
    )


class _Resolver:
    """Resolves a listing's paths, searching once per directory (listings share few dirs)."""

    def __init__(self, root: str, listing: str):
        self.root, self.listing, self.dirs = root, listing, {}

    def __call__(self, path: str, entry: int) -> str:
        head, name = os.path.split(str(path))
        if head not in self.dirs:
            self.dirs[head] = os.path.dirname(
                resolve_under_root(self.root, path, self.listing, entry)
            )
        resolved = os.path.join(self.dirs[head], name)
        if os.path.isfile(resolved):
            return resolved
        return resolve_under_root(self.root, path, self.listing, entry)  # or raises


def _read_listing(path: str) -> list[str]:
    try:
        arr = np.load(path, allow_pickle=True)
    except (OSError, EOFError, ValueError) as e:
        raise DataFormatError(f"{path}: not a readable .npy of paths ({e})") from e
    if not isinstance(arr, np.ndarray) or arr.ndim != 1 or arr.dtype.kind not in "USO":
        raise DataFormatError(
            f"{path}: field 'paths' must be a 1-D string array, got "
            f"{getattr(arr, 'dtype', type(arr))} of shape {getattr(arr, 'shape', '?')}"
        )
    out = []
    for i, p in enumerate(arr.tolist()):
        if isinstance(p, bytes):
            p = p.decode()
        if not isinstance(p, str) or not p:
            raise DataFormatError(f"{path}: entry {i} is {p!r}, expected a path string")
        out.append(p)
    if not out:
        raise DataFormatError(f"{path}: no paths")
    return out


def _load_sky(sky_path: str) -> np.ndarray:
    try:
        sky = np.load(sky_path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataFormatError(f"{sky_path}: not a readable .npy ({e})") from e
    if sky.ndim != 1 or sky.dtype.kind not in "fiu":
        raise DataFormatError(
            f"{sky_path}: field 'sky' must be 1-D numeric, got {sky.dtype} {sky.shape}"
        )
    return sky


def _sky_level(example: str, listing: str, entry: int, load_sky=_load_sky) -> float:
    """The reference's ``get_skyaug`` base: ``sky.npy[k - 1]`` for ``<k>_*.npy``, else 0."""
    sky_path = os.path.join(os.path.dirname(example), "sky.npy")
    if not os.path.isfile(sky_path):
        return 0.0
    prefix = os.path.basename(example).split("_")[0]
    try:
        k = int(prefix)
    except ValueError as e:
        raise DataFormatError(
            f"{listing}: entry {entry} {example}: file name must start with '<k>_' to index "
            f"{sky_path}"
        ) from e
    sky = load_sky(sky_path)
    if not 1 <= k <= len(sky):
        raise DataFormatError(
            f"{sky_path}: field 'sky' has {len(sky)} entries; {example} needs {k}"
        )
    return float(sky[k - 1])


def load_example(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image, CR mask and ignore mask of one deepCR ``.npy``: the fixed 128×128 crop, 1×128×128
    float32 each (memory-mapped: only the crop is read)."""
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataFormatError(f"{path}: not a readable .npy ({e})") from e
    end = CROP_OFFSET + CROP
    if data.ndim != 3 or data.shape[0] not in (2, 3) or min(data.shape[1:]) < end:
        raise DataFormatError(
            f"{path}: field 'stack' has shape {data.shape}, expected (2 or 3)×H×W, H, W ≥ {end}"
        )
    if data.dtype.kind not in "fiub":
        raise DataFormatError(f"{path}: field 'stack' has dtype {data.dtype}, expected numeric")
    crop = np.array(data[:, CROP_OFFSET:end, CROP_OFFSET:end], dtype=np.float32)
    ignore = crop[2] if len(crop) == 3 else np.zeros_like(crop[0])
    return crop[0][None], crop[1][None], ignore[None]


def read_cosmic(root: str, *, seed: int = 0) -> Splits:
    """Cosmic splits of lazily loaded 1×128×128 float32 crops.

    Each split: ``x`` image, ``y`` cosmic-ray mask, ``ignore`` mask (1 = pixel excluded from the
    metric, spec §8.5), all ``LazyArray``; train also has float32 ``sky`` (the base level for
    :func:`sky_augment`, 0 where the directory has no sky.npy). ``val`` is ``len(test)``
    train examples held out with ``seed`` (disjoint); ``test`` is test_dirs.npy in file order.
    """
    require_file(root, "cosmic")
    listings, paths = {}, {}
    for split in ("train", "test"):
        listings[split] = require_file(root, "cosmic", f"{split}_dirs.npy")
        resolve = _Resolver(root, listings[split])
        paths[split] = [resolve(p, i) for i, p in enumerate(_read_listing(listings[split]))]
    n_train, n_test = len(paths["train"]), len(paths["test"])
    if n_test >= n_train:
        raise DataFormatError(
            f"{listings['train']}: {n_train} training paths cannot hold out {n_test} for val"
        )
    perm = np.random.default_rng(seed).permutation(n_train)
    entries = {
        "train": np.sort(perm[n_test:]),
        "val": np.sort(perm[:n_test]),
        "test": np.arange(n_test),
    }
    out: Splits = {}
    for split, idx in entries.items():
        files = [paths["test" if split == "test" else "train"][i] for i in idx]
        examples = _Examples(files)
        name = f"cosmic {split}"
        arrays: dict[str, Any] = {
            key: LazyArray(len(files), (1, CROP, CROP), np.float32, examples.plane(j), name)
            for j, key in enumerate(("x", "y", "ignore"))
        }
        if split == "train":
            load_sky = functools.cache(_load_sky)  # one read per directory, fresh per call
            sky = [
                _sky_level(f, listings["train"], int(e), load_sky)
                for f, e in zip(files, idx, strict=True)
            ]
            arrays["sky"] = np.array(sky, np.float32)
        out[split] = arrays
    return out


class _Examples:
    """One split's files; the three planes of an example come from one cached read."""

    def __init__(self, files: list[str]):
        self.files = files

    @functools.lru_cache(maxsize=16)  # noqa: B019 - x[i], y[i], ignore[i] are read back to back
    def load(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        planes = load_example(self.files[i])
        for p in planes:
            p.setflags(write=False)
        return planes

    def plane(self, j: int):
        return lambda i: self.load(i)[j]


def sky_augment(
    x: np.ndarray,
    sky: float | np.ndarray,
    rng: np.random.Generator,
    low: float = SKY_AUG[0],
    high: float = SKY_AUG[1],
) -> np.ndarray:
    """deepCR's sky-background augmentation as the reference applies it: ``x + sky · u``,
    ``u ~ U(low, high)`` (defaults ``aug_sky = [-0.9, 3]``), one draw per example.

    ``x``: one example (C×H×W) with a scalar ``sky``, or a batch (B×…) with ``sky`` of shape (B,).
    """
    x = np.asarray(x)
    sky = np.asarray(sky, np.float32)
    u = rng.uniform(low, high, size=sky.shape).astype(np.float32)
    shift = (sky * u).reshape(sky.shape + (1,) * (x.ndim - sky.ndim))
    return (x + shift).astype(x.dtype)
