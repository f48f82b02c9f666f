"""Task losses: pure functions ``(outputs, targets, weights=None) → scalar``, jittable.

``weights`` (``[B]``, 0/1) drops padded rows; every loss is a weighted mean over examples unless
its docstring says otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

Array = jax.Array


def _mean(per_example: Array, weights: Array | None) -> Array:
    if weights is None:
        return per_example.mean()
    return (per_example * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def cross_entropy(logits: Array, labels: Array, weights: Array | None = None) -> Array:
    """Softmax cross-entropy with integer labels ``[B]``."""
    per = optax.softmax_cross_entropy_with_integer_labels(logits, labels.astype(jnp.int32))
    return _mean(per, weights)


def bce_with_logits(
    logits: Array,
    targets: Array,
    weights: Array | None = None,
    pos_weight: float = 1.0,
    ignore: Array | None = None,
) -> Array:
    """Binary cross-entropy on logits (PyTorch ``BCEWithLogitsLoss`` with ``pos_weight``).

    Multi-label vectors and dense masks alike; elements where ``ignore`` is 1 (Cosmic's ignore
    mask) are left out of each example's mean.
    """
    targets = targets.astype(logits.dtype)
    log_p, log_not_p = jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)
    per = -(pos_weight * targets * log_p + (1.0 - targets) * log_not_p)
    per = per.reshape(per.shape[0], -1)
    if ignore is None:
        return _mean(per.mean(-1), weights)
    keep = 1.0 - ignore.reshape(per.shape).astype(per.dtype)
    return _mean((per * keep).sum(-1) / jnp.maximum(keep.sum(-1), 1.0), weights)


def mse(outputs: Array, targets: Array, weights: Array | None = None) -> Array:
    """Mean squared error, averaged over all non-batch elements then over examples."""
    per = jnp.square(outputs - targets.astype(outputs.dtype))
    return _mean(per.reshape(per.shape[0], -1).mean(-1), weights)


def relative_l2(outputs: Array, targets: Array, weights: Array | None = None) -> Array:
    """Mean over examples of ‖ŷ−y‖₂/‖y‖₂ (the reference's LpLoss, averaged, not summed)."""
    b = outputs.shape[0]
    diff = jnp.linalg.norm((outputs - targets).reshape(b, -1), axis=-1)
    ref = jnp.linalg.norm(targets.reshape(b, -1).astype(outputs.dtype), axis=-1)
    return _mean(diff / jnp.maximum(ref, 1e-12), weights)


def nrmse(outputs: Array, targets: Array, weights: Array | None = None) -> Array:
    """Mean over examples of RMSE(ŷ−y)/RMS(y) (PDEBench's nRMSE)."""
    b = outputs.shape[0]
    err = jnp.sqrt(jnp.mean(jnp.square(outputs - targets).reshape(b, -1), axis=-1))
    ref = jnp.sqrt(jnp.mean(jnp.square(targets.astype(outputs.dtype)).reshape(b, -1), axis=-1))
    return _mean(err / jnp.maximum(ref, 1e-12), weights)


def rmse(outputs: Array, targets: Array, weights: Array | None = None) -> Array:
    """Mean over examples of each example's RMSE (the reference's PDE ``rmse_loss``)."""
    b = outputs.shape[0]
    per = jnp.sqrt(jnp.mean(jnp.square(outputs - targets).reshape(b, -1), axis=-1))
    return _mean(per, weights)


LOSSES: dict[str, Callable[..., Array]] = {
    "ce": cross_entropy,
    "bce": bce_with_logits,
    "mse": mse,
    "relative_l2": relative_l2,
    "nrmse": nrmse,
    "rmse": rmse,
}


def get(name: str) -> Callable[..., Array]:
    """Looks up a loss by its config name."""
    if name not in LOSSES:
        raise ValueError(f"loss {name!r} unknown; expected one of {sorted(LOSSES)}")
    return LOSSES[name]
