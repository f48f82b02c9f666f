"""``xmodal-eval --workdir DIR [--checkpoint best|latest|STEP] [--split test|val]``.

Rebuilds the run from the config stored in the checkpoint, restores the chosen checkpoint onto
this machine's devices (any device count) and prints the task metric on the chosen split.
"""

from __future__ import annotations

import json

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "run directory written by xmodal-train")
_CKPT = flags.DEFINE_string("checkpoint", "best", "best | latest | a step number")
_SPLIT = flags.DEFINE_enum("split", "test", ["test", "val", "train"], "split to evaluate")


def evaluate_workdir(workdir: str, which: str = "best", split: str = "test") -> dict:
    """Restores ``which`` checkpoint of ``workdir`` and returns ``{"metric", "value", "step"}``."""
    import jax
    import ml_collections

    from xmodal_jax import checkpoint, train_lib

    ckpt = checkpoint.Checkpointer(workdir, async_save=False)
    try:
        meta = ckpt.read_meta(which)
        if meta is None:
            raise FileNotFoundError(f"{workdir}: no {which!r} checkpoint")
        config = ml_collections.ConfigDict(json.loads(meta["config"]))
        run = train_lib.setup(config)
        stages = train_lib.build_stages(run)
        stage, scfg, n = stages[int(meta["stage_index"])]
        tx = train_lib.make_optimizer(scfg, run.params, n)
        target = train_lib.init_state(run, tx, 0)
        state, _, meta = ckpt.restore(checkpoint.abstract_like(target), which)
        with jax.set_mesh(run.mesh):  # the mesh the bodies pin activations against
            value = train_lib.evaluate(run, train_lib.make_predict(run), state.params, split)
        return {"metric": run.task.metric, "split": split, "value": value, "step": meta["step"]}
    finally:
        ckpt.close()


def _main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    which = int(_CKPT.value) if _CKPT.value.isdigit() else _CKPT.value
    print(json.dumps(evaluate_workdir(_WORKDIR.value, which, _SPLIT.value)))


def main() -> None:
    """Console-script entry point."""
    flags.mark_flags_as_required(["workdir"])
    app.run(_main)


if __name__ == "__main__":
    main()
