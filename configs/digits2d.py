"""Digits as 1×8×8 images (a genuinely 2D input) through the shipped MiniLM text body.

No pretrained vision body ships offline, so the 2D task uses the text body: the target embedder
cuts each image into row-major 2×2 patches (``embedders.patch2d_size``: 16 tokens for
``target_seq_len=16``), projects them with a 2D conv, normalises them with the body's embedding
LayerNorm and adds the body's own first 16 position rows. Same recipe, budget and source as
``configs/demo.py`` (OTDD warm-up against VADER words for ORCA/MoNA, MoNA meta-alignment, full
fine-tuning), so the 1D (8 channels × 8) and 2D runs are comparable.

Args: ``body`` (pretrained | random), ``tsl`` (token budget → patch size), ``train_limit``,
``epochs``, ``align_steps``, ``seed``, ``method`` (orca | mona | finetune | pare), ``remat``
(the body's per-block remat policy, ``models.layers.REMAT_POLICIES``).
"""

from __future__ import annotations

from configs.common import offline_recipe, parse_arg
from xmodal_jax import config_lib


def get_config(arg: str | None = None):
    """Digits 1×8×8 → 2×2-patch tokens → MiniLM; 10 % val carved from train, 30 % test."""
    a = parse_arg(
        arg,
        body="pretrained",
        tsl=16,
        train_limit=0,
        epochs=8.0,
        align_steps=60,
        seed=0,
        method="orca",
        remat="none",
    )
    c = config_lib.base_config()
    c.seed = a.seed
    c.body.init = a.body
    c.body.remat = a.remat
    c.task.update(
        dict(
            name="digits",
            layout="1x8x8",
            target_seq_len=a.tsl,
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
