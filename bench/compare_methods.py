"""Runs methods × seeds on offline tasks through the one trainer and prints mean ± std tables.

``python bench/compare_methods.py --tasks digits,gunpoint --methods finetune,orca,mona
--seeds 0,1,2 --workdir runs/compare`` — every cell is the test metric at the best validation
step (lower is better), same budget and seeds for every method.

``advection`` trains on 1D advection trajectories that the project's own finite-volume solver
writes in PDEBench's HDF5 layout (``xmodal-make-pde``; 256 samples at 1024 cells, generated once
into ``--pde_dir``). Method/task pairs a method refuses (PaRe on 1D dense outputs, spec/pare.md)
are reported as such instead of failing the grid.
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
    "advection": ("configs.pdebench", "pde=advection,data_dir={pde_dir},tsl=64,epochs=10"),
}
# (task, method) pairs the method refuses by design, with the reason printed in the table.
REFUSED = {("advection", "pare"): "refused: PaRe on 1D dense outputs is unspecified"}


def ensure_pde_data(pde_dir: str) -> None:
    """Writes the advection solver dataset into ``pde_dir`` unless it is already there."""
    from xmodal_jax.data import pde_solvers

    if not any(f.startswith("1D_Advection") for f in os.listdir(pde_dir)):
        pde_solvers.write_dataset("advection", n=256, res=1024, out_dir=pde_dir, seed=0)


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
    parser.add_argument("--pde_dir", default="runs/compare/pde_data")
    args = parser.parse_args()
    rows = []
    for task in args.tasks.split(","):
        module, base = TASKS[task]
        if "{pde_dir}" in base:
            os.makedirs(args.pde_dir, exist_ok=True)
            ensure_pde_data(args.pde_dir)
            base = base.format(pde_dir=os.path.abspath(args.pde_dir))
        cfg_mod = importlib.import_module(module)
        for method in args.methods.split(","):
            if (task, method) in REFUSED:
                rows.append((task, method, None, REFUSED[task, method], 0, 0.0, ""))
                continue
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
        if m is None:
            print(f"| {task} | {method} | {s} | – | – |")
            continue
        print(f"| {task} ({metric}) | {method} | {m:.2f} ± {s:.2f} | {n} | {w:.0f} s |")


if __name__ == "__main__":
    main()
