"""Reader of PDEBench's HDF5 files with the ORCA reference's x/y construction (spec/orca.md §7).

``read_pdebench(path, task)`` returns ``Splits`` (``{"train", "val", "test"}`` × ``{"x", "y"}``),
float32, channels first: x = the state at t = 0, y = the state at the reference's target step,
both after the spatial (``res_x``) and temporal (``res_t``) subsampling of :data:`PDE_TASKS`.
Shapes for PDEBench's released files:

======================  =====================  ==========================  ======================
task                    file layout            x                           y
======================  =====================  ==========================  ======================
advection               ``tensor`` [N, T, X]   1×256 (u, t = 0)            1×256 (u, t = 2.0)
burgers                 ``tensor`` [N, T, X]   1×1024                      1×1024 (t = 2.0)
diffusion_sorption      groups ``data``        1×1024                      1×1024 (step 100)
reaction_diffusion_1d   ``tensor`` [N, T, X]   1×1024                      1×1024 (step 29)
cfd_1d                  density, pressure, Vx  1×3072 (ρ | p | v_x),       1×3072 (step 100),
                                               normalised                  same normaliser
darcy_pdebench          ``nu``, ``tensor``     1×64×64 (coefficient)       1×64×64 (solution)
shallow_water           groups ``data``        1×128×128 (h)               1×128×128 (step 100)
reaction_diffusion_2d   groups ``data``        1×128×128 (u, t = 0)        1×128×128 (**v**, 100)
cfd_2d                  + Vy                   4×64×64 (ρ, p, v_x, v_y)    4×64×64 (step 20),
                                               normalised per step         normalised per step
======================  =====================  ==========================  ======================

Reference rules reproduced here (sjunhongshen/ORCA ``src/data_loaders.py``: ``load_pde``,
``UNetDatasetSingle``, ``UNetDatasetSingleLarge``, ``UNetDatasetMult``, as PDEBench's
``FNODatasetSingle`` / ``FNODatasetMult``):

- **Target step.** After subsampling time by ``res_t`` the file has ``T' = ⌈T/res_t⌉`` steps and
  y is reduced step ``min(t_train, T') − 1`` (the reference clamps ``t_train``: Burgers'
  ``t_train`` 200 becomes the last of 41 steps, i.e. t = 2.0). A file with fewer steps than
  PDEBench's release where the clamp applies, or fewer than ``t_train`` where it does not,
  raises :class:`DataFormatError`: the target would silently be another time.
- **Test split.** Single-array files (``tensor``, Darcy, 1D CFD) test on the *first*
  ``⌊N·test_fraction⌋`` samples; group files and 2D CFD on the *last* ``N − ⌊N·(1 −
  test_fraction)⌋`` (group keys sorted as strings). Validation is ``val_fraction`` of the rest,
  drawn with ``seed`` (spec §8.1; the reference had none).
- **1D CFD** stacks (density, pressure, Vx) channel-major into one 1×3X row and encodes x and y
  with one unit-Gaussian normaliser fit on train x (per position); the model trains and is scored
  on the encoded values, as in the reference.
- **2D CFD** encodes every (channel, position, step) with a unit-Gaussian normaliser fit on the
  first (at most) 100 training samples; x and y use the statistics of their own step.
- **2D reaction-diffusion** (two channels u, v): x = u at t = 0, y = v at the target step, as the
  reference's ``UNetDatasetMult`` does for two-channel 2D data.

Only the needed samples and the two needed time steps are read (h5py hyperslabs). Group files and
2D CFD return ``LazyArray`` x / y that read a batch per access; the rest are in-memory arrays.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import h5py
import numpy as np

from xmodal_jax.data.formats import (
    DataFormatError,
    LazyArray,
    Splits,
    check_dtype,
    check_finite,
    check_shape,
    require_file,
    require_key,
    unit_gaussian_stats,
)


@dataclasses.dataclass(frozen=True)
class PDETask:
    """One PDEBench task as the ORCA reference loads it.

    ``layout``: ``"tensor"`` (key ``tensor`` [N, T, X]), ``"groups"`` (one group per sample with
    ``data`` [T, X(, Y), C]), ``"cfd"`` (``density``, ``pressure``, ``Vx`` (, ``Vy``) [N, T, X(,
    Y)]) or ``"darcy"`` (``nu`` [N, H, W], ``tensor`` [N, 1, H, W]). ``steps``: time steps in
    PDEBench's file. ``test_at``: ``"head"`` or ``"tail"`` of the sample order.
    """

    file: str
    layout: str
    dims: int
    res_x: int
    res_t: int
    t_train: int | None
    steps: int | None
    loss: str
    test_at: str

    def target_step(self, n_steps: int) -> int:
        """Index (in the file's time axis) of the y step for a file with ``n_steps`` steps."""
        reduced = math.ceil(n_steps / self.res_t)
        return (min(self.t_train, reduced) - 1) * self.res_t

    @property
    def min_steps(self) -> int:
        """Fewest time steps a file may have without moving the target step."""
        if self.t_train >= math.ceil(self.steps / self.res_t):
            return self.steps  # the reference clamps t_train to the last step of the release
        return (self.t_train - 1) * self.res_t + 1


_CFD_2D_FILE = "2D_CFD_Rand_M1.0_Eta0.1_Zeta0.1_periodic_128_Train.hdf5"
# fmt: off
PDE_TASKS: dict[str, PDETask] = {
    # task: PDETask(file, layout, dims, res_x, res_t, t_train, steps, loss, test_at)
    "advection": PDETask(
        "1D_Advection_Sols_beta0.4.hdf5", "tensor", 1, 4, 5, 200, 201, "nrmse", "head"),
    "burgers": PDETask(
        "1D_Burgers_Sols_Nu1.0.hdf5", "tensor", 1, 1, 5, 200, 201, "rmse", "head"),
    "diffusion_sorption": PDETask(
        "1D_diff-sorp_NA_NA.h5", "groups", 1, 1, 1, 101, 101, "nrmse", "tail"),
    "reaction_diffusion_1d": PDETask(
        "ReacDiff_Nu0.5_Rho1.0.hdf5", "tensor", 1, 1, 1, 30, 101, "nrmse", "head"),
    "cfd_1d": PDETask(
        "1D_CFD_Rand_Eta0.1_Zeta0.1_periodic_Train.hdf5", "cfd", 1, 1, 5, 100, 101, "rmse",
        "head"),
    "darcy_pdebench": PDETask(
        "2D_DarcyFlow_beta0.1_Train.hdf5", "darcy", 2, 2, 1, None, None, "nrmse", "head"),
    "shallow_water": PDETask(
        "2D_rdb_NA_NA.h5", "groups", 2, 1, 1, 101, 101, "nrmse", "tail"),
    "reaction_diffusion_2d": PDETask(
        "2D_diff-react_NA_NA.h5", "groups", 2, 1, 1, 101, 101, "nrmse", "tail"),
    "cfd_2d": PDETask(_CFD_2D_FILE, "cfd", 2, 2, 1, 21, 21, "nrmse", "tail"),
}
# fmt: on

IndexFn = Callable[[int], dict[str, np.ndarray]]  # number of samples -> split indices
CFD_FIELDS = {1: ("density", "pressure", "Vx"), 2: ("density", "pressure", "Vx", "Vy")}
NORMALIZER_SAMPLES = 100  # 2D CFD: the reference fits its normaliser on 100 samples
_CHUNK = 256  # samples per h5py read in the in-memory readers


# ---------------------------------------------------------------------------------------------
# HDF5 access with errors that name file and field


def _open(path: str) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as e:  # no HDF5 signature, truncated superblock, ...
        raise DataFormatError(f"{path}: not a readable HDF5 file (truncated?): {e}") from e


def _read(ds: h5py.Dataset, sel: tuple, path: str, field: str) -> np.ndarray:
    try:
        return np.asarray(ds[sel], dtype=np.float32)
    except (OSError, ValueError, TypeError) as e:
        raise DataFormatError(f"{path}: field {field!r} could not be read: {e}") from e


def _dataset(obj: Any, key: str, path: str) -> h5py.Dataset:
    ds = require_key(obj, key, path)
    if not isinstance(ds, h5py.Dataset):
        raise DataFormatError(f"{path}: field {key!r} is a {type(ds).__name__}, not a dataset")
    return check_dtype(ds, "f", path, key)


def _check_steps(spec: PDETask, n_steps: int, path: str, field: str) -> int:
    if n_steps < spec.min_steps:
        raise DataFormatError(
            f"{path}: field {field!r} has {n_steps} time steps; this task needs at least "
            f"{spec.min_steps} (t_train {spec.t_train}, res_t {spec.res_t})"
        )
    return spec.target_step(n_steps)


def _space(spec: PDETask) -> tuple[slice, ...]:
    return (slice(None, None, spec.res_x),) * spec.dims


def _read_rows(
    ds: h5py.Dataset, start: int, stop: int, rest: tuple, path: str, field: str
) -> np.ndarray:
    """Rows ``start:stop`` of ``ds`` with ``rest`` selecting the other axes, read in chunks."""
    parts = [
        check_finite(
            _read(ds, (slice(a, min(a + _CHUNK, stop)), *rest), path, field), path, field, a
        )
        for a in range(start, stop, _CHUNK)
    ]
    return np.concatenate(parts)


# ---------------------------------------------------------------------------------------------
# splits


def split_indices(
    n: int, spec: PDETask, *, seed: int, val_fraction: float, test_fraction: float, path: str = ""
) -> dict[str, np.ndarray]:
    """Sorted sample indices per split: the reference's test block, a seeded val from the rest."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1):
        raise ValueError(f"fractions must be in (0, 1): val {val_fraction}, test {test_fraction}")
    if spec.test_at == "head":
        n_test = int(n * test_fraction)
        test, rest = np.arange(n_test), np.arange(n_test, n)
    else:
        start = int(n * (1 - test_fraction))
        test, rest = np.arange(start, n), np.arange(start)
    if len(test) < 1 or len(rest) < 3:
        raise DataFormatError(
            f"{path}: {n} samples are too few for test fraction {test_fraction} plus train and val"
        )
    n_val = max(1, int(round(val_fraction * len(rest))))
    perm = np.random.default_rng(seed).permutation(len(rest))
    return {
        "train": rest[np.sort(perm[n_val:])],
        "val": rest[np.sort(perm[:n_val])],
        "test": test,
    }


def _by_split(
    read: Callable[[int, int], tuple[np.ndarray, ...]], idx: dict[str, np.ndarray]
) -> dict[str, tuple[np.ndarray, ...]]:
    """Reads the test block and the train+val block once each, then splits in memory."""
    rest = np.sort(np.concatenate([idx["train"], idx["val"]]))
    block = read(int(rest[0]), int(rest[-1]) + 1)
    out = {name: tuple(b[idx[name] - rest[0]] for b in block) for name in ("train", "val")}
    out["test"] = read(int(idx["test"][0]), int(idx["test"][-1]) + 1)
    return out


# ---------------------------------------------------------------------------------------------
# in-memory layouts


def _read_tensor(f: h5py.File, path: str, spec: PDETask, idx_of: IndexFn) -> Splits:
    ds = check_shape(_dataset(f, "tensor", path), (None,) * (spec.dims + 2), path, "tensor")
    t_y = _check_steps(spec, ds.shape[1], path, "tensor")
    idx = idx_of(ds.shape[0])

    def read(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        x = _read_rows(ds, a, b, (0, *_space(spec)), path, "tensor")
        y = _read_rows(ds, a, b, (t_y, *_space(spec)), path, "tensor")
        return x[:, None], y[:, None]

    return {k: {"x": v[0], "y": v[1]} for k, v in _by_split(read, idx).items()}


def _read_darcy(f: h5py.File, path: str, spec: PDETask, idx_of: IndexFn) -> Splits:
    nu = check_shape(_dataset(f, "nu", path), (None, None, None), path, "nu")
    n, h, w = nu.shape
    sol = check_shape(_dataset(f, "tensor", path), (n, None, h, w), path, "tensor")
    if sol.shape[1] < 1:
        raise DataFormatError(f"{path}: field 'tensor' has no solution step (shape {sol.shape})")
    idx = idx_of(n)
    space = _space(spec)

    def read(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        x = _read_rows(nu, a, b, space, path, "nu")
        # the reference appends the solution steps after nu and clamps t_train to the last one
        y = _read_rows(sol, a, b, (sol.shape[1] - 1, *space), path, "tensor")
        return x[:, None], y[:, None]

    return {k: {"x": v[0], "y": v[1]} for k, v in _by_split(read, idx).items()}


def _cfd_fields(f: h5py.File, path: str, spec: PDETask) -> list[h5py.Dataset]:
    names = CFD_FIELDS[spec.dims]
    first = check_shape(_dataset(f, names[0], path), (None,) * (spec.dims + 2), path, names[0])
    fields = [first]
    for name in names[1:]:
        fields.append(check_shape(_dataset(f, name, path), first.shape, path, name))
    return fields


def _read_cfd_1d(f: h5py.File, path: str, spec: PDETask, idx_of: IndexFn) -> Splits:
    fields = _cfd_fields(f, path, spec)
    names = CFD_FIELDS[1]
    t_y = _check_steps(spec, fields[0].shape[1], path, names[0])
    idx = idx_of(fields[0].shape[0])

    def read(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for ds, name in zip(fields, names, strict=True):
            xs.append(_read_rows(ds, a, b, (0, *_space(spec)), path, name))
            ys.append(_read_rows(ds, a, b, (t_y, *_space(spec)), path, name))
        # channel-major flattening, as the reference's reshape of [N, 3, X] to [N, 1, 3X]
        return (np.stack(xs, 1).reshape(b - a, 1, -1), np.stack(ys, 1).reshape(b - a, 1, -1))

    splits = _by_split(read, idx)
    mean, std = unit_gaussian_stats(splits["train"][0])
    return {k: {"x": (x - mean) / std, "y": (y - mean) / std} for k, (x, y) in splits.items()}


# ---------------------------------------------------------------------------------------------
# lazy layouts


class _CFD2DSamples:
    """Gathers normalised 2D CFD states at one time step for a batch of sample indices."""

    def __init__(
        self,
        path: str,
        spec: PDETask,
        step: int,
        rows: np.ndarray,
        mean: np.ndarray | float,
        std: np.ndarray | float,
    ):
        self.path, self.spec, self.step, self.rows = path, spec, step, rows
        self.mean, self.std = mean, std

    def raw(self, f: h5py.File, rows: np.ndarray) -> np.ndarray:
        """Unnormalised ``[len(rows), 4, H', W']`` from an open file; ``rows`` sorted, unique."""
        sel = (rows.tolist(), self.step, *_space(self.spec))
        out = [_read(_dataset(f, k, self.path), sel, self.path, k) for k in CFD_FIELDS[2]]
        return check_finite(np.stack(out, 1), self.path, "density/pressure/Vx/Vy")

    def gather(self, idx: np.ndarray) -> np.ndarray:
        """Normalised states of split examples ``idx``."""
        uniq, inv = np.unique(self.rows[idx], return_inverse=True)
        if not len(uniq):
            return np.zeros((0, *np.shape(self.mean)), np.float32)
        with _open(self.path) as f:
            data = self.raw(f, uniq)
        return (data[inv] - self.mean) / self.std


def _read_cfd_2d(f: h5py.File, path: str, spec: PDETask, idx_of: IndexFn) -> Splits:
    fields = _cfd_fields(f, path, spec)
    t_y = _check_steps(spec, fields[0].shape[1], path, CFD_FIELDS[2][0])
    idx = idx_of(fields[0].shape[0])
    shape = (4, *(math.ceil(s / spec.res_x) for s in fields[0].shape[2:]))
    fit_rows = idx["train"][:NORMALIZER_SAMPLES]
    stats = {}
    for step in (0, t_y):
        raw = _CFD2DSamples(path, spec, step, fit_rows, 0.0, 1.0).raw(f, fit_rows)
        stats[step] = unit_gaussian_stats(raw)
    out: Splits = {}
    for name, rows in idx.items():
        out[name] = {
            key: LazyArray(
                len(rows),
                shape,
                np.float32,
                gather=_CFD2DSamples(path, spec, step, rows, *stats[step]).gather,
                name=f"{path} ({name} {key})",
            )
            for key, step in (("x", 0), ("y", t_y))
        }
    return out


class _GroupSamples:
    """Gathers one time step of per-sample groups' ``data`` as channels-first arrays."""

    def __init__(
        self,
        path: str,
        keys: Sequence[str],
        step: int,
        channels: slice,
        spec: PDETask,
        shape: tuple[int, ...],
    ):
        self.path, self.keys, self.step, self.channels = path, keys, step, channels
        self.spec, self.shape = spec, shape

    def gather(self, idx: np.ndarray) -> np.ndarray:
        """``[len(idx), C, X'(, Y')]`` for split examples ``idx``."""
        out = [np.zeros((0, *self.shape), np.float32)]
        with _open(self.path) as f:
            for i in idx:
                key = self.keys[int(i)]
                where = f"{self.path}[{key}]"
                ds = _dataset(require_key(f, key, self.path), "data", where)
                a = _read(ds, (self.step, *_space(self.spec), self.channels), where, "data")
                if not np.isfinite(a).all():
                    raise DataFormatError(f"{where}: field 'data' has NaN/inf values")
                out.append(np.moveaxis(a, -1, 0)[None])
        return np.concatenate(out)


def _read_groups(f: h5py.File, path: str, spec: PDETask, idx_of: IndexFn) -> Splits:
    keys = sorted(f.keys())
    if not keys:
        raise DataFormatError(f"{path}: no sample groups found")
    shape = None
    for key in keys:  # metadata only: catches a malformed sample before training starts
        group = f[key]
        if not isinstance(group, h5py.Group):
            raise DataFormatError(f"{path}: {key!r} is not a sample group")
        where = f"{path}[{key}]"
        ds = _dataset(group, "data", where)
        if shape is None:
            shape = check_shape(ds, (None,) * (spec.dims + 2), where, "data").shape
        else:
            check_shape(ds, shape, where, "data")
    t_y = _check_steps(spec, shape[0], f"{path}[{keys[0]}]", "data")
    idx = idx_of(len(keys))
    space = tuple(math.ceil(s / spec.res_x) for s in shape[1:-1])
    n_ch = shape[-1]
    # The reference feeds channel 0 at t = 0 and predicts channel 1 for two-channel 2D data.
    if spec.dims == 2 and n_ch == 2:
        ch_x, ch_y = slice(0, 1), slice(1, 2)
    else:
        ch_x = ch_y = slice(None)
    out: Splits = {}
    for name, rows in idx.items():
        split_keys = [keys[int(r)] for r in rows]
        out[name] = {}
        for key, step, ch in (("x", 0, ch_x), ("y", t_y, ch_y)):
            shape = (len(range(n_ch)[ch]), *space)
            out[name][key] = LazyArray(
                len(rows),
                shape,
                np.float32,
                gather=_GroupSamples(path, split_keys, step, ch, spec, shape).gather,
                name=f"{path} ({name} {key})",
            )
    return out


# ---------------------------------------------------------------------------------------------


def read_pdebench(
    path: str,
    task: str,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> Splits:
    """Train / val / test splits of one PDEBench task (see the module docstring for the rules).

    ``path``: the task's file, or a directory holding it under PDEBench's name
    (``PDE_TASKS[task].file``). ``task``: a key of :data:`PDE_TASKS`. Raises
    :class:`DataFormatError`, naming file and field, for a missing or unreadable file, a missing
    dataset, a wrong rank or shape, too few samples or time steps, and NaN/inf values.
    """
    if task not in PDE_TASKS:
        raise ValueError(f"unknown PDEBench task {task!r}; expected one of {sorted(PDE_TASKS)}")
    spec = PDE_TASKS[task]
    if os.path.isdir(path):
        path = require_file(path, spec.file)
    elif not os.path.exists(path):
        raise DataFormatError(f"{path}: file not found")

    def idx_of(n: int) -> dict[str, np.ndarray]:
        return split_indices(
            n,
            spec,
            seed=seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            path=path,
        )

    reader = {
        ("tensor", 1): _read_tensor,
        ("darcy", 2): _read_darcy,
        ("cfd", 1): _read_cfd_1d,
        ("cfd", 2): _read_cfd_2d,
        ("groups", 1): _read_groups,
        ("groups", 2): _read_groups,
    }[spec.layout, spec.dims]
    with _open(path) as f:
        return reader(f, path, spec, idx_of)
