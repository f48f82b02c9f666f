"""Benchmark metrics on a whole split (numpy, host side). Every metric is lower-is-better.

Metrics take the model outputs and targets of *all* examples of a split at once: per-chunk
averages are wrong for AUROC/mAP/F1 (spec/orca.md §8.3). The trainer calls
``get(task.metric)(outputs, targets, **extras)``, where ``extras`` are the split fields the task
lists in ``Task.metric_extras``: ``length`` (PSICOV), ``ignore`` (Cosmic), ``clip`` (FSD50K).

Rank metrics (AUROC, average precision) are computed on logits, not on sigmoid scores. The
sigmoid is strictly increasing, so both give the same ranking and the same value, except that a
float32 sigmoid saturates (every logit above ≈ 17 becomes 1.0) and would invent ties. Ties that
are in the logits themselves get the usual treatment: AUROC counts a tied positive/negative
pair as ½ (sklearn's trapezoidal ROC area), average precision groups tied scores into one
threshold (sklearn's ``average_precision_score``).

Outputs holding NaN or ±inf give NaN: a rank metric would otherwise quietly rank or skip them.
The trainer never selects a NaN validation value (``nan < best`` is false).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import rankdata


def error_rate(logits: np.ndarray, labels: np.ndarray) -> float:
    """0-1 error in percent: 100·(1 − top-1 accuracy)."""
    pred = np.asarray(logits).argmax(-1)
    return float(100.0 * np.mean(pred != np.asarray(labels).reshape(pred.shape)))


def relative_l2(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Mean over examples of ‖ŷ−y‖₂/‖y‖₂."""
    b = len(outputs)
    num = np.linalg.norm(np.reshape(outputs - targets, (b, -1)), axis=-1)
    den = np.linalg.norm(np.reshape(targets, (b, -1)), axis=-1)
    return float(np.mean(num / np.maximum(den, 1e-12)))


def nrmse(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Mean over examples of RMSE(ŷ−y)/RMS(y), channels and space flattened."""
    b = len(outputs)
    err = np.sqrt(np.mean(np.reshape(outputs - targets, (b, -1)) ** 2, axis=-1))
    ref = np.sqrt(np.mean(np.reshape(targets, (b, -1)) ** 2, axis=-1))
    return float(np.mean(err / np.maximum(ref, 1e-12)))


def rmse(outputs: np.ndarray, targets: np.ndarray) -> float:
    """Root mean squared error over all elements."""
    return float(np.sqrt(np.mean((np.asarray(outputs) - np.asarray(targets)) ** 2)))


# --- classification -------------------------------------------------------------------------------


def macro_f1_error(logits: np.ndarray, labels: np.ndarray) -> float:
    """1 − macro-F1 of the argmax predictions over classes ``0 … C−1`` (ECG).

    ``C = logits.shape[-1]``. A class with no label and no prediction has F1 0 (sklearn's
    ``f1_score(labels=range(C), average="macro", zero_division=0)``), so it still counts in the
    mean. The reference's ``classification_report`` left such a class out of the mean; on ECG's
    test split all four classes occur, so the two agree there.
    """
    logits = np.asarray(logits)
    c = logits.shape[-1]
    pred = logits.reshape(-1, c).argmax(-1)
    true = np.asarray(labels).reshape(-1).astype(np.int64)
    if len(true) != len(pred):
        raise ValueError(f"{len(pred)} predictions for {len(true)} labels")
    if true.size and (true.min() < 0 or true.max() >= c):
        raise ValueError(f"labels must be in [0, {c}), got range [{true.min()}, {true.max()}]")
    tp = np.bincount(true[pred == true], minlength=c)
    den = np.bincount(pred, minlength=c) + np.bincount(true, minlength=c)  # 2tp + fp + fn
    f1 = np.divide(2.0 * tp, den, out=np.zeros(c), where=den > 0)
    return float(1.0 - f1.mean())


# --- rank metrics ---------------------------------------------------------------------------------


def _as_columns(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in shape")
    scores = scores.reshape(len(scores), -1) if scores.ndim else scores.reshape(1, 1)
    return scores, labels.reshape(scores.shape) > 0.5


def auroc_columns(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """ROC-AUC of every column of ``(N, K)`` scores against binary labels; NaN where undefined.

    Mann–Whitney form with mid-ranks: equals sklearn's ``roc_auc_score`` (ties count ½) and
    needs one sort per column. A column with no positives or no negatives is NaN.
    """
    scores, labels = _as_columns(scores, labels)
    n = len(scores)
    ranks = rankdata(scores, axis=0)  # mid-ranks: a tied pos/neg pair counts ½
    npos = labels.sum(0).astype(np.float64)
    nneg = n - npos
    u = np.where(labels, ranks, 0.0).sum(0) - npos * (npos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = u / (npos * nneg)
    return np.where((npos > 0) & (nneg > 0), auc, np.nan)


def average_precision_columns(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Average precision of every column (sklearn's step-wise definition); NaN without positives.

    AP = Σₙ (Rₙ − Rₙ₋₁)·Pₙ over the distinct score thresholds, high to low. Every positive lies
    in exactly one tie group and raises recall by 1/npos there, so AP is the mean, over the
    positives, of the precision at the end of the positive's tie group.
    """
    scores, labels = _as_columns(scores, labels)
    n = len(scores)
    order = np.argsort(-scores, axis=0, kind="stable")
    s = np.take_along_axis(scores, order, 0)
    y = np.take_along_axis(labels, order, 0)
    tps = np.cumsum(y, axis=0)
    group_end = np.ones(s.shape, bool)
    group_end[:-1] = s[:-1] != s[1:]
    idx = np.broadcast_to(np.arange(n)[:, None], s.shape)
    # Index of the last row of each row's tie group: running minimum from the bottom up.
    end = np.minimum.accumulate(np.where(group_end, idx, n)[::-1], axis=0)[::-1]
    precision_at_end = np.take_along_axis(tps, end, 0) / (end + 1.0)
    npos = y.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(y, precision_at_end, 0.0).sum(0) / npos
    return np.where(npos > 0, ap, np.nan)


def _finite(x: np.ndarray) -> bool:
    return bool(np.isfinite(x).all())


def _nanmean_or_nan(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def auroc_error(logits: np.ndarray, labels: np.ndarray) -> float:
    """1 − mean per-label ROC-AUC (DeepSEA): ``(N, K)`` logits vs ``(N, K)`` multi-hot labels.

    Labels with no positives or no negatives are skipped (the reference's NaN-skipping mean);
    NaN when every label is skipped.
    """
    if not _finite(np.asarray(logits)):
        return float("nan")
    return 1.0 - _nanmean_or_nan(auroc_columns(logits, labels))


def map_error(logits: np.ndarray, labels: np.ndarray) -> float:
    """1 − macro average precision over labels: ``(N, K)`` logits vs multi-hot labels.

    Labels with no positive example are **skipped** (AP is undefined there). sklearn's
    ``average_precision_score(average="macro")``, which the reference calls, instead counts such
    a label as AP 0 with a warning; on FSD50K's eval split every one of the 200 labels occurs,
    so the two agree there, while a small validation split is not penalised for labels it
    happens to lack.
    """
    if not _finite(np.asarray(logits)):
        return float("nan")
    return 1.0 - _nanmean_or_nan(average_precision_columns(logits, labels))


def clip_scores(
    chunk_logits: np.ndarray, targets: np.ndarray, clip: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Groups FSD50K chunks into clips: ``(clip_logits, clip_targets, clip_ids)``.

    A clip's logit vector is the mean of its chunks' logits (spec §6: clip score =
    sigmoid(mean of chunk logits), and the sigmoid does not change a rank metric). A clip's
    target is its chunks' common multi-hot target; chunks of one clip that disagree raise.
    Clips come out in increasing ``clip`` id order, whatever the chunk order.
    """
    chunk_logits = np.asarray(chunk_logits, dtype=np.float64)
    targets = np.asarray(targets)
    clip = np.asarray(clip).reshape(-1)
    n = len(chunk_logits)
    if len(targets) != n or len(clip) != n:
        raise ValueError(f"{n} chunk outputs, {len(targets)} targets and {len(clip)} clip ids")
    ids, inverse = np.unique(clip, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(inverse[order]) != 0])
    counts = np.diff(np.r_[starts, n])
    flat = chunk_logits.reshape(n, -1)[order]
    logits = (np.add.reduceat(flat, starts, axis=0) / counts[:, None]).reshape(
        (len(ids), *chunk_logits.shape[1:])
    )
    t = targets.reshape(n, -1)[order]
    lo, hi = np.minimum.reduceat(t, starts, axis=0), np.maximum.reduceat(t, starts, axis=0)
    if (lo != hi).any():
        bad = ids[np.flatnonzero((lo != hi).any(-1))[0]]
        raise ValueError(f"chunks of clip {bad} have different targets")
    return logits, lo.reshape((len(ids), *targets.shape[1:])), ids


def clip_map_error(outputs: np.ndarray, targets: np.ndarray, clip: np.ndarray) -> float:
    """FSD50K: 1 − mAP over clips, a clip scored by the mean of its chunks' logits.

    ``clip`` is the split's per-chunk clip id (``Task.metric_extras = ("clip",)``); see
    :func:`clip_scores` and :func:`map_error` (labels without positives skipped).
    """
    logits, clip_targets, _ = clip_scores(outputs, targets, clip)
    return map_error(logits, clip_targets)


def pixel_auroc_error(
    outputs: np.ndarray, targets: np.ndarray, ignore: np.ndarray | None = None
) -> float:
    """Cosmic: 1 − AUROC of per-pixel scores (logits) against the cosmic-ray mask.

    All pixels of the split form one ranking. Pixels with ``ignore > 0.5`` are excluded
    (spec §8.5); the reference instead zeroed them and counted them as negatives, see
    :func:`pixel_auroc_error_reference`. NaN when the kept pixels are all of one class.
    """
    outputs = np.asarray(outputs)
    if not _finite(outputs):
        return float("nan")
    scores, labels = _as_columns(outputs, targets)
    keep = np.ones(scores.shape, bool)
    if ignore is not None:
        keep = ~(np.asarray(ignore).reshape(scores.shape) > 0.5)
    return 1.0 - float(auroc_columns(scores[keep], labels[keep])[0])


def pixel_auroc_error_reference(
    outputs: np.ndarray, targets: np.ndarray, ignore: np.ndarray | None = None
) -> float:
    """The reference's Cosmic value, for logging next to :func:`pixel_auroc_error`.

    As sjunhongshen/ORCA computes it: outputs and targets multiplied by ``1 − ignore``, outputs
    binarised at logit > 0, then one ROC-AUC over all pixels (ignored pixels become negatives
    predicted negative). It only measures one operating point, so it is not our metric.
    """
    outputs = np.asarray(outputs, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if ignore is not None:
        keep = 1.0 - np.asarray(ignore, dtype=np.float64).reshape(outputs.shape)
        outputs, targets = outputs * keep, targets.reshape(outputs.shape) * keep
    binary = (outputs > 0).astype(np.float64).reshape(-1, 1)
    return 1.0 - float(auroc_columns(binary, targets.reshape(-1, 1))[0])


# --- PSICOV ---------------------------------------------------------------------------------------

PSICOV_PAD = 10
MAE8_MIN_SEPARATION = 24
MAE8_MAX_DISTANCE = 8.0
MAE8_MIN_PREDICTION = 0.01


def mae8_per_protein(
    outputs: np.ndarray, targets: np.ndarray, length: np.ndarray, *, pad: int = PSICOV_PAD
) -> np.ndarray:
    """Per-protein MAE₈ (NaN where a protein has no qualifying pair); see :func:`mae8`."""
    outputs, targets = np.asarray(outputs), np.asarray(targets)
    if outputs.ndim == 4:
        outputs = outputs[:, 0]
    if targets.ndim == 4:
        targets = targets[:, 0]
    length = np.asarray(length).reshape(-1)
    if outputs.shape != targets.shape or outputs.ndim != 3 or len(length) != len(outputs):
        raise ValueError(
            f"expected (N, [1,] H, W) outputs and targets and N lengths, got {outputs.shape}, "
            f"{targets.shape}, {length.shape}"
        )
    h = pad // 2  # the protein sits at [h, h + L) on both canvas axes
    size = min(outputs.shape[1:])
    out = np.full(len(outputs), np.nan)
    for i, n in enumerate(length.astype(int)):
        if n < 0 or h + n > size:
            raise ValueError(f"protein {i}: length {n} at offset {h} exceeds the {size} canvas")
        p = outputs[i, h : h + n, h : h + n].astype(np.float64)
        y = targets[i, h : h + n, h : h + n].astype(np.float64)
        p = np.maximum((p + p.T) / 2.0, MAE8_MIN_PREDICTION)
        j, k = np.triu_indices(n, MAE8_MIN_SEPARATION)
        yy, pp = y[j, k], p[j, k]
        # A missing distance reaches us as 0 (the loader's nan_to_num) or NaN: never a pair.
        sel = (yy <= MAE8_MAX_DISTANCE) & (yy > 0)
        if sel.any():
            out[i] = np.mean(np.abs(yy[sel] - pp[sel]))
    return out


def mae8(
    outputs: np.ndarray, targets: np.ndarray, length: np.ndarray, *, pad: int = PSICOV_PAD
) -> float:
    """PSICOV MAE₈: mean |distance − prediction| (Å) of long-range contacts, averaged over proteins.

    ``outputs``, ``targets``: ``(N, 1, H, W)`` or ``(N, H, W)`` distance maps on the evaluation
    canvas, protein ``i`` at ``[pad//2, pad//2 + length[i])`` on both axes (the loader's
    layout; the reference shifts the canvas up-left by ``pad//2`` to the same effect). Per
    protein: P ← max((P + Pᵀ)/2, 0.01); mean |Y − P| over pairs j < k with k − j ≥ 24 and
    0 < Y ≤ 8 Å; then a NaN-skipping mean over proteins (NaN if no protein has such a pair).

    The reference averages twice (upper triangle first, then again with the raw lower
    triangle), weighting P_kj by ¾ and P_jk by ¼ for j < k; for symmetric predictions that is
    the same, and we use the plain average the spec prescribes. The reference counts a missing
    (NaN → 0) true distance as a contact; PSICOV has none, and we skip them.
    """
    if not _finite(np.asarray(outputs)):
        return float("nan")
    return _nanmean_or_nan(mae8_per_protein(outputs, targets, length, pad=pad))


METRICS: dict[str, Callable[..., float]] = {
    "error": error_rate,
    "relative_l2": relative_l2,
    "nrmse": nrmse,
    "rmse": rmse,
    "macro_f1_error": macro_f1_error,
    "auroc_error": auroc_error,
    "map_error": map_error,
    "clip_map_error": clip_map_error,
    "pixel_auroc_error": pixel_auroc_error,
    "pixel_auroc_error_reference": pixel_auroc_error_reference,
    "mae8": mae8,
}


def get(name: str) -> Callable[..., float]:
    """Looks up a metric by its config name."""
    if name not in METRICS:
        raise ValueError(f"metric {name!r} unknown; expected one of {sorted(METRICS)}")
    return METRICS[name]
