"""The ViT body as a flax.nnx module, and its Hugging Face key-mapping table.

As in ``text.py``, the input layer (``embeddings``: patch projection, class token and learned
positions) and the transformer stack (``encoder``) are separate modules, so cross-modal transfer
can feed the stack with tokens from a new embedder. Called on ``pixel_values`` (NCHW, like HF) the
model returns exactly HF's ``last_hidden_state``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from xmodal_jax.models import embedders, layers
from xmodal_jax.models.hf_vision import (
    _INIT,
    _attention,
    _build,
    _conv,
    _image_size,
    _mlp,
    _norm,
    _number,
    _optional,
    _pair,
    _positive,
    patch_target_embedder,
)
from xmodal_jax.models.weights import Rule, Transform, WeightLoadError, require

Array = jax.Array


# --- ViT ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Hyper-parameters of a ViT encoder (the HF ``config.json`` subset we use); ViT-B/16 default.

    ``image_size`` may be given as an int or ``(h, w)``; it is stored as ``(h, w)``. The class
    token and ``(h // patch) * (w // patch)`` learned positions make the position table.
    """

    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    image_size: tuple[int, int] = (224, 224)
    patch_size: int = 16
    num_channels: int = 3
    qkv_bias: bool = True

    def __post_init__(self):
        object.__setattr__(self, "image_size", _pair(self.image_size, "image_size"))
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size"):
            _positive(name, getattr(self, name))
        for name in ("patch_size", "num_channels"):
            _positive(name, getattr(self, name))
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by "
                f"num_heads (num_attention_heads)={self.num_heads}"
            )
        if min(self.image_size) < self.patch_size:
            raise ValueError(
                f"image_size={self.image_size} is smaller than patch_size={self.patch_size}"
            )
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        layers.activation(self.hidden_act)  # raises naming hidden_act

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid ``(h, w)`` (HF's strided conv drops a partial last patch)."""
        return (self.image_size[0] // self.patch_size, self.image_size[1] // self.patch_size)

    @classmethod
    def from_hf(cls, raw: dict[str, Any], source: str) -> ViTConfig:
        """Reads a HF ViT ``config.json`` dict; errors name ``source`` and the field."""
        head_dim = raw.get("head_dim")
        hidden = require(raw, "hidden_size", int, source)
        heads = require(raw, "num_attention_heads", int, source)
        if head_dim is not None and heads and head_dim * heads != hidden:
            raise WeightLoadError(
                f"{source}: field 'head_dim'={head_dim!r} × num_attention_heads={heads} != "
                f"hidden_size={hidden}; only head_dim = hidden_size / heads is supported"
            )
        return _build(
            cls,
            source,
            hidden_size=hidden,
            num_layers=require(raw, "num_hidden_layers", int, source),
            num_heads=heads,
            intermediate_size=require(raw, "intermediate_size", int, source),
            hidden_act=_optional(raw, "hidden_act", str, source, "gelu"),
            layer_norm_eps=_number(raw, "layer_norm_eps", source, 1e-12),
            image_size=_image_size(raw, source, 224),
            patch_size=_optional(raw, "patch_size", int, source, 16),
            num_channels=_optional(raw, "num_channels", int, source, 3),
            qkv_bias=_optional(raw, "qkv_bias", bool, source, True),
        )


class ViTEmbeddings(nnx.Module):
    """Patch projection → class token prepended → + positions: ``[B,C,H,W]`` → ``[B,1+N,D]``.

    Like HF without ``interpolate_pos_encoding``, the image must have the configured size.
    """

    def __init__(self, cfg: ViTConfig, rngs: nnx.Rngs):
        p, d = cfg.patch_size, cfg.hidden_size
        self.image_size = cfg.image_size
        self.num_channels = cfg.num_channels
        self.patch = nnx.Conv(
            cfg.num_channels,
            d,
            kernel_size=(p, p),
            strides=(p, p),
            padding="VALID",
            kernel_init=_INIT,
            rngs=rngs,
        )
        self.cls_token = nnx.Param(_INIT(rngs.params(), (1, 1, d)))
        n = cfg.grid[0] * cfg.grid[1]
        self.position = nnx.Param(_INIT(rngs.params(), (1, n + 1, d)))

    def __call__(self, pixel_values: Array) -> Array:
        chex.assert_rank(pixel_values, 4)
        _, c, h, w = pixel_values.shape
        if c != self.num_channels or (h, w) != self.image_size:
            raise ValueError(
                f"pixel_values has shape {pixel_values.shape}; this ViT expects "
                f"[B, {self.num_channels}, {self.image_size[0]}, {self.image_size[1]}]"
            )
        x = jnp.transpose(pixel_values.astype(self.patch.kernel.dtype), (0, 2, 3, 1))
        tokens = self.patch(x)
        tokens = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])
        cls = jnp.broadcast_to(self.cls_token[...], (tokens.shape[0], 1, tokens.shape[-1]))
        return jnp.concatenate([cls.astype(tokens.dtype), tokens], axis=1) + self.position[...]


class ViTLayer(nnx.Module):
    """Pre-LN transformer layer: x ← x + Attn(LN(x)); x ← x + MLP(LN(x))."""

    def __init__(self, cfg: ViTConfig, rngs: nnx.Rngs):
        d = cfg.hidden_size
        self.attn_norm = layers.layer_norm(d, cfg.layer_norm_eps, rngs)
        self.attn = layers.SelfAttention(d, cfg.num_heads, rngs, qkv_bias=cfg.qkv_bias)
        self.mlp_norm = layers.layer_norm(d, cfg.layer_norm_eps, rngs)
        self.mlp = layers.MLP(d, cfg.intermediate_size, cfg.hidden_act, rngs)

    def __call__(self, x: Array, bias: Array | None) -> Array:
        x = x + self.attn(self.attn_norm(x), bias)
        return x + self.mlp(self.mlp_norm(x))


class ViTEncoder(nnx.Module):
    """The ViT stack: pre-LN layers then the final LayerNorm; any ``[B, L, D]`` tokens in."""

    def __init__(self, cfg: ViTConfig, rngs: nnx.Rngs):
        self.hidden_size = cfg.hidden_size
        self.layers = nnx.List([ViTLayer(cfg, rngs) for _ in range(cfg.num_layers)])
        self.norm = layers.layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs)
        self.remat_policy = "none"  # per-layer jax.checkpoint policy: layers.set_remat

    def __call__(self, tokens: Array, attention_mask: Array | None = None) -> Array:
        x = layers.run_stack(
            self.layers, tokens, attention_mask, self.hidden_size, self.remat_policy
        )
        return self.norm(x)


class ViTModel(layers.Body):
    """A ViT body: ``embeddings`` (source embedder) + ``encoder`` (the transferred stack).

    ``model(pixel_values)`` with NCHW floats returns ``[B, 1 + N, D]`` (class token first, after the
    final LayerNorm): HF ``ViTModel``'s ``last_hidden_state``.
    """

    def __init__(self, cfg: ViTConfig, rngs: nnx.Rngs):
        super().__init__(cfg, ViTEmbeddings(cfg, rngs), ViTEncoder(cfg, rngs))

    def __call__(self, pixel_values: Array) -> Array:
        return self.encoder(self.embeddings(pixel_values))


_VIT_L = r"(?:encoder\.layer|layers)\.(\d+)\."


_VIT_T = r"encoder.layers.\1."


VIT_HF_PREFIXES = ("vit.",)


VIT_HF_RULES: tuple[Rule, ...] = (
    Rule(r"embeddings\.cls_token", "embeddings.cls_token", Transform.IDENTITY),
    Rule(r"embeddings\.position_embeddings", "embeddings.position", Transform.IDENTITY),
    *_conv(r"embeddings\.patch_embeddings\.projection", "embeddings.patch"),
    *_norm(_VIT_L + r"layernorm_before", _VIT_T + "attn_norm"),
    *_attention(_VIT_L, _VIT_T, "attention"),
    *_norm(_VIT_L + r"layernorm_after", _VIT_T + "mlp_norm"),
    *_mlp(_VIT_L, _VIT_T),
    *_norm(r"layernorm", "encoder.norm"),
)


# Task heads a body checkpoint may carry (pooler, classifier, the SimMIM decoder and its mask
# token); loading the body knowingly drops them.
VIT_HF_IGNORE: tuple[str, ...] = (
    r"pooler\..*",
    r"classifier\..*",
    r"decoder\..*",
    r"embeddings\.mask_token",
)

# --- as the body of a CrossModalModel (models.crossmodal.build_crossmodal) ----------------------


def target_embedder(
    c_in: int, hw: tuple[int, int], cfg: ViTConfig, model: nnx.Module, rngs: nnx.Rngs
) -> embedders.Embed2D:
    """The new target embedder: a patch embedding like the body's own (class token and
    positions) for ``c_in`` channels; inputs of any ``hw`` are resized to the body's image size."""
    del hw
    return patch_target_embedder(
        c_in, cfg, model.token_dim, rngs, patch_norm=False, eps=cfg.layer_norm_eps
    )


def body_kwargs(embedder: nnx.Module) -> dict[str, Any]:
    """Static arguments of the encoder for ``embedder``'s tokens: none (positions are added)."""
    del embedder
    return {}


def dense_grid(cfg: ViTConfig, embedder: nnx.Module) -> tuple[int, int]:
    """The token grid a dense head reads: the patch grid (the encoder keeps it)."""
    del cfg
    return embedder.grid
