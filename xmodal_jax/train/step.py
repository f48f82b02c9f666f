"""The jitted train step of a stage (gradient, accumulation, finiteness) and its XLA statistics."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import optax

from xmodal_jax.methods.base import Stage
from xmodal_jax.train.optim import TrainState, _freeze, make_schedule


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
