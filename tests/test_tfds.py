"""tfds builders: build ArrayRecord from a task's reader and read back TF-free, through Grain."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from xmodal_jax.data import formats, pipeline, tasks
from xmodal_jax.data import tfds as xtfds


def test_build_and_read_back_equals_the_reader(tmp_path):
    cfg = ml_collections.ConfigDict(
        dict(name="synthetic", target_seq_len=8, num_train=12, num_test=5, length=16)
    )
    direct = tasks.get(cfg).load()
    xtfds.build(cfg, str(tmp_path))
    built = xtfds.load_splits(cfg, str(tmp_path))
    assert set(built) == set(direct)
    for split in direct:
        assert len(built[split]["x"]) == len(direct[split]["x"])
        # ArrayRecord shuffles example order: compare as sets of (x, y) pairs.
        got = sorted(
            (built[split]["y"][i].item(), built[split]["x"][i].tobytes())
            for i in range(len(built[split]["x"]))
        )
        want = sorted(
            (int(y), x.tobytes())
            for x, y in zip(direct[split]["x"], direct[split]["y"], strict=True)
        )
        assert got == want
    # The Grain pipeline reads the lazy columns like arrays.
    batch = next(pipeline.train_iterator(built["train"], 4, seed=0, prefetch=0))
    assert batch["x"].shape == (4, 1, 16) and batch["x"].dtype == np.float32


def test_missing_build_is_a_clear_error(tmp_path):
    cfg = ml_collections.ConfigDict(dict(name="synthetic", target_seq_len=8))
    with pytest.raises(formats.DataFormatError, match="no built dataset 'xmodal_synthetic'"):
        xtfds.load_splits(cfg, str(tmp_path))
