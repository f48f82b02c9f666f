"""The embedded default: the shipped MiniLM-L6 text body → handwritten digits, ORCA recipe.

Stage 1 (``align``): only the new 1D embedder trains, to bring its token distribution close to
the text source (label-aware OTDD against VADER-lexicon words embedded by MiniLM's own input
layer); the body is frozen. Stage 2 (``finetune``): embedder, body and head train on the task.
``configs/demo.py:body=random`` runs the same recipe from a randomly initialised body.

Args: ``body`` (pretrained | random), ``layout`` (1x64 | 8x8), ``train_limit`` (0 = all),
``epochs`` (the budget of every method, in epochs of the training split: 8 ≈ 280 optimizer
steps, of which ORCA's ``align_steps`` and MoNA's meta-steps are a part), ``align_steps``, ``seed``,
``method`` (orca | mona | finetune | pare).
"""

from __future__ import annotations

from configs.common import offline_recipe, parse_arg
from xmodal_jax import config_lib


def get_config(arg: str | None = None):
    """Digits as 8 channels × 8 samples, 10 % val carved from train, OTDD alignment, fine-tuning."""
    a = parse_arg(
        arg,
        body="pretrained",
        layout="8x8",
        train_limit=0,
        epochs=8.0,
        align_steps=60,
        seed=0,
        method="orca",
    )
    c = config_lib.base_config()
    c.seed = a.seed
    c.body.init = a.body
    c.task.update(
        dict(
            name="digits",
            layout=a.layout,
            target_seq_len=64,
            test_fraction=0.3,
            split_seed=0,
            train_limit=a.train_limit,
        )
    )
    c.data.update(dict(batch_size=32, eval_batch_size=128, val_size=0.1, prefetch=2))
    offline_recipe(c, a.method, epochs=a.epochs, align_steps=a.align_steps, lr=1e-4)
    last = c.stages[c.stage_order.split(",")[-1]]  # finetune (or the single PaRe stage)
    last.warmup_fraction = 0.0
    last.warmup_steps = 20
    c.log_every = 10
    c.eval_every = 0  # once per epoch
    c.lock()
    return c
