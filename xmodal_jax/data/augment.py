"""In-step input augmentation: random views of a batch inside the jitted step (static shapes).

One home for the views every method draws: LSG's two views per example and the fine-tune
stage's optional augmentation (``aug_shift`` / ``aug_noise``), the regulariser for series with a
few dozen training rows, where plain fine-tuning memorises the train split.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def augment(
    key: Array, x: Array, *, shift: float = 0.125, noise: float = 0.05, flip: bool = True
) -> Array:
    """One random view of a batch, by input rank (static shapes, per-example randomness).

    ``[B, C, L]`` signals: a random shift of up to ``shift·L`` samples (zero fill) and Gaussian
    noise of ``noise`` × the example's std. ``[B, C, H, W]`` images: a random crop of the image
    reflect-padded by ``shift·H``/``shift·W`` (a random translation), with ``flip`` a horizontal
    flip with probability ½, the same noise. ``[B, T, C, H, W]`` videos: the image transform with
    one crop and flip per clip (every frame moves alike).
    """
    if x.ndim == 5:
        b, t, c, hh, ww = x.shape
        view = augment(key, x.reshape(b, t * c, hh, ww), shift=shift, noise=noise, flip=flip)
        return view.reshape(x.shape)
    b = x.shape[0]
    k_shift, k_flip, k_noise = jax.random.split(key, 3)
    if x.ndim == 3:
        s = int(round(shift * x.shape[2]))
        if s:
            padded = jnp.pad(x, ((0, 0), (0, 0), (s, s)))
            start = jax.random.randint(k_shift, (b,), 0, 2 * s + 1)
            x = jax.vmap(lambda r, o: jax.lax.dynamic_slice_in_dim(r, o, x.shape[2], 1))(
                padded, start
            )
    elif x.ndim == 4:
        sh, sw = int(round(shift * x.shape[2])), int(round(shift * x.shape[3]))
        if sh or sw:
            padded = jnp.pad(x, ((0, 0), (0, 0), (sh, sh), (sw, sw)), mode="reflect")
            starts = jax.random.randint(k_shift, (b, 2), 0, jnp.asarray([2 * sh + 1, 2 * sw + 1]))
            x = jax.vmap(
                lambda r, o: jax.lax.dynamic_slice(r, (0, o[0], o[1]), (x.shape[1], *x.shape[2:]))
            )(padded, starts)
        if flip:
            flipped = jax.random.bernoulli(k_flip, 0.5, (b, 1, 1, 1))
            x = jnp.where(flipped, x[..., ::-1], x)
    else:
        raise ValueError(
            f"augment: expected [B, C, L], [B, C, H, W] or [B, T, C, H, W] inputs, got {x.shape}"
        )
    if noise:
        std = x.reshape(b, -1).std(1).reshape((b,) + (1,) * (x.ndim - 1))
        x = x + noise * std * jax.random.normal(k_noise, x.shape, x.dtype)
    return x
