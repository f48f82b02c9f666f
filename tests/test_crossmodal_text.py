"""CrossModalModel with a text body: parameter groups, initialisation, pure apply."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import xmodal_jax as xm


def test_groups_and_shapes_for_1d_classification(minilm):
    task = xm.TaskSpec((1, 1000), "classification", 4, target_seq_len=64)
    orca = xm.Embed1DOptions(kind="orca")  # ORCA's divisor rule: stride 20
    graphdef, params = xm.build_crossmodal(task, minilm, embedder=orca)
    assert set(params) == {"embedder", "body", "head", "source_embedder"}
    # The body group is exactly the pretrained stack, the source embedder its input layer.
    chex.assert_trees_all_equal(params["body"], minilm.params["encoder"])
    chex.assert_trees_all_equal(params["source_embedder"], minilm.params["embeddings"])
    chex.assert_shape(params["embedder"]["conv"]["kernel"], (20, 1, 384))
    chex.assert_shape(params["embedder"]["position"], (50, 384))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 1, 1000)), jnp.float32)
    logits = jax.jit(lambda p, x: xm.apply(graphdef, p, x))(params, x)
    chex.assert_shape(logits, (3, 4))
    feats = xm.apply(graphdef, params, x, method="features")
    chex.assert_shape(feats, (3, 50, 384))


def test_body_params_swap_gives_the_scratch_baseline(minilm):
    task = xm.TaskSpec((2, 64), "regression", 1, target_seq_len=64)
    _, pre = xm.build_crossmodal(task, minilm)
    _, scratch = xm.build_crossmodal(task, minilm, body_params=minilm.random_params(seed=3))
    chex.assert_trees_all_equal_structs(pre, scratch)
    a = pre["body"]["layers"][0]["attn"]["query"]["kernel"]
    b = scratch["body"]["layers"][0]["attn"]["query"]["kernel"]
    assert not np.allclose(a, b)
    # Same seed → same embedder and head init, whichever body.
    chex.assert_trees_all_equal(pre["head"], scratch["head"])


def test_dense_1d_output_matches_input_length(minilm):
    task = xm.TaskSpec((3, 1024), "dense", 3, target_seq_len=128)
    graphdef, params = xm.build_crossmodal(task, minilm)
    assert not jax.tree.leaves(params.get("head", {}))  # the 1D dense head is parameter-free
    out = xm.apply(graphdef, params, jnp.ones((2, 3, 1024)))
    chex.assert_shape(out, (2, 3, 1024))


def test_source_path_matches_the_plain_body(minilm):
    task = xm.TaskSpec((1, 64), "classification", 2, target_seq_len=64)
    graphdef, params = xm.build_crossmodal(task, minilm)
    ids = jnp.asarray([[101, 7592, 2088, 102, 0]])
    mask = jnp.asarray([[1, 1, 1, 1, 0]])
    ours = xm.apply(graphdef, params, method="source_features", input_ids=ids, attention_mask=mask)
    ref = minilm.apply(minilm.params, input_ids=ids, attention_mask=mask)
    chex.assert_trees_all_close(ours, ref, atol=1e-6)


def test_only_embedder_gradient_when_body_frozen(minilm):
    task = xm.TaskSpec((1, 32), "classification", 3, target_seq_len=32)
    graphdef, params = xm.build_crossmodal(task, minilm)
    x = jnp.ones((2, 1, 32))

    def loss(emb):
        return jnp.mean(xm.apply(graphdef, {**params, "embedder": emb}, x) ** 2)

    g = jax.jit(jax.grad(loss))(params["embedder"])
    assert all(float(jnp.abs(v).sum()) > 0 for v in jax.tree.leaves(g))


def test_modality_mismatch_is_a_clear_error(tiny_swin_path):
    # 2D inputs run on text bodies (patch tokens + the body's positions); 1D on vision does not.
    swin = xm.load_pretrained(tiny_swin_path)
    with pytest.raises(ValueError, match=r"1D task input \(1, 64\) needs a text body"):
        xm.build_crossmodal(xm.TaskSpec((1, 64), "classification", 10), swin)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(input_shape=(1, 2, 3, 4, 5), output="dense", num_outputs=1), "input_shape"),
        (dict(input_shape=(1, 2, 3, 4), output="dense", num_outputs=1), "video tasks"),
        (dict(input_shape=(1, 8), output="segmentation", num_outputs=1), "output='segmentation'"),
        (dict(input_shape=(1, 8), output="classification", num_outputs=0), "num_outputs"),
    ],
)
def test_taskspec_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        xm.TaskSpec(**kwargs)


def test_built_params_own_their_buffers_so_donation_is_safe(minilm):
    task = xm.TaskSpec((1, 32), "classification", 3, target_seq_len=32)
    graphdef, params = xm.build_crossmodal(task, minilm)
    step = jax.jit(lambda p: jax.tree.map(lambda x: x * 1.0, p), donate_argnums=0)
    step(params)  # would fail on aliased leaves ("donate the same buffer twice")
    # ... and the pretrained weights survive.
    assert float(jnp.abs(minilm.params["embeddings"]["norm"]["scale"]).sum()) > 0
