"""The first-try baselines: which a task gets, that they learn, and that a few-label config fits
them on exactly the rows its models train on."""

from __future__ import annotations

import numpy as np
import pytest

from xmodal_jax import baselines, config_lib
from xmodal_jax.data import tasks
from xmodal_jax.train import setup


def _config(**task):
    c = config_lib.base_config()
    c.task.update(dict(name="synthetic", channels=1, length=32, num_train=80, num_test=40, **task))
    c.data.val_size = 0.2
    return c


def test_each_family_gets_its_fields_baselines():
    series = tasks.get(_config().task)
    assert set(baselines.for_task(series)) == {*baselines.SERIES, *baselines.FLAT}
    short = _config()
    short.task.length = 8
    short = tasks.get(short.task)  # MiniRocket's kernels span 9 samples
    assert set(baselines.for_task(short)) == set(baselines.FLAT)


def test_series_baselines_learn_the_synthetic_sines():
    out = baselines.evaluate(tasks.get(_config().task), seeds=(0, 1))
    assert out["MiniRocket"]["seeds"] == [0, 1] and len(out["MiniRocket"]["values"]) == 2
    assert out["1-NN DTW"]["seeds"] == [0]  # deterministic: one run
    # Three sine frequencies under noise 0.3: the field's series models separate them.
    assert out["MiniRocket"]["mean"] <= 10.0 and out["1-NN DTW"]["mean"] <= 20.0
    assert all(0.0 <= r["mean"] <= 100.0 for r in out.values())


def test_few_label_baselines_fit_on_each_seeds_labelled_rows(monkeypatch):
    seen = []

    def record(xtr, ytr, xte, seed, classes):
        seen.append(np.asarray(xtr).copy())
        return np.eye(classes)[np.zeros(len(xte), int)]  # always class 0

    monkeypatch.setattr(baselines, "FLAT", {"recorder": (record, False)})
    monkeypatch.setattr(baselines, "SERIES", {})
    cfg = _config()
    cfg.data.label_ratio = 0.25
    out = baselines.evaluate_labelled(cfg, seeds=(0, 3))
    assert out["recorder"]["seeds"] == [0, 3] and len(out["recorder"]["values"]) == 2
    task = tasks.get(cfg.task)
    for seed, xtr in zip((0, 3), seen, strict=True):
        cfg.seed = seed
        labelled = setup.load_splits(cfg, task)["train"]["x"]
        np.testing.assert_array_equal(xtr, labelled)  # the model's rows, not all of train
        assert len(xtr) < 0.5 * 80
    assert not np.array_equal(seen[0], seen[1])  # the subset follows the seed
    test_y = task.load()["test"]["y"]
    assert out["recorder"]["mean"] == pytest.approx(100.0 * np.mean(test_y != 0))
