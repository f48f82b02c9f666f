"""Evaluation: predictions on whole splits, task metric and loss, ensembles, source diagnostics."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from xmodal_jax import metrics, parallel
from xmodal_jax.data import pipeline, tasks
from xmodal_jax.models import crossmodal
from xmodal_jax.models.source import SOURCE_KEYS
from xmodal_jax.train.setup import Run

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

    arrays = {k: v for k, v in run.ctx.source.items() if k in SOURCE_KEYS}
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
