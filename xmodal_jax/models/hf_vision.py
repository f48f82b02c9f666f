"""What the vision bodies share: HF config parsing helpers and weight-mapping rule builders.

Checkpoints saved by transformers (any version: 5.x converts back on save) use the "old" names
(attention.attention.query, intermediate.dense, ...); transformers 5's in-memory modules use
q_proj / mlp.fc1 / .... The rule builders accept both spellings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
from flax import nnx

from xmodal_jax.models import embedders
from xmodal_jax.models.weights import Rule, Transform, WeightLoadError, require

Array = jax.Array


# HF initialises patch projections, class tokens and positions with (truncated) N(0, 0.02).
_INIT = nnx.initializers.normal(0.02)


# HF builds Swin's embedding norm and patch-merging norms with nn.LayerNorm's default eps, not
# config.layer_norm_eps; parity needs the same.
_TORCH_LN_EPS = 1e-5


def _pair(value: Any, name: str) -> tuple[int, int]:
    """``int`` or 2-sequence of ints → ``(h, w)``, or a ValueError naming ``name``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _optional(raw: Mapping[str, Any], key: str, typ: type, source: str, default: Any) -> Any:
    """A ``config.json`` field HF fills with ``default`` when absent; type-checked when present."""
    return require(raw, key, typ, source) if key in raw else default


def _number(raw: Mapping[str, Any], key: str, source: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WeightLoadError(f"{source}: field {key!r} should be a number, got {value!r}")
    return float(value)


def _image_size(raw: Mapping[str, Any], source: str, default: int) -> tuple[int, int]:
    try:
        return _pair(raw.get("image_size", default), "image_size")
    except ValueError as e:
        raise WeightLoadError(f"{source}: field 'image_size': {e}") from e


def _build(cls: type, source: str, **fields: Any) -> Any:
    """Constructs a config; validation errors are re-raised naming the ``config.json`` file."""
    try:
        return cls(**fields)
    except WeightLoadError:
        raise
    except ValueError as e:
        raise WeightLoadError(f"{source}: {e}") from e


# --- Hugging Face key mapping -------------------------------------------------------------------


def _linear(src: str, dst: str, *, bias: bool = True) -> tuple[Rule, ...]:
    rules = (Rule(src + r"\.weight", dst + ".kernel", Transform.LINEAR),)
    if bias:
        rules += (Rule(src + r"\.bias", dst + ".bias", Transform.IDENTITY),)
    return rules


def _norm(src: str, dst: str) -> tuple[Rule, ...]:
    return (
        Rule(src + r"\.weight", dst + ".scale", Transform.IDENTITY),
        Rule(src + r"\.bias", dst + ".bias", Transform.IDENTITY),
    )


def _conv(src: str, dst: str) -> tuple[Rule, ...]:
    return (
        Rule(src + r"\.weight", dst + ".kernel", Transform.CONV),
        Rule(src + r"\.bias", dst + ".bias", Transform.IDENTITY),
    )


def _attention(src: str, dst: str, old: str) -> tuple[Rule, ...]:
    """q/k/v/out rules; ``old`` is the saved-format infix (ViT ``attention``, Swin ``self``)."""
    rules: tuple[Rule, ...] = ()
    for ours, new in (("query", "q"), ("key", "k"), ("value", "v")):
        rules += _linear(src + rf"attention\.(?:{old}\.{ours}|{new}_proj)", dst + f"attn.{ours}")
    return rules + _linear(src + r"attention\.(?:output\.dense|o_proj)", dst + "attn.out")


def _mlp(src: str, dst: str) -> tuple[Rule, ...]:
    return _linear(src + r"(?:intermediate\.dense|mlp\.fc1)", dst + "mlp.fc1") + _linear(
        src + r"(?:output\.dense|mlp\.fc2)", dst + "mlp.fc2"
    )


def patch_target_embedder(
    c_in: int, cfg: Any, token_dim: int, rngs: nnx.Rngs, *, patch_norm: bool, eps: float
) -> embedders.Embed2D:
    """A new patch embedding for ``c_in`` channels shaped like a ViT/Swin body's own: the body's
    image and patch size (inputs of another size are resized), and either a patch LayerNorm
    (Swin) or a class token with positions (ViT)."""
    return embedders.Embed2D(
        c_in,
        token_dim,
        image_size=tuple(cfg.image_size),
        patch_size=cfg.patch_size,
        norm=patch_norm,
        cls_and_positions=not patch_norm,
        eps=eps,
        rngs=rngs,
    )
