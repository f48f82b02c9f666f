"""Grain input pipeline: determinism, per-process slices, resumable state, padding, val carve."""

from __future__ import annotations

import numpy as np
import pytest

from xmodal_jax import parallel
from xmodal_jax.data import pipeline


def _arrays(n=23):
    return {
        "x": np.arange(n, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32),
        "y": np.arange(n) % 3,
    }


def _take(it, k):
    return [next(it) for _ in range(k)]


def test_epochs_are_permutations_and_reshuffled():
    it = pipeline.train_iterator(_arrays(), 5, seed=0, prefetch=0)
    batches = _take(it, 8)  # 4 full batches per epoch (23 // 5), remainder dropped
    e0 = np.concatenate([b["y"] * 0 + b["x"][:, 0] for b in batches[:4]])
    e1 = np.concatenate([b["x"][:, 0] for b in batches[4:]])
    assert len(set(e0)) == 20 and len(set(e1)) == 20
    assert not np.array_equal(e0, e1)
    assert all(b["x"].shape == (5, 3) for b in batches)


def test_same_seed_same_batches_and_resume_from_state():
    a = pipeline.train_iterator(_arrays(), 4, seed=7, prefetch=2)
    first = _take(a, 3)
    state = a.get_state()
    rest = _take(a, 4)
    b = pipeline.train_iterator(_arrays(), 4, seed=7, prefetch=0, state=state)
    for x, y in zip(rest, _take(b, 4), strict=True):
        np.testing.assert_array_equal(x["x"], y["x"])
    c = pipeline.train_iterator(_arrays(), 4, seed=7, prefetch=0)
    np.testing.assert_array_equal(_take(c, 3)[2]["x"], first[2]["x"])


def test_process_slices_partition_the_global_batch(monkeypatch):
    full = _take(pipeline.train_iterator(_arrays(), 6, seed=1, prefetch=0), 3)
    parts = []
    for p in range(3):
        monkeypatch.setattr(parallel.jax, "process_count", lambda: 3)
        monkeypatch.setattr(parallel.jax, "process_index", lambda p=p: p)
        parts.append(_take(pipeline.train_iterator(_arrays(), 6, seed=1, prefetch=0), 3))
    for i in range(3):
        joined = np.concatenate([parts[p][i]["x"] for p in range(3)])
        np.testing.assert_array_equal(joined, full[i]["x"])
    monkeypatch.setattr(parallel.jax, "process_count", lambda: 4)
    with pytest.raises(ValueError, match="global batch 6 is not divisible by 4 processes"):
        pipeline.train_iterator(_arrays(), 6, seed=1, prefetch=0)


def test_eval_batches_pad_with_mask():
    batches = list(pipeline.eval_batches(_arrays(23), 10))
    assert [b["x"].shape for b in batches] == [(10, 3)] * 3
    valid = np.concatenate([b[pipeline.VALID] for b in batches])
    assert valid.sum() == 23 and valid[23:].sum() == 0
    xs = np.concatenate([b["x"][b[pipeline.VALID] > 0] for b in batches])
    np.testing.assert_array_equal(xs[:, 0], np.arange(23))


def test_carve_validation_disjoint_and_stratified():
    arrays = {"x": np.arange(100), "y": np.repeat([0, 1, 2, 3], [40, 30, 20, 10])}
    train, val = pipeline.carve_validation(arrays, 20, seed=0, stratify="y")
    assert len(val["x"]) == 20 and len(train["x"]) == 80
    assert not set(train["x"]) & set(val["x"])
    assert np.bincount(val["y"]).tolist() == [8, 6, 4, 2]
    with pytest.raises(ValueError, match="validation size 100"):
        pipeline.carve_validation(arrays, 100, seed=0)


def test_batch_larger_than_data_is_an_error():
    with pytest.raises(ValueError, match="batch size 50 exceeds the 23 training examples"):
        pipeline.train_iterator(_arrays(), 50, seed=0)


def test_a_stream_smaller_than_the_batch_cycles_only_when_asked():
    arrays = {"x": np.arange(6, dtype=np.float32)[:, None], "y": np.arange(6)}
    with pytest.raises(ValueError, match="batch size 8 exceeds the 6 training examples"):
        pipeline.train_iterator(arrays, 8, seed=0, prefetch=0)
    it = pipeline.train_iterator(arrays, 8, seed=0, prefetch=0, cycle=True)
    batches = [next(it)["y"] for _ in range(3)]
    assert all(len(b) == 8 for b in batches)
    seen = np.concatenate(batches[:1])
    assert set(seen) == set(range(6))  # a pass covers every example before any repeats twice
