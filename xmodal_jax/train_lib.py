"""The training loop — the only one in the project.

``train(config, workdir)`` runs the stages of ``config.stage_order`` in sequence. Each stage is
contributed by a method (``xmodal_jax.methods.STAGE_KINDS``) and gets its own optimizer
(``optax.multi_transform``: trainable groups updated, the rest ``set_to_zero`` with no state) and
its own jitted, donated step. Validation (carved from train) picks the best checkpoint; the test
split is evaluated once at the end, at the best and at the last step.

Sections (big_vision's linear layout): mesh → input → model → stages → resume → loop → final eval.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import sys
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from xmodal_jax import checkpoint, config_lib, methods, metrics, parallel
from xmodal_jax.data import formats, pipeline, sources, tasks
from xmodal_jax.methods.base import Context, Stage
from xmodal_jax.models import crossmodal, embedders, layers
from xmodal_jax.models.pretrained import Pretrained, load_pretrained


class TrainingDiverged(RuntimeError):
    """A non-finite loss: the run stops; the last checkpoint is the last good one."""


class Preempted(RuntimeError):
    """SIGTERM received: a final checkpoint was written and the run stopped."""


class Stopped(RuntimeError):
    """``config.stop_after`` steps done in this process: checkpoint written, resume to go on."""


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

    ``freeze`` is a regex on the ``group/…/leaf`` path (e.g. PaRe's Darcy "Wv" recipe freezes
    ``body/.*attn/(query|key)/``); frozen leaves get no optimizer state and no update.
    """
    rx = re.compile(freeze) if freeze else None

    def label(path, _):
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        group = name.split("/", 1)[0]
        ok = group in trainable and not (rx is not None and rx.search(name))
        return "train" if ok else "frozen"

    return jax.tree_util.tree_map_with_path(label, params)


# --- steps ----------------------------------------------------------------------------------------


def _freeze(params: dict, trainable: tuple[str, ...], freeze: str = "") -> dict:
    # stop_gradient gives symbolic-zero cotangents: XLA never computes frozen weight gradients.
    if freeze:
        labels = train_labels(params, trainable, freeze)
        return jax.tree.map(
            lambda p, lab: p if lab == "train" else jax.lax.stop_gradient(p), params, labels
        )
    return {g: p if g in trainable else jax.lax.stop_gradient(p) for g, p in params.items()}


def grad_fn_of(stage: Stage, freeze: str = ""):
    """The stage's ``(params, batch, rng, step) → (loss, metrics, grads)``."""
    if stage.grad_fn is not None:
        if stage.uses_step:
            return stage.grad_fn
        return lambda params, batch, rng, step: stage.grad_fn(params, batch, rng)

    def fn(params, batch, rng, step):
        extra = (step,) if stage.uses_step else ()

        def loss(p):
            return stage.loss_fn(_freeze(p, stage.trainable, freeze), batch, rng, *extra)

        (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return value, aux, grads

    return fn


def _microbatches(batch: dict, accum: int) -> dict:
    # Strided split (row i → micro-batch i % accum) keeps every device's rows in every micro-batch.
    def split(x):
        b = x.shape[0]
        return x.reshape(b // accum, accum, *x.shape[1:]).swapaxes(0, 1)

    return jax.tree.map(split, batch)


FINITE = "state_finite"  # per-step metric: 1 if every trained weight is finite after the update


def _all_finite(tree: Any) -> jax.Array:
    # A boolean reduction per leaf: no overflow (a norm of weights ~1e20 would read as inf).
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)).astype(jnp.float32) if leaves else jnp.float32(1.0)


def build_train_step(
    stage: Stage, cfg: Any, tx: optax.GradientTransformation, seed: int, start: int, num_steps: int
):
    """The un-jitted ``(state, batch) → (state, metrics)``: accumulation, update, logging values.

    ``start`` is the global step at which the stage began (its schedule counts from there); the
    step's rng is ``fold_in(key(seed), global step)``, so a resumed run draws the same keys.
    """
    gfn = grad_fn_of(stage, cfg.get("freeze", ""))
    accum = int(cfg.accum)
    schedule = make_schedule(cfg, num_steps)

    def step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(jax.random.key(seed), state.step)
        local = state.step - start
        if accum == 1:
            loss, aux, grads = gfn(state.params, batch, rng, local)
        else:
            micro = _microbatches(batch, accum)

            def body(carry, xs):
                i, mb = xs
                out = gfn(state.params, mb, jax.random.fold_in(rng, i), local)
                return jax.tree.map(jnp.add, carry, out), None

            first = jax.tree.map(lambda x: x[0], micro)
            shapes = jax.eval_shape(gfn, state.params, first, rng, local)
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
            (loss, aux, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(accum), micro))
            loss, aux = loss / accum, jax.tree.map(lambda a: a / accum, aux)
            if cfg.accum_reduce == "mean":
                grads = jax.tree.map(lambda g: g / accum, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        trained = {g: grads[g] for g in stage.trainable if g in grads}
        out = {
            "loss": loss,
            "grad_norm": optax.tree.norm(trained),
            "lr": schedule(local),
            **aux,
            # The state *after* the update: a finite loss can still come with an update that
            # overflows the weights (lr=inf, a diverging step); nothing non-finite is ever saved.
            FINITE: _all_finite({g: params[g] for g in stage.trainable if g in params}),
        }
        return TrainState(state.step + 1, params, opt_state), out

    return step


# --- set-up ---------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """Everything built before the loop (also what ``xmodal-eval`` needs)."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    task: tasks.Task
    splits: dict[str, dict[str, np.ndarray]]
    pretrained: Pretrained
    graphdef: Any
    params: dict  # initial params, sharded
    param_shardings: Any
    ctx: Context
    jitted: dict = dataclasses.field(default_factory=dict)  # compiled helpers, built on first use


def _val_size(n_train: int, val_size: float, min_val: int = 0) -> int:
    n = int(val_size) if val_size >= 1 else max(1, int(round(n_train * val_size)))
    # A floor on the count, never more than half the training data.
    return max(n, min(int(min_val), n_train // 2))


def load_splits(config: ml_collections.ConfigDict, task: tasks.Task) -> dict:
    """The task's splits: validation carved from train when the task has none, then the labelled
    subset (``data.label_ratio``)."""
    splits = task.load()
    for name in ("train", "test"):
        if name not in splits:
            raise ValueError(f"task {task.name!r}: loader returned no {name!r} split")
    folds = int(config.data.get("folds", 0))
    if folds >= 2:
        # k-fold validation (train_folds): fold `data.fold` of train validates, the rest trains.
        if "val" in splits:
            raise ValueError(f"data.folds={folds}: task {task.name!r} has its own validation split")
        fold = int(config.data.get("fold", -1))
        if not 0 <= fold < folds:
            raise ValueError(f"data.fold={fold}: expected 0 … {folds - 1} under data.folds={folds}")
        tr = splits["train"]
        ids = pipeline.kfold_assignment(
            len(tr["x"]), folds, seed=int(config.seed), labels=tr["y"] if task.classes else None
        )
        train = {k: v[ids != fold] for k, v in tr.items()}
        val = {k: v[ids == fold] for k, v in tr.items()}
        splits = {**splits, "train": train, "val": val}
    elif "val" not in splits:
        n = len(splits["train"]["x"])
        train, val = pipeline.carve_validation(
            splits["train"],
            _val_size(n, float(config.data.val_size), int(config.data.get("min_val", 0))),
            seed=int(config.seed),
            stratify="y" if task.classes else None,
        )
        splits = {**splits, "train": train, "val": val}
    ratio = float(config.data.get("label_ratio", 1.0))
    if ratio != 1.0:
        # After the validation carve: every method sees the same labelled subset and the same
        # (fully labelled) validation split; the rest of train is "unlabeled" (SSL data).
        if not task.classes:
            raise ValueError(f"data.label_ratio={ratio}: task {task.name!r} has no class labels")
        labelled, unlabeled = pipeline.label_subset(splits["train"], ratio, seed=int(config.seed))
        splits = {**splits, "train": labelled, "unlabeled": unlabeled}
    return splits


def target_decoder(task: tasks.Task, splits: dict):
    """Identity, or ``out · std + mean`` with per-position train statistics (std includes ε).

    The reference's UnitGaussianNormalizer: the model learns normalised targets; loss and metric
    see decoded outputs against raw targets.
    """
    if not task.normalize_targets:
        return lambda out: out
    mean, std = formats.unit_gaussian_stats(splits["train"]["y"])
    mean, std = jnp.asarray(mean), jnp.asarray(std)
    return lambda out: out * std + mean


def setup(config: ml_collections.ConfigDict, *, eval_only: bool = False) -> Run:
    """Mesh, data, pretrained body, sharded model init and stage context (no training).

    ``eval_only``: what evaluating a checkpoint needs and nothing more: ``run.params`` is the
    abstract model tree (ShapeDtypeStructs with shardings; restore fills it), no source data is
    read and no method-owned groups (PaRe's gate, LSG's graph) are built.
    """
    # Mesh.
    mesh = parallel.make_mesh(
        int(config.mesh.data), int(config.mesh.fsdp), int(config.mesh.get("num_devices", 0))
    )
    config_lib.validate(config, num_devices=mesh.size, training=not eval_only)
    # Input.
    task = tasks.get(config.task)
    splits = load_splits(config, task)
    # Model: pretrained body (or its random re-init), then a sharded jitted build.
    pretrained = load_pretrained(config.body.path or None)
    body_params = (
        pretrained.params
        if config.body.init == "pretrained"
        else pretrained.random_params(int(config.seed))
    )
    body_params = jax.device_get(body_params)  # host numpy: valid jit input on every process
    emb = embedders.Embed1DOptions(**config.embedder)
    captured = {}

    def init(bp):
        graphdef, params = crossmodal.build_crossmodal(
            task.spec, pretrained, body_params=bp, seed=int(config.seed), embedder=emb
        )
        captured["graphdef"] = graphdef
        return params

    abstract = jax.eval_shape(init, body_params)
    shardings = parallel.param_shardings(abstract, mesh, [tuple(r) for r in config.sharding_rules])
    if eval_only:
        params = jax.tree.map(
            lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), abstract, shardings
        )
    else:
        params = jax.jit(init, out_shardings=shardings)(body_params)
    # Per-block remat is a static attribute of the graphdef; the params are the same either way.
    graphdef = layers.with_remat(captured["graphdef"], abstract, config.body.get("remat", "none"))
    if config.get("compute_dtype", "float32") != "float32":
        graphdef = crossmodal.with_compute_dtype(graphdef, abstract, config.compute_dtype)
    if eval_only:
        ctx = Context(graphdef, task, pretrained, splits, None, None, config)
        ctx = dataclasses.replace(ctx, decode=target_decoder(task, splits))
        return Run(config, mesh, task, splits, pretrained, graphdef, params, shardings, ctx)
    # Source data for alignment objectives.
    source, feats = sources.load(config.source, pretrained, seed=int(config.seed))
    ctx = Context(
        graphdef, task, pretrained, splits, source, feats, config, target_decoder(task, splits)
    )
    extra, extra_shardings = method_params(config, ctx, mesh)
    params, shardings = {**params, **extra}, {**shardings, **extra_shardings}
    return Run(config, mesh, task, splits, pretrained, graphdef, params, shardings, ctx)


def method_params(
    config: ml_collections.ConfigDict, ctx: Context, mesh: jax.sharding.Mesh
) -> tuple[dict, dict]:
    """The parameter groups the configured stages add (``methods.PARAM_INITS``), sharded.

    Built at set-up for every stage, so the params tree (and every checkpoint) has one structure
    for the whole run. A group several stages declare is built once (the first stage's).
    """
    inits = {}
    for i, name in enumerate(config_lib.stage_names(config)):
        cfg = config.stages[name]
        if cfg.kind in methods.PARAM_INITS:
            inits[name] = (cfg, methods.PARAM_INITS[cfg.kind], i)
    if not inits:
        return {}, {}

    def init():
        out: dict = {}
        for name, (cfg, fn, i) in inits.items():
            key = jax.random.fold_in(jax.random.key(int(config.seed)), 1_000_003 + i)
            for group, value in fn(name, cfg, ctx, key).items():
                if group in crossmodal.MODEL_GROUPS:
                    raise ValueError(f"stages.{name}: method group {group!r} shadows a model group")
                out.setdefault(group, value)
        return out

    abstract = jax.eval_shape(init)
    shardings = parallel.param_shardings(abstract, mesh, [tuple(r) for r in config.sharding_rules])
    return jax.jit(init, out_shardings=shardings)(), shardings


def _param_paths(params: dict) -> list[str]:
    return [
        "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]
    ]


def _check_freeze(name: str, cfg: Any, params: dict) -> None:
    """A ``freeze`` regex must match a leaf of a trainable group: a typo must not silently
    train everything."""
    rx = re.compile(cfg.freeze)
    trainable = [p for p in _param_paths(params) if p.split("/", 1)[0] in tuple(cfg.trainable)]
    if not any(rx.search(p) for p in trainable):
        raise ValueError(
            f"stages.{name}.freeze={cfg.freeze!r} matches no parameter of the trainable groups "
            f"{list(cfg.trainable)}; paths look like {trainable[:3]}"
        )


def build_stages(run: Run) -> list[tuple[Stage, Any, int]]:
    """(stage, stage config, number of steps) for each name of ``config.stage_order``.

    A stage's budget is ``steps``, else ``epochs`` of its main dataset, raised to ``min_steps``;
    with ``includes_previous`` that budget is the run's total, and the steps of the stages before
    it are taken out of it (so recipes with and without pre-stages get the same total).
    The resolved count is handed to the stage builder as ``steps`` (a copy of the stage config),
    so a method that schedules within its stage (PaRe's k, LSG's ramp) sees the trainer's count.
    Every stage's epochs are epochs of the (labelled) train split.
    """
    out = []
    bs = int(run.config.data.batch_size)
    per_epoch = pipeline.steps_per_epoch(len(run.ctx.splits["train"]["x"]), bs)
    before = 0
    for name in config_lib.stage_names(run.config):
        cfg = run.config.stages[name]
        steps = int(cfg.steps) if int(cfg.steps) > 0 else math.ceil(float(cfg.epochs) * per_epoch)
        # The floor keeps a budget from shrinking with the dataset: 20 epochs of 40 examples are
        # 50 optimizer steps, far from converged.
        steps = max(steps, int(cfg.get("min_steps", 0)))
        if cfg.get("includes_previous", False):
            if steps <= before:
                raise ValueError(
                    f"stages.{name}: its budget of {steps} steps includes the {before} steps of "
                    "the stages before it and leaves none; raise its steps/epochs/min_steps"
                )
            steps -= before
        if cfg.get("freeze", ""):
            _check_freeze(name, cfg, run.params)
        resolved = ml_collections.ConfigDict(cfg.to_dict())
        resolved.steps = steps
        stage = methods.STAGE_KINDS[cfg.kind](name, resolved, run.ctx)
        out.append((stage, resolved, steps))
        before += steps
    return out


# --- data iterators -------------------------------------------------------------------------------


class StageBatches:
    """Zips one Grain iterator per named dataset of a stage into merged batch dicts."""

    def __init__(self, stage: Stage, batch: int, seed: int, prefetch: int, state: dict | None):
        self.iters = {
            prefix: pipeline.train_iterator(
                arrays,
                batch,
                seed=seed + 1000 * i,
                prefetch=prefetch,
                state=None if state is None else state[prefix],
                balanced=prefix in stage.balanced,
                cycle=prefix != "",  # source streams cycle (the target stream defines epochs)
            )
            for i, (prefix, arrays) in enumerate(sorted(stage.datasets.items()))
        }

    def __next__(self) -> dict[str, np.ndarray]:
        out = {}
        for prefix, it in self.iters.items():
            out.update({prefix + k: v for k, v in next(it).items()})
        return out

    def get_state(self) -> dict:
        """JSON-able iterator states, keyed by dataset prefix."""
        return {p: it.get_state() for p, it in self.iters.items()}


# --- evaluation -----------------------------------------------------------------------------------


def make_predict(run: Run):
    """Jitted ``(params, batch) → {"out", "y", "valid"}`` with the run's shardings.

    Targets and the padding mask ride along so that one gather brings back everything the metric
    needs, on any number of processes. Compiled once: every evaluation batch has the same shape.
    """
    bsh = parallel.batch_sharding(run.mesh)

    def predict(params, batch):
        out = run.ctx.decode(crossmodal.apply(run.graphdef, params, batch["x"]))
        return {"out": out, **{k: v for k, v in batch.items() if k != "x"}}

    return jax.jit(predict, in_shardings=(run.param_shardings, bsh), out_shardings=bsh)


def split_outputs(run: Run, predict, params: dict, split: str) -> dict[str, np.ndarray]:
    """Decoded outputs of a whole split, gathered on the host, padding dropped: ``{"out", "y",
    …extras}`` (the metric's and the loss's extra fields ride along)."""
    keys = dict.fromkeys(("x", "y", *run.task.metric_extras, *run.task.loss_extras))
    arrays = {k: run.splits[split][k] for k in keys}
    got: dict[str, list] = {}
    for batch in pipeline.eval_batches(arrays, int(run.config.data.eval_batch_size)):
        out = parallel.to_host(predict(params, parallel.shard_batch(batch, run.mesh)))
        valid = np.asarray(out.pop(pipeline.VALID)) > 0
        for k, v in out.items():
            got.setdefault(k, []).append(np.asarray(v)[valid])
    return {k: np.concatenate(v) for k, v in got.items()}


def metric_of(task: tasks.Task, outputs: dict[str, np.ndarray]) -> float:
    """The task metric of gathered ``outputs`` (:func:`split_outputs`)."""
    extras = {k: outputs[k] for k in task.metric_extras}
    return metrics.get(task.metric)(outputs["out"], outputs["y"], **extras)


def loss_of(task: tasks.Task, outputs: dict[str, np.ndarray]) -> float:
    """The task loss of gathered ``outputs`` (the tie-break of model selection)."""
    from xmodal_jax import losses

    extras = {k: jnp.asarray(outputs[k]) for k in task.loss_extras}
    out, y = jnp.asarray(outputs["out"]), jnp.asarray(outputs["y"])
    return float(losses.get(task.loss)(out, y, None, **task.loss_kwargs, **extras))


def finite_outputs_fn(run: Run):
    """Jitted ``(params, x) → bool``: every model output on ``x`` is finite (built once)."""
    if "finite_outputs" not in run.jitted:
        bsh = parallel.batch_sharding(run.mesh)

        def check(params, x):
            return jnp.all(jnp.isfinite(crossmodal.apply(run.graphdef, params, x)))

        run.jitted["finite_outputs"] = jax.jit(check, in_shardings=(run.param_shardings, bsh))
    return run.jitted["finite_outputs"]


def evaluate(run: Run, predict, params: dict, split: str) -> float:
    """The task metric on a whole split: outputs gathered, padding dropped, then the metric."""
    return metric_of(run.task, split_outputs(run, predict, params, split))


def source_diagnostics(run: Run, params: dict, batch: int = 64) -> dict[str, float]:
    """Source-knowledge retention of ``params``' body (see :func:`mona.source_retention`)."""
    from xmodal_jax.methods import mona

    keys = [
        k for k in ("input_ids", "attention_mask", "pixel_values", "tokens") if k in run.ctx.source
    ]
    arrays = {k: run.ctx.source[k] for k in keys}
    arrays["y"] = run.ctx.source["y"]
    fn = _source_feature_fn(run)
    feats = []
    for b in pipeline.eval_batches(arrays, batch):
        out = parallel.to_host(fn(params, parallel.shard_batch(b, run.mesh)))
        feats.append(np.asarray(out["f"])[np.asarray(out["v"]) > 0])
    return mona.source_retention(np.concatenate(feats), run.ctx.source["y"], int(run.config.seed))


def _source_feature_fn(run: Run):
    from xmodal_jax.methods import mona

    if "source_features" not in run.jitted:
        bsh = parallel.batch_sharding(run.mesh)

        def fn(params, b):
            return {"f": mona.source_features(run.graphdef, params, b), "v": b[pipeline.VALID]}

        run.jitted["source_features"] = jax.jit(
            fn, in_shardings=(run.param_shardings, bsh), out_shardings=bsh
        )
    return run.jitted["source_features"]


# --- logging --------------------------------------------------------------------------------------


class MetricLogger:
    """Writes metrics to stdout, ``metrics.jsonl`` and TensorBoard events (process 0 only)."""

    def __init__(self, workdir: str):
        self.main = jax.process_index() == 0
        self.path = os.path.join(workdir, "metrics.jsonl")
        self.tb = None
        if self.main:
            os.makedirs(workdir, exist_ok=True)
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, values: dict[str, float], **tags: Any) -> None:
        """Appends one record ``{"step", **tags, **values}``."""
        if not self.main:
            return
        rec = {"step": int(step), **tags, **{k: float(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        for k, v in values.items():
            self.tb.add_scalar(f"{tags.get('split', 'train')}/{k}", float(v), int(step))
        self.tb.flush()

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer."""
        if self.tb is not None:
            self.tb.close()


def _progress(name: str, done: int, total: int, rate: float, values: dict) -> str:
    width = 20
    filled = int(width * done / max(total, 1))
    eta = (total - done) / rate if rate > 0 else float("nan")
    stats = " ".join(f"{k} {v:.4g}" for k, v in values.items())
    return (
        f"[{name}] {done:>5}/{total} |{'█' * filled}{'·' * (width - filled)}| "
        f"{rate:5.2f} steps/s ETA {eta:5.0f}s {stats}"
    )


def plot_curves(workdir: str) -> str | None:
    """Saves ``curves.png`` (train loss and validation metric vs step) from ``metrics.jsonl``."""
    path = os.path.join(workdir, "metrics.jsonl")
    if jax.process_index() != 0 or not os.path.exists(path):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(line) for line in open(path)]
    train = [r for r in recs if r.get("split") == "train" and "loss" in r]
    val = [r for r in recs if r.get("split") == "val"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    for stage in dict.fromkeys(r["stage"] for r in train):
        pts = [(r["step"], r["loss"]) for r in train if r["stage"] == stage]
        a.plot([p[0] for p in pts], [p[1] for p in pts], label=stage)
    a.set_xlabel("step"), a.set_ylabel("train loss"), a.legend()
    if val:
        b.plot([r["step"] for r in val], [r["metric"] for r in val], "o-")
    b.set_xlabel("step"), b.set_ylabel("validation metric (lower is better)")
    fig.tight_layout()
    out = os.path.join(workdir, "curves.png")
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


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


def _check_finite(records: list[dict], stage: str) -> None:
    for rec in records:
        finite = rec.pop(FINITE, 1.0) > 0
        if not np.isfinite(rec["loss"]) or not finite:
            what = (
                f"loss is {rec['loss']}"
                if finite
                else "the weights after the update are not finite"
            )
            raise TrainingDiverged(
                f"stage {stage!r}: {what} at step {rec['step']}; stopping. Nothing from this "
                "step on was saved or evaluated: the latest checkpoint is the last finite state."
            )


class _StageLoop:
    """Mutable bookkeeping of one stage: pending metrics, counters, saving and evaluation."""

    def __init__(self, run, stage, num_steps, state, batches, stage_step, best, io, since=0):
        self.run, self.stage, self.num_steps = run, stage, num_steps
        self.run_check = finite_outputs_fn(run)
        self.state, self.batches = state, batches
        self.stage_step, self.global_step = stage_step, int(state.step)
        self.best = best  # (val metric, val loss) of the best checkpoint so far
        self.since_best = since  # this stage's evaluations since the last improvement
        self.patience = int(run.config.stages[stage.name].get("patience", 0))
        self.ckpt, self.logger, self.say, self.predict = io
        self.pending: list[tuple[int, dict]] = []
        self.t0, self.s0 = time.time(), stage_step

    @property
    def exhausted(self) -> bool:
        """Whether patience ran out: ``patience`` evaluations in a row without improvement."""
        return self.patience > 0 and self.since_best >= self.patience

    def record(self, metrics: dict, x: Any = None) -> None:
        """Keeps the step's device metrics (and its input batch, for :meth:`verify`); nothing is
        fetched until :meth:`flush`."""
        self.global_step += 1
        self.stage_step += 1
        self.pending.append((self.global_step, metrics))
        self.last_x = x

    def verify(self) -> None:
        """Flushes, then checks that the current state's outputs on the last batch are finite.

        Finite weights can still be diverged (one step at a huge lr leaves them ~1e30, finite,
        and every later output inf): the state about to be saved, evaluated or promoted to best
        must produce finite outputs itself, not only have come from a finite loss.
        """
        self.flush()
        x = getattr(self, "last_x", None)
        if x is not None and not bool(self.run_check(self.state.params, x)):
            raise TrainingDiverged(
                f"stage {self.stage.name!r}: the model's outputs at step {self.global_step} are "
                "not finite (the weights diverged); stopping. This state was not saved: the "
                "latest checkpoint is the last finite one."
            )

    def flush(self) -> None:
        """Fetches pending metrics (one host sync), checks them, logs them."""
        recs = [
            {"step": s, **{k: float(v) for k, v in m.items()}}
            for s, m in jax.device_get(self.pending)
        ]
        self.pending.clear()
        _check_finite(recs, self.stage.name)
        for r in recs:
            values = {k: v for k, v in r.items() if k != "step"}
            self.logger.write(r["step"], values, split="train", stage=self.stage.name)
        if recs:
            rate = (self.stage_step - self.s0) / max(time.time() - self.t0, 1e-9)
            last = {k: v for k, v in recs[-1].items() if k in ("loss", "lr")}
            self.say(_progress(self.stage.name, self.stage_step, self.num_steps, rate, last))

    def validate(self) -> bool:
        """Evaluates on validation; returns whether the best improved.

        Better means a lower metric, or the same metric at a lower task loss: on validation
        splits of a few dozen examples the error ties often, and the loss still ranks the ties.
        """
        self.verify()
        outputs = split_outputs(self.run, self.predict, self.state.params, "val")
        val = (metric_of(self.run.task, outputs), loss_of(self.run.task, outputs))
        improved = val < self.best
        self.best = min(self.best, val)
        self.since_best = 0 if improved else self.since_best + 1
        self.logger.write(
            self.global_step,
            {"metric": val[0], "loss": val[1], "best": self.best[0]},
            split="val",
            stage=self.stage.name,
        )
        self.say(
            f"[{self.stage.name}] step {self.stage_step}: val {self.run.task.metric} {val[0]:.4f} "
            f"loss {val[1]:.4f} (best {self.best[0]:.4f})"
        )
        if self.run.config.get("source_diagnostics", False) and self.run.ctx.source is not None:
            diag = source_diagnostics(self.run, self.state.params)
            self.logger.write(self.global_step, diag, split="source", stage=self.stage.name)
            self.say(
                f"[{self.stage.name}] source probe acc {diag['probe_acc']:.3f}, "
                f"Davies–Bouldin {diag['davies_bouldin']:.3f}"
            )
        return improved

    def save(
        self,
        stage_index: int,
        *,
        latest: bool = True,
        best: bool = False,
        history: dict | None = None,
    ) -> None:
        """Checkpoints the state to ``latest`` and/or ``best`` (after checking it is finite).

        An improvement alone writes only ``best``: a resume from the older ``latest`` replays the
        same steps bit for bit (its metadata holds the best value of its own step), so it finds
        the same improvement again and rewrites the same ``best``; saving ``latest`` too would
        double the checkpoint I/O of every small-data run, where improvements are frequent.
        """
        self.verify()  # never checkpoint params behind a non-finite loss or with inf outputs
        meta = {
            "stage": self.stage.name,
            "stage_index": stage_index,
            "stage_step": self.stage_step,
            "step": self.global_step,
            "best": list(self.best),
            # A resume restores the patience count, so a stage stopped by patience stays stopped.
            "since_best": self.since_best,
            "stages": history or {},
            "config": self.run.config.to_json(),
        }
        data = {"iterators": self.batches.get_state()}
        if latest:
            self.ckpt.save(self.global_step, self.state, data, meta)
        if best:
            self.ckpt.save(self.global_step, self.state, data, meta, best=True)


def compile_stats(compiled: Any, seconds: float = 0.0) -> dict[str, float]:
    """FLOPs and per-device memory (bytes) of a compiled step, from XLA's own analyses.

    ``peak_bytes`` estimates the live set: arguments + outputs + temporaries − donated aliases.
    Backends that do not report a field give 0 for it.
    """
    cost = compiled.cost_analysis() or {}
    if isinstance(cost, list | tuple):  # older jax: one dict per computation
        cost = cost[0] if cost else {}
    mem = compiled.memory_analysis()

    def field(name: str) -> float:
        return float(getattr(mem, name, 0) or 0) if mem is not None else 0.0

    out = {
        "compile_s": float(seconds),
        "flops": float(cost.get("flops", 0.0)),
        "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
        "argument_bytes": field("argument_size_in_bytes"),
        "output_bytes": field("output_size_in_bytes"),
        "temp_bytes": field("temp_size_in_bytes"),
        "alias_bytes": field("alias_size_in_bytes"),
    }
    out["peak_bytes"] = (
        out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
    )
    return out


def format_compile_stats(stats: dict[str, float]) -> str:
    """One line: compile time, GFLOP per step, per-device memory in MiB."""
    mib = 2.0**20
    return (
        f"{stats['compile_s']:.1f}s, {stats['flops'] / 1e9:.2f} GFLOP/step (per device), "
        f"memory per device ≈ {stats['peak_bytes'] / mib:.0f} MiB (args "
        f"{stats['argument_bytes'] / mib:.0f}, temp {stats['temp_bytes'] / mib:.0f}, out "
        f"{stats['output_bytes'] / mib:.0f}, donated {stats['alias_bytes'] / mib:.0f})"
    )


def _write_compile_stats(workdir: str, stage: str, stats: dict[str, float]) -> None:
    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, "compile.json")
    data = json.load(open(path)) if os.path.exists(path) else {}
    data[stage] = stats
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2)


def ensemble_outputs(task: tasks.Task, outputs: list[np.ndarray]) -> np.ndarray:
    """The mean prediction of several models' decoded outputs: class probabilities for softmax
    (``ce``) and sigmoid (``bce``) tasks, returned as log-probabilities / logits so every metric
    reads them as it reads one model's outputs; plain means for regression and dense outputs."""
    stack = np.stack([np.asarray(o, np.float64) for o in outputs])
    if task.loss == "ce":
        z = stack - stack.max(-1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
        return np.log(np.maximum(probs.mean(0), 1e-300))
    if task.loss == "bce":
        p = np.clip((1.0 / (1.0 + np.exp(-stack))).mean(0), 1e-12, 1 - 1e-12)
        return np.log(p) - np.log1p(-p)
    return stack.mean(0)


def train_folds(config: ml_collections.ConfigDict, workdir: str, *, verbose: bool = True) -> dict:
    """k-fold validation (``data.folds = k``): one run per fold, then their ensemble on test.

    Fold ``i`` (``workdir/fold_i``, resumable like any run) trains on the other folds of the train
    split and chooses its checkpoint on fold ``i``. ``results.json`` reports every fold, the
    out-of-fold validation metric (each training row predicted by the model that did not train
    on it: a validation set as large as train) and, as ``test_best``, the test metric of the
    ensemble of the k chosen checkpoints (:func:`ensemble_outputs`).
    """
    k = int(config.data.folds)
    folds, t0 = [], time.time()
    task = None
    for i in range(k):
        cfg = ml_collections.ConfigDict(config.to_dict())
        cfg.data.fold = i
        wd = os.path.join(workdir, f"fold_{i}")
        done = os.path.join(wd, "results.json")
        if os.path.exists(done) and os.path.exists(os.path.join(wd, "predictions.npz")):
            res = json.load(open(done))
        else:
            res = train(cfg, wd, verbose=verbose)
        if task is None:
            task = tasks.get(cfg.task)
        folds.append((res, np.load(os.path.join(wd, "predictions.npz"))))
    assert task is not None

    def cat(split: str, key: str) -> list[np.ndarray]:
        return [p[f"{split}/{key}"] for _, p in folds]

    test = {k_.split("/", 1)[1]: folds[0][1][k_] for k_ in folds[0][1].files if k_[:5] == "test/"}
    test["out"] = ensemble_outputs(task, cat("test", "out"))
    oof = {key: np.concatenate(cat("val", key)) for key in test}
    results = {
        "task": task.name,
        "metric": task.metric,
        "body": config.body.init,
        "folds": k,
        "fold_results": [r for r, _ in folds],
        "val_best": metric_of(task, oof),  # out-of-fold
        "test_best": metric_of(task, test),  # the ensemble
        "test_mean_of_folds": float(np.mean([r["test_best"] for r, _ in folds])),
        "steps": sum(r["steps"] for r, _ in folds),
        "wall_s": time.time() - t0 + sum(r["wall_s"] for r, _ in folds),
    }
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump(results, f, indent=2)
    return results


def train(config: ml_collections.ConfigDict, workdir: str, *, verbose: bool = True) -> dict:
    """Runs (or resumes) every stage, then evaluates the test split; returns the results dict.

    Resume order: the latest checkpoint in ``workdir`` (stage, step, optimizer and data-iterator
    state included), else a fresh start. SIGTERM writes a final checkpoint and raises
    :class:`Preempted`; ``config.stop_after`` does the same and raises :class:`Stopped`; a
    non-finite loss raises :class:`TrainingDiverged` without saving. ``data.folds ≥ 2`` (and no
    ``data.fold``) runs :func:`train_folds` instead.
    """
    if int(config.data.get("folds", 0)) >= 2 and int(config.data.get("fold", -1)) < 0:
        return train_folds(config, workdir, verbose=verbose)
    damaged: dict[str, str] = {}
    while True:
        try:
            return _train(config, workdir, verbose, damaged)
        except _DamagedResume as e:
            # Nothing was trained or written yet: start over from the next older checkpoint.
            damaged.update(e.damaged)


class _DamagedResume(Exception):
    def __init__(self, damaged: dict[str, str]):
        super().__init__(f"damaged checkpoints: {sorted(damaged)}")
        self.damaged = damaged


# Keys a resume may change: they do not change the trajectory of params, data or schedules.
RESUME_FREE = (
    "stop_after",
    "log_every",
    "resume",
    "source_diagnostics",
    "mesh.",
    "data.eval_batch_size",
    "data.prefetch",
    "checkpoint.",
    "body.remat",
)


def config_changes(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
    """``key: old → new`` for every key whose change would alter the run's trajectory.

    A key absent from the saved config (written before the key existed) counts as its default.
    """

    def flat(node: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                out.update(flat(v, f"{prefix}{k}."))
            return out
        return {prefix[:-1]: list(node) if isinstance(node, tuple | list) else node}

    new = flat(json.loads(config.to_json()))
    old = flat(saved)
    defaults = flat(json.loads(config_lib.base_config().to_json()))
    stage_defaults = config_lib.stage_defaults()
    out = []
    for key in sorted(set(new) | set(old)):
        if any(key == f or (f.endswith(".") and key.startswith(f)) for f in RESUME_FREE):
            continue
        default = defaults.get(key)
        if key.startswith("stages.") and key.count(".") == 2:
            default = stage_defaults.get(key.rsplit(".", 1)[1])
            default = list(default) if isinstance(default, tuple) else default
        a, b = old.get(key, default), new.get(key, default)
        if a != b:
            out.append(f"{key}: {a!r} → {b!r}")
    return out


def _train(
    config: ml_collections.ConfigDict, workdir: str, verbose: bool, damaged: dict[str, str]
) -> dict:
    say = print if verbose and jax.process_index() == 0 else (lambda *a, **k: None)
    t_start = time.time()
    # Resume point first: a changed config is refused before anything is built or written.
    ckpt = checkpoint.Checkpointer(workdir, keep=int(config.checkpoint.keep))
    ckpt.damaged.update(damaged)
    try:
        found = ckpt.find("latest")
    except Exception:
        ckpt.close()
        raise
    meta = None if found is None else found[2]
    if meta is not None and config.get("resume", "") != "force":
        changes = config_changes(json.loads(meta["config"]), config)
        if changes:
            ckpt.close()
            raise config_lib.ConfigError(
                f"{workdir} holds a run (step {meta['step']}) with a different config; resuming "
                "would mix two runs. Changed:\n  " + "\n  ".join(changes) + "\nUse a new "
                "--workdir, or --config.resume=force to continue this state under the new config."
            )
    if ckpt.damaged:
        ckpt.quarantine()  # new saves may reuse their steps; the files are kept under damaged/
    try:
        run = setup(config)
        stages = build_stages(run)
    except Exception:
        ckpt.close()
        raise
    logger = MetricLogger(workdir)
    seed, bs = int(config.seed), int(config.data.batch_size)
    predict = make_predict(run)
    bsh = parallel.batch_sharding(run.mesh)

    # Resume.
    first_stage, resume_step, best, since = 0, 0, (math.inf, math.inf), 0
    params, global_step = run.params, 0
    history: dict[str, dict] = {}  # per finished stage: steps run, budget, why it stopped
    if meta is not None:
        names = [s.name for s, _, _ in stages]
        if meta["stage"] not in names:
            raise ValueError(f"{workdir}: checkpoint stage {meta['stage']!r} not in {names}")
        first_stage, resume_step = names.index(meta["stage"]), int(meta["stage_step"])
        best = tuple(meta.get("best", best))
        since, history = int(meta.get("since_best", 0)), dict(meta.get("stages", {}))
        say(f"resuming {workdir} at stage {meta['stage']!r} step {resume_step}")

    stop = {"term": False}
    steps_here = 0
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(term=True))
    # The run's mesh in context while steps trace: the bodies pin their block activations
    # batch-sharded against it (parallel.constrain_batch).
    with jax.set_mesh(run.mesh):
        try:
            for si in range(first_stage, len(stages)):
                stage, scfg, num_steps = stages[si]
                tx = make_optimizer(scfg, params, num_steps)
                state = init_state(run, tx, global_step, params)
                data_state = None
                if si == first_stage and meta is not None:
                    try:
                        state, data, _ = ckpt.restore(checkpoint.abstract_like(state), found[:2])
                    except checkpoint.CheckpointError:
                        if ckpt.path(*found[:2]) in ckpt.damaged:  # not a shape mismatch
                            raise _DamagedResume(dict(ckpt.damaged)) from None
                        raise
                    data_state = data["iterators"]
                    global_step = int(state.step)
                stage_step = resume_step if si == first_stage else 0
                state_sh = jax.tree.map(lambda x: x.sharding, state)
                step_fn = jax.jit(
                    build_train_step(stage, scfg, tx, seed, global_step - stage_step, num_steps),
                    in_shardings=(state_sh, bsh),
                    out_shardings=(state_sh, None),
                    donate_argnums=(0,),
                )
                batches = StageBatches(stage, bs, seed + si, int(config.data.prefetch), data_state)
                main = stage.datasets.get("") or next(iter(stage.datasets.values()))
                per_epoch = pipeline.steps_per_epoch(len(next(iter(main.values()))), bs)
                eval_every = int(config.eval_every) or per_epoch
                ckpt_every = int(config.checkpoint.every_steps) or eval_every
                say(f"stage {stage.name!r}: {num_steps} steps, trainable {list(stage.trainable)}")
                loop = _StageLoop(
                    run,
                    stage,
                    num_steps,
                    state,
                    batches,
                    stage_step,
                    best,
                    (ckpt, logger, say, predict),
                    since=since if si == first_stage else 0,
                )
                pending = None
                if loop.stage_step < num_steps and not loop.exhausted:
                    # Compile ahead of time on the first batch: the step's FLOPs and per-device
                    # memory are known (printed, saved to compile.json) before the first update.
                    pending = parallel.shard_batch(next(batches), run.mesh)
                    t0 = time.time()
                    step_fn = step_fn.lower(loop.state, pending).compile()
                    stats = compile_stats(step_fn, time.time() - t0)
                    say(f"stage {stage.name!r} step compiled: {format_compile_stats(stats)}")
                    _write_compile_stats(workdir, stage.name, stats)
                while loop.stage_step < num_steps and not loop.exhausted:
                    if pending is not None:
                        batch, pending = pending, None
                    else:
                        batch = parallel.shard_batch(next(batches), run.mesh)
                    loop.state, metrics_ = step_fn(loop.state, batch)
                    loop.record(metrics_, batch["x"])
                    steps_here += 1
                    if loop.stage_step % int(config.log_every) == 0:
                        loop.flush()
                    last = loop.stage_step == num_steps
                    improved = False
                    if stage.evaluate and (loop.stage_step % eval_every == 0 or last):
                        improved = loop.validate()
                    if stop["term"] or steps_here == int(config.stop_after):
                        loop.save(si, history=history)
                        ckpt.wait()
                        where = f"saved step {loop.global_step} in {workdir}"
                        if stop["term"]:
                            raise Preempted(f"SIGTERM: {where}")
                        raise Stopped(f"stop_after={steps_here}: {where}")
                    scheduled = loop.stage_step % ckpt_every == 0 or last or loop.exhausted
                    if improved or scheduled:
                        loop.save(si, latest=scheduled, best=improved, history=history)
                loop.flush()
                if loop.exhausted:
                    say(
                        f"stage {stage.name!r}: stopped by patience at step {loop.stage_step} of "
                        f"{num_steps} ({loop.patience} evaluations without improvement)"
                    )
                history[stage.name] = {
                    "steps": loop.stage_step,
                    "budget": num_steps,
                    "stopped": "patience" if loop.exhausted else "budget",
                }
                state, params, best = loop.state, loop.state.params, loop.best
                global_step, resume_step = loop.global_step, 0
            ckpt.wait()

            # Final evaluation: test at the last step and at the best validation checkpoint.
            results = {"task": run.task.name, "metric": run.task.metric, "body": config.body.init}
            results["val_last"] = evaluate(run, predict, params, "val")
            results["test_last"] = evaluate(run, predict, params, "test")
            if ckpt.resolve("best") is not None:
                best_state, _, best_meta = ckpt.restore(checkpoint.abstract_like(state), "best")
                results["best_step"] = int(best_meta["step"])
                outs = {
                    split: split_outputs(run, predict, best_state.params, split)
                    for split in ("val", "test")
                }
                results["val_best"] = metric_of(run.task, outs["val"])
                results["test_best"] = metric_of(run.task, outs["test"])
                if int(config.data.get("folds", 0)) >= 2 and jax.process_index() == 0:
                    # A fold of train_folds: its ensemble reads these instead of restoring.
                    np.savez(
                        os.path.join(workdir, "predictions.npz"),
                        **{f"{sp}/{k}": v for sp, o in outs.items() for k, v in o.items()},
                    )
            # Per stage: optimizer steps run, the budget, and "patience" or "budget" (why it ended).
            results["stages"] = history
            results["steps"] = sum(h["steps"] for h in history.values())
            results["wall_s"] = time.time() - t_start
            if jax.process_index() == 0:
                with open(os.path.join(workdir, "results.json"), "w") as f:
                    json.dump(results, f, indent=2)
            plot_curves(workdir)
            say("results: " + json.dumps(results))
            return results
        finally:
            signal.signal(signal.SIGTERM, previous)
            logger.close()
            ckpt.close()
            sys.stdout.flush()
