"""PSICOV (NAS-Bench-360): inter-residue Cβ distance maps from PDNET features.

Layout under the manual data dir ``root`` (as sjunhongshen/ORCA ``load_psicov`` reads it)::

    protein/deepcov.lst            one protein id per line (first token; DeepCov adds a length)
    protein/psicov.lst
    protein/{deepcov,psicov,cameo}/features/<id>.pkl   pickled dict, see ``load_features``
    protein/{deepcov,psicov,cameo}/distance/<id>-cb.npy  pickled object array (L, seq, L×L map)

An id's files are looked up in all three datasets, the last one holding it winning (the
reference's ``get_feature``/``get_map`` loop over ``deepcov, psicov, cameo`` without a break).

Splits (spec §8.1): train = DeepCov minus val; val = 5% of DeepCov (seeded, disjoint); test = the
PSICOV list. Train examples follow the reference's training generator (crop/pad to ``window``,
label engineering ``'16.0'``); val and test follow its evaluation generator (fixed 512×512 canvas,
raw distances) and carry ``"length"`` for the MAE₈ metric.

Geometry of one example (reference ``get_input_output_dist``): the L×L protein is padded to
(L+pad)², sitting at offset ``pad // 2`` (5), with x = 0 and y = 100 Å around it; that square is
placed at the top-left of the zero / 100-filled canvas, or, when it does not fit, cropped. The
MAE₈ metric therefore reads the protein at ``[pad//2 : pad//2 + length]`` on both axes.
"""

from __future__ import annotations

import functools
import os
import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np

from xmodal_jax.data.formats import (
    DataFormatError,
    LazyArray,
    Splits,
    check_dtype,
    check_shape,
    require_file,
    require_key,
)

NUM_CHANNELS = 57
LMAX = 512  # evaluation canvas; the reference hard-codes 512 for its test generator
PAD = 10
LABEL_CLIP = 16.0  # PDNET label_engineering '16.0': training targets are min(d, 16)
PAD_DISTANCE = 100.0  # y outside the protein before label engineering
VAL_FRACTION = 0.05
DATASETS = ("deepcov", "psicov", "cameo")

# Per-residue features in the reference's channel order; each gives two channels, the feature
# broadcast along rows (channel 2k: [r, c] = f[c]) and along columns (2k+1: [r, c] = f[r]).
_PAIR_FIELDS = ("ccmpred", "freecon", "potential")


def read_list(path: str) -> list[str]:
    """Protein ids of a PDNET list file: the first whitespace token of each non-blank line."""
    with open(path) as f:
        ids = [line.split()[0] for line in f if line.strip()]
    if not ids:
        raise DataFormatError(f"{path}: no protein ids")
    seen: set[str] = set()
    for i, pdb in enumerate(ids):
        if pdb in seen:
            raise DataFormatError(f"{path}: protein id {pdb!r} repeated (entry {i})")
        seen.add(pdb)
    return ids


def _locate(root: str, pdb: str, kind: str) -> str:
    name = f"{pdb}.pkl" if kind == "features" else f"{pdb}-cb.npy"
    tried = [os.path.join(root, "protein", d, kind, name) for d in DATASETS]
    found = [p for p in tried if os.path.exists(p)]
    if not found:
        raise DataFormatError(f"protein {pdb!r}: {kind} file not found (tried {', '.join(tried)})")
    return found[-1]


def _finite_bounded(a: np.ndarray, path: str, field: str) -> np.ndarray:
    # The reference asserts -100 < X < 100 on the stacked features (NaN fails that assert too).
    if a.size and not (np.all(np.isfinite(a)) and a.max() < 100.0 and a.min() > -100.0):
        raise DataFormatError(f"{path}: field {field!r} has values outside (-100, 100) or NaN")
    return a


def load_features(path: str) -> np.ndarray:
    """The 57×L×L float32 input of one PDNET feature pickle, channels-first.

    The pickle is a dict: ``seq`` (str, L residues), ``ss`` 3×L, ``pssm`` L×22, ``sa`` L,
    ``entropy`` L, ``ccmpred``/``freecon``/``potential`` L×L. Channels: ss (6), pssm (44),
    sa (2), entropy (2), each per-residue feature as the pair (row-broadcast, column-broadcast),
    then ccmpred, freecon, potential — the reference's ``get_feature`` order.
    """
    try:
        with open(path, "rb") as f:
            feats = pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, AttributeError) as e:
        raise DataFormatError(f"{path}: not a readable feature pickle ({e})") from e
    if not isinstance(feats, Mapping):
        raise DataFormatError(f"{path}: expected a dict of features, got {type(feats).__name__}")
    seq = require_key(feats, "seq", path)
    if not isinstance(seq, str) or not seq:
        raise DataFormatError(f"{path}: field 'seq' must be a non-empty string")
    n = len(seq)

    def field(name: str, shape: tuple[int, ...]) -> np.ndarray:
        a = np.asarray(require_key(feats, name, path))
        check_dtype(a, "fiub", path, name)
        check_shape(a, shape, path, name)
        return _finite_bounded(a.astype(np.float32), path, name)

    ss, pssm = field("ss", (3, n)), field("pssm", (n, 22))
    sa, entropy = field("sa", (n,)), field("entropy", (n,))
    per_residue = np.concatenate([ss, pssm.T, sa[None], entropy[None]])
    x = np.empty((NUM_CHANNELS, n, n), np.float32)
    k = 2 * len(per_residue)
    x[0:k:2] = per_residue[:, None, :]
    x[1:k:2] = per_residue[:, :, None]
    for j, name in enumerate(_PAIR_FIELDS):
        x[k + j] = field(name, (n, n))
    return x


def _read_distance_file(path: str) -> tuple[int, np.ndarray]:
    try:
        obj = np.load(path, allow_pickle=True)
    except (OSError, EOFError, ValueError, pickle.UnpicklingError) as e:
        raise DataFormatError(f"{path}: not a readable distance .npy ({e})") from e
    if not (isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == (3,)):
        raise DataFormatError(
            f"{path}: expected an object array (length, sequence, cb_map), got "
            f"{getattr(obj, 'dtype', type(obj))} of shape {getattr(obj, 'shape', '?')}"
        )
    ly, seq, cb = obj
    if isinstance(ly, bool) or not isinstance(ly, int | np.integer) or ly < 2:
        raise DataFormatError(f"{path}: field 'length' (entry 0) must be an int ≥ 2, got {ly!r}")
    if seq is None:
        raise DataFormatError(f"{path}: field 'sequence' (entry 1) is missing")
    cb = np.asarray(cb)
    check_dtype(cb, "fiu", path, "cb_map")
    return int(ly), cb


def protein_length(path: str) -> int:
    """The length ``L`` stored in a ``<id>-cb.npy`` distance file."""
    return _read_distance_file(path)[0]


def load_distance_map(path: str, expected_length: int | None = None) -> np.ndarray:
    """The cleaned L×L Cβ distance map of a ``<id>-cb.npy`` file (reference ``get_map``).

    Distances below 1 Å (the zero diagonal) become 1, then each diagonal entry is replaced by the
    mean of its row neighbours (ends: the single neighbour; NaN neighbours skipped, both NaN → 1).
    NaNs are allowed only in CAMEO maps; values must end within [1, 500] Å.
    """
    ly, cb = _read_distance_file(path)
    cameo = f"{os.sep}cameo{os.sep}" in path
    if not cameo:
        if expected_length is not None and expected_length != ly:
            raise DataFormatError(
                f"{path}: field 'length' is {ly}, the feature file has {expected_length} residues"
            )
        check_shape(cb, (ly, ly), path, "cb_map")
        if np.isnan(cb).any():
            raise DataFormatError(f"{path}: field 'cb_map' has NaN (allowed only in CAMEO maps)")
    elif cb.ndim != 2 or min(cb.shape) < ly:
        raise DataFormatError(f"{path}: field 'cb_map' has shape {cb.shape}, expected ≥ {ly}×{ly}")
    y = np.array(cb, dtype=np.result_type(cb.dtype, np.float32))
    with np.errstate(invalid="ignore"):
        y[y < 1.0] = 1.0
    y[0, 0] = y[0, 1]
    y[ly - 1, ly - 1] = y[ly - 1, ly - 2]
    q = np.arange(1, ly - 1)
    left, right, diag = y[q, q - 1], y[q, q + 1], y[q, q]
    fill = np.where(
        np.isnan(left) & np.isnan(right),
        1.0,
        np.where(np.isnan(left), right, np.where(np.isnan(right), left, (left + right) / 2.0)),
    )
    y[q, q] = np.where(np.isnan(diag), diag, fill)
    if np.nanmax(y) > 500.0 or np.nanmin(y) < 1.0:
        raise DataFormatError(f"{path}: field 'cb_map' has distances outside [1, 500] Å")
    return y


def _example(
    x: np.ndarray, y: np.ndarray, size: int, pad: int, rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray]:
    """Pads the protein by ``pad`` and places it on a size×size canvas (crops with ``rng``)."""
    n, h = x.shape[-1], pad // 2
    full = n + pad
    xp = np.zeros((NUM_CHANNELS, full, full), np.float32)
    xp[:, h : h + n, h : h + n] = x
    yp = np.full((full, full), PAD_DISTANCE, np.float32)
    yp[h : h + n, h : h + n] = y
    if full <= size:
        xc = np.zeros((NUM_CHANNELS, size, size), np.float32)
        yc = np.full((size, size), PAD_DISTANCE, np.float32)
        xc[:, :full, :full], yc[:full, :full] = xp, yp
        return xc, yc
    assert rng is not None
    # Rows and columns get independent offsets, as in the reference (random.randint twice).
    rx, ry = (int(v) for v in rng.integers(0, full - size + 1, size=2))
    return xp[:, rx : rx + size, ry : ry + size], yp[rx : rx + size, ry : ry + size]


class _Proteins:
    """Per-split loader; x and y of an example come from one cached ``pair(i)``."""

    def __init__(self, root: str, ids: list[str], size: int, pad: int, seed: int, train: bool):
        self.ids, self.size, self.pad, self.seed, self.train = ids, size, pad, seed, train
        self.feat = [_locate(root, pdb, "features") for pdb in ids]
        self.dist = [_locate(root, pdb, "distance") for pdb in ids]

    @functools.lru_cache(maxsize=2)  # noqa: B019 - x[i] and y[i] are fetched back to back
    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        x = load_features(self.feat[i])
        n = x.shape[-1]
        y = np.full((n, n), np.nan, np.float32)
        y0 = load_distance_map(self.dist[i], expected_length=n)
        ly = min(len(y0), n)
        y[:ly, :ly] = y0[:ly, :ly]
        if self.train:
            # The reference re-draws crops on every access; a crop fixed per (seed, example)
            # keeps x and y of one example aligned across the two lazy arrays.
            rng = np.random.default_rng([self.seed, i])
            x, y = _example(x, y, self.size, self.pad, rng)
            with np.errstate(invalid="ignore"):
                y = np.where(y > LABEL_CLIP, np.float32(LABEL_CLIP), y)
        else:
            keep = min(n, self.size - self.pad)  # never crop at evaluation: truncate instead
            x, y = _example(x[:, :keep, :keep], y[:keep, :keep], self.size, self.pad, None)
        x, y = np.nan_to_num(x, nan=0.0), np.nan_to_num(y, nan=0.0)[None]
        x.setflags(write=False)  # cached: a caller's in-place edit must not reach the next read
        y.setflags(write=False)
        return x, y

    def arrays(self, name: str) -> dict[str, Any]:
        n, s = len(self.ids), self.size
        out: dict[str, Any] = {
            "x": LazyArray(n, (NUM_CHANNELS, s, s), np.float32, lambda i: self.pair(i)[0], name),
            "y": LazyArray(n, (1, s, s), np.float32, lambda i: self.pair(i)[1], name),
        }
        if not self.train:
            lengths = [protein_length(p) for p in self.dist]
            out["length"] = np.minimum(np.array(lengths, np.int32), s - self.pad)
        return out


def read_psicov(root: str, *, window: int = 512, pad: int = PAD, seed: int = 0) -> Splits:
    """PSICOV splits; every x / y is a ``LazyArray`` reading one protein per access.

    - ``train``: DeepCov minus val. x 57×window×window, y 1×window×window float32 =
      min(distance, 16) with the padding (100 Å) also clipped to 16; proteins with
      ``L + pad > window`` are cropped at an offset fixed per ``(seed, index)``.
    - ``val``: 5% of DeepCov (``seed``, disjoint from train); ``test``: the PSICOV list. Both as
      the reference evaluates: x 57×512×512, y 1×512×512 raw distances (100 outside the protein),
      plus int32 ``length``: residues on the canvas, at ``[pad//2, pad//2 + length)``. Proteins
      longer than ``512 - pad`` keep only their first ``512 - pad`` residues (the reference
      cropped at random and then scored with the full length).
    """
    if pad < 0 or window <= pad:
        raise ValueError(f"need 0 ≤ pad < window, got pad={pad}, window={window}")
    for d in ("deepcov", "psicov"):
        for kind in ("features", "distance"):
            if not os.path.isdir(require_file(root, "protein", d, kind)):
                raise DataFormatError(f"{os.path.join(root, 'protein', d, kind)}: not a directory")
    deepcov = read_list(require_file(root, "protein", "deepcov.lst"))
    psicov = read_list(require_file(root, "protein", "psicov.lst"))
    if len(deepcov) < 2:
        raise DataFormatError(f"{root}/protein/deepcov.lst: need ≥ 2 proteins to carve val")
    n_val = max(1, int(round(VAL_FRACTION * len(deepcov))))
    perm = np.random.default_rng(seed).permutation(len(deepcov))
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    splits = {
        "train": ([deepcov[i] for i in train_idx], window, True),
        "val": ([deepcov[i] for i in val_idx], LMAX, False),
        "test": (psicov, LMAX, False),
    }
    return {
        name: _Proteins(root, ids, size, pad, seed, train).arrays(f"psicov {name}")
        for name, (ids, size, train) in splits.items()
    }
