"""UCR/UEA time-series classification from the datasets bundled in the ``aeon`` wheel.

``xmodal-train --config configs/ucr.py:name=GunPoint,method=orca --workdir runs/gunpoint``

Args: ``name`` (any bundled dataset, e.g. GunPoint, BasicMotions, ArrowHead, Italy…),
``method`` (orca | mona | finetune | pare), ``body`` (local HF text folder; default the
shipped MiniLM),
``tsl`` (target sequence length of the 1D embedder), ``epochs`` and ``min_steps`` (the budget:
the larger of the two, in optimizer steps, for every method), ``patience`` (early stopping, in
evaluations every 20 steps), ``batch``, ``seed``, ``align_steps``, ``embedder`` (``auto`` |
``orca`` | ``patch`` | ``feature``, see ``models/embedders.py``).
"""

from __future__ import annotations

from configs.common import offline_recipe, parse_arg
from xmodal_jax import config_lib


def get_config(arg: str | None = None):
    """ORCA on one bundled UCR/UEA dataset (validation carved from train, stratified)."""
    a = parse_arg(
        arg,
        name="GunPoint",
        method="orca",
        body="",
        tsl=32,
        epochs=20.0,
        min_steps=400,
        patience=10,
        batch=16,
        seed=0,
        align_steps=40,
        embedder="auto",
    )
    c = config_lib.base_config()
    c.seed = a.seed
    c.body.path = a.body
    c.task.update(dict(name="ucr", dataset=a.name, target_seq_len=a.tsl))
    c.embedder.kind = a.embedder
    c.data.update(
        dict(batch_size=a.batch, eval_batch_size=64, val_size=0.2, min_val=20, prefetch=2)
    )
    offline_recipe(
        c,
        a.method,
        epochs=a.epochs,
        min_steps=a.min_steps,
        patience=a.patience,
        align_steps=a.align_steps,
        lr=1e-4,
    )
    c.eval_every = 20
    c.checkpoint.every_steps = 200
    c.log_every = 20
    c.lock()
    return c
