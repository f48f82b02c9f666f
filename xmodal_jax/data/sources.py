"""Source-modality proxy data for alignment objectives (ORCA stage 1, MoNA, PaRe).

The text proxy ships offline: the VADER sentiment lexicon (≈7.5k English words and emoticons, each
with the mean of 10 human valence ratings in [-4, 4]), labelled by valence bins. Examples are
tokenised with the body's own tokenizer; ``models.source`` embeds them with its frozen input
layer, exactly like ORCA's ``text_xs.npy`` (token embeddings with positions) — but regenerated
for any body. Everything here returns raw arrays and runs no network.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Protocol

import numpy as np

from xmodal_jax.data import formats


class Body(Protocol):
    """What the source loaders read of a pretrained body (``models.pretrained.Pretrained``).

    A protocol rather than the class: ``data/`` imports nothing from ``models/``, so the loaders
    stay raw-array readers and the code that runs the network lives with the model.
    """

    path: str
    model_type: str
    modality: str
    config: Any

    @property
    def tokenizer(self) -> Any: ...


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
    pretrained: Body,
    *,
    num_classes: int = 4,
    max_examples: int = 2048,
    seq_len: int = 8,
    seed: int = 0,
    pack: bool = False,
) -> dict[str, np.ndarray]:
    """Labelled source examples for a text body: ``{"input_ids", "attention_mask", "y"}``.

    Valence is split into ``num_classes`` equal-frequency bins; ``max_examples`` words are sampled
    class-balanced. Token ids are padded/truncated to ``seq_len`` (static shapes). ``pack`` fills
    each example with words of one class instead (``[CLS] w1 w2 … [SEP]``, no padding), so every
    one of the ``seq_len`` tokens is text: what PaRe inserts token by token.
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
    if pack:
        return _packed(pretrained, [words[i] for i in idx], labels[idx], seq_len, rng)
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


def _packed(
    pretrained: Body, words: list[str], labels: np.ndarray, seq_len: int, rng
) -> dict[str, np.ndarray]:
    tok = pretrained.tokenizer
    ids = tok(words, add_special_tokens=False)["input_ids"]
    cls_id, sep_id = tok.cls_token_id, tok.sep_token_id
    if cls_id is None or sep_id is None:
        raise ValueError(f"{pretrained.path}: packed text source needs CLS/SEP tokens")
    rows, ys = [], []
    for c in np.unique(labels):
        pool = [ids[i] for i in np.flatnonzero(labels == c)]
        for _ in range(len(pool)):  # as many packed examples per class as words
            row = [cls_id]
            while len(row) < seq_len - 1:
                row.extend(pool[rng.integers(len(pool))])
            rows.append(row[: seq_len - 1] + [sep_id])
            ys.append(c)
    return {
        "input_ids": np.asarray(rows, np.int32),
        "attention_mask": np.ones((len(rows), seq_len), np.int32),
        "y": np.asarray(ys, np.int32),
    }


def load(source_cfg: Any, pretrained: Body, seed: int = 0) -> dict[str, np.ndarray] | None:
    """The raw source examples of ``config.source`` (token ids, pixels or proxy tokens, labels),
    or None for ``kind="none"``; ``models.source.embed_source`` turns them into features."""
    kind = source_cfg.kind
    if kind == "none":
        return None
    if kind == "text":
        source = text_source(
            pretrained,
            num_classes=int(source_cfg.num_classes),
            max_examples=int(source_cfg.max_examples),
            seq_len=int(source_cfg.seq_len),
            seed=seed,
            pack=bool(source_cfg.get("pack", False)),
        )
    elif kind == "text_proxy":
        hidden = pretrained.config.hidden_size
        source = read_text_proxy(source_cfg.data_dir, hidden_size=hidden)
    elif kind == "cifar10":
        if pretrained.modality != "vision":
            raise ValueError("config.source.kind='cifar10' needs a vision body (ViT/Swin)")
        source = read_cifar10(source_cfg.data_dir, n=int(source_cfg.max_examples), seed=seed)
        source = {**source, "pixel_values": source["pixel_values"].astype(np.float32) / 255.0}
    elif kind == "voc":
        if pretrained.modality != "vision":
            raise ValueError("config.source.kind='voc' needs a vision body (ViT/Swin)")
        size = pretrained.config.image_size
        size = size if isinstance(size, int) else int(size[0])
        source = read_voc_masks(
            source_cfg.data_dir, n=int(source_cfg.max_examples), size=size, seed=seed
        )
    else:
        raise ValueError(f"config.source.kind={kind!r} unknown")
    if "input_ids" in source:
        formats.check_token_ids(
            source["input_ids"],
            int(pretrained.config.vocab_size),
            f"config.source.kind={kind!r} with the body {pretrained.path}",
        )
    return source


# --- the text proxy in ORCA's file format ---------------------------------------------------


def read_text_proxy(directory: str, hidden_size: int, xs: str = "text_xs.npy") -> dict:
    """Reads ``text_xs*.npy`` / ``text_ys.npy``, checking them against the body's hidden size."""
    xs_path = formats.require_file(directory, xs)
    ys_path = formats.require_file(directory, xs.replace("xs", "ys"))
    try:
        x = np.load(xs_path, mmap_mode="r")
        y = np.load(ys_path)
    except ValueError as e:
        raise formats.DataFormatError(f"{directory}: unreadable proxy arrays: {e}") from e
    formats.check_shape(x, (None, None, hidden_size), xs_path, "token embeddings")
    formats.check_dtype(x, "f", xs_path, "token embeddings")
    formats.check_shape(y, (len(x),), ys_path, "labels")
    labels = formats.check_labels(y, int(y.max()) + 1 if len(y) else 1, ys_path, "labels")
    return {"tokens": x, "y": labels}


# --- image proxies from original archives ---------------------------------------------------


def read_cifar10(root: str, *, n: int = 5000, seed: int = 0) -> dict[str, np.ndarray]:
    """A random ``n``-image subset of CIFAR-10's training set (uint8 N×3×32×32 + labels).

    Reads the original python archive: ``root/cifar-10-batches-py/data_batch_{1..5}`` or
    ``root/cifar-10-python.tar.gz`` (read in place). ORCA's 2D source modality.
    """
    import os
    import pickle
    import tarfile

    def parse(blob: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
        try:
            d = pickle.loads(blob, encoding="bytes")
        except Exception as e:
            raise formats.DataFormatError(f"{name}: not a readable CIFAR pickle: {e}") from e
        data = np.asarray(formats.require_key(d, b"data", name))
        labels = np.asarray(formats.require_key(d, b"labels", name))
        formats.check_shape(data, (None, 3072), name, "data")
        formats.check_shape(labels, (len(data),), name, "labels")
        return data.reshape(-1, 3, 32, 32).astype(np.uint8), formats.check_labels(
            labels, 10, name, "labels"
        )

    names = [f"data_batch_{i}" for i in range(1, 6)]
    folder = os.path.join(root, "cifar-10-batches-py")
    archive = os.path.join(root, "cifar-10-python.tar.gz")
    parts = []
    if os.path.isdir(folder):
        for name in names:
            path = formats.require_file(folder, name)
            with open(path, "rb") as f:
                parts.append(parse(f.read(), path))
    elif os.path.exists(archive):
        with tarfile.open(archive) as tar:
            for name in names:
                member = f"cifar-10-batches-py/{name}"
                try:
                    blob = tar.extractfile(member).read()
                except KeyError as e:
                    raise formats.DataFormatError(f"{archive}: no member {member!r}") from e
                parts.append(parse(blob, f"{archive}:{member}"))
    else:
        raise formats.DataFormatError(
            f"{root}: neither cifar-10-batches-py/ nor cifar-10-python.tar.gz found"
        )
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    idx = np.random.default_rng(seed).permutation(len(x))[: min(n, len(x))]
    return {"pixel_values": x[idx], "y": y[idx]}


def read_voc_masks(
    root: str, *, n: int = 1000, size: int = 224, split: str = "train", seed: int = 0
) -> dict[str, np.ndarray]:
    """PASCAL VOC images with binary foreground masks (PaRe's dense source modality).

    Reads ``root/VOCdevkit/VOC2012/{ImageSets/Segmentation/<split>.txt, JPEGImages/*.jpg,
    SegmentationClass/*.png}``; masks are 1 where the class index is neither background (0) nor
    the void border (255). Images → float32 N×3×size×size in [0, 1]; masks → N×1×size×size.
    """
    from PIL import Image

    base = formats.require_file(root, "VOCdevkit", "VOC2012")
    ids_file = formats.require_file(base, "ImageSets", "Segmentation", f"{split}.txt")
    ids = [line.strip() for line in open(ids_file) if line.strip()]
    if not ids:
        raise formats.DataFormatError(f"{ids_file}: empty id list")
    pick = np.random.default_rng(seed).permutation(len(ids))[: min(n, len(ids))]
    images, masks = [], []
    for i in pick:
        img_path = formats.require_file(base, "JPEGImages", f"{ids[i]}.jpg")
        seg_path = formats.require_file(base, "SegmentationClass", f"{ids[i]}.png")
        try:
            img = Image.open(img_path).convert("RGB").resize((size, size), Image.BILINEAR)
            seg = np.asarray(Image.open(seg_path).resize((size, size), Image.NEAREST))
        except OSError as e:
            raise formats.DataFormatError(f"{img_path} / {seg_path}: unreadable image: {e}") from e
        if seg.ndim != 2:
            raise formats.DataFormatError(f"{seg_path}: expected a palette (class-index) PNG")
        images.append(np.asarray(img, np.float32).transpose(2, 0, 1) / 255.0)
        masks.append(((seg > 0) & (seg != 255)).astype(np.float32)[None])
    return {"pixel_values": np.stack(images), "mask": np.stack(masks)}
