"""Building blocks shared by every body: dense layers, layer norm, multi-head self-attention.

Parameter names follow one convention across the package (``kernel``/``bias`` for dense layers,
``scale``/``bias`` for norms) so that key-mapping tables and sharding rules stay short.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from xmodal_jax import parallel

Array = jax.Array

# HF initialises every dense layer with N(0, 0.02); our random init does the same so that a
# from-scratch body is comparable with the pretrained one.
_DENSE_INIT = nnx.initializers.normal(0.02)


def dense(d_in: int, d_out: int, rngs: nnx.Rngs, *, use_bias: bool = True) -> nnx.Linear:
    """A Linear layer with the HF-style N(0, 0.02) kernel init and zero bias."""
    return nnx.Linear(d_in, d_out, use_bias=use_bias, kernel_init=_DENSE_INIT, rngs=rngs)


def layer_norm(dim: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """LayerNorm over the last axis with the two-pass variance (parity with PyTorch)."""
    # The fast E[x^2]-E[x]^2 variance loses ~1e-5 on large activations; parity needs two passes.
    return nnx.LayerNorm(dim, epsilon=eps, use_fast_variance=False, rngs=rngs)


def gelu_erf(x: Array) -> Array:
    """Exact GELU as PyTorch/HF write it: ``x · (1 + erf(x / √2)) / 2``.

    ``jax.nn.gelu(approximate=False)`` computes ``x · erfc(−x/√2) / 2``; XLA:CPU expands erfc into
    an exp plus branch selects (two extra elementwise passes over the ``[B, L, 4D]`` activations,
    forward and backward), while ``erf`` is a single vectorised rational approximation. Same
    function, same formula as the PyTorch reference; about 2–3% of a MiniLM fine-tune step's CPU
    time on 2 cores (bench/step_time.py, B=8, 64 tokens).
    """
    return x * 0.5 * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


def activation(name: str):
    """Maps a HF ``hidden_act`` string to a JAX function (exact GELU for "gelu")."""
    table = {
        "gelu": gelu_erf,
        "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
        "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "relu": jax.nn.relu,
        "silu": jax.nn.silu,
        "swish": jax.nn.silu,
    }
    if name not in table:
        raise ValueError(f"hidden_act={name!r} is not supported; expected one of {sorted(table)}")
    return table[name]


def mask_to_bias(attention_mask: Array | None, dtype=jnp.float32) -> Array | None:
    """Turns a ``[B, L]`` 1/0 key mask into an additive ``[B, 1, 1, L]`` attention bias."""
    if attention_mask is None:
        return None
    big_neg = jnp.finfo(dtype).min
    return jnp.where(attention_mask[:, None, None, :] > 0, 0.0, big_neg).astype(dtype)


class SelfAttention(nnx.Module):
    """Multi-head self-attention with separate q/k/v/out projections (the BERT/ViT/Swin layout).

    ``bias`` is added to the attention logits; it broadcasts against ``[B, H, Lq, Lk]`` and carries
    padding masks, relative position biases and shifted-window masks alike.
    """

    def __init__(self, dim: int, num_heads: int, rngs: nnx.Rngs, *, qkv_bias: bool = True):
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.query = dense(dim, dim, rngs, use_bias=qkv_bias)
        self.key = dense(dim, dim, rngs, use_bias=qkv_bias)
        self.value = dense(dim, dim, rngs, use_bias=qkv_bias)
        self.out = dense(dim, dim, rngs)

    def __call__(self, x: Array, bias: Array | None = None) -> Array:
        *batch, length, dim = x.shape

        def heads(t: Array) -> Array:
            return t.reshape(*batch, length, self.num_heads, self.head_dim).swapaxes(-2, -3)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        logits = jnp.einsum("...qd,...kd->...qk", q, k) / math.sqrt(self.head_dim)
        if bias is not None:
            logits = logits + bias
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        ctx = jnp.einsum("...qk,...kd->...qd", probs, v)
        ctx = ctx.swapaxes(-2, -3).reshape(*batch, length, dim)
        return self.out(ctx)


class MLP(nnx.Module):
    """The transformer feed-forward block: dense → activation → dense."""

    def __init__(self, dim: int, hidden: int, act: str, rngs: nnx.Rngs):
        self.fc1 = dense(dim, hidden, rngs)
        self.fc2 = dense(hidden, dim, rngs)
        self.act_name = act

    def __call__(self, x: Array) -> Array:
        return self.fc2(activation(self.act_name)(self.fc1(x)))


# Per-block rematerialisation policies (``config.body.remat``): what each block keeps from its
# forward pass for the backward pass. "none": everything (no remat). "full": only the block's
# inputs; the backward pass recomputes the block, and under a second differentiation (MoNA's grad
# of grad) the block's backward is recomputed the same way (:func:`recompute_in_backward`).
# "dots_saveable" / "dots_with_no_batch_dims_saveable": ``jax.checkpoint`` with that policy
# (matmul outputs saved, elementwise work recomputed); XLA honours these on GPU/TPU, but the CPU
# compiler drops the optimization barriers early and schedules the recompute into the forward
# pass, so on CPU they save nothing (measured; tests/test_remat.py).
REMAT_POLICIES = {
    "none": None,
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _after(tree: Any, cotangent: Any) -> Any:
    """``tree`` made data-dependent on ``cotangent`` (values unchanged unless it holds a NaN).

    The recompute in a backward pass then cannot be scheduled before the cotangent exists, which
    is what keeps the forward activations from being live all at once. An optimization barrier
    would say the same but is erased early by XLA's CPU pipeline; a NaN check cannot be.
    """
    leaves = [c for c in jax.tree.leaves(cotangent) if jnp.issubdtype(c.dtype, jnp.inexact)]
    if not leaves:
        return tree
    bad = jnp.isnan(jnp.sum(leaves[0]))
    return jax.tree.map(
        lambda t: jnp.where(bad, jnp.nan, t) if jnp.issubdtype(t.dtype, jnp.inexact) else t, tree
    )


def recompute_in_backward(fn: Callable[..., Any], depth: int = 2) -> Callable[..., Any]:
    """``fn`` whose reverse-mode derivative stores only its inputs and recomputes the rest.

    A ``jax.custom_vjp``: the forward saves the arguments; the backward re-runs ``fn`` (tied to
    the cotangent by :func:`_after`) and applies its VJP. With ``depth`` 2 that backward is itself
    wrapped the same way, so differentiating a gradient (reverse over reverse) also stores only
    block inputs and cotangents per block. Arguments are pytrees of arrays; static values must be
    closed over by ``fn``. Reverse mode only (``jax.jvp`` of a custom_vjp is unsupported).
    """

    @jax.custom_vjp
    def f(*args):
        return fn(*args)

    def fwd(*args):
        return fn(*args), args

    def vjp_of(*args_and_ct):
        *args, ct = args_and_ct
        return jax.vjp(fn, *args)[1](ct)

    def bwd(args, ct):
        args = _after(args, ct)
        if depth > 1:
            return recompute_in_backward(vjp_of, depth - 1)(*args, ct)
        return vjp_of(*args, ct)

    f.defvjp(fwd, bwd)
    return f


def check_remat(policy: str) -> str:
    """Returns ``policy`` if it names a :data:`REMAT_POLICIES` entry, else a ValueError."""
    if policy not in REMAT_POLICIES:
        raise ValueError(f"remat policy {policy!r}; expected one of {sorted(REMAT_POLICIES)}")
    return policy


def call_block(block: nnx.Module, policy: str, x: Array, *args: Any) -> Array:
    """``block(x, *args)``, rematerialised under ``policy`` (a :data:`REMAT_POLICIES` name).

    The block is split into (graphdef, state) and called as a pure function of its state, so the
    remat sits inside plain-JAX differentiation (MoNA's grad of grad) without nesting nnx
    transforms. Array ``args`` (the attention bias) are passed through; others (Swin's static
    token grid, a ``None`` bias) are closed over. Input and output are pinned batch-sharded when
    a mesh is in context (:func:`xmodal_jax.parallel.constrain_batch`).
    """
    x = parallel.constrain_batch(x)
    if check_remat(policy) == "none":
        out = block(x, *args)
    else:
        graphdef, state = nnx.split(block)
        arrays = [a for a in args if isinstance(a, jax.Array)]

        def pure(state, x, *arrays):
            it = iter(arrays)
            call_args = [next(it) if isinstance(a, jax.Array) else a for a in args]
            return nnx.merge(graphdef, state)(x, *call_args)

        if policy == "full":
            out = recompute_in_backward(pure)(state, x, *arrays)
        else:
            out = jax.checkpoint(pure, policy=REMAT_POLICIES[policy])(state, x, *arrays)
    return parallel.constrain_batch(out)


def set_remat(module: nnx.Module, policy: str) -> nnx.Module:
    """Sets ``remat_policy`` on every submodule of ``module`` that has one (the body stacks).

    The policy is a static attribute, so it lives in the graphdef: the params pytree is the same
    under every policy, and a jitted step compiles once per (policy, shape).
    """
    check_remat(policy)
    for _, sub in nnx.iter_graph(module):
        if isinstance(sub, nnx.Module) and hasattr(sub, "remat_policy"):
            sub.remat_policy = policy
    return module


def with_remat(graphdef: nnx.GraphDef, params: Any, policy: str) -> nnx.GraphDef:
    """The graphdef of the same model with every body stack rematerialised under ``policy``.

    Selects remat per run without rebuilding or copying weights: the model is merged from
    abstract ``ShapeDtypeStruct`` leaves (``params`` only gives the structure), re-tagged with
    :func:`set_remat` and split again; ``params`` fits the returned graphdef unchanged.
    """
    return nnx.split(set_remat(abstract_module(graphdef, params), policy))[0]


def _expected_shapes(m: nnx.Module) -> dict[str, tuple[int, ...]]:
    """Parameter shapes implied by a standard layer's static attributes (others: none)."""
    if isinstance(m, nnx.Linear):
        return {"kernel": (m.in_features, m.out_features), "bias": (m.out_features,)}
    if isinstance(m, nnx.Conv):
        k = tuple(m.kernel_size)
        return {
            "kernel": (*k, m.in_features // m.feature_group_count, m.out_features),
            "bias": (m.out_features,),
        }
    if isinstance(m, nnx.LayerNorm):
        return {"scale": (m.num_features,), "bias": (m.num_features,)}
    if isinstance(m, nnx.Embed):
        return {"embedding": (m.num_embeddings, m.features)}
    return {}


def check_param_shapes(module: nnx.Module) -> None:
    """Every Linear / Conv / LayerNorm / Embed parameter has the shape its layer was built for.

    ``nnx.merge`` accepts any arrays: a 3-class head merged into a 4-class graphdef would
    silently return 3 logits. Runs at trace time (Python, no device work).
    """
    bad = []
    for path, m in nnx.iter_modules(module):
        for name, want in _expected_shapes(m).items():
            leaf = getattr(m, name, None)
            shape = getattr(leaf, "shape", None)
            if leaf is not None and shape is not None and tuple(shape) != want:
                where = "/".join(str(p) for p in (*path, name))
                bad.append(f"{where}: got {tuple(shape)}, the graphdef expects {want}")
    if bad:
        raise ValueError(
            "params do not fit the graphdef (built for another task or body?):\n  "
            + "\n  ".join(bad[:10])
        )


def abstract_module(graphdef: nnx.GraphDef, params: Any) -> nnx.Module:
    """The module of ``graphdef`` merged over ``ShapeDtypeStruct`` stand-ins for ``params``.

    Reads or re-tags a model's static attributes (widths, remat policy, compute dtype) without
    touching an array, so it is safe on abstract params and inside traced set-up code; only the
    shapes and dtypes of ``params`` are used.
    """
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), params
    )
    return nnx.merge(graphdef, abstract)


def run_stack(
    stack, tokens: Array, attention_mask: Array | None, dim: int, remat: str = "none"
) -> Array:
    """Runs ``layer(tokens, bias)`` for each layer, after checking ``tokens`` is ``[B, L, dim]``.

    The check turns a wrongly sized embedder into a clear error instead of an XLA shape failure
    deep inside the first attention layer. ``remat`` (a :data:`REMAT_POLICIES` name) wraps each
    layer in ``jax.checkpoint``: per block, so a backward pass keeps one block's activations at a
    time instead of the whole stack's.
    """
    if tokens.ndim != 3 or tokens.shape[-1] != dim:
        raise ValueError(f"tokens have shape {tokens.shape}; the body expects [B, L, {dim}]")
    bias = mask_to_bias(attention_mask, tokens.dtype)
    for layer in stack:
        tokens = call_block(layer, remat, tokens, bias)
    return tokens


class Body(nnx.Module):
    """A pretrained body: ``embeddings`` (its input layer, the source embedder) + ``encoder``.

    Cross-modal transfer feeds ``encoder`` with tokens from a new embedder, so the two are
    separate submodules of every body. ``token_dim`` / ``output_dim`` are the feature sizes of the
    tokens the encoder takes and returns (equal, except for hierarchical bodies such as Swin).
    """

    def __init__(self, cfg, embeddings: nnx.Module, encoder: nnx.Module):
        self.cfg = cfg
        self.embeddings = embeddings
        self.encoder = encoder

    @property
    def token_dim(self) -> int:
        """Feature size of the tokens the encoder takes."""
        return self.cfg.hidden_size

    @property
    def output_dim(self) -> int:
        """Feature size of the encoder's output tokens."""
        return self.cfg.hidden_size


def adaptive_avg_pool_1d(x: Array, out_size: int, axis: int = -1) -> Array:
    """PyTorch ``AdaptiveAvgPool1d`` along ``axis``: bin i averages [⌊i·n/m⌋, ⌈(i+1)·n/m⌉).

    The same rule up- and down-samples, so it also handles ``out_size > n``. Implemented as a
    matmul with a static averaging matrix, so it is cheap, jittable and differentiable.
    """
    n = x.shape[axis]
    weights = _adaptive_pool_matrix(n, out_size)
    x = jnp.moveaxis(x, axis, -1)
    y = jnp.einsum("...n,nm->...m", x, jnp.asarray(weights, x.dtype))
    return jnp.moveaxis(y, -1, axis)


def adaptive_avg_pool_2d(x: Array, out_hw: tuple[int, int], axes: tuple[int, int] = (-2, -1)):
    """PyTorch ``AdaptiveAvgPool2d`` over the two ``axes`` (separable, so two 1D pools)."""
    x = adaptive_avg_pool_1d(x, out_hw[0], axis=axes[0])
    return adaptive_avg_pool_1d(x, out_hw[1], axis=axes[1])


def _adaptive_pool_matrix(n: int, m: int):
    import numpy as np

    w = np.zeros((n, m), np.float64)
    for i in range(m):
        start = (i * n) // m
        end = -((-(i + 1) * n) // m)
        w[start:end, i] = 1.0 / (end - start)
    return w.astype(np.float32)
