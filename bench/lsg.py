"""LSG cost: stage-2 step time vs the plain task step (same model, same batch), and stage-1 time.

Part 1 builds the real run (``configs/lsg.py``: digits on the shipped MiniLM, or ``--dataset``)
with ``train_lib.setup`` and times, side by side and alternating rounds, four jitted steps made by
``train_lib.build_train_step`` on the same labelled batch of ``B`` examples:

- ``task(B)``: the plain CE step (``kind="task"``), B rows through the model;
- ``task(2B)``: the same on the batch repeated twice, i.e. as many model rows as LSG's two views;
- ``ceaug(B)``: the lsg stage with λ_g = λ_c = 0: two augmented views, CE only, no graph;
- ``lsg(B)``: the full TL stage (two views + augmented graph + frozen GCN + both graph losses).

``lsg / ceaug`` and ``lsg / task(2B)`` are the graph's overhead (goal ≤ 1.2×); ``lsg / task(B)``
also pays for the second view. Part 2 times stage 1 (``train_gcn``) on a 4000-node label graph
(200 classes × 20 prompts of synthetic clustered unit vectors, D = ``--gcn_dim``), compile
separate, ``--gcn_steps`` steps; the time for the spec's 5005 steps is extrapolated when fewer
are run.

``python bench/lsg.py [--batch 32 --rounds 5 --steps 10 --gcn_steps 200 --gcn_dim 1024]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402


def _steps(run, cfgs: dict, batch: dict):
    """name → (jitted step, state) for each stage config, all on the run's params."""
    from xmodal_jax import methods, train_lib

    out = {}
    for name, (scfg, rows) in cfgs.items():
        stage = methods.STAGE_KINDS[scfg.kind](name, scfg, run.ctx)
        tx = train_lib.make_optimizer(scfg, run.params, 1000)
        state = train_lib.init_state(run, tx, 0, jax.tree.map(lambda x: x.copy(), run.params))
        fn = jax.jit(train_lib.build_train_step(stage, scfg, tx, 0, 0, 1000), donate_argnums=(0,))
        b = {k: np.concatenate([v] * rows) for k, v in batch.items()}
        if "u_" in stage.datasets:
            b.update({f"u_{k}": v for k, v in b.items()})
        t0 = time.time()
        state, m = fn(state, b)
        jax.block_until_ready(m)
        out[name] = [fn, state, b, time.time() - t0]
    return out


def bench_stage2(args) -> None:
    """Part 1: per-step times of the four steps, median over alternating rounds."""
    from absl import logging

    from configs import lsg as lsg_config
    from xmodal_jax import train_lib

    logging.set_verbosity(logging.WARNING)
    cfg = lsg_config.get_config(f"dataset={args.dataset},mode=tl,labels=100,batch={args.batch}")
    cfg.unlock()
    cfg.mesh.num_devices = 1
    run = train_lib.setup(cfg)
    base = cfg.stages.train
    task_cfg = base.copy_and_resolve_references()
    task_cfg.kind = "task"
    task_cfg.trainable = ("embedder", "body", "head")
    aug_cfg = base.copy_and_resolve_references()
    aug_cfg.lsg_cg = aug_cfg.lsg_cc = 0.0
    train = run.splits["train"]
    batch = {k: np.asarray(v[: args.batch]) for k, v in train.items()}
    cfgs = {
        "task(B)": (task_cfg, 1),
        "task(2B)": (task_cfg, 2),
        "ceaug(B)": (aug_cfg, 1),
        "lsg(B)": (base, 1),
    }
    steps = _steps(run, cfgs, batch)
    times: dict[str, list[float]] = {k: [] for k in steps}
    for r in range(args.rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))
        for name in order:
            fn, state, b, _ = steps[name]
            t0 = time.time()
            for _ in range(args.steps):
                state, m = fn(state, b)
            jax.block_until_ready((state, m))
            times[name].append((time.time() - t0) / args.steps)
            steps[name][1] = state
    med = {k: statistics.median(v) for k, v in times.items()}
    dev = jax.devices()[0]
    print(
        f"\n## LSG stage-2 step vs plain step — {args.dataset} on MiniLM, B = {args.batch}, "
        f"{dev.platform} ({dev.device_kind}), median of {args.rounds} rounds × {args.steps} steps\n"
    )
    print("| step | ms / step | compile s | vs task(B) | vs task(2B) | vs ceaug(B) |")
    print("|---|---|---|---|---|---|")
    for k, t in med.items():
        print(
            f"| {k} | {1e3 * t:.1f} | {steps[k][3]:.1f} | {t / med['task(B)']:.2f}× | "
            f"{t / med['task(2B)']:.2f}× | {t / med['ceaug(B)']:.2f}× |"
        )


def bench_stage1(args) -> None:
    """Part 2: stage-1 GCN training time on a 4000-node label graph."""
    from xmodal_jax.methods import lsg

    c, k, d = 200, 40, args.gcn_dim
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((c, 1, d))
    emb = centres + 0.7 * rng.standard_normal((c, k, d))
    emb = (emb / np.linalg.norm(emb, axis=-1, keepdims=True)).astype(np.float32)
    t0 = time.time()
    graph = lsg.build_label_graph(emb[:, :20].reshape(-1, d), np.repeat(np.arange(c), 20))
    t_graph = time.time() - t0
    n_edges = int(graph.n_edge[0])
    # A 1-step run pays the compile; the timed run reuses it (same shapes, same jit cache).
    t0 = time.time()
    lsg.train_gcn(emb, steps=1, eval_every=1)
    t_compile = time.time() - t0
    t0 = time.time()
    res = lsg.train_gcn(emb, steps=args.gcn_steps, eval_every=min(500, args.gcn_steps))
    t_run = time.time() - t0
    per = t_run / args.gcn_steps
    dev = jax.devices()[0]
    print(
        f"\n## LSG stage 1 on a 4000-node graph ({c} classes × 20 prompts, D = {d}, "
        f"{n_edges} directed edges incl. self loops), {dev.platform}\n"
    )
    print(
        "| graph build s | first call (compile) s | steps | s | ms / step | 5005 steps (est.) s |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| {t_graph:.2f} | {t_compile:.1f} | {args.gcn_steps} | {t_run:.1f} | {1e3 * per:.1f} | "
        f"{per * 5005:.0f} |"
    )
    print(f"\nvalidation-prompt accuracy after {args.gcn_steps} steps: {res.val_acc:.3f}")


def main() -> None:
    """Runs both parts and prints markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--gcn_steps", type=int, default=200)
    parser.add_argument("--gcn_dim", type=int, default=1024)
    parser.add_argument("--skip", default="", help="stage1 | stage2: skip that part")
    args = parser.parse_args()
    if args.skip != "stage2":
        bench_stage2(args)
    if args.skip != "stage1":
        bench_stage1(args)


if __name__ == "__main__":
    main()
