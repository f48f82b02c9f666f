"""Set-up of a run: task splits, body, model, method parameter groups, stages and their batches."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from xmodal_jax import config_lib, methods, parallel, paths
from xmodal_jax.data import formats, pipeline, sources, tasks
from xmodal_jax.methods.base import Context, Stage
from xmodal_jax.models import crossmodal, embedders, layers
from xmodal_jax.models import source as source_path
from xmodal_jax.models.pretrained import Pretrained, load_pretrained

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


def build_model(
    config: ml_collections.ConfigDict,
    task: tasks.Task,
    pretrained: Pretrained,
    mesh: jax.sharding.Mesh,
    *,
    abstract: bool = False,
) -> tuple[Any, dict, Any]:
    """``(graphdef, params, shardings)`` of the run's model groups, built sharded on ``mesh``.

    ``abstract``: ``params`` are ``ShapeDtypeStruct``s carrying their shardings (a restore target;
    nothing is initialised, so ``pretrained`` may be loaded without weights). The graphdef has
    the configured per-block remat and compute dtype (static attributes; params unaffected).
    """
    emb = embedders.Embed1DOptions(**config.embedder)
    captured = {}

    def init(bp):
        graphdef, params = crossmodal.build_crossmodal(
            task.spec, pretrained, body_params=bp, seed=int(config.seed), embedder=emb
        )
        captured["graphdef"] = graphdef
        return params

    if abstract:
        body_params = pretrained.params  # shapes are all the build needs
    elif config.body.init == "pretrained":
        body_params = jax.device_get(pretrained.params)  # host numpy: valid jit input anywhere
    else:
        body_params = jax.device_get(pretrained.random_params(int(config.seed)))
    shapes = jax.eval_shape(init, body_params)
    shardings = parallel.param_shardings(shapes, mesh, [tuple(r) for r in config.sharding_rules])
    if abstract:
        params = jax.tree.map(
            lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), shapes, shardings
        )
    else:
        params = jax.jit(init, out_shardings=shardings)(body_params)
    graphdef = layers.with_remat(captured["graphdef"], shapes, config.body.get("remat", "none"))
    if config.get("compute_dtype", "float32") != "float32":
        graphdef = crossmodal.with_compute_dtype(graphdef, shapes, config.compute_dtype)
    return graphdef, params, shardings


def setup(config: ml_collections.ConfigDict, *, eval_only: bool = False) -> Run:
    """Mesh, data, pretrained body, sharded model init and stage context (no training).

    ``eval_only``: what evaluating a checkpoint needs and nothing more: the body's architecture
    without its weights, ``run.params`` the abstract model tree (ShapeDtypeStructs with
    shardings; restore fills it); no source data is read and no method-owned groups (PaRe's
    gate, LSG's graph) are built.
    """
    # Mesh.
    mesh = parallel.make_mesh(
        int(config.mesh.data), int(config.mesh.fsdp), int(config.mesh.get("num_devices", 0))
    )
    config_lib.validate(config, num_devices=mesh.size, training=not eval_only)
    # Input.
    task = tasks.get(config.task)
    splits = load_splits(config, task)
    decode = target_decoder(task, splits)
    # Model: pretrained body (or its random re-init), then a sharded jitted build.
    pretrained = load_pretrained(config.body.path or None, abstract=eval_only)
    graphdef, params, shardings = build_model(config, task, pretrained, mesh, abstract=eval_only)
    if eval_only:
        ctx = Context(graphdef, task, pretrained, splits, None, None, config, decode)
        return Run(config, mesh, task, splits, pretrained, graphdef, params, shardings, ctx)
    # Source data for alignment objectives.
    source = sources.load(config.source, pretrained, seed=int(config.seed))
    feats = None if source is None else source_path.embed_source(pretrained, source)
    ctx = Context(graphdef, task, pretrained, splits, source, feats, config, decode)
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


def _check_freeze(name: str, cfg: Any, params: dict) -> None:
    """A ``freeze`` regex must match a leaf of a trainable group: a typo must not silently
    train everything."""
    rx = re.compile(cfg.freeze)
    groups = tuple(cfg.trainable)
    trainable = [p for p in paths.leaf_paths(params) if p.split("/", 1)[0] in groups]
    if not any(paths.matches(rx, p, "search") for p in trainable):
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
        # What every stage shares is the trainer's, not each builder's: whether it validates
        # (`evaluate`), and loss-level remat of a loss_fn stage (a grad_fn stage, MoNA's, applies
        # `remat` to the loss inside its own gradient).
        stage = dataclasses.replace(stage, evaluate=bool(cfg.evaluate))
        if stage.loss_fn is not None and cfg.get("remat", False):
            stage = dataclasses.replace(stage, loss_fn=jax.checkpoint(stage.loss_fn))
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
