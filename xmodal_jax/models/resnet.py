"""ResNet body as flax.nnx modules (HF ``ResNetModel`` parity) and its key-mapping table.

Like the transformer bodies, the model is split into ``embeddings`` (the stem: 7×7/2 conv, BN,
activation, 3×3/2 max pool) and ``encoder`` (the residual stages). Both speak *tokens*: the stem
returns its feature map flattened row-major to ``[B, h·w, C]`` and the encoder takes such tokens
plus their static grid ``(h, w)`` and returns ``[B, h'·w', C_last]``, so the mean over tokens is
HF's ``pooler_output`` and every method written for token bodies (mean-pooled features, the pooled
head, token mixing) works unchanged. Convolutions run in NHWC; ``pixel_values`` are NCHW as in HF.

Batch normalisation is inference-mode with the checkpoint's running statistics *folded* into a
per-channel affine at load time (``scale = γ/√(var+ε)``, ``bias = β − mean·scale``, exactly what
PyTorch's eval-mode CPU kernel computes). Why not batch statistics: the pure-functional boundary
has params as one plain pytree and no mutable collections, so updating running averages would have
to thread a second state through every loss, method and the trainer. Why not keep mean/var as
frozen leaves: they would sit in the ``body`` group, where the optimizer's weight decay (coupled
L2 under Adam moves a zero-gradient leaf by ~lr per step) would drift them. Folding leaves only
the affine, which stays trainable; fine-tuning with frozen BN statistics is the standard transfer
recipe (detectron2's FrozenBatchNorm, BiT), and the reachable functions are exactly those of
frozen-statistics BN with trainable γ, β (a per-channel bijective reparametrisation).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xmodal_jax import parallel
from xmodal_jax.models import layers
from xmodal_jax.models.weights import Rule, Transform, WeightLoadError, require

Array = jax.Array

# nn.BatchNorm2d's default; HF's ResNetConfig has no field for it.
BN_EPS = 1e-5
# HF (torchvision) initialises convolutions with kaiming_normal_(mode="fan_out", relu).
_CONV_INIT = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
LAYER_TYPES = ("basic", "bottleneck")


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """Hyper-parameters of a HF ResNet (``config.json`` subset); ResNet-50 by default.

    Stage ``i`` has ``depths[i]`` residual layers of width ``hidden_sizes[i]``; every stage but the
    first halves the grid (the first too with ``downsample_in_first_stage``). ``image_size`` is not
    a HF ResNet field: it is the resolution the body was pretrained at (224 unless ``config.json``
    says otherwise), used only to resize source-modality images.
    """

    num_channels: int = 3
    embedding_size: int = 64
    hidden_sizes: tuple[int, ...] = (256, 512, 1024, 2048)
    depths: tuple[int, ...] = (3, 4, 6, 3)
    layer_type: str = "bottleneck"
    hidden_act: str = "relu"
    downsample_in_first_stage: bool = False
    downsample_in_bottleneck: bool = False
    image_size: tuple[int, int] = (224, 224)

    def __post_init__(self):
        object.__setattr__(self, "hidden_sizes", tuple(self.hidden_sizes))
        object.__setattr__(self, "depths", tuple(self.depths))
        size = self.image_size
        object.__setattr__(
            self, "image_size", (size, size) if isinstance(size, int) else tuple(size)
        )
        _positive("num_channels", self.num_channels)
        _positive("embedding_size", self.embedding_size)
        if not self.depths:
            raise ValueError("depths must name at least one stage, got ()")
        if len(self.hidden_sizes) != len(self.depths):
            raise ValueError(
                f"hidden_sizes={self.hidden_sizes} must have one entry per stage of "
                f"depths={self.depths}"
            )
        for i, (d, h) in enumerate(zip(self.depths, self.hidden_sizes, strict=True)):
            _positive(f"depths[{i}]", d)
            _positive(f"hidden_sizes[{i}]", h)
            if self.layer_type == "bottleneck" and h % 4:
                raise ValueError(
                    f"hidden_sizes[{i}]={h} is not divisible by the bottleneck reduction 4"
                )
        if self.layer_type not in LAYER_TYPES:
            raise ValueError(f"layer_type={self.layer_type!r}; expected one of {LAYER_TYPES}")
        if len(self.image_size) != 2:
            raise ValueError(f"image_size must be an int or a pair, got {size!r}")
        for i, s in enumerate(self.image_size):
            _positive(f"image_size[{i}]", s)
        layers.activation(self.hidden_act)  # raises naming hidden_act

    @classmethod
    def from_hf(cls, raw: dict[str, Any], source: str) -> ResNetConfig:
        """Reads a HF ResNet ``config.json`` dict; errors name ``source`` and the field."""

        def opt(key: str, typ: type, default: Any) -> Any:
            return require(raw, key, typ, source) if key in raw else default

        fields = dict(
            num_channels=opt("num_channels", int, 3),
            embedding_size=opt("embedding_size", int, 64),
            hidden_sizes=tuple(opt("hidden_sizes", list, [256, 512, 1024, 2048])),
            depths=tuple(opt("depths", list, [3, 4, 6, 3])),
            layer_type=opt("layer_type", str, "bottleneck"),
            hidden_act=opt("hidden_act", str, "relu"),
            downsample_in_first_stage=opt("downsample_in_first_stage", bool, False),
            downsample_in_bottleneck=opt("downsample_in_bottleneck", bool, False),
            image_size=raw.get("image_size", 224),
        )
        try:
            return cls(**fields)
        except (TypeError, ValueError) as e:
            raise WeightLoadError(f"{source}: {e}") from e


def stem_grid(hw: tuple[int, int]) -> tuple[int, int]:
    """Token grid after the stem (7×7/2 conv pad 3, 3×3/2 max pool pad 1) of an ``hw`` image."""

    def down(n: int) -> int:
        return (n - 1) // 2 + 1  # floor((n + 2p - k) / 2) + 1 with k = 2p + 1

    return (down(down(hw[0])), down(down(hw[1])))


class FrozenBatchNorm(nnx.Module):
    """Inference-mode BatchNorm with the running statistics folded in: ``x · scale + bias``.

    ``scale``/``bias`` are trainable ``[C]`` params (see the module docstring for why the
    statistics are folded rather than kept). A fresh module equals a fresh eval-mode
    ``nn.BatchNorm2d`` (γ=1, β=0, mean 0, var 1).
    """

    def __init__(self, channels: int):
        self.scale = nnx.Param(jnp.full((channels,), 1.0 / np.sqrt(1.0 + BN_EPS), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((channels,), jnp.float32))

    def __call__(self, x: Array) -> Array:
        return x * self.scale[...].astype(x.dtype) + self.bias[...].astype(x.dtype)


class ConvBN(nnx.Module):
    """HF ``ResNetConvLayer``: Conv (no bias, padding k//2) → frozen BN → optional activation."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        rngs: nnx.Rngs,
        *,
        kernel: int = 3,
        stride: int = 1,
        act: str | None = "relu",
    ):
        p = kernel // 2
        self.conv = nnx.Conv(
            c_in,
            c_out,
            kernel_size=(kernel, kernel),
            strides=(stride, stride),
            # Explicit symmetric padding: PyTorch's rule. "SAME" would pad stride-2 convs of even
            # inputs asymmetrically and shift every feature by one pixel.
            padding=((p, p), (p, p)),
            use_bias=False,
            kernel_init=_CONV_INIT,
            rngs=rngs,
        )
        self.norm = FrozenBatchNorm(c_out)
        self.act = act

    def __call__(self, x: Array) -> Array:
        x = self.norm(self.conv(x))
        return x if self.act is None else layers.activation(self.act)(x)


def max_pool_3x3_s2(x: Array) -> Array:
    """PyTorch ``MaxPool2d(3, stride=2, padding=1)`` on NHWC (padding never wins the max)."""
    # A Python-scalar init lets JAX recognise the max monoid (reduce_window_max, differentiable);
    # an array init would lower to the generic reduce_window, which has no reverse-mode rule.
    return jax.lax.reduce_window(
        x,
        -jnp.inf,
        jax.lax.max,
        (1, 3, 3, 1),
        (1, 2, 2, 1),
        ((0, 0), (1, 1), (1, 1), (0, 0)),
    )


def adapt_stem_kernel(kernel: Array, in_channels: int) -> Array:
    """A pretrained stem kernel ``[kh, kw, C_pre, D]`` adapted to ``in_channels`` inputs.

    One channel takes the sum over the pretrained channels (a grey image then gives exactly the
    response to the same image replicated to RGB); otherwise channel ``c`` takes pretrained channel
    ``c mod C_pre`` scaled by ``C_pre / in_channels`` (timm's ``adapt_input_conv``). Unlike ORCA's
    unscaled tiling for patch embeddings (a LayerNorm follows those), the stem feeds a BN with
    frozen statistics, so the rule keeps the stem's output scale where the statistics expect it.
    """
    c_pre = kernel.shape[-2]
    kernel = jnp.asarray(kernel)
    if in_channels == c_pre:
        return kernel
    if in_channels == 1:
        return kernel.sum(axis=-2, keepdims=True)
    idx = np.arange(in_channels) % c_pre
    return kernel[..., idx, :] * (c_pre / in_channels)


class ResNetStem(nnx.Module):
    """The input layer: Conv 7×7/2 → BN → act → MaxPool 3×3/2: ``[B, C, H, W]`` → ``[B, h·w, D]``.

    The pretrained body's stem (``image_size=None``) takes any image size. A target embedder is
    built with the task's ``image_size`` (inputs of another size are resized bilinearly first), so
    its token ``grid`` is static and known when the model is built.
    """

    def __init__(
        self,
        in_channels: int,
        dim: int,
        act: str,
        rngs: nnx.Rngs,
        *,
        image_size: tuple[int, int] | None = None,
    ):
        self.in_channels = in_channels
        self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        self.grid = None if image_size is None else stem_grid(self.image_size)
        self.stem = ConvBN(in_channels, dim, rngs, kernel=7, stride=2, act=act)

    def __call__(self, pixel_values: Array) -> Array:
        chex.assert_rank(pixel_values, 4)
        if pixel_values.shape[1] != self.in_channels:
            raise ValueError(
                f"pixel_values has shape {pixel_values.shape}; this ResNet stem expects "
                f"{self.in_channels} channels (NCHW)"
            )
        x = pixel_values.astype(self.stem.conv.kernel.dtype)
        if self.image_size is not None and tuple(x.shape[-2:]) != self.image_size:
            x = jax.image.resize(x, (*x.shape[:2], *self.image_size), "linear", antialias=False)
        x = max_pool_3x3_s2(self.stem(jnp.transpose(x, (0, 2, 3, 1))))
        return x.reshape(x.shape[0], -1, x.shape[-1])

    def init_from_body(self, body_stem: ResNetStem) -> None:
        """Copies the pretrained stem into this target stem (kernel adapted to the channels)."""
        src = body_stem.stem
        self.stem.conv.kernel[...] = adapt_stem_kernel(src.conv.kernel[...], self.in_channels)
        self.stem.norm.scale[...] = src.norm.scale[...]
        self.stem.norm.bias[...] = src.norm.bias[...]


class ResNetLayer(nnx.Module):
    """One residual layer (HF ``ResNetBasicLayer`` / ``ResNetBottleNeckLayer``), NHWC.

    Basic: 3×3 (stride) → 3×3. Bottleneck: 1×1 reduce to ``c_out / 4`` → 3×3 → 1×1 expand, with
    the stride on the first 1×1 if ``downsample_in_bottleneck`` else on the 3×3. A 1×1 projection
    shortcut (+BN) when the width or the stride changes. Inner activations are ReLU whatever
    ``hidden_act`` says (HF's conv layers default to "relu"); the output one is ``hidden_act``.
    """

    def __init__(self, cfg: ResNetConfig, c_in: int, c_out: int, stride: int, rngs: nnx.Rngs):
        needs_proj = c_in != c_out or stride != 1
        self.shortcut = (
            ConvBN(c_in, c_out, rngs, kernel=1, stride=stride, act=None) if needs_proj else None
        )
        if cfg.layer_type == "bottleneck":
            mid = c_out // 4
            s1, s2 = (stride, 1) if cfg.downsample_in_bottleneck else (1, stride)
            convs = [
                ConvBN(c_in, mid, rngs, kernel=1, stride=s1),
                ConvBN(mid, mid, rngs, kernel=3, stride=s2),
                ConvBN(mid, c_out, rngs, kernel=1, act=None),
            ]
        else:
            convs = [
                ConvBN(c_in, c_out, rngs, kernel=3, stride=stride),
                ConvBN(c_out, c_out, rngs, kernel=3, act=None),
            ]
        self.convs = nnx.List(convs)
        self.act = cfg.hidden_act

    def __call__(self, x: Array) -> Array:
        residual = x if self.shortcut is None else self.shortcut(x)
        for conv in self.convs:
            x = conv(x)
        return layers.activation(self.act)(x + residual)


class ResNetStage(nnx.Module):
    """``depth`` residual layers; the first changes width and applies the stage's stride."""

    def __init__(
        self, cfg: ResNetConfig, c_in: int, c_out: int, stride: int, depth: int, rngs: nnx.Rngs
    ):
        self.layers = nnx.List(
            [ResNetLayer(cfg, c_in, c_out, stride, rngs)]
            + [ResNetLayer(cfg, c_out, c_out, 1, rngs) for _ in range(depth - 1)]
        )

    def __call__(self, x: Array) -> Array:
        for layer in self.layers:
            x = layer(x)
        return x


class ResNetEncoder(nnx.Module):
    """The residual stages on stem tokens: ``[B, h·w, embedding_size]`` → ``[B, h'·w', C_last]``.

    ``grid_hw`` is the token grid (static); without it the grid must be square. The output tokens
    are the final feature map flattened row-major; their mean is HF's ``pooler_output``.
    """

    def __init__(self, cfg: ResNetConfig, rngs: nnx.Rngs):
        self.cfg = cfg
        widths = (cfg.embedding_size, *cfg.hidden_sizes)
        strides = (2 if cfg.downsample_in_first_stage else 1,) + (2,) * (len(cfg.depths) - 1)
        self.stages = nnx.List(
            [
                ResNetStage(cfg, widths[i], widths[i + 1], strides[i], cfg.depths[i], rngs)
                for i in range(len(cfg.depths))
            ]
        )

    def __call__(self, tokens: Array, grid_hw: tuple[int, int] | None = None) -> Array:
        chex.assert_rank(tokens, 3)
        b, n, c = tokens.shape
        if grid_hw is None:
            side = int(round(np.sqrt(n)))
            if side * side != n:
                raise ValueError(
                    f"{n} tokens do not make a square grid; pass grid_hw=(h, w) for this ResNet"
                )
            grid_hw = (side, side)
        h, w = int(grid_hw[0]), int(grid_hw[1])
        if n != h * w or c != self.cfg.embedding_size:
            raise ValueError(
                f"tokens have shape {tokens.shape}; a {h}×{w} grid needs "
                f"[B, {h * w}, {self.cfg.embedding_size}]"
            )
        x = parallel.constrain_batch(tokens.reshape(b, h, w, c))
        for stage in self.stages:
            x = parallel.constrain_batch(stage(x))
        return x.reshape(b, -1, x.shape[-1])


class ResNetModel(layers.Body):
    """A ResNet body: ``embeddings`` (the stem, source embedder) + ``encoder`` (the stages).

    ``model(pixel_values)`` with NCHW floats of any size returns HF ``ResNetModel``'s
    ``last_hidden_state`` as tokens ``[B, h·w, C_last]`` (NHWC flattened); ``model.pooled(...)``
    returns ``pooler_output`` ``[B, C_last]``.
    """

    def __init__(self, cfg: ResNetConfig, rngs: nnx.Rngs):
        embeddings = ResNetStem(cfg.num_channels, cfg.embedding_size, cfg.hidden_act, rngs)
        super().__init__(cfg, embeddings, ResNetEncoder(cfg, rngs))

    @property
    def token_dim(self) -> int:
        """Feature size of the tokens the encoder takes (the stem width)."""
        return self.cfg.embedding_size

    @property
    def output_dim(self) -> int:
        """Feature size of the encoder's output tokens (the last stage width)."""
        return self.cfg.hidden_sizes[-1]

    def __call__(self, pixel_values: Array) -> Array:
        grid = stem_grid(tuple(pixel_values.shape[-2:]))
        return self.encoder(self.embeddings(pixel_values), grid)

    def pooled(self, pixel_values: Array) -> Array:
        """HF's ``pooler_output`` (global average pool), ``[B, C_last]``."""
        return self(pixel_values).mean(axis=1)


# --- Hugging Face key mapping -------------------------------------------------------------------
# ResNetModel keys: embedder.embedder.{convolution,normalization}.*,
# encoder.stages.S.layers.L.layer.K.{convolution,normalization}.*, ...shortcut.*; a
# ResNetForImageClassification checkpoint (microsoft/resnet-50) adds the "resnet." prefix and a
# classifier. BN weight/bias arrive already folded by `fold_batch_norms` (see the module docstring).

_BN_STATS = ("running_mean", "running_var")


def fold_batch_norms(
    tensors: Mapping[str, tuple[np.ndarray, str]],
) -> dict[str, tuple[np.ndarray, str]]:
    """Folds every ``*.normalization.{weight,bias,running_mean,running_var}`` into weight/bias.

    The result has ``weight = γ / √(var + ε)`` and ``bias = β − mean · weight`` (float32, in
    PyTorch's eval-mode order), no running statistics and no ``num_batches_tracked``. A BN with a
    missing or mis-shaped member raises a :class:`WeightLoadError` naming the key and file.
    """
    out: dict[str, tuple[np.ndarray, str]] = {}
    groups: dict[str, dict[str, tuple[np.ndarray, str]]] = {}
    for key, entry in tensors.items():
        m = re.fullmatch(r"(.*\.normalization\.)(weight|bias|running_mean|running_var)", key)
        if m:
            groups.setdefault(m.group(1), {})[m.group(2)] = entry
        elif not key.endswith(".normalization.num_batches_tracked"):
            out[key] = entry
    problems = []
    for prefix, parts in sorted(groups.items()):
        missing = [p for p in ("weight", "bias", *_BN_STATS) if p not in parts]
        if missing:
            problems.append(f"{prefix}{{{','.join(missing)}}} missing (a BatchNorm needs all four)")
            continue
        path = parts["weight"][1]
        shapes = {p: parts[p][0].shape for p in parts}
        want = shapes["weight"]
        if len(want) != 1 or any(s != want for s in shapes.values()):
            problems.append(
                f"{prefix}* shapes differ or are not 1-D: "
                + ", ".join(f"{prefix}{p} {s}" for p, s in sorted(shapes.items()))
            )
            continue
        f32 = {p: np.asarray(v[0], np.float32) for p, v in parts.items()}
        invstd = np.float32(1.0) / np.sqrt(f32["running_var"] + np.float32(BN_EPS))
        scale = f32["weight"] * invstd
        out[prefix + "weight"] = (scale, path)
        out[prefix + "bias"] = (f32["bias"] - f32["running_mean"] * scale, path)
    if problems:
        raise WeightLoadError("cannot fold BatchNorm statistics:\n  " + "\n  ".join(problems))
    return out


def _conv_bn(src: str, dst: str) -> tuple[Rule, ...]:
    return (
        Rule(src + r"\.convolution\.weight", dst + ".conv.kernel", Transform.CONV),
        Rule(src + r"\.normalization\.weight", dst + ".norm.scale", Transform.IDENTITY),
        Rule(src + r"\.normalization\.bias", dst + ".norm.bias", Transform.IDENTITY),
    )


_L = r"encoder\.stages\.(\d+)\.layers\.(\d+)\."
_LT = r"encoder.stages.\1.layers.\2."
RESNET_HF_PREFIXES = ("resnet.",)
RESNET_HF_RULES: tuple[Rule, ...] = (
    *_conv_bn(r"embedder\.embedder", "embeddings.stem"),
    *_conv_bn(_L + r"shortcut", _LT + "shortcut"),
    *_conv_bn(_L + r"layer\.(\d+)", _LT + r"convs.\3"),
)
# The image-classification head a ResNetForImageClassification checkpoint carries.
RESNET_HF_IGNORE: tuple[str, ...] = (r"classifier\..*",)

# --- as the body of a CrossModalModel (models.crossmodal.build_crossmodal) ----------------------


def target_embedder(
    c_in: int, hw: tuple[int, int], cfg: ResNetConfig, model: nnx.Module, rngs: nnx.Rngs
) -> ResNetStem:
    """The new target embedder: a stem for the task's channels and size ``hw``.

    The stem (conv 7×7/2 + BN + max pool) is the ResNet's input layer, so it plays the role of
    the patch embedding: the target stem copies the pretrained one (kernel adapted to the input
    channels, :func:`adapt_stem_kernel`), the pretrained stem stays the source embedder. The
    pooled head reads the mean of the final feature map (HF's ``pooler_output``).
    """
    del model
    return ResNetStem(c_in, cfg.embedding_size, cfg.hidden_act, rngs, image_size=hw)


def body_kwargs(embedder: nnx.Module) -> dict[str, Any]:
    """Static arguments of the stages: the stem's output grid (the tokens are a flat map)."""
    return {"grid_hw": embedder.grid}


def dense_grid(cfg: ResNetConfig, embedder: nnx.Module) -> tuple[int, int]:
    """No dense head reads a ResNet yet: always a ValueError."""
    raise ValueError(
        "dense outputs are not implemented for ResNet bodies (no decoder head for a "
        "strided CNN yet); use a ViT/Swin body for dense tasks"
    )
