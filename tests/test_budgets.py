"""Budgets that converge: step floors, equal totals, early stopping, validation size, k-fold."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from xmodal_jax import train_lib
from xmodal_jax.data import pipeline


def test_min_steps_floor_and_budgets_that_include_the_stages_before(tiny_config):
    cfg = tiny_config("steps=20,align=otdd")
    cfg.stages.finetune.update(dict(steps=0, epochs=1.0, min_steps=30))  # 1 epoch = 6 steps
    cfg.stages.align.steps = 10
    run = train_lib.setup(cfg)
    assert [n for _, _, n in train_lib.build_stages(run)] == [10, 30]
    cfg.stages.finetune.includes_previous = True  # 30 in all: the align stage's 10 come off
    assert [n for _, _, n in train_lib.build_stages(run)] == [10, 20]
    cfg.stages.finetune.min_steps = 10
    with pytest.raises(ValueError, match="includes the 10 steps of the stages before it"):
        train_lib.build_stages(run)


def test_validation_floor():
    assert train_lib._val_size(50, 0.2) == 10
    assert train_lib._val_size(50, 0.2, min_val=20) == 20
    assert train_lib._val_size(30, 0.2, min_val=20) == 15  # never more than half of train
    assert train_lib._val_size(500, 0.2, min_val=20) == 100


def test_early_stopping_stops_resumes_stopped_and_says_why(tiny_config, tmp_path):
    # lr 1e-12: nothing improves after the first evaluation, so patience 2 ends the stage at
    # the third evaluation (step 6 of 40).
    cfg = tiny_config("steps=40")
    cfg.eval_every = 2
    cfg.stages.finetune.update(dict(patience=2, lr=1e-12))
    res = train_lib.train(cfg, str(tmp_path / "run"), verbose=False)
    assert res["stages"]["finetune"] == {"steps": 6, "budget": 40, "stopped": "patience"}
    assert res["best_step"] == 2 and res["steps"] == 6
    again = train_lib.train(cfg, str(tmp_path / "run"), verbose=False)  # resume: stays stopped
    assert again["stages"] == res["stages"] and again["test_best"] == res["test_best"]
    cfg.stages.finetune.patience = 0
    full = train_lib.train(cfg, str(tmp_path / "full"), verbose=False)
    assert full["stages"]["finetune"] == {"steps": 40, "budget": 40, "stopped": "budget"}


def test_kfold_assignment_is_stratified_and_covers_every_row():
    labels = np.repeat([0, 1, 2], [10, 7, 5])
    ids = pipeline.kfold_assignment(len(labels), 4, seed=0, labels=labels)
    assert set(ids) == {0, 1, 2, 3}
    for c, n in ((0, 10), (1, 7), (2, 5)):
        counts = np.bincount(ids[labels == c], minlength=4)
        assert counts.sum() == n and counts.max() - counts.min() <= 1
    sizes = np.bincount(ids)
    assert sizes.max() - sizes.min() <= 1
    with pytest.raises(ValueError, match="folds=1 must be in"):
        pipeline.kfold_assignment(5, 1, seed=0)


def test_kfold_runs_one_model_per_fold_and_reports_their_ensemble(tiny_config, tmp_path):
    cfg = tiny_config("steps=6")
    cfg.data.folds = 3
    res = train_lib.train(cfg, str(tmp_path / "cv"), verbose=False)
    assert res["folds"] == 3 and len(res["fold_results"]) == 3
    # Out-of-fold validation covers all 64 training rows exactly once.
    preds = [np.load(tmp_path / "cv" / f"fold_{i}" / "predictions.npz") for i in range(3)]
    assert sum(len(p["val/y"]) for p in preds) == 64
    # The reported test metric is the ensemble of the three folds' chosen checkpoints.
    task = train_lib.setup(cfg_fold(cfg, 0)).task
    ens = train_lib.ensemble_outputs(task, [p["test/out"] for p in preds])
    probs = [np.exp(p["test/out"] - p["test/out"].max(-1, keepdims=True)) for p in preds]
    mean = np.mean([q / q.sum(-1, keepdims=True) for q in probs], axis=0)
    np.testing.assert_allclose(np.exp(ens), mean, rtol=1e-6)
    y = preds[0]["test/y"]
    assert res["test_best"] == pytest.approx(100.0 * np.mean(mean.argmax(-1) != y))
    with open(tmp_path / "cv" / "results.json") as f:
        assert json.load(f)["test_best"] == res["test_best"]
    # A second call reuses every finished fold.
    mtime = os.path.getmtime(tmp_path / "cv" / "fold_0" / "results.json")
    assert (
        train_lib.train(cfg, str(tmp_path / "cv"), verbose=False)["test_best"] == res["test_best"]
    )
    assert os.path.getmtime(tmp_path / "cv" / "fold_0" / "results.json") == mtime


def cfg_fold(cfg, i):
    out = cfg.copy_and_resolve_references()
    out.data.fold = i
    return out


def test_a_prime_length_series_trains_with_the_default_config(tiny_config, tmp_path):
    # L = 31 > target_seq_len = 8 has no divisor stride: the default pads to stride 4 (8 tokens,
    # 1 zero) instead of refusing, and the run trains and evaluates.
    cfg = tiny_config("steps=3", **{"task.length": 31})
    res = train_lib.train(cfg, str(tmp_path / "prime"), verbose=False)
    assert res["steps"] == 3 and np.isfinite(res["test_last"])
