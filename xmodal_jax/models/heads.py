"""Task heads on top of the body's output tokens (spec/orca.md §3).

- :class:`PooledHead`: mean over (unmasked) tokens → Linear(D, C); classification, multi-label
  and scalar regression alike.
- :class:`Dense1DHead`: parameter-free; each token's D features are adaptive-average-pooled to
  ``out_channels · s`` values and un-patchified back to ``[B, out_channels, L]``.
- :class:`Dense2DHead`: the SimMIM-style decoder: 1×1 conv D → C_dec·r², pixel shuffle ×r, then
  adaptive average pools over channels (→ out_channels) and space (→ the input H×W).
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from xmodal_jax.models import layers

Array = jax.Array


def masked_mean(tokens: Array, mask: Array | None) -> Array:
    """Mean over the token axis of ``[B, L, D]``, counting only ``mask == 1`` tokens if given."""
    if mask is None:
        return tokens.mean(axis=1)
    m = mask.astype(tokens.dtype)[..., None]
    return (tokens * m).sum(axis=1) / jnp.maximum(m.sum(axis=1), 1.0)


class PooledHead(nnx.Module):
    """Mean-pool the tokens (skipping ``skip_tokens`` leading ones, e.g. a class token) → Linear.

    With ``frames = T > 1`` the tokens are ``[B, T·N, D]`` (T frames of N tokens, as a video
    model's body returns them) and the leading tokens are skipped in every frame, so the pooled
    vector is the temporal mean of the per-frame pooled features.
    """

    def __init__(
        self,
        dim: int,
        num_outputs: int,
        *,
        skip_tokens: int = 0,
        frames: int = 1,
        rngs: nnx.Rngs,
    ):
        self.skip_tokens = skip_tokens
        self.frames = frames
        self.linear = layers.dense(dim, num_outputs, rngs)

    def pool(self, tokens: Array, mask: Array | None = None) -> Array:
        """The pooled features ``[B, D]`` the linear layer reads."""
        chex.assert_rank(tokens, 3)
        if self.frames > 1:
            if mask is not None:
                raise ValueError("PooledHead: token masks are not supported for video (frames > 1)")
            b, n, d = tokens.shape
            tokens = tokens.reshape(b, self.frames, n // self.frames, d)[:, :, self.skip_tokens :]
            return tokens.mean(axis=(1, 2))
        if self.skip_tokens:
            tokens = tokens[:, self.skip_tokens :]
            mask = None if mask is None else mask[:, self.skip_tokens :]
        return masked_mean(tokens, mask)

    def __call__(self, tokens: Array, mask: Array | None = None) -> Array:
        return self.linear(self.pool(tokens, mask))


class Dense1DHead(nnx.Module):
    """Per-token dense prediction for 1D fields: ``[B, T, D]`` → ``[B, out_channels, L]``.

    Token ``t`` predicts positions ``t·s … t·s+s-1`` of every output channel (we un-patchify;
    the reference raw-reshaped, which scrambles channels when out_channels > 1). ``length``
    (default ``T·s``) crops the positions the embedder padded past the input's end.
    """

    def __init__(self, out_channels: int, stride: int, length: int | None = None):
        self.out_channels, self.stride, self.length = out_channels, stride, length

    def __call__(self, tokens: Array, mask: Array | None = None) -> Array:
        del mask
        chex.assert_rank(tokens, 3)
        b, t, _ = tokens.shape
        pooled = layers.adaptive_avg_pool_1d(tokens, self.out_channels * self.stride, axis=-1)
        pooled = pooled.reshape(b, t, self.out_channels, self.stride)
        out = jnp.transpose(pooled, (0, 2, 1, 3)).reshape(b, self.out_channels, t * self.stride)
        return out if self.length is None else out[..., : self.length]


def pixel_shuffle(x: Array, r: int) -> Array:
    """PyTorch ``PixelShuffle(r)`` in NHWC: channel ``c·r²+i·r+j`` → pixel ``(h·r+i, w·r+j)``."""
    b, h, w, c = x.shape
    if c % (r * r):
        raise ValueError(f"pixel_shuffle: {c} channels are not a multiple of r²={r * r}")
    x = x.reshape(b, h, w, c // (r * r), r, r)
    x = jnp.transpose(x, (0, 1, 4, 2, 5, 3))
    return x.reshape(b, h * r, w * r, c // (r * r))


class Dense2DHead(nnx.Module):
    """Image-to-image decoder: tokens on a ``grid`` → ``[B, out_channels, H_out, W_out]``.

    ``r = image_size / grid`` (32 for Swin-B at 224). The decoder reconstructs ``decoder_channels``
    maps at the body's resolution (3 in the reference, the MIM decoder's RGB), which are then
    adaptively pooled to the task's channels and spatial size (which may up-sample).
    """

    def __init__(
        self,
        dim: int,
        *,
        grid: tuple[int, int],
        image_size: tuple[int, int],
        out_channels: int,
        out_hw: tuple[int, int],
        decoder_channels: int = 3,
        skip_tokens: int = 0,
        rngs: nnx.Rngs,
    ):
        if (
            image_size[0] % grid[0]
            or image_size[1] % grid[1]
            or (image_size[0] // grid[0] != image_size[1] // grid[1])
        ):
            raise ValueError(f"image_size {image_size} is not a uniform multiple of grid {grid}")
        self.grid, self.out_channels, self.out_hw = tuple(grid), out_channels, tuple(out_hw)
        self.skip_tokens = skip_tokens
        self.r = image_size[0] // grid[0]
        self.decoder = nnx.Conv(dim, decoder_channels * self.r**2, kernel_size=(1, 1), rngs=rngs)

    def __call__(self, tokens: Array, mask: Array | None = None) -> Array:
        del mask
        tokens = tokens[:, self.skip_tokens :]
        b, n, d = tokens.shape
        if n != math.prod(self.grid):
            raise ValueError(
                f"Dense2DHead expects {self.grid} = {math.prod(self.grid)} tokens, got {n}"
            )
        x = self.decoder(tokens.reshape(b, *self.grid, d))
        x = pixel_shuffle(x, self.r)  # [B, H, W, decoder_channels]
        x = layers.adaptive_avg_pool_1d(x, self.out_channels, axis=-1)
        x = jnp.transpose(x, (0, 3, 1, 2))
        return layers.adaptive_avg_pool_2d(x, self.out_hw)
