"""The source path outside a training step: source examples through a body's frozen input layer.

``embed_source`` gives the ``[N, D]`` features ORCA's alignment stage reads (``Context.source_
features``); ``write_text_proxy`` regenerates ORCA's ``text_xs.npy`` / ``text_ys.npy`` for any text
body. The raw examples come from ``data.sources`` (which runs no network).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from xmodal_jax.data import sources
from xmodal_jax.models.embedders import resize_bilinear
from xmodal_jax.models.pretrained import Pretrained


def embed_source(pretrained: Pretrained, source: dict[str, np.ndarray], batch: int = 256):
    """Mean-over-tokens output of the body's frozen input layer: ``[N, D]`` source features.

    Text sources give ``input_ids``/``attention_mask`` (padding excluded from the mean), image
    sources ``pixel_values`` (resized to the body's image size), proxies precomputed ``tokens``.
    """
    if "tokens" in source:
        return np.asarray(source["tokens"], np.float32).mean(axis=1)

    @jax.jit
    def fn(params, batch_inputs):
        emb = pretrained.module(params).embeddings
        if "input_ids" in batch_inputs:
            tokens = emb(batch_inputs["input_ids"])
            m = batch_inputs["attention_mask"][..., None].astype(tokens.dtype)
            return (tokens * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
        size = pretrained.config.image_size
        hw = (size, size) if isinstance(size, int) else tuple(size)
        x = resize_bilinear(batch_inputs["pixel_values"].astype(jnp.float32), hw)
        return emb(x).mean(1)

    keys = [k for k in ("input_ids", "attention_mask", "pixel_values") if k in source]
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
