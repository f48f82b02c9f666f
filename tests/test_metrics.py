"""Metrics against slow references (scikit-learn, explicit loops) on random data and edge cases."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from xmodal_jax import metrics


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _slow_auroc_mean(logits, labels):
    vals = []
    for k in range(labels.shape[1]):
        if 0 < labels[:, k].sum() < len(labels):
            vals.append(roc_auc_score(labels[:, k], _sigmoid(logits[:, k])))
    return np.mean(vals)


def _slow_map(logits, labels):
    return np.mean(
        [
            average_precision_score(labels[:, k], _sigmoid(logits[:, k]))
            for k in range(labels.shape[1])
            if labels[:, k].any()
        ]
    )


def test_registry_names_and_unknown():
    for name in (
        "error",
        "relative_l2",
        "nrmse",
        "rmse",
        "macro_f1_error",
        "auroc_error",
        "map_error",
        "clip_map_error",
        "pixel_auroc_error",
        "pixel_auroc_error_reference",
        "mae8",
    ):
        assert callable(metrics.get(name))
    with pytest.raises(ValueError, match="unknown"):
        metrics.get("accuracy")


# --- F1 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_macro_f1_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(200, 4))
    labels = rng.integers(0, 4, 200)
    want = 1 - f1_score(labels, logits.argmax(-1), labels=range(4), average="macro")
    assert metrics.macro_f1_error(logits, labels) == pytest.approx(want, abs=1e-12)


def test_macro_f1_empty_class_counts_zero():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 100)  # class 3 never occurs ...
    logits = rng.normal(size=(100, 4))
    logits[:, 3] = -10.0  # ... and is never predicted
    want = 1 - f1_score(
        labels, logits.argmax(-1), labels=range(4), average="macro", zero_division=0
    )
    got = metrics.macro_f1_error(logits, labels)
    assert got == pytest.approx(want, abs=1e-12)
    # The empty class counts as F1 0: mean over 4, not over the 3 classes present.
    f1_present = f1_score(labels, logits.argmax(-1), labels=range(3), average=None)
    assert got == pytest.approx(1 - f1_present.sum() / 4)
    assert metrics.macro_f1_error(np.eye(4)[[0, 1, 2]], [0, 1, 2]) == pytest.approx(0.25)


def test_macro_f1_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="labels"):
        metrics.macro_f1_error(np.zeros((3, 4)), [0, 1, 4])


# --- AUROC ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_auroc_error_matches_sklearn_with_ties_and_empty_labels(seed):
    rng = np.random.default_rng(seed)
    n, k = 300, 8
    labels = (rng.random((n, k)) < 0.3).astype(np.int32)
    logits = labels * 0.7 + rng.normal(size=(n, k))
    logits[:, :3] = np.round(logits[:, :3])  # heavy ties
    labels[:, 5] = 0  # no positives: skipped
    labels[:, 6] = 1  # no negatives: skipped
    want = 1 - _slow_auroc_mean(logits, labels)
    assert metrics.auroc_error(logits, labels) == pytest.approx(want, abs=1e-12)
    per = metrics.auroc_columns(logits, labels)
    assert np.isnan(per[5]) and np.isnan(per[6])


def test_auroc_all_labels_degenerate_is_nan_and_nonfinite_is_nan():
    assert np.isnan(metrics.auroc_error(np.zeros((5, 2)), np.zeros((5, 2))))
    logits = np.array([[0.1], [np.nan], [0.3]])
    assert np.isnan(metrics.auroc_error(logits, np.array([[0], [1], [1]])))


def test_whole_split_auroc_differs_from_chunk_average():
    """§8.3: averaging per-chunk AUROCs (the reference) is not the AUROC of the split."""
    rng = np.random.default_rng(0)
    chunks = []
    for offset in (0.0, 5.0):  # each chunk ranks perfectly, on a shifted scale
        y = rng.integers(0, 2, (100, 1))
        chunks.append((y * 1.0 + rng.random((100, 1)) * 0.5 + offset, y))
    per_chunk = np.mean([metrics.auroc_error(s, y) for s, y in chunks])
    scores = np.concatenate([c[0] for c in chunks])
    labels = np.concatenate([c[1] for c in chunks])
    whole = metrics.auroc_error(scores, labels)
    assert per_chunk == pytest.approx(0.0)
    assert whole == pytest.approx(1 - roc_auc_score(labels[:, 0], scores[:, 0]))
    assert whole > 0.2


def test_auroc_on_logits_avoids_float32_sigmoid_saturation():
    logits = np.array([[20.0], [25.0], [30.0]], np.float32)
    labels = np.array([[0], [1], [1]])
    assert metrics.auroc_error(logits, labels) == 0.0
    sat = 1 / (1 + np.exp(-logits))  # float32: all exactly 1.0, a three-way tie
    assert roc_auc_score(labels[:, 0], sat[:, 0]) == 0.5


# --- mAP ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_map_error_matches_sklearn_with_ties_and_empty_label(seed):
    rng = np.random.default_rng(seed)
    n, k = 250, 10
    labels = (rng.random((n, k)) < 0.2).astype(np.int32)
    logits = labels * 0.8 + rng.normal(size=(n, k))
    logits[:, :4] = np.round(logits[:, :4] * 2) / 2  # ties
    labels[:, 7] = 0  # no positives: skipped
    want = 1 - _slow_map(logits, labels)
    assert metrics.map_error(logits, labels) == pytest.approx(want, abs=1e-12)
    assert np.isnan(metrics.average_precision_columns(logits, labels)[7])


def test_map_equals_sklearn_macro_when_every_label_occurs():
    rng = np.random.default_rng(1)
    labels = (rng.random((120, 6)) < 0.4).astype(np.int32)
    labels[0] = 1
    logits = rng.normal(size=(120, 6))
    want = 1 - average_precision_score(labels, _sigmoid(logits), average="macro")
    assert metrics.map_error(logits, labels) == pytest.approx(want, abs=1e-12)


def test_map_documented_difference_from_sklearn_on_empty_label():
    labels = np.array([[1, 0], [0, 0], [1, 0]])
    logits = np.array([[2.0, 0.1], [1.0, 0.2], [0.0, 0.3]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        skl = average_precision_score(labels, _sigmoid(logits), average="macro")
    ap0 = average_precision_score(labels[:, 0], logits[:, 0])
    assert skl == pytest.approx(ap0 / 2)  # sklearn: the empty label counts as AP 0
    assert metrics.map_error(logits, labels) == pytest.approx(1 - ap0)  # we skip it


def _slow_clip_map(chunk_logits, targets, clip):
    outs, ys = [], []
    for c in sorted(set(clip.tolist())):
        rows = [i for i in range(len(clip)) if clip[i] == c]
        outs.append(_sigmoid(chunk_logits[rows].mean(0)))
        ys.append(targets[rows[0]])
    outs, ys = np.array(outs), np.array(ys)
    return 1 - np.mean(
        [
            average_precision_score(ys[:, k], outs[:, k])
            for k in range(ys.shape[1])
            if ys[:, k].any()
        ]
    )


def test_clip_map_error_matches_loop_and_ignores_chunk_order():
    rng = np.random.default_rng(0)
    n_clips, k = 40, 5
    clip_targets = (rng.random((n_clips, k)) < 0.3).astype(np.int32)
    clip_targets[:, 4] = 0  # a label without positives
    per_clip = rng.integers(1, 5, n_clips)
    clip = np.repeat(np.arange(n_clips) * 3 + 7, per_clip)  # sparse, non-dense ids
    targets = np.repeat(clip_targets, per_clip, axis=0)
    logits = targets * 0.5 + rng.normal(size=targets.shape)
    want = _slow_clip_map(logits, targets, clip)
    assert metrics.clip_map_error(logits, targets, clip=clip) == pytest.approx(want, abs=1e-12)
    perm = rng.permutation(len(clip))
    got = metrics.clip_map_error(logits[perm], targets[perm], clip=clip[perm])
    assert got == pytest.approx(want, abs=1e-12)
    # Chunk level is a different number: clip grouping matters.
    assert metrics.map_error(logits, targets) != pytest.approx(want)
    # The trainer's call: metric_extras = ("clip",).
    assert metrics.get("clip_map_error")(logits, targets, **{"clip": clip}) == pytest.approx(want)


def test_clip_scores_shapes_and_disagreeing_targets():
    logits = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    targets = np.array([[1, 0], [1, 0], [0, 1]])
    out, t, ids = metrics.clip_scores(logits, targets, np.array([4, 4, 2]))
    np.testing.assert_array_equal(ids, [2, 4])
    np.testing.assert_allclose(out, [[5.0, 5.0], [2.0, 1.0]])
    np.testing.assert_array_equal(t, [[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="clip 4"):
        metrics.clip_scores(logits, np.array([[1, 0], [0, 0], [0, 1]]), np.array([4, 4, 2]))


# --- Cosmic ---------------------------------------------------------------------------------------


def test_pixel_auroc_excludes_ignored_pixels():
    rng = np.random.default_rng(0)
    shape = (6, 1, 16, 16)
    mask = (rng.random(shape) < 0.1).astype(np.float32)
    ignore = (rng.random(shape) < 0.2).astype(np.float32)
    logits = mask * 1.5 + rng.normal(size=shape)
    logits = np.round(logits, 1)  # ties
    keep = ignore.reshape(-1) < 0.5
    want = 1 - roc_auc_score(mask.reshape(-1)[keep], _sigmoid(logits.reshape(-1)[keep]))
    got = metrics.pixel_auroc_error(logits, mask, ignore=ignore)
    assert got == pytest.approx(want, abs=1e-12)
    want_all = 1 - roc_auc_score(mask.reshape(-1), _sigmoid(logits.reshape(-1)))
    assert metrics.pixel_auroc_error(logits, mask) == pytest.approx(want_all, abs=1e-12)
    # Ignored pixels hold anything: they must not move the value.
    wild = np.where(ignore > 0.5, 100.0 * (1 - mask), logits)
    assert metrics.pixel_auroc_error(wild, mask, ignore=ignore) == pytest.approx(got)


def test_pixel_auroc_reference_variant():
    rng = np.random.default_rng(1)
    shape = (4, 1, 8, 8)
    mask = (rng.random(shape) < 0.2).astype(np.float32)
    ignore = (rng.random(shape) < 0.3).astype(np.float32)
    logits = mask + rng.normal(size=shape)
    # The reference, literally: zero ignored pixels in both, binarise logits, one sklearn AUROC.
    out = (logits * (1 - ignore)).reshape(-1) > 0
    tgt = (mask * (1 - ignore)).reshape(-1)
    want = 1 - roc_auc_score(tgt, out)
    got = metrics.pixel_auroc_error_reference(logits, mask, ignore=ignore)
    assert got == pytest.approx(want, abs=1e-12)
    assert got != pytest.approx(metrics.pixel_auroc_error(logits, mask, ignore=ignore))


# --- PSICOV MAE8 ----------------------------------------------------------------------------------


def test_mae8_hand_made_proteins():
    pad, size = 10, 40
    h = pad // 2
    out = np.full((3, 1, size, size), 50.0)  # junk outside the proteins must not matter
    tgt = np.full((3, 1, size, size), 100.0)
    # Protein 0, L = 26: long-range pairs (k − j ≥ 24) are (0,24), (0,25), (1,25).
    y, p = np.full((26, 26), 3.0), np.full((26, 26), 3.0)
    y[0, 24] = y[24, 0] = 5.0
    p[0, 24], p[24, 0] = 4.0, 6.0  # averages to 5: error 0
    y[0, 25] = y[25, 0] = 9.0  # beyond 8 Å: not counted
    p[0, 25] = p[25, 0] = 0.0
    y[1, 25] = y[25, 1] = 8.0  # exactly 8 Å: counted
    p[1, 25], p[25, 1] = 2.0, 4.0  # averages to 3: error 5
    out[0, 0, h : h + 26, h : h + 26], tgt[0, 0, h : h + 26, h : h + 26] = p, y
    # Protein 1, L = 10: no pair 24 apart -> NaN, skipped in the mean.
    out[1, 0, h : h + 10, h : h + 10] = 1.0
    tgt[1, 0, h : h + 10, h : h + 10] = 2.0
    # Protein 2, L = 25: one pair (0,24); prediction −1 is clipped to 0.01, error 2.99.
    y, p = np.full((25, 25), 3.0), np.full((25, 25), -1.0)
    out[2, 0, h : h + 25, h : h + 25], tgt[2, 0, h : h + 25, h : h + 25] = p, y
    lengths = np.array([26, 10, 25])
    per = metrics.mae8_per_protein(out, tgt, lengths, pad=pad)
    np.testing.assert_allclose(per[[0, 2]], [2.5, 2.99])
    assert np.isnan(per[1])
    assert metrics.mae8(out, tgt, lengths, pad=pad) == pytest.approx((2.5 + 2.99) / 2)
    assert metrics.get("mae8")(out, tgt, length=lengths, pad=pad) == pytest.approx(2.745)
    # (N, H, W) works as well as (N, 1, H, W).
    assert metrics.mae8(out[:, 0], tgt[:, 0], lengths, pad=pad) == pytest.approx(2.745)
    # A missing distance (0 after the loader's nan_to_num) is not a contact.
    tgt[0, 0, h + 1, h + 25] = 0.0
    assert metrics.mae8_per_protein(out, tgt, lengths, pad=pad)[0] == pytest.approx(0.0)
    # No protein with a qualifying pair; non-finite predictions.
    assert np.isnan(metrics.mae8(out[1:2], tgt[1:2], lengths[1:2], pad=pad))
    out[0, 0, 0, 0] = np.nan
    assert np.isnan(metrics.mae8(out, tgt, lengths, pad=pad))


def _reference_psicov_mae(output, target, lengths, lmax, pad_size):
    """sjunhongshen/ORCA utils.psicov_mae (d8, separation 24) transcribed, LMAX a parameter."""
    P = output.transpose(0, 2, 3, 1).copy()
    Y = target.transpose(0, 2, 3, 1).astype(np.float64).copy()
    for j in range(P.shape[1]):
        for k in range(j, P.shape[1]):
            P[:, j, k, :] = (P[:, k, j, :] + P[:, j, k, :]) / 2.0
    P[P < 0.01] = 0.01
    hp = int(pad_size / 2)
    P[:, : lmax - pad_size, : lmax - pad_size, :] = P[:, hp : lmax - hp, hp : lmax - hp, :]
    Y[:, : lmax - pad_size, : lmax - pad_size, :] = Y[:, hp : lmax - hp, hp : lmax - hp, :]
    res = np.zeros(len(P))
    for i in range(len(P)):
        L = lengths[i]
        pavg = np.full((L, L), 100.0)
        for j in range(L):
            for k in range(j, L):
                pavg[j, k] = (P[i, k, j, 0] + P[i, j, k, 0]) / 2.0
        y, p = Y[i, :L, :L, 0].copy(), pavg.copy()
        for a in range(L):
            for b in range(L):
                if b - a < 24 or y[a, b] > 8:
                    y[a, b] = p[a, b] = np.nan
        res[i] = np.nanmean(np.abs(y - p)) if not np.isnan(np.abs(y - p)).all() else np.nan
    return np.nanmean(res)


def test_mae8_matches_reference_transcription_on_symmetric_predictions():
    rng = np.random.default_rng(0)
    lmax, pad, n = 64, 10, 3
    lengths = [30, 54, 41]
    out = rng.uniform(-1, 20, (n, 1, lmax, lmax))
    out = (out + out.transpose(0, 1, 3, 2)) / 2  # symmetric: the reference's ¾/¼ mix is moot
    tgt = np.full((n, 1, lmax, lmax), 100.0)
    for i, L in enumerate(lengths):
        d = rng.uniform(1, 14, (L, L))
        tgt[i, 0, 5 : 5 + L, 5 : 5 + L] = (d + d.T) / 2
    want = _reference_psicov_mae(out, tgt, lengths, lmax, pad)
    assert metrics.mae8(out, tgt, np.array(lengths), pad=pad) == pytest.approx(want, rel=1e-12)


def test_mae8_rejects_length_beyond_canvas():
    with pytest.raises(ValueError, match="length"):
        metrics.mae8(np.zeros((1, 1, 20, 20)), np.zeros((1, 1, 20, 20)), np.array([16]))
