"""Host-side input pipeline: Grain datasets of static-shape batches, sharded by process.

Batch ``i`` of a run is a pure function of ``(seed, i)``: the epoch's permutation comes from
``(seed, epoch)`` and each process reads only its contiguous slice of the global batch. So a
1-process and an N-process run see the same global batches, and the iterator state that goes into
a checkpoint is Grain's ``{"next_index": i}``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import numpy as np

from xmodal_jax import parallel

if TYPE_CHECKING:
    # Imported by the functions that build Grain datasets: the arithmetic helpers here are used
    # by training steps that must import without it (bench/device_check.sh).
    import grain

Arrays = Mapping[str, np.ndarray]
VALID = "_valid"  # key of the 0/1 row mask in padded (evaluation) batches


def _check(arrays: Arrays) -> int:
    sizes = {k: len(v) for k, v in arrays.items()}
    if not sizes or len(set(sizes.values())) != 1:
        raise ValueError(f"arrays must share one non-empty leading dim, got sizes {sizes}")
    return next(iter(sizes.values()))


def class_balanced_indices(labels: np.ndarray, batch: int, rng: np.random.Generator) -> np.ndarray:
    """``batch`` indices: P classes × Q ≥ 2 examples each, so same-class pairs always exist."""
    classes = np.unique(labels)
    p = max(1, min(len(classes), batch // 2))
    q = batch // p
    chosen = rng.choice(classes, p, replace=False)
    idx = [rng.choice(np.flatnonzero(labels == c), q, replace=True) for c in chosen]
    rest = batch - p * q  # batch not a multiple of p: top up from the first class
    idx.append(rng.choice(np.flatnonzero(labels == chosen[0]), rest, replace=True))
    return np.concatenate(idx)


class _BalancedBatches:
    """Random-access source: step ``i`` → this process's rows of a class-balanced global batch."""

    def __init__(self, arrays: Arrays, global_batch: int, seed: int, label: str = "y"):
        _check(arrays)
        self.arrays, self.global_batch, self.seed = arrays, global_batch, seed
        self.labels = np.asarray(arrays[label])
        self.rows = parallel.process_slice(global_batch)

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, int(i)])
        idx = class_balanced_indices(self.labels, self.global_batch, rng)[self.rows]
        return {k: v[idx] for k, v in self.arrays.items()}


class _TrainBatches:
    """Random-access source: global step ``i`` → this process's rows of that global batch."""

    def __init__(
        self, arrays: Arrays, global_batch: int, seed: int, shuffle: bool, cycle: bool = False
    ):
        self.arrays, self.global_batch, self.seed, self.shuffle = (
            arrays,
            global_batch,
            seed,
            shuffle,
        )
        self.n = _check(arrays)
        if global_batch > self.n and not cycle:
            raise ValueError(f"batch size {global_batch} exceeds the {self.n} training examples")
        # cycle: an "epoch" is ⌈batch / n⌉ passes (each its own permutation), so a stream smaller
        # than the batch (a source proxy) still gives full batches.
        self.passes = -(-global_batch // self.n) if cycle else 1
        self.per_epoch = self.passes * self.n // global_batch  # drop the remainder: static shapes
        self.rows = parallel.process_slice(global_batch)

    def __len__(self) -> int:
        return 2**62  # endless; the trainer decides how many steps to take

    @functools.lru_cache(maxsize=2)  # noqa: B019 - one source per run; caches the epoch order
    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.tile(np.arange(self.n), self.passes)
        if self.passes == 1:
            return np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return np.concatenate(
            [
                np.random.default_rng([self.seed, epoch, r]).permutation(self.n)
                for r in range(self.passes)
            ]
        )

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        epoch, j = divmod(int(i), self.per_epoch)
        idx = self._order(epoch)[j * self.global_batch : (j + 1) * self.global_batch][self.rows]
        return {k: v[idx] for k, v in self.arrays.items()}


def train_iterator(
    arrays: Arrays,
    global_batch: int,
    *,
    seed: int,
    shuffle: bool = True,
    prefetch: int = 2,
    state: dict | None = None,
    balanced: bool = False,
    cycle: bool = False,
) -> grain.DatasetIterator:
    """An endless Grain iterator of this process's share of each global batch.

    Epochs are reshuffled with ``(seed, epoch)``, the last incomplete batch of each epoch is
    dropped, and ``prefetch`` batches are prepared in background threads. ``state`` (from
    ``iterator.get_state()``) resumes exactly where a checkpoint left off. ``balanced`` draws
    each batch class-balanced on ``arrays["y"]`` instead (with replacement, seeded per step).
    ``cycle`` lets a dataset smaller than the batch repeat within a batch (source streams).
    """
    import grain

    source = (
        _BalancedBatches(arrays, global_batch, seed)
        if balanced
        else _TrainBatches(arrays, global_batch, seed, shuffle, cycle)
    )
    ds = grain.MapDataset.source(source).to_iter_dataset(
        grain.ReadOptions(num_threads=1 if prefetch else 0, prefetch_buffer_size=prefetch)
    )
    it = iter(ds)
    if state is not None:
        it.set_state(state)
    return it


def steps_per_epoch(num_examples: int, global_batch: int) -> int:
    """Number of (full) training batches per epoch."""
    return max(num_examples // global_batch, 1)


def eval_batches(arrays: Arrays, global_batch: int) -> Iterator[dict[str, np.ndarray]]:
    """This process's share of each padded evaluation batch, in order, with a ``_valid`` mask.

    The last batch is padded with copies of row 0 (mask 0) so every batch has the same shape and
    the evaluation step compiles once.
    """
    n = _check(arrays)
    rows = parallel.process_slice(global_batch)
    num = -(-n // global_batch)

    def get(i: int) -> dict[str, np.ndarray]:
        idx = np.arange(i * global_batch, (i + 1) * global_batch)
        valid = idx < n
        idx = np.where(valid, idx, 0)[rows]
        out = {k: v[idx] for k, v in arrays.items()}
        out[VALID] = valid[rows].astype(np.float32)
        return out

    import grain

    yield from grain.MapDataset.range(num).map(get)


def carve_validation(
    arrays: Arrays, n_val: int, *, seed: int, stratify: str | None = None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Splits ``n_val`` examples off the training arrays (disjoint), optionally class-stratified.

    Used wherever a task has no official validation split: model selection must never see test.
    """
    n = _check(arrays)
    if not 0 < n_val < n:
        raise ValueError(f"validation size {n_val} must be in (0, {n}) for {n} training examples")
    rng = np.random.default_rng(seed)
    if stratify is None:
        perm = rng.permutation(n)
        val_idx = perm[:n_val]
    else:
        labels = np.asarray(arrays[stratify])
        classes, counts = np.unique(labels, return_counts=True)
        # Largest-remainder allocation keeps the total exactly n_val.
        quota = counts * n_val / n
        take = np.floor(quota).astype(int)
        for i in np.argsort(-(quota - take))[: n_val - take.sum()]:
            take[i] += 1
        val_idx = np.concatenate(
            [
                rng.permutation(np.flatnonzero(labels == c))[:t]
                for c, t in zip(classes, take, strict=True)
            ]
        )
    mask = np.zeros(n, bool)
    mask[val_idx] = True
    train = {k: v[~mask] for k, v in arrays.items()}
    val = {k: v[mask] for k, v in arrays.items()}
    return train, val


def kfold_assignment(
    num: int, folds: int, *, seed: int, labels: np.ndarray | None = None
) -> np.ndarray:
    """Fold id ``0 … folds−1`` of each of ``num`` rows: seeded, class-stratified if ``labels``.

    Each class's rows are shuffled and dealt round-robin, so every fold gets ⌊n_c/k⌋ or ⌈n_c/k⌉
    rows of class ``c`` and fold sizes differ by at most one per class.
    """
    if not 2 <= folds <= num:
        raise ValueError(f"k-fold validation: folds={folds} must be in [2, {num}] for {num} rows")
    rng = np.random.default_rng(seed)
    out = np.empty(num, np.int32)
    groups = (
        [np.arange(num)]
        if labels is None
        else [np.flatnonzero(np.asarray(labels) == c) for c in np.unique(labels)]
    )
    start = 0
    for idx in groups:
        out[rng.permutation(idx)] = (start + np.arange(len(idx))) % folds
        start += len(idx)  # the next class continues the deal: fold sizes stay balanced
    return out


def label_subset(
    arrays: Arrays, ratio: float, *, seed: int, label: str = "y"
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Keeps the labels of ``ratio`` of each class (seeded), returns ``(labelled, unlabelled)``.

    Class ``c`` with ``n_c`` examples keeps ``max(1, round(ratio·n_c))`` of them (round half up),
    so every class stays represented; the rest (possibly none) is the unlabelled split. Rows keep
    their original order inside each part. The semi-supervised splits of LSG / Self-Tuning
    (15 / 30 / 50 / 100 % labelled per class) for any classification dataset.
    """
    n = _check(arrays)
    if not 0 < ratio <= 1:
        raise ValueError(f"label ratio {ratio} must be in (0, 1]")
    labels = np.asarray(arrays[label])
    rng = np.random.default_rng(seed)
    keep = np.zeros(n, bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = min(len(idx), max(1, int(np.floor(ratio * len(idx) + 0.5))))
        keep[rng.permutation(idx)[:k]] = True
    return {k: v[keep] for k, v in arrays.items()}, {k: v[~keep] for k, v in arrays.items()}
