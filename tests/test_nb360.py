"""NAS-Bench-360 readers: tiny files written in each original format, read back and checked.

Each malformed-file test asserts the error names the file and the field.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile

import h5py
import numpy as np
import pytest
import scipy.io

from xmodal_jax.data import formats, nb360, pipeline
from xmodal_jax.data.formats import DataFormatError, LazyArray

SPLITS = ("train", "val", "test")


def _truncate(path, keep: float = 0.5) -> None:
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))


def _check_splits(out, x_shape, x_dtype, y_dtype):
    assert set(out) == set(SPLITS)
    for split in SPLITS:
        x, y = out[split]["x"], out[split]["y"]
        assert x.shape[1:] == x_shape, (split, x.shape)
        assert np.asarray(x[:2]).dtype == x_dtype
        assert y.dtype == y_dtype and len(y) == len(x)


# --- CIFAR-100 -----------------------------------------------------------------------------


def _cifar_batch(n: int, start: int, rng) -> dict:
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    # The first two bytes spell the example's id, so splits can be traced back to rows.
    ids = np.arange(start, start + n)
    data[:, 0], data[:, 1] = ids // 256, ids % 256
    labels = [int(i % 100) for i in range(n)]
    return {
        b"filenames": [b"x.png"] * n,
        b"batch_label": b"training batch 1 of 1",
        b"fine_labels": labels,
        b"coarse_labels": [lab // 5 for lab in labels],
        b"data": data,
    }


def _write_cifar100(root, as_tar: bool, train=None, test=None, rng=None):
    rng = rng or np.random.default_rng(0)
    train = train if train is not None else _cifar_batch(300, 0, rng)
    test = test if test is not None else _cifar_batch(100, 1000, rng)
    blobs = {"train": pickle.dumps(train, protocol=2), "test": pickle.dumps(test, protocol=2)}
    if as_tar:
        path = os.path.join(root, "cifar-100-python.tar.gz")
        with tarfile.open(path, "w:gz") as tar:
            for name, blob in blobs.items():
                info = tarfile.TarInfo(f"cifar-100-python/{name}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
        return path
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder)
    for name, blob in blobs.items():
        with open(os.path.join(folder, name), "wb") as f:
            f.write(blob)
    return folder


@pytest.mark.parametrize("as_tar", [False, True])
def test_cifar100_reads_pickles_and_archive(tmp_path, as_tar):
    rng = np.random.default_rng(0)
    train = _cifar_batch(300, 0, rng)
    # A known pixel: channel 2 (blue), row 5, column 7 of training image 3.
    train[b"data"][3, 2 * 1024 + 5 * 32 + 7] = 201
    _write_cifar100(tmp_path, as_tar, train=train, rng=rng)
    out = nb360.read_cifar100(str(tmp_path), seed=1)
    _check_splits(out, (3, 32, 32), np.uint8, np.int32)
    assert [len(out[s]["y"]) for s in SPLITS] == [200, 100, 100]  # val = |test|
    ids = {s: out[s]["x"][:, 0, 0, 0].astype(int) * 256 + out[s]["x"][:, 0, 0, 1] for s in SPLITS}
    assert not set(ids["train"]) & set(ids["val"])
    assert sorted([*ids["train"], *ids["val"]]) == list(range(300))
    assert np.all(ids["test"] == np.arange(1000, 1100))
    # Stratified: 3 images per class in train → exactly 1 per class held out.
    assert np.all(np.bincount(out["val"]["y"], minlength=100) == 1)
    for s in ("train", "val"):
        j = np.flatnonzero(ids[s] == 3)
        if j.size:
            assert out[s]["x"][j[0], 2, 5, 7] == 201
            assert out[s]["y"][j[0]] == 3
    # Seeded: the same seed gives the same split, another seed another one.
    again = nb360.read_cifar100(str(tmp_path), seed=1)
    assert np.array_equal(again["val"]["x"], out["val"]["x"])
    other = nb360.read_cifar100(str(tmp_path), seed=2)
    assert not np.array_equal(other["val"]["x"], out["val"]["x"])


def test_cifar100_truncated_archive(tmp_path):
    path = _write_cifar100(tmp_path, as_tar=True)
    _truncate(path)
    with pytest.raises(DataFormatError, match="cifar-100-python.tar.gz"):
        nb360.read_cifar100(str(tmp_path))


def test_cifar100_missing_key_and_bad_label(tmp_path):
    rng = np.random.default_rng(0)
    train = _cifar_batch(300, 0, rng)
    del train[b"fine_labels"]
    os.makedirs(tmp_path / "a")
    _write_cifar100(tmp_path / "a", False, train=train)
    with pytest.raises(
        DataFormatError, match=r"cifar-100-python/train: missing field 'fine_labels'"
    ):
        nb360.read_cifar100(str(tmp_path / "a"))
    test = _cifar_batch(100, 1000, rng)
    test[b"fine_labels"][7] = 100
    os.makedirs(tmp_path / "b")
    _write_cifar100(tmp_path / "b", True, test=test)
    with pytest.raises(
        DataFormatError, match=r"test: field 'fine_labels' has label 100 at index 7"
    ):
        nb360.read_cifar100(str(tmp_path / "b"))


# --- Spherical -----------------------------------------------------------------------------


def _write_spherical(root, n_train=300, n_test=100, image_shape=(3, 60, 60)):
    rng = np.random.default_rng(0)

    def part(n, start):
        images = rng.integers(0, 256, (n, *image_shape), dtype=np.uint8)
        ids = np.arange(start, start + n)  # traceable ids in two pixels
        images[:, 0, 0, 0], images[:, 0, 0, 1] = ids // 256, ids % 256
        return {"images": images, "labels": np.arange(n) % 100}

    dataset = {"train": part(n_train, 0), "test": part(n_test, 0)}
    path = os.path.join(root, "s2_cifar100.gz")
    with gzip.open(path, "wb") as f:
        pickle.dump(dataset, f)
    return path, dataset


def test_spherical_gzip_pickle(tmp_path):
    _, dataset = _write_spherical(tmp_path)
    out = nb360.read_spherical(str(tmp_path))
    _check_splits(out, (3, 60, 60), np.float32, np.int32)
    assert [len(out[s]["y"]) for s in SPLITS] == [200, 100, 100]
    np.testing.assert_array_equal(out["test"]["x"], dataset["test"]["images"] / np.float32(255))
    np.testing.assert_array_equal(out["test"]["y"], dataset["test"]["labels"])
    ids = [np.rint(out[s]["x"][:, 0, 0, :2] * 255).astype(int) @ [256, 1] for s in ("train", "val")]
    assert not set(ids[0]) & set(ids[1])
    assert sorted(np.concatenate(ids)) == list(range(300))
    assert np.all(np.bincount(out["val"]["y"], minlength=100) == 1)
    assert out["train"]["x"].max() <= 1.0


def test_spherical_truncated_and_wrong_shape(tmp_path):
    path, _ = _write_spherical(tmp_path)
    _truncate(path)
    with pytest.raises(DataFormatError, match=r"s2_cifar100.gz: not a readable gzipped pickle"):
        nb360.read_spherical(str(tmp_path))
    os.remove(path)
    _write_spherical(tmp_path, image_shape=(60, 60, 3))
    with pytest.raises(DataFormatError, match=r"s2_cifar100.gz: field 'train/images' has shape"):
        nb360.read_spherical(str(tmp_path))


# --- Darcy ---------------------------------------------------------------------------------


def _darcy_fields(n, seed):
    rng = np.random.default_rng(seed)
    return {
        "coeff": rng.choice([3.0, 12.0], size=(n, 421, 421)),
        "sol": rng.standard_normal((n, 421, 421)),
    }


def _write_mat(path, fields, v73: bool):
    if not v73:
        scipy.io.savemat(path, fields)
        return
    # MATLAB v7.3: HDF5 behind a 512-byte userblock; column-major arrays appear with reversed
    # axes (a MATLAB N×421×421 array is a 421×421×N dataset).
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, arr in fields.items():
            f.create_dataset(name, data=np.ascontiguousarray(arr.transpose(2, 1, 0)))
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024")


@pytest.mark.parametrize("v73", [False, True])
def test_darcy_mat_v5_and_v73(tmp_path, v73):
    train, test = _darcy_fields(7, 0), _darcy_fields(3, 1)
    _write_mat(tmp_path / "piececonst_r421_N1024_smooth1.mat", train, v73)
    _write_mat(tmp_path / "piececonst_r421_N1024_smooth2.mat", test, v73)
    assert h5py.is_hdf5(tmp_path / "piececonst_r421_N1024_smooth1.mat") == v73
    out = nb360.read_darcy(str(tmp_path), ntrain=6, nval=2, ntest=2)
    _check_splits(out, (3, 85, 85), np.float32, np.float32)
    assert out["train"]["y"].shape == (4, 1, 85, 85)
    assert [len(out[s]["y"]) for s in SPLITS] == [4, 2, 2]
    # val = the last nval of the first ntrain samples; test = the first ntest of smooth2.
    for split, src, rows in (("train", train, slice(0, 4)), ("val", train, slice(4, 6))):
        np.testing.assert_array_equal(
            out[split]["x"][:, 0], src["coeff"][rows, ::5, ::5].astype(np.float32)
        )
        np.testing.assert_array_equal(
            out[split]["y"][:, 0], src["sol"][rows, ::5, ::5].astype(np.float32)
        )
    np.testing.assert_array_equal(out["test"]["y"][:, 0], test["sol"][:2, ::5, ::5].astype("f4"))
    assert out["test"]["y"][1, 0, 3, 80] == np.float32(test["sol"][1, 15, 400])
    # Grid channels: x-coordinate varies along columns, y-coordinate along rows.
    grid = out["val"]["x"][1, 1:]
    np.testing.assert_allclose(grid[0, 7], np.linspace(0, 1, 85), atol=1e-7)
    np.testing.assert_allclose(grid[1, :, 7], np.linspace(0, 1, 85), atol=1e-7)
    assert np.all(grid[0, :, 7] == grid[0, 0, 7]) and np.all(grid[1, 7] == grid[1, 7, 0])
    # r = 3 → 141 points, as the reference's s = 420/r + 1.
    assert nb360.read_darcy(str(tmp_path), r=3, ntrain=6, nval=2, ntest=2)["test"]["x"].shape == (
        2,
        3,
        141,
        141,
    )
    with pytest.raises(DataFormatError, match=r"smooth1.mat: field 'coeff' has 7 samples"):
        nb360.read_darcy(str(tmp_path))  # the default 1000 training samples


def test_darcy_malformed(tmp_path):
    train, test = _darcy_fields(4, 0), _darcy_fields(2, 1)
    p1 = tmp_path / "piececonst_r421_N1024_smooth1.mat"
    p2 = tmp_path / "piececonst_r421_N1024_smooth2.mat"
    _write_mat(p2, test, v73=False)
    _write_mat(p1, {"coeff": train["coeff"]}, v73=True)
    kw = dict(ntrain=3, nval=1, ntest=2)
    with pytest.raises(DataFormatError, match=r"smooth1.mat: missing field 'sol'"):
        nb360.read_darcy(str(tmp_path), **kw)
    _write_mat(p1, {"coeff": train["coeff"][:, :420, :420], "sol": train["sol"]}, v73=False)
    with pytest.raises(DataFormatError, match=r"smooth1.mat: field 'coeff' has shape \(4, 420"):
        nb360.read_darcy(str(tmp_path), **kw)
    _write_mat(p1, train, v73=False)
    _truncate(p1)
    with pytest.raises(DataFormatError, match=r"smooth1.mat: not a readable MATLAB file"):
        nb360.read_darcy(str(tmp_path), **kw)


def test_unit_gaussian_stats_matches_the_reference_normalizer():
    x = np.random.default_rng(0).standard_normal((9, 5, 4)).astype(np.float32) * 3 + 1
    x[:, 0, 0] = 2.0  # a constant position: std = eps, no division by zero
    mean, std = formats.unit_gaussian_stats(x)
    assert mean.shape == std.shape == (5, 4) and mean.dtype == std.dtype == np.float32
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-6)
    want = np.sqrt(((x - x.mean(0)) ** 2).sum(0) / (len(x) - 1)) + 1e-5
    np.testing.assert_allclose(std, want, rtol=1e-6)
    assert std[0, 0] == np.float32(1e-5)
    np.testing.assert_allclose((x - mean) / std * std + mean, x, atol=1e-5)
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(x)
    np.testing.assert_allclose(std, (torch.std(t, 0) + 1e-5).numpy(), rtol=1e-5)


# --- NinaPro -------------------------------------------------------------------------------


def _write_ninapro(root, sizes=(40, 10, 12), label_dtype=np.int64):
    folder = os.path.join(root, "ninaPro")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    data = {}
    for split, n in zip(SPLITS, sizes, strict=True):
        x = rng.standard_normal((n, 52, 16)).astype(np.float32)
        y = (np.arange(n) % 18).astype(label_dtype)
        np.save(os.path.join(folder, f"ninapro_{split}.npy"), x)
        np.save(os.path.join(folder, f"label_{split}.npy"), y)
        data[split] = (x, y)
    return folder, data


def test_ninapro_official_splits(tmp_path):
    _, data = _write_ninapro(tmp_path, label_dtype=np.float64)  # integral floats accepted
    out = nb360.read_ninapro(str(tmp_path))
    _check_splits(out, (1, 16, 52), np.float32, np.int32)
    for split in SPLITS:
        x, y = data[split]
        assert len(out[split]["x"]) == len(x)
        np.testing.assert_array_equal(out[split]["x"][:, 0], x.transpose(0, 2, 1))
        np.testing.assert_array_equal(out[split]["y"], y)
    assert out["train"]["x"][3, 0, 5, 40] == data["train"][0][3, 40, 5]


def test_ninapro_truncated_wrong_dtype_wrong_shape(tmp_path):
    folder, _ = _write_ninapro(tmp_path)
    _truncate(os.path.join(folder, "ninapro_val.npy"), 0.8)
    with pytest.raises(DataFormatError, match=r"ninapro_val.npy: field 'ninapro' truncated"):
        nb360.read_ninapro(str(tmp_path))
    _write_ninapro(tmp_path)
    np.save(os.path.join(folder, "label_test.npy"), np.array(["a"] * 12))
    with pytest.raises(DataFormatError, match=r"label_test.npy: field 'label' has dtype <U1"):
        nb360.read_ninapro(str(tmp_path))
    _write_ninapro(tmp_path)
    np.save(os.path.join(folder, "ninapro_train.npy"), np.zeros((40, 16, 52), np.float32))
    with pytest.raises(DataFormatError, match=r"ninapro_train.npy: field 'ninapro' has shape"):
        nb360.read_ninapro(str(tmp_path))


# --- ECG -----------------------------------------------------------------------------------

ECG_CODES = "NAO~"


def _ecg_records(n=40, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1000, 3600, n)
    lengths[:3] = [1000, 1001, 1500]  # no window, one window (start 0), one window
    data = np.empty(n, dtype=object)  # the original: an object array of int16 records
    for i, length in enumerate(lengths):
        data[i] = rng.integers(-2000, 2000, length).astype(np.int16)
    labels = np.array([ECG_CODES[i % 4] for i in range(n)], dtype=object)
    return data, labels


def _write_ecg(root, data, labels):
    with open(os.path.join(root, "challenge2017.pkl"), "wb") as f:
        pickle.dump({"data": data, "label": labels}, f)


def _expected_windows(data, labels, class_strides=True):
    """The reference's z-score + slide_and_cut, written out: bytes of a window → (record, start)."""
    strides = {0: 500, 1: 500 // 6, 2: 500 // 2, 3: 500 // 20}
    table, per_record = {}, {}
    for i, (rec, lab) in enumerate(zip(data, labels, strict=True)):
        rec = rec.astype(np.float64)
        z = ((rec - rec.mean()) / rec.std()).astype(np.float32)
        code = ECG_CODES.index(lab)
        stride = strides[code] if class_strides else 500
        starts = list(range(0, len(rec) - 1000, stride))
        per_record[i] = [(i, s) for s in starts]
        for s in starts:
            table[z[s : s + 1000].tobytes()] = (i, s)
    return table, per_record


def _trace(x, table):
    return [table[np.asarray(x[k][0]).tobytes()] for k in range(len(x))]


@pytest.mark.parametrize("class_strides", [True, False])
def test_ecg_windows_and_record_splits(tmp_path, class_strides):
    data, labels = _ecg_records()
    _write_ecg(tmp_path, data, labels)
    out = nb360.read_ecg(str(tmp_path), class_strides=class_strides)
    _check_splits(out, (1, 1000), np.float32, np.int32)
    assert all(isinstance(out[s]["x"], LazyArray) for s in SPLITS)
    table, per_record = _expected_windows(data, labels, class_strides)
    recs = {}
    for split in SPLITS:
        traced = _trace(out[split]["x"], table)
        recs[split] = sorted({r for r, _ in traced})
        # Every window of every record of the split, in record order, each labelled by its record.
        assert traced == [w for r in recs[split] for w in per_record[r]]
        codes = [ECG_CODES.index(labels[r]) for r, _ in traced]
        np.testing.assert_array_equal(out[split]["y"], codes)
    # Test = the reference's train_test_split(test_size=0.1, random_state=0) records (record 0,
    # of exactly 1000 samples, has no window).
    sklearn = pytest.importorskip("sklearn.model_selection")
    _, ref_test = sklearn.train_test_split(np.arange(40), test_size=0.1, random_state=0)
    np.testing.assert_array_equal(nb360.reference_test_split(40, 0.1, 0), np.sort(ref_test))
    assert recs["test"] == sorted(set(ref_test) - {0})
    # Val: as many records as test, stratified, disjoint from train (records 0 may be anywhere).
    val_recs = set(recs["val"])
    assert not val_recs & set(recs["train"]) and not val_recs & set(ref_test)
    assert len(set(recs["train"]) | val_recs | set(ref_test)) >= 39
    # Windows of a 1001-sample record: one, at 0; strides per class as the reference.
    assert per_record[1] == [(1, 0)]
    n_windows = {r: len(w) for r, w in per_record.items()}
    if class_strides:
        assert n_windows[3] == len(range(0, len(data[3]) - 1000, 25))  # '~'
    # Lazy array: int, slice, fancy and boolean indexing, and np.asarray.
    x = out["train"]["x"]
    assert x[2].shape == (1, 1000) and x[1:4].shape == (3, 1, 1000)
    np.testing.assert_array_equal(x[np.array([3, 0])][0], x[3])
    np.testing.assert_array_equal(x[-1], x[len(x) - 1])
    mask = np.zeros(len(x), bool)
    mask[[1, 5]] = True
    np.testing.assert_array_equal(x[mask], x[np.array([1, 5])])
    assert np.asarray(x).shape == (len(x), 1, 1000)
    z = np.asarray(x[0][0], np.float64)
    assert abs(z.mean()) < 1.0  # z-scored records
    batch = next(pipeline.train_iterator(out["train"], 4, seed=0, prefetch=0))
    assert batch["x"].shape == (4, 1, 1000) and batch["x"].dtype == np.float32


def test_ecg_val_records_stratified_and_seeded(tmp_path):
    data, labels = _ecg_records(n=80, seed=1)
    data[0] = np.arange(1200, dtype=np.int16)  # every record has windows
    _write_ecg(tmp_path, data, labels)
    table, _ = _expected_windows(data, labels)
    val = {}
    for seed in (0, 1):
        out = nb360.read_ecg(str(tmp_path), seed=seed)
        val[seed] = sorted({r for r, _ in _trace(out["val"]["x"], table)})
    assert len(val[0]) == len(val[1]) == 8  # |test| = ceil(0.1 · 80) records
    # 72 train+val records, 18 per class → 2 per class in val.
    assert sorted(ECG_CODES.index(labels[r]) for r in val[0]) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert val[0] != val[1]


def test_ecg_lists_accepted_and_malformed(tmp_path):
    data, labels = _ecg_records(n=20)
    _write_ecg(tmp_path, [np.asarray(r) for r in data], list(labels))  # plain lists also parse
    assert len(nb360.read_ecg(str(tmp_path))["test"]["x"]) > 0
    bad = list(labels)
    bad[5] = "X"
    _write_ecg(tmp_path, data, bad)
    with pytest.raises(
        DataFormatError, match=r"challenge2017.pkl: field 'label' has 'X' at index 5"
    ):
        nb360.read_ecg(str(tmp_path))
    with open(tmp_path / "challenge2017.pkl", "wb") as f:
        pickle.dump({"signals": data, "label": labels}, f)
    with pytest.raises(DataFormatError, match=r"challenge2017.pkl: missing field 'data'"):
        nb360.read_ecg(str(tmp_path))
    _write_ecg(tmp_path, data, labels)
    _truncate(tmp_path / "challenge2017.pkl")
    with pytest.raises(DataFormatError, match=r"challenge2017.pkl: not a readable pickle"):
        nb360.read_ecg(str(tmp_path))


# --- Satellite -----------------------------------------------------------------------------


def _write_satellite(root, n_train=240, n_test=48, train_labels=None, key="label"):
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        data = rng.standard_normal((n, 46)).astype(np.float32)
        data[:, 0] = np.arange(n)  # traceable ids
        labels = (np.arange(n) % 24 + 1).astype(np.int64)  # 1-based
        if split == "train" and train_labels is not None:
            labels = train_labels
        # np.save of a dict: a 0-d object array holding it, as the original files.
        np.save(os.path.join(root, f"satellite_{split}.npy"), {"data": data, key: labels})


def test_satellite_pickled_dicts_disjoint_val(tmp_path):
    _write_satellite(tmp_path)
    out = nb360.read_satellite(str(tmp_path), seed=3)
    _check_splits(out, (1, 46), np.float32, np.int32)
    assert [len(out[s]["y"]) for s in SPLITS] == [192, 48, 48]
    ids = {s: out[s]["x"][:, 0, 0].astype(int) for s in SPLITS}
    assert not set(ids["train"]) & set(ids["val"])  # the reference's val overlapped train
    assert sorted([*ids["train"], *ids["val"]]) == list(range(240))
    for s in SPLITS:
        np.testing.assert_array_equal(out[s]["y"], ids[s] % 24)  # shifted to 0-based
    assert out["test"]["y"].min() == 0 and out["test"]["y"].max() == 23
    assert np.all(np.bincount(out["val"]["y"], minlength=24) == 2)


def test_satellite_label_range_and_key(tmp_path):
    labels = (np.arange(240) % 24 + 1).astype(np.int64)
    labels[9] = 0  # 1-based file: 0 is out of range
    _write_satellite(tmp_path, train_labels=labels)
    with pytest.raises(DataFormatError, match=r"satellite_train.npy: field 'label.*index 9"):
        nb360.read_satellite(str(tmp_path))
    labels[9] = 25
    _write_satellite(tmp_path, train_labels=labels)
    with pytest.raises(DataFormatError, match=r"satellite_train.npy: field 'label"):
        nb360.read_satellite(str(tmp_path))
    _write_satellite(tmp_path, key="labels")
    with pytest.raises(DataFormatError, match=r"satellite_train.npy: missing field 'label'"):
        nb360.read_satellite(str(tmp_path))
    _write_satellite(tmp_path)
    _truncate(tmp_path / "satellite_test.npy")
    with pytest.raises(DataFormatError, match=r"satellite_test.npy: not a readable"):
        nb360.read_satellite(str(tmp_path))


# --- DeepSEA -------------------------------------------------------------------------------


def _deepsea_arrays(sizes=(20, 6, 8)):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in zip(SPLITS, sizes, strict=True):
        bases = rng.integers(0, 4, (n, 1000))
        arrays[f"x_{split}"] = np.eye(4, dtype=np.uint8)[bases]  # one-hot N×1000×4
        arrays[f"y_{split}"] = rng.integers(0, 2, (n, 36)).astype(np.uint8)
    return arrays


@pytest.mark.parametrize("compressed", [False, True])
def test_deepsea_npz(tmp_path, compressed):
    arrays = _deepsea_arrays()
    path = tmp_path / "deepsea_filtered.npz"
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    out = nb360.read_deepsea(str(tmp_path))
    _check_splits(out, (4, 1000), np.float32, np.float32)
    for split in SPLITS:
        x, want = out[split]["x"], arrays[f"x_{split}"]
        assert isinstance(x, LazyArray) and len(x) == len(want)
        np.testing.assert_array_equal(np.asarray(x), want.transpose(0, 2, 1))
        np.testing.assert_array_equal(out[split]["y"], arrays[f"y_{split}"])
    # Base at position 17 of val example 2 is the hot channel of column 17.
    base = int(np.argmax(arrays["x_val"][2, 17]))
    assert out["val"]["x"][2][base, 17] == 1 and out["val"]["x"][2][:, 17].sum() == 1
    np.testing.assert_array_equal(out["test"]["x"][np.array([5, 1])][1], out["test"]["x"][1])
    # Uncompressed members are memory-mapped in place, not read.
    assert isinstance(nb360._npz_member(str(path), "x_train"), np.memmap) != compressed


def test_deepsea_malformed(tmp_path):
    path = tmp_path / "deepsea_filtered.npz"
    arrays = _deepsea_arrays()
    arrays["y_val"][3, 4] = 2
    np.savez(path, **arrays)
    with pytest.raises(DataFormatError, match=r"deepsea_filtered.npz: field 'y_val' has value 2"):
        nb360.read_deepsea(str(tmp_path))
    arrays = _deepsea_arrays()
    del arrays["x_test"]
    np.savez(path, **arrays)
    with pytest.raises(DataFormatError, match=r"deepsea_filtered.npz: missing field 'x_test'"):
        nb360.read_deepsea(str(tmp_path))
    arrays = _deepsea_arrays()
    arrays["x_train"] = arrays["x_train"].transpose(0, 2, 1)
    np.savez(path, **arrays)
    with pytest.raises(DataFormatError, match=r"deepsea_filtered.npz: field 'x_train' has shape"):
        nb360.read_deepsea(str(tmp_path))
    np.savez(path, **_deepsea_arrays())
    _truncate(path)
    with pytest.raises(DataFormatError, match=r"deepsea_filtered.npz: not a readable .npz"):
        nb360.read_deepsea(str(tmp_path))


def test_missing_files_and_num_classes(tmp_path):
    for name, reader in nb360.READERS.items():
        with pytest.raises(DataFormatError, match=str(tmp_path)):
            reader(str(tmp_path))
        assert name == "darcy" or name in nb360.NUM_CLASSES
    assert nb360.NUM_CLASSES == {
        "cifar100": 100,
        "spherical": 100,
        "ninapro": 18,
        "ecg": 4,
        "satellite": 24,
        "deepsea": 36,
    }
