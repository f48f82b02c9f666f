"""Tabular rows as 1×F signals: scikit-learn's bundled tables or a local OpenML ARFF/CSV file.

``xmodal-train --config configs/tabular.py:name=breast_cancer --workdir runs/bc``
``xmodal-train --config configs/tabular.py:file=/data/credit-g.arff,target=class --workdir …``

Args: ``name`` (iris | wine | breast_cancer | diabetes), ``file`` / ``target`` (an OpenML-CC18
style file and its target column; default the last column),
``method`` (orca | mona | finetune | pare), ``body``, ``epochs`` and ``min_steps`` (the budget:
the larger of the two, in optimizer steps, for every method), ``patience`` (early stopping, in
evaluations every 20 steps), ``batch``, ``seed``, ``align_steps``, ``embedder`` (``auto`` = the
per-feature tokenizer for tables | ``orca`` | ``patch`` | ``feature``).
"""

from __future__ import annotations

from configs.common import parse_arg, small_table_or_series
from xmodal_jax import config_lib


def get_config(arg: str | None = None):
    """ORCA on one table; each feature becomes one token (target_seq_len = number of features)."""
    a = parse_arg(
        arg,
        name="breast_cancer",
        file="",
        target="",
        method="orca",
        body="",
        epochs=20.0,
        min_steps=300,
        patience=10,
        batch=16,
        seed=0,
        align_steps=40,
        embedder="auto",
    )
    c = config_lib.base_config()
    c.seed = a.seed
    c.body.path = a.body
    c.task.update(
        dict(name="tabular", dataset=a.name, file=a.file, target=a.target, target_seq_len=512)
    )
    return small_table_or_series(c, a, val_size=0.15)
