"""ORCA embedders, heads and pooling primitives against PyTorch / slow references."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from xmodal_jax.models import embedders, heads, layers


@pytest.mark.parametrize(
    "length,tsl,stride", [(1000, 64, 20), (1000, 512, 2), (46, 512, 1), (1024, 128, 8), (7, 7, 1)]
)
def test_stride_rule(length, tsl, stride):
    assert embedders.conv1d_stride(length, tsl) == stride


def test_stride_rule_rejects_prime_length():
    with pytest.raises(ValueError, match="L=1009 .* target_seq_len=64"):
        embedders.conv1d_stride(1009, 64)


def test_embed1d_rejects_too_many_tokens():
    with pytest.raises(ValueError, match="600 tokens .* 514 rows"):
        embedders.Embed1D(
            1, 600, 8, target_seq_len=1000, max_positions=514, position_offset=2, rngs=nnx.Rngs(0)
        )


@pytest.mark.parametrize("n,m", [(10, 3), (7, 7), (5, 12), (224, 85), (16, 1)])
def test_adaptive_pool_1d_matches_torch(n, m):
    x = np.random.default_rng(0).normal(size=(2, 3, n)).astype(np.float32)
    ref = F.adaptive_avg_pool1d(torch.tensor(x), m).numpy()
    np.testing.assert_allclose(layers.adaptive_avg_pool_1d(jnp.asarray(x), m), ref, atol=1e-6)


def test_adaptive_pool_2d_matches_torch_including_upsampling():
    x = np.random.default_rng(1).normal(size=(2, 1, 224, 224)).astype(np.float32)
    for hw in [(85, 85), (512, 512), (7, 9)]:
        ref = F.adaptive_avg_pool2d(torch.tensor(x), hw).numpy()
        np.testing.assert_allclose(layers.adaptive_avg_pool_2d(jnp.asarray(x), hw), ref, atol=1e-5)


def test_pixel_shuffle_matches_torch():
    x = np.random.default_rng(2).normal(size=(2, 12, 3, 5)).astype(np.float32)  # NCHW, r=2
    ref = torch.nn.PixelShuffle(2)(torch.tensor(x)).numpy()
    ours = heads.pixel_shuffle(jnp.asarray(x.transpose(0, 2, 3, 1)), 2)
    np.testing.assert_array_equal(np.asarray(ours).transpose(0, 3, 1, 2), ref)


@pytest.mark.parametrize("hw", [(224, 224), (40, 30), (16, 52)])
def test_resize_matches_torch_bilinear(hw):
    x = np.random.default_rng(3).normal(size=(2, 3, 85, 60)).astype(np.float32)
    ref = F.interpolate(torch.tensor(x), size=hw, mode="bilinear", align_corners=False).numpy()
    np.testing.assert_allclose(embedders.resize_bilinear(jnp.asarray(x), hw), ref, atol=1e-5)


def test_embed1d_matches_torch_conv_and_uses_body_positions(minilm):
    emb = embedders.Embed1D(
        2, 100, 384, target_seq_len=32, max_positions=512, position_offset=2, rngs=nnx.Rngs(0)
    )
    assert (emb.stride, emb.num_tokens) == (4, 25)
    body = minilm.module()
    embedders.init_from_body(emb, body.embeddings)
    table = np.asarray(body.embeddings.position.embedding[...])
    np.testing.assert_array_equal(np.asarray(emb.position[...]), table[2:27])  # ids 2…T+1
    x = np.random.default_rng(4).normal(size=(3, 2, 100)).astype(np.float32)
    conv = torch.nn.Conv1d(2, 384, 4, stride=4)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(np.asarray(emb.conv.kernel[...]).transpose(2, 1, 0)))
        conv.bias.copy_(torch.tensor(np.asarray(emb.conv.bias[...])))
        tokens = conv(torch.tensor(x)).transpose(1, 2)
        ln = torch.nn.LayerNorm(384, eps=1e-12)
        ln.weight.copy_(torch.tensor(np.asarray(body.embeddings.norm.scale[...])))
        ln.bias.copy_(torch.tensor(np.asarray(body.embeddings.norm.bias[...])))
        ref = (ln(tokens) + torch.tensor(table[2:27])).numpy()
    np.testing.assert_allclose(emb(jnp.asarray(x)), ref, atol=2e-5)


def test_tile_patch_kernel_follows_c_mod_3():
    k = np.random.default_rng(5).normal(size=(4, 4, 3, 8)).astype(np.float32)
    for c_in in (1, 3, 5, 57):
        tiled = embedders.tile_patch_kernel(k, c_in)
        assert tiled.shape == (4, 4, c_in, 8)
        for c in range(c_in):
            np.testing.assert_array_equal(tiled[:, :, c], k[:, :, c % 3])


def test_dense1d_head_unpatchifies_in_order():
    b, t, d, c_out, s = 2, 5, 12, 2, 3
    tokens = np.random.default_rng(6).normal(size=(b, t, d)).astype(np.float32)
    out = np.asarray(heads.Dense1DHead(c_out, s)(jnp.asarray(tokens)))
    assert out.shape == (b, c_out, t * s)
    pooled = F.adaptive_avg_pool1d(torch.tensor(tokens), c_out * s).numpy()  # [b, t, c_out*s]
    for bi in range(b):
        for ti in range(t):
            for c in range(c_out):
                for j in range(s):
                    assert out[bi, c, ti * s + j] == pytest.approx(
                        pooled[bi, ti, c * s + j], abs=1e-6
                    )


def test_dense2d_head_shapes_and_decoder_layout():
    head = heads.Dense2DHead(
        16, grid=(2, 2), image_size=(8, 8), out_channels=1, out_hw=(5, 7), rngs=nnx.Rngs(0)
    )
    tokens = jnp.asarray(np.random.default_rng(7).normal(size=(3, 4, 16)), jnp.float32)
    out = head(tokens)
    chex.assert_shape(out, (3, 1, 5, 7))
    # Reference: torch 1x1 conv + PixelShuffle + channel mean + adaptive pool.
    conv = torch.nn.Conv2d(16, 3 * 16, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(np.asarray(head.decoder.kernel[...]).transpose(3, 2, 0, 1)))
        conv.bias.copy_(torch.tensor(np.asarray(head.decoder.bias[...])))
        x = torch.tensor(np.asarray(tokens)).reshape(3, 2, 2, 16).permute(0, 3, 1, 2)
        img = torch.nn.PixelShuffle(4)(conv(x))
        ref = F.adaptive_avg_pool2d(img.mean(1, keepdim=True), (5, 7)).numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_pooled_head_masked_mean_and_skip():
    head = heads.PooledHead(4, 2, skip_tokens=1, rngs=nnx.Rngs(0))
    tokens = jnp.arange(2 * 4 * 4, dtype=jnp.float32).reshape(2, 4, 4)
    mask = jnp.asarray([[1, 1, 1, 0], [1, 1, 1, 1]])
    feats = heads.masked_mean(tokens[:, 1:], mask[:, 1:])
    np.testing.assert_allclose(feats[0], tokens[0, 1:3].mean(0))
    np.testing.assert_allclose(head(tokens, mask), head.linear(feats), atol=1e-6)


def test_embedder_gradients_flow(minilm):
    emb = embedders.Embed1D(1, 64, 384, target_seq_len=64, max_positions=512, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(emb)
    x = jnp.ones((2, 1, 64))
    grads = jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p)(x) ** 2))(params)
    assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads))
