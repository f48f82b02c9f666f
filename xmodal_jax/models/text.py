"""BERT / RoBERTa encoder bodies as flax.nnx modules, and their Hugging Face key-mapping table.

The input embedding (``TextEmbeddings``) and the transformer stack (``TextEncoder``) are separate
modules: cross-modal transfer feeds the stack with tokens from a new embedder, and uses the
pretrained embedding only as the (frozen) source embedder.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from xmodal_jax.models import layers
from xmodal_jax.models.weights import Rule, Transform, require

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """Hyper-parameters of a BERT-family encoder (the subset of HF ``config.json`` we use)."""

    model_type: str = "bert"  # "bert" or "roberta": decides the position-id rule.
    vocab_size: int = 30522
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    @property
    def position_offset(self) -> int:
        """First position id used for a real token (RoBERTa counts from ``pad_token_id + 1``)."""
        return self.pad_token_id + 1 if self.model_type == "roberta" else 0

    @classmethod
    def from_hf(cls, raw: dict[str, Any], source: str) -> TextConfig:
        """Reads a HF BERT/RoBERTa ``config.json`` dict; errors name ``source`` and the field."""
        pet = raw.get("position_embedding_type", "absolute")
        if pet != "absolute":
            raise ValueError(
                f"{source}: position_embedding_type={pet!r}; only 'absolute' is supported"
            )
        return cls(
            model_type="roberta" if raw["model_type"] in ("roberta", "xlm-roberta") else "bert",
            vocab_size=require(raw, "vocab_size", int, source),
            hidden_size=require(raw, "hidden_size", int, source),
            num_layers=require(raw, "num_hidden_layers", int, source),
            num_heads=require(raw, "num_attention_heads", int, source),
            intermediate_size=require(raw, "intermediate_size", int, source),
            hidden_act=require(raw, "hidden_act", str, source),
            max_position_embeddings=require(raw, "max_position_embeddings", int, source),
            type_vocab_size=int(raw.get("type_vocab_size", 2)),
            layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
            pad_token_id=int(raw.get("pad_token_id") or 0),
        )


class TextEmbeddings(nnx.Module):
    """Word + position + token-type embeddings followed by LayerNorm (the body's input layer)."""

    def __init__(self, cfg: TextConfig, rngs: nnx.Rngs):
        init = nnx.initializers.normal(0.02)
        self.cfg = cfg
        self.word = nnx.Embed(cfg.vocab_size, cfg.hidden_size, embedding_init=init, rngs=rngs)
        self.position = nnx.Embed(
            cfg.max_position_embeddings, cfg.hidden_size, embedding_init=init, rngs=rngs
        )
        self.token_type = nnx.Embed(
            cfg.type_vocab_size, cfg.hidden_size, embedding_init=init, rngs=rngs
        )
        self.norm = layers.layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs)

    def position_ids(self, input_ids: Array) -> Array:
        """BERT: 0..L-1. RoBERTa: pad+1+rank among non-pad tokens, pad tokens get ``pad``."""
        if self.cfg.model_type == "roberta":
            not_pad = (input_ids != self.cfg.pad_token_id).astype(jnp.int32)
            return jnp.cumsum(not_pad, axis=-1) * not_pad + self.cfg.pad_token_id
        return jnp.broadcast_to(jnp.arange(input_ids.shape[-1]), input_ids.shape)

    def __call__(
        self,
        input_ids: Array,
        token_type_ids: Array | None = None,
        position_ids: Array | None = None,
    ) -> Array:
        chex.assert_rank(input_ids, 2)
        if input_ids.shape[1] + self.cfg.position_offset > self.cfg.max_position_embeddings:
            raise ValueError(
                f"input_ids has length {input_ids.shape[1]} but the position table holds "
                f"{self.cfg.max_position_embeddings} rows (offset {self.cfg.position_offset})"
            )
        if position_ids is None:
            position_ids = self.position_ids(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = self.word(input_ids) + self.position(position_ids) + self.token_type(token_type_ids)
        return self.norm(x)


class EncoderLayer(nnx.Module):
    """Post-LN transformer layer: x ← LN(x + Attn(x)); x ← LN(x + MLP(x))."""

    def __init__(self, cfg: TextConfig, rngs: nnx.Rngs):
        self.attn = layers.SelfAttention(cfg.hidden_size, cfg.num_heads, rngs)
        self.attn_norm = layers.layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs)
        self.mlp = layers.MLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act, rngs)
        self.mlp_norm = layers.layer_norm(cfg.hidden_size, cfg.layer_norm_eps, rngs)

    def __call__(self, x: Array, bias: Array | None) -> Array:
        x = self.attn_norm(x + self.attn(x, bias))
        return self.mlp_norm(x + self.mlp(x))


class TextEncoder(nnx.Module):
    """The transformer stack: any ``[B, L, D]`` token sequence in, last hidden state out."""

    def __init__(self, cfg: TextConfig, rngs: nnx.Rngs):
        self.layers = nnx.List([EncoderLayer(cfg, rngs) for _ in range(cfg.num_layers)])
        self.hidden_size = cfg.hidden_size
        self.remat_policy = "none"  # per-layer jax.checkpoint policy: layers.set_remat

    def __call__(self, tokens: Array, attention_mask: Array | None = None) -> Array:
        return layers.run_stack(
            self.layers, tokens, attention_mask, self.hidden_size, self.remat_policy
        )


class TextModel(layers.Body):
    """A BERT/RoBERTa body: ``embeddings`` (source embedder) + ``encoder`` (the transferred stack).

    Called with the HF input names it returns the last hidden state ``[B, L, D]``, which is what
    HF ``BertModel``/``RobertaModel`` return as ``last_hidden_state``.
    """

    def __init__(self, cfg: TextConfig, rngs: nnx.Rngs):
        super().__init__(cfg, TextEmbeddings(cfg, rngs), TextEncoder(cfg, rngs))

    def __call__(
        self,
        input_ids: Array,
        attention_mask: Array | None = None,
        token_type_ids: Array | None = None,
        position_ids: Array | None = None,
    ) -> Array:
        tokens = self.embeddings(input_ids, token_type_ids, position_ids)
        return self.encoder(tokens, attention_mask)


# --- Hugging Face key mapping -------------------------------------------------------------------
# HF keys after stripping an optional "bert."/"roberta." prefix. Old TF-converted checkpoints name
# LayerNorm parameters gamma/beta, hence the alternations.
_LN_W, _LN_B = r"(?:weight|gamma)", r"(?:bias|beta)"
_L = r"encoder\.layer\.(\d+)\."

HF_PREFIXES = ("bert.", "roberta.")
HF_RULES: tuple[Rule, ...] = (
    Rule(r"embeddings\.word_embeddings\.weight", "embeddings.word.embedding", Transform.IDENTITY),
    Rule(
        r"embeddings\.position_embeddings\.weight",
        "embeddings.position.embedding",
        Transform.IDENTITY,
    ),
    Rule(
        r"embeddings\.token_type_embeddings\.weight",
        "embeddings.token_type.embedding",
        Transform.IDENTITY,
    ),
    Rule(rf"embeddings\.LayerNorm\.{_LN_W}", "embeddings.norm.scale", Transform.IDENTITY),
    Rule(rf"embeddings\.LayerNorm\.{_LN_B}", "embeddings.norm.bias", Transform.IDENTITY),
    Rule(
        _L + r"attention\.self\.(query|key|value)\.weight",
        r"encoder.layers.\1.attn.\2.kernel",
        Transform.LINEAR,
    ),
    Rule(
        _L + r"attention\.self\.(query|key|value)\.bias",
        r"encoder.layers.\1.attn.\2.bias",
        Transform.IDENTITY,
    ),
    Rule(
        _L + r"attention\.output\.dense\.weight",
        r"encoder.layers.\1.attn.out.kernel",
        Transform.LINEAR,
    ),
    Rule(
        _L + r"attention\.output\.dense\.bias",
        r"encoder.layers.\1.attn.out.bias",
        Transform.IDENTITY,
    ),
    Rule(
        _L + rf"attention\.output\.LayerNorm\.{_LN_W}",
        r"encoder.layers.\1.attn_norm.scale",
        Transform.IDENTITY,
    ),
    Rule(
        _L + rf"attention\.output\.LayerNorm\.{_LN_B}",
        r"encoder.layers.\1.attn_norm.bias",
        Transform.IDENTITY,
    ),
    Rule(
        _L + r"intermediate\.dense\.weight", r"encoder.layers.\1.mlp.fc1.kernel", Transform.LINEAR
    ),
    Rule(_L + r"intermediate\.dense\.bias", r"encoder.layers.\1.mlp.fc1.bias", Transform.IDENTITY),
    Rule(_L + r"output\.dense\.weight", r"encoder.layers.\1.mlp.fc2.kernel", Transform.LINEAR),
    Rule(_L + r"output\.dense\.bias", r"encoder.layers.\1.mlp.fc2.bias", Transform.IDENTITY),
    Rule(
        _L + rf"output\.LayerNorm\.{_LN_W}", r"encoder.layers.\1.mlp_norm.scale", Transform.IDENTITY
    ),
    Rule(
        _L + rf"output\.LayerNorm\.{_LN_B}", r"encoder.layers.\1.mlp_norm.bias", Transform.IDENTITY
    ),
)
# Task heads and buffers a body checkpoint may carry; loading the body knowingly drops them.
HF_IGNORE: tuple[str, ...] = (
    r"pooler\..*",
    r"cls\..*",
    r"lm_head\..*",
    r"classifier\..*",
    r"qa_outputs\..*",
    r"embeddings\.position_ids",
)
