"""ORCA target embedders: raw target inputs → token sequences the pretrained body accepts.

``Embed1D`` patchifies ``[B, C, L]`` signals with a strided Conv1d; ``Embed2D`` resizes
``[B, C, H, W]`` images to the body's resolution and patchifies them. Both are initialised from the
body's own input layer (positions, LayerNorm, patch projection) by :func:`init_from_body`.
"""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xmodal_jax.models import layers

Array = jax.Array


def conv1d_stride(length: int, target_seq_len: int) -> int:
    """ORCA's stride rule: the smallest divisor ``s`` of ``length`` with ``length / s <= tsl``.

    A prime ``length > target_seq_len`` would collapse to a single token, which is never what a
    user wants, so it is an error naming both numbers (:func:`patching` pads such lengths).
    """
    if length < 1 or target_seq_len < 1:
        raise ValueError(f"length ({length}) and target_seq_len ({target_seq_len}) must be ≥ 1")
    for s in range(1, length + 1):
        if length % s == 0 and length // s <= target_seq_len:
            if s == length and length > target_seq_len:
                raise ValueError(
                    f"input length L={length} has no divisor s < L with L/s ≤ target_seq_len="
                    f"{target_seq_len}; the only choice would make a single token. Pad or crop L, "
                    "or raise target_seq_len."
                )
            return s
    raise AssertionError("unreachable: s = length always satisfies the rule")


def padded_stride(length: int, target_seq_len: int) -> int:
    """The stride of the padding rule: ``s = ⌈L / tsl⌉``, so ``⌈L / s⌉ ≤ tsl`` tokens."""
    if length < 1 or target_seq_len < 1:
        raise ValueError(f"length ({length}) and target_seq_len ({target_seq_len}) must be ≥ 1")
    return -(-length // target_seq_len)


def patching(length: int, target_seq_len: int, rule: str = "pad") -> tuple[int, int, int]:
    """``(stride s, number of tokens T, right padding)`` for a length-``L`` input.

    ``rule="pad"``: ``s = ⌈L / tsl⌉``, ``T = ⌈L / s⌉``; the input is right-padded with
    ``T·s − L < s`` zeros, so only the last token holds padding and any length trains.
    ``rule="divisor"``: ORCA's rule (:func:`conv1d_stride`, no padding) when ``L`` has a divisor
    that leaves more than one token; a length without one (a prime ``L > tsl``) falls back to the
    padding rule instead of collapsing to a single token.
    """
    if rule not in ("pad", "divisor"):
        raise ValueError(f"patching rule {rule!r}; expected 'pad' or 'divisor'")
    if rule == "divisor":
        try:
            s = conv1d_stride(length, target_seq_len)
            return s, length // s, 0
        except ValueError:
            if length < 1 or target_seq_len < 1:
                raise
    s = padded_stride(length, target_seq_len)
    t = -(-length // s)
    return s, t, t * s - length


EMBED1D_KINDS = ("auto", "orca", "patch", "feature")
EMBED1D_NORMS = ("auto", "post", "pre", "none")
AUTO_OVERLAP = 2  # windows of 2·s samples, half-overlapping (bench/embedders.py chose it)


@dataclasses.dataclass(frozen=True)
class Embed1DOptions:
    """How :class:`Embed1D` makes a token (``config.embedder``; module docstring for the kinds).

    ``overlap`` (``patch`` only): each token reads a centred window of ``overlap·s`` samples
    (PatchTST-style overlapping patches; 1 = disjoint; 0 = auto, which is 2 for ``patch``).
    ``hidden`` > 0 puts a small value MLP (projection to ``hidden`` → GELU → Linear to the body
    width) before the norm. ``auto`` norm
    resolves to ``post`` when a token reads at least ``min_norm_values`` input values (C·window),
    else ``none``.
    """

    kind: str = "auto"
    norm: str = "auto"
    overlap: int = 0
    hidden: int = 0
    min_norm_values: int = 16

    def __post_init__(self):
        if self.kind not in EMBED1D_KINDS:
            raise ValueError(f"embedder.kind={self.kind!r}; expected one of {EMBED1D_KINDS}")
        if self.norm not in EMBED1D_NORMS:
            raise ValueError(f"embedder.norm={self.norm!r}; expected one of {EMBED1D_NORMS}")
        if self.overlap < 0 or self.hidden < 0 or self.min_norm_values < 1:
            raise ValueError(
                f"embedder: overlap ({self.overlap}) and hidden ({self.hidden}) must be ≥ 0, "
                f"min_norm_values ({self.min_norm_values}) ≥ 1"
            )
        if self.kind == "orca" and (
            self.norm not in ("auto", "post") or self.overlap > 1 or self.hidden
        ):
            raise ValueError(
                "embedder.kind='orca' is the reference embedder exactly (disjoint windows, "
                "LayerNorm after the projection, no MLP); use kind='patch' to change "
                f"norm/overlap/hidden (got norm={self.norm!r}, overlap={self.overlap}, "
                f"hidden={self.hidden})"
            )
        if self.kind == "feature" and self.overlap > 1:
            raise ValueError(
                "embedder.overlap applies to kind='patch' only (feature tokens are per position)"
            )

    def resolve(self, in_channels: int, stride: int, tabular: bool) -> Embed1DOptions:
        """The concrete kind, overlap and norm for a task (``auto`` resolved)."""
        kind = self.kind if self.kind != "auto" else ("feature" if tabular else "patch")
        overlap = (self.overlap or AUTO_OVERLAP) if kind == "patch" else 1
        norm = self.norm
        if kind == "orca":
            norm = "post"
        elif norm == "auto":
            norm = "post" if in_channels * stride * overlap >= self.min_norm_values else "none"
        return dataclasses.replace(self, kind=kind, norm=norm, overlap=overlap)


class Embed1D(nnx.Module):
    """Windows of ``s`` samples → tokens ``[B, T, D]`` (+ learned positions from the body).

    Input ``[B, C, L]`` (channels first, as the tasks store it). ``options`` (resolved with
    :meth:`Embed1DOptions.resolve`) pick the projection (shared conv or per-position), the value
    MLP and the LayerNorm's place; the default (``Embed1DOptions()`` with ``tabular=False``) is a
    shared patch projection. ``kind="orca"`` is ORCA's Conv1d(C→D, kernel = stride = s) →
    LayerNorm → + positions, with the same parameters and outputs as the reference. The position
    parameter holds the ``T`` rows the body would use for token ids ``offset .. offset+T-1``
    (RoBERTa: 2…T+1), copied from the body by :func:`init_from_body`.
    """

    def __init__(
        self,
        in_channels: int,
        length: int,
        dim: int,
        *,
        target_seq_len: int,
        max_positions: int,
        position_offset: int = 0,
        eps: float = 1e-12,
        options: Embed1DOptions | None = None,
        tabular: bool = False,
        rngs: nnx.Rngs,
    ):
        options = options or Embed1DOptions()
        self.in_channels, self.length = in_channels, length
        rule = "divisor" if options.kind == "orca" else "pad"
        self.stride, self.num_tokens, self.pad = patching(length, target_seq_len, rule)
        opts = options.resolve(in_channels, self.stride, tabular)
        self.kind, self.norm_at = opts.kind, opts.norm
        self.window = self.stride * (opts.overlap if opts.kind == "patch" else 1)
        self.position_offset = position_offset
        if self.num_tokens + position_offset > max_positions:
            raise ValueError(
                f"Embed1D makes {self.num_tokens} tokens (L={length}, stride {self.stride}) but "
                f"the body's position table has {max_positions} rows (offset {position_offset})"
            )
        width = opts.hidden or dim
        # Xavier-uniform with gain √2, zero bias: the reference's conv init.
        xavier = nnx.initializers.variance_scaling(2.0, "fan_avg", "uniform")
        if opts.kind == "feature":
            fan_in = in_channels * self.stride
            self.conv = None
            # One projection per token position; Xavier fans of one position's [C·s, width] slice.
            per_position = nnx.initializers.variance_scaling(
                2.0, "fan_avg", "uniform", batch_axis=(0,)
            )
            self.kernel = nnx.Param(per_position(rngs.params(), (self.num_tokens, fan_in, width)))
            self.bias = nnx.Param(jnp.zeros((self.num_tokens, width)))
        else:
            self.conv = nnx.Conv(
                in_channels,
                width,
                kernel_size=(self.window,),
                strides=(self.stride,),
                padding="VALID",
                kernel_init=xavier,
                rngs=rngs,
            )
            self.kernel = self.bias = None
        self.mlp = layers.dense(width, dim, rngs) if opts.hidden else None
        self.norm = layers.layer_norm(dim, eps, rngs) if opts.norm != "none" else None
        self.position = nnx.Param(
            nnx.initializers.normal(0.02)(rngs.params(), (self.num_tokens, dim))
        )

    def project(self, x: Array) -> Array:
        """``[B, C, L]`` → the per-token projection ``[B, T, D]`` (before norm and positions)."""
        chex.assert_shape(x, (None, self.in_channels, self.length))
        halo = self.window - self.stride
        if self.pad or halo:  # zeros past the end (padding rule) and around (overlap halo)
            x = jnp.pad(x, ((0, 0), (0, 0), (halo // 2, self.pad + halo - halo // 2)))
        if self.conv is not None:
            tokens = self.conv(jnp.swapaxes(x, 1, 2))
        else:
            b = x.shape[0]
            # [B, C, T, s] → [B, T, C·s]: token t reads samples t·s … t·s+s−1 of every channel.
            patches = x.reshape(b, self.in_channels, self.num_tokens, self.stride)
            patches = jnp.transpose(patches, (0, 2, 1, 3)).reshape(b, self.num_tokens, -1)
            tokens = jnp.einsum("btf,tfd->btd", patches, self.kernel[...]) + self.bias[...]
        if self.mlp is not None:
            tokens = self.mlp(layers.gelu_erf(tokens))
        return tokens

    def __call__(self, x: Array) -> Array:
        tokens, pos = self.project(x), self.position[...]
        if self.norm is None:
            return tokens + pos
        if self.norm_at == "pre":
            return self.norm(tokens + pos)
        return self.norm(tokens) + pos


def resize_bilinear(x: Array, hw: tuple[int, int]) -> Array:
    """PyTorch ``F.interpolate(mode="bilinear", align_corners=False)`` on ``[B, C, H, W]``.

    No antialiasing, like PyTorch's default, so a trained reference embedder sees the same pixels.
    """
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    return jax.image.resize(x, (*x.shape[:-2], *hw), method="linear", antialias=False)


def patch2d_size(hw: tuple[int, int], target_seq_len: int) -> int:
    """The 2D analogue of :func:`conv1d_stride`: the smallest patch ``p`` dividing H and W with
    ``(H/p)·(W/p) <= target_seq_len`` (used when a 2D input feeds a text body).

    A choice that leaves a single token (``p = H = W``) for an image larger than the budget is an
    error naming the numbers, as in the 1D rule.
    """
    h, w = int(hw[0]), int(hw[1])
    if min(h, w, target_seq_len) < 1:
        raise ValueError(f"image {hw} and target_seq_len ({target_seq_len}) must be ≥ 1")
    for p in range(1, min(h, w) + 1):
        if h % p == 0 and w % p == 0 and (h // p) * (w // p) <= target_seq_len:
            if (h // p) * (w // p) == 1 and h * w > target_seq_len:
                break
            return p
    raise ValueError(
        f"image {h}×{w} has no common patch size p with (H/p)·(W/p) ≤ target_seq_len="
        f"{target_seq_len} and more than one token; crop the image or raise target_seq_len"
    )


class Embed2D(nnx.Module):
    """Bilinear resize → Conv(C→D, kernel = stride = patch) → [LayerNorm] [+ cls + positions].

    Input ``[B, C, H, W]``; output ``[B, N, D]`` with row-major patches. ``norm=True`` is Swin's
    patch embedding; ``cls_and_positions=True`` is ViT's (class token prepended, learned positions).
    ``positions=True`` (without a class token) is the text-body layout: patch tokens + the body's
    own 1D positions in row-major order (build_crossmodal uses it without LayerNorm).
    """

    def __init__(
        self,
        in_channels: int,
        dim: int,
        *,
        image_size: tuple[int, int],
        patch_size: int,
        norm: bool,
        cls_and_positions: bool,
        eps: float = 1e-5,
        positions: bool = False,
        rngs: nnx.Rngs,
    ):
        self.in_channels = in_channels
        self.image_size = tuple(image_size)
        self.patch_size = patch_size
        if self.image_size[0] % patch_size or self.image_size[1] % patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch {patch_size}"
            )
        self.grid = (self.image_size[0] // patch_size, self.image_size[1] // patch_size)
        self.patch = nnx.Conv(
            in_channels,
            dim,
            kernel_size=(patch_size, patch_size),
            strides=(patch_size, patch_size),
            padding="VALID",
            rngs=rngs,
        )
        self.norm = layers.layer_norm(dim, eps, rngs) if norm else None
        init = nnx.initializers.normal(0.02)
        n = self.grid[0] * self.grid[1]
        # Each attribute is assigned once: nnx fixes an attribute as data or static on first use.
        if cls_and_positions:
            self.cls_token = nnx.Param(init(rngs.params(), (1, 1, dim)))
            self.position = nnx.Param(init(rngs.params(), (1, n + 1, dim)))
        elif positions:
            self.cls_token = None
            self.position = nnx.Param(init(rngs.params(), (1, n, dim)))
        else:
            self.cls_token = self.position = None

    @property
    def special_tokens(self) -> int:
        """Leading tokens that carry no input: the class token, when there is one."""
        return 0 if self.cls_token is None else 1

    def __call__(self, x: Array) -> Array:
        chex.assert_rank(x, 4)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"Embed2D expects {self.in_channels} channels, got shape {x.shape}")
        x = resize_bilinear(x, self.image_size)
        tokens = self.patch(jnp.transpose(x, (0, 2, 3, 1)))
        tokens = tokens.reshape(tokens.shape[0], -1, tokens.shape[-1])
        if self.norm is not None:
            tokens = self.norm(tokens)
        if self.cls_token is not None:
            cls = jnp.broadcast_to(self.cls_token[...], (tokens.shape[0], 1, tokens.shape[-1]))
            tokens = jnp.concatenate([cls, tokens], axis=1)
        if self.position is not None:
            tokens = tokens + self.position[...]
        return tokens


def tile_patch_kernel(kernel: Array, in_channels: int) -> Array:
    """ORCA's channel rule: target input channel ``c`` takes pretrained channel ``c mod C``.

    ``kernel`` is ``[..., C_pretrained, D]``; no rescaling, exactly as the reference.
    """
    idx = np.arange(in_channels) % kernel.shape[-2]
    return jnp.asarray(kernel)[..., idx, :]  # jnp: also runs inside a jitted, sharded init


def init_from_body(embedder: nnx.Module, body_embeddings: nnx.Module) -> None:
    """Copies the body's input-layer weights into a fresh target embedder, in place.

    ``Embed1D`` ← the body's position rows ``offset..offset+T-1`` and embedding LayerNorm (the conv
    keeps its Xavier init). ``Embed2D`` ← the patch projection tiled over input channels, its bias,
    and the LayerNorm (Swin) or class token and positions (ViT). Runs once at model build time.
    """
    if isinstance(embedder, Embed1D):
        table = body_embeddings.position.embedding[...]
        start = embedder.position_offset
        embedder.position[...] = table[start : start + embedder.num_tokens]
        if embedder.norm is not None:
            embedder.norm.scale[...] = body_embeddings.norm.scale[...]
            embedder.norm.bias[...] = body_embeddings.norm.bias[...]
    elif isinstance(embedder, Embed2D) and not hasattr(body_embeddings, "patch"):
        # A text body has no patch projection to copy (the conv keeps its init, as Embed1D's);
        # the patch tokens take its position rows offset..offset+N (and its embedding LayerNorm
        # if the embedder has one).
        table = body_embeddings.position.embedding[...]
        start, n = body_embeddings.cfg.position_offset, embedder.position.shape[1]
        if start + n > table.shape[0]:
            raise ValueError(
                f"Embed2D makes {n} tokens but the text body's position table has "
                f"{table.shape[0]} rows (offset {start}); use a larger patch (lower "
                "target_seq_len)"
            )
        embedder.position[...] = table[None, start : start + n]
        if embedder.norm is not None:
            embedder.norm.scale[...] = body_embeddings.norm.scale[...]
            embedder.norm.bias[...] = body_embeddings.norm.bias[...]
    elif isinstance(embedder, Embed2D):
        src = body_embeddings.patch
        if src.kernel.shape[:2] != embedder.patch.kernel.shape[:2]:
            raise ValueError(
                f"body patch kernel {src.kernel.shape} and embedder patch kernel "
                f"{embedder.patch.kernel.shape} differ in patch size"
            )
        embedder.patch.kernel[...] = tile_patch_kernel(src.kernel[...], embedder.in_channels)
        embedder.patch.bias[...] = src.bias[...]
        if embedder.norm is not None:
            embedder.norm.scale[...] = body_embeddings.norm.scale[...]
            embedder.norm.bias[...] = body_embeddings.norm.bias[...]
        if embedder.cls_token is not None:
            embedder.cls_token[...] = body_embeddings.cls_token[...]
            if body_embeddings.position.shape != embedder.position.shape:
                raise ValueError(
                    f"body positions {body_embeddings.position.shape} do not match the embedder's "
                    f"{embedder.position.shape}"
                )
            embedder.position[...] = body_embeddings.position[...]
    elif hasattr(embedder, "init_from_body"):  # embedders defined next to their body (ResNet)
        embedder.init_from_body(body_embeddings)
    else:
        raise TypeError(f"cannot initialise {type(embedder).__name__} from a body")
