"""``xmodal-demo [--workdir DIR]``: the embedded default main job.

Runs ``configs/demo.py`` (the shipped MiniLM-L6 text body → scikit-learn handwritten digits,
ORCA recipe: OTDD embedder alignment, then full fine-tuning) twice through the one training loop:
once from the pretrained body and once from the same architecture with random weights, then
prints both test errors. Each run's best checkpoint can be restored with
``xmodal-eval --workdir DIR/pretrained``.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", "workdirs/demo", "base directory of the two runs")
_ARGS = flags.DEFINE_string("args", "", "extra configs/demo.py args, e.g. 'epochs=3,seed=1'")


def _main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    from configs import demo
    from xmodal_jax import train_lib

    t0 = time.time()
    results = {}
    for body in ("pretrained", "random"):
        arg = ",".join(filter(None, [f"body={body}", _ARGS.value]))
        print(f"\n=== {body} body: configs/demo.py:{arg} ===", flush=True)
        results[body] = train_lib.train(demo.get_config(arg), os.path.join(_WORKDIR.value, body))
    print("\n=== digits (8×8 images as 8-channel signals), MiniLM-L6 body, ORCA recipe ===")
    print(f"{'body':>10} | {'val error % (best)':>18} | {'test error % (at best val)':>26} | time")
    for body, r in results.items():
        print(f"{body:>10} | {r['val_best']:18.2f} | {r['test_best']:26.2f} | {r['wall_s']:.0f}s")
    gain = results["random"]["test_best"] - results["pretrained"]["test_best"]
    print(
        f"pretrained body lowers test error by {gain:+.2f} points ({time.time() - t0:.0f}s total)"
    )
    with open(os.path.join(_WORKDIR.value, "summary.json"), "w") as f:
        json.dump(results, f, indent=2)
    sys.stdout.flush()


def main() -> None:
    """Console-script entry point."""
    app.run(_main)


if __name__ == "__main__":
    main()
