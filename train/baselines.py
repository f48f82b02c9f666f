"""``xmodal-baselines --config configs/X.py[:args] [--seeds 0,1,2,3,4]``.

Prints the baselines a user tries first (:mod:`xmodal_jax.baselines`: MiniRocket and 1-NN DTW for
series, logistic regression and gradient boosting for flat inputs, constant and linear
predictors for regression and dense fields) on the config's task, fitted on the same train split
the trainer would carve its validation from and scored on the same test split with the task's
metric, so a user sees at once whether cross-modal transfer pays on the task. At a few-label
config (``data.label_ratio`` < 1, e.g. ``configs/lsg.py:labels=15``) they are fitted on each
seed's labelled subset, the rows that seed's model trains on.
"""

from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file[:args]", lock_config=True)
_SEEDS = flags.DEFINE_string("seeds", "0,1,2,3,4", "seeds of the seeded baselines (MiniRocket)")
_JSON = flags.DEFINE_bool("json", False, "print one JSON object instead of a table")


def _main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from xmodal_jax import baselines
    from xmodal_jax.data import tasks

    config = _CONFIG.value
    task = tasks.get(config.task)
    seeds = [int(s) for s in _SEEDS.value.split(",") if s.strip()]
    ratio = float(config.data.get("label_ratio", 1.0))
    few = ratio < 1.0
    if few:
        out = baselines.evaluate_labelled(config, seeds, task=task)
    else:
        out = baselines.evaluate(task, seeds=seeds)
    if _JSON.value:
        print(json.dumps({"task": task.name, "metric": task.metric, "baselines": out}))
        return
    rows = f"each seed's labelled subset ({ratio:.0%})" if few else "the whole train split"
    print(f"{task.name}: test {task.metric} (lower is better), fitted on {rows}")
    for name, r in out.items():
        spread = f" ± {r['std']:.2f} over seeds {r['seeds']}" if len(r["values"]) > 1 else ""
        print(f"  {name:<26} {r['mean']:.4g}{spread}")


def main() -> None:
    """Console-script entry point."""
    flags.mark_flags_as_required(["config"])
    app.run(_main)


if __name__ == "__main__":
    main()
