"""Offline real data: UCR/UEA series in the aeon wheel, scikit-learn tables, OpenML files."""

from __future__ import annotations

import importlib.util
import os
import socket

import numpy as np
import pytest

from xmodal_jax.data import offline
from xmodal_jax.data.formats import DataFormatError

# Only the UCR/UEA loader needs aeon (an optional dependency); the table loaders do not.
needs_aeon = pytest.mark.skipif(
    importlib.util.find_spec("aeon") is None, reason="aeon not installed (pip install aeon==1.6.*)"
)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr("urllib.request.urlopen", refuse)
    monkeypatch.setattr("urllib.request.urlretrieve", refuse)


def _check_splits(splits, channels, length):
    assert set(splits) == {"train", "test"}
    for part in splits.values():
        assert set(part) == {"x", "y"}
        assert part["x"].dtype == np.float32 and part["x"].shape[1:] == (channels, length)
        assert len(part["x"]) == len(part["y"])
        assert np.isfinite(part["x"]).all()


# --- UCR / UEA ------------------------------------------------------------------------------------


@needs_aeon
def test_bundled_names():
    names = offline.bundled_ucr_datasets()
    for n in ("GunPoint", "BasicMotions", "JapaneseVowels", "ArrowHead", "ItalyPowerDemand"):
        assert n in names


@needs_aeon
def test_gunpoint(no_network):
    splits, info = offline.load_ucr("GunPoint")
    _check_splits(splits, 1, 150)
    assert len(splits["train"]["x"]) == 50 and len(splits["test"]["x"]) == 150
    assert info["classes"] == ["1", "2"] and info["channels"] == 1 and info["length"] == 150
    assert splits["train"]["y"].dtype == np.int32
    assert set(np.unique(splits["test"]["y"])) == {0, 1}
    # Ids follow the sorted labels: compare with the raw file.
    from aeon.datasets import load_from_ts_file

    path = os.path.join(offline.aeon_data_dir(), "GunPoint", "GunPoint_TRAIN.ts")
    x, y = load_from_ts_file(path)
    np.testing.assert_array_equal(splits["train"]["y"], (y == "2").astype(np.int32))
    np.testing.assert_allclose(splits["train"]["x"], x.astype(np.float32))


@needs_aeon
def test_basic_motions_multivariate(no_network):
    splits, info = offline.load_ucr("BasicMotions")
    _check_splits(splits, 6, 100)
    assert len(splits["train"]["x"]) == 40 and len(splits["test"]["x"]) == 40
    assert info["classes"] == ["badminton", "running", "standing", "walking"]
    assert np.bincount(splits["train"]["y"]).tolist() == [10, 10, 10, 10]


@needs_aeon
def test_japanese_vowels_variable_length_multivariate(no_network):
    splits, info = offline.load_ucr("JapaneseVowels")
    assert info["variable_length"] and info["channels"] == 12
    length = info["length"]
    _check_splits(splits, 12, length)
    assert info["classes"] == [str(i) for i in range(1, 10)]
    from aeon.datasets import load_from_ts_file

    path = os.path.join(offline.aeon_data_dir(), "JapaneseVowels", "JapaneseVowels_TRAIN.ts")
    series, _ = load_from_ts_file(path)
    assert max(s.shape[1] for s in series) <= length
    s0 = series[0]
    x0 = splits["train"]["x"][0]
    np.testing.assert_allclose(x0[:, : s0.shape[1]], s0.astype(np.float32))
    assert (x0[:, s0.shape[1] :] == 0).all()  # right zero padding
    cut, cut_info = offline.load_ucr("JapaneseVowels", max_length=10)
    _check_splits(cut, 12, 10)
    assert cut_info["truncated"] > 0
    np.testing.assert_array_equal(cut["train"]["x"], splits["train"]["x"][:, :, :10])


@needs_aeon
def test_pickup_gesture_variable_univariate_class_order(no_network):
    splits, info = offline.load_ucr("PickupGestureWiimoteZ")
    assert info["variable_length"] and info["channels"] == 1
    assert info["classes"] == [str(i) for i in range(1, 11)]  # numeric order: "10" last


@needs_aeon
def test_regression_problem(no_network):
    splits, info = offline.load_ucr("Covid3Month")
    assert info["task"] == "regression" and info["metric"] == "rmse"
    assert splits["train"]["y"].dtype == np.float32 and splits["train"]["y"].shape[1:] == (1,)


@needs_aeon
def test_case_insensitive_and_unknown_name():
    _, info = offline.load_ucr("gunpoint")
    assert info["name"] == "GunPoint"
    with pytest.raises(ValueError, match="not bundled.*GunPoint"):
        offline.load_ucr("Coffee")


# --- scikit-learn tables --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,features,n,classes",
    [("iris", 4, 150, 3), ("wine", 13, 178, 3), ("breast_cancer", 30, 569, 2)],
)
def test_sklearn_classification_tables(name, features, n, classes):
    splits, info = offline.load_sklearn_table(name)
    _check_splits(splits, 1, features)
    ntr, nte = len(splits["train"]["y"]), len(splits["test"]["y"])
    assert ntr + nte == n and abs(nte - 0.3 * n) <= 1
    assert len(info["classes"]) == classes and info["task"] == "classification"
    xtr = splits["train"]["x"][:, 0]
    np.testing.assert_allclose(xtr.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(xtr.std(0), 1, atol=1e-4)
    # Stratified: class shares of the two splits agree to within one row.
    ptr = np.bincount(splits["train"]["y"], minlength=classes) / ntr
    pte = np.bincount(splits["test"]["y"], minlength=classes) / nte
    assert np.abs(ptr - pte).max() < 2 / nte
    again, _ = offline.load_sklearn_table(name)
    np.testing.assert_array_equal(again["test"]["x"], splits["test"]["x"])  # deterministic


def test_sklearn_diabetes_regression_and_unknown():
    splits, info = offline.load_sklearn_table("diabetes")
    _check_splits(splits, 1, 10)
    assert info["task"] == "regression" and info["normalize_targets"]
    assert splits["train"]["y"].shape[1:] == (1,) and splits["train"]["y"].dtype == np.float32
    with pytest.raises(ValueError, match="iris"):
        offline.load_sklearn_table("digits_big")


# --- OpenML files ---------------------------------------------------------------------------------

ARFF = """% a credit-g like file
@relation 'toy credit'
@attribute age numeric
@attribute 'checking status' {'<0','no checking','>=200'}
@attribute amount REAL
@attribute class {good,bad}
@data
"""


def _arff_rows(n=40):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        status = ["'<0'", "'no checking'", "'>=200'"][i % 3]
        age = "?" if i == 3 else str(20 + i)
        cls = "good" if i % 2 else "bad"
        if i == 7:
            cls = "?"  # missing target: row dropped
        rows.append(f"{age},{status},{rng.uniform(100, 900):.2f},{cls}")
    rows[0] = rows[0].replace("'<0'", "?")  # a missing categorical value
    return rows


def test_arff_with_categorical_and_missing(tmp_path):
    path = tmp_path / "credit.arff"
    rows = _arff_rows()
    rows[1] = rows[1].replace("'no checking'", "no checking").replace(",", ", ", 1)  # unquoted
    path.write_text(ARFF + "\n".join(rows) + "\n")
    splits, info = offline.load_openml_file(str(path))
    assert info["target"] == "class" and info["classes"] == ["bad", "good"]
    assert info["dropped_rows"] == 1
    assert info["features"] == [
        "age",
        "checking status=<0",
        "checking status=no checking",
        "checking status=>=200",
        "amount",
    ]
    _check_splits(splits, 1, 5)
    assert len(splits["train"]["y"]) + len(splits["test"]["y"]) == 39
    assert len(splits["test"]["y"]) == 12  # ceil(0.3 · 39)
    xtr = splits["train"]["x"][:, 0]
    onehot = np.concatenate([xtr, splits["test"]["x"][:, 0]])[:, 1:4]
    assert set(np.unique(onehot)) == {0.0, 1.0}
    assert sorted(onehot.sum(1).tolist()).count(0.0) == 1  # the missing category: all zeros
    np.testing.assert_allclose(xtr[:, [0, 4]].mean(0), 0, atol=1e-5)  # train-standardised
    # Same content as CSV: same arrays.
    csv_path = tmp_path / "credit.csv"
    lines = ["age,checking status,amount,class"]
    for r in _arff_rows():
        lines.append(r.replace("'", "").replace("?", ""))
    csv_path.write_text("\n".join(lines) + "\n")
    csplits, cinfo = offline.load_openml_file(str(csv_path))
    assert cinfo["classes"] == info["classes"] and cinfo["dropped_rows"] == 1
    # CSV levels are sorted as seen; ARFF keeps the declared order: compare as sets of columns.
    assert sorted(cinfo["features"]) == sorted(info["features"])
    order = [cinfo["features"].index(f) for f in info["features"]]
    np.testing.assert_allclose(csplits["train"]["x"][:, :, order], splits["train"]["x"])
    np.testing.assert_array_equal(csplits["test"]["y"], splits["test"]["y"])


def test_csv_named_target_numeric_labels_and_sparse_arff(tmp_path):
    path = tmp_path / "t.csv"
    rng = np.random.default_rng(1)
    lines = ["label,f1,color,f2"]
    for i in range(30):
        lines.append(f"{(i % 3) + 1}.0,{rng.normal():.3f},{'red' if i % 2 else 'blue'},{i}")
    lines[5] = lines[5].replace("3.0,", "3,", 1)  # "3" and "3.0" are one class
    path.write_text("\n".join(lines) + "\n")
    splits, info = offline.load_openml_file(str(path), target="label")
    assert info["classes"] == ["1", "2", "3"]
    assert info["features"] == ["f1", "color=blue", "color=red", "f2"]
    _check_splits(splits, 1, 4)
    sparse = tmp_path / "s.arff"
    body = ["{0 1.5, 2 b}", "{1 2}", "{0 -1, 1 3, 2 b}", "{}"] * 5
    sparse.write_text(
        "@relation s\n@attribute a numeric\n@attribute b numeric\n@attribute c {a,b}\n@data\n"
        + "\n".join(body)
        + "\n"
    )
    s2, i2 = offline.load_openml_file(str(sparse))
    assert i2["classes"] == ["a", "b"] and len(s2["train"]["y"]) + len(s2["test"]["y"]) == 20


@needs_aeon
def test_gunpoint_arff_shipped_by_aeon():
    path = os.path.join(offline.aeon_data_dir(), "GunPoint", "GunPoint_TRAIN.arff")
    splits, info = offline.load_openml_file(path)
    assert info["target"] == "target" and info["classes"] == ["1", "2"]
    _check_splits(splits, 1, 150)


@pytest.mark.parametrize(
    "content,kwargs,match",
    [
        ("", {}, "empty"),
        ("a,b,class\n", {}, "no data rows"),
        ("a,b,class\n1,2,x\n3,4,y\n", {"target": "label"}, r"'label' not found.*\['a', 'b'"),
        ("a,b,class\n1,2,x\n3,zz,y\n5,6,x\n", {}, r":3: column 'b' mixes numbers and text"),
        ("a,b,class\n1,2,x\n3,4\n", {}, r":3: 2 fields"),
        ("a,class\n1,x\n2,x\n3,y\n", {}, "single row"),
        ("class\nx\ny\n", {}, "no feature columns"),
    ],
)
def test_malformed_csv(tmp_path, content, kwargs, match):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DataFormatError, match=match) as e:
        offline.load_openml_file(str(path), **kwargs)
    assert "bad.csv" in str(e.value)


@pytest.mark.parametrize(
    "data,match",
    [
        ("1,a,x\nfoo,b,y\n", r":7: column 'n': value 'foo' is not a number"),
        ("1,a,x\n2,q,y\n", r"column 'c': value 'q' not among"),
        ("1,a\n", r"2 values for 3 attributes"),
        ("1,'a,x\n", "unterminated quote"),
    ],
)
def test_malformed_arff(tmp_path, data, match):
    path = tmp_path / "bad.arff"
    header = "@relation r\n@attribute n numeric\n@attribute c {a,b}\n@attribute k {x,y}\n@data\n"
    path.write_text(header + data * 3)
    with pytest.raises(DataFormatError, match=match) as e:
        offline.load_openml_file(str(path))
    assert "bad.arff" in str(e.value)


def test_missing_file_and_unsupported_attribute(tmp_path):
    with pytest.raises(DataFormatError, match="not found"):
        offline.load_openml_file(str(tmp_path / "nope.csv"))
    path = tmp_path / "d.arff"
    path.write_text("@relation r\n@attribute t date\n@attribute k {x,y}\n@data\n")
    with pytest.raises(DataFormatError, match="unsupported type"):
        offline.load_openml_file(str(path))
