"""PaRe cost, measured side by side in one run (ratios; the machine is shared and noisy).

1. **step ratio**: the PaRe training step vs the plain fine-tune step, both built by the trainer
   from the demo configs (``configs/demo.py:method=pare`` and ``:method=finetune``: the shipped
   MiniLM-L6 body, digits 8×8 → 64 tokens, batch 32; PaRe adds a 32-token packed-text source
   batch). Both phases of PaRe are timed (phase A: relaxed top-k; phase B: hard top-k). Goal ≤ 2.3×
   (two forward/backward passes).
2. **relaxed top-k share** at the spec's 2D size: N_t = N_s = 3136 tokens (a 56×56 Swin grid,
   dim 128), k = 2000 within CIFAR-100's schedule range 525…2000: source top-k (2000 rounds) +
   target keep-top-(N−k) (3136 − 525 = 2611 rounds, the bound a whole run needs) + mix, forward
   and backward, vs the whole phase-A PaRe gradient (gate, both passes, both heads) on a
   randomly initialised Swin-B geometry (embed 128, depths 2-2-18-2, 224 px; batch 2). Goal ≤ 10 %.
3. **gather vs one-hot matmul**: :func:`pare.mix_tokens` (one gather + where) vs the same mix
   written as a one-hot ``[B, N_t, N_s]`` matmul, forward + backward, at N = 3136, D = 128, B = 8.

Every timed function is jitted, compiled and warmed up first; pairs run alternately for
``--rounds`` rounds and the median of the per-pair ratios is printed with its spread.

    python bench/pare.py               # about 5 minutes on 2 busy cores
    python bench/pare.py --only step   # part 1 only
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

K_RANGE = (525, 2000)  # CIFAR-100's k(E−1), k(0) (spec/pare.md §4)


def _time(fn: Callable[[], object], reps: int) -> float:
    jax.block_until_ready(fn())
    t0 = time.perf_counter()
    for _ in range(reps):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / reps


def paired(a: Callable, b: Callable, reps: int, rounds: int) -> tuple[float, float, float, float]:
    """(median ms of a, of b, median ratio a/b, spread of the ratios) over alternating rounds."""
    ta, tb, ratios = [], [], []
    for r in range(rounds):
        if r % 2:
            y, x = _time(b, reps), _time(a, reps)
        else:
            x, y = _time(a, reps), _time(b, reps)
        ta.append(x), tb.append(y), ratios.append(x / y)
    med = statistics.median(ratios)
    return (
        1e3 * statistics.median(ta),
        1e3 * statistics.median(tb),
        med,
        (max(ratios) - min(ratios)) / med,
    )


def step_ratio(reps: int, rounds: int) -> list[str]:
    """PaRe step (phase A and B) / fine-tune step on the demo body and task."""
    from configs import demo
    from xmodal_jax import train_lib

    def stepper(method: str, phase_a: bool):
        cfg = demo.get_config(f"method={method}")
        cfg.unlock()
        if method == "pare":
            cfg.stages.pare.pare_phase_a_epochs = 1000 if phase_a else 0
        run = train_lib.setup(cfg)
        (stage, scfg, n), *_ = train_lib.build_stages(run)[-1:]
        tx = train_lib.make_optimizer(scfg, run.params, n)
        state = train_lib.init_state(run, tx, 0, run.params)
        step = jax.jit(train_lib.build_train_step(stage, scfg, tx, 0, 0, n))
        batch = next(train_lib.StageBatches(stage, int(cfg.data.batch_size), 0, 0, None))
        box = {"s": state}

        def go():
            box["s"], m = step(box["s"], batch)
            return m["loss"]

        return go

    plain = stepper("finetune", False)
    rows = ["| PaRe variant | PaRe ms | fine-tune ms | ratio (median) | spread | goal |"]
    rows.append("|---|---|---|---|---|---|")
    for phase in ("A (relaxed top-k)", "B (hard top-k)"):
        fn = stepper("pare", phase.startswith("A"))
        a, b, r, s = paired(fn, plain, reps, rounds)
        ok = "✓" if r <= 2.3 else "✗"
        rows.append(f"| phase {phase} | {a:.1f} | {b:.1f} | {r:.2f}× | {s:.0%} | ≤ 2.3× {ok} |")
    return rows


def _swin_folder(path: str) -> str:
    import torch
    import transformers

    cfg = transformers.SwinConfig(
        image_size=224, patch_size=4, embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32]
    )
    torch.manual_seed(0)
    transformers.SwinModel(cfg).save_pretrained(path, safe_serialization=True)
    return path


def topk_share(reps: int, rounds: int) -> list[str]:
    """Relaxed top-k (+ mix) forward/backward vs the whole phase-A PaRe gradient at N = 3136."""
    from flax import nnx

    import xmodal_jax as xm
    from xmodal_jax import losses
    from xmodal_jax.methods import pare
    from xmodal_jax.models.crossmodal import MODEL_GROUPS
    from xmodal_jax.models.heads import masked_mean

    b, k, n_src_cls = 2, 2000, 10
    with tempfile.TemporaryDirectory() as d:
        pre = xm.load_pretrained(_swin_folder(d))
    task = xm.TaskSpec((1, 224, 224), "classification", 18)
    graphdef, params = xm.build_crossmodal(task, pre)
    dim = pre.module().token_dim
    out_dim = pre.module().output_dim
    rng = np.random.default_rng(0)
    params["gate"] = {"kernel": jnp.asarray(rng.normal(size=(dim, 1)) * 0.05), "bias": jnp.zeros(1)}
    params["source_head"] = {
        "kernel": jnp.asarray(rng.normal(size=(out_dim, n_src_cls)) * 0.02, jnp.float32),
        "bias": jnp.zeros(n_src_cls),
    }
    x = jnp.asarray(rng.normal(size=(b, 1, 224, 224)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 18, b))
    px = jnp.asarray(rng.uniform(size=(b, 3, 224, 224)), jnp.float32)
    ys = jnp.asarray(rng.integers(0, n_src_cls, b))
    key = jax.random.key(0)

    def full_loss(p):
        m = nnx.merge(graphdef, {g: p[g] for g in MODEL_GROUPS})
        z_t = m.embed(x)
        z_s = jax.lax.stop_gradient(m.source_embedder(pixel_values=px))
        s_t, s_s = pare.gate_scores(p["gate"], z_t), pare.gate_scores(p["gate"], z_s)
        z_mix = pare.select_and_mix(z_t, z_s, s_t, s_s, k, key, phase_a=True, k_range=K_RANGE)
        clean = losses.cross_entropy(m.head(m.encode(z_t)), y)
        feats = m.encode(z_mix)
        mixed = losses.cross_entropy(m.head(feats), y)
        pooled = masked_mean(feats, None)
        src = losses.cross_entropy(
            pooled @ p["source_head"]["kernel"] + p["source_head"]["bias"], ys
        )
        lam = k / z_t.shape[1]
        return pare.pare_loss(clean, mixed, src, lam, 1.0)[0]

    z_t = jnp.asarray(rng.normal(size=(b, 3136, dim)), jnp.float32)
    z_s = jnp.asarray(rng.normal(size=(b, 3136, dim)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(b, 3136, dim)), jnp.float32)

    def select_loss(gate):
        s_t, s_s = pare.gate_scores(gate, z_t), pare.gate_scores(gate, z_s)
        mix = pare.select_and_mix(z_t, z_s, s_t, s_s, k, key, phase_a=True, k_range=K_RANGE)
        return jnp.vdot(mix, w)

    full = jax.jit(jax.grad(full_loss))
    sel = jax.jit(jax.grad(select_loss))
    a, bb, r, s = paired(lambda: sel(params["gate"]), lambda: full(params), reps, rounds)
    ok = "✓" if r <= 0.10 else "✗"
    return [
        "| N | k | top-k + mix fwd/bwd ms | whole PaRe grad ms | share | spread | goal |",
        "|---|---|---|---|---|---|---|",
        f"| 3136 | {k} | {a:.1f} | {bb:.1f} | {r:.1%} | {s:.0%} | ≤ 10 % {ok} |",
    ]


def gather_vs_onehot(reps: int, rounds: int) -> list[str]:
    """mix_tokens (gather + where) vs a one-hot-matmul mix, forward + backward."""
    from xmodal_jax.methods import pare

    b, n, d, k = 8, 3136, 128, 2000
    rng = np.random.default_rng(0)
    z_t = jnp.asarray(rng.normal(size=(b, n, d)), jnp.float32)
    z_s = jnp.asarray(rng.normal(size=(b, n, d)), jnp.float32)
    tgt = jnp.asarray(np.stack([rng.permutation(n) for _ in range(b)]))
    src = jnp.asarray(np.stack([rng.permutation(n) for _ in range(b)]))
    w = jnp.asarray(rng.normal(size=(b, n, d)), jnp.float32)

    def onehot_mix(z_t, z_s):
        slot_rank = jnp.argsort(tgt, axis=-1)
        replaced = slot_rank < k
        idx = jnp.take_along_axis(src, jnp.minimum(slot_rank, n - 1), axis=-1)
        p = jax.nn.one_hot(idx, n, dtype=z_s.dtype) * replaced[..., None]
        return jnp.einsum("btn,bnd->btd", p, z_s) + z_t * (1.0 - replaced[..., None])

    def gather_mix(z_t, z_s):
        return pare.mix_tokens(z_t, z_s, tgt, src, k)

    g_gather = jax.jit(jax.grad(lambda a, c: jnp.vdot(gather_mix(a, c), w), (0, 1)))
    g_onehot = jax.jit(jax.grad(lambda a, c: jnp.vdot(onehot_mix(a, c), w), (0, 1)))
    np.testing.assert_allclose(
        pare.mix_tokens(z_t, z_s, tgt, src, k), onehot_mix(z_t, z_s), rtol=1e-5, atol=1e-5
    )
    a, bb, r, s = paired(lambda: g_gather(z_t, z_s), lambda: g_onehot(z_t, z_s), reps, rounds)
    return [
        "| B×N×D | gather ms | one-hot matmul ms | gather / one-hot | spread |",
        "|---|---|---|---|---|",
        f"| {b}×{n}×{d} | {a:.1f} | {bb:.1f} | {r:.3f}× | {s:.0%} |",
    ]


def main() -> None:
    """Prints the three markdown tables."""
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--only", choices=("step", "topk", "gather"), default=None)
    args = p.parse_args()
    parts = {"step": step_ratio, "topk": topk_share, "gather": gather_vs_onehot}
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
    for name, fn in parts.items():
        if args.only in (None, name):
            reps = args.reps if name != "topk" else max(1, args.reps // 3)
            print("\n".join(["", *fn(reps, args.rounds)]), flush=True)


if __name__ == "__main__":
    main()
