"""What a method contributes to the trainer: a :class:`Method` record (its stage kinds, config
keys, parameter groups and checks) and, per stage, a :class:`Stage` (loss or grad function + its
data).

``xmodal_jax.train`` owns the loop, optimizers, sharding and checkpoints; a method only says what
one step computes, which parameter groups it trains and which arrays its batches are drawn from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from xmodal_jax.data.tasks import Task
from xmodal_jax.models.pretrained import Pretrained

Params = dict[str, Any]
Batch = dict[str, jax.Array]
# (params, batch, rng[, step]) → …; ``step`` (the stage-local step, traced int32) is passed only to
# stages with ``uses_step=True`` (schedules inside the loss, e.g. PaRe's k(epoch)).
LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
GradFn = Callable[..., tuple[jax.Array, dict[str, jax.Array], Params]]
# (stage name, stage config, ctx, rng) → {group: params}: parameter groups a method adds next to
# the model's (built once at set-up, so they live in every checkpoint from the first step).
ParamInit = Callable[[str, Any, "Context", jax.Array], Params]


@dataclasses.dataclass(frozen=True)
class Context:
    """Read-only facts a stage builder may use."""

    graphdef: nnx.GraphDef
    task: Task
    pretrained: Pretrained
    splits: Mapping[str, Mapping[str, np.ndarray]]  # "train" / "val" / "test" arrays
    source: Mapping[str, np.ndarray] | None  # labelled source-modality examples, if any
    source_features: np.ndarray | None  # their frozen-embedder features [N, D]
    config: Any
    # Model outputs → task units (identity, or the inverse target normaliser); used by the task
    # loss and by evaluation alike.
    decode: Callable[[jax.Array], jax.Array] = lambda out: out


@dataclasses.dataclass(frozen=True)
class Stage:
    """One phase of a run.

    ``loss_fn(params, batch, rng) → (loss, metrics)`` is differentiated by the trainer w.r.t. the
    ``trainable`` groups (the others are wrapped in ``stop_gradient``); a method that needs a
    custom gradient (MoNA's meta-gradient) gives ``grad_fn`` instead. ``datasets`` maps a key
    prefix to arrays: each step draws one global batch from every entry (prefix ``""`` for the
    target data, e.g. ``"src_"`` for source data) and merges them into one batch dict.
    """

    name: str
    trainable: tuple[str, ...]
    datasets: Mapping[str, Mapping[str, np.ndarray]]
    loss_fn: LossFn | None = None
    grad_fn: GradFn | None = None
    evaluate: bool = True  # validate during this stage (the trainer sets it from the config)
    # Dataset prefixes drawn class-balanced on their "y" (P classes × Q ≥ 2 per batch), e.g.
    # MoNA's source batches, whose alignment loss needs same-class pairs.
    balanced: tuple[str, ...] = ()
    uses_step: bool = False  # loss_fn / grad_fn take a 4th argument: the stage-local step

    def __post_init__(self):
        if (self.loss_fn is None) == (self.grad_fn is None):
            raise ValueError(f"stage {self.name!r}: give exactly one of loss_fn / grad_fn")


# (stage key, lower bound, upper bound or None, whether the lower bound is allowed).
Range = tuple[str, float, float | None, bool]
# (stage config getter, "stages.<name>.") → problems, each naming its key.
StageCheck = Callable[[Callable[[str], Any], str], list[str]]


@dataclasses.dataclass(frozen=True)
class Method:
    """Everything one method adds to the trainer, declared next to its code.

    ``stage_kinds`` maps each ``config.stages.<name>.kind`` it provides to its builder
    ``(name, stage_cfg, ctx) → Stage``; ``defaults`` are the stage keys it adds (every stage
    carries them, so a config is one flat, typed dict per stage); ``ranges`` bound its numeric
    keys; ``groups`` are the parameter groups it owns next to the model's, built by
    ``param_inits[kind](name, stage_cfg, ctx, rng)``; ``check`` reports cross-key problems.
    ``config_lib`` and the trainer read methods only through these records
    (:data:`xmodal_jax.methods.METHODS`), so adding a method is one module and one line.
    """

    name: str
    stage_kinds: Mapping[str, Callable[[str, Any, Context], Stage]]
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    ranges: tuple[Range, ...] = ()
    groups: tuple[str, ...] = ()
    param_inits: Mapping[str, ParamInit] = dataclasses.field(default_factory=dict)
    check: StageCheck | None = None
