"""CrossModalModel with ViT / Swin bodies: Embed2D init rule, dense and pooled heads."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import xmodal_jax as xm
from xmodal_jax.models import embedders


@pytest.fixture(scope="module")
def tiny_swin(tiny_hf):
    cfg = transformers.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4
    )
    torch.manual_seed(0)
    return xm.load_pretrained(tiny_hf(transformers.SwinModel(cfg).eval()))


@pytest.fixture(scope="module")
def tiny_vit(tiny_hf):
    cfg = transformers.ViTConfig(
        image_size=16,
        patch_size=4,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    torch.manual_seed(0)
    return xm.load_pretrained(tiny_hf(transformers.ViTModel(cfg).eval()))


def test_embed2d_reproduces_swin_patch_embedding(tiny_swin):
    task = xm.TaskSpec((3, 32, 32), "classification", 5)
    graphdef, params = xm.build_crossmodal(task, tiny_swin)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 32, 32)), jnp.float32)
    ours = xm.apply(graphdef, params, x, method="embed")
    ref = tiny_swin.module().embeddings(x)
    chex.assert_trees_all_close(ours, ref, atol=1e-5)
    # And the whole path equals the pretrained Swin on RGB input of its own size.
    feats = xm.apply(graphdef, params, x, method="features")
    chex.assert_trees_all_close(feats, tiny_swin.apply(tiny_swin.params, pixel_values=x), atol=1e-5)


@pytest.mark.parametrize("c_in", [1, 5])
def test_embed2d_channels_follow_c_mod_3(tiny_swin, c_in):
    task = xm.TaskSpec((c_in, 20, 20), "classification", 5)
    _, params = xm.build_crossmodal(task, tiny_swin)
    ours = np.asarray(params["embedder"]["patch"]["kernel"])
    src = np.asarray(tiny_swin.params["embeddings"]["patch"]["kernel"])
    np.testing.assert_array_equal(ours, embedders.tile_patch_kernel(src, c_in))
    np.testing.assert_array_equal(
        params["embedder"]["norm"]["scale"], tiny_swin.params["embeddings"]["norm"]["scale"]
    )


def test_swin_dense_head_maps_back_to_input_size(tiny_swin):
    task = xm.TaskSpec((1, 85, 85), "dense", 1)
    graphdef, params = xm.build_crossmodal(task, tiny_swin)
    x = jnp.ones((2, 1, 85, 85))
    out = jax.jit(lambda p, x: xm.apply(graphdef, p, x))(params, x)
    chex.assert_shape(out, (2, 1, 85, 85))
    # 32 px / 4 patch = 8×8 grid, one merge → 4×4 final grid → decoder upsamples ×8.
    chex.assert_shape(params["head"]["decoder"]["kernel"], (1, 1, 32, 3 * 8 * 8))
    g = jax.grad(lambda p: jnp.mean(xm.apply(graphdef, p, x) ** 2))(params)
    assert float(jnp.abs(g["embedder"]["patch"]["kernel"]).sum()) > 0


def test_vit_classification_uses_cls_and_positions(tiny_vit):
    task = xm.TaskSpec((2, 16, 16), "classification", 7)
    graphdef, params = xm.build_crossmodal(task, tiny_vit)
    np.testing.assert_array_equal(
        params["embedder"]["position"], tiny_vit.params["embeddings"]["position"]
    )
    out = xm.apply(graphdef, params, jnp.ones((3, 2, 16, 16)))
    chex.assert_shape(out, (3, 7))
    dense = xm.build_crossmodal(xm.TaskSpec((1, 16, 16), "dense", 2, output_hw=(10, 12)), tiny_vit)
    chex.assert_shape(xm.apply(*dense, jnp.ones((1, 1, 16, 16))), (1, 2, 10, 12))


def test_vision_body_rejects_1d_tasks(tiny_vit):
    with pytest.raises(ValueError, match="needs a text body"):
        xm.build_crossmodal(xm.TaskSpec((1, 100), "classification", 2), tiny_vit)


def test_source_images_are_resized_onto_the_body_grid(tiny_swin):
    graphdef, params = xm.build_crossmodal(xm.TaskSpec((1, 20, 20), "classification", 3), tiny_swin)
    small = jnp.ones((2, 3, 16, 16))  # CIFAR-like source smaller than the body's 32 px
    feats = xm.apply(graphdef, params, method="source_features", pixel_values=small)
    big = tiny_swin.apply(tiny_swin.params, pixel_values=jnp.ones((2, 3, 32, 32)))
    chex.assert_shape(feats, big.shape)
