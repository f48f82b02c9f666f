"""The source path: source examples through a body's frozen input layer.

:func:`input_tokens` is the one switch over source kinds (precomputed ``tokens`` | text
``input_ids`` | image ``pixel_values``). ``CrossModalModel.source_tokens``, ``source_features``
and ``pooled_source_features`` (what MoNA, PaRe and the source diagnostics call inside a step)
and :func:`embed_source` (outside one: the ``[N, D]`` features ORCA's alignment reads as
``Context.source_features``) all go through it. :func:`write_text_proxy` regenerates ORCA's
``text_xs.npy`` / ``text_ys.npy`` for any text body. The raw examples come from
``data.sources``, which runs no network.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xmodal_jax.data import sources
from xmodal_jax.models.embedders import resize_bilinear
from xmodal_jax.models.heads import masked_mean
from xmodal_jax.models.pretrained import Pretrained

Array = jax.Array

# The source kinds, in the order they are looked for, and every field the source path reads.
SOURCE_KINDS = ("tokens", "input_ids", "pixel_values")
SOURCE_KEYS = ("tokens", "input_ids", "attention_mask", "pixel_values")


def source_kind(source: Mapping[str, Any]) -> str:
    """Which of :data:`SOURCE_KINDS` a source batch holds (the first present); other keys
    (labels, masks) are ignored."""
    for kind in SOURCE_KINDS:
        if kind in source:
            return kind
    raise ValueError(f"a source batch needs one of {SOURCE_KINDS}; got keys {sorted(source)}")


def input_tokens(
    embeddings: nnx.Module,
    source: Mapping[str, Array],
    *,
    image_size: tuple[int, int] | None = None,
    cast: Callable[[Array], Array] = lambda x: x,
) -> Array:
    """A source batch → input-layer tokens ``[B, N, D]`` of ``embeddings`` (the body's own).

    ``tokens`` are already input-layer tokens (ORCA's text proxy) and come back as given;
    ``input_ids`` go through the word/position embeddings; ``pixel_values`` are ``cast`` (the
    model's compute dtype) and resized to ``image_size`` first, so images of another size (CIFAR's
    32 px) land on the token grid the body expects.
    """
    kind = source_kind(source)
    if kind == "tokens":
        return source["tokens"]
    if kind == "input_ids":
        return embeddings(input_ids=source["input_ids"])
    px = cast(source["pixel_values"])
    if image_size is not None:
        px = resize_bilinear(px, image_size)
    return embeddings(pixel_values=px)


def pool(tokens: Array, source: Mapping[str, Array]) -> Array:
    """Mean over a source batch's tokens, padding (``attention_mask == 0``) excluded."""
    return masked_mean(tokens, source.get("attention_mask"))


def embed_source(pretrained: Pretrained, source: dict[str, np.ndarray], batch: int = 256):
    """Mean-over-tokens output of the body's frozen input layer: ``[N, D]`` source features.

    Always the *pretrained* input layer in float32 (also under a random body or bf16 compute):
    these features are fixed data for ORCA's alignment. Images are resized to the body's
    configured image size; padding tokens are excluded from the mean.
    """
    if source_kind(source) == "tokens":
        # No network to run: the host mean of the stored tokens.
        return np.asarray(source["tokens"], np.float32).mean(axis=1)
    hw = None
    if "pixel_values" in source:
        size = pretrained.config.image_size
        hw = (size, size) if isinstance(size, int) else tuple(size)

    @jax.jit
    def fn(params, batch_inputs):
        emb = pretrained.module(params).embeddings
        cast = lambda x: x.astype(jnp.float32)  # noqa: E731
        return pool(input_tokens(emb, batch_inputs, image_size=hw, cast=cast), batch_inputs)

    keys = [k for k in SOURCE_KEYS if k in source]
    n = len(source[keys[0]])
    out = []
    for i in range(0, n, batch):
        chunk = {k: np.asarray(source[k][i : i + batch]) for k in keys}
        m = len(chunk[keys[0]])
        if m < batch:  # pad to a static shape; padding rows are dropped below
            chunk = {
                k: np.concatenate([v, np.repeat(v[:1], batch - m, 0)]) for k, v in chunk.items()
            }
        out.append(np.asarray(fn(pretrained.params, chunk))[:m])
    return np.concatenate(out)


def text_proxy_arrays(pretrained: Pretrained, source: dict[str, np.ndarray]) -> np.ndarray:
    """``[N, T, D]`` token embeddings (positions included) from the body's frozen input layer."""

    @jax.jit
    def fn(params, ids):
        return pretrained.module(params).embeddings(ids)

    return np.asarray(fn(pretrained.params, jnp.asarray(source["input_ids"])))


def write_text_proxy(pretrained: Pretrained, out_dir: str, **kwargs) -> tuple[str, str]:
    """Writes ``text_xs.npy`` (N×T×D float32) and ``text_ys.npy`` (N int) for ``pretrained``.

    ORCA ships these files for RoBERTa-base only; regenerating them from labelled text works for
    any text body. ``kwargs`` go to :func:`xmodal_jax.data.sources.text_source` (classes,
    examples, sequence length).
    """
    source = sources.text_source(pretrained, **kwargs)
    os.makedirs(out_dir, exist_ok=True)
    xs_path, ys_path = os.path.join(out_dir, "text_xs.npy"), os.path.join(out_dir, "text_ys.npy")
    np.save(xs_path, text_proxy_arrays(pretrained, source).astype(np.float32))
    np.save(ys_path, source["y"].astype(np.int64))
    return xs_path, ys_path
