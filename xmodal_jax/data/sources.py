"""Source-modality proxy data for alignment objectives (ORCA stage 1, MoNA, PaRe).

The text proxy ships offline: the VADER sentiment lexicon (≈7.5k English words and emoticons, each
with the mean of 10 human valence ratings in [-4, 4]), labelled by valence bins. Examples are
tokenised with the body's own tokenizer and embedded by its frozen input layer, exactly like
ORCA's ``text_xs.npy`` (token embeddings with positions) — but regenerated for any body.
"""

from __future__ import annotations

from importlib import resources

import jax
import jax.numpy as jnp
import numpy as np

from xmodal_jax.models.pretrained import Pretrained


def vader_lexicon() -> tuple[list[str], np.ndarray]:
    """Words and mean valences of the VADER lexicon (from the installed ``vaderSentiment``)."""
    path = resources.files("vaderSentiment").joinpath("vader_lexicon.txt")
    words, valence = [], []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise ValueError(f"{path}:{lineno}: expected 'token<TAB>valence…', got {line!r}")
        words.append(parts[0])
        valence.append(float(parts[1]))
    return words, np.asarray(valence, np.float32)


def text_source(
    pretrained: Pretrained,
    *,
    num_classes: int = 4,
    max_examples: int = 2048,
    seq_len: int = 8,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Labelled source examples for a text body: ``{"input_ids", "attention_mask", "y"}``.

    Valence is split into ``num_classes`` equal-frequency bins; ``max_examples`` words are sampled
    class-balanced. Token ids are padded/truncated to ``seq_len`` (static shapes).
    """
    if pretrained.modality != "text":
        raise ValueError(f"text_source needs a text body, got {pretrained.model_type!r}")
    words, valence = vader_lexicon()
    edges = np.quantile(valence, np.linspace(0, 1, num_classes + 1)[1:-1])
    labels = np.searchsorted(edges, valence, side="right").astype(np.int32)
    rng = np.random.default_rng(seed)
    per_class = max_examples // num_classes
    idx = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(num_classes)]
    )
    enc = pretrained.tokenizer(
        [words[i] for i in idx],
        padding="max_length",
        truncation=True,
        max_length=seq_len,
        return_tensors="np",
    )
    return {
        "input_ids": enc["input_ids"].astype(np.int32),
        "attention_mask": enc["attention_mask"].astype(np.int32),
        "y": labels[idx],
    }


def embed_source(
    pretrained: Pretrained, source: dict[str, np.ndarray], batch: int = 256
) -> np.ndarray:
    """Mean-over-tokens output of the body's frozen input layer: ``[N, D]`` source features."""
    module_params = pretrained.params

    @jax.jit
    def fn(params, ids, mask):
        tokens = pretrained.module(params).embeddings(ids)
        m = mask[..., None].astype(tokens.dtype)
        return (tokens * m).sum(1) / jnp.maximum(m.sum(1), 1.0)

    ids, mask = source["input_ids"], source["attention_mask"]
    n = len(ids)
    pad = (-n) % batch
    ids = np.concatenate([ids, np.zeros((pad, ids.shape[1]), ids.dtype)])
    mask = np.concatenate([mask, np.ones((pad, mask.shape[1]), mask.dtype)])
    out = [
        np.asarray(fn(module_params, ids[i : i + batch], mask[i : i + batch]))
        for i in range(0, len(ids), batch)
    ]
    return np.concatenate(out)[:n]
