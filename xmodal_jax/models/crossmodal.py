"""CrossModalModel: target embedder + pretrained body + task head, with named parameter groups.

The params pytree of a built model is ``{"embedder", "body", "head", "source_embedder"}``:
``embedder`` is new (initialised from the body's input layer), ``body`` is the pretrained
transformer stack, ``head`` is the task head and ``source_embedder`` is the body's own input layer,
kept separate so that the source modality can be embedded (and is never trained by default).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from xmodal_jax.models import embedders, heads, layers
from xmodal_jax.models import source as source_lib
from xmodal_jax.models.pretrained import Pretrained, split
from xmodal_jax.spec import OUTPUT_KINDS, TaskSpec  # noqa: F401  (OUTPUT_KINDS: re-exported)

Array = jax.Array

# The groups of a CrossModalModel's params. A method may add its own groups next to them (PaRe's
# gate, LSG's projection: see methods.PARAM_INITS); `apply` passes only these to the model.
MODEL_GROUPS = ("embedder", "body", "head", "source_embedder")


class CrossModalModel(nnx.Module):
    """Composes ``embedder → body → head``; ``source_embedder`` embeds source-modality inputs.

    ``body_kwargs`` are static extra arguments of the body (Swin's and ResNet's token grid).
    ``frames > 0`` makes a video model: inputs ``[B, T, C, H, W]`` are embedded frame by frame
    into ``[B, T·N, D]`` target tokens, the body encodes each frame's ``N`` tokens separately
    (batched as ``B·T`` images) and returns ``[B, T·N', D']``, so the pooled head's mean over
    tokens is the temporal mean of the per-frame pooled features.
    """

    def __init__(
        self,
        embedder: nnx.Module,
        body: nnx.Module,
        head: nnx.Module,
        source_embedder: nnx.Module,
        body_kwargs: dict[str, Any] | None = None,
        frames: int = 0,
    ):
        self.embedder = embedder
        self.body = body
        self.head = head
        self.source_embedder = source_embedder
        self.body_kwargs = tuple(sorted((body_kwargs or {}).items()))
        self.frames = int(frames)
        # Mixed precision: params (f32 masters outside) are cast to this dtype by `merge`, float
        # inputs on entry; outputs come back in float32. Set by `with_compute_dtype`.
        self.compute_dtype = "float32"

    def _in(self, x: Array) -> Array:
        if self.compute_dtype != "float32" and jnp.issubdtype(x.dtype, jnp.floating):
            return x.astype(self.compute_dtype)
        return x

    def outputs(self, features: Array) -> Array:
        """Body output tokens → task outputs; float32 under bf16 compute (losses never see bf16
        logits), the params' own dtype otherwise (float64 stays float64 in x64 tests)."""
        out = self.head(features)
        return out.astype(jnp.float32) if self.compute_dtype != "float32" else out

    def embed(self, x: Array) -> Array:
        """Target inputs → target tokens ``[B, N, D]`` (video: ``[B, T·N, D]``, frame-major)."""
        x = self._in(x)
        if not self.frames:
            return self.embedder(x)
        if x.ndim != 5 or x.shape[1] != self.frames:
            raise ValueError(
                f"video input has shape {x.shape}; this model expects [B, {self.frames}, C, H, W]"
            )
        b = x.shape[0]
        tokens = self.embedder(x.reshape(b * self.frames, *x.shape[2:]))
        return tokens.reshape(b, -1, tokens.shape[-1])

    def encode(self, tokens: Array, attention_mask: Array | None = None) -> Array:
        """Target tokens ``[B, N, D]`` → body output tokens (``attention_mask``: text only).

        A video model's tokens ``[B, T·N, D]`` are encoded per frame; source tokens go through
        :meth:`encode_frame` directly.
        """
        if not self.frames:
            return self.encode_frame(tokens, attention_mask)
        b, n, d = tokens.shape
        if n % self.frames:
            raise ValueError(f"{n} video tokens do not split into {self.frames} frames")
        out = self.encode_frame(tokens.reshape(b * self.frames, n // self.frames, d))
        return out.reshape(b, -1, out.shape[-1])

    def encode_frame(self, tokens: Array, attention_mask: Array | None = None) -> Array:
        """Any single-image (or text) tokens ``[B, N, D]`` → body output tokens."""
        kwargs = dict(self.body_kwargs)
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        return self.body(self._in(tokens), **kwargs)

    def features(self, x: Array) -> Array:
        """Target inputs → body output tokens."""
        return self.encode(self.embed(x))

    def __call__(self, x: Array) -> Array:
        """Target inputs → task outputs (logits, regression values or dense fields)."""
        return self.outputs(self.features(x))

    @property
    def special_tokens(self) -> int:
        """Leading target tokens that carry no input (ViT's class token): the pooled head skips
        them and PaRe never mixes them. The target embedder's, as it is the one adding them."""
        return special_tokens(self.embedder)

    def pooled_features(self, tokens: Array) -> Array:
        """Body output tokens → the ``[B, D]`` vector the head's classifier reads (its ``pool``)."""
        if not hasattr(self.head, "pool"):
            raise ValueError(
                f"pooled features need a pooled classification head (one with a `pool` method); "
                f"the model has {type(self.head).__name__}"
            )
        return self.head.pool(tokens)

    def source_tokens(self, source: Mapping[str, Array] | None = None, **inputs: Array) -> Array:
        """A source batch (HF names; a dict, keywords or both) → frozen source-embedder tokens.

        Precomputed ``tokens`` pass through; source images are resized to the target embedder's
        image size first (CIFAR-10's 32 px → 224 for Swin-B, as the reference does; a ResNet's
        task resolution), so they land on the token grid the body expects; float inputs take the
        compute dtype. The switch over source kinds is :func:`source.input_tokens`.
        """
        source = {**(source or {}), **inputs}
        hw = getattr(self.embedder, "image_size", None)
        return source_lib.input_tokens(self.source_embedder, source, image_size=hw, cast=self._in)

    def source_features(self, source: Mapping[str, Array] | None = None, **inputs: Array) -> Array:
        """A source batch → body output tokens through the frozen source embedder (text padding
        masked by its ``attention_mask``)."""
        source = {**(source or {}), **inputs}
        return self.encode_frame(self.source_tokens(source), source.get("attention_mask"))

    def pooled_source_features(
        self, source: Mapping[str, Array] | None = None, **inputs: Array
    ) -> Array:
        """A source batch → ``[B, D]`` mean body features, padding excluded (MoNA's outer loss,
        the source diagnostics)."""
        source = {**(source or {}), **inputs}
        return source_lib.pool(self.source_features(source), source)


def special_tokens(embedder: nnx.Module) -> int:
    """Leading tokens of ``embedder``'s output that carry no input (ViT's class token)."""
    return int(getattr(embedder, "special_tokens", 0))


def build_crossmodal(
    task: TaskSpec,
    pretrained: Pretrained,
    *,
    body_params: dict | None = None,
    init_embedder_from_body: bool = True,
    seed: int = 0,
    embedder: embedders.Embed1DOptions | None = None,
) -> tuple[nnx.GraphDef, dict]:
    """Builds a :class:`CrossModalModel` for ``task`` and returns ``(graphdef, params)``.

    ``body_params`` defaults to the pretrained params (pass ``pretrained.random_params()`` for the
    from-scratch baseline). 1D tasks need a text body, 2D and video tasks a vision body (ViT, Swin
    or ResNet); a video task builds the image model of one frame and runs it per frame.
    ``embedder`` chooses the 1D target embedder (default: ``Embed1DOptions()``, the per-family
    ``auto`` choice; ``Embed1DOptions(kind="orca")`` is the reference's); 2D inputs accept only
    ``kind`` ``auto`` or ``orca`` (their embedder is the body's patch embedding either way).
    """
    embedder_options = embedder or embedders.Embed1DOptions()
    if not task.is_1d and embedder_options.kind not in ("auto", "orca"):
        raise ValueError(
            f"embedder.kind={embedder_options.kind!r} applies to 1D inputs (C, L); this task's "
            f"input is {task.input_shape}. Use 'auto' or 'orca'."
        )
    frames = 0
    if task.is_video:
        frames = task.input_shape[0]
        task = dataclasses.replace(task, input_shape=tuple(task.input_shape[1:]))
    rngs = nnx.Rngs(seed)
    full = pretrained.module(body_params)
    cfg = pretrained.config
    kind = pretrained.model_type
    c_in = task.input_shape[0]
    body_kwargs: dict[str, Any] = {}
    if task.is_1d:
        if pretrained.modality != "text":
            raise ValueError(
                f"1D task input {task.input_shape} needs a text body; {pretrained.path} is "
                f"{kind!r}. Use a BERT/RoBERTa folder or reshape the task to 2D."
            )
        embedder = embedders.Embed1D(
            c_in,
            task.input_shape[1],
            cfg.hidden_size,
            target_seq_len=task.target_seq_len,
            max_positions=cfg.max_position_embeddings,
            position_offset=cfg.position_offset,
            eps=cfg.layer_norm_eps,
            options=embedder_options,
            tabular=task.tabular,
            rngs=rngs,
        )
    elif pretrained.modality == "text":
        # A 2D input on a text body: row-major patch tokens + the body's own 1D positions; patch
        # size from target_seq_len (embedders.patch2d_size). No LayerNorm: blank patches make
        # constant tokens, and LN's 1/σ on them (text eps 1e-12) blows the gradients up.
        hw = tuple(task.input_shape[1:])
        embedder = embedders.Embed2D(
            c_in,
            cfg.hidden_size,
            image_size=hw,
            patch_size=embedders.patch2d_size(hw, task.target_seq_len),
            norm=False,
            cls_and_positions=False,
            positions=True,
            eps=cfg.layer_norm_eps,
            rngs=rngs,
        )
    else:
        if pretrained.modality != "vision":
            raise ValueError(
                f"2D task input {task.input_shape} needs a vision body; {pretrained.path} is "
                f"{kind!r}. Use a ViT/Swin/ResNet folder or flatten the task to 1D (C, H·W)."
            )
        # What differs between vision bodies lives in each body's module (see `Pretrained.
        # body_module`): its target embedder, the static body arguments, the dense head's grid.
        body_module = pretrained.body_module
        embedder = body_module.target_embedder(c_in, tuple(task.input_shape[1:]), cfg, full, rngs)
        body_kwargs = body_module.body_kwargs(embedder)
    skip = special_tokens(embedder)
    if init_embedder_from_body:
        embedders.init_from_body(embedder, full.embeddings)

    if task.output == "dense":
        if task.is_1d:
            head = heads.Dense1DHead(task.num_outputs, embedder.stride, task.input_shape[1])
        else:
            text = pretrained.modality == "text"
            grid = embedder.grid if text else pretrained.body_module.dense_grid(cfg, embedder)
            head = heads.Dense2DHead(
                full.output_dim,
                grid=grid,
                image_size=embedder.image_size,
                out_channels=task.num_outputs,
                out_hw=task.output_hw or tuple(task.input_shape[1:]),
                skip_tokens=skip,
                rngs=rngs,
            )
    else:
        head = heads.PooledHead(
            full.output_dim, task.num_outputs, skip_tokens=skip, frames=frames or 1, rngs=rngs
        )

    model = CrossModalModel(embedder, full.encoder, head, full.embeddings, body_kwargs, frames)
    return _split_fresh(model)


def _split_fresh(model: CrossModalModel) -> tuple[nnx.GraphDef, dict]:
    graphdef, params = split(model)
    # Fresh buffers: the body group and the copied embedder weights would otherwise alias
    # `pretrained.params` (and each other), and donating them in a jitted step would delete the
    # pretrained weights or fail with "donate the same buffer twice".
    return graphdef, jax.tree.map(lambda x: jnp.array(x, copy=True), params)


COMPUTE_DTYPES = ("float32", "bfloat16")


def cast_floats(tree: Any, dtype: Any) -> Any:
    """Every floating leaf of ``tree`` in ``dtype`` (integer leaves untouched)."""
    return jax.tree.map(
        lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a, tree
    )


def merge(graphdef: nnx.GraphDef, params: dict) -> CrossModalModel:
    """The model of ``params`` (method groups are ignored), in its compute dtype.

    Under ``compute_dtype="bfloat16"`` the float32 master params are cast here, inside the
    differentiated function, so gradients arrive in float32 for the optimizer.
    """
    groups = {g: params[g] for g in MODEL_GROUPS if g in params}
    model = nnx.merge(graphdef, groups)
    layers.check_param_shapes(model)
    dtype = getattr(model, "compute_dtype", "float32")
    if dtype != "float32":
        model = nnx.merge(graphdef, cast_floats(groups, dtype))
    return model


def with_compute_dtype(graphdef: nnx.GraphDef, params: Any, dtype: str) -> nnx.GraphDef:
    """The graphdef of the same model computing in ``dtype`` (params unchanged, float32)."""
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype={dtype!r}; expected one of {COMPUTE_DTYPES}")
    model = layers.abstract_module(graphdef, params)
    model.compute_dtype = dtype
    return nnx.split(model)[0]


def apply(graphdef: nnx.GraphDef, params: dict, *args: Any, method: str = "__call__", **kw: Any):
    """Pure forward: merges ``params`` into ``graphdef`` and calls ``method`` (jit/grad-safe).

    ``apply(g, p, x)`` gives task outputs; ``method="features"`` the body tokens;
    ``method="source_features", input_ids=...`` the source path (``"pooled_source_features"``
    its mean). Method groups in ``params``
    (PaRe's gate, LSG's projection) ride along unused.
    """
    return getattr(merge(graphdef, params), method)(*args, **kw)
