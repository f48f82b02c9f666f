"""Benchmark metrics on a whole split (numpy, host side). Every metric is lower-is-better.

Metrics take the model outputs and targets of *all* examples of a split at once: per-chunk
averages are wrong for AUROC/mAP/F1 (spec/orca.md §8.3).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


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


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "error": error_rate,
    "relative_l2": relative_l2,
    "nrmse": nrmse,
    "rmse": rmse,
}


def get(name: str) -> Callable[[np.ndarray, np.ndarray], float]:
    """Looks up a metric by its config name."""
    if name not in METRICS:
        raise ValueError(f"metric {name!r} unknown; expected one of {sorted(METRICS)}")
    return METRICS[name]
