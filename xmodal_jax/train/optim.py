"""Optimizers, schedules and the train state: which leaves a stage updates, and how."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import flax
import jax
import jax.numpy as jnp
import optax

from xmodal_jax import parallel, paths

if TYPE_CHECKING:  # the step and optimizer import without the data pipeline set-up pulls in
    from xmodal_jax.train.setup import Run


@flax.struct.dataclass
class TrainState:
    """Everything a step changes: the global step, the params and the stage's optimizer state."""

    step: jax.Array
    params: Any
    opt_state: Any


# --- optimizers -----------------------------------------------------------------------------------


def make_schedule(cfg: Any, num_steps: int) -> optax.Schedule:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then constant / linear / cosine to 0.

    The ``linear`` case is ORCA's WarmupLR: factor step/warmup, then (total−step)/(total−warmup),
    clamped at 0.
    """
    lr, warm = float(cfg.lr), int(cfg.warmup_steps)
    if warm == 0 and float(cfg.get("warmup_fraction", 0.0)) > 0:
        warm = round(float(cfg.warmup_fraction) * num_steps)
    decay_steps = max(num_steps - warm, 1)
    if cfg.schedule == "constant":
        decay = optax.constant_schedule(lr)
    elif cfg.schedule == "linear":
        decay = optax.linear_schedule(lr, 0.0, decay_steps)
    else:
        decay = optax.cosine_decay_schedule(lr, decay_steps)
    if warm <= 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), decay], [warm])


def make_optimizer(cfg: Any, params: dict, num_steps: int) -> optax.GradientTransformation:
    """The stage's optimizer over the trainable groups; frozen groups get no state, no update.

    ``weight_decay`` is coupled L2 (added to the gradient, as PyTorch SGD/Adam do) except for
    ``adamw`` (decoupled); clipping is by global norm of the trainable gradient.
    """
    sched = make_schedule(cfg, num_steps)
    wd = float(cfg.weight_decay)
    if cfg.optimizer == "sgd":
        base = optax.sgd(sched, momentum=float(cfg.momentum) or None, nesterov=cfg.nesterov)
    elif cfg.optimizer == "adam":
        base = optax.adam(sched)
    else:
        base = optax.adamw(sched, weight_decay=wd)
    parts = []
    if float(cfg.clip) > 0:
        parts.append(optax.clip_by_global_norm(float(cfg.clip)))
    if wd and cfg.optimizer != "adamw":
        parts.append(optax.add_decayed_weights(wd))
    tx = optax.chain(*parts, base)
    return optax.multi_transform(
        {"train": tx, "frozen": optax.set_to_zero()},
        train_labels(params, tuple(cfg.trainable), cfg.get("freeze", "")),
    )


def train_labels(params: dict, trainable: tuple[str, ...], freeze: str = "") -> dict:
    """``"train"`` / ``"frozen"`` per leaf: the trainable groups minus leaves matching ``freeze``.

    ``freeze`` is a regex searched in the ``group/…/leaf`` path (:mod:`xmodal_jax.paths`; e.g.
    PaRe's Darcy "Wv" recipe freezes ``body/.*attn/(query|key)/``); frozen leaves get no
    optimizer state and no update.
    """
    rx = re.compile(freeze) if freeze else None

    def label(name: str, _: Any) -> str:
        group = name.split("/", 1)[0]
        ok = group in trainable and not (rx is not None and paths.matches(rx, name, "search"))
        return "train" if ok else "frozen"

    return paths.map_paths(label, params)


# --- steps ----------------------------------------------------------------------------------------


def _freeze(params: dict, trainable: tuple[str, ...], freeze: str = "") -> dict:
    # stop_gradient gives symbolic-zero cotangents: XLA never computes frozen weight gradients.
    if freeze:
        labels = train_labels(params, trainable, freeze)
        return jax.tree.map(
            lambda p, lab: p if lab == "train" else jax.lax.stop_gradient(p), params, labels
        )
    return {g: p if g in trainable else jax.lax.stop_gradient(p) for g, p in params.items()}


# --- the loop -------------------------------------------------------------------------------------


def _on_mesh(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Replicates leaves that live outside the mesh (scalars like the step, optimizer counts)."""
    devices = set(mesh.devices.flat)
    rep = parallel.replicated(mesh)
    return jax.tree.map(
        lambda x: x if set(x.sharding.device_set) == devices else jax.device_put(x, rep), tree
    )


def opt_state_shardings(
    tx: optax.GradientTransformation, params: Any, param_shardings: Any, mesh: jax.sharding.Mesh
) -> Any:
    """Shardings of ``tx``'s state: every param-shaped moment shares its param's sharding.

    Why explicit: ``jax.jit(tx.init)`` leaves the moments' placement to the partitioner, and
    ``zeros_like`` does not depend on the param's values, so they came back unsharded (one
    device, then replicated): FSDP params with replicated AdamW moments are not ZeRO-3, and for
    a large body the moments alone overflow each device. Counts and other non-param leaves are
    replicated. Works through ``multi_transform``'s masked states (``optax.tree_map_params``).
    """
    rep = parallel.replicated(mesh)
    return optax.tree_map_params(
        tx,
        # Frozen leaves' masked (empty) states stay MaskedNode: the tree mirrors tx.init's.
        lambda leaf, sharding: leaf if isinstance(leaf, optax.MaskedNode) else sharding,
        jax.eval_shape(tx.init, params),
        param_shardings,
        transform_non_params=lambda _: rep,
        is_leaf=lambda x: isinstance(x, optax.MaskedNode),
    )


def init_state(
    run: Run, tx: optax.GradientTransformation, step: int, params: dict | None = None
) -> TrainState:
    """A train state on the run's mesh: params as given, fresh optimizer state for ``tx``.

    The optimizer state is created sharded like the params (:func:`opt_state_shardings`).
    """
    params = _on_mesh(run.params if params is None else params, run.mesh)
    param_sh = jax.tree.map(lambda x: x.sharding, params)
    opt_sh = opt_state_shardings(tx, params, param_sh, run.mesh)
    opt = jax.jit(tx.init, out_shardings=opt_sh)(params)
    step_arr = jax.device_put(jnp.asarray(step, jnp.int32), parallel.replicated(run.mesh))
    return TrainState(step_arr, params, opt)
