"""The run configuration: defaults for every key, and validation before anything compiles.

Config files (``configs/*.py``) start from :func:`base_config` and change values; the CLI applies
``--config.a.b=v`` overrides on the locked ConfigDict (so a misspelt key fails there), and
:func:`validate` then checks every key, type and cross-field constraint, naming the key.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from typing import Any

import ml_collections

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "linear", "cosine")
ACCUM_REDUCE = ("sum", "mean")
SOURCE_KINDS = ("none", "text", "text_proxy", "cifar10", "voc")


# Generic stage keys' ranges (stage key, lower bound, upper bound or None, whether the lower
# bound is allowed); each method bounds its own keys (``methods.base.Method.ranges``).
STAGE_RANGES = (
    ("lr", 0.0, None, False),
    ("weight_decay", 0.0, None, True),
    ("momentum", 0.0, 1.0, True),
    ("warmup_fraction", 0.0, 1.0, True),
    ("clip", 0.0, None, True),
    ("epochs", 0.0, None, True),
    ("steps", 0, None, True),
    ("warmup_steps", 0, None, True),
)
# (top-level key path, lower bound): counts and intervals.
TOP_RANGES = (
    ("log_every", 1),
    ("eval_every", 0),
    ("stop_after", 0),
    ("checkpoint.every_steps", 0),
    ("checkpoint.keep", 1),
)


def groups() -> tuple[str, ...]:
    """Every parameter group a stage may train: the model's, then each method's."""
    from xmodal_jax import methods
    from xmodal_jax.models.crossmodal import MODEL_GROUPS

    return MODEL_GROUPS + tuple(g for m in methods.METHODS for g in m.groups)


def stage_defaults() -> dict[str, Any]:
    """Every key a stage may set, with its default (types are checked against these): the
    trainer's own keys, then each method's (``methods.base.Method.defaults``)."""
    from xmodal_jax import methods

    return dict(
        **_trainer_stage_defaults(),
        **{k: v for m in methods.METHODS for k, v in m.defaults.items()},
    )


def _trainer_stage_defaults() -> dict[str, Any]:
    return dict(
        kind="task",  # key of xmodal_jax.methods.STAGE_KINDS
        trainable=("embedder", "body", "head"),
        # Regex searched in "group/…/leaf" paths (xmodal_jax.paths) of trainable groups to keep
        # frozen ("" = none), e.g. PaRe's Darcy "Wv" recipe: r"body/.*attn/(query|key)/".
        freeze="",
        epochs=1.0,  # length in epochs of the stage's main dataset; `steps` > 0 overrides it
        steps=0,
        # Floor on the stage's optimizer steps (a budget in epochs shrinks with the dataset).
        min_steps=0,
        # The budget above is the run's total: the steps of the stages before this one are
        # subtracted (ORCA/MoNA then get the same optimizer steps as plain fine-tuning).
        includes_previous=False,
        # Early stopping: end the stage after this many evaluations in a row without a better
        # validation (metric, then loss); 0 = run the whole budget. results.json says which.
        patience=0,
        optimizer="adam",
        lr=1e-4,
        weight_decay=0.0,
        momentum=0.9,  # sgd only
        nesterov=False,
        schedule="linear",  # decay after warm-up: constant | linear (to 0) | cosine (to 0)
        warmup_steps=0,
        warmup_fraction=0.0,  # warm-up as a fraction of the stage (used when warmup_steps = 0)
        clip=0.0,  # global-norm clip of the (accumulated) gradient; 0 = off
        accum=1,  # gradient accumulation: micro-batches per update
        accum_reduce="mean",  # how micro-batch gradients combine (the ORCA reference sums)
        evaluate=True,
        # Rematerialise the loss's forward pass in the backward pass (jax.checkpoint): less
        # activation memory for more compute; matters most for MoNA's second-order step.
        remat=False,
    )


def base_config() -> ml_collections.ConfigDict:
    """All top-level keys with defaults. Config files copy this and set what they need."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # path "" = the shipped MiniLM. remat: per-block jax.checkpoint policy of the body stack
    # (none | full | dots_saveable | dots_with_no_batch_dims_saveable: layers.REMAT_POLICIES),
    # the lever for MoNA's second-order memory (a loss-level stage `remat` saves nothing there).
    c.body = ml_collections.ConfigDict(dict(path="", init="pretrained", remat="none"))
    c.task = ml_collections.ConfigDict(dict(name="synthetic", target_seq_len=64))
    # The 1D target embedder (models.embedders.Embed1DOptions): kind auto | orca (the reference's,
    # for reproducing papers) | patch | feature; norm auto | post | pre | none; overlap (window =
    # overlap × stride, patch only; 0 = auto: 2); hidden (value-MLP width, 0 = linear).
    c.embedder = ml_collections.ConfigDict(
        dict(kind="auto", norm="auto", overlap=0, hidden=0, min_norm_values=16)
    )
    c.data = ml_collections.ConfigDict(
        # label_ratio < 1: that fraction of train (per class, seeded) keeps its labels, the rest
        # becomes the "unlabeled" split (LSG's SSL data; plain stages never read it).
        # min_val: the carved validation split holds at least this many examples (at most half
        # of train), so a checkpoint is not chosen on a handful of examples.
        dict(
            batch_size=32,
            eval_batch_size=256,
            val_size=0.1,
            min_val=0,
            # k-fold validation for small sets: folds ≥ 2 trains one model per fold (fold i of
            # train validates it) and reports their ensemble on test (train.loop.train_folds).
            folds=0,
            fold=-1,
            prefetch=2,
            label_ratio=1.0,
        )
    )
    # kind: none | text (VADER words; pack = fill seq_len with same-class words) | text_proxy
    # (data_dir/text_xs.npy) | cifar10 (data_dir) | voc (data_dir/VOCdevkit: images + masks)
    c.source = ml_collections.ConfigDict(
        dict(kind="none", num_classes=4, max_examples=1024, seq_len=8, data_dir="", pack=False)
    )
    c.stages = ml_collections.ConfigDict()
    c.stage_order = ""
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, num_devices=0))  # 0 = all devices
    # (regex fullmatching the "group/…/leaf" path (xmodal_jax.paths), tactic): first match
    # wins; unmatched → replicate.
    c.sharding_rules = ((r"body/.*kernel", "fsdp"), (r".*embedding", "fsdp"))
    c.log_every = 10
    c.eval_every = 0  # steps between validation evals; 0 = once per epoch
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=0, keep=2))  # 0 = per eval
    # Stop (after a checkpoint) once this process has run this many steps; 0 = run to the end.
    # For time-sliced jobs: the next launch resumes from the checkpoint.
    c.stop_after = 0
    # Resuming a workdir whose saved config differs in a key that changes the trajectory (lr,
    # seed, steps, body, stages, …) is refused, listing the changes; "force" continues anyway.
    c.resume = ""
    # At every validation: linear-probe accuracy and Davies–Bouldin index of the source data's
    # features under the current body (source-knowledge retention, the MoNA paper's diagnostic).
    c.source_diagnostics = False
    # Mixed precision: float32 master params and optimizer state; the forward and backward
    # passes compute in this dtype (float32 | bfloat16); losses see float32 outputs.
    c.compute_dtype = "float32"
    return c


def add_stage(config: ml_collections.ConfigDict, name: str, **values: Any) -> None:
    """Adds ``config.stages.<name>`` with every stage key (defaults overridden by ``values``)."""
    fields = stage_defaults()
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"stages.{name}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    fields.update(values)
    config.stages[name] = ml_collections.ConfigDict(fields)


def from_saved(saved: str | dict) -> ml_collections.ConfigDict:
    """A config saved in a checkpoint (JSON), with every key added since filled by its default:
    a run written by an older version still restores and evaluates."""
    raw = json.loads(saved) if isinstance(saved, str) else dict(saved)
    out = base_config()
    for key, value in raw.items():
        if key == "stages":
            for name, stage in value.items():
                fields = stage_defaults()
                fields.update(stage)
                out.stages[name] = ml_collections.ConfigDict(fields)
        elif isinstance(value, dict) and key in out and key != "task":
            out[key].update(value)
        elif isinstance(value, dict):
            out[key] = ml_collections.ConfigDict(value)
        else:
            out[key] = value
    return out


def stage_names(config: ml_collections.ConfigDict) -> list[str]:
    """The stage names of ``config.stage_order`` (comma-separated), in order."""
    return [s.strip() for s in str(config.stage_order).split(",") if s.strip()]


class ConfigError(ValueError):
    """An invalid run configuration; the message lists every problem, each naming its key."""


def _unknown(where: str, key: str, allowed: Any) -> str:
    close = difflib.get_close_matches(str(key), [str(k) for k in allowed], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{where}: unknown key{hint} (allowed: {sorted(allowed)})"


def _check_types(node: Any, ref: Any, path: str, errors: list[str], free: bool = False) -> None:
    if not free:
        for key in ref.keys():
            if key not in node and not (path == "" and key == "stages"):
                errors.append(f"{path}{key}: missing (start config files from base_config())")
    for key in node.keys():
        where = f"{path}{key}"
        if key not in ref:
            if not free:
                errors.append(_unknown(where, key, ref.keys()))
            continue
        value, want = node[key], ref[key]
        if isinstance(want, ml_collections.ConfigDict | dict):
            if not isinstance(value, ml_collections.ConfigDict | dict):
                errors.append(f"{where}: expected a section, got {type(value).__name__}")
            else:
                if where != "stages":  # stages are checked one by one against stage_defaults()
                    _check_types(value, want, where + ".", errors, free=(where == "task"))
        elif isinstance(want, bool):
            if not isinstance(value, bool):
                errors.append(f"{where}: expected bool, got {value!r}")
        elif isinstance(want, float):
            if not isinstance(value, int | float) or isinstance(value, bool):
                errors.append(f"{where}: expected a number, got {value!r}")
            elif not math.isfinite(value):
                errors.append(f"{where}: must be finite, got {value!r}")
        elif isinstance(want, int):
            if not isinstance(value, int) or isinstance(value, bool):
                errors.append(f"{where}: expected int, got {value!r}")
        elif isinstance(want, str):
            if not isinstance(value, str):
                errors.append(f"{where}: expected str, got {value!r}")
        elif isinstance(want, tuple | list) and not isinstance(value, tuple | list):
            errors.append(f"{where}: expected a sequence, got {value!r}")


def validate(
    config: ml_collections.ConfigDict, num_devices: int | None = None, training: bool = True
) -> None:
    """Checks keys, types and constraints; raises one ConfigError listing every problem.

    ``training=False`` (evaluating a checkpoint) skips the training batch's divisibility.
    """
    from xmodal_jax import methods

    errors: list[str] = []
    ref = base_config()
    _check_types(config, ref, "", errors)
    names = stage_names(config)
    if not names:
        errors.append("stage_order: empty; name at least one stage of config.stages")
    for name in names:
        if name not in config.stages:
            errors.append(f"stage_order: stage {name!r} not in config.stages {list(config.stages)}")
    defaults = stage_defaults()
    for name, st in config.stages.items():
        where = f"stages.{name}."
        _check_types(st, defaults, where, errors)
        get = st.get
        if get("kind") not in methods.STAGE_KINDS:
            errors.append(f"{where}kind: {get('kind')!r} not in {sorted(methods.STAGE_KINDS)}")
        if get("freeze"):
            try:
                re.compile(get("freeze"))
            except re.error as e:
                errors.append(f"{where}freeze: {get('freeze')!r} is not a regex ({e})")
        if get("optimizer") not in OPTIMIZERS:
            errors.append(f"{where}optimizer: {get('optimizer')!r} not in {OPTIMIZERS}")
        if get("schedule") not in SCHEDULES:
            errors.append(f"{where}schedule: {get('schedule')!r} not in {SCHEDULES}")
        if get("accum_reduce") not in ACCUM_REDUCE:
            errors.append(f"{where}accum_reduce: {get('accum_reduce')!r} not in {ACCUM_REDUCE}")
        allowed = groups()
        bad = sorted(set(get("trainable", ())) - set(allowed))
        if bad or not get("trainable"):
            errors.append(
                f"{where}trainable: {list(get('trainable', ()))} must be a non-empty "
                f"subset of {allowed}"
            )
        ranges = STAGE_RANGES + tuple(r for m in methods.METHODS for r in m.ranges)
        for key, low, high, closed in ranges:
            v = get(key)
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                if v < low or (not closed and v == low) or (high is not None and v >= high):
                    bound = f"{'≥' if closed else '>'} {low}" + (
                        f" and < {high}" if high is not None else ""
                    )
                    errors.append(f"{where}{key}: must be {bound}, got {v!r}")
        if get("steps", 0) <= 0 and not get("epochs", 0) > 0:
            errors.append(f"{where}epochs/steps: one of them must be > 0")
        for m in methods.METHODS:
            errors.extend(m.check(get, where) if m.check else ())
        for key in ("min_steps", "patience"):
            if not (isinstance(get(key), int) and get(key) >= 0):
                errors.append(f"{where}{key}: must be an int ≥ 0, got {get(key)!r}")
        if not (isinstance(get("accum"), int) and get("accum") >= 1):
            errors.append(f"{where}accum: must be an int ≥ 1, got {get('accum')!r}")
    from xmodal_jax.models.embedders import Embed1DOptions

    try:
        Embed1DOptions(**config.embedder)
    except (ValueError, TypeError) as e:
        errors.append(str(e))
    for key, low in TOP_RANGES:
        node = config
        for part in key.split("."):
            node = node.get(part) if hasattr(node, "get") else None
        if isinstance(node, int) and not isinstance(node, bool) and node < low:
            why = (
                " (keep=0 would delete every checkpoint as it is written)" if "keep" in key else ""
            )
            errors.append(f"{key}: must be ≥ {low}, got {node}{why}")
    if config.get("resume", "") not in ("", "force"):
        errors.append(f"resume: {config.resume!r} not in ('', 'force')")
    if config.body.init not in ("pretrained", "random"):
        errors.append(f"body.init: {config.body.init!r} not in ('pretrained', 'random')")
    from xmodal_jax.models.layers import REMAT_POLICIES

    if config.body.get("remat", "none") not in REMAT_POLICIES:
        errors.append(f"body.remat: {config.body.get('remat')!r} not in {sorted(REMAT_POLICIES)}")
    if config.get("compute_dtype", "float32") not in ("float32", "bfloat16"):
        errors.append(f"compute_dtype: {config.compute_dtype!r} not in ('float32', 'bfloat16')")
    if config.source.kind not in SOURCE_KINDS:
        errors.append(f"source.kind: {config.source.kind!r} not in {SOURCE_KINDS}")
    for key in ("batch_size", "eval_batch_size"):
        if not (isinstance(config.data.get(key), int) and config.data.get(key) > 0):
            errors.append(f"data.{key}: must be a positive int, got {config.data.get(key)!r}")
    if num_devices and not errors:
        for key in ("batch_size", "eval_batch_size") if training else ("eval_batch_size",):
            if config.data[key] % num_devices:
                errors.append(
                    f"data.{key}={config.data[key]} is not divisible by the {num_devices} devices"
                )
        for name in names if training else ():
            acc = config.stages[name].accum
            if config.data.batch_size % (acc * num_devices):
                errors.append(
                    f"stages.{name}.accum={acc}: data.batch_size={config.data.batch_size} must be "
                    f"divisible by accum × devices = {acc * num_devices}"
                )
    folds, fold = config.data.get("folds", 0), config.data.get("fold", -1)
    if folds == 1 or folds < 0 or not -1 <= fold < max(folds, 1):
        errors.append(
            f"data.folds={folds}, data.fold={fold}: folds is 0 (one carved validation split) or "
            "≥ 2 (k-fold), fold is -1 (all folds) or one fold id below folds"
        )
    if config.data.get("min_val", 0) < 0:
        errors.append(f"data.min_val: must be ≥ 0, got {config.data.min_val}")
    if not 0 <= float(config.data.val_size) < 1 and not float(config.data.val_size).is_integer():
        errors.append(f"data.val_size: a fraction in [0, 1) or a count, got {config.data.val_size}")
    for i, rule in enumerate(config.sharding_rules):
        if len(rule) != 2 or rule[1] not in ("replicate", "fsdp"):
            errors.append(f"sharding_rules[{i}]: expected (regex, 'replicate'|'fsdp'), got {rule}")
    if errors:
        raise ConfigError("invalid config:\n  " + "\n  ".join(errors))
