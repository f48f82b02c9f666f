"""Task registry: task name → input/output spec, loss, metric and a loader of its splits.

A task factory takes the run's ``config.task`` (a ConfigDict) and returns a :class:`Task`. Adding
a task is one factory registered with :func:`register`. Loaders return numpy arrays per split:
``{"train": {"x", "y"}, "test": {...}}`` and optionally ``"val"``; without one, the trainer carves
validation from train (never from test).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from xmodal_jax.spec import TaskSpec

Splits = dict[str, dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Task:
    """Everything the trainer needs to know about a task."""

    name: str
    spec: TaskSpec
    loss: str  # key of xmodal_jax.losses.LOSSES
    metric: str  # key of xmodal_jax.metrics.METRICS (lower is better)
    load: Callable[[], Splits]
    classes: bool = True  # integer class labels (else alignment uses k-means pseudo-labels)
    loss_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # e.g. pos_weight
    # Split fields (besides x, y) handed to the loss / the metric, e.g. Cosmic's "ignore" mask,
    # FSD50K's "clip" ids, PSICOV's "length".
    loss_extras: tuple[str, ...] = ()
    metric_extras: tuple[str, ...] = ()
    # Unit-Gaussian target normaliser fit on train: the model predicts normalised targets and
    # its outputs are decoded before the loss and the metric (Darcy, PDEBench CFD).
    normalize_targets: bool = False
    # Human-readable class names (index = class id), for methods that read label text (LSG);
    # empty when the task has none or its labels are bare numbers.
    class_names: tuple[str, ...] = ()


_REGISTRY: dict[str, Callable[[Any], Task]] = {}


def register(name: str) -> Callable[[Callable[[Any], Task]], Callable[[Any], Task]]:
    """Decorator adding a task factory under ``name``."""

    def deco(fn: Callable[[Any], Task]) -> Callable[[Any], Task]:
        _REGISTRY[name] = fn
        return fn

    return deco


def get(task_cfg: Any) -> Task:
    """Builds the task named ``task_cfg.name`` from its config."""
    name = task_cfg.name
    if name not in _REGISTRY:
        raise ValueError(f"config.task.name={name!r} unknown; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name](task_cfg)


def names() -> list[str]:
    """All registered task names."""
    return sorted(_REGISTRY)


@register("digits")
def digits(cfg: Any) -> Task:
    """scikit-learn's bundled 8×8 handwritten digits (1797 images, 10 classes), offline.

    ``cfg.layout``: ``"1x64"`` reads each image row by row as a 1-channel signal of length 64;
    ``"8x8"`` as 8 channels (rows) of length 8; ``"1x8x8"`` as a 1-channel 8×8 image (vision
    bodies). ``cfg.test_fraction`` of the images (stratified, ``cfg.split_seed``) is the test
    split; ``cfg.train_limit`` (> 0) keeps only that many training images (the few-label regime
    where pretrained bodies matter most).
    """
    layout = cfg.get("layout", "1x64")
    shapes = {"1x64": (1, 64), "8x8": (8, 8), "1x8x8": (1, 8, 8)}
    if layout not in shapes:
        raise ValueError(f"config.task.layout={layout!r}; expected one of {sorted(shapes)}")

    def load() -> Splits:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        data = load_digits()
        x = (data.data / 16.0).astype(np.float32).reshape(-1, *shapes[layout])
        y = data.target.astype(np.int32)
        seed = int(cfg.get("split_seed", 0))
        x_tr, x_te, y_tr, y_te = train_test_split(
            x, y, test_size=float(cfg.get("test_fraction", 0.3)), stratify=y, random_state=seed
        )
        limit = int(cfg.get("train_limit", 0))
        if limit:
            if limit > len(x_tr):
                raise ValueError(f"config.task.train_limit={limit} > {len(x_tr)} training images")
            x_tr, _, y_tr, _ = train_test_split(
                x_tr, y_tr, train_size=limit, stratify=y_tr, random_state=seed
            )
        return {"train": {"x": x_tr, "y": y_tr}, "test": {"x": x_te, "y": y_te}}

    spec = TaskSpec(shapes[layout], "classification", 10, target_seq_len=int(cfg.target_seq_len))
    names = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    return Task("digits", spec, loss="ce", metric="error", load=load, class_names=names)


@register("synthetic")
def synthetic(cfg: Any) -> Task:
    """A small generated 1D classification task (for tests and smoke runs).

    Class ``c`` is a sine of frequency ``c + 1`` with random phase plus noise, over ``cfg.channels``
    channels of ``cfg.length`` samples; ``cfg.num_train`` / ``cfg.num_test`` examples.
    """
    channels, length = int(cfg.get("channels", 1)), int(cfg.get("length", 32))
    num_classes = int(cfg.get("num_classes", 3))

    def make(n: int, seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        y = rng.integers(0, num_classes, n).astype(np.int32)
        t = np.linspace(0, 2 * np.pi, length, dtype=np.float32)
        phase = rng.uniform(0, 2 * np.pi, (n, channels, 1)).astype(np.float32)
        x = np.sin((y[:, None, None] + 1) * t + phase)
        x = x + 0.3 * rng.standard_normal(x.shape).astype(np.float32)
        return {"x": x.astype(np.float32), "y": y}

    def load() -> Splits:
        seed = int(cfg.get("split_seed", 0))
        return {
            "train": make(int(cfg.get("num_train", 64)), seed),
            "test": make(int(cfg.get("num_test", 32)), seed + 1),
        }

    spec = TaskSpec(
        (channels, length), "classification", num_classes, target_seq_len=int(cfg.target_seq_len)
    )
    return Task("synthetic", spec, loss="ce", metric="error", load=load)


# --- NAS-Bench-360 (spec/orca.md §5–§7; readers in data/nb360.py) ---------------------------------

# CIFAR-100 channel statistics used by the reference's Normalize transform.
_CIFAR100_MEAN = np.array([0.5071, 0.4867, 0.4408], np.float32)[:, None, None]
_CIFAR100_STD = np.array([0.2675, 0.2565, 0.2761], np.float32)[:, None, None]


def _manual_dir(cfg: Any) -> str:
    root = cfg.get("data_dir", "")
    if not root:
        raise ValueError(f"config.task.data_dir: the manual dir with the {cfg.name} files is unset")
    return root


def _map_x(splits: Splits, fn: Callable[[np.ndarray], np.ndarray], shape, name: str) -> Splits:
    """Applies ``fn`` to every batch of inputs lazily (no full-split float copy)."""
    from xmodal_jax.data.formats import LazyArray

    out = {}
    for split, arrays in splits.items():
        x = arrays["x"]
        lazy = LazyArray(
            len(x),
            shape,
            np.float32,
            name=f"{name}/{split}/x",
            gather=lambda idx, x=x: fn(np.asarray(x[idx])),
        )
        out[split] = {**arrays, "x": lazy}
    return out


def _nb360(name: str, spec_of: Callable[[Any], TaskSpec], loss: str, metric: str, **kw: Any):
    prep = kw.pop("prep", None)
    reader_keys = kw.pop("reader_keys", ())

    def factory(cfg: Any) -> Task:
        from xmodal_jax.data import nb360

        extra = {k: cfg[k] for k in reader_keys if k in cfg}

        def load() -> Splits:
            seed = int(cfg.get("split_seed", 0))
            splits = nb360.READERS[name](_manual_dir(cfg), seed=seed, **extra)
            return prep(splits) if prep else splits

        return Task(name, spec_of(cfg), loss=loss, metric=metric, load=load, **kw)

    register(name)(factory)
    return factory


def _cifar_prep(splits: Splits) -> Splits:
    fn = lambda x: (x.astype(np.float32) / 255.0 - _CIFAR100_MEAN) / _CIFAR100_STD  # noqa: E731
    return _map_x(splits, fn, (3, 32, 32), "cifar100")


def _darcy_prep(splits: Splits) -> Splits:
    """Normalises the coefficient channel with train statistics; the grid channels stay raw."""
    from xmodal_jax.data.formats import unit_gaussian_stats

    mean, std = unit_gaussian_stats(np.asarray(splits["train"]["x"][:, :1]))

    def fn(x):
        x = np.array(x, np.float32)
        x[:, :1] = (x[:, :1] - mean) / std
        return x

    return _map_x(splits, fn, splits["train"]["x"].shape[1:], "darcy")


_nb360(
    "cifar100",
    lambda c: TaskSpec((3, 32, 32), "classification", 100),
    "ce",
    "error",
    prep=_cifar_prep,
)
_nb360("spherical", lambda c: TaskSpec((3, 60, 60), "classification", 100), "ce", "error")
_nb360(
    "darcy",
    lambda c: TaskSpec((3, 85, 85), "dense", 1),
    "relative_l2",
    "relative_l2",
    prep=_darcy_prep,
    classes=False,
    normalize_targets=True,
    reader_keys=("r", "ntrain", "nval", "ntest"),
)
_nb360("ninapro", lambda c: TaskSpec((1, 16, 52), "classification", 18), "ce", "error")
_nb360(
    "ecg",
    lambda c: TaskSpec(
        (1, 1000), "classification", 4, target_seq_len=int(c.get("target_seq_len", 64))
    ),
    "ce",
    "macro_f1_error",
)
_nb360(
    "satellite",
    lambda c: TaskSpec(
        (1, 46), "classification", 24, target_seq_len=int(c.get("target_seq_len", 512))
    ),
    "ce",
    "error",
)
_nb360(
    "deepsea",
    lambda c: TaskSpec(
        (4, 1000), "multilabel", 36, target_seq_len=int(c.get("target_seq_len", 512))
    ),
    "bce",
    "auroc_error",
    classes=False,
    loss_kwargs={"pos_weight": 4.0},
)


def _dense_family(name: str, module: str, spec_of, loss: str, metric: str, **kw: Any) -> None:
    """Registers a task whose reader lives in its own module (``read_<name>``)."""

    def factory(cfg: Any) -> Task:
        import importlib

        reader = getattr(importlib.import_module(f"xmodal_jax.data.{module}"), f"read_{name}")

        def load() -> Splits:
            return reader(_manual_dir(cfg), seed=int(cfg.get("split_seed", 0)))

        return Task(name, spec_of(cfg), loss=loss, metric=metric, load=load, **kw)

    register(name)(factory)


# PSICOV: 57 pair-feature channels on a 512 canvas → distance map; MAE₈ needs protein lengths.
_dense_family(
    "psicov",
    "psicov",
    lambda c: TaskSpec((57, 512, 512), "dense", 1),
    "mse",
    "mae8",
    classes=False,
    metric_extras=("length",),
)
# Cosmic: cosmic-ray mask logits; ignored pixels are excluded from the loss and the metric.
_dense_family(
    "cosmic",
    "cosmic",
    lambda c: TaskSpec((1, 128, 128), "dense", 1),
    "bce",
    "pixel_auroc_error",
    classes=False,
    loss_extras=("ignore",),
    metric_extras=("ignore",),
)
# FSD50K: 200-label chunks; a clip's score is the mean of its chunks' logits.
_dense_family(
    "fsd50k",
    "fsd50k",
    lambda c: TaskSpec((1, 96, 102), "multilabel", 200),
    "bce",
    "clip_map_error",
    classes=False,
    loss_kwargs={"pos_weight": 10.0},
    metric_extras=("clip",),
)


# --- offline real data: UCR/UEA (aeon), scikit-learn tables, OpenML files, PDE solvers ----------


def _eager(name: str, read: Callable[[], tuple[Splits, dict]], make_spec) -> Task:
    """A task whose spec depends on the data (channels, length, classes): read once, reuse."""
    splits, info = read()
    return Task(
        name,
        make_spec(splits, info),
        loss=info.get("loss", "ce"),
        metric=info.get("metric", "error"),
        load=lambda: splits,
        classes=info.get("task", "classification") == "classification",
        normalize_targets=bool(info.get("normalize_targets", False)),
        class_names=tuple(str(c) for c in info.get("classes", ())),
    )


def _classification_spec(cfg: Any, tabular: bool = False):
    def make(splits: Splits, info: dict) -> TaskSpec:
        shape = tuple(splits["train"]["x"].shape[1:])
        tsl = int(cfg.get("target_seq_len", 64))
        if info.get("task", "classification") == "regression":
            return TaskSpec(shape, "regression", 1, target_seq_len=tsl, tabular=tabular)
        n = len(info["classes"])
        return TaskSpec(shape, "classification", n, target_seq_len=tsl, tabular=tabular)

    return make


def standardize_channels(splits: Splits) -> Splits:
    """Every split's ``x`` ``[N, C, L]`` standardised per channel with the train split's mean and
    std (over examples and time; a constant channel keeps std 1). UEA sets ship raw sensor units
    (BasicMotions' channels have std 2–7 and offsets), UCR sets are mostly z-normalised already,
    where this is close to the identity."""
    x = splits["train"]["x"]
    mean = x.mean(axis=(0, 2), keepdims=True)
    std = x.std(axis=(0, 2), keepdims=True)
    std = np.where(std > 0, std, 1.0)
    return {
        name: {**arrays, "x": ((arrays["x"] - mean) / std).astype(np.float32)}
        for name, arrays in splits.items()
    }


@register("ucr")
def ucr(cfg: Any) -> Task:
    """Any UCR/UEA time-series dataset bundled in the ``aeon`` wheel, by ``cfg.dataset``.

    ``cfg.standardize`` (default True): channels standardised with train statistics
    (:func:`standardize_channels`).
    """
    from xmodal_jax.data import offline

    max_len = int(cfg.get("max_length", 0)) or None

    def read() -> tuple[Splits, dict]:
        splits, info = offline.load_ucr(cfg.dataset, max_length=max_len)
        if cfg.get("standardize", True):
            splits = standardize_channels(splits)
        return splits, info

    return _eager(f"ucr/{cfg.dataset}", read, _classification_spec(cfg))


@register("tabular")
def tabular(cfg: Any) -> Task:
    """A scikit-learn bundled table (``cfg.dataset``) or a local OpenML ARFF/CSV (``cfg.file``)."""
    from xmodal_jax.data import offline

    if cfg.get("file", ""):
        target = cfg.get("target", "") or None
        read = lambda: offline.load_openml_file(cfg.file, target=target)  # noqa: E731
        name = f"tabular/{cfg.file}"
    else:
        read = lambda: offline.load_sklearn_table(cfg.dataset)  # noqa: E731
        name = f"tabular/{cfg.dataset}"
    return _eager(name, read, _classification_spec(cfg, tabular=True))


# ORCA's target sequence lengths for the 1D PDEs (spec/orca.md §5).
_PDE_TSL = {
    "advection": 512,
    "burgers": 128,
    "diffusion_sorption": 32,
    "reaction_diffusion_1d": 256,
    "cfd_1d": 128,
}


@register("pdebench")
def pdebench(cfg: Any) -> Task:
    """A PDEBench task (``cfg.pde``) from the original HDF5 file under ``cfg.data_dir``.

    Files written by ``xmodal-make-pde`` (real numerical solvers) have the same layout. 1D
    fields map to a text body; 2D fields need a vision body, or ``cfg.flatten`` (row-major
    ``C×(H·W)`` signals) to run on a text body. The CFD readers normalise x and y themselves (as
    the reference), so their loss and metric are in normalised units.
    """
    from xmodal_jax.data import pdebench as pde

    if cfg.pde not in pde.PDE_TASKS:
        raise ValueError(f"config.task.pde={cfg.pde!r}; expected one of {sorted(pde.PDE_TASKS)}")
    info = pde.PDE_TASKS[cfg.pde]
    path = os.path.join(_manual_dir(cfg), info.file)
    splits = pde.read_pdebench(path, cfg.pde, seed=int(cfg.get("split_seed", 0)))
    if bool(cfg.get("flatten", False)) and splits["train"]["x"].ndim == 4:
        splits = {
            s: {k: _flat_lazy(v) if k in ("x", "y") else v for k, v in a.items()}
            for s, a in splits.items()
        }
    x, y = splits["train"]["x"], splits["train"]["y"]
    tsl = int(cfg.get("target_seq_len", 0)) or _PDE_TSL.get(cfg.pde, 128)
    spec = TaskSpec(
        tuple(x.shape[1:]),
        "dense",
        int(y.shape[1]),
        target_seq_len=tsl,
        output_hw=None if len(x.shape) == 3 else tuple(y.shape[2:]),
    )
    return Task(
        f"pdebench/{cfg.pde}",
        spec,
        loss=info.loss,
        metric="nrmse",
        load=lambda: splits,
        classes=False,
    )


def _flat_lazy(a):
    from xmodal_jax.data.formats import LazyArray

    c = a.shape[1]
    return LazyArray(
        len(a),
        (c, int(np.prod(a.shape[2:]))),
        np.float32,
        name="flattened",
        gather=lambda idx: np.asarray(a[idx]).reshape(len(idx), c, -1),
    )
