"""Methods × seeds on offline tasks through the one trainer, beside the first-try baselines.

``python bench/compare_methods.py --tasks iris,gunpoint --methods finetune,orca,mona
--seeds 0,1,2,3,4 --workdir runs/compare``

Every method runs its task's default config (``configs/*.py``) with the same total optimizer
budget: the recipes subtract their pre-stages (ORCA's alignment, MoNA's meta-steps) from the
fine-tuning stage (``includes_previous``), and early stopping may end the last stage sooner; the
table states the budget and the steps actually run. Each cell is the test metric at the best
validation step (lower is better), mean ± std over seeds; each method's paired difference to
plain fine-tuning on the same seeds comes with a paired t-test and a Wilcoxon signed-rank
p-value (two-sided; with 5 seeds the smallest Wilcoxon p is 0.0625). The baselines
(:mod:`xmodal_jax.baselines`) are fitted on the same train split and scored on the same test
split. Finished runs are cached in their ``results.json``; the tables are also written to
``<workdir>/summary.json``.

``advection`` trains on 1D advection trajectories that the project's own finite-volume solver
writes in PDEBench's HDF5 layout (``xmodal-make-pde``; 256 samples at 1024 cells, generated once
into ``--pde_dir``). Method/task pairs a method refuses (PaRe on 1D dense outputs, spec/pare.md)
are reported as such instead of failing the grid.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TASKS = {
    "iris": ("configs.tabular", "name=iris"),
    "wine": ("configs.tabular", "name=wine"),
    "breast_cancer": ("configs.tabular", "name=breast_cancer"),
    "gunpoint": ("configs.ucr", "name=GunPoint"),
    "basicmotions": ("configs.ucr", "name=BasicMotions"),
    "digits": ("configs.demo", ""),
    "digits2d": ("configs.digits2d", ""),
    "advection": ("configs.pdebench", "pde=advection,data_dir={pde_dir}"),
}
# Each method's own ablation (spec'd in issue "methods whose mechanism is active"): the same
# recipe, seeds and budget with the mechanism switched off — MoNA without its meta term
# (λ = 0: the (φ, ψ) stage trains on the inner target loss only), PaRe with k = 0 (gate, source
# head and both losses kept, no token replaced: k capped at 0 via pare_max_fraction, which holds
# in every family; pare_begin/pare_end set only the 2D/dense schedule, so 1D tasks ignored them).
# Their rows also get a paired Δ to the method.
ABLATIONS = {
    "mona_lam0": ("mona", {"stages.mona.meta_lambda": 0.0}),
    "pare_k0": ("pare", {"stages.pare.pare_max_fraction": 0.0}),
}
# Recipe variants, compared like methods (paired Δ to the default fine-tuning): the UCR/UEA
# default trains on random views (configs/ucr.py, chosen on validation); ``finetune_noaug`` is
# the same run without them (on tables and digits, whose recipes have no views, it is finetune).
VARIANTS = {
    "finetune_noaug": (
        "finetune",
        {"stages.finetune.aug_shift": 0.0, "stages.finetune.aug_noise": 0.0},
    ),
}
# (task, method) pairs the method refuses by design, with the reason printed in the table.
REFUSED = {("advection", "pare"): "refused: PaRe on 1D dense outputs is unspecified"}
REFUSED[("advection", "pare_k0")] = REFUSED[("advection", "pare")]


def config_of(task: str, method: str, pde_dir: str, seed: int | None = None):
    """The task's default config for ``method`` (a recipe name, or an :data:`ABLATIONS` or
    :data:`VARIANTS` key)."""
    module, base = TASKS[task]
    recipe, overrides = {**ABLATIONS, **VARIANTS}.get(method, (method, {}))
    seed_arg = [] if seed is None else [f"seed={seed}"]
    arg = ",".join(filter(None, [base.format(pde_dir=pde_dir), f"method={recipe}", *seed_arg]))
    cfg = importlib.import_module(module).get_config(arg)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = cfg
        for key in parents:
            node = node[key]
        node[leaf] = value
    return cfg


def ensure_pde_data(pde_dir: str) -> None:
    """Writes the advection solver dataset into ``pde_dir`` unless it is already there."""
    from xmodal_jax.data import pde_solvers

    if not any(f.startswith("1D_Advection") for f in os.listdir(pde_dir)):
        pde_solvers.write_dataset("advection", n=256, res=1024, out_dir=pde_dir, seed=0)


def paired(diffs: list[float]) -> dict[str, float]:
    """Mean ± std of paired differences, paired t-test and Wilcoxon signed-rank p-values."""
    import numpy as np
    from scipy import stats

    d = np.asarray(diffs, np.float64)
    out = {"mean": float(d.mean()), "std": float(d.std(ddof=1)) if len(d) > 1 else 0.0}
    if len(d) < 2 or np.allclose(d, 0.0):
        out.update(t_p=1.0, wilcoxon_p=1.0)  # identical runs: no evidence of a difference
        return out
    out["t_p"] = float(stats.ttest_rel(d, np.zeros_like(d)).pvalue) if d.std() > 0 else 0.0
    out["wilcoxon_p"] = float(stats.wilcoxon(d, zero_method="zsplit").pvalue)
    return out


def budget_of(result: dict) -> str:
    """The stages' step budgets as the trainer resolved them (``results.json``), e.g.
    ``align 40 + finetune 440 = 480``: every method of a task gets the same total."""
    stages = result.get("stages", {})
    parts = [f"{name} {h['budget']}" for name, h in stages.items()]
    total = sum(h["budget"] for h in stages.values())
    return " + ".join(parts) + (f" = {total}" if len(parts) > 1 else "")


def run_cell(task: str, method: str, seed: int, workdir: str, pde_dir: str) -> dict:
    """One (task, method, seed) run, cached in its ``results.json``."""
    from xmodal_jax import train_lib

    wd = os.path.join(workdir, task, method, str(seed))
    done = os.path.join(wd, "results.json")
    if os.path.exists(done):
        return json.load(open(done))
    t0 = time.time()
    res = train_lib.train(config_of(task, method, pde_dir, seed), wd, verbose=False)
    print(
        f"{task} {method} seed {seed}: {res['test_best']:.4g} in {res['steps']} steps "
        f"({time.time() - t0:.0f}s, load {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    return res


def baseline_rows(task: str, seeds: list[int], workdir: str, pde_dir: str) -> dict:
    """The task's baselines on the default config's splits (and, for UCR/UEA, on the raw input
    the files ship, as well as on the standardised input the trainer sees), cached."""
    from xmodal_jax import baselines
    from xmodal_jax.data import tasks

    path = os.path.join(workdir, task, "baselines.json")
    if os.path.exists(path):
        return json.load(open(path))
    module, base = TASKS[task]
    cfg = importlib.import_module(module).get_config(base.format(pde_dir=pde_dir))
    out = {k: v for k, v in baselines.evaluate(tasks.get(cfg.task), seeds=seeds).items()}
    if cfg.task.name == "ucr" and cfg.task.get("standardize", True):
        raw = cfg.copy_and_resolve_references()
        raw.unlock()
        raw.task.standardize = False
        for name, r in baselines.evaluate(tasks.get(raw.task), seeds=seeds).items():
            out[f"{name} (raw input)"] = r
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    return out


def main() -> None:
    """Runs the grid (resuming finished cells), prints and writes the tables."""
    import numpy as np
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="iris,breast_cancer,gunpoint,basicmotions,digits")
    parser.add_argument("--methods", default="finetune,orca,mona,pare")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--workdir", default="runs/compare")
    parser.add_argument("--pde_dir", default="runs/compare/pde_data")
    parser.add_argument("--no_baselines", action="store_true")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    pde_dir = os.path.abspath(args.pde_dir)
    print(f"load average at start: {os.getloadavg()}", flush=True)
    summary: dict = {}
    for task in args.tasks.split(","):
        module, base = TASKS[task]
        if "{pde_dir}" in base:
            os.makedirs(pde_dir, exist_ok=True)
            ensure_pde_data(pde_dir)
        rows: dict = {}
        if not args.no_baselines:
            rows["baselines"] = baseline_rows(task, seeds, args.workdir, pde_dir)
        for method in args.methods.split(","):
            if (task, method) in REFUSED:
                rows[method] = {"refused": REFUSED[task, method]}
                continue
            res = [run_cell(task, method, s, args.workdir, pde_dir) for s in seeds]
            values = [r["test_best"] for r in res]
            rows[method] = {
                "metric": res[0]["metric"],
                "values": values,
                "mean": float(np.mean(values)),
                "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                "budget": budget_of(res[0]),
                "steps_run": [r.get("steps") for r in res],
                "stopped_by_patience": sum(
                    any(h.get("stopped") == "patience" for h in r.get("stages", {}).values())
                    for r in res
                ),
                "wall_s": float(np.mean([r["wall_s"] for r in res])),
            }
        if "finetune" in rows and "values" in rows["finetune"]:
            ft = rows["finetune"]["values"]
            for method, row in rows.items():
                if method not in ("finetune", "baselines") and "values" in row:
                    row["vs_finetune"] = paired(
                        [a - b for a, b in zip(row["values"], ft, strict=True)]
                    )
        for ablation, (recipe, _) in ABLATIONS.items():
            if "values" in rows.get(ablation, {}) and "values" in rows.get(recipe, {}):
                rows[recipe]["vs_ablation"] = {
                    "ablation": ablation,
                    **paired(
                        [
                            a - b
                            for a, b in zip(
                                rows[recipe]["values"], rows[ablation]["values"], strict=True
                            )
                        ]
                    ),
                }
        summary[task] = rows
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print_tables(summary, seeds)


def print_tables(summary: dict, seeds: list[int]) -> None:
    """One Markdown table per task: baselines, then methods with their paired differences."""
    for task, rows in summary.items():
        print(f"\n### {task} (seeds {','.join(map(str, seeds))})\n")
        print(
            "| model | test metric (mean ± std) | Δ vs fine-tune (paired) | p (t / Wilcoxon) "
            "| optimizer steps: budget → run (early stops) | wall per run |"
        )
        print("|---|---|---|---|---|---|")
        for name, r in rows.get("baselines", {}).items():
            spread = f" ± {r['std']:.2f}" if len(r["values"]) > 1 else ""
            print(f"| {name} (baseline) | {r['mean']:.4g}{spread} | – | – | – | – |")
        for method, r in rows.items():
            if method == "baselines":
                continue
            if "refused" in r:
                print(f"| {method} | {r['refused']} | – | – | – | – |")
                continue
            d = r.get("vs_finetune")
            delta = f"{d['mean']:+.2f} ± {d['std']:.2f}" if d else "–"
            p = f"{d['t_p']:.3f} / {d['wilcoxon_p']:.3f}" if d else "–"
            steps = "/".join(str(s) for s in r["steps_run"])
            print(
                f"| {method} | {r['mean']:.4g} ± {r['std']:.2f} | {delta} | {p} | {r['budget']} "
                f"→ {steps} ({r['stopped_by_patience']}) | {r['wall_s']:.0f} s |"
            )
        ablated = [(m, r["vs_ablation"]) for m, r in rows.items() if "vs_ablation" in r]
        if ablated:
            print("\n| method − its ablation (paired) | Δ mean ± std | p (t / Wilcoxon) |")
            print("|---|---|---|")
            for m, d in ablated:
                print(
                    f"| {m} − {d['ablation']} | {d['mean']:+.2f} ± {d['std']:.2f} | "
                    f"{d['t_p']:.3f} / {d['wilcoxon_p']:.3f} |"
                )


if __name__ == "__main__":
    main()
