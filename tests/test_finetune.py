"""ORCA objectives against slow exact references; optimizer, schedule and accumulation rules."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from scipy.optimize import linprog

from xmodal_jax import config_lib, train_lib
from xmodal_jax.methods import finetune as ft
from xmodal_jax.methods.base import Stage


def exact_ot(cost: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Exact OT cost by linear programming (the slow, obvious reference)."""
    n, m = cost.shape
    rows = [np.kron(np.eye(n)[i], np.ones(m)) for i in range(n)]
    cols = [np.kron(np.ones(n), np.eye(m)[j]) for j in range(m)]
    res = linprog(
        cost.ravel(), A_eq=np.array(rows + cols), b_eq=np.concatenate([a, b]), bounds=(0, None)
    )
    return float(res.fun)


def exact_otdd(xa, ya, xb, yb) -> float:
    cost = ((xa[:, None] - xb[None]) ** 2).sum(-1)
    ka, kb = ya.max() + 1, yb.max() + 1
    w = np.zeros((ka, kb))
    for i in range(ka):
        for j in range(kb):
            ia, ib = ya == i, yb == j
            w[i, j] = exact_ot(
                cost[ia][:, ib], np.full(ia.sum(), 1 / ia.sum()), np.full(ib.sum(), 1 / ib.sum())
            )
    return exact_ot(
        cost + w[ya][:, yb], np.full(len(xa), 1 / len(xa)), np.full(len(xb), 1 / len(xb))
    )


def test_otdd_matches_exact_ot_as_epsilon_vanishes():
    rng = np.random.default_rng(0)
    xa, ya = rng.normal(size=(8, 2)), np.array([0, 0, 0, 1, 1, 1, 1, 0])
    xb, yb = rng.normal(size=(6, 2)) + 1, np.array([0, 1, 2, 0, 1, 2])
    ref = exact_otdd(xa, ya, xb, yb)
    ours = ft.otdd(
        jnp.asarray(xa, jnp.float32),
        jnp.asarray(ya),
        2,
        jnp.asarray(xb, jnp.float32),
        jnp.asarray(yb),
        3,
        epsilon=1e-3,
        debiased=False,
    )
    print(f"\nOTDD entropic (eps=1e-3 rel.) {float(ours):.5f} vs exact LP {ref:.5f}")
    assert abs(float(ours) - ref) / ref < 0.01


def test_debiased_otdd_is_zero_on_identical_data_and_positive_otherwise():
    rng = np.random.default_rng(1)
    x, y = jnp.asarray(rng.normal(size=(10, 4)), jnp.float32), jnp.asarray(rng.integers(0, 3, 10))
    assert abs(float(ft.otdd(x, y, 3, x, y, 3))) < 1e-4
    assert float(ft.otdd(x, y, 3, x + 2.0, y, 3)) > 1.0


def test_otdd_gradient_moves_target_toward_source():
    rng = np.random.default_rng(2)
    xs, ys = jnp.asarray(rng.normal(size=(12, 3)), jnp.float32), jnp.asarray(rng.integers(0, 2, 12))
    xt, yt = xs + 3.0, ys
    g = jax.grad(lambda t: ft.otdd(t, yt, 2, xs, ys, 2))(xt)
    assert float(jnp.sum(g * (xt - xs))) > 0  # descent direction points back to the source


def test_mmd_zero_for_same_sample_and_grows_with_shift():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(16, 5)), jnp.float32)
    assert abs(float(ft.mmd(x, x))) < 1e-6
    assert float(ft.mmd(x, x + 1.0)) > float(ft.mmd(x, x + 0.1)) > 0


def test_kmeans_pseudo_labels_find_clusters():
    rng = np.random.default_rng(4)
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = rng.integers(0, 3, 60)
    fields = (centers[truth] + 0.1 * rng.normal(size=(60, 2))).reshape(60, 1, 2)
    labels = ft.kmeans_pseudo_labels(fields, k=3)
    # Same partition up to renaming.
    for c in range(3):
        assert len(set(labels[truth == c])) == 1
    assert len(set(labels)) == 3


def _stage_cfg(**kw):
    d = config_lib.stage_defaults()
    d.update(kw)
    return ml_collections.ConfigDict(d)


def test_schedule_is_orca_warmup_linear():
    sched = train_lib.make_schedule(_stage_cfg(lr=2.0, warmup_steps=5, schedule="linear"), 25)
    assert float(sched(0)) == 0.0
    assert float(sched(5)) == pytest.approx(2.0)
    assert float(sched(15)) == pytest.approx(1.0)
    assert float(sched(25)) == pytest.approx(0.0)
    assert float(sched(40)) == pytest.approx(0.0)  # clamped at 0 past the end


def _params():
    return {
        "embedder": {"w": jnp.ones((3,))},
        "body": {"w": jnp.ones((4, 2))},
        "head": {"w": jnp.ones((2,))},
    }


def test_frozen_groups_have_no_optimizer_state_and_no_update():
    params = _params()
    tx = train_lib.make_optimizer(_stage_cfg(trainable=("embedder",), optimizer="adam"), params, 10)
    state = tx.init(params)
    sizes = sum(x.size for x in jax.tree.leaves(state) if hasattr(x, "size") and x.ndim > 0)
    assert sizes == 2 * 3  # adam's mu and nu for the 3 embedder weights only
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, state, params)
    assert float(jnp.abs(updates["body"]["w"]).sum()) == 0
    assert float(jnp.abs(updates["head"]["w"]).sum()) == 0


def test_coupled_weight_decay_and_clipping():
    params = {"embedder": {"w": jnp.full((4,), 2.0)}}
    cfg = _stage_cfg(
        trainable=("embedder",),
        optimizer="sgd",
        momentum=0.0,
        lr=0.5,
        schedule="constant",
        weight_decay=0.1,
        clip=1.0,
    )
    tx = train_lib.make_optimizer(cfg, params, 10)
    grads = {"embedder": {"w": jnp.full((4,), 10.0)}}  # norm 20 → clipped to norm 1
    updates, _ = tx.update(grads, tx.init(params), params)
    expected = -0.5 * (0.5 + 0.1 * 2.0)  # clip(g) = 0.5 per entry, + wd·w, times -lr
    np.testing.assert_allclose(updates["embedder"]["w"], expected, rtol=1e-6)


def test_gradient_accumulation_mean_equals_full_batch():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)
    params = {"head": {"w": jnp.asarray(rng.normal(size=(3,)), jnp.float32)}}

    def loss_fn(p, batch, key):
        v = jnp.mean((batch["x"] @ p["head"]["w"]) ** 2)
        return v, {}

    stage = Stage("s", ("head",), {}, loss_fn=loss_fn)
    outs = []
    for accum in (1, 2, 4):
        cfg = _stage_cfg(
            trainable=("head",),
            optimizer="sgd",
            momentum=0.0,
            lr=0.1,
            schedule="constant",
            accum=accum,
        )
        tx = train_lib.make_optimizer(cfg, params, 1)
        state = train_lib.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
        step = jax.jit(train_lib.build_train_step(stage, cfg, tx, seed=0, start=0, num_steps=1))
        new, metrics = step(state, {"x": x})
        outs.append((new.params, metrics["loss"]))
    for p, loss in outs[1:]:
        chex.assert_trees_all_close(p, outs[0][0], rtol=1e-5)
        assert float(loss) == pytest.approx(float(outs[0][1]), rel=1e-5)


def test_gradient_accumulation_sum_scales_the_gradient():
    params = {"head": {"w": jnp.ones((2,))}}
    stage = Stage("s", ("head",), {}, loss_fn=lambda p, b, k: (jnp.sum(p["head"]["w"]) * 1.0, {}))
    cfg = _stage_cfg(
        trainable=("head",),
        optimizer="sgd",
        momentum=0.0,
        lr=1.0,
        schedule="constant",
        accum=4,
        accum_reduce="sum",
    )
    tx = train_lib.make_optimizer(cfg, params, 1)
    state = train_lib.TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
    new, _ = train_lib.build_train_step(stage, cfg, tx, 0, 0, 1)(state, {"x": jnp.zeros((8, 1))})
    np.testing.assert_allclose(new.params["head"]["w"], 1.0 - 4.0)  # 4 micro-grads of 1, summed


def test_frozen_groups_get_zero_gradients_through_stop_gradient():
    params = _params()

    def loss_fn(p, batch, key):
        return jnp.sum(p["embedder"]["w"]) * jnp.sum(p["body"]["w"]), {}

    stage = Stage("s", ("embedder",), {}, loss_fn=loss_fn)
    _, _, grads = train_lib.grad_fn_of(stage)(params, {}, jax.random.key(0), 0)
    assert float(jnp.abs(grads["body"]["w"]).sum()) == 0
    np.testing.assert_allclose(grads["embedder"]["w"], 8.0)


def test_optax_multi_transform_labels_cover_all_groups():
    params = _params()
    tx = train_lib.make_optimizer(_stage_cfg(trainable=("embedder", "head")), params, 3)
    assert isinstance(tx, optax.GradientTransformation)
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    assert float(jnp.abs(updates["head"]["w"]).sum()) > 0
