"""Runs methods × seeds on offline tasks through the one trainer and prints mean ± std tables.

``python bench/compare_methods.py --tasks digits,gunpoint --methods finetune,orca,mona
--seeds 0,1,2 --workdir runs/compare`` — every cell is the test metric at the best validation
step (lower is better), same budget and seeds for every method.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TASKS = {
    "digits": ("configs.demo", ""),
    "digits2d": ("configs.digits2d", ""),
    "gunpoint": ("configs.ucr", "name=GunPoint"),
    "breast_cancer": ("configs.tabular", "name=breast_cancer"),
}


def main() -> None:
    """Runs the grid (resuming finished cells from their results.json) and prints the table."""
    import importlib

    import numpy as np
    from absl import logging

    from xmodal_jax import train_lib

    logging.set_verbosity(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="digits,gunpoint")
    parser.add_argument("--methods", default="finetune,orca,mona")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workdir", default="runs/compare")
    args = parser.parse_args()
    rows = []
    for task in args.tasks.split(","):
        module, base = TASKS[task]
        cfg_mod = importlib.import_module(module)
        for method in args.methods.split(","):
            values, walls = [], []
            for seed in map(int, args.seeds.split(",")):
                wd = os.path.join(args.workdir, task, method, str(seed))
                done = os.path.join(wd, "results.json")
                if os.path.exists(done):
                    res = json.load(open(done))
                else:
                    arg = ",".join(filter(None, [base, f"method={method}", f"seed={seed}"]))
                    t0 = time.time()
                    res = train_lib.train(cfg_mod.get_config(arg), wd, verbose=False)
                    print(
                        f"{task} {method} seed {seed}: {res['test_best']:.4f} "
                        f"({time.time() - t0:.0f}s)",
                        flush=True,
                    )
                values.append(res["test_best"])
                walls.append(res["wall_s"])
            rows.append(
                (
                    task,
                    method,
                    np.mean(values),
                    np.std(values),
                    len(values),
                    np.mean(walls),
                    res["metric"],
                )
            )
    print("\n| task | method | test metric (mean ± std) | seeds | wall per run |")
    print("|---|---|---|---|---|")
    for task, method, m, s, n, w, metric in rows:
        print(f"| {task} ({metric}) | {method} | {m:.2f} ± {s:.2f} | {n} | {w:.0f} s |")


if __name__ == "__main__":
    main()
