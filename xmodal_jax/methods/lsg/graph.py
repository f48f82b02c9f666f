"""LSG stage 1: the label graph (jraph), its augmentation with image nodes inside the step, and the
GCN pre-training (its own small full-batch loop: the documented exception to the one loop).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
import optax

if TYPE_CHECKING:  # imported where a graph is built (see models/gnn.py)
    import jraph

from xmodal_jax.models import gnn

Array = jax.Array


# --- the label graph ------------------------------------------------------------------------------


def label_adjacency(x: np.ndarray, labels: np.ndarray, edge_ratio: float = 0.003) -> np.ndarray:
    """The stage-1 weighted adjacency ``A`` ``[N, N]`` (spec §3, the reference's ``A2Plus``).

    ``S`` = cosine similarity of the node features. Every intra-class pair is an edge (complete
    blocks, self loops included); an inter-class pair is an edge iff ``S_ij ≥ τ``, ``τ`` the
    ``(1 − edge_ratio)`` quantile of ``S`` with the intra-class entries set to 0. Weights are the
    cosines. Not normalised.
    """
    x = np.asarray(x, np.float64)
    labels = np.asarray(labels)
    if x.ndim != 2 or labels.shape != (x.shape[0],):
        raise ValueError(
            f"label_adjacency: x {x.shape} and labels {labels.shape}: want [N, D], [N]"
        )
    if not 0 <= edge_ratio < 1:
        raise ValueError(f"label_adjacency: edge_ratio={edge_ratio} must be in [0, 1)")
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = xn @ xn.T
    same = labels[:, None] == labels[None, :]
    inter = np.where(same, 0.0, s)
    tau = np.quantile(inter, 1.0 - edge_ratio) if edge_ratio > 0 else np.inf
    keep = same | (inter >= tau) & ~same
    return np.where(keep, s, 0.0).astype(np.float32)


def build_label_graph(
    x: np.ndarray, labels: np.ndarray, edge_ratio: float = 0.003
) -> jraph.GraphsTuple:
    """The label graph as a ``jraph.GraphsTuple``: ``nodes`` = ``x``, ``edges`` = ``Â``'s entries.

    ``Â = D^{-1/2} A D^{-1/2}`` of :func:`label_adjacency` (weighted degrees, no extra identity;
    every degree must be > 0, which the self loops guarantee for unit-norm features).
    """
    a = label_adjacency(x, labels, edge_ratio)
    return gnn.graph_from_adjacency(a, nodes=jnp.asarray(x, jnp.float32))


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: a static jit argument
class TextGraph:
    """The frozen text part of stage 2's graph, as host arrays (they become jit constants).

    Nodes are class-major: node ``t`` has class ``t // prompts``. ``senders/receivers/weights``
    are the raw (unnormalised) edges of :func:`label_adjacency`; ``degree`` their row sums.
    """

    x: np.ndarray  # [N, D]
    num_classes: int
    prompts: int
    senders: np.ndarray
    receivers: np.ndarray
    weights: np.ndarray
    degree: np.ndarray

    @classmethod
    def build(cls, embeddings: np.ndarray, prompts: int, edge_ratio: float) -> TextGraph:
        """From ``embeddings [C, T, D]``: prompts ``0..prompts-1`` of each class are the nodes."""
        c, _, d = embeddings.shape
        x = np.asarray(embeddings[:, :prompts], np.float32).reshape(c * prompts, d)
        labels = np.repeat(np.arange(c), prompts)
        a = label_adjacency(x, labels, edge_ratio)
        receivers, senders = np.nonzero(a)
        return cls(
            x,
            c,
            prompts,
            senders.astype(np.int32),
            receivers.astype(np.int32),
            a[receivers, senders],
            a.sum(1),
        )


def augmented_graph(text: TextGraph, labels: Array) -> jraph.GraphsTuple:
    """Stage 2's graph ``[[A_text, T], [Tᵀ, I + M]]`` with ``M`` image nodes, normalised, in-jit.

    Image node ``i`` (label ``labels[i]``, a traced int array of static length M) is linked with
    weight 1 to the ``prompts`` text nodes of its class (``T``) and to every image node of the same
    label, itself included (``I + M``). Degrees and the symmetric normalisation are computed on
    the fly; the edge count ``E_text + 2·M·K + M²`` is static, so the step compiles once
    (image–image pairs of different labels are edges of weight 0).
    """
    n, k = len(text.x), text.prompts
    m = labels.shape[0]
    labels = labels.astype(jnp.int32)
    img = n + jnp.arange(m, dtype=jnp.int32)
    # text ↔ image: image i links prompts labels[i]·K … labels[i]·K + K − 1.
    t_nodes = (labels[:, None] * k + jnp.arange(k, dtype=jnp.int32)[None, :]).reshape(-1)
    i_nodes = jnp.repeat(img, k)
    same = (labels[:, None] == labels[None, :]).astype(jnp.float32)
    ii_s = jnp.tile(img, m)
    ii_r = jnp.repeat(img, m)
    senders = jnp.concatenate([jnp.asarray(text.senders), t_nodes, i_nodes, ii_s])
    receivers = jnp.concatenate([jnp.asarray(text.receivers), i_nodes, t_nodes, ii_r])
    ones = jnp.ones(m * k, jnp.float32)
    weights = jnp.concatenate([jnp.asarray(text.weights), ones, ones, same.reshape(-1)])
    attached = jnp.zeros(text.num_classes, jnp.float32).at[labels].add(1.0)
    degree = jnp.concatenate([jnp.asarray(text.degree) + jnp.repeat(attached, k), k + same.sum(1)])
    inv = jax.lax.rsqrt(degree)
    coeffs = weights * inv[senders] * inv[receivers]
    import jraph

    return jraph.GraphsTuple(
        nodes=None,
        edges=coeffs,
        senders=senders,
        receivers=receivers,
        n_node=jnp.asarray([n + m]),
        n_edge=jnp.asarray([senders.shape[0]]),
        globals=None,
    )


def augmented_dense(text: TextGraph, labels: Array) -> Array:
    """The same normalised graph as :func:`augmented_graph`, as a dense ``Â`` ``[N+M, N+M]``.

    Faster than scatter-based message passing for small graphs (on CPU by far); built in-jit
    from the constant text block and the traced labels.
    """
    n, k = len(text.x), text.prompts
    a_text = np.zeros((n, n), np.float32)
    a_text[text.receivers, text.senders] = text.weights
    t = (jnp.asarray(np.arange(n) // k)[:, None] == labels[None, :]).astype(jnp.float32)
    same = (labels[:, None] == labels[None, :]).astype(jnp.float32)
    a = jnp.block([[jnp.asarray(a_text), t], [t.T, same]])
    return gnn.dense_normalize(a)


def augmented_adjacency(a_text: np.ndarray, labels: np.ndarray, prompts: int) -> np.ndarray:
    """Dense unnormalised ``[[A_text, T], [Tᵀ, I + M]]`` (a reference for tests and small runs)."""
    n, m = a_text.shape[0], len(labels)
    out = np.zeros((n + m, n + m), np.float32)
    out[:n, :n] = a_text
    t = (np.arange(n)[:, None] // prompts == np.asarray(labels)[None, :]).astype(np.float32)
    out[:n, n:], out[n:, :n] = t, t.T
    out[n:, n:] = (np.asarray(labels)[:, None] == np.asarray(labels)[None, :]).astype(np.float32)
    return out


# --- stage 1: train the GCN -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GCNResult:
    """Stage-1 outcome: the best-on-validation params and the (step, loss, val acc) history."""

    params: dict[str, np.ndarray]
    best_step: int
    val_acc: float
    history: tuple[tuple[int, float, float], ...]
    seconds: float


def _rownorm_ce(z: Array, labels: Array) -> Array:
    z = z / jnp.maximum(jnp.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    return optax.softmax_cross_entropy_with_integer_labels(z, labels).mean()


def _gcn_tx(lr: float, momentum: float, weight_decay: float) -> optax.GradientTransformation:
    # PyTorch SGD's coupled weight decay: added to the gradient before momentum.
    return optax.chain(
        optax.add_decayed_weights(weight_decay), optax.sgd(lr, momentum=momentum, nesterov=True)
    )


@functools.partial(jax.jit, static_argnames=("lr", "momentum", "weight_decay"))
def _gcn_run(params, opt, graph, labels, n, *, lr, momentum, weight_decay):
    """``n`` (traced) full-batch SGD steps in one ``fori_loop``: one compile for every chunk."""
    tx = _gcn_tx(lr, momentum, weight_decay)

    def body(_, carry):
        p, opt, _ = carry
        loss, grads = jax.value_and_grad(
            lambda q: _rownorm_ce(gnn.gcn_apply(q, graph, graph.nodes)[1], labels)
        )(p)
        updates, opt = tx.update(grads, opt, p)
        return optax.apply_updates(p, updates), opt, loss

    return jax.lax.fori_loop(0, n, body, (params, opt, jnp.zeros(())))


@jax.jit
def _gcn_accuracy(params, graph, labels):
    return (gnn.gcn_apply(params, graph, graph.nodes)[1].argmax(1) == labels).mean()


def train_gcn(
    embeddings: np.ndarray,
    *,
    prompts: int = 20,
    edge_ratio: float = 0.003,
    steps: int = 5005,
    lr: float = 0.01,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    eval_every: int = 500,
    seed: int = 0,
    checkpoint_dir: str | None = None,
    verbose: bool = False,
) -> GCNResult:
    """Stage 1: full-batch node classification on the label graph of ``embeddings [C, T, D]``.

    Nodes are prompts ``0..prompts-1`` of every class (graph of :func:`build_label_graph`); the
    held-out prompts ``prompts..2·prompts-1`` form a validation graph built the same way. Loss:
    CE of the row-normalised GCN logits (spec §5). Optimiser: SGD, Nesterov momentum, coupled
    weight decay (PyTorch's), constant lr. The steps run in jitted chunks of ``eval_every``
    (``lax.fori_loop``, no host round trip per step); after each chunk the validation accuracy
    is read and the best params kept (the reference keeps the final ones: we select on the held-out
    prompts, never on data). ``checkpoint_dir``: the best params are saved there with Orbax.
    """
    emb = np.asarray(embeddings, np.float32)
    if emb.ndim != 3 or emb.shape[1] < 2 * prompts:
        raise ValueError(
            f"train_gcn: embeddings {emb.shape}: expected [C, T ≥ {2 * prompts}, D] (prompts "
            f"1..{prompts} train, {prompts + 1}..{2 * prompts} validate)"
        )
    c, _, d = emb.shape
    labels = jnp.asarray(np.repeat(np.arange(c), prompts), jnp.int32)
    x_tr = emb[:, :prompts].reshape(-1, d)
    x_va = emb[:, prompts : 2 * prompts].reshape(-1, d)
    g_tr = build_label_graph(x_tr, np.asarray(labels), edge_ratio)
    g_va = build_label_graph(x_va, np.asarray(labels), edge_ratio)
    params = gnn.gcn_init(jax.random.key(seed), d, d, c)
    hyper = dict(lr=float(lr), momentum=float(momentum), weight_decay=float(weight_decay))
    tx = _gcn_tx(**hyper)

    def run(p, opt, g, n):
        return _gcn_run(p, opt, g, labels, n, **hyper)

    def accuracy(p, g):
        return _gcn_accuracy(p, g, labels)

    t0 = time.time()
    opt = tx.init(params)
    best, best_acc, best_step, history, done = params, -1.0, 0, [], 0
    while done < steps:
        n = min(eval_every, steps - done)
        params, opt, loss = run(params, opt, g_tr, n)
        done += n
        acc = float(accuracy(params, g_va))
        history.append((done, float(loss), acc))
        if verbose:
            print(f"[gcn] step {done}/{steps} loss {float(loss):.4f} val prompt acc {acc:.4f}")
        if acc > best_acc:
            best, best_acc, best_step = params, acc, done
    best = jax.tree.map(np.asarray, best)
    if checkpoint_dir:
        save_gcn(checkpoint_dir, best, {"best_step": best_step, "val_acc": best_acc})
    return GCNResult(best, best_step, best_acc, tuple(history), time.time() - t0)


def save_gcn(path: str, params: dict[str, np.ndarray], meta: dict | None = None) -> None:
    """Saves GCN params (+ JSON metadata) with Orbax at ``path`` (replaced if present)."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(path)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckpt:
        ckpt.save(
            path,
            ocp.args.Composite(
                params=ocp.args.StandardSave(params), meta=ocp.args.JsonSave(meta or {})
            ),
            force=True,
        )


def load_gcn(path: str) -> tuple[dict[str, np.ndarray], dict]:
    """Restores ``(params, meta)`` written by :func:`save_gcn` / :func:`train_gcn`."""
    import orbax.checkpoint as ocp

    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no GCN checkpoint (train_gcn(checkpoint_dir=...))")
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckpt:
        out = ckpt.restore(
            path, ocp.args.Composite(params=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore())
        )
    return jax.tree.map(np.asarray, dict(out["params"])), dict(out["meta"])
