"""The training loop — the only one in the project.

``train(config, workdir)`` runs the stages of ``config.stage_order`` in sequence. Each stage is
contributed by a method (``xmodal_jax.methods.STAGE_KINDS``) and gets its own optimizer
(``optax.multi_transform``: trainable groups updated, the rest ``set_to_zero`` with no state) and
its own jitted, donated step. Validation (carved from train) picks the best checkpoint; the test
split is evaluated once at the end, at the best and at the last step.

Sections (big_vision's linear layout): mesh → input → model → stages → resume → loop → final eval.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np

from xmodal_jax import checkpoint, config_lib, parallel
from xmodal_jax.data import pipeline, tasks
from xmodal_jax.train.evaluate import (
    ensemble_outputs,
    evaluate,
    finite_outputs_fn,
    loss_of,
    make_predict,
    metric_of,
    source_diagnostics,
    split_outputs,
)
from xmodal_jax.train.logs import MetricLogger, _progress, plot_curves
from xmodal_jax.train.optim import init_state, make_optimizer
from xmodal_jax.train.setup import StageBatches, build_stages, setup
from xmodal_jax.train.step import (
    FINITE,
    _write_compile_stats,
    build_train_step,
    compile_stats,
    format_compile_stats,
)


class TrainingDiverged(RuntimeError):
    """A non-finite loss: the run stops; the last checkpoint is the last good one."""


class Preempted(RuntimeError):
    """SIGTERM received: a final checkpoint was written and the run stopped."""


class Stopped(RuntimeError):
    """``config.stop_after`` steps done in this process: checkpoint written, resume to go on."""


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
