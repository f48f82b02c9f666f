"""PaRe: gated patch replacement, the intermediate modality of spec/pare.md.

Per step: embed the target batch (z_t ``[B, N_t, D]``) and a source batch (z_s ``[B, N_s, D]``,
frozen), score every token with a shared gate, replace k target tokens by k source tokens, and
train on the clean sample plus the mixed one:

    L = ℓ(h(B(z_t)), y_t) + w·[(1−λ)·ℓ(h(B(z_mix)), y_t) + λ·ℓ_src(B(z_mix))],    λ = k / N_t

k follows the easy→hard schedule k(epoch) (traced, so the step compiles once for the whole run).
Selection is a relaxed Gumbel top-k with a straight-through mask in phase A (the gate learns), a
hard top-k without gate gradient in phase B. The replacement is one vectorised gather + ``where``:
each phase produces a *source order* (its first k entries are the chosen source tokens) and a
*target order* (its first k entries are the slots to overwrite); slot ``tgt[i]`` receives token
``src[i]`` for ``i < k``.

Public API (pure, jittable, on plain arrays / params pytrees): :func:`gate_scores`,
:func:`relaxed_topk`, :func:`hard_topk`, :func:`mix_tokens`, :func:`k_schedule`,
:func:`pare_loss`, and :func:`pare_stage` / :func:`init_params` for the trainer.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xmodal_jax import losses
from xmodal_jax.data import pipeline
from xmodal_jax.methods.base import Context, Method, Stage
from xmodal_jax.models import crossmodal
from xmodal_jax.models.heads import masked_mean

Array = jax.Array
Params = dict[str, Any]
FAMILIES = ("2d", "dense", "1d")
# spec §5: weight of the mixed terms and the phase-A length (epochs) per family.
MIX_WEIGHT = {"2d": 1.0, "dense": 0.3, "1d": 0.1}
PHASE_A_EPOCHS = {"2d": 10, "dense": 10, "1d": 5}
GROUPS = ("gate", "source_head")
# The largest share of target tokens replaced: the easy end of the spec's 2D schedule.
MAX_FRACTION = 2000 / 3136


# --- gate and selection ---------------------------------------------------------------------------


def gate_scores(gate: Params, tokens: Array) -> Array:
    """σ(Linear(D→1)) per token: ``[B, N, D]`` → ``[B, N]`` in (0, 1)."""
    return jax.nn.sigmoid(tokens @ gate["kernel"][:, 0] + gate["bias"][0])


def _ranks(values: Array) -> Array:
    """Rank of each entry along the last axis in descending order (0 = largest; ties by index)."""
    order = jnp.argsort(-values, axis=-1, stable=True)
    return jnp.argsort(order, axis=-1, stable=True)


def relaxed_topk(
    scores: Array,
    k: Array | int,
    key: Array | None,
    *,
    k_max: int,
    tau: float = 0.9,
    gumbel_on: str = "prob",
    unroll: int = 1,
) -> tuple[Array, Array, Array]:
    """Relaxed Gumbel top-k (spec §3 phase A) → ``(soft, hard, straight_through)``, each ``[B, N]``.

    ``soft`` is the k-hot Σ_r softmax(w_r/τ) after k rounds, each round damping the mass already
    taken by ``log(1 − p)``; ``hard`` is the 0/1 top-k of ``soft``; ``straight_through`` is
    ``hard + soft − sg(soft)``: its value is ``hard``, its gradient ``soft``'s. ``k`` may be a
    traced scalar ≤ ``k_max`` (the scan runs ``k_max`` rounds, those ≥ k leave the carry as is).
    ``gumbel_on="prob"`` adds the noise to the scores as the reference does; ``"logit"`` to
    ``log(scores)`` (proper Gumbel-top-k). ``key=None`` means no noise.
    """
    if gumbel_on not in ("prob", "logit"):
        raise ValueError(f"gumbel_on={gumbel_on!r}; expected 'prob' or 'logit'")
    w = scores if gumbel_on == "prob" else jnp.log(jnp.maximum(scores, 1e-20))
    if key is not None:
        w = w + jax.random.gumbel(key, scores.shape, scores.dtype)
    tiny = jnp.finfo(scores.dtype).tiny
    k = jnp.asarray(k, jnp.int32)

    # Rematerialised: the backward pass recomputes each round's softmax instead of storing
    # k_max × B × N of them.
    @jax.checkpoint
    def round_(carry, r):
        w, p, khot = carry
        w_new = w + jnp.log(jnp.maximum(1.0 - p, tiny))
        p_new = jax.nn.softmax(w_new / tau, axis=-1)
        live = r < k
        return (
            jnp.where(live, w_new, w),
            jnp.where(live, p_new, p),
            jnp.where(live, khot + p_new, khot),
        ), None

    zeros = jnp.zeros_like(scores)
    (_, _, soft), _ = jax.lax.scan(
        round_, (w, zeros, zeros), jnp.arange(k_max), unroll=min(unroll, max(k_max, 1))
    )
    hard = (_ranks(jax.lax.stop_gradient(soft)) < k).astype(scores.dtype)
    # Parenthesised so the forward value is exactly `hard` (soft − soft is exactly 0).
    return soft, hard, hard + (soft - jax.lax.stop_gradient(soft))


def hard_topk(scores: Array, k: Array | int) -> Array:
    """0/1 mask of the k highest ``scores`` per row (no gradient), ``[B, N]``."""
    ranks = _ranks(jax.lax.stop_gradient(scores))
    return (ranks < jnp.asarray(k, jnp.int32)).astype(scores.dtype)


def chosen_first(mask: Array, priority: Array | None = None) -> Array:
    """Token indices ``[B, N]``: those with ``mask == 1`` first, then the rest.

    Within each part by ascending position, or by descending ``priority`` if given.
    """
    n = mask.shape[-1]
    within = jnp.arange(n) if priority is None else _ranks(jax.lax.stop_gradient(priority))
    key = (jax.lax.stop_gradient(mask) < 0.5).astype(jnp.int32) * (2 * n) + within
    return jnp.argsort(key, axis=-1, stable=True)


def mix_tokens(
    z_t: Array,
    z_s: Array,
    tgt_order: Array,
    src_order: Array,
    k: Array | int,
    m_t: Array | None = None,
    m_s: Array | None = None,
) -> Array:
    """The mixed sample: slot ``tgt_order[b, i]`` ← ``z_s[b, src_order[b, i]]`` for ``i < k``.

    One gather and one ``where`` (no loop over tokens or samples). Kept slots hold
    ``m_t·z_t``, replaced ones ``m_s·z_s`` (the straight-through masks carry the gate's gradient;
    ``None`` = 1). ``N_s ≠ N_t`` is fine; ``k ≤ min(N_s, N_t)``; ``k = 0`` returns ``z_t``.
    """
    n_s = z_s.shape[1]
    if m_t is not None:
        z_t = z_t * m_t[..., None]
    if m_s is not None:
        z_s = z_s * m_s[..., None]
    slot_rank = jnp.argsort(tgt_order, axis=-1)  # [B, N_t]: i such that tgt_order[i] == slot
    replaced = slot_rank < jnp.asarray(k, jnp.int32)
    src_idx = jnp.take_along_axis(src_order, jnp.minimum(slot_rank, n_s - 1), axis=-1)
    gathered = jnp.take_along_axis(z_s, src_idx[..., None], axis=1)
    return jnp.where(replaced[..., None], gathered, z_t)


def select_and_mix(
    z_t: Array,
    z_s: Array,
    s_t: Array,
    s_s: Array,
    k: Array,
    key: Array,
    *,
    phase_a: Array | bool,
    tau: float = 0.9,
    gumbel_on: str = "prob",
    pairing: str = "position",
    k_range: tuple[int, int] | None = None,
) -> Array:
    """Both phases behind one ``lax.cond`` on ``phase_a`` (traced): → ``z_mix``.

    Phase A: the source keeps the relaxed top-k, the target the relaxed top-(N_t − k); the k
    unkept target slots are overwritten. Phase B: the k highest-scoring source tokens go into
    the k lowest-scoring target slots (most important source → least important slot), no gate
    gradient. ``pairing="rank"`` orders phase A's chosen tokens by score too. ``k_range`` =
    static (min, max) of k over the run (from the schedule) bounds the relaxed rounds: the source
    side runs k_max rounds, the target side N_t − k_min (instead of N_s and N_t).
    """
    n_t, n_s = z_t.shape[1], z_s.shape[1]
    k_lo, k_hi = k_range if k_range is not None else (0, min(n_s, n_t))
    ks, kt = jax.random.split(key)

    def phase_a_fn():
        _, _, m_s = relaxed_topk(s_s, k, ks, k_max=min(k_hi, n_s), tau=tau, gumbel_on=gumbel_on)
        _, _, m_t = relaxed_topk(
            s_t, n_t - k, kt, k_max=n_t - max(k_lo, 0), tau=tau, gumbel_on=gumbel_on
        )
        rank = pairing == "rank"
        src = chosen_first(m_s, s_s if rank else None)
        tgt = chosen_first(1.0 - m_t, -s_t if rank else None)
        return mix_tokens(z_t, z_s, tgt, src, k, m_t, m_s)

    def phase_b_fn():
        src = jnp.argsort(-jax.lax.stop_gradient(s_s), axis=-1, stable=True)
        tgt = jnp.argsort(jax.lax.stop_gradient(s_t), axis=-1, stable=True)
        return mix_tokens(z_t, z_s, tgt, src, k)

    return jax.lax.cond(phase_a, phase_a_fn, phase_b_fn)


# --- schedule and losses --------------------------------------------------------------------------


def k_schedule(
    epoch: Array | int, epochs: int, *, family: str, begin: int = 0, end: int = 0, seq_num: int = 0
) -> Array:
    """k(epoch) of spec §4 in exact integer arithmetic (traced ``epoch`` is fine).

    2D / dense: ``int(begin − end·ep/E)`` (``end`` is the total decrease); 1D:
    ``int(seq_num·(1 − ep/E))``. Never negative. A Python ``int`` epoch gives a Python int.
    """
    if isinstance(epoch, int | np.integer):
        ep = int(epoch)
        if family == "1d":
            return max((seq_num * (epochs - ep)) // epochs, 0)
        if family in ("2d", "dense"):
            return max(begin - (end * ep + epochs - 1) // epochs, 0)
        raise ValueError(f"family={family!r}; expected one of {FAMILIES}")
    ep = jnp.asarray(epoch, jnp.int32)
    if family == "1d":
        k = (seq_num * (epochs - ep)) // epochs
    elif family in ("2d", "dense"):
        k = begin - (end * ep + epochs - 1) // epochs  # begin − ceil(end·ep/E)
    else:
        raise ValueError(f"family={family!r}; expected one of {FAMILIES}")
    return jnp.maximum(k, 0)


def pare_loss(
    clean: Array, mixed: Array, mixed_source: Array, lam: Array, weight: float
) -> tuple[Array, dict[str, Array]]:
    """``clean + weight·[(1−λ)·mixed + λ·mixed_source]`` from the three scalar loss terms."""
    mix = (1.0 - lam) * mixed + lam * mixed_source
    total = clean + weight * mix
    return total, {"clean_loss": clean, "mixed_loss": mixed, "source_loss": mixed_source}


def resize_nearest(masks: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of ``[N, C, H, W]`` masks (PyTorch ``mode="nearest"`` indices)."""
    h, w = masks.shape[-2:]
    rows = np.minimum((np.arange(hw[0]) * h) // hw[0], h - 1)
    cols = np.minimum((np.arange(hw[1]) * w) // hw[1], w - 1)
    return masks[..., rows[:, None], cols[None, :]]


# --- the trainer stage ----------------------------------------------------------------------------


def family_of(ctx: Context, cfg: Any) -> str:
    """The task family (``pare_family`` or, for ``auto``, from the task's output and rank)."""
    fam = cfg.pare_family
    if fam == "auto":
        spec = ctx.task.spec
        fam = "dense" if spec.output == "dense" else ("1d" if spec.is_1d else "2d")
    if fam not in FAMILIES:
        raise ValueError(f"pare_family={fam!r}; expected 'auto' or one of {FAMILIES}")
    return fam


def num_source_classes(ctx: Context) -> int:
    """Classes of the source labels (the source head's width)."""
    return int(np.max(ctx.source["y"])) + 1


def init_params(name: str, cfg: Any, ctx: Context, key: Array) -> Params:
    """The gate (Linear(D_token→1)) and, except for dense tasks, the source head.

    PyTorch ``nn.Linear``'s default init (U(±1/√fan_in) for kernel and bias), as the reference.
    """
    if ctx.source is None:
        raise ValueError(f"stages.{name}: PaRe needs source data (config.source)")
    d_tok, d_out = ctx.pretrained.dims
    kg, kgb, kh, khb = jax.random.split(key, 4)

    def linear(k1, k2, fan_in, fan_out):
        bound = 1.0 / math.sqrt(fan_in)
        return {
            "kernel": jax.random.uniform(k1, (fan_in, fan_out), jnp.float32, -bound, bound),
            "bias": jax.random.uniform(k2, (fan_out,), jnp.float32, -bound, bound),
        }

    out = {"gate": linear(kg, kgb, d_tok, 1)}
    if family_of(ctx, cfg) != "dense":
        out["source_head"] = linear(kh, khb, d_out, num_source_classes(ctx))
    return out


def source_tokens(model: Any, source: dict, skip: int) -> Array:
    """Frozen source-embedder tokens of a source batch after its ``skip`` special tokens
    (``CrossModalModel.source_tokens``: token ids, images or the precomputed text-proxy tokens)."""
    return jax.lax.stop_gradient(model.source_tokens(source)[:, skip:])


def pare_stage(name: str, cfg: Any, ctx: Context) -> Stage:
    """End-to-end PaRe training: clean + mixed-sample losses, k(epoch), phase A then B."""
    if ctx.source is None:
        raise ValueError(f"stages.{name}: PaRe needs source data (config.source)")
    fam = family_of(ctx, cfg)
    task, spec = ctx.task, ctx.task.spec
    task_loss = losses.get(task.loss)
    train = ctx.splits["train"]
    keys = ("tokens", "input_ids", "pixel_values", "y", "mask")
    source = {k: v for k, v in ctx.source.items() if k in keys}
    if fam == "dense" and spec.is_1d:
        raise ValueError(
            f"stages.{name}: PaRe for 1D dense tasks (PDEs) is not specified by the reference "
            "code (spec/pare.md §5); use method orca/mona/finetune"
        )
    if fam == "dense":
        if "mask" not in source:
            raise ValueError(
                f"stages.{name}: dense PaRe needs source masks (config.source.kind='voc')"
            )
        out_hw = spec.output_hw or tuple(spec.input_shape[1:])
        source["mask"] = resize_nearest(source["mask"], tuple(out_hw)).astype(np.float32)
    elif "y" not in source:
        raise ValueError(f"stages.{name}: PaRe's source head needs labelled source data")
    bs = int(ctx.config.data.batch_size)
    per_epoch = pipeline.steps_per_epoch(len(train["x"]), bs)
    total = int(cfg.steps) if int(cfg.steps) > 0 else math.ceil(float(cfg.epochs) * per_epoch)
    epochs = max(1, math.ceil(total / per_epoch))
    phase_a = PHASE_A_EPOCHS[fam] if int(cfg.pare_phase_a_epochs) < 0 else cfg.pare_phase_a_epochs
    if float(cfg.get("pare_phase_a_fraction", 0.0)) > 0:
        phase_a = max(1, round(float(cfg.pare_phase_a_fraction) * epochs))
    max_frac = float(cfg.get("pare_max_fraction", MAX_FRACTION))
    weight = MIX_WEIGHT[fam] if float(cfg.pare_mix_weight) < 0 else float(cfg.pare_mix_weight)
    begin, end, seq_num = int(cfg.pare_begin), int(cfg.pare_end), int(cfg.pare_seq_num)
    ref_tokens = int(cfg.pare_reference_tokens)
    tau, gumbel_on, pairing = float(cfg.pare_tau), cfg.pare_gumbel_on, cfg.pare_pairing
    graphdef, decode = ctx.graphdef, ctx.decode

    def loss_fn(params, batch, rng, step):
        model = crossmodal.merge(graphdef, params)
        src = {k[len("src_") :]: v for k, v in batch.items() if k.startswith("src_")}
        skip = model.special_tokens  # ViT's class token is never mixed
        z_full = model.embed(batch["x"])
        z_t, prefix = z_full[:, skip:], z_full[:, :skip]
        z_s = source_tokens(model, src, skip)
        n_t, n_s = z_t.shape[1], z_s.shape[1]
        epoch = step // per_epoch

        # At most max_frac of the target tokens are ever replaced (the spec's easy end, 2000 of
        # 3136): a larger k leaves the target term with (almost) no weight, λ = k/N_t → 1.
        cap = min(n_s, n_t, n_t if max_frac >= 1 else int(max_frac * n_t))

        def k_at(ep):
            # 1D default (seq_num 0): k starts at the cap, scaled to this task's N_t; an explicit
            # seq_num is the reference's count (32), scaled by pare_reference_tokens if given.
            seq = seq_num or cap
            k = k_schedule(ep, epochs, family=fam, begin=begin, end=end, seq_num=seq)
            if ref_tokens > 0 and (fam != "1d" or seq_num > 0):
                k = (k * n_t) // ref_tokens
            return jnp.clip(k, 0, cap) if isinstance(k, jax.Array) else min(max(k, 0), cap)

        k = k_at(epoch)
        # k is non-increasing in the epoch: its first and last values (Python ints) bound the
        # relaxed rounds.
        k_range = (k_at(epochs - 1), k_at(0))
        lam = k.astype(jnp.float32) / n_t
        s_t, s_s = gate_scores(params["gate"], z_t), gate_scores(params["gate"], z_s)
        z_mix = select_and_mix(
            z_t,
            z_s,
            s_t,
            s_s,
            k,
            rng,
            phase_a=epoch < phase_a,
            tau=tau,
            gumbel_on=gumbel_on,
            pairing=pairing,
            k_range=k_range,
        )
        z_mix = jnp.concatenate([prefix, z_mix], axis=1)
        extras = {k_: batch[k_] for k_ in task.loss_extras}

        def tl(out):
            return task_loss(decode(out), batch["y"], None, **task.loss_kwargs, **extras)

        clean = tl(model.outputs(model.encode(z_full)))
        feats_mix = model.encode(z_mix)
        out_mix = model.outputs(feats_mix)
        mixed = tl(out_mix)
        if fam == "dense":
            # Raw head output vs the binary source mask, never de-normalised (spec §8 item 3).
            target = jnp.broadcast_to(src["mask"], out_mix.shape)
            src_loss = losses.bce_with_logits(out_mix, target)
        else:
            head = params["source_head"]  # float32 master: bf16 features are upcast
            pooled = masked_mean(feats_mix[:, skip:], None).astype(head["kernel"].dtype)
            logits = pooled @ head["kernel"] + head["bias"]
            src_loss = losses.cross_entropy(logits, src["y"])
        total, aux = pare_loss(clean, mixed, src_loss, lam, weight)
        return total, {**aux, "k": k.astype(jnp.float32), "lam": lam, "pare/replaced_fraction": lam}

    return Stage(
        name,
        tuple(cfg.trainable),
        {"": train, "src_": source},
        loss_fn=loss_fn,
        uses_step=True,
    )


# PaRe's stage keys.
STAGE_DEFAULTS = dict(
    # PaRe (kind="pare", spec/pare.md): k(epoch) = int(pare_begin − pare_end·ep/E) for
    # 2d/dense, int(pare_seq_num·(1 − ep/E)) for 1d (seq_num 0 = pare_max_fraction · N_t);
    # relaxed Gumbel top-k for pare_phase_a_epochs, then hard top-k. −1 = the family default
    # (phase A 10/10/5 epochs, mixed-loss weight 1/0.3/0.1 for 2d/dense/1d).
    pare_family="auto",  # auto | 2d | dense | 1d
    pare_begin=2000,
    pare_end=1500,
    pare_seq_num=0,
    # begin/end are k's for this many target tokens (3136 = Swin's 56×56 grid); k is scaled by
    # N_t / pare_reference_tokens, so the spec's 2D schedule carries to other grids. 0 = as is.
    pare_reference_tokens=0,
    pare_phase_a_epochs=-1,
    pare_phase_a_fraction=0.0,  # > 0: phase A is this share of the stage's epochs instead
    # k never exceeds this share of the target tokens (2000/3136, the spec's easy end; 1.0 =
    # the reference's clamp to N_t, which replaces every token of a short 1D input).
    pare_max_fraction=2000 / 3136,
    pare_mix_weight=-1.0,
    pare_tau=0.9,
    pare_gumbel_on="prob",  # prob (as the reference) | logit (proper Gumbel-top-k)
    pare_pairing="position",  # phase A pairing: position (reference) | rank (by gate score)
)

METHOD = Method(
    name="pare",
    stage_kinds={"pare": pare_stage},
    defaults=STAGE_DEFAULTS,
    ranges=(
        ("pare_tau", 0.0, None, False),
        ("pare_max_fraction", 0.0, None, True),  # 0: no token is ever replaced (k = 0 ablation)
        ("pare_phase_a_fraction", 0.0, 1.0, True),
    ),
    groups=GROUPS,
    param_inits={"pare": init_params},
)
