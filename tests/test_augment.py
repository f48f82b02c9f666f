"""In-step augmentation (``xmodal_jax.data.augment``) and the fine-tune stage's ``aug_*`` keys."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmodal_jax import config_lib, train_lib
from xmodal_jax.data.augment import augment


def test_a_series_view_is_the_series_shifted_with_zero_fill():
    x = jnp.arange(1, 4 * 2 * 20 + 1, dtype=jnp.float32).reshape(4, 2, 20)
    view = np.asarray(augment(jax.random.key(3), x, shift=0.1, noise=0.0))
    s = 2  # round(0.1 · 20)
    for row, out in zip(np.asarray(x), view, strict=True):
        padded = np.pad(row, ((0, 0), (s, s)))
        offsets = [o for o in range(2 * s + 1) if np.array_equal(padded[:, o : o + 20], out)]
        assert offsets, "each view is one shift of its own series, every channel alike"
    assert not np.array_equal(view, np.asarray(x))


def test_noise_scales_with_each_example_and_flip_is_optional():
    x = jnp.concatenate(
        [jnp.ones((1, 1, 4000)), 10.0 * jax.random.normal(jax.random.key(0), (1, 1, 4000))]
    )
    d = np.asarray(augment(jax.random.key(1), x, shift=0.0, noise=0.1) - x)
    np.testing.assert_allclose(d.std(-1).ravel(), [0.0, 1.0], atol=0.05)  # 0.1 × each row's std
    img = jax.random.normal(jax.random.key(2), (64, 1, 4, 4))
    same = augment(jax.random.key(4), img, shift=0.0, noise=0.0, flip=False)
    np.testing.assert_array_equal(same, img)
    flipped = augment(jax.random.key(4), img, shift=0.0, noise=0.0)
    pairs = zip(np.asarray(flipped), np.asarray(img), strict=True)
    rows = [np.array_equal(f, i) or np.array_equal(f, i[..., ::-1]) for f, i in pairs]
    assert all(rows) and not np.array_equal(flipped, img)


def _task_loss(tiny_config, **stage):
    cfg = tiny_config("steps=4")
    cfg.stages.finetune.update(stage)
    run = train_lib.setup(cfg)
    ((stage_, _, _),) = train_lib.build_stages(run)
    batch = {k: jnp.asarray(v[:8]) for k, v in run.splits["train"].items()}
    loss = jax.jit(lambda p, b, r: stage_.loss_fn(p, b, r)[0])
    return [float(loss(run.params, batch, jax.random.key(i))) for i in range(3)]


def test_the_fine_tune_stage_trains_on_random_views_only_when_asked(tiny_config):
    plain = _task_loss(tiny_config)
    assert plain[0] == plain[1] == plain[2]  # off by default: the step ignores its rng
    views = _task_loss(tiny_config, aug_shift=0.2, aug_noise=0.1)
    assert len(set(views)) == 3 and plain[0] not in views


def test_augmentation_keys_are_range_checked(tiny_config):
    cfg = tiny_config("steps=4")
    cfg.stages.finetune.aug_noise = -0.1
    with pytest.raises(ValueError, match="stages.finetune.aug_noise: must be ≥ 0"):
        config_lib.validate(cfg)
