"""Helpers shared by config files."""

from __future__ import annotations

from typing import Any

import ml_collections


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses ``"a=1,b=foo,c"`` (from ``--config file.py:a=1,b=foo,c``) against typed defaults.

    A bare ``c`` means ``c=True``. Values are cast to the type of their default; unknown names
    are an error naming the key, so a typo never silently falls back to a default.
    """
    out = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"config arg {key!r} unknown; expected one of {sorted(defaults)}")
        default = defaults[key]
        if not _:
            out[key] = True
        elif isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"config arg {key}={value!r}: expected true/false")
            out[key] = value.lower() in ("true", "1")
        else:
            try:
                out[key] = type(default)(value)
            except ValueError as e:
                raise ValueError(
                    f"config arg {key}={value!r}: expected {type(default).__name__}"
                ) from e
    return out


METHODS = ("orca", "mona", "finetune", "pare")
# The end-to-end optimiser of the offline recipes (ORCA/MoNA's fine-tune stage, PaRe's one stage).
END_TO_END = dict(
    optimizer="adamw", weight_decay=0.01, warmup_fraction=0.1, schedule="linear", clip=1.0
)


def _pare_recipe(config, *, epochs: float, min_steps: int, patience: int, lr: float) -> None:
    """PaRe (spec/pare.md): one end-to-end stage from the pretrained embedder, no alignment.

    The 1D source is packed text (32 tokens of same-class VADER words, 8 valence classes, the
    spec's text_xs_32 shape); 2D tasks use the spec's 2000/1500 schedule scaled to the grid.
    """
    from xmodal_jax import config_lib

    config.source.update(dict(kind="text", num_classes=8, max_examples=1024, seq_len=32, pack=True))
    config_lib.add_stage(
        config,
        "pare",
        kind="pare",
        trainable=("embedder", "body", "head", "gate", "source_head"),
        epochs=epochs,
        min_steps=min_steps,
        patience=patience,
        lr=lr,
        **END_TO_END,
        pare_begin=2000,
        pare_end=1500,
        pare_reference_tokens=3136,
        pare_phase_a_fraction=1 / 3,  # of the stage (its length is a step budget, not epochs)
    )
    config.stage_order = "pare"


def offline_recipe(
    config,
    method: str,
    *,
    epochs: float,
    align_steps: int,
    lr: float,
    min_steps: int = 0,
    patience: int = 0,
    mona_steps: int | None = None,
    aug_shift: float = 0.0,
    aug_noise: float = 0.0,
) -> None:
    """The small-data recipes shared by the offline configs (demo, UCR, tables, PDEs).

    ``method``: ``finetune`` (full fine-tuning only), ``orca`` (OTDD alignment of the embedder to
    the text source, body frozen, then full fine-tuning), ``mona`` (the same warm-up, then MoNA
    meta-alignment, then fine-tuning) or ``pare`` (PaRe, one end-to-end stage). Every method gets
    the same total budget of optimizer steps: ``max(epochs × steps per epoch, min_steps)``, of
    which the pre-stages (``align_steps``, ``mona_steps``, default ``align_steps``) are taken
    (the fine-tune stage ``includes_previous``). The last stage stops early after ``patience``
    evaluations without a better validation score (0 = never). ``aug_shift`` / ``aug_noise``
    train the fine-tune stage on random views (``xmodal_jax.data.augment``; 0 = off). Sets
    ``config.stage_order``.
    """
    from xmodal_jax import config_lib

    if method not in METHODS:
        raise ValueError(f"method={method!r}; expected one of {METHODS}")
    if method == "pare":
        _pare_recipe(config, epochs=epochs, min_steps=min_steps, patience=patience, lr=lr)
        return
    order = []
    if method in ("orca", "mona"):
        config.source.update(dict(kind="text", num_classes=4, max_examples=1024, seq_len=8))
        config_lib.add_stage(
            config,
            "align",
            kind="align",
            objective="otdd",
            trainable=("embedder",),
            steps=align_steps,
            optimizer="adam",
            lr=1e-3,
            schedule="constant",
            evaluate=False,
        )
        order.append("align")
    if method == "mona":
        # MoNA (spec/mona.md §4): meta-align (φ, ψ) with θ fixed at the pretrained weights, so
        # that the fine-tuning step it simulates keeps the source features organised.
        config_lib.add_stage(
            config,
            "mona",
            kind="mona",
            trainable=("embedder", "head"),
            steps=align_steps if mona_steps is None else mona_steps,
            optimizer="adam",
            lr=3e-4,
            schedule="constant",
            inner_lr=lr,
            meta_lambda=0.4,
            evaluate=False,
        )
        order.append("mona")
    config_lib.add_stage(
        config,
        "finetune",
        kind="task",
        trainable=("embedder", "body", "head"),
        epochs=epochs,
        min_steps=min_steps,
        includes_previous=True,
        patience=patience,
        lr=lr,
        aug_shift=aug_shift,
        aug_noise=aug_noise,
        **END_TO_END,
    )
    order.append("finetune")
    config.stage_order = ",".join(order)


def small_table_or_series(config, a, *, val_size: float):
    """The shared tail of ``configs/tabular.py`` and ``configs/ucr.py``: embedder kind, data
    (validation of ≥ 20 examples), the offline recipe for ``a.method`` at ``a``'s budget,
    evaluation and logging every 20 steps, a resumable checkpoint every 200; locks the config."""
    config.embedder.kind = a.embedder
    config.data.update(
        dict(batch_size=a.batch, eval_batch_size=64, val_size=val_size, min_val=20, prefetch=2)
    )
    offline_recipe(
        config,
        a.method,
        epochs=a.epochs,
        min_steps=a.min_steps,
        patience=a.patience,
        align_steps=a.align_steps,
        lr=1e-4,
        aug_shift=a.get("aug_shift", 0.0),
        aug_noise=a.get("aug_noise", 0.0),
    )
    config.eval_every = 20
    config.checkpoint.every_steps = 200
    config.log_every = 20
    config.lock()
    return config
