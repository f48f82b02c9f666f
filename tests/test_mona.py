"""MoNA's meta-gradient against slow, obvious computations; the stage in the trainer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import xmodal_jax as xm
from tests.test_train import train_losses
from xmodal_jax import config_lib, train_lib
from xmodal_jax.data import pipeline
from xmodal_jax.methods import mona


def _setup(tiny_bert_path, dtype=jnp.float32):
    pre = xm.load_pretrained(tiny_bert_path)
    task = xm.TaskSpec((2, 16), "classification", 3, target_seq_len=8)
    graphdef, params = xm.build_crossmodal(task, pre)
    params = jax.tree.map(lambda x: x.astype(dtype), params)
    rng = np.random.default_rng(0)
    target = {
        "x": jnp.asarray(rng.normal(size=(4, 2, 16)), dtype),
        "y": jnp.asarray([0, 1, 2, 1]),
    }
    source = {
        "input_ids": jnp.asarray(rng.integers(1000, 2000, size=(6, 5))),
        "attention_mask": jnp.ones((6, 5), jnp.int32).at[0, 4].set(0),
        "y": jnp.asarray([0, 0, 1, 1, 2, 2]),
    }

    def loss_fn(p, batch, key):
        logits = xm.apply(graphdef, p, batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), {}

    kw = dict(graphdef=graphdef, loss_fn=loss_fn, alpha=0.5, lam=0.4, t=2.0)
    trainable = {g: params[g] for g in ("embedder", "head")}
    return params, trainable, target, source, kw


def _dot(a, b):
    return sum(
        float(jnp.vdot(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


# The trainer's default RMS rule runs by default; the spec's SGD rule with ``pytest -m slow``
# (its exact meta-gradient is also checked against the Hessian-vector formula below).
@pytest.mark.parametrize("rule", [pytest.param("sgd", marks=pytest.mark.slow), "rms"])
def test_exact_meta_gradient_matches_central_finite_differences(tiny_bert_path, rule):
    with jax.enable_x64(True):
        params, trainable, target, source, kw = _setup(tiny_bert_path, jnp.float64)
        kw["rule"] = rule
        if rule == "rms":
            kw["alpha"] = 1e-2  # an Adam-sized step: every leaf moves by RMS 1e-2
        key = jax.random.key(0)
        _, _, grads = mona.meta_grad(trainable, params, target, source, key, **kw)

        def j(tr):
            return float(mona.meta_objective(tr, params, target, source, key, **kw)[0])

        rng = np.random.default_rng(1)
        for _ in range(3):
            v = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape)), trainable)
            v = _scale(v, 1.0 / np.sqrt(_dot(v, v)))
            h = 1e-5
            fd = (j(_axpy(trainable, v, h)) - j(_axpy(trainable, v, -h))) / (2 * h)
            ad = _dot(grads, v)
            print(f"\ndirectional derivative: autodiff {ad:.8e} vs central FD {fd:.8e}")
            assert abs(ad - fd) <= 1e-3 * max(abs(fd), 1e-8)


def test_exact_meta_gradient_equals_the_hessian_vector_formula(tiny_bert_path):
    with jax.enable_x64(True):
        params, trainable, target, source, kw = _setup(tiny_bert_path, jnp.float64)
        key = jax.random.key(0)
        _, _, exact = mona.meta_grad(trainable, params, target, source, key, **kw)
        loss_fn, alpha, lam = kw["loss_fn"], kw["alpha"], kw["lam"]

        # Direct term ∇_{φ,ψ} L_in, plus λ·(−α)·∇_{φ,ψ}⟨∇_θ L_in(θ, φ, ψ), g'⟩ with
        # g' = ∇_θ L_out(θ') held constant: the mixed second derivative written out by hand.
        def l_in(tr, body):
            return loss_fn({**params, **tr, "body": body}, target, key)[0]

        direct = jax.grad(l_in)(trainable, params["body"])
        theta1 = mona.inner_update(loss_fn, params, target, key, alpha=alpha)
        g_out = jax.grad(lambda b: mona.outer_loss(kw["graphdef"], {**params, "body": b}, source))(
            theta1
        )

        def inner_dot(tr):
            g_in = jax.grad(l_in, argnums=1)(tr, params["body"])
            return _tree_vdot(g_in, g_out)

        mixed = jax.grad(inner_dot)(trainable)
        formula = jax.tree.map(lambda d, m: d - lam * alpha * m, direct, mixed)
        for a, b in zip(jax.tree.leaves(exact), jax.tree.leaves(formula), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-10)


def _scale(tree, c):
    return jax.tree.map(lambda x: x * c, tree)


def _axpy(x, v, h):
    return jax.tree.map(lambda a, b: a + h * b, x, v)


def _tree_vdot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def test_lambda_zero_is_a_plain_warmup_step(tiny_bert_path):
    params, trainable, target, source, kw = _setup(tiny_bert_path)
    kw["lam"] = 0.0
    key = jax.random.key(0)
    _, _, meta = mona.meta_grad(trainable, params, target, source, key, **kw)
    plain = jax.grad(lambda tr: kw["loss_fn"]({**params, **tr}, target, key)[0])(trainable)
    for a, b in zip(jax.tree.leaves(meta), jax.tree.leaves(plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8)


def test_rms_inner_step_moves_every_leaf_by_rms_alpha(tiny_bert_path):
    params, _, target, _, kw = _setup(tiny_bert_path)
    new = mona.inner_update(
        kw["loss_fn"], params, target, jax.random.key(0), alpha=1e-3, rule="rms"
    )
    flat_a = jax.tree_util.tree_flatten_with_path(params["body"])[0]
    for (path, a), b in zip(flat_a, jax.tree.leaves(new), strict=True):
        if "key" in jax.tree_util.keystr(path) and "bias" in jax.tree_util.keystr(path):
            continue  # softmax ignores a key bias: its gradient is 0 up to rounding noise
        rms = float(jnp.sqrt(jnp.mean(jnp.square(b - a))))
        assert rms == pytest.approx(1e-3, rel=1e-3), jax.tree_util.keystr(path)


def test_diagnostics_report_the_meta_share_and_the_source_loss_change(tiny_bert_path):
    params, trainable, target, source, kw = _setup(tiny_bert_path)
    key = jax.random.key(0)
    for mode in ("exact", "first_order", "taylor"):
        _, aux, grads = mona.meta_grad(trainable, params, target, source, key, mode=mode, **kw)
        # Slow, obvious versions: the meta term is the total minus the plain task gradient.
        direct = jax.grad(lambda tr: kw["loss_fn"]({**params, **tr}, target, key)[0])(trainable)
        meta = jax.tree.map(lambda g, d: g - d, grads, direct)
        share = np.sqrt(_dot(meta, meta) / _dot(direct, direct))
        assert float(aux["mona/meta_share"]) == pytest.approx(share, rel=1e-3, abs=1e-6), mode
    theta1 = mona.inner_update(kw["loss_fn"], params, target, key, alpha=kw["alpha"])
    delta = mona.outer_loss(kw["graphdef"], {**params, "body": theta1}, source) - mona.outer_loss(
        kw["graphdef"], params, source
    )
    _, aux, _ = mona.meta_grad(trainable, params, target, source, key, **kw)
    assert float(aux["mona/source_loss_delta"]) == pytest.approx(float(delta), rel=1e-4)


def test_finite_difference_meta_gradient_agrees_in_direction(tiny_bert_path):
    params, trainable, target, source, kw = _setup(tiny_bert_path)
    key = jax.random.key(0)
    kw["lam"] = 5.0  # make the meta term dominate, so the comparison is about it
    _, _, exact = mona.meta_grad(trainable, params, target, source, key, **kw)
    for mode in ("first_order", "taylor"):
        _, _, approx = mona.meta_grad(trainable, params, target, source, key, mode=mode, **kw)
        cos = _dot(exact, approx) / np.sqrt(_dot(exact, exact) * _dot(approx, approx))
        print(f"\n{mode}: cosine with the exact meta-gradient {cos:.4f}")
        if mode == "first_order":
            assert cos >= 0.9


def test_alignment_uniformity_against_loops():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(6, 4))
    y = np.array([0, 0, 1, 1, 1, 2])
    align, unif = mona.alignment_uniformity(jnp.asarray(z), jnp.asarray(y), t=2.0)
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    pos, allp = [], []
    for i in range(6):
        for j in range(6):
            if i != j:
                d = np.sum((zn[i] - zn[j]) ** 2)
                allp.append(np.exp(-2.0 * d))
                if y[i] == y[j]:
                    pos.append(d)
    assert float(align) == pytest.approx(np.mean(pos), rel=1e-5)
    assert float(unif) == pytest.approx(np.log(np.mean(allp)), rel=1e-5)
    no_pairs = mona.alignment_uniformity(jnp.asarray(z[:3]), jnp.asarray([0, 1, 2]))[0]
    assert float(no_pairs) == 0.0


def test_inner_mask_restricts_the_virtual_step(tiny_bert_path):
    params, _, target, _, kw = _setup(tiny_bert_path)
    mask = mona.inner_mask(params["body"], r"layers/0/mlp/")
    new = mona.inner_update(kw["loss_fn"], params, target, jax.random.key(0), alpha=0.5, mask=mask)
    query = params["body"]["layers"][0]["attn"]["query"]["kernel"]
    fc1 = params["body"]["layers"][0]["mlp"]["fc1"]["kernel"]
    np.testing.assert_array_equal(new["layers"][0]["attn"]["query"]["kernel"], query)
    assert not np.allclose(new["layers"][0]["mlp"]["fc1"]["kernel"], fc1)


def test_meta_step_compiles_once(tiny_bert_path):
    params, trainable, target, source, kw = _setup(tiny_bert_path)
    fn = jax.jit(lambda tr, tg, src, k: mona.meta_grad(tr, params, tg, src, k, **kw)[2])
    fn(trainable, target, source, jax.random.key(0))
    target2 = {**target, "x": target["x"] + 1.0}
    fn(trainable, target2, source, jax.random.key(1))
    assert fn._cache_size() == 1


def test_class_balanced_batches_have_positive_pairs():
    labels = np.repeat(np.arange(5), [10, 3, 7, 2, 9])
    for i in range(20):
        idx = pipeline.class_balanced_indices(labels, 8, np.random.default_rng(i))
        counts = np.bincount(labels[idx])
        assert len(idx) == 8 and counts[counts > 0].min() >= 2


def test_stop_gradient_variant_is_rejected_by_config():
    c = config_lib.base_config()
    config_lib.add_stage(
        c, "mona", kind="mona", trainable=("embedder", "head"), meta_grad="stop_gradient", steps=1
    )
    c.stage_order = "mona"
    with pytest.raises(ValueError, match="identically zero"):
        config_lib.validate(c)


@pytest.mark.slow
def test_three_stage_recipe_runs_sharded_like_one_device(tiny_config, tmp_path):
    """8 devices vs 1 through a whole recipe (``pytest -m slow``; the default run checks the
    MoNA step on a 2×4 mesh in tests/test_scale.py)."""
    losses = {}
    for n in (1, 8):
        cfg = tiny_config("steps=6,align=task", **{"mesh.num_devices": n, "log_every": 1})
        cfg.source.kind = "text"
        cfg.source.max_examples = 64
        config_lib.add_stage(
            cfg,
            "mona",
            kind="mona",
            trainable=("embedder", "head"),
            steps=4,
            lr=1e-4,
            inner_lr=1e-3,
            evaluate=False,
        )
        cfg.stage_order = "align,mona,finetune"
        wd = tmp_path / f"dev{n}"
        train_lib.train(cfg, str(wd), verbose=False)
        losses[n] = train_losses(wd)
    assert sorted(losses[1]) == list(range(1, 14))  # 3 align + 4 MoNA + 6 fine-tune steps
    rel = max(abs(losses[8][s] - losses[1][s]) / abs(losses[1][s]) for s in losses[1])
    print(f"\nwarm-up → MoNA → fine-tune, 8 devices vs 1: max relative loss diff {rel:.2e}")
    assert rel <= 1e-5


def test_source_retention_is_logged_per_eval(tiny_config, tmp_path):
    import json

    cfg = tiny_config("steps=10", **{"source_diagnostics": True, "eval_every": 5})
    cfg.source.kind = "text"
    cfg.source.max_examples = 64
    cfg.stages.finetune.remat = True
    train_lib.train(cfg, str(tmp_path), verbose=False)
    recs = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    diag = [r for r in recs if r["split"] == "source"]
    assert [r["step"] for r in diag] == [5, 10]
    assert all(0 <= r["probe_acc"] <= 1 and r["davies_bouldin"] > 0 for r in diag)


def test_source_retention_against_sklearn_on_separable_clusters():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    x = rng.normal(size=(90, 5)) * 0.1 + np.eye(5)[y] * 5.0
    got = mona.source_retention(x, y)
    assert got["probe_acc"] == 1.0 and got["davies_bouldin"] < 0.2


def test_meta_gradient_on_a_swin_body_with_image_source(tiny_swin_path):
    pre = xm.load_pretrained(tiny_swin_path)
    graphdef, params = xm.build_crossmodal(xm.TaskSpec((1, 16, 52), "classification", 4), pre)
    rng = np.random.default_rng(0)
    target = {
        "x": jnp.asarray(rng.normal(size=(4, 1, 16, 52)), jnp.float32),
        "y": jnp.asarray([0, 1, 2, 3]),
    }
    source = {
        "pixel_values": jnp.asarray(rng.uniform(size=(4, 3, 16, 16)), jnp.float32),
        "y": jnp.asarray([0, 0, 1, 1]),
    }

    def loss_fn(p, batch, key):
        logits = xm.apply(graphdef, p, batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), {}

    trainable = {g: params[g] for g in ("embedder", "head")}
    value, aux, grads = jax.jit(
        lambda tr: mona.meta_grad(
            tr,
            params,
            target,
            source,
            jax.random.key(0),
            graphdef=graphdef,
            loss_fn=loss_fn,
            alpha=0.1,
            lam=0.4,
        )
    )(trainable)
    assert np.isfinite(float(value)) and float(aux["outer_loss"]) != 0.0
    assert float(jnp.abs(grads["embedder"]["patch"]["kernel"]).sum()) > 0
