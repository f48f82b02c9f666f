"""Orbax checkpoints behind a thin wrapper: train state + data-iterator state + JSON metadata.

Two ``CheckpointManager``s under the workdir: ``checkpoints/`` keeps the last ``keep`` saves for
resuming; ``best/`` keeps the single best-by-validation save. Each save is one ``Composite`` of
``state`` (the sharded train state), ``data`` (Grain iterator states, JSON) and ``meta`` (config,
stage, step, metrics, JSON). Orbax writes to a temporary directory and renames it when complete,
so a process killed mid-save leaves the previous checkpoint as the latest valid one.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) describing ``tree``: the restore target."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
    """Saves and restores runs in ``workdir``; async saves, atomic on disk."""

    def __init__(self, workdir: str, keep: int = 2, async_save: bool = True):
        workdir = os.path.abspath(workdir)
        self.workdir = workdir

        def manager(sub: str, max_to_keep: int) -> ocp.CheckpointManager:
            return ocp.CheckpointManager(
                os.path.join(workdir, sub),
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=max_to_keep,
                    enable_async_checkpointing=async_save,
                    create=True,
                    # Both managers may save the same step; multi-process barriers are named by
                    # step, so each manager needs its own prefix or the two saves collide.
                    multiprocessing_options=ocp.options.MultiprocessingOptions(
                        barrier_sync_key_prefix=sub
                    ),
                ),
            )

        self.latest = manager("checkpoints", keep)
        self.best = manager("best", 1)

    def _manager(self, which: str) -> ocp.CheckpointManager:
        return self.best if which == "best" else self.latest

    def save(self, step: int, state: Any, data: dict, meta: dict, *, best: bool = False) -> None:
        """Saves asynchronously to ``latest`` (or ``best``); returns once the save is launched."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data),
            meta=ocp.args.JsonSave(meta),
        )
        self._manager("best" if best else "latest").save(step, args=args, force=True)

    def steps(self, which: str = "latest") -> list[int]:
        """Steps with a complete checkpoint, oldest first."""
        return list(self._manager(which).all_steps())

    def resolve(self, which: str | int = "latest") -> tuple[str, int] | None:
        """``"latest"``, ``"best"`` or a step number → (manager name, step), or None if absent."""
        if isinstance(which, int) or str(which).isdigit():
            step = int(which)
            for name in ("latest", "best"):
                if step in self.steps(name):
                    return name, step
            raise FileNotFoundError(
                f"{self.workdir}: no checkpoint at step {step}; have {self.steps('latest')} "
                f"(latest) and {self.steps('best')} (best)"
            )
        if which not in ("latest", "best"):
            raise ValueError(f"checkpoint {which!r}: expected 'latest', 'best' or a step number")
        step = self._manager(which).latest_step()
        return None if step is None else (which, step)

    def read_meta(self, which: str | int = "latest") -> dict | None:
        """The JSON metadata of a checkpoint (no arrays read), or None if there is none."""
        found = self.resolve(which)
        if found is None:
            return None
        name, step = found
        out = self._manager(name).restore(
            step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
        )
        return dict(out["meta"])

    def restore(self, abstract_state: Any, which: str | int = "latest") -> tuple[Any, dict, dict]:
        """Restores (state, data, meta) onto the shardings given by ``abstract_state``.

        ``abstract_state`` may carry a different mesh than the one that saved: Orbax reshards.
        """
        found = self.resolve(which)
        if found is None:
            raise FileNotFoundError(f"{self.workdir}: no {which} checkpoint")
        name, step = found
        out = self._manager(name).restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
                meta=ocp.args.JsonRestore(),
            ),
        )
        return out["state"], dict(out["data"]), dict(out["meta"])

    def wait(self) -> None:
        """Blocks until every launched save is on disk."""
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the managers."""
        self.wait()
        self.latest.close()
        self.best.close()
