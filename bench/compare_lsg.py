"""LSG vs plain CE at few labels, TL and SSL, seeds × datasets, through the one trainer.

``python bench/compare_lsg.py`` (defaults: ``--datasets digits,basicmotions,iris --labels 15
--modes ceaug,tl,ssl,ce --seeds 0,1,2,3,4 --workdir workdirs/compare_lsg``, README "LSG"): every
run is ``configs/lsg.py`` with those args; a
cell is the test error (%) at the best-validation step, mean ± std (ddof 1) over seeds (lower is
better), beside the mean validation error that picked it; then the paired differences (same
seeds) of LSG TL against its control and of SSL against TL, with paired t and Wilcoxon p-values.
``--baselines`` (default on) adds the field's first-try baselines (:mod:`xmodal_jax.baselines`:
logistic regression and gradient boosting, plus MiniRocket and 1-NN DTW for series) fitted on
each seed's labelled rows, the same rows that seed's models train on.
Finished runs are read back from their ``results.json`` (rerunning resumes the grid). ``ce`` sees
only the labelled subset; ``tl`` adds the graph losses on the same subset; ``ssl`` also uses the
unlabelled rest (pseudo-labels); ``ceaug`` (optional) is CE on LSG's two augmented views without
the graph, the control for the augmentation. The GCN of stage 1 is trained once per dataset and
seed (cached under ``<workdir>/cache``; a few seconds on these graphs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    """Runs the grid (skipping finished runs) and prints a markdown table."""
    import numpy as np
    from absl import logging

    from bench.compare_methods import paired
    from configs import lsg as lsg_config
    from xmodal_jax import baselines, train_lib

    logging.set_verbosity(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="digits,basicmotions,iris")
    parser.add_argument("--labels", default="15")
    parser.add_argument("--modes", default="ceaug,tl,ssl,ce")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--extra", default="", help="more configs/lsg.py args, e.g. steps=100")
    parser.add_argument("--workdir", default="workdirs/compare_lsg")
    parser.add_argument(
        "--baselines",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the field's first-try baselines on each seed's labelled rows",
    )
    args = parser.parse_args()

    def config_for(arg: str):
        return lsg_config.get_config(",".join(filter(None, [arg, args.extra])))

    cache = os.path.abspath(os.path.join(args.workdir, "cache"))
    t_all = time.time()
    rows, first = [], {}
    seeds = [int(s) for s in args.seeds.split(",")]
    for ds in args.datasets.split(","):
        for labels in map(int, args.labels.split(",")):
            for mode in args.modes.split(","):
                values, vals, walls = [], [], []
                for seed in seeds:
                    wd = os.path.join(args.workdir, ds, f"{labels}", mode, str(seed))
                    done = os.path.join(wd, "results.json")
                    if os.path.exists(done):
                        res = json.load(open(done))
                    else:
                        arg = f"dataset={ds},labels={labels},mode={mode},seed={seed}"
                        cfg = config_for(arg)
                        cfg.unlock()
                        if mode != "ce":
                            cfg.stages.train.lsg_cache_dir = cache
                        res = train_lib.train(cfg, wd, verbose=False)
                        print(
                            f"{ds} {labels}% {mode} seed {seed}: test error {res['test_best']:.2f}"
                            f" (val {res['val_best']:.2f}, {res['wall_s']:.0f}s)",
                            flush=True,
                        )
                    values.append(res["test_best"])
                    vals.append(res["val_best"])
                    walls.append(res["wall_s"])
                rows.append((ds, labels, mode, values, vals, walls))
            if args.baselines:
                # The first-try baselines of the field, fitted on each seed's labelled rows.
                results = baselines.evaluate_labelled(
                    config_for(f"dataset={ds},labels={labels}"), seeds
                )
                # The field's first baseline (MiniRocket for series, logistic regression for
                # flat inputs) is the one the paired differences name.
                first[ds, labels] = f"{next(iter(results))} (baseline)" if results else ""
                for name, r in results.items():
                    rows.append((ds, labels, f"{name} (baseline)", r["values"], [], []))
    print(f"\ngrid wall time: {time.time() - t_all:.0f} s (runs + baselines; done runs read back)")
    print(
        "\n| dataset | labels | method | val % (mean) | test error % (mean ± std) | per seed |"
        " wall / run |"
    )
    print("|---|---|---|---|---|---|---|")
    for ds, labels, mode, values, vals, walls in rows:
        per = ", ".join(f"{v:.1f}" for v in values)
        sd = np.std(values, ddof=1) if len(values) > 1 else 0.0
        val = f"{np.mean(vals):.1f}" if vals else "–"
        wall = f"{np.mean(walls):.0f} s" if walls else "–"
        print(
            f"| {ds} | {labels}% | {mode} | {val} | {np.mean(values):.2f} ± {sd:.2f} | {per} |"
            f" {wall} |"
        )
    by = {(ds, labels, mode): values for ds, labels, mode, values, _, _ in rows}
    print("\n| dataset | labels | paired difference | mean ± std | p (t / Wilcoxon) |")
    print("|---|---|---|---|---|")
    for ds, labels, mode, values, _, _ in rows:
        ref = first.get((ds, labels), "")
        for base in {"tl": ("ceaug", "ce", ref), "ssl": ("tl", ref)}.get(mode, ()):
            if (ds, labels, base) in by and len(by[ds, labels, base]) == len(values):
                d = paired([a - b for a, b in zip(values, by[ds, labels, base], strict=True)])
                print(
                    f"| {ds} | {labels}% | {mode} − {base} | {d['mean']:+.2f} ± {d['std']:.2f} |"
                    f" {d['t_p']:.3f} / {d['wilcoxon_p']:.3f} |"
                )


if __name__ == "__main__":
    main()
