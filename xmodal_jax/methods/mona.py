"""MoNA: meta-learned modality-knowledge alignment of the target embedder (spec/mona.md).

One meta-step, for target batch B_t and class-balanced source batch B_s:

    θ'   = θ − S ∇_θ L_in(φ, θ, ψ; B_t)                       (K virtual steps, discarded; S =
                                                              α/RMS(∇θ) per leaf by default,
                                                              an Adam-sized step; α for sgd)
    J    = L_in(φ, θ, ψ; B_t) + λ · L_out(θ'(φ, ψ); B_s)      (alignment + uniformity of the
                                                              source features under g_θ')
    (φ, ψ) ← optimiser(∇_{φ,ψ} J)

``meta_grad="exact"`` differentiates J with ``jax.grad`` through the inner ``jax.grad``
(reverse-over-reverse, exact second order). ``"first_order"`` replaces the mixed second derivative
by a central finite difference of ∇_{φ,ψ}L_in along g' = ∇_θ L_out(θ') (DARTS), ``"taylor"``
evaluates g at θ instead of θ'. Everything here is a pure function of plain params pytrees.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

from xmodal_jax import paths
from xmodal_jax.methods.base import Context, Method, Stage
from xmodal_jax.methods.finetune import task_loss_fn
from xmodal_jax.models.crossmodal import apply
from xmodal_jax.models.source import SOURCE_KEYS

Array = jax.Array
Params = dict[str, Any]
META_GRADS = ("exact", "first_order", "taylor")
META_GROUPS = ("embedder", "head")  # what the meta-step trains; θ stays fixed (spec §4.2)


def inner_mask(body: Params, pattern: str) -> Params:
    """1.0 for body leaves whose path below the body (``layers/1/…``, :mod:`xmodal_jax.paths`)
    ``pattern`` searches: the inner-step subset."""
    rx = re.compile(pattern)
    return paths.map_paths(lambda p, _: 1.0 if paths.matches(rx, p, "search") else 0.0, body)


INNER_RULES = ("rms", "sgd")


def step_scale(grads: list[Array], alpha: float, rule: str) -> list[Array]:
    """Per-leaf step sizes of the virtual step: ``α`` (``sgd``), or ``α / RMS(g)`` (``rms``).

    ``rms`` makes every leaf's displacement RMS ``α``: the size of an Adam/AdamW update at
    learning rate ``α`` (whose first step is ``α·sign(g)``), so with ``α`` = the fine-tune lr the
    virtual step moves θ as far as the fine-tuning it simulates. Plain SGD at that lr moves it
    ~10³× less on a BERT body (its gradients are ~1e-3 per weight), which makes the meta term
    vanish. The scale is differentiated like the rest of the step, so ``exact`` is the exact
    meta-gradient of this step rule (the finite-difference surrogates hold it constant).
    """
    if rule == "sgd":
        return [jnp.asarray(alpha, g.dtype) for g in grads]
    if rule != "rms":
        raise ValueError(f"inner_rule={rule!r}; expected one of {INNER_RULES}")
    return [alpha / jnp.maximum(jnp.sqrt(jnp.mean(jnp.square(g))), 1e-12) for g in grads]


def _inner_steps(
    loss_fn: Callable,
    params: Params,
    batch: dict,
    rng: Array,
    *,
    alpha: float,
    steps: int,
    mask: Params | None,
    rule: str,
    outer: Params | None = None,
) -> tuple[Params, Array | None, Params | None]:
    """θ' after ``steps`` virtual steps; with ``outer`` (groups of ``params``, e.g. (φ, ψ)) also
    the first step's loss and its gradient w.r.t. ``outer``, from the same backward pass."""
    flat = traverse_util.flatten_dict(params["body"])
    # Differentiate only the selected leaves: a 0/1 mask multiplying a full body gradient would
    # still make XLA compute every weight gradient (0·g is not 0 for NaN, so it cannot drop it).
    chosen = [k for k in flat if mask is None or traverse_util.flatten_dict(mask)[k]]
    loss0 = grad0 = None
    for k in range(steps):
        rest = {key: v for key, v in flat.items() if key not in chosen}

        def loss_of(sel, groups, k=k, rest=rest):
            body = traverse_util.unflatten_dict({**rest, **dict(zip(chosen, sel, strict=True))})
            return loss_fn({**params, **groups, "body": body}, batch, jax.random.fold_in(rng, k))[0]

        sel = [flat[key] for key in chosen]
        if k == 0 and outer is not None:
            loss0, (grads, grad0) = jax.value_and_grad(loss_of, argnums=(0, 1))(sel, outer)
        else:
            grads = jax.grad(loss_of)(sel, {})
        scale = step_scale(grads, alpha, rule)
        flat = {
            **flat,
            **{key: p - c * g for key, p, g, c in zip(chosen, sel, grads, scale, strict=True)},
        }
    return traverse_util.unflatten_dict(flat), loss0, grad0


def inner_update(
    loss_fn: Callable,
    params: Params,
    batch: dict,
    rng: Array,
    *,
    alpha: float,
    steps: int = 1,
    mask: Params | None = None,
    rule: str = "sgd",
) -> Params:
    """θ' after ``steps`` virtual steps of the body on the target loss (differentiable).

    ``rule``: ``sgd`` (θ − α∇θ, the spec's step) or ``rms`` (θ − α∇θ/RMS(∇θ) per leaf,
    :func:`step_scale`). ``mask`` (from :func:`inner_mask`) restricts the step to a subset of
    body leaves; the rest keep θ. The result is differentiable w.r.t. every other group.
    """
    return _inner_steps(
        loss_fn, params, batch, rng, alpha=alpha, steps=steps, mask=mask, rule=rule
    )[0]


def alignment_uniformity(z: Array, labels: Array, t: float = 2.0) -> tuple[Array, Array]:
    """Wang & Isola's losses on ℓ2-normalised features ``z`` ``[N, D]``.

    Alignment: mean squared distance over same-class pairs i ≠ j (0 if there are none).
    Uniformity: log of the mean over i ≠ j of exp(−t·‖z_i − z_j‖²).
    """
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
    d = jnp.sum(jnp.square(z[:, None, :] - z[None, :, :]), axis=-1)
    off = 1.0 - jnp.eye(z.shape[0], dtype=z.dtype)
    pos = (labels[:, None] == labels[None, :]).astype(z.dtype) * off
    align = jnp.sum(d * pos) / jnp.maximum(jnp.sum(pos), 1.0)
    # log-mean-exp over off-diagonal pairs, stably.
    logits = jnp.where(off > 0, -t * d, -jnp.inf)
    unif = jax.nn.logsumexp(logits) - jnp.log(jnp.sum(off))
    return align, unif


def source_features(graphdef: Any, params: Params, source: dict) -> Array:
    """Mean-pooled body features of a source batch through the frozen source embedder
    (``CrossModalModel.pooled_source_features``: token ids, images or precomputed tokens)."""
    return apply(graphdef, params, source, method="pooled_source_features")


def outer_loss(graphdef: Any, params: Params, source: dict, t: float = 2.0) -> Array:
    """L_out = alignment + uniformity of the source features under ``params["body"]``."""
    align, unif = alignment_uniformity(source_features(graphdef, params, source), source["y"], t)
    return align + unif


def meta_objective(
    trainable: Params,
    params: Params,
    target: dict,
    source: dict,
    rng: Array,
    *,
    graphdef: Any,
    loss_fn: Callable,
    alpha: float,
    lam: float,
    steps: int = 1,
    mask: Params | None = None,
    t: float = 2.0,
    rule: str = "sgd",
) -> tuple[Array, dict]:
    """J(φ, ψ) = L_in + λ·L_out(θ'(φ, ψ)): a pure function of the trainable groups."""
    p = {**params, **trainable}
    l_in = loss_fn(p, target, rng)[0]
    body = inner_update(loss_fn, p, target, rng, alpha=alpha, steps=steps, mask=mask, rule=rule)
    l_out = outer_loss(graphdef, {**p, "body": body}, source, t)
    return l_in + lam * l_out, {"inner_loss": l_in, "outer_loss": l_out}


def _norm(tree: Any) -> Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def _diagnostics(direct: Params, meta: Params, l_out_new: Array, l_out_old: Array) -> dict:
    """``mona/meta_share`` = ‖λ·meta term‖ / ‖direct term‖ on (φ, ψ), and
    ``mona/source_loss_delta`` = L_out(θ') − L_out(θ): whether the meta term has any weight in
    the update, and whether the simulated fine-tuning moves the source features at all."""
    return {
        "mona/meta_share": _norm(meta) / jnp.maximum(_norm(direct), 1e-30),
        "mona/source_loss_delta": l_out_new - l_out_old,
    }


def meta_grad(
    trainable: Params,
    params: Params,
    target: dict,
    source: dict,
    rng: Array,
    *,
    mode: str = "exact",
    fd_epsilon: float = 0.01,
    **kw: Any,
) -> tuple[Array, dict, Params]:
    """``(J, aux, ∇_{trainable} J)`` by the exact meta-gradient or a first-order surrogate.

    ``exact``: ``jax.grad`` of λ·L_out(θ'(φ, ψ)) through the inner ``jax.grad``; the direct term
    ∇L_in comes out of the inner step's own backward pass. ``first_order``: ∇J ≈ ∇L_in(θ) −
    λ[∇L_in(θ + εd) − ∇L_in(θ − εd)]/(2ε) with d = S·g', g' = ∇_θ L_out(θ'), S the inner step's
    per-leaf step sizes (α for ``sgd``), ε = fd_epsilon/‖d‖ (K = 1). ``taylor``: the same with
    g' at θ (both hold S constant). ``aux`` carries the losses and :func:`_diagnostics`.
    """
    graphdef, loss_fn = kw["graphdef"], kw["loss_fn"]
    alpha, lam, mask, t = kw["alpha"], kw["lam"], kw.get("mask"), kw.get("t", 2.0)
    rule, steps = kw.get("rule", "sgd"), kw.get("steps", 1)
    p = {**params, **trainable}
    l_out_theta = jax.lax.stop_gradient(outer_loss(graphdef, p, source, t))
    if mode == "exact":

        def meta_part(tr):
            q = {**params, **tr}
            body, l_in, direct = _inner_steps(
                loss_fn, q, target, rng, alpha=alpha, steps=steps, mask=mask, rule=rule, outer=tr
            )
            l_out = outer_loss(graphdef, {**q, "body": body}, source, t)
            return lam * l_out, (l_in, l_out, direct)

        (value, (l_in, l_out, direct)), meta = jax.value_and_grad(meta_part, has_aux=True)(
            trainable
        )
        grads = jax.tree.map(jnp.add, direct, meta)
        aux = {
            "inner_loss": l_in,
            "outer_loss": l_out,
            **_diagnostics(direct, meta, l_out, l_out_theta),
        }
        return l_in + value, aux, grads
    if mode not in META_GRADS:
        raise ValueError(f"meta_grad={mode!r}; expected one of {META_GRADS}")

    def l_in_of(tr, body):
        return loss_fn({**p, **tr, "body": body}, target, rng)[0]

    # One backward pass gives both the direct term and the inner step's body gradient.
    l_in, (g_direct, g_body) = jax.value_and_grad(l_in_of, argnums=(0, 1))(trainable, p["body"])
    scale_of = mask if mask is not None else jax.tree.map(lambda _: 1.0, g_body)
    flat_g = jax.tree.leaves(g_body)
    sizes = jax.tree.unflatten(jax.tree.structure(g_body), step_scale(flat_g, alpha, rule))
    scale = jax.tree.map(  # the inner step's S (mask included), a constant of the surrogate
        lambda c, m: jax.lax.stop_gradient(c) * m, sizes, scale_of
    )
    body_new = jax.tree.map(lambda b, g, c: b - c * g, p["body"], g_body, scale)
    body_at = body_new if mode == "first_order" else p["body"]
    l_out, g_out = jax.value_and_grad(lambda b: outer_loss(graphdef, {**p, "body": b}, source, t))(
        jax.lax.stop_gradient(body_at)
    )
    d = jax.tree.map(lambda g, c: g * c, g_out, scale)
    eps = fd_epsilon / jnp.maximum(_norm(d), 1e-12)
    plus = jax.tree.map(lambda b, v: b + eps * v, p["body"], d)
    minus = jax.tree.map(lambda b, v: b - eps * v, p["body"], d)
    g_plus = jax.grad(l_in_of)(trainable, plus)
    g_minus = jax.grad(l_in_of)(trainable, minus)
    meta = jax.tree.map(lambda a, b: -lam * (a - b) / (2.0 * eps), g_plus, g_minus)
    grads = jax.tree.map(jnp.add, g_direct, meta)
    if mode == "taylor":  # L_out(θ') for the diagnostic only
        l_out_new = outer_loss(graphdef, {**p, "body": jax.lax.stop_gradient(body_new)}, source, t)
    else:
        l_out_new = l_out
    aux = {
        "inner_loss": l_in,
        "outer_loss": l_out,
        **_diagnostics(g_direct, meta, l_out_new, l_out_theta),
    }
    return l_in + lam * l_out, aux, grads


def mona_stage(name: str, cfg: Any, ctx: Context) -> Stage:
    """The MoNA meta-alignment stage: (φ, ψ) trained by the meta-gradient, θ fixed."""
    if ctx.source is None:
        raise ValueError(f"stages.{name}: MoNA needs labelled source data (config.source)")
    trainable = tuple(g for g in cfg.trainable if g in META_GROUPS)
    if set(cfg.trainable) - set(META_GROUPS):
        raise ValueError(
            f"stages.{name}.trainable={list(cfg.trainable)}: the MoNA stage trains only "
            f"{META_GROUPS} (the body is the inner-step variable, fixed between meta-steps)"
        )
    loss_fn = task_loss_fn(ctx)
    if cfg.get("remat", False):
        loss_fn = jax.checkpoint(loss_fn)
    mode = cfg.meta_grad
    steps = int(cfg.inner_steps)
    if mode != "exact" and steps != 1:
        raise ValueError(f"stages.{name}: meta_grad={mode!r} is defined for inner_steps=1 only")
    source = {k: v for k, v in ctx.source.items() if k in (*SOURCE_KEYS, "y")}
    kw = dict(
        graphdef=ctx.graphdef,
        loss_fn=loss_fn,
        alpha=float(cfg.inner_lr),
        lam=float(cfg.meta_lambda),
        steps=steps,
        t=float(cfg.uniformity_t),
        rule=cfg.get("inner_rule", "rms"),
    )
    pattern = cfg.inner_params

    def grad_fn(params, batch, rng):
        target = {k: v for k, v in batch.items() if not k.startswith("src_")}
        src = {k[len("src_") :]: v for k, v in batch.items() if k.startswith("src_")}
        mask = None if pattern in ("", ".*") else inner_mask(params["body"], pattern)
        tr = {g: params[g] for g in trainable if g in params}
        value, aux, grads = meta_grad(
            tr,
            params,
            target,
            src,
            rng,
            mode=mode,
            fd_epsilon=float(cfg.fd_epsilon),
            mask=mask,
            **kw,
        )
        full = {
            g: grads[g] if g in grads else jax.tree.map(jnp.zeros_like, p)
            for g, p in params.items()
        }
        return value, aux, full

    return Stage(
        name,
        trainable,
        {"": ctx.splits["train"], "src_": source},
        grad_fn=grad_fn,
        balanced=("src_",),
    )


def source_retention(features: Any, labels: Any, seed: int = 0) -> dict[str, float]:
    """How well the body still organises the source data: the MoNA paper's two diagnostics.

    ``probe_acc``: test accuracy of a logistic-regression probe on the (standardised) features,
    70/30 stratified split; ``davies_bouldin``: the Davies–Bouldin index of the features by
    class (lower = tighter, better-separated classes). Host-side (scikit-learn), run per eval.
    """
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import davies_bouldin_score
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = np.asarray(features, np.float64), np.asarray(labels)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.3, stratify=y, random_state=seed)
    scaler = StandardScaler().fit(x_tr)
    probe = LogisticRegression(max_iter=1000).fit(scaler.transform(x_tr), y_tr)
    return {
        "probe_acc": float(probe.score(scaler.transform(x_te), y_te)),
        "davies_bouldin": float(davies_bouldin_score(x, y)),
    }


# MoNA's stage keys (spec/mona.md).
STAGE_DEFAULTS = dict(
    # MoNA (kind="mona"): θ' = θ − inner_lr·∇θ L_in, inner_steps times, on the body leaves
    # whose path below the body (xmodal_jax.paths) inner_params searches; J = L_in +
    # meta_lambda·(align + uniformity(t)).
    inner_lr=1e-4,
    # rms: per-leaf step α/RMS(∇θ), the size of an Adam step at lr α (the fine-tuning it
    # simulates); sgd: θ − α∇θ as the spec writes it (≈10³× smaller on a BERT body).
    inner_rule="rms",
    inner_steps=1,
    inner_params=".*",
    meta_lambda=0.4,
    meta_grad="exact",  # exact | first_order | taylor
    uniformity_t=2.0,
    fd_epsilon=0.01,
)


def check_stage(get: Callable[[str], Any], where: str) -> list[str]:
    """MoNA's cross-key checks: a known meta-gradient and inner rule (the stop-gradient variant
    is rejected with the reason)."""
    errors = []
    if get("meta_grad") in ("stop_gradient", "fomaml"):
        errors.append(
            f"{where}meta_grad: {get('meta_grad')!r} is rejected: stopping the gradient "
            "through the inner step makes L_out(θ') independent of the embedder, so the meta "
            "term is identically zero; use exact, first_order (finite differences) or taylor"
        )
    elif get("meta_grad") not in META_GRADS:
        errors.append(f"{where}meta_grad: {get('meta_grad')!r} not in exact|first_order|taylor")
    if get("inner_rule") not in INNER_RULES:
        errors.append(f"{where}inner_rule: {get('inner_rule')!r} not in {INNER_RULES}")
    return errors


METHOD = Method(
    name="mona",
    stage_kinds={"mona": mona_stage},
    defaults=STAGE_DEFAULTS,
    ranges=(
        ("inner_lr", 0.0, None, False),
        ("inner_steps", 1, None, True),
        ("meta_lambda", 0.0, None, True),
        ("fd_epsilon", 0.0, None, False),
        ("uniformity_t", 0.0, None, False),
    ),
    check=check_stage,
)
