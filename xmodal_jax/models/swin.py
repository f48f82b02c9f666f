"""The Swin Transformer body as a flax.nnx module, and its Hugging Face key-mapping table.

The input layer (``embeddings``: patch projection + LayerNorm) and the stage stack (``encoder``)
are separate modules (as in ``text.py``). Called on ``pixel_values`` (NCHW, like HF) the model
returns exactly HF's ``last_hidden_state``. Swin's static index tables (relative position index,
shifted-window masks) are computed with numpy from Python ints at trace time, so the only state on
the modules is ``nnx.Param``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xmodal_jax.models import embedders, layers
from xmodal_jax.models.hf_vision import (
    _INIT,
    _TORCH_LN_EPS,
    _attention,
    _build,
    _conv,
    _image_size,
    _linear,
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


# --- Swin -----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SwinConfig:
    """Hyper-parameters of a Swin Transformer (HF ``config.json`` subset); Swin-B/4 w7 default.

    Stage ``i`` has width ``embed_dim * 2**i``, ``depths[i]`` blocks and ``num_heads[i]`` heads; a
    patch-merging layer halves the grid between stages. HF pads images to a multiple of
    ``patch_size``, so the token grid is ``ceil(image_size / patch_size)``.
    """

    image_size: tuple[int, int] = (224, 224)
    patch_size: int = 4
    num_channels: int = 3
    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5

    def __post_init__(self):
        object.__setattr__(self, "image_size", _pair(self.image_size, "image_size"))
        object.__setattr__(self, "depths", tuple(self.depths))
        object.__setattr__(self, "num_heads", tuple(self.num_heads))
        for name in ("patch_size", "num_channels", "embed_dim", "window_size"):
            _positive(name, getattr(self, name))
        _positive("image_size[0]", self.image_size[0])
        _positive("image_size[1]", self.image_size[1])
        if not self.depths:
            raise ValueError("depths must name at least one stage, got ()")
        for i, d in enumerate(self.depths):
            _positive(f"depths[{i}]", d)
        if len(self.num_heads) != len(self.depths):
            raise ValueError(
                f"num_heads={self.num_heads} must have one entry per stage of depths={self.depths}"
            )
        for i, h in enumerate(self.num_heads):
            _positive(f"num_heads[{i}]", h)
            if self.stage_dim(i) % h:
                raise ValueError(
                    f"num_heads[{i}]={h} does not divide stage {i}'s width "
                    f"embed_dim * 2**{i} = {self.stage_dim(i)}"
                )
        if isinstance(self.mlp_ratio, bool) or not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio!r}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")
        layers.activation(self.hidden_act)  # raises naming hidden_act

    def stage_dim(self, i: int) -> int:
        """Token width of stage ``i``."""
        return self.embed_dim * 2**i

    @property
    def grid(self) -> tuple[int, int]:
        """Token grid ``(h, w)`` of a configured-size image (ceil: HF pads to whole patches)."""
        return _swin_grid(self.image_size, self.patch_size)

    @classmethod
    def from_hf(cls, raw: dict[str, Any], source: str) -> SwinConfig:
        """Reads a HF Swin ``config.json`` dict; errors name ``source`` and the field."""
        if raw.get("use_absolute_embeddings", False):
            raise WeightLoadError(
                f"{source}: field 'use_absolute_embeddings' is true; only Swin without absolute "
                "position embeddings (every released Swin checkpoint) is supported"
            )
        return _build(
            cls,
            source,
            image_size=_image_size(raw, source, 224),
            patch_size=_optional(raw, "patch_size", int, source, 4),
            num_channels=_optional(raw, "num_channels", int, source, 3),
            embed_dim=require(raw, "embed_dim", int, source),
            depths=tuple(require(raw, "depths", list, source)),
            num_heads=tuple(require(raw, "num_heads", list, source)),
            window_size=_optional(raw, "window_size", int, source, 7),
            mlp_ratio=_number(raw, "mlp_ratio", source, 4.0),
            qkv_bias=_optional(raw, "qkv_bias", bool, source, True),
            hidden_act=_optional(raw, "hidden_act", str, source, "gelu"),
            layer_norm_eps=_number(raw, "layer_norm_eps", source, 1e-5),
        )


def output_grid(depths: tuple[int, ...], grid: tuple[int, int]) -> tuple[int, int]:
    """The token grid after the last stage for a ``grid`` of patches: each patch merging halves
    it (rounding up), once between every two stages."""
    h, w = grid
    for _ in range(len(depths) - 1):
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w


def _swin_grid(hw: tuple[int, int], patch: int) -> tuple[int, int]:
    return (-(-hw[0] // patch), -(-hw[1] // patch))


def _window_and_shift(hw: tuple[int, int], window: int, shift: int) -> tuple[int, int]:
    """HF's clamp: a grid no larger than the window is one window, and is not shifted."""
    if min(hw) <= window:
        return min(hw), 0
    return window, shift


def _relative_position_index(window: int, table_window: int) -> np.ndarray:
    """``[N, N]`` rows of the ``(2·table_window − 1)²`` bias table for a ``window²`` window.

    With ``window == table_window`` this is HF's ``relative_position_index``. A clamped, smaller
    window reads the central part of the same table (its offsets are a subset).
    """
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
    coords = coords.reshape(2, -1)
    rel = coords[:, :, None] - coords[:, None, :] + (table_window - 1)
    return rel[0] * (2 * table_window - 1) + rel[1]


def _shift_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
    """HF's shifted-window mask ``[nW, N, N]``: −100 between tokens of different regions."""

    def regions(n: int) -> np.ndarray:
        idx = np.arange(n)
        return (idx >= n - window).astype(np.int64) + (idx >= n - shift)

    img = regions(height)[:, None] * 3 + regions(width)[None, :]
    win = _partition_np(img, window)
    return np.where(win[:, None, :] != win[:, :, None], -100.0, 0.0).astype(np.float32)


def _partition_np(x: np.ndarray, window: int) -> np.ndarray:
    h, w = x.shape
    x = x.reshape(h // window, window, w // window, window).transpose(0, 2, 1, 3)
    return x.reshape(-1, window * window)


class SwinEmbeddings(nnx.Module):
    """Zero-pad to whole patches → patch projection → LayerNorm: ``[B,C,H,W]`` → ``[B, h·w, D]``.

    Tokens are in row-major grid order; the grid is ``(ceil(H / patch), ceil(W / patch))``.
    """

    def __init__(self, cfg: SwinConfig, rngs: nnx.Rngs):
        p = cfg.patch_size
        self.patch_size = p
        self.num_channels = cfg.num_channels
        self.patch = nnx.Conv(
            cfg.num_channels,
            cfg.embed_dim,
            kernel_size=(p, p),
            strides=(p, p),
            padding="VALID",
            kernel_init=_INIT,
            rngs=rngs,
        )
        self.norm = layers.layer_norm(cfg.embed_dim, _TORCH_LN_EPS, rngs)

    def __call__(self, pixel_values: Array) -> Array:
        chex.assert_rank(pixel_values, 4)
        _, c, h, w = pixel_values.shape
        if c != self.num_channels:
            raise ValueError(
                f"pixel_values has shape {pixel_values.shape}; this Swin expects "
                f"{self.num_channels} channels (NCHW)"
            )
        p = self.patch_size
        x = pixel_values.astype(self.patch.kernel.dtype)
        x = jnp.pad(x, ((0, 0), (0, 0), (0, -h % p), (0, -w % p)))
        tokens = self.patch(jnp.transpose(x, (0, 2, 3, 1)))
        tokens = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])
        return self.norm(tokens)


class SwinBlock(nnx.Module):
    """(Shifted-)window attention block with relative position bias, then the MLP (both pre-LN).

    Window and shift are fixed by config and block parity, then clamped per call to the grid it is
    given (HF semantics), so one module serves any token grid.
    """

    def __init__(self, cfg: SwinConfig, stage: int, shifted: bool, rngs: nnx.Rngs):
        dim, heads, w = cfg.stage_dim(stage), cfg.num_heads[stage], cfg.window_size
        self.window_size = w
        self.shift = w // 2 if shifted else 0
        self.num_heads = heads
        self.attn_norm = layers.layer_norm(dim, cfg.layer_norm_eps, rngs)
        self.attn = layers.SelfAttention(dim, heads, rngs, qkv_bias=cfg.qkv_bias)
        # HF initialises the table to zeros.
        self.rel_pos_table = nnx.Param(jnp.zeros(((2 * w - 1) ** 2, heads), jnp.float32))
        self.mlp_norm = layers.layer_norm(dim, cfg.layer_norm_eps, rngs)
        self.mlp = layers.MLP(dim, int(cfg.mlp_ratio * dim), cfg.hidden_act, rngs)

    def position_bias(self, window: int) -> Array:
        """The relative position bias ``[H, N, N]`` of a ``window × window`` window."""
        index = _relative_position_index(window, self.window_size).reshape(-1)
        n = window * window
        bias = jnp.take(self.rel_pos_table[...], jnp.asarray(index), axis=0)
        return bias.reshape(n, n, self.num_heads).transpose(2, 0, 1)

    def __call__(self, x: Array, hw: tuple[int, int]) -> Array:
        b, _, c = x.shape
        h, w = hw
        win, shift = _window_and_shift(hw, self.window_size, self.shift)
        hp, wp = h + (-h % win), w + (-w % win)
        y = self.attn_norm(x).reshape(b, h, w, c)
        # HF pads after the norm, so padded tokens are exact zeros inside the attention.
        y = jnp.pad(y, ((0, 0), (0, hp - h), (0, wp - w), (0, 0)))
        if shift:
            y = jnp.roll(y, (-shift, -shift), axis=(1, 2))
        nh, nw = hp // win, wp // win
        windows = y.reshape(b, nh, win, nw, win, c).transpose(0, 1, 3, 2, 4, 5)
        windows = windows.reshape(b, nh * nw, win * win, c)
        bias = self.position_bias(win)[None]  # [1, H, N, N]
        if shift:
            bias = bias + jnp.asarray(_shift_mask(hp, wp, win, shift))[:, None]  # [nW, H, N, N]
        y = self.attn(windows, bias.astype(x.dtype))
        y = y.reshape(b, nh, nw, win, win, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        if shift:
            y = jnp.roll(y, (shift, shift), axis=(1, 2))
        x = x + y[:, :h, :w].reshape(b, h * w, c)
        return x + self.mlp(self.mlp_norm(x))


class SwinPatchMerging(nnx.Module):
    """2×2 neighbourhood concat (odd grids zero-padded) → LayerNorm(4C) → Linear(4C→2C, no bias)."""

    def __init__(self, dim: int, rngs: nnx.Rngs):
        self.norm = layers.layer_norm(4 * dim, _TORCH_LN_EPS, rngs)
        self.reduction = layers.dense(4 * dim, 2 * dim, rngs, use_bias=False)

    def __call__(self, x: Array, hw: tuple[int, int]) -> Array:
        b, _, c = x.shape
        h, w = hw
        x = x.reshape(b, h, w, c)
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        # HF's channel order: (row 0, col 0), (row 1, col 0), (row 0, col 1), (row 1, col 1).
        x = jnp.concatenate(
            [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1
        )
        x = x.reshape(b, -1, 4 * c)
        return self.reduction(self.norm(x))


class SwinStage(nnx.Module):
    """``depths[i]`` blocks alternating regular and shifted windows, then patch merging (if any)."""

    def __init__(self, cfg: SwinConfig, stage: int, rngs: nnx.Rngs):
        self.blocks = nnx.List(
            [SwinBlock(cfg, stage, j % 2 == 1, rngs) for j in range(cfg.depths[stage])]
        )
        last = stage == len(cfg.depths) - 1
        self.downsample = None if last else SwinPatchMerging(cfg.stage_dim(stage), rngs)

    def __call__(
        self, x: Array, hw: tuple[int, int], remat: str = "none"
    ) -> tuple[Array, tuple[int, int]]:
        for block in self.blocks:
            x = layers.call_block(block, remat, x, hw)
        if self.downsample is not None:
            x = self.downsample(x, hw)
            hw = ((hw[0] + 1) // 2, (hw[1] + 1) // 2)
        return x, hw


class SwinEncoder(nnx.Module):
    """The Swin stack: stages with shifted windows and patch merging, then the final LayerNorm.

    Takes row-major tokens ``[B, h·w, embed_dim]`` of a ``grid_hw = (h, w)`` grid (default: the
    configured image's grid) and returns ``[B, h'·w', output_dim]`` with ``h' = ceil(h / 2^(S-1))``.
    """

    def __init__(self, cfg: SwinConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        self.stages = nnx.List([SwinStage(cfg, i, rngs) for i in range(len(cfg.depths))])
        self.norm = layers.layer_norm(cfg.stage_dim(len(cfg.depths) - 1), cfg.layer_norm_eps, rngs)
        self.remat_policy = "none"  # per-block jax.checkpoint policy: layers.set_remat

    def __call__(self, tokens: Array, grid_hw: tuple[int, int] | None = None) -> Array:
        chex.assert_rank(tokens, 3)
        hw = self.cfg.grid if grid_hw is None else (int(grid_hw[0]), int(grid_hw[1]))
        if tokens.shape[1] != hw[0] * hw[1] or tokens.shape[2] != self.cfg.embed_dim:
            raise ValueError(
                f"tokens have shape {tokens.shape}; a {hw[0]}×{hw[1]} grid needs "
                f"[B, {hw[0] * hw[1]}, {self.cfg.embed_dim}] (pass grid_hw for other grids)"
            )
        for stage in self.stages:
            tokens, hw = stage(tokens, hw, self.remat_policy)
        return self.norm(tokens)


class SwinModel(layers.Body):
    """A Swin body: ``embeddings`` (source embedder) + ``encoder`` (the transferred stack).

    ``model(pixel_values)`` with NCHW floats of any size returns HF ``SwinModel``'s
    ``last_hidden_state``: ``[B, L_final, embed_dim · 2^(S-1)]`` after the final LayerNorm.
    """

    def __init__(self, cfg: SwinConfig, rngs: nnx.Rngs):
        super().__init__(cfg, SwinEmbeddings(cfg, rngs), SwinEncoder(cfg, rngs))

    @property
    def token_dim(self) -> int:
        """Feature size of the tokens the encoder takes."""
        return self.cfg.embed_dim

    @property
    def output_dim(self) -> int:
        """Feature size of the encoder's output tokens."""
        return self.cfg.stage_dim(len(self.cfg.depths) - 1)

    def __call__(self, pixel_values: Array) -> Array:
        grid = _swin_grid(tuple(pixel_values.shape[-2:]), self.cfg.patch_size)
        return self.encoder(self.embeddings(pixel_values), grid)


_SWIN_B = r"encoder\.layers\.(\d+)\.blocks\.(\d+)\."


_SWIN_BT = r"encoder.stages.\1.blocks.\2."


_SWIN_D = r"encoder\.layers\.(\d+)\.downsample\."


_SWIN_DT = r"encoder.stages.\1.downsample."


SWIN_HF_PREFIXES = ("swin.",)


SWIN_HF_RULES: tuple[Rule, ...] = (
    *_conv(r"embeddings\.patch_embeddings\.projection", "embeddings.patch"),
    *_norm(r"embeddings\.norm", "embeddings.norm"),
    *_norm(_SWIN_B + r"layernorm_before", _SWIN_BT + "attn_norm"),
    *_attention(_SWIN_B, _SWIN_BT, "self"),
    Rule(
        _SWIN_B + r"attention\.(?:self|relative_position_bias)\.relative_position_bias_table",
        _SWIN_BT + "rel_pos_table",
        Transform.IDENTITY,
    ),
    *_norm(_SWIN_B + r"layernorm_after", _SWIN_BT + "mlp_norm"),
    *_mlp(_SWIN_B, _SWIN_BT),
    *_norm(_SWIN_D + r"norm", _SWIN_DT + "norm"),
    *_linear(_SWIN_D + r"reduction", _SWIN_DT + "reduction", bias=False),
    *_norm(r"layernorm", "encoder.norm"),
)


# Heads (classifier, SimMIM decoder + mask token) and the relative_position_index buffers that
# older transformers versions saved; the index is recomputed from window_size.
SWIN_HF_IGNORE: tuple[str, ...] = (
    r"classifier\..*",
    r"decoder\..*",
    r"embeddings\.mask_token",
    r".*\.relative_position_index",
)

# --- as the body of a CrossModalModel (models.crossmodal.build_crossmodal) ----------------------


def target_embedder(
    c_in: int, hw: tuple[int, int], cfg: SwinConfig, model: nnx.Module, rngs: nnx.Rngs
) -> embedders.Embed2D:
    """The new target embedder: a patch embedding with the body's patch LayerNorm (no class
    token, no positions) for ``c_in`` channels; inputs are resized to the body's image size."""
    del hw
    # Same epsilon as the patch norm it is copied from (HF Swin: PyTorch's 1e-5).
    eps = model.embeddings.norm.epsilon
    return patch_target_embedder(c_in, cfg, model.token_dim, rngs, patch_norm=True, eps=eps)


def body_kwargs(embedder: nnx.Module) -> dict[str, Any]:
    """Static arguments of the encoder: the patch grid its windows and merges work on."""
    return {"grid_hw": embedder.grid}


def dense_grid(cfg: SwinConfig, embedder: nnx.Module) -> tuple[int, int]:
    """The token grid a dense head reads: the patch grid after every patch merging."""
    return output_grid(tuple(cfg.depths), embedder.grid)
