"""The trainer's names in one import (``from xmodal_jax import train_lib``).

The code lives in :mod:`xmodal_jax.train` (one module per job: optim, step, setup, evaluate, logs,
loop); this module only re-exports it, so user code and scripts keep one stable entry point.
"""

from __future__ import annotations

from xmodal_jax.train.evaluate import (  # noqa: F401
    ensemble_outputs,
    evaluate,
    finite_outputs_fn,
    loss_of,
    make_predict,
    metric_of,
    source_diagnostics,
    split_outputs,
)
from xmodal_jax.train.logs import (  # noqa: F401
    MetricLogger,
    plot_curves,
)
from xmodal_jax.train.loop import (  # noqa: F401
    RESUME_FREE,
    Preempted,
    Stopped,
    TrainingDiverged,
    config_changes,
    train,
    train_folds,
)
from xmodal_jax.train.optim import (  # noqa: F401
    TrainState,
    init_state,
    make_optimizer,
    make_schedule,
    opt_state_shardings,
    train_labels,
)
from xmodal_jax.train.setup import (  # noqa: F401
    Run,
    StageBatches,
    _val_size,
    build_stages,
    load_splits,
    method_params,
    setup,
    target_decoder,
)
from xmodal_jax.train.step import (  # noqa: F401
    FINITE,
    build_train_step,
    compile_stats,
    format_compile_stats,
    grad_fn_of,
)
