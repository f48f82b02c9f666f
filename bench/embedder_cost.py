"""What the target embedder costs in a fine-tune step: ORCA's vs the defaults, side by side.

``python bench/embedder_cost.py [--batch 32] [--rounds 7]``

For the demo's input shape (``[B, 8, 8]``: 8 channels × 8 samples) and a 1 × 64 series, jits the
whole model's loss gradient (MiniLM body, ``xm.apply``) and the embedder's gradient alone, with
ORCA's embedder (``kind="orca"``), the default (``Embed1DOptions()``: overlapping patches,
LayerNorm where a token reads ≥ 16 values) and disjoint patches (``kind="patch", overlap=1``).
Rounds alternate between the variants (5 calls each), so machine load hits them alike; the
table gives medians and each variant's whole-step time relative to ORCA's (goal ≤ +5 %).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import xmodal_jax as xm  # noqa: E402

VARIANTS = {
    "orca": xm.Embed1DOptions(kind="orca"),
    "default": xm.Embed1DOptions(),
    "patch, overlap 1": xm.Embed1DOptions(kind="patch", overlap=1),
}


def _fns(pre, shape: tuple[int, int], batch: int) -> dict:
    x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, *shape)).astype(np.float32))
    y = jnp.asarray(np.arange(batch) % 10)
    out = {}
    for name, opts in VARIANTS.items():
        graphdef, params = xm.build_crossmodal(
            xm.TaskSpec(shape, "classification", 10), pre, embedder=opts
        )

        def loss(p, g=graphdef):
            logits = xm.apply(g, p, x)
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(batch), y])

        def emb_loss(ep, g=graphdef, p=params):
            return jnp.sum(xm.apply(g, {**p, "embedder": ep}, x, method="embed") ** 2)

        out[name] = (jax.jit(jax.value_and_grad(loss)), params)
        out[name + " (embedder only)"] = (jax.jit(jax.grad(emb_loss)), params["embedder"])
    return out


def main() -> None:
    """Prints, per input shape, median ms per call and the step relative to ORCA's."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    pre = xm.load_pretrained()
    print(f"load average at start: {os.getloadavg()}")
    for shape in ((8, 8), (1, 64)):
        fns = _fns(pre, shape, args.batch)
        for f, p in fns.values():
            jax.block_until_ready(f(p))
        times: dict[str, list[float]] = {k: [] for k in fns}
        for _ in range(args.rounds):
            for k, (f, p) in fns.items():
                t = time.perf_counter()
                for _ in range(5):
                    res = f(p)
                jax.block_until_ready(res)
                times[k].append((time.perf_counter() - t) / 5 * 1e3)
        ref = statistics.median(times["orca"])
        print(f"\ninput [{args.batch}, {shape[0]}, {shape[1]}] (load {os.getloadavg()[0]:.1f})")
        print("| variant | ms (median) | step vs ORCA's |")
        print("|---|---|---|")
        for k, v in times.items():
            med = statistics.median(v)
            rel = f"{(med / ref - 1) * 100:+.1f} %" if "only" not in k else "–"
            print(f"| {k} | {med:.1f} | {rel} |")


if __name__ == "__main__":
    main()
