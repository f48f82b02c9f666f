"""A tiny, fast configuration for tests and smoke runs: the synthetic 1D task on MiniLM.

``configs/tiny.py:steps=20,align=otdd`` — ``align`` is ``none`` | ``task`` | ``otdd`` | ``mmd``.
"""

from __future__ import annotations

from configs.common import parse_arg
from xmodal_jax import config_lib


def get_config(arg: str | None = None):
    """Synthetic task (1×32 signals, 3 classes), batch 8, short stages."""
    a = parse_arg(arg, steps=20, align="none", batch=8, seed=0)
    c = config_lib.base_config()
    c.seed = a.seed
    c.task.update(dict(name="synthetic", target_seq_len=8, num_train=64, num_test=32, length=32))
    c.data.update(dict(batch_size=a.batch, eval_batch_size=16, val_size=16, prefetch=0))
    c.log_every = 5
    c.eval_every = 10
    order = []
    if a.align != "none":
        c.source.kind = "text" if a.align in ("otdd", "mmd") else "none"
        c.source.max_examples = 64
        config_lib.add_stage(
            c,
            "align",
            kind="align",
            objective=a.align,
            trainable=("embedder",),
            steps=a.steps // 2,
            lr=1e-3,
            schedule="constant",
            evaluate=False,
        )
        order.append("align")
    config_lib.add_stage(c, "finetune", kind="task", steps=a.steps, lr=1e-4, warmup_steps=2)
    order.append("finetune")
    c.stage_order = ",".join(order)
    c.lock()
    return c
