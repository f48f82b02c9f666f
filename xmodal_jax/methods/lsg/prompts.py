"""LSG stage 0: class names → the 80 CLIP prompt templates → label embeddings from a local
HF text encoder (mean of the class-name tokens, L2-normalised), cached on disk.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xmodal_jax.models.pretrained import Pretrained, default_path, load_pretrained

Array = jax.Array


CACHE_VERSION = 1


# The 80 prompt templates of CLIP's ImageNet zero-shot notebook, in the reference's order.
TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)


# --- stage 0: label embeddings --------------------------------------------------------------------


def clean_class_name(name: str) -> str:
    """``"001.Black_footed_Albatross"`` → ``"Black footed Albatross"`` (prefix, underscores)."""
    name = re.sub(r"^\s*\d+\.", "", str(name))
    return " ".join(name.replace("_", " ").split())


def prompt(template: str, name: str) -> tuple[str, tuple[int, int]]:
    """The prompt text and the character span ``[start, end)`` of ``name`` inside it.

    Templates starting with "a" or "the" get the prefix "This is " — a plain ``startswith`` as in
    the reference, so "art of a {}." is prefixed too.
    """
    if "{}" not in template:
        raise ValueError(f"prompt template {template!r} has no '{{}}' slot for the class name")
    if template.startswith("a") or template.startswith("the"):
        template = "This is " + template
    start = template.index("{}")
    return template.replace("{}", name, 1), (start, start + len(name))


def name_token_mask(offsets: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """``[B, L]`` mask of the tokens whose character offsets overlap each prompt's name span.

    ``offsets``: the fast tokenizer's ``offset_mapping`` ``[B, L, 2]`` (special and padding
    tokens have empty ``(0, 0)`` spans and never match); ``spans``: ``[B, 2]``. Offsets instead of
    the reference's token counting keep this exact for BPE tokenizers, whose tokens absorb the
    preceding space.
    """
    start, end = offsets[..., 0], offsets[..., 1]
    nonempty = end > start
    return nonempty & (start < spans[:, 1:2]) & (end > spans[:, 0:1])


def default_cache_dir() -> str:
    """``$XMODAL_CACHE/lsg`` or ``~/.cache/xmodal_jax/lsg``: label embeddings and GCNs."""
    root = os.environ.get("XMODAL_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "xmodal_jax"
    )
    return os.path.join(root, "lsg")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def _text_model(path: str) -> Pretrained:
    return load_pretrained(path)


def _resolve_text_model(path: str | None) -> str:
    # Normalised as load_pretrained does, so cache keys and "is it the body?" checks agree.
    return os.path.abspath(os.path.expanduser(path or default_path()))


def label_embeddings(
    class_names: Sequence[str],
    *,
    model_path: str | None = None,
    pretrained: Pretrained | None = None,
    templates: Sequence[str] = TEMPLATES,
    cache_dir: str | None = None,
    batch_size: int = 128,
) -> np.ndarray:
    """Prompted class-name embeddings ``[C, T, D]`` (unit norm) from a local HF text encoder.

    Each class name is cleaned (:func:`clean_class_name`), put into every template
    (:func:`prompt`), tokenised with character offsets, and run through the encoder
    (``model_path``, default the shipped MiniLM; or an already loaded ``pretrained``); the vector
    of a prompt is the mean of the last hidden state over exactly the class-name tokens, then
    L2-normalised. The result is cached as ``<cache_dir>/emb-<hash>.npz``, the hash covering the
    model folder, the cleaned names and the templates (``cache_dir=""`` disables the cache).
    """
    if not class_names:
        raise ValueError("label_embeddings: no class names given")
    names = [clean_class_name(n) for n in class_names]
    if any(not n for n in names):
        raise ValueError(
            f"label_embeddings: empty class name after cleaning in {list(class_names)}"
        )
    path = pretrained.path if pretrained is not None else _resolve_text_model(model_path)
    key = _digest({"v": CACHE_VERSION, "model": path, "names": names, "templates": list(templates)})
    cache = default_cache_dir() if cache_dir is None else cache_dir
    file = os.path.join(cache, f"emb-{key}.npz") if cache else ""
    if file and os.path.exists(file):
        with np.load(file) as f:
            return f["embeddings"]
    model = pretrained if pretrained is not None else _text_model(path)
    if model.modality != "text" or model.tokenizer is None:
        raise ValueError(f"label_embeddings: {path} is a {model.modality} model; need a text one")
    texts, spans = [], []
    for name in names:
        for t in templates:
            text, span = prompt(t, name)
            texts.append(text)
            spans.append(span)
    enc = model.tokenizer(texts, padding=True, return_offsets_mapping=True, return_tensors="np")
    mask = name_token_mask(np.asarray(enc["offset_mapping"]), np.asarray(spans))
    empty = np.flatnonzero(mask.sum(1) == 0)
    if len(empty):
        raise ValueError(f"label_embeddings: no token covers the class name in {texts[empty[0]]!r}")
    ids = np.asarray(enc["input_ids"], np.int32)
    att = np.asarray(enc["attention_mask"], np.int32)
    n = len(texts)
    pad = -n % batch_size
    ids, att, mask = (np.concatenate([a, np.repeat(a[:1], pad, 0)]) for a in (ids, att, mask))

    @jax.jit
    def embed(params, ids, att, mask):
        hidden = model.apply(params, input_ids=ids, attention_mask=att)
        m = mask.astype(hidden.dtype)[..., None]
        v = (hidden * m).sum(1) / m.sum(1)
        return v / jnp.linalg.norm(v, axis=-1, keepdims=True)

    out = [
        np.asarray(embed(model.params, *(a[i : i + batch_size] for a in (ids, att, mask))))
        for i in range(0, len(ids), batch_size)
    ]
    emb = np.concatenate(out)[:n].reshape(len(names), len(templates), -1).astype(np.float32)
    if file:
        os.makedirs(cache, exist_ok=True)
        tmp = f"{file}.{os.getpid()}.tmp.npz"
        np.savez(tmp, embeddings=emb, names=np.asarray(names), templates=np.asarray(templates))
        os.replace(tmp, file)  # atomic: concurrent runs never read a half-written file
    return emb
