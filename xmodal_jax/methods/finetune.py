"""Plain fine-tuning and the ORCA recipe (embedder alignment with the body frozen, then all).

Alignment objectives on mean-over-tokens features of the *target embedder* vs the frozen
*source embedder* (spec/orca.md §4):

- ``task``: warm up the embedder (and head) on the task loss with the body frozen;
- ``otdd``: label-aware optimal-transport dataset distance (debiased entropic Sinkhorn with ott-jax;
  the label-to-label cost is the OT distance between class point clouds);
- ``mmd``: multi-kernel Gaussian MMD (no labels).

Targets without classes get k-means pseudo-labels (k = 10) on flattened labels, computed once.
The reference takes one optimiser step per epoch over per-class OTDD gradients; we step on
mini-batches of target and source features (same objective, mini-batch estimator).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xmodal_jax import losses
from xmodal_jax.data.augment import augment
from xmodal_jax.methods.base import Context, Method, Stage
from xmodal_jax.models.crossmodal import apply
from xmodal_jax.models.heads import masked_mean

Array = jax.Array
OBJECTIVES = ("task", "otdd", "mmd")


# --- objectives -----------------------------------------------------------------------------------


def sq_dists(x: Array, y: Array) -> Array:
    """Pairwise squared Euclidean distances ``[N, M]``."""
    return (jnp.sum(x * x, -1)[:, None] + jnp.sum(y * y, -1)[None, :] - 2.0 * x @ y.T).clip(min=0.0)


def entropic_ot(cost: Array, a: Array, b: Array, epsilon: float) -> Array:
    """Entropy-regularised OT cost ⟨P, C⟩ + ε·KL for marginals ``a``, ``b`` (Sinkhorn, ott-jax).

    ``epsilon`` is relative to the mean cost, so the objective is scale-free across bodies.
    """
    # ott-jax is needed by the OTDD alignment only; imported here so the plain training step
    # runs without it (bench/device_check.sh on an accelerator host that lacks it).
    from ott.geometry import geometry
    from ott.solvers import linear

    geom = geometry.Geometry(cost_matrix=cost, epsilon=epsilon, relative_epsilon="mean")
    return linear.solve(geom, a=a, b=b).reg_ot_cost


def _class_weights(labels: Array, num_classes: int) -> Array:
    """Column c: the normalised indicator of class c ([N, K]); empty classes get uniform weights."""
    onehot = jax.nn.one_hot(labels, num_classes)
    counts = onehot.sum(0)
    uniform = jnp.full_like(onehot, 1.0 / onehot.shape[0])
    return jnp.where(counts > 0, onehot / jnp.maximum(counts, 1.0), uniform)


def label_distances(
    xa: Array, ya: Array, ka: int, xb: Array, yb: Array, kb: int, epsilon: float
) -> Array:
    """``[ka, kb]`` OT distances between the class-conditional point clouds of two datasets.

    Every pair shares the cost matrix of all points; only the marginals differ, so all ``ka·kb``
    Sinkhorn problems run as one vmap. Absent classes get a value that is never used.
    """
    cost = sq_dists(xa, xb)
    wa, wb = _class_weights(ya, ka), _class_weights(yb, kb)

    def one(a, b):
        return entropic_ot(cost, a, b, epsilon)

    return jax.vmap(lambda a: jax.vmap(lambda b: one(a, b))(wb.T))(wa.T)


def _otdd(xa, ya, ka, xb, yb, kb, epsilon):
    w = label_distances(xa, ya, ka, xb, yb, kb, epsilon)
    cost = sq_dists(xa, xb) + w[ya][:, yb]
    ua = jnp.full(xa.shape[0], 1.0 / xa.shape[0])
    ub = jnp.full(xb.shape[0], 1.0 / xb.shape[0])
    return entropic_ot(cost, ua, ub, epsilon)


def otdd(
    xt: Array,
    yt: Array,
    num_target_classes: int,
    xs: Array,
    ys: Array,
    num_source_classes: int,
    *,
    epsilon: float = 0.1,
    debiased: bool = True,
) -> Array:
    """Label-aware OT dataset distance between (xt, yt) and (xs, ys) (Alvarez-Melis & Fusi).

    Ground cost between labelled points: ‖x−x'‖² + W(y, y')², W the OT distance between the two
    class clouds. ``debiased`` subtracts the self-terms (Sinkhorn divergence), so identical
    datasets are at distance 0.
    """
    d = _otdd(xt, yt, num_target_classes, xs, ys, num_source_classes, epsilon)
    if debiased:
        d_tt = _otdd(xt, yt, num_target_classes, xt, yt, num_target_classes, epsilon)
        d_ss = _otdd(xs, ys, num_source_classes, xs, ys, num_source_classes, epsilon)
        d = d - 0.5 * (d_tt + d_ss)
    return d


def mmd(x: Array, y: Array, num_kernels: int = 5, multiplier: float = 2.0) -> Array:
    """Multi-kernel Gaussian MMD² (bandwidths ``base·multiplier^k`` around the mean distance)."""
    z = jnp.concatenate([x, y])
    d = sq_dists(z, z)
    n = z.shape[0]
    base = jax.lax.stop_gradient(d.sum() / (n * n - n)) / multiplier ** (num_kernels // 2)
    k = sum(jnp.exp(-d / (base * multiplier**i)) for i in range(num_kernels))
    nx = x.shape[0]
    return k[:nx, :nx].mean() + k[nx:, nx:].mean() - 2.0 * k[:nx, nx:].mean()


def kmeans_pseudo_labels(targets: np.ndarray, k: int = 10, seed: int = 0) -> np.ndarray:
    """k-means cluster ids of flattened targets: classes for dense/regression alignment."""
    from ott.tools import k_means

    flat = jnp.asarray(np.reshape(targets, (len(targets), -1)), jnp.float32)
    out = k_means.k_means(flat, min(k, len(flat)), rng=jax.random.key(seed))
    return np.asarray(out.assignment, np.int32)


# --- stages ---------------------------------------------------------------------------------------


def task_loss_fn(ctx: Context, *, shift: float = 0.0, noise: float = 0.0):
    """``(params, batch, rng) → (loss, metrics)`` for the task loss on ``batch["x"], ["y"]``.

    ``shift`` / ``noise`` > 0 train on one random view of the batch per step
    (:func:`xmodal_jax.data.augment.augment`, no flip: a mirrored digit or series is another
    input), drawn from the step's ``rng``; 0 / 0 leaves the inputs and the step untouched.
    """
    task = ctx.task
    loss = losses.get(task.loss)
    augmented = shift > 0 or noise > 0

    def fn(params, batch, rng):
        x = batch["x"]
        if augmented:
            x = augment(rng, x, shift=shift, noise=noise, flip=False)
        out = ctx.decode(apply(ctx.graphdef, params, x))
        extras = {k: batch[k] for k in task.loss_extras}
        value = loss(out, batch["y"], batch.get("_valid"), **task.loss_kwargs, **extras)
        return value, {"task_loss": value}

    return fn


def task_stage(name: str, cfg: Any, ctx: Context) -> Stage:
    """Supervised training on the task (plain fine-tuning, or ORCA's final stage), optionally on
    augmented views (``aug_shift``, ``aug_noise``)."""
    loss_fn = task_loss_fn(ctx, shift=float(cfg.aug_shift), noise=float(cfg.aug_noise))
    return Stage(
        name=name,
        trainable=tuple(cfg.trainable),
        datasets={"": ctx.splits["train"]},
        loss_fn=loss_fn,
    )


def align_stage(name: str, cfg: Any, ctx: Context) -> Stage:
    """ORCA stage 1: train the target embedder to match the source modality (body frozen)."""
    objective = cfg.objective
    if objective not in OBJECTIVES:
        raise ValueError(f"stages.{name}.objective={objective!r}; expected one of {OBJECTIVES}")
    if objective == "task":
        return Stage(
            name,
            tuple(cfg.trainable),
            {"": ctx.splits["train"]},
            loss_fn=task_loss_fn(ctx),
        )
    if ctx.source_features is None:
        raise ValueError(
            f"stages.{name}: objective {objective!r} needs source data (config.source)"
        )
    train = dict(ctx.splits["train"])
    if ctx.task.classes:
        train["y_align"] = train["y"].astype(np.int32)
        k_t = ctx.task.spec.num_outputs
    else:
        k_t = int(cfg.get("pseudo_label_k", 10))
        train["y_align"] = kmeans_pseudo_labels(train["y"], k_t, seed=ctx.config.seed)
    source = {"feats": ctx.source_features, "y": ctx.source["y"]}
    k_s = int(np.max(ctx.source["y"])) + 1
    eps = float(cfg.get("otdd_epsilon", 0.1))

    def loss_fn(params, batch, rng):
        del rng
        feats_t = masked_mean(apply(ctx.graphdef, params, batch["x"], method="embed"), None)
        feats_s = batch["src_feats"]
        if objective == "otdd":
            value = otdd(feats_t, batch["y_align"], k_t, feats_s, batch["src_y"], k_s, epsilon=eps)
        else:
            value = mmd(feats_t, feats_s)
        return value, {f"{objective}": value}

    return Stage(
        name,
        tuple(cfg.trainable),
        {"": train, "src_": source},
        loss_fn=loss_fn,
    )


# The stage keys of fine-tuning and embedder alignment (besides the trainer's own).
STAGE_DEFAULTS = dict(
    objective="task",  # align stages: task | otdd | mmd
    otdd_epsilon=0.1,
    pseudo_label_k=10,
    # Task stages: train on a random view per step (data.augment: a shift of up to aug_shift × L
    # samples / × H, W pixels, Gaussian noise of aug_noise × the example's std); 0 = off.
    aug_shift=0.0,
    aug_noise=0.0,
)

METHOD = Method(
    name="finetune",
    stage_kinds={"task": task_stage, "align": align_stage},
    defaults=STAGE_DEFAULTS,
    ranges=(
        ("otdd_epsilon", 0.0, None, False),
        ("aug_shift", 0.0, 0.5, True),
        ("aug_noise", 0.0, None, True),
    ),
)
