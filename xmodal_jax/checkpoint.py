"""Orbax checkpoints behind a thin wrapper: train state + data-iterator state + JSON metadata.

Two ``CheckpointManager``s under the workdir: ``checkpoints/`` keeps the last ``keep`` saves for
resuming; ``best/`` keeps the single best-by-validation save. Each save is one ``Composite`` of
``state`` (the sharded train state), ``data`` (Grain iterator states, JSON) and ``meta`` (config,
stage, step, metrics, JSON). Orbax writes to a temporary directory and renames it when complete,
so a process killed mid-save leaves the previous checkpoint as the latest valid one; a step
folder damaged some other way (truncated files, a stray empty folder, a cleanup cut short) is
skipped with a warning naming it, and the newest intact checkpoint is used.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from xmodal_jax import paths


def abstract_like(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) describing ``tree``: the restore target."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: the message names its path and what is wrong."""


def _keystr(path: tuple) -> str:
    # The stored metadata keeps optax's named tuples as dicts of their fields and tuples as
    # lists, so both sides name a leaf by the same path string (paths.key_str reads all three).
    return paths.path_str(path)


def compare_to_stored(abstract: Any, stored: Any, where: str) -> None:
    """Raises :class:`CheckpointError` listing every leaf whose path, shape or dtype differs
    between the restore target and the checkpoint's own metadata (instead of Orbax's
    ``partial_restore`` tracebacks)."""
    want = {_keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    have = {_keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(stored)[0]}
    problems = [f"missing in the checkpoint: {k}" for k in sorted(set(want) - set(have))]
    problems += [f"not built by this config: {k}" for k in sorted(set(have) - set(want))]
    for k in sorted(set(want) & set(have)):
        a, b = want[k], have[k]
        if tuple(a.shape) != tuple(b.shape) or np.dtype(a.dtype) != np.dtype(b.dtype):
            problems.append(
                f"{k}: checkpoint {tuple(b.shape)} {b.dtype}, "
                f"this config {tuple(a.shape)} {a.dtype}"
            )
    if problems:
        more = f" … and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise CheckpointError(
            f"{where} does not fit the model this config builds ({len(problems)} differences; "
            "a changed task, body or embedder?):\n  " + "\n  ".join(problems[:10]) + more
        )


class Checkpointer:
    """Saves and restores runs in ``workdir``; atomic on disk, and robust to damaged steps.

    Saves block until committed (``async_save=False``, the default for the trainer's latest and
    best saves), so a kill loses at most the steps since the last save. Reads walk back past
    damaged checkpoints: every candidate that cannot be read is reported with its path, once.
    """

    def __init__(self, workdir: str, keep: int = 2, async_save: bool = False):
        workdir = os.path.abspath(workdir)
        self.workdir = workdir
        self.damaged: dict[str, str] = {}  # path → why, for the candidates that failed to read

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
                # Registered handlers: stored array metadata can be read without a target.
                item_handlers={
                    "state": ocp.PyTreeCheckpointHandler(),
                    "data": ocp.JsonCheckpointHandler(),
                    "meta": ocp.JsonCheckpointHandler(),
                },
            )

        self.latest = manager("checkpoints", keep)
        self.best = manager("best", 1)

    def _manager(self, which: str) -> ocp.CheckpointManager:
        return self.best if which == "best" else self.latest

    def path(self, name: str, step: int) -> str:
        """The directory of one checkpoint."""
        return os.path.join(self.workdir, "best" if name == "best" else "checkpoints", str(step))

    def save(self, step: int, state: Any, data: dict, meta: dict, *, best: bool = False) -> None:
        """Saves to ``latest`` (or ``best``); returns once the save is committed (or launched,
        for a manager made with ``async_save=True``)."""
        args = ocp.args.Composite(
            state=ocp.args.PyTreeSave(state),
            data=ocp.args.JsonSave(data),
            meta=ocp.args.JsonSave(meta),
        )
        mgr = self._manager("best" if best else "latest")
        if step in mgr.all_steps():
            # A replay after resume (or resume=force) reaches a step saved before: the new state
            # replaces it rather than Orbax refusing an existing step.
            mgr.delete(step)
        mgr.save(step, args=args, force=True)

    def steps(self, which: str = "latest") -> list[int]:
        """Steps with a checkpoint folder, oldest first (intact or not)."""
        return list(self._manager(which).all_steps())

    def candidates(self, which: str | int = "latest") -> list[tuple[str, int]]:
        """Where ``which`` may be read from, best guess first: ``"latest"`` → the saves for
        resuming, newest first, then the best save; ``"best"`` → the best save; a step number →
        that step in ``best/`` (written only on improvement, never half-deleted by cleanup),
        then in ``checkpoints/``."""
        if isinstance(which, int) or str(which).isdigit():
            step = int(which)
            found = [(n, step) for n in ("best", "latest") if step in self.steps(n)]
            if not found:
                raise FileNotFoundError(
                    f"{self.workdir}: no checkpoint at step {step}; have {self.steps('latest')} "
                    f"(latest) and {self.steps('best')} (best)"
                )
            return found
        if which not in ("latest", "best"):
            raise ValueError(f"checkpoint {which!r}: expected 'latest', 'best' or a step number")
        out = [("best", s) for s in reversed(self.steps("best"))]
        if which == "latest":
            out = [("latest", s) for s in reversed(self.steps("latest"))] + out
        return out

    def _damage(self, name: str, step: int, error: BaseException) -> None:
        where = self.path(name, step)
        if where not in self.damaged:
            self.damaged[where] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            logging.warning(
                "checkpoint %s is damaged (%s); trying an older one", where, self.damaged[where]
            )

    def _read_meta(self, name: str, step: int) -> dict:
        out = self._manager(name).restore(
            step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
        )
        meta = out["meta"]
        if not isinstance(meta, dict) or "step" not in meta:
            raise CheckpointError(f"{self.path(name, step)}: metadata without a step: {meta!r}")
        return dict(meta)

    def find(self, which: str | int = "latest") -> tuple[str, int, dict] | None:
        """The first candidate of ``which`` whose metadata reads: ``(name, step, meta)``, or None
        if there is no checkpoint. Damaged candidates are skipped with a warning naming them;
        if every one is damaged, :class:`CheckpointError` lists them all."""
        cands = [c for c in self.candidates(which) if self.path(*c) not in self.damaged]
        for name, step in cands:
            try:
                return name, step, self._read_meta(name, step)
            except Exception as e:  # noqa: BLE001 -- any failure to read makes it damaged
                self._damage(name, step, e)
        if self.damaged and (cands or self.candidates(which)):
            raise CheckpointError(
                f"{self.workdir}: no intact {which} checkpoint; damaged:\n  "
                + "\n  ".join(f"{p}: {why}" for p, why in self.damaged.items())
            )
        return None

    def resolve(self, which: str | int = "latest") -> tuple[str, int] | None:
        """``"latest"``, ``"best"`` or a step number → the (manager name, step) to read, skipping
        damaged checkpoints; None if there is none."""
        found = self.find(which)
        return None if found is None else found[:2]

    def read_meta(self, which: str | int = "latest") -> dict | None:
        """The JSON metadata of a checkpoint (no arrays read), or None if there is none."""
        found = self.find(which)
        return None if found is None else found[2]

    def restore(
        self, abstract_state: Any, which: str | int | tuple[str, int] = "latest"
    ) -> tuple[Any, dict, dict]:
        """Restores (state, data, meta) onto the shardings given by ``abstract_state``.

        ``which`` is ``"latest"``, ``"best"``, a step, or an exact ``(name, step)`` from
        :meth:`find`. The stored shapes are compared with ``abstract_state`` first (a clear
        :class:`CheckpointError` on a mismatch). ``abstract_state`` may carry a different mesh
        than the one that saved: Orbax reshards. A named checkpoint that fails to read is
        marked damaged and raises :class:`CheckpointError` naming it.
        """
        if isinstance(which, tuple):
            name, step = which
        else:
            found = self.resolve(which)
            if found is None:
                raise FileNotFoundError(f"{self.workdir}: no {which} checkpoint")
            name, step = found
        where = self.path(name, step)
        mgr = self._manager(name)
        try:
            stored = mgr.item_metadata(step)["state"]
        except Exception as e:  # noqa: BLE001
            self._damage(name, step, e)
            raise CheckpointError(f"{where}: cannot read its array metadata ({e})") from e
        if stored is None:
            self._damage(name, step, CheckpointError("no state item"))
            raise CheckpointError(f"{where}: holds no train state")
        compare_to_stored(abstract_state, stored, where)
        out = self._restore(name, step, abstract_state, partial=False)
        return out["state"], dict(out["data"]), dict(out["meta"])

    def _restore(self, name: str, step: int, target: Any, partial: bool) -> dict:
        where = self.path(name, step)
        try:
            return self._manager(name).restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(
                        item=target,
                        restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                        partial_restore=partial,
                    ),
                    data=ocp.args.JsonRestore(),
                    meta=ocp.args.JsonRestore(),
                ),
            )
        except Exception as e:  # noqa: BLE001
            self._damage(name, step, e)
            raise CheckpointError(
                f"{where}: damaged, cannot be restored ({self.damaged[where]})"
            ) from e

    def restore_params(self, abstract_params: dict, which: str | int = "best") -> tuple[dict, dict]:
        """Restores only ``state.params`` groups named in ``abstract_params`` (no optimizer
        state, no method groups): ``(params, meta)``. Walks back past damaged checkpoints of
        ``which``. What evaluation needs, whatever stage or optimizer wrote the checkpoint."""
        while True:
            found = self.find(which)
            if found is None:
                raise FileNotFoundError(f"{self.workdir}: no {which} checkpoint")
            name, step, meta = found
            try:
                stored = self._manager(name).item_metadata(step)["state"]
            except Exception as e:  # noqa: BLE001
                self._damage(name, step, e)
                continue
            stored_params = {
                g: stored["params"][g] for g in abstract_params if g in stored["params"]
            }
            compare_to_stored(abstract_params, stored_params, self.path(name, step))
            try:
                out = self._restore(name, step, {"params": abstract_params}, partial=True)
            except CheckpointError:
                continue  # marked damaged: the next find() skips it
            return out["state"]["params"], dict(out["meta"])

    def quarantine(self) -> list[str]:
        """Moves every damaged checkpoint found so far to ``workdir/damaged/`` (kept, not
        deleted: evidence for the user) so that new saves can take their steps; returns the new
        paths. Only the process that trains calls this (evaluation never moves files)."""
        moved = []
        if jax.process_index() == 0:
            for path in sorted(self.damaged):
                if os.path.isdir(path):
                    sub, step = os.path.basename(os.path.dirname(path)), os.path.basename(path)
                    dest = os.path.join(self.workdir, "damaged", f"{sub}_{step}")
                    while os.path.exists(dest):
                        dest += "_"
                    os.makedirs(os.path.dirname(dest), exist_ok=True)
                    os.replace(path, dest)
                    logging.warning("moved the damaged checkpoint %s to %s", path, dest)
                    moved.append(dest)
        self.latest.reload()
        self.best.reload()
        return moved

    def wait(self) -> None:
        """Blocks until every launched save is on disk."""
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the managers."""
        self.wait()
        self.latest.close()
        self.best.close()
