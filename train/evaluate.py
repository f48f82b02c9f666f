"""``xmodal-eval --workdir DIR [--checkpoint best|latest|STEP] [--split test|val] [--mesh_data N
--mesh_fsdp M]``.

Rebuilds the model from the config stored in the checkpoint, restores only its params onto this
machine's devices (any device count, any mesh: ``--mesh_data`` × ``--mesh_fsdp``, default all
devices on the data axis) and prints the task metric on the chosen split. No stage is built,
no optimizer state is read and no source data or label graph is touched: evaluating needs the
model and the split only.
"""

from __future__ import annotations

import dataclasses
import json
import os

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "run directory written by xmodal-train")
_CKPT = flags.DEFINE_string("checkpoint", "best", "best | latest | a step number")
_SPLIT = flags.DEFINE_enum("split", "test", ["test", "val", "train"], "split to evaluate")
_DATA = flags.DEFINE_integer("mesh_data", -1, "data-axis size (-1: the devices fsdp leaves)")
_FSDP = flags.DEFINE_integer("mesh_fsdp", 1, "fsdp-axis size")


def evaluate_workdir(
    workdir: str, which: str | int = "best", split: str = "test", mesh: tuple[int, int] = (-1, 1)
) -> dict:
    """Restores ``which`` checkpoint's params and returns ``{"metric", "split", "value", "step"}``.

    ``mesh`` = ``(data, fsdp)`` for this machine, whatever mesh trained the run; the eval batch
    is the run's ``data.eval_batch_size`` rounded up to a multiple of the device count (padding
    rows are masked out of the metric).
    """
    import jax

    from xmodal_jax import checkpoint, config_lib, train_lib
    from xmodal_jax.models.crossmodal import MODEL_GROUPS

    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"--workdir {workdir!r} does not exist (no run was written there)")
    ckpt = checkpoint.Checkpointer(workdir)
    try:
        found = ckpt.find(which)
        if found is None:
            raise FileNotFoundError(f"{workdir}: no {which!r} checkpoint")
        config = config_lib.from_saved(found[2]["config"])
        devices = jax.device_count()
        config.mesh.update(dict(data=int(mesh[0]), fsdp=int(mesh[1]), num_devices=0))
        eb = int(config.data.eval_batch_size)
        config.data.eval_batch_size = -(-eb // devices) * devices
        run = train_lib.setup(config, eval_only=True)
        groups = {g: run.params[g] for g in MODEL_GROUPS if g in run.params}
        params, meta = ckpt.restore_params(groups, which)
        run = dataclasses.replace(run, param_shardings={g: run.param_shardings[g] for g in groups})
        with jax.set_mesh(run.mesh):  # the mesh the bodies pin activations against
            value = train_lib.evaluate(run, train_lib.make_predict(run), params, split)
        return {"metric": run.task.metric, "split": split, "value": value, "step": meta["step"]}
    finally:
        ckpt.close()


def _main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    which = int(_CKPT.value) if _CKPT.value.isdigit() else _CKPT.value
    mesh = (_DATA.value, _FSDP.value)
    print(json.dumps(evaluate_workdir(_WORKDIR.value, which, _SPLIT.value, mesh)))


def main() -> None:
    """Console-script entry point."""
    flags.mark_flags_as_required(["workdir"])
    app.run(_main)


if __name__ == "__main__":
    main()
