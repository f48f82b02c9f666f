"""The baselines a user tries first, on exactly the splits the trainer uses.

Before asking whether cross-modal transfer pays on a task, compare it with the simple models of
the task's own field, trained on the same train split and scored with the same metric on the
same test split (lower is better everywhere):

- time series (UCR/UEA, any ``(C, L ≥ 9)`` classification): aeon's MiniRocket (the field's
  fast state of the art; seeded, so reported over seeds) and 1-NN with DTW distance;
- tables and other flat classification inputs: scikit-learn's logistic regression and
  histogram gradient boosting;
- regression and dense outputs (PDE fields): the best constant predictor (the train mean) and
  the best linear-in-input predictor (ridge regression on the flattened input).

The trainer carves its validation split from train; the baselines fit on the whole train split
(they have no checkpoint to choose), so they see at least as much labelled data as the model.
``xmodal-baselines --config configs/ucr.py:name=GunPoint`` prints them for any config.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from xmodal_jax import metrics
from xmodal_jax.data import tasks

Splits = dict[str, dict[str, np.ndarray]]
# name → (fit-and-predict(train x, train y, test x, seed) → outputs, whether the seed matters)
Baseline = tuple[Callable[..., np.ndarray], bool]


def _flat(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float64).reshape(len(x), -1)


def _scores(model: Any, x: np.ndarray, classes: int) -> np.ndarray:
    """Class scores ``[N, classes]`` for the task metric (argmax = the model's prediction)."""
    proba = model.predict_proba(x)
    out = np.zeros((len(x), classes))
    out[:, np.asarray(model.classes_, int)] = proba
    return out


def logistic_regression(xtr, ytr, xte, seed: int, classes: int) -> np.ndarray:
    """scikit-learn's ``LogisticRegression`` with its defaults (L2, C = 1), on flat inputs."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=5000, random_state=seed).fit(_flat(xtr), ytr)
    return _scores(model, _flat(xte), classes)


def hist_gradient_boosting(xtr, ytr, xte, seed: int, classes: int) -> np.ndarray:
    """scikit-learn's ``HistGradientBoostingClassifier`` with its defaults, on flat inputs."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    model = HistGradientBoostingClassifier(random_state=seed).fit(_flat(xtr), ytr)
    return _scores(model, _flat(xte), classes)


def minirocket(xtr, ytr, xte, seed: int, classes: int) -> np.ndarray:
    """aeon's ``MiniRocketClassifier`` (random kernels: seeded) on ``[N, C, L]`` series."""
    from aeon.classification.convolution_based import MiniRocketClassifier

    model = MiniRocketClassifier(random_state=seed).fit(np.asarray(xtr, np.float64), ytr)
    return _scores(model, np.asarray(xte, np.float64), classes)


def one_nn_dtw(xtr, ytr, xte, seed: int, classes: int) -> np.ndarray:
    """1-nearest-neighbour with (full-window) DTW distance, aeon's ``KNeighbors…Classifier``."""
    del seed
    from aeon.classification.distance_based import KNeighborsTimeSeriesClassifier

    model = KNeighborsTimeSeriesClassifier(n_neighbors=1, distance="dtw")
    model.fit(np.asarray(xtr, np.float64), ytr)
    return _scores(model, np.asarray(xte, np.float64), classes)


def constant_mean(xtr, ytr, xte, seed: int, classes: int) -> np.ndarray:
    """The best constant predictor under squared error: the train mean of the target."""
    del seed, classes
    mean = np.asarray(ytr, np.float64).mean(axis=0)
    return np.broadcast_to(mean, (len(xte), *mean.shape)).copy()


def linear_in_input(xtr, ytr, xte, seed: int, classes: int) -> np.ndarray:
    """Ridge regression (α = 1) from the flattened input to the flattened target."""
    del seed, classes
    from sklearn.linear_model import Ridge

    ytr = np.asarray(ytr, np.float64)
    model = Ridge(alpha=1.0).fit(_flat(xtr), ytr.reshape(len(ytr), -1))
    return model.predict(_flat(xte)).reshape(len(xte), *ytr.shape[1:])


SERIES: dict[str, Baseline] = {"MiniRocket": (minirocket, True), "1-NN DTW": (one_nn_dtw, False)}
FLAT: dict[str, Baseline] = {
    "logistic regression": (logistic_regression, False),
    "HistGradientBoosting": (hist_gradient_boosting, False),
}
REGRESSION: dict[str, Baseline] = {
    "constant (train mean)": (constant_mean, False),
    "linear in input (ridge)": (linear_in_input, False),
}


def for_task(task: tasks.Task) -> dict[str, Baseline]:
    """The baselines of ``task``'s field: series, flat classification or regression/dense."""
    if not task.classes or task.spec.output in ("regression", "dense"):
        return REGRESSION
    if task.spec.output != "classification":
        return {}  # multi-label: no first-try baseline here
    # MiniRocket's kernels span 9 samples: shorter "series" (digits' 8×8 rows) are flat inputs.
    if task.spec.is_1d and not task.spec.tabular and task.spec.input_shape[1] >= 9:
        return {**SERIES, **FLAT}
    return FLAT


def evaluate(
    task: tasks.Task,
    splits: Splits | None = None,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    names: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Fits every baseline of ``task`` on train and scores it on test with the task metric.

    Returns ``{name: {"values": [one per seed], "mean", "std", "seeds"}}``; a deterministic
    baseline runs once. ``splits`` defaults to ``task.load()`` (the trainer's own splits: give
    the trainer's when it carved validation, to fit on the same rows).
    """
    splits = splits or task.load()
    train, test = splits["train"], splits["test"]
    xtr, ytr = np.asarray(train["x"]), np.asarray(train["y"])
    xte, yte = np.asarray(test["x"]), np.asarray(test["y"])
    metric = metrics.get(task.metric)
    classes = task.spec.num_outputs
    out = {}
    for name, (fit, seeded) in for_task(task).items():
        if names is not None and name not in names:
            continue
        run_seeds = list(seeds) if seeded else [0]
        values = [float(metric(fit(xtr, ytr, xte, s, classes), yte)) for s in run_seeds]
        out[name] = _summary(values, run_seeds)
    return out


def _summary(values: list[float], seeds: Sequence[int]) -> dict[str, Any]:
    """One baseline's entry in :func:`evaluate`'s result."""
    return {
        "values": values,
        "mean": float(np.mean(values)),
        "std": float(np.std(values)),
        "seeds": list(seeds),
    }


def evaluate_labelled(
    config: Any,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    names: Sequence[str] | None = None,
    task: tasks.Task | None = None,
) -> dict[str, dict[str, Any]]:
    """The baselines at a few-label config (``data.label_ratio`` < 1), on the model's own rows.

    The labelled subset depends on the seed, so for each seed the config's splits are rebuilt as
    the trainer builds them (validation carved, then the labelled subset) and every baseline is
    fitted on exactly the labelled rows that run's model sees and scored on test; a seeded
    baseline uses that seed. Returns the :func:`evaluate` format, one value per seed. ``task``
    (default ``tasks.get(config.task)``) saves reading the data again when the caller has it.
    """
    from xmodal_jax.train import setup

    task = task or tasks.get(config.task)
    per: dict[str, list[float]] = {}
    for seed in seeds:
        cfg = config.copy_and_resolve_references()
        cfg.unlock()
        cfg.seed = int(seed)
        splits = setup.load_splits(cfg, task)
        for name, r in evaluate(task, splits, seeds=[seed], names=names).items():
            per.setdefault(name, []).append(r["values"][0])
    return {name: _summary(v, seeds) for name, v in per.items()}
