"""MoNA meta-step cost vs a plain fine-tune step: time and compiled peak-memory ratios.

What is measured, for the demo body (the shipped MiniLM-L6, ``xmodal_jax.load_pretrained()``), the
demo task shape (input ``[B, 8, 8]``, 10 classes, ``target_seq_len=64``) and a text source batch of
the same size (``input_ids`` / ``attention_mask`` ``[B, 8]`` int32 and 4-class labels ``y`` from
``data.sources.text_source(pre, max_examples=64, seq_len=8)``, taken class-balanced):

- **plain**: the project's fine-tune step — ``train_lib.build_train_step`` over a
  ``finetune.task_loss_fn`` stage (embedder + body + head, AdamW lr 1e-4), jitted with the state
  donated and rebound every step, as ``train_lib.train`` runs it.
- **MoNA meta-steps**: ``methods.mona.meta_grad`` (inner lr α = 1e-4, λ = 0.4, t = 2, one inner
  step with the stage's default rule, ``inner_rule="rms"``: Adam-sized) followed by an Adam
  update of the trainable groups (embedder + head; the body and the frozen source embedder are a
  fixed argument), jitted with (trainable, optimiser state) donated
  and rebound. Variants: ``mode="exact"`` (reverse-over-reverse), ``"first_order"`` (DARTS finite
  difference), ``"taylor"``; ``exact+remat`` (the loss function given to ``meta_grad`` wrapped in
  ``jax.checkpoint``); ``exact+block remat`` / ``first_order+block`` (per-block remat inside the
  body, ``layers.with_remat(graphdef, params, "full")``, the config's ``body.remat="full"``);
  and ``exact`` with the inner step restricted to a body subset
  (``mona.inner_mask(body, r"layers/5/")``: the last block; ``r"norm"``: the LayerNorms only).

Time: every variant and the plain step are compiled (lower + compile, reported) and warmed up;
then each of ``--rounds`` rounds times ``--steps`` steps of the plain step and ``--steps`` steps
of every variant, back to back in pairs (which goes first flips every round, as does the order of
the variants), so each variant/plain ratio is taken from two adjacent measurements; the table
reports the median over rounds of the ms/step and of the per-pair ratios. The machine is shared
and noisy: the spread ((max − min) / median of the ratios) is printed too.

Memory: XLA's compiled memory analysis, ``jax.jit(f).lower(*args).compile().memory_analysis()``,
of exactly the executables timed. The main column uses ``temp + argument + output`` bytes;
because both steps donate their state, their outputs alias their arguments, so a second column
subtracts ``alias`` (the closer estimate of the peak), and a third compares ``temp`` alone (the
working set the step itself allocates, free of the parameters and optimiser state that are
resident anyway).

Run from the repository root (about 3–4 minutes on 2 busy cores, mostly compilation)::

    python bench/mona.py
    python bench/mona.py --batch 32 --steps 5 --rounds 5
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import xmodal_jax as xm  # noqa: E402
from xmodal_jax import config_lib, train_lib  # noqa: E402
from xmodal_jax.data.sources import text_source  # noqa: E402
from xmodal_jax.data.tasks import Task  # noqa: E402
from xmodal_jax.methods import finetune, mona  # noqa: E402
from xmodal_jax.methods.base import Context, Stage  # noqa: E402
from xmodal_jax.models import layers  # noqa: E402

NUM_CLASSES = 10
SHAPE = (8, 8)
LR = 1e-4
ALPHA, LAM, T = 1e-4, 0.4, 2.0  # the mona stage defaults (config_lib.stage_defaults)
RULE = mona.STAGE_DEFAULTS["inner_rule"]  # the trainer's inner step (RMS-normalised by default)
WARMUP_STEPS = 2
MiB = 2**20
TIME_GOALS = {"exact": 4.0}
MEM_GOALS = {"first_order": 1.5}


def copy_tree(tree: Any) -> Any:
    """Every leaf in a fresh buffer, so that donating it never invalidates another reference."""
    return jax.tree.map(lambda a: jnp.array(a, copy=True), tree)


def make_target(batch: int, seed: int = 0) -> dict[str, jax.Array]:
    """A random float32 ``x [B, 8, 8]`` and int32 labels ``y [B]`` in ``[0, NUM_CLASSES)``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *SHAPE)).astype(np.float32)
    y = rng.integers(0, NUM_CLASSES, batch).astype(np.int32)
    return {"x": jnp.asarray(x), "y": jnp.asarray(y)}


def make_source(pre: xm.Pretrained, batch: int) -> dict[str, jax.Array]:
    """``batch`` text-source examples, classes taken round-robin (same-class pairs for L_out)."""
    src = text_source(pre, max_examples=max(64, -(-batch // 4) * 4), seq_len=8)
    y = src["y"]
    rank = np.zeros_like(y)
    for c in np.unique(y):
        rank[y == c] = np.arange(np.sum(y == c))
    idx = np.lexsort((y, rank))[:batch]  # by rank within class, then class: c0 c1 c2 c3 c0 …
    return {k: jnp.asarray(v[idx]) for k, v in src.items()}


def memory_stats(compiled: Any) -> dict[str, int] | None:
    """The compiled executable's ``temp`` / ``argument`` / ``output`` / ``alias`` bytes, or None."""
    m = compiled.memory_analysis()
    if m is None:
        return None
    fields = ("temp", "argument", "output", "alias")
    return {f: int(getattr(m, f"{f}_size_in_bytes")) for f in fields}


# --- the steps ------------------------------------------------------------------------------------


class Runner:
    """A jitted, donated step with its state: ``compile()`` once, then ``run(steps)``."""

    def __init__(self, name: str, fn: Callable[..., Any], state: tuple, fixed: tuple):
        self.name = name
        self.fn = fn  # jitted (*state, *fixed) → (*state, metrics), state donated
        self.state = state
        self.fixed = fixed
        self.compiled: Callable[..., Any] | None = None
        self.compile_s = float("nan")
        self.memory: dict[str, int] | None = None

    def compile(self) -> float:
        """Lowers and compiles the step, records its memory analysis; returns the seconds taken."""
        t0 = time.perf_counter()
        self.compiled = self.fn.lower(*self.state, *self.fixed).compile()
        self.compile_s = time.perf_counter() - t0
        self.memory = memory_stats(self.compiled)
        return self.compile_s

    def run(self, steps: int) -> None:
        """Runs ``steps`` steps (state donated and rebound) and waits for the last one."""
        assert self.compiled is not None, "compile() first"
        for _ in range(steps):
            *state, metrics = self.compiled(*self.state, *self.fixed)
            self.state = tuple(state)
        jax.block_until_ready((self.state, metrics))
        if not np.isfinite(float(metrics["loss"])):
            raise RuntimeError(f"{self.name}: loss is {float(metrics['loss'])}")


def plain_runner(
    graphdef: Any, params: dict, loss_fn: Callable, target: dict[str, jax.Array]
) -> Runner:
    """The project's fine-tune step (embedder + body + head, AdamW), state donated."""
    cfg = ml_collections.ConfigDict(
        {
            **config_lib.stage_defaults(),
            "optimizer": "adamw",
            "lr": LR,
            "trainable": ("embedder", "body", "head"),
        }
    )
    stage = Stage("ft", tuple(cfg.trainable), {}, loss_fn=loss_fn)
    tx = train_lib.make_optimizer(cfg, params, 1000)
    params = copy_tree(params)
    state = train_lib.TrainState(jnp.zeros((), jnp.int32), params, jax.jit(tx.init)(params))
    step = train_lib.build_train_step(stage, cfg, tx, 0, 0, 1000)
    return Runner("plain", jax.jit(step, donate_argnums=(0,)), (state,), (target,))


def meta_runner(
    name: str,
    graphdef: Any,
    params: dict,
    loss_fn: Callable,
    target: dict[str, jax.Array],
    source: dict[str, jax.Array],
    *,
    mode: str,
    mask: dict | None = None,
) -> Runner:
    """One MoNA meta-step: ``meta_grad`` then Adam on embedder + head; params a fixed argument.

    (trainable, opt state) are donated and rebound; they are fresh copies, never aliasing the
    fixed ``params`` (nor ``pre.params``).
    """
    tx = optax.adam(LR)
    params = copy_tree(params)
    trainable = copy_tree({g: params[g] for g in mona.META_GROUPS})
    opt_state = jax.jit(tx.init)(trainable)
    kw = dict(graphdef=graphdef, loss_fn=loss_fn, alpha=ALPHA, lam=LAM, t=T, mask=mask, rule=RULE)

    def fn(trainable, opt_state, params, target, source, rng):
        value, aux, grads = mona.meta_grad(trainable, params, target, source, rng, mode=mode, **kw)
        updates, opt_state = tx.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, {"loss": value, **aux}

    rng = jax.random.key(0)
    return Runner(
        name,
        jax.jit(fn, donate_argnums=(0, 1)),
        (trainable, opt_state),
        (params, target, source, rng),
    )


# --- the benchmark --------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    """One variant's medians over rounds: seconds per step and the ratio to the plain step."""

    step_s: float
    ratio: float
    spread: float


def timed(runner: Runner, steps: int) -> float:
    """Runs ``steps`` steps of ``runner``; returns wall seconds per step."""
    t0 = time.perf_counter()
    runner.run(steps)
    return (time.perf_counter() - t0) / steps


def measure(plain: Runner, variants: list[Runner], steps: int, rounds: int) -> dict[str, Result]:
    """Alternating paired timings: per round, plain and each variant back to back.

    Which of the pair goes first flips every round, and so does the order of the variants.
    Returns, per variant name (``"plain"`` included, ratio 1), the median ms/step over its
    measurements and the median / spread of the per-pair ratios.
    """
    times: dict[str, list[float]] = {r.name: [] for r in (plain, *variants)}
    ratios: dict[str, list[float]] = {r.name: [] for r in variants}
    for r in range(rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            pair = (plain, v) if r % 2 == 0 else (v, plain)
            got = {x.name: timed(x, steps) for x in pair}
            times["plain"].append(got["plain"])
            times[v.name].append(got[v.name])
            ratios[v.name].append(got[v.name] / got["plain"])
    out = {"plain": Result(statistics.median(times["plain"]), 1.0, 0.0)}
    for v in variants:
        med = statistics.median(ratios[v.name])
        spread = (max(ratios[v.name]) - min(ratios[v.name])) / med
        out[v.name] = Result(statistics.median(times[v.name]), med, spread)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags (see the module docstring)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=16, help="target and source batch size")
    p.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians)")
    p.add_argument(
        "--variants", default="", help="comma-separated subset of the variant names (default all)"
    )
    return p.parse_args(argv)


def _goal(goals: dict[str, float], name: str) -> str:
    return f"(≤ {goals[name]:g}x)" if name in goals else ""


def _ratio(a: dict[str, int] | None, b: dict[str, int] | None, key: Callable[[dict], int]) -> str:
    if a is None or b is None or key(b) == 0:
        return "n/a"
    return f"{key(a) / key(b):.2f}x"


def main(argv: list[str] | None = None) -> None:
    """Builds every variant, compiles, times side by side and prints the table."""
    args = parse_args(argv)
    t_start = time.time()
    pre = xm.load_pretrained()
    spec = xm.TaskSpec(SHAPE, "classification", NUM_CLASSES, target_seq_len=64)
    graphdef, params = xm.build_crossmodal(spec, pre)
    params = copy_tree(params)  # built params alias pre.params and each other
    task = Task("bench", spec, loss="ce", metric="error", load=lambda: {})
    ctx = Context(
        graphdef, task, pre, {"train": {}}, None, None, ml_collections.ConfigDict({"seed": 0})
    )
    loss_fn = finetune.task_loss_fn(ctx)
    target = make_target(args.batch)
    source = make_source(pre, args.batch)
    counts = np.bincount(np.asarray(source["y"])).tolist()
    print(
        f"body {pre.model_type} {os.path.basename(os.path.dirname(pre.path))} | jax "
        f"{jax.__version__} ({jax.default_backend()}, {jax.device_count()} device) | "
        f"{os.cpu_count()} CPUs | target x {list(target['x'].shape)}, source input_ids "
        f"{list(source['input_ids'].shape)} (per class {counts})"
    )
    print(
        f"{args.steps} steps × {args.rounds} alternating rounds, medians; time ratio = median of "
        f"paired (variant ms / plain ms); α={ALPHA:g} λ={LAM:g} t={T:g}, one {RULE} inner step\n",
        flush=True,
    )

    body = params["body"]
    # Per-block remat: the same params under a graphdef whose body stack recomputes each block in
    # the backward pass (config body.remat="full", models.layers.with_remat).
    remat_g = layers.with_remat(graphdef, params, "full")
    remat_loss = finetune.task_loss_fn(dataclasses.replace(ctx, graphdef=remat_g))
    specs: list[tuple[str, dict[str, Any]]] = [
        ("exact", dict(mode="exact")),
        ("first_order", dict(mode="first_order")),
        ("taylor", dict(mode="taylor")),
        ("exact+remat", dict(mode="exact", loss_fn=jax.checkpoint(loss_fn))),
        ("exact+block remat", dict(mode="exact", graphdef=remat_g, loss_fn=remat_loss)),
        ("first_order+block", dict(mode="first_order", graphdef=remat_g, loss_fn=remat_loss)),
        ("exact layers/5/", dict(mode="exact", mask=mona.inner_mask(body, r"layers/5/"))),
        ("exact norm", dict(mode="exact", mask=mona.inner_mask(body, r"norm"))),
    ]
    if args.variants:
        keep = {v.strip() for v in args.variants.split(",")}
        unknown = keep - {name for name, _ in specs}
        if unknown:
            raise SystemExit(f"--variants: unknown {sorted(unknown)}; have {[n for n, _ in specs]}")
        specs = [(name, kw) for name, kw in specs if name in keep]
    plain = plain_runner(graphdef, params, loss_fn, target)
    variants = [
        meta_runner(
            name,
            kw.pop("graphdef", graphdef),
            params,
            kw.pop("loss_fn", loss_fn),
            target,
            source,
            **kw,
        )
        for name, kw in specs
    ]
    for r in (plain, *variants):
        r.compile()
        r.run(WARMUP_STEPS)
        print(f"compiled {r.name:<18} in {r.compile_s:5.1f}s", flush=True)
    print()

    res = measure(plain, variants, args.steps, args.rounds)
    pm = plain.memory
    header = (
        f"{'variant':<18} | {'compile s':>9} | {'ms/step':>8} | {'time × plain (goal)':>20} | "
        f"{'spread':>6} | {'mem × plain t+a+o (goal)':>24} | {'t+a+o−alias':>11} | "
        f"{'temp':>6} | {'t+a+o MiB':>9} | {'temp MiB':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in (plain, *variants):
        m = res[r.name]
        tao = _ratio(r.memory, pm, lambda s: s["temp"] + s["argument"] + s["output"])
        tao_a = _ratio(r.memory, pm, lambda s: s["temp"] + s["argument"] + s["output"] - s["alias"])
        tmp = _ratio(r.memory, pm, lambda s: s["temp"])
        mem = r.memory or {}
        mib = (mem.get("temp", 0) + mem.get("argument", 0) + mem.get("output", 0)) / MiB
        time_col = f"{m.ratio:.2f}x {_goal(TIME_GOALS, r.name)}".strip()
        mem_col = f"{tao} {_goal(MEM_GOALS, r.name)}".strip()
        print(
            f"{r.name:<18} | {r.compile_s:9.1f} | {1e3 * m.step_s:8.1f} | {time_col:>20} | "
            f"{100 * m.spread:5.0f}% | {mem_col:>24} | {tao_a:>11} | {tmp:>6} | {mib:9.1f} | "
            f"{mem.get('temp', 0) / MiB:8.1f}"
        )
    print("-" * len(header))
    if pm is None:
        print("memory_analysis() returned None on this backend: memory ratios unavailable")
    else:
        print(
            "memory fields: CompiledMemoryStats temp_size_in_bytes (t), argument_size_in_bytes "
            "(a), output_size_in_bytes (o), alias_size_in_bytes (alias; donated outputs reusing "
            f"argument buffers). plain: t={pm['temp'] / MiB:.1f} a={pm['argument'] / MiB:.1f} "
            f"o={pm['output'] / MiB:.1f} alias={pm['alias'] / MiB:.1f} MiB"
        )
    for name, goal in TIME_GOALS.items():
        verdict = "met" if res[name].ratio <= goal else "NOT met"
        print(f"goal {name} time ≤ {goal:g}x plain: {res[name].ratio:.2f}x — {verdict}")
    for name, goal in MEM_GOALS.items():
        v = next(x for x in variants if x.name == name)
        if v.memory is None or pm is None:
            print(f"goal {name} memory ≤ {goal:g}x plain: n/a (no memory analysis)")
            continue
        got = sum(v.memory[k] for k in ("temp", "argument", "output")) / sum(
            pm[k] for k in ("temp", "argument", "output")
        )
        verdict = "met" if got <= goal else "NOT met"
        print(f"goal {name} memory (t+a+o) ≤ {goal:g}x plain: {got:.2f}x — {verdict}")
    print(f"total runtime {time.time() - t_start:.0f}s")


if __name__ == "__main__":
    main()
