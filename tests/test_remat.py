"""Per-block rematerialisation of the bodies: same numbers, less compiled memory; 2D on text."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import xmodal_jax as xm
from tests.conftest import tiny_bert_config
from xmodal_jax import config_lib, train_lib
from xmodal_jax.methods import mona
from xmodal_jax.models import embedders, layers

POLICIES = ("full", "dots_saveable")


def _loss(graphdef, x, y):
    def loss(params):
        logits = xm.apply(graphdef, params, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return loss


def _assert_same(a, b, rtol=1e-6, atol=1e-7):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(u, v, rtol=rtol, atol=atol)


def _model(path, spec):
    pre = xm.load_pretrained(path)
    return xm.build_crossmodal(spec, pre)


@pytest.mark.parametrize("body", ["text", "swin"])
def test_remat_keeps_outputs_and_gradients(body, tiny_bert_path, tiny_swin_path):
    if body == "text":
        spec = xm.TaskSpec((2, 16), "classification", 3, target_seq_len=8)
        path, shape = tiny_bert_path, (4, 2, 16)
    else:
        spec = xm.TaskSpec((3, 32, 32), "classification", 3)
        path, shape = tiny_swin_path, (2, 3, 32, 32)
    graphdef, params = _model(path, spec)
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)
    y = jnp.arange(shape[0]) % 3
    ref_loss, ref_grad = jax.jit(jax.value_and_grad(_loss(graphdef, x, y)))(params)
    ref_out = jax.jit(lambda p: xm.apply(graphdef, p, x, method="features"))(params)
    for policy in POLICIES:
        g = layers.with_remat(graphdef, params, policy)
        assert g != graphdef  # a different static graph, the same params
        loss, grad = jax.jit(jax.value_and_grad(_loss(g, x, y)))(params)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
        _assert_same(grad, ref_grad)
        out = jax.jit(lambda p, g=g: xm.apply(g, p, x, method="features"))(params)
        _assert_same(out, ref_out)


def test_remat_keeps_the_exact_meta_gradient(tiny_bert_path):
    graphdef, params = _model(
        tiny_bert_path, xm.TaskSpec((2, 16), "classification", 3, target_seq_len=8)
    )
    rng = np.random.default_rng(0)
    target = {"x": jnp.asarray(rng.normal(size=(4, 2, 16)), jnp.float32), "y": jnp.arange(4) % 3}
    source = {
        "input_ids": jnp.asarray(rng.integers(1000, 2000, size=(6, 5))),
        "attention_mask": jnp.ones((6, 5), jnp.int32),
        "y": jnp.asarray([0, 0, 1, 1, 2, 2]),
    }
    trainable = {g: params[g] for g in mona.META_GROUPS}

    def grads(g):
        def loss_fn(p, batch, key):
            return _loss(g, batch["x"], batch["y"])(p), {}

        kw = dict(graphdef=g, loss_fn=loss_fn, alpha=0.5, lam=0.4)
        fn = jax.jit(lambda tr: mona.meta_grad(tr, params, target, source, jax.random.key(0), **kw))
        return fn(trainable)

    ref = grads(graphdef)
    _assert_same(grads(layers.with_remat(graphdef, params, "full")), ref, rtol=1e-5, atol=1e-6)


def _temp_bytes(fn, *args) -> int:
    stats = jax.jit(fn).lower(*args).compile().memory_analysis()
    if stats is None:
        pytest.skip("memory_analysis() is unavailable on this backend")
    return int(stats.temp_size_in_bytes)


def test_remat_lowers_compiled_temp_memory(tiny_hf):
    import torch
    import transformers

    # Four layers (the shared tiny body has one, and one layer's activations are needed in full
    # either way); long sequences and a wide batch, so activations dominate the working set.
    cfg = tiny_bert_config(vocab_size=128, num_hidden_layers=4, max_position_embeddings=160)
    torch.manual_seed(0)
    spec = xm.TaskSpec((1, 128), "classification", 3, target_seq_len=128)
    graphdef, params = _model(tiny_hf(transformers.BertModel(cfg)), spec)
    x = jnp.zeros((32, 1, 128), jnp.float32)
    y = jnp.zeros((32,), jnp.int32)
    temp = {
        policy: _temp_bytes(
            jax.grad(_loss(layers.with_remat(graphdef, params, policy), x, y)), params
        )
        for policy in ("none", "full")
    }
    print(f"\ncompiled temp bytes of the gradient: {temp}")
    assert temp["full"] < 0.8 * temp["none"]


def test_config_body_remat_reaches_the_graphdef(tiny_config):
    config = tiny_config("steps=2")
    config.body.remat = "full"
    run = train_lib.setup(config)
    assert run.graphdef != layers.with_remat(run.graphdef, run.params, "none")
    config.body.remat = "everything"
    with pytest.raises(ValueError, match="body.remat"):
        config_lib.validate(config)


def test_patch2d_size_rule():
    assert embedders.patch2d_size((8, 8), 64) == 1
    assert embedders.patch2d_size((8, 8), 16) == 2
    assert embedders.patch2d_size((8, 12), 6) == 4
    with pytest.raises(ValueError, match="no common patch size"):
        embedders.patch2d_size((7, 7), 4)


def test_2d_input_on_a_text_body(tiny_bert_path):
    pre = xm.load_pretrained(tiny_bert_path)
    spec = xm.TaskSpec((1, 8, 8), "classification", 10, target_seq_len=16)
    graphdef, params = xm.build_crossmodal(spec, pre)
    emb = params["embedder"]
    assert emb["patch"]["kernel"].shape == (2, 2, 1, 32)  # 2×2 patches → 16 tokens
    # The patch tokens take the body's own position rows (BERT: from 0), no LayerNorm.
    table = pre.params["embeddings"]["position"]["embedding"]
    np.testing.assert_array_equal(emb["position"][0], table[:16])
    assert "norm" not in emb
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(3, 1, 8, 8)), jnp.float32)
    feats = xm.apply(graphdef, params, x, method="features")
    assert feats.shape == (3, 16, 32)
    assert xm.apply(graphdef, params, x).shape == (3, 10)
    # Token (i, j) is patch rows 2i..2i+1, cols 2j..2j+1: changing one pixel moves one token.
    tokens = xm.apply(graphdef, params, x, method="embed")
    moved = xm.apply(graphdef, params, x.at[:, :, 2:4, 4:6].add(1.0), method="embed")
    changed = np.flatnonzero(np.abs(np.asarray(moved - tokens)).max(axis=(0, 2)) > 0)
    assert changed.tolist() == [1 * 4 + 2]
