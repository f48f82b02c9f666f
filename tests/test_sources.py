"""Source proxies: VADER text source, ORCA's text_xs/text_ys format, CIFAR-10 and VOC readers."""

from __future__ import annotations

import io
import os
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from xmodal_jax.data import formats, sources
from xmodal_jax.models import source as source_path


def test_vader_lexicon_and_balanced_text_source(minilm):
    words, valence = sources.vader_lexicon()
    assert len(words) > 7000 and valence.min() < -3 and valence.max() > 3
    src = sources.text_source(minilm, num_classes=4, max_examples=80, seq_len=6)
    assert src["input_ids"].shape == (80, 6) and src["attention_mask"].shape == (80, 6)
    assert np.bincount(src["y"]).tolist() == [20, 20, 20, 20]
    assert (src["input_ids"][:, 0] == 101).all()  # [CLS]


def test_text_proxy_roundtrip_and_shape_check(minilm, tmp_path):
    xs, ys = source_path.write_text_proxy(minilm, str(tmp_path), max_examples=16, seq_len=5)
    got = sources.read_text_proxy(str(tmp_path), hidden_size=384)
    assert got["tokens"].shape == (16, 5, 384) and got["y"].shape == (16,)
    with pytest.raises(formats.DataFormatError, match=r"text_xs\.npy: field 'token embeddings'"):
        sources.read_text_proxy(str(tmp_path), hidden_size=768)
    np.save(ys, np.zeros(3, np.int64))
    with pytest.raises(formats.DataFormatError, match=r"text_ys\.npy: field 'labels' has shape"):
        sources.read_text_proxy(str(tmp_path), hidden_size=384)


def _cifar10_batches(n_per=4):
    rng = np.random.default_rng(0)
    return {
        f"data_batch_{i}": {
            b"data": rng.integers(0, 256, (n_per, 3072), dtype=np.uint8),
            b"labels": list(rng.integers(0, 10, n_per)),
        }
        for i in range(1, 6)
    }


def test_cifar10_from_folder_and_archive(tmp_path):
    batches = _cifar10_batches()
    folder = tmp_path / "a" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, d in batches.items():
        (folder / name).write_bytes(pickle.dumps(d))
    from_dir = sources.read_cifar10(str(tmp_path / "a"), n=100)
    assert from_dir["pixel_values"].shape == (20, 3, 32, 32)
    (tmp_path / "b").mkdir()
    with tarfile.open(tmp_path / "b" / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name, d in batches.items():
            blob = pickle.dumps(d)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    from_tar = sources.read_cifar10(str(tmp_path / "b"), n=100)
    np.testing.assert_array_equal(from_dir["pixel_values"], from_tar["pixel_values"])
    # The pixel layout is CIFAR's: 1024 red, then green, then blue values, row-major.
    first = batches["data_batch_1"][b"data"][0]
    all_x = np.concatenate([d[b"data"] for d in batches.values()]).reshape(-1, 3, 32, 32)
    assert any(np.array_equal(img, first.reshape(3, 32, 32)) for img in from_dir["pixel_values"])
    assert all_x.shape[0] == 20
    bad = dict(batches["data_batch_3"])
    del bad[b"labels"]
    (folder / "data_batch_3").write_bytes(pickle.dumps(bad))
    with pytest.raises(formats.DataFormatError, match=r"data_batch_3: missing field b'labels'"):
        sources.read_cifar10(str(tmp_path / "a"))


def test_voc_masks(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True)
    (base / "ImageSets/Segmentation/train.txt").write_text("img1\nimg2\n")
    for name in ("img1", "img2"):
        Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(
            base / "JPEGImages" / f"{name}.jpg"
        )
        seg = np.zeros((20, 30), np.uint8)
        seg[5:10, 5:15] = 7
        seg[0, :] = 255  # void border is not foreground
        png = Image.fromarray(seg, mode="P")
        png.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])  # VOC-style palette
        png.save(base / "SegmentationClass" / f"{name}.png", optimize=False)
    out = sources.read_voc_masks(str(tmp_path), n=5, size=16)
    assert out["pixel_values"].shape == (2, 3, 16, 16) and out["mask"].shape == (2, 1, 16, 16)
    assert 0 < out["mask"].mean() < 0.3 and out["mask"][:, :, 0].sum() == 0
    os.remove(base / "SegmentationClass" / "img2.png")
    with pytest.raises(formats.DataFormatError, match=r"img2\.png: file not found"):
        sources.read_voc_masks(str(tmp_path), n=5, size=16)
