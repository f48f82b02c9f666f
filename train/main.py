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
    from xmodal_jax import train_lib

    try:
        train_lib.train(_CONFIG.value, _WORKDIR.value)
    except train_lib.Stopped as e:
        print(e, file=sys.stderr)
    except train_lib.Preempted as e:
        print(e, file=sys.stderr)
        sys.exit(143)
    except train_lib.TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)


def main() -> None:
    """Console-script entry point."""
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(_main)


if __name__ == "__main__":
    main()
