"""``xmodal-train --config configs/X.py[:args] --workdir DIR [--config.a.b=value ...]``.

Runs (or resumes) a training run; exit code 143 after a SIGTERM-triggered final checkpoint.
Multi-process: set ``--coordinator``, ``--num_processes``, ``--process_id`` (or the
``XMODAL_COORDINATOR`` / ``XMODAL_NUM_PROCESSES`` / ``XMODAL_PROCESS_ID`` environment variables,
or ``XMODAL_DISTRIBUTED=auto`` on TPU pods and Slurm) in every process.
"""

from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file[:args]", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and results")
_COORD = flags.DEFINE_string("coordinator", None, "host:port of process 0 (multi-process runs)")
_NPROC = flags.DEFINE_integer("num_processes", None, "number of processes (multi-process runs)")
_PID = flags.DEFINE_integer("process_id", None, "this process's index (multi-process runs)")


def _main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO
    from xmodal_jax import parallel

    parallel.maybe_initialize_distributed(_COORD.value, _NPROC.value, _PID.value)
    from xmodal_jax import config_lib, train_lib

    try:
        train_lib.train(_CONFIG.value, _WORKDIR.value)
    except config_lib.ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except train_lib.Stopped as e:
        print(e, file=sys.stderr)
    except train_lib.Preempted as e:
        print(e, file=sys.stderr)
        sys.exit(143)
    except train_lib.TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)


def unknown_override(argv: list[str]) -> str | None:
    """The first ``--config.a.b=v`` override in ``argv`` naming no key of the config, explained.

    ml_collections rejects such an override while parsing flags, with a bare ``AttributeError``;
    this names the override, the valid keys at that level and the closest one.
    """
    import difflib
    import importlib.util

    spec, overrides = None, []
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            spec = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            spec = argv[i + 1]
        elif arg.startswith("--config."):
            overrides.append(arg[len("--config.") :].split("=", 1)[0])
    if spec is None:
        return None
    path, _, config_arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("_xmodal_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(config_arg or None)
    for override in overrides:
        node, where = config, ""
        for part in override.split("."):
            if not hasattr(node, "keys") or part not in node:
                keys = sorted(node.keys()) if hasattr(node, "keys") else []
                close = difflib.get_close_matches(part, keys, n=1)
                hint = f"; did you mean '{where}{close[0]}'?" if close else "."
                level = where.rstrip(".") or "the top level"
                return (
                    f"--config.{override}: {level} has no key {part!r}{hint} "
                    f"Valid keys at {level}: {keys}"
                )
            node, where = node[part], f"{where}{part}."
    return None


def main() -> None:
    """Console-script entry point."""
    flags.mark_flags_as_required(["config", "workdir"])
    try:
        app.run(_main)
    except AttributeError:
        why = unknown_override(sys.argv)
        if why is None:
            raise
        print(f"error: {why}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
