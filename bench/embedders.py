"""1D target embedders side by side: which one to make the default for each input family.

``python bench/embedders.py --tasks iris,breast_cancer,gunpoint,basicmotions,digits
--variants orca,patch_none,patch_pre,... --seeds 0,1 --workdir runs/embedders``

Every cell is plain fine-tuning of the shipped MiniLM through the one trainer, same budget, seeds
and validation carve for every variant; only ``config.embedder`` differs. The table reports the
validation error at the best validation step (what the choice is made on: mean over seeds, the
validation split is carved per seed) and, beside it, the test error at that step (reported, never
used to choose). Finished runs are cached in their ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Task → (config module, args, fine-tune steps of the comparison budget).
TASKS = {
    "iris": ("configs.tabular", "name=iris", 300),
    "wine": ("configs.tabular", "name=wine", 300),
    "breast_cancer": ("configs.tabular", "name=breast_cancer", 300),
    "gunpoint": ("configs.ucr", "name=GunPoint", 400),
    "basicmotions": ("configs.ucr", "name=BasicMotions", 400),
    "digits": ("configs.demo", "", 400),
}
# Variant → config.embedder values (models.embedders.Embed1DOptions).
VARIANTS = {
    "orca": dict(kind="orca"),
    "patch_none": dict(kind="patch", norm="none", overlap=1),
    "patch_pre": dict(kind="patch", norm="pre", overlap=1),
    "patch_post": dict(kind="patch", norm="post", overlap=1),
    "patch_none_overlap2": dict(kind="patch", norm="none", overlap=2),
    "patch_post_overlap2": dict(kind="patch", norm="post", overlap=2),
    "patch_mlp_post": dict(kind="patch", norm="post", hidden=64, overlap=1),
    "feature_none": dict(kind="feature", norm="none"),
    "feature_pre": dict(kind="feature", norm="pre"),
    "feature_mlp_post": dict(kind="feature", norm="post", hidden=64),
    "auto": dict(kind="auto", norm="auto", overlap=0),
}


def config_for(task: str, variant: str, seed: int, steps: int | None = None):
    """The comparison config: the task's default config, fine-tuning only, ``variant``'s
    embedder, a fixed step budget (no early stopping), validation every 20 steps."""
    import importlib

    module, base, default_steps = TASKS[task]
    cfg = importlib.import_module(module).get_config(
        ",".join(filter(None, [base, "method=finetune", f"seed={seed}"]))
    )
    for k, v in VARIANTS[variant].items():
        cfg.embedder[k] = v
    ft = cfg.stages.finetune
    ft.steps, ft.min_steps, ft.patience = steps or default_steps, 0, 0
    cfg.eval_every, cfg.log_every = 20, 100
    cfg.checkpoint.every_steps = 100_000  # only the best and the final state are written
    return cfg


def val_loss_at(workdir: str, step: int) -> float:
    """The validation loss logged at ``step`` (the tie-break of checkpoint selection)."""
    for line in open(os.path.join(workdir, "metrics.jsonl")):
        rec = json.loads(line)
        if rec.get("split") == "val" and rec["step"] == step:
            return float(rec.get("loss", float("nan")))
    return float("nan")


def main() -> None:
    """Runs the grid (cached per cell) and prints the validation / test table."""
    import numpy as np
    from absl import logging

    from xmodal_jax import train_lib

    logging.set_verbosity(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="iris,breast_cancer,gunpoint,basicmotions,digits")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--steps", type=int, default=0, help="override every task's budget")
    parser.add_argument("--workdir", default="runs/embedders")
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()}", flush=True)
    rows = []
    for task in args.tasks.split(","):
        for variant in args.variants.split(","):
            vals, tests, walls = [], [], []
            for seed in map(int, args.seeds.split(",")):
                wd = os.path.join(args.workdir, task, variant, str(seed))
                done = os.path.join(wd, "results.json")
                if os.path.exists(done):
                    res = json.load(open(done))
                else:
                    t0 = time.time()
                    cfg = config_for(task, variant, seed, args.steps or None)
                    res = train_lib.train(cfg, wd, verbose=False)
                    print(
                        f"{task} {variant} seed {seed}: val {res['val_best']:.2f} test "
                        f"{res['test_best']:.2f} ({time.time() - t0:.0f}s, load "
                        f"{os.getloadavg()[0]:.1f})",
                        flush=True,
                    )
                vals.append((res["val_best"], val_loss_at(wd, res["best_step"])))
                tests.append(res["test_best"])
                walls.append(res["wall_s"])
            rows.append((task, variant, vals, tests, walls))
    print(
        "\n| task | embedder | val error % (chooses) | val loss (breaks ties) | "
        "test error % (reported) | wall |"
    )
    print("|---|---|---|---|---|---|")
    for task, variant, vals, tests, walls in rows:
        err, loss = np.asarray(vals).T
        print(
            f"| {task} | {variant} | {err.mean():.2f} ± {err.std():.2f} | {loss.mean():.3f} | "
            f"{np.mean(tests):.2f} ± {np.std(tests):.2f} | {np.mean(walls):.0f} s |"
        )


if __name__ == "__main__":
    main()
