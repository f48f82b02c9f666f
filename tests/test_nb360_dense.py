"""Readers of PSICOV, Cosmic and FSD50K: tiny files in the original layouts, read back."""

from __future__ import annotations

import csv
import json
import os
import pickle

import numpy as np
import pytest
from scipy.io import wavfile

from xmodal_jax.data import cosmic, fsd50k, psicov
from xmodal_jax.data.formats import DataFormatError

# ---------------------------------------------------------------------------------------------
# PSICOV


def _features(n: int, tag: float, rng) -> dict:
    """A PDNET feature dict; ``potential`` is the constant ``tag`` so a protein is recognisable."""
    return {
        "seq": "A" * n,
        "ss": rng.uniform(0, 1, (3, n)),
        "pssm": rng.uniform(0, 1, (n, 22)),
        "sa": rng.uniform(0, 1, n),
        "entropy": rng.uniform(0, 3, n),
        "ccmpred": rng.uniform(-1, 1, (n, n)),
        "freecon": rng.uniform(0, 1, (n, n)),
        "potential": np.full((n, n), tag),
    }


def _distance_file(path, n: int, cb: np.ndarray) -> None:
    obj = np.empty(3, dtype=object)
    obj[0], obj[1], obj[2] = n, "A" * n, cb
    np.save(path, obj, allow_pickle=True)


def _protein(root, dataset: str, pdb: str, feats: dict, cb: np.ndarray) -> None:
    base = os.path.join(root, "protein", dataset)
    with open(os.path.join(base, "features", f"{pdb}.pkl"), "wb") as f:
        pickle.dump(feats, f)
    _distance_file(os.path.join(base, "distance", f"{pdb}-cb.npy"), len(feats["seq"]), cb)


def _random_map(n: int, rng) -> np.ndarray:
    d = rng.uniform(3, 30, (n, n))
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0.0)
    return d


# A hand-made 6-residue map: distance 4|i-j| with a few marked entries.
HAND = 4.0 * np.abs(np.subtract.outer(np.arange(6), np.arange(6)))
HAND[0, 5], HAND[5, 0], HAND[1, 2] = 20.0, 13.5, 0.5


def _hand_label() -> np.ndarray:
    """PDNET label of HAND, computed by hand: <1 → 1, diagonal from neighbours, > 16 → 16."""
    y = HAND.copy()
    y[1, 2] = 1.0  # 0.5 Å clamps to 1
    # Diagonal (0 → 1 first): ends copy their neighbour, inner entries average both neighbours.
    y[0, 0], y[5, 5] = 4.0, 4.0
    y[1, 1] = (4.0 + 1.0) / 2  # left neighbour 4, right neighbour the clamped 0.5 → 1
    for q in (2, 3, 4):
        y[q, q] = 4.0
    return y


@pytest.fixture
def psicov_root(tmp_path):
    rng = np.random.default_rng(0)
    root = str(tmp_path)
    for d in psicov.DATASETS:
        for kind in ("features", "distance"):
            os.makedirs(os.path.join(root, "protein", d, kind))
    deep = [f"d{k:02d}A" for k in range(20)]
    for k, pdb in enumerate(deep):
        n = 6 if k == 0 else int(rng.integers(5, 9))
        cb = HAND if k == 0 else _random_map(n, rng)
        _protein(root, "deepcov", pdb, _features(n, k / 100, rng), cb)
    # d19A is longer than window + pad: its training example is cropped.
    n = 12
    cb = _random_map(n, rng)
    feats = _features(n, 0.19, rng)
    feats["ccmpred"] = cb / 100.0  # lets the test check that x and y are cropped alike
    _protein(root, "deepcov", "d19A", feats, cb)
    with open(os.path.join(root, "protein", "deepcov.lst"), "w") as f:
        f.writelines(f"{pdb} 6\n" for pdb in deep)
    _protein(root, "psicov", "hand", _features(6, 0.5, rng), HAND)
    _protein(root, "psicov", "p1A", _features(7, 0.6, rng), _random_map(7, rng))
    with open(os.path.join(root, "protein", "psicov.lst"), "w") as f:
        f.write("hand\n\np1A\n")
    return root


def _tag(x: np.ndarray) -> int:
    """The ``potential`` constant at the first residue: which protein this example is."""
    return int(round(x[56, 5, 5] * 100))


def test_psicov_splits_shapes_and_disjoint_val(psicov_root):
    s = psicov.read_psicov(psicov_root, window=16, pad=10, seed=0)
    assert (len(s["train"]["x"]), len(s["val"]["x"]), len(s["test"]["x"])) == (19, 1, 2)
    assert s["train"]["x"].shape == (19, 57, 16, 16) and s["train"]["y"].shape == (19, 1, 16, 16)
    assert s["val"]["x"].shape == (1, 57, 512, 512) and s["test"]["y"].shape == (2, 1, 512, 512)
    assert s["train"]["x"][0].dtype == np.float32 and s["train"]["y"][0].dtype == np.float32
    train_tags = {_tag(s["train"]["x"][i]) for i in range(19)}
    val_tag = _tag(s["val"]["x"][0])
    assert val_tag not in train_tags and train_tags | {val_tag} == set(range(20))
    again = psicov.read_psicov(psicov_root, window=16, pad=10, seed=0)
    assert _tag(again["val"]["x"][0]) == val_tag
    other = [
        _tag(psicov.read_psicov(psicov_root, window=16, seed=k)["val"]["x"][0]) for k in (1, 2)
    ]
    assert len({val_tag, *other}) > 1  # the seed chooses the held-out proteins
    np.testing.assert_array_equal(s["test"]["length"], [6, 7])
    assert s["test"]["length"].dtype == np.int32


def test_psicov_features_channels_and_pdnet_label(psicov_root):
    s = psicov.read_psicov(psicov_root, window=16, pad=10, seed=0)
    i = next(i for i in range(19) if _tag(s["train"]["x"][i]) == 0)
    with open(os.path.join(psicov_root, "protein/deepcov/features/d00A.pkl"), "rb") as f:
        feats = pickle.load(f)
    x, y = s["train"]["x"][i], s["train"]["y"][i][0]
    inner = x[:, 5:11, 5:11]
    r, c = 2, 4
    np.testing.assert_allclose(inner[0, r, c], feats["ss"][0, c], rtol=1e-6)  # row-broadcast
    np.testing.assert_allclose(inner[1, r, c], feats["ss"][0, r], rtol=1e-6)  # its transpose
    np.testing.assert_allclose(inner[6 + 2 * 3, r, c], feats["pssm"][c, 3], rtol=1e-6)
    np.testing.assert_allclose(inner[7 + 2 * 3, r, c], feats["pssm"][r, 3], rtol=1e-6)
    np.testing.assert_allclose(inner[50, r, c], feats["sa"][c], rtol=1e-6)
    np.testing.assert_allclose(inner[53, r, c], feats["entropy"][r], rtol=1e-6)
    np.testing.assert_allclose(inner[54], feats["ccmpred"], rtol=1e-6)
    np.testing.assert_allclose(inner[55], feats["freecon"], rtol=1e-6)
    assert np.all(x[:, :5] == 0) and np.all(x[:, 11:] == 0) and np.all(x[:, :, :5] == 0)
    want = np.full((16, 16), psicov.LABEL_CLIP, np.float32)  # padding 100 Å is clipped too
    want[5:11, 5:11] = np.minimum(_hand_label(), 16.0)
    np.testing.assert_allclose(y, want)
    assert y[5 + 0, 5 + 5] == 16.0 and y[5 + 5, 5 + 0] == 13.5  # orientation kept

    t = s["test"]
    j = next(j for j in range(2) if _tag(t["x"][j]) == 50)
    yt = t["y"][j][0]
    np.testing.assert_allclose(yt[5:11, 5:11], _hand_label())  # raw: 20 Å stays 20
    assert yt[0, 0] == psicov.PAD_DISTANCE and yt[300, 20] == psicov.PAD_DISTANCE
    assert t["length"][j] == 6 and np.all(t["x"][j][:, 11:, :] == 0)


def test_psicov_crop_keeps_x_and_y_aligned(psicov_root):
    s = psicov.read_psicov(psicov_root, window=16, pad=10, seed=3)
    idx = [i for i in range(len(s["train"]["x"])) if _tag(s["train"]["x"][i]) == 19]
    assert idx, "seed 3 keeps the cropped protein d19A in train"
    x, y = s["train"]["x"][idx[0]], s["train"]["y"][idx[0]][0]
    d = x[54] * 100.0  # ccmpred = distance / 100 on the residues inside the crop
    off = d > 1.5  # off-diagonal protein pixels (the diagonal is rewritten in y)
    assert off.sum() > 20
    np.testing.assert_allclose(y[off], np.minimum(d[off], 16.0), rtol=1e-5)
    np.testing.assert_array_equal(s["train"]["x"][idx[0]], x)  # the crop is fixed per example
    batch = s["train"]["y"][np.array(idx * 2)]
    np.testing.assert_array_equal(batch[0, 0], y)


def test_psicov_long_test_protein_is_truncated(psicov_root):
    rng = np.random.default_rng(1)
    n = 505
    _protein(psicov_root, "psicov", "long", _features(n, 0.7, rng), _random_map(n, rng))
    with open(os.path.join(psicov_root, "protein", "psicov.lst"), "a") as f:
        f.write("long\n")
    t = psicov.read_psicov(psicov_root, window=16)["test"]
    assert t["length"][2] == 502
    cb = np.load(
        os.path.join(psicov_root, "protein/psicov/distance/long-cb.npy"), allow_pickle=True
    )
    np.testing.assert_allclose(t["y"][2][0, 5 + 0, 5 + 501], cb[2][0, 501], rtol=1e-6)


def _expect(match: str, fn, *args, **kwargs):
    with pytest.raises(DataFormatError, match=match):
        fn(*args, **kwargs)


def test_psicov_malformed_files(psicov_root):
    base = os.path.join(psicov_root, "protein")
    read = lambda: psicov.read_psicov(psicov_root, window=16)  # noqa: E731

    feats = os.path.join(base, "deepcov/features/d01A.pkl")
    with open(feats, "rb") as f:
        good = pickle.load(f)
    bad = dict(good, pssm=good["pssm"][:, :21])
    with open(feats, "wb") as f:
        pickle.dump(bad, f)
    _expect(r"d01A\.pkl: field 'pssm' has shape \(\d, 21\), expected \d×22", _touch, read)
    del bad["pssm"]
    with open(feats, "wb") as f:
        pickle.dump(bad, f)
    _expect(r"d01A\.pkl: missing field 'pssm'", _touch, read)
    with open(feats, "wb") as f:
        f.write(pickle.dumps(good)[:50])
    _expect(r"d01A\.pkl: not a readable feature pickle", _touch, read)
    with open(feats, "wb") as f:
        pickle.dump(dict(good, sa=np.full(len(good["seq"]), 150.0)), f)
    _expect(r"d01A\.pkl: field 'sa' has values outside", _touch, read)
    with open(feats, "wb") as f:
        pickle.dump(good, f)

    dist = os.path.join(base, "deepcov/distance/d02A-cb.npy")
    obj = np.load(dist, allow_pickle=True)
    n = obj[0]
    _distance_file(dist, n + 1, obj[2])
    _expect(r"d02A-cb\.npy: field 'length' is", _touch, read)
    nan_map = obj[2].copy()
    nan_map[0, 2] = np.nan
    _distance_file(dist, n, nan_map)
    _expect(r"d02A-cb\.npy: field 'cb_map' has NaN", _touch, read)
    np.save(dist, np.zeros((n, n)))
    _expect(r"d02A-cb\.npy: expected an object array", _touch, read)
    _distance_file(dist, n, obj[2])

    psicov_dist = os.path.join(base, "psicov/distance/p1A-cb.npy")
    with open(psicov_dist, "wb") as f:
        f.write(b"\x93NUMPY garbage")
    _expect(r"p1A-cb\.npy: not a readable distance", read)
    os.remove(psicov_dist)
    _expect(r"protein 'p1A': distance file not found \(tried .*psicov/distance/p1A-cb\.npy", read)
    _distance_file(psicov_dist, 7, _random_map(7, np.random.default_rng(0)))

    with open(os.path.join(base, "deepcov.lst"), "a") as f:
        f.write("d03A 7\n")
    _expect(r"deepcov\.lst: protein id 'd03A' repeated", read)
    os.remove(os.path.join(base, "deepcov.lst"))
    _expect(r"deepcov\.lst: file not found", read)


def _touch(read) -> None:
    """Loads every example of every split (lazy errors surface on access)."""
    for split in read().values():
        for i in range(len(split["x"])):
            split["x"][i], split["y"][i]


# ---------------------------------------------------------------------------------------------
# Cosmic

TRAIN_DIR = "cosmic/npy_train/f435w/10182_pb/1"
PLAIN_DIR = "cosmic/npy_train/f435w/9490_a3/2"
TEST_DIR = "cosmic/npy_test/f435w/10760_2/3"


def _stack(tag: int, planes: int = 3, size: int = 256) -> np.ndarray:
    """Image = tag + position code; CR mask and ignore mask are fixed patterns."""
    img = tag * 1000.0 + np.arange(size * size, dtype=np.float32).reshape(size, size) / 1e5
    mask = np.zeros((size, size), np.float32)
    mask[64 + 3, 64 + 7] = 1.0
    ignore = np.zeros((size, size), np.float32)
    ignore[64:70, 64:66] = 1.0
    return np.stack([img, mask, ignore][:planes]).astype(np.float32)


@pytest.fixture
def cosmic_root(tmp_path):
    root = str(tmp_path)
    train, test = [], []
    for d in (TRAIN_DIR, PLAIN_DIR, TEST_DIR):
        os.makedirs(os.path.join(root, d))
    np.save(os.path.join(root, TRAIN_DIR, "sky.npy"), np.array([10.0, 20.0, 30.0, 40.0, 50.0]))
    for k in range(1, 6):
        np.save(os.path.join(root, TRAIN_DIR, f"{k}_img.npy"), _stack(k))
        train.append(f"./{TRAIN_DIR}/{k}_img.npy")  # what preprocess_cosmic.py writes
    for k in range(6, 9):
        np.save(os.path.join(root, PLAIN_DIR, f"{k}_img.npy"), _stack(k, planes=2))
        train.append(f"./{PLAIN_DIR}/{k}_img.npy")
    for k in range(9, 11):
        np.save(os.path.join(root, TEST_DIR, f"{k - 8}_img.npy"), _stack(k))
        # an absolute path of the cluster that made the listing
        test.append(f"/run/determined/workdir/shared_fs/data/{TEST_DIR}/{k - 8}_img.npy")
    np.save(os.path.join(root, "cosmic", "train_dirs.npy"), np.array(train))
    np.save(os.path.join(root, "cosmic", "test_dirs.npy"), np.array(test))
    return root


def _cosmic_tag(x: np.ndarray) -> int:
    return int(x[0, 0, 0] // 1000)


def test_cosmic_splits_crop_masks_and_sky(cosmic_root):
    s = cosmic.read_cosmic(cosmic_root, seed=0)
    assert (len(s["train"]["x"]), len(s["val"]["x"]), len(s["test"]["x"])) == (6, 2, 2)
    for split in s.values():
        for key in ("x", "y", "ignore"):
            assert split[key].shape[1:] == (1, 128, 128) and split[key][0].dtype == np.float32
    train_tags = [_cosmic_tag(s["train"]["x"][i]) for i in range(6)]
    val_tags = [_cosmic_tag(s["val"]["x"][i]) for i in range(2)]
    assert not set(train_tags) & set(val_tags) and set(train_tags) | set(val_tags) == set(
        range(1, 9)
    )
    assert [_cosmic_tag(s["test"]["x"][i]) for i in range(2)] == [9, 10]
    x = s["test"]["x"][0][0]
    np.testing.assert_allclose(x[2, 5] - 9000.0, ((64 + 2) * 256 + 64 + 5) / 1e5, atol=1e-3)
    y = s["test"]["y"][0][0]
    assert y[3, 7] == 1.0 and y.sum() == 1.0
    ign = s["test"]["ignore"][0][0]
    assert ign[:6, :2].all() and ign.sum() == 12
    for i, tag in enumerate(train_tags):
        if tag >= 6:  # 2-plane files: no ignore mask
            assert not s["train"]["ignore"][i].any()
        sky = 10.0 * tag if tag <= 5 else 0.0  # <k>_*.npy uses sky.npy[k - 1]
        assert s["train"]["sky"][i] == sky
    other = cosmic.read_cosmic(cosmic_root, seed=1)
    assert {_cosmic_tag(other["val"]["x"][i]) for i in range(2)} != set(val_tags)


def test_cosmic_sky_augment():
    x = np.ones((1, 4, 4), np.float32)
    out = cosmic.sky_augment(x, 10.0, np.random.default_rng(0))
    u = np.random.default_rng(0).uniform(-0.9, 3.0)
    np.testing.assert_allclose(out, 1.0 + 10.0 * u, rtol=1e-6)
    batch = cosmic.sky_augment(
        np.zeros((3, 1, 2, 2)), np.array([0.0, 1.0, 2.0]), np.random.default_rng(1)
    )
    us = np.random.default_rng(1).uniform(-0.9, 3.0, size=3)
    np.testing.assert_allclose(batch[:, 0, 0, 0], [0.0, us[1], 2 * us[2]], rtol=1e-6)


def test_cosmic_malformed_files(cosmic_root):
    listing = os.path.join(cosmic_root, "cosmic", "test_dirs.npy")
    good = np.load(listing)
    np.save(listing, np.array([good[0], "./cosmic/npy_test/f435w/nowhere/9_img.npy"]))
    _expect(
        r"test_dirs\.npy: entry 1 '.*nowhere/9_img\.npy' not found under",
        cosmic.read_cosmic,
        cosmic_root,
    )
    np.save(listing, np.zeros((2, 2)))
    _expect(
        r"test_dirs\.npy: field 'paths' must be a 1-D string array", cosmic.read_cosmic, cosmic_root
    )
    np.save(listing, good)
    np.save(os.path.join(cosmic_root, TEST_DIR, "1_img.npy"), np.zeros((3, 100, 100), np.float32))
    s = cosmic.read_cosmic(cosmic_root)
    _expect(r"1_img\.npy: field 'stack' has shape \(3, 100, 100\)", lambda: s["test"]["x"][0])
    np.save(os.path.join(cosmic_root, TRAIN_DIR, "sky.npy"), np.array([1.0]))
    _expect(r"sky\.npy: field 'sky' has 1 entries", cosmic.read_cosmic, cosmic_root)
    os.remove(os.path.join(cosmic_root, "cosmic", "train_dirs.npy"))
    _expect(r"train_dirs\.npy: file not found", cosmic.read_cosmic, cosmic_root)


# ---------------------------------------------------------------------------------------------
# FSD50K

LABELS = [f"Label_{k:03d}" for k in range(200)]
CHUNK_DIR = "FSD50K.chunks/dev_22050"
EVAL_DIR = "FSD50K.chunks/eval_22050"
FOREIGN = "/media/someone/nvme/datasets/fsd50k"  # prefix of the machine that made the csv


def _tone(freq: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(fsd50k.SAMPLE_RATE * seconds)) / fsd50k.SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16)


def _write_csv(path, rows) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["files", "labels", "ext"])
        w.writerows(rows)


@pytest.fixture
def fsd_root(tmp_path):
    root = str(tmp_path)
    for d in ("chunks", CHUNK_DIR, EVAL_DIR, "noise_22050"):
        os.makedirs(os.path.join(root, d))
    with open(os.path.join(root, "chunks", "lbl_map.json"), "w") as f:
        json.dump({name: k for k, name in enumerate(LABELS)}, f)

    def chunk(dirname, clip, k, freq, seconds=1.0):
        wavfile.write(os.path.join(root, dirname, f"{clip}_{k}.wav"), 22050, _tone(freq, seconds))
        return f"{FOREIGN}/{dirname}/{clip}_{k}.wav"

    tr = [
        (chunk(CHUNK_DIR, 100, 0, 300), "Label_003,Label_007", 100),
        (chunk(CHUNK_DIR, 100, 1, 310), "Label_003,Label_007", 100),
        (chunk(CHUNK_DIR, 20, 0, 500), "Label_199", 20),
        (chunk(CHUNK_DIR, 20, 1, 510), "Label_199", 20),
        (chunk(CHUNK_DIR, 20, 2, 520, 0.4), "Label_199", 20),  # short last chunk: tiled
        (chunk(CHUNK_DIR, 7, 0, 700), "Label_000", 7),
    ]
    val = [
        (chunk(CHUNK_DIR, 55, 0, 900), "Label_010", 55),
        (chunk(CHUNK_DIR, 56, 0, 950), "Label_011,Label_012", 56),
    ]
    ev = [
        (chunk(EVAL_DIR, 9, 0, 1000), "Label_050", 9),
        (chunk(EVAL_DIR, 3, 0, 1100), "Label_051,Label_052", 3),
        (chunk(EVAL_DIR, 9, 1, 1200), "Label_050", 9),
    ]
    for name, rows in (("tr.csv", tr), ("val.csv", val), ("eval.csv", ev)):
        _write_csv(os.path.join(root, "chunks", name), rows)
    wavfile.write(os.path.join(root, "noise_22050", "b.wav"), 22050, _tone(60, 2.0))
    wavfile.write(os.path.join(root, "noise_22050", "a.wav"), 22050, _tone(40, 0.5))
    return root


def test_fsd50k_splits_multihot_and_clip_groups(fsd_root):
    s = fsd50k.read_fsd50k(fsd_root, seed=0)
    tr, val, te = s["train"], s["val"], s["test"]
    assert tr["x"].shape == (3, 1, 96, 102) and tr["y"].shape == (3, 200)  # one chunk per clip
    assert "clip" not in tr and tr["y"].dtype == np.float32
    # Clips sorted numerically (7, 20, 100), as np.unique on the int ids.
    np.testing.assert_array_equal(np.flatnonzero(tr["y"][0]), [0])
    np.testing.assert_array_equal(np.flatnonzero(tr["y"][1]), [199])
    np.testing.assert_array_equal(np.flatnonzero(tr["y"][2]), [3, 7])
    assert tr["y"].sum() == 4
    full = fsd50k.read_fsd50k(fsd_root, train_chunks="all")["train"]
    assert full["x"].shape == (6, 1, 96, 102)
    seen = {
        tuple(fsd50k.read_fsd50k(fsd_root, seed=k)["train"]["x"][1][0, :, 50]) for k in range(6)
    }
    assert len(seen) > 1  # the seed draws which chunk of clip 20 is used

    np.testing.assert_array_equal(val["clip"], [0, 1])
    np.testing.assert_array_equal(np.flatnonzero(val["y"][1]), [11, 12])
    # eval rows: clip 9, clip 3, clip 9 → grouped by clip, clip 3 first, csv order inside.
    np.testing.assert_array_equal(te["clip"], [0, 1, 1])
    assert te["clip"].dtype == np.int32
    np.testing.assert_array_equal(np.flatnonzero(te["y"][0]), [51, 52])
    np.testing.assert_array_equal(te["y"][1], te["y"][2])
    x = te["x"][np.array([0, 1, 2])]
    assert x.shape == (3, 1, 96, 102) and x.dtype == np.float32
    assert np.all(x[:, 0, :, -1] == 0.0)  # the appended zero column
    audio = fsd50k.read_wav(os.path.join(fsd_root, EVAL_DIR, "9_1.wav"))
    np.testing.assert_allclose(x[2], fsd50k.chunk_features(audio), atol=1e-5)
    np.testing.assert_allclose(x[2, 0, :, :101].mean(), 0.0, atol=1e-3)  # per-chunk centring
    short = fsd50k.read_fsd50k(fsd_root, train_chunks="all")["train"]["x"][4]
    assert short.shape == (1, 96, 102) and np.isfinite(short).all()


def test_fsd50k_log_mel_matches_torch_stft_pipeline():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(22050) + np.sin(np.arange(22050) * 0.05)).astype(np.float32)
    spec = torch.stft(
        torch.from_numpy(audio),
        n_fft=1920,
        hop_length=220,
        win_length=661,
        window=torch.hann_window(661),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    power = spec.abs().pow(2.0).numpy()  # torchaudio Spectrogram(power=2)
    mel = fsd50k.mel_filterbank().T @ power
    db = 10 * np.log10(np.maximum(1e-10, mel))
    db = np.maximum(db, db.max() - 80.0) + 75.0
    np.testing.assert_allclose(fsd50k.log_mel(audio), db - db.mean(), atol=1e-3)
    fb = fsd50k.mel_filterbank()  # htk triangles: each row peaks at 1 at its centre bin
    assert fb.shape == (961, 96) and fb.max() <= 1.0 and np.all(fb.sum(0) > 0)


def test_fsd50k_npy_chunks_and_background(fsd_root):
    spec = np.random.default_rng(0).standard_normal((96, 99)).astype(np.float32)
    np.save(os.path.join(fsd_root, EVAL_DIR, "3_0.npy"), spec)
    rows = [(f"{FOREIGN}/{EVAL_DIR}/3_0.npy", "Label_051", 3)]
    _write_csv(os.path.join(fsd_root, "chunks", "eval.csv"), rows)
    x = fsd50k.read_fsd50k(fsd_root)["test"]["x"][0][0]
    np.testing.assert_array_equal(x[:, 1:100], spec)  # PadToSize(101): one column each side
    assert np.all(x[:, 0] == spec.min()) and np.all(x[:, -1] == 0.0)
    bg = fsd50k.read_fsd50k_background(fsd_root)
    assert bg.shape == (2, 1, 96, 102)
    wav = os.path.join(fsd_root, "noise_22050", "a.wav")  # sorted: a.wav first
    np.testing.assert_allclose(bg[0], fsd50k.chunk_features(fsd50k.read_wav(wav)), atol=1e-6)


def test_mix_background_formula():
    x = np.ones((1, 2, 3), np.float32)
    noise = np.stack([np.zeros_like(x), np.full_like(x, 4.0)])
    out = fsd50k.mix_background(x, noise, np.random.default_rng(5), p=1.0)
    ref = np.random.default_rng(5)
    ref.random()  # the probability draw
    k, alpha = ref.integers(2), ref.uniform(0.0, 0.5)
    np.testing.assert_allclose(out, (1 - alpha) * x + alpha * noise[k], rtol=1e-6)
    assert out.dtype == np.float32 and not np.array_equal(out, x)
    assert fsd50k.mix_background(x, noise, np.random.default_rng(5), p=0.0) is x
    mixed = [
        not np.array_equal(fsd50k.mix_background(x, noise, np.random.default_rng(s)), x)
        for s in range(400)
    ]
    assert 0.68 < np.mean(mixed) < 0.82  # p = 0.75


def test_fsd50k_malformed_files(fsd_root):
    chunks = os.path.join(fsd_root, "chunks")
    read = lambda: fsd50k.read_fsd50k(fsd_root)  # noqa: E731
    with open(os.path.join(chunks, "val.csv")) as f:
        good_val = f.read()
    with open(os.path.join(chunks, "val.csv"), "w") as f:
        f.write(good_val.replace(",ext", ",clip"))
    _expect(r"val\.csv: missing column 'ext'", read)
    with open(os.path.join(chunks, "val.csv"), "w") as f:
        f.write(good_val.replace("Label_010", "Not_a_label"))
    _expect(r"val\.csv: line 2 field 'labels' has unknown label 'Not_a_label'", read)
    with open(os.path.join(chunks, "val.csv"), "w") as f:
        f.write(good_val.replace(",56", ",55"))
    _expect(r"val\.csv: field 'labels' differs between chunks of clip '55'", read)
    with open(os.path.join(chunks, "val.csv"), "w") as f:
        f.write(good_val)

    os.remove(os.path.join(fsd_root, CHUNK_DIR, "55_0.wav"))
    s = read()
    _expect(r"val\.csv: line 2 field 'files': .*55_0\.wav not found", lambda: s["val"]["x"][0])
    wavfile.write(os.path.join(fsd_root, CHUNK_DIR, "55_0.wav"), 16000, _tone(100))
    _expect(r"55_0\.wav: field 'sample_rate' is 16000", lambda: s["val"]["x"][0])
    wavfile.write(os.path.join(fsd_root, CHUNK_DIR, "55_0.wav"), 22050, _tone(100))
    with open(os.path.join(fsd_root, CHUNK_DIR, "55_0.wav"), "rb+") as f:
        f.truncate(20000)
    _expect(r"55_0\.wav: field 'data' is truncated", lambda: s["val"]["x"][0])

    with open(os.path.join(chunks, "eval.csv")) as f:
        good_eval = f.read()
    with open(os.path.join(chunks, "eval.csv"), "w") as f:
        f.write(good_eval.replace("eval_22050", "missing_dir"))
    _expect(r"eval\.csv: line 3 '.*missing_dir' not found under", read)

    lbl = os.path.join(chunks, "lbl_map.json")
    with open(lbl, "w") as f:
        json.dump({name: k + 1 for k, name in enumerate(LABELS)}, f)
    _expect(r"lbl_map\.json: field 'Label_199' has index 200", read)
    os.remove(lbl)
    _expect(r"lbl_map\.json: file not found", read)
