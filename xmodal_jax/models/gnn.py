"""A two-layer Kipf GCN (no bias) on weighted, symmetrically normalised graphs (spec/lsg.md §3–§4).

Graphs are ``jraph.GraphsTuple``s whose ``edges`` hold the *normalised* coefficients
``w_ij / √(d_i d_j)`` (one entry per directed edge, self loops included). jraph's stock
``GraphConvolution`` normalises by edge counts and ignores weights, so message passing here is an
explicit ``jax.ops.segment_sum`` of ``coeff · x[sender]`` into the receiver. A dense ``Â`` matrix is
accepted too (the same function, a matmul instead of a scatter); the two paths agree (tested).

Params are a plain dict ``{"w1": [D_in, D_hidden], "w2": [D_hidden, C]}``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:
    import jraph

# jraph is imported where a graph is built or read, not at module import: the training step of
# every non-LSG method imports this package's registry (which names LSG) and must run where only
# the JAX core is installed (a lent accelerator host, bench/device_check.sh).
Array = jax.Array
Graph = Any  # jraph.GraphsTuple (sparse, segment_sum) or a dense normalised adjacency Array


@contextlib.contextmanager
def jraph_tree_compat() -> Iterator[None]:
    """Temporarily restores ``jax.tree_map`` / ``jax.tree_leaves`` for jraph 0.0.6 utilities.

    jraph 0.0.6 still calls the aliases JAX removed (in ``zero_out_padding``,
    ``get_fully_connected_graph`` and a few others). The project's own code never needs them; wrap
    a call to such a jraph utility in this context instead of patching ``jax`` globally, so nothing
    else in the process can come to depend on the removed names.
    """
    missing = {
        name: fn
        for name, fn in (("tree_map", jax.tree.map), ("tree_leaves", jax.tree.leaves))
        if name not in vars(jax)
    }
    for name, fn in missing.items():
        setattr(jax, name, fn)
    try:
        yield
    finally:
        for name in missing:
            delattr(jax, name)


def symmetric_normalize(
    senders: np.ndarray, receivers: np.ndarray, weights: np.ndarray, num_nodes: int
) -> np.ndarray:
    """Coefficients ``w_ij / √(d_i d_j)`` with ``d`` the weighted degrees (row sums), host-side.

    No identity is added (self loops, if wanted, are already edges). Raises if a node has degree
    ≤ 0, where the normalisation is undefined.
    """
    deg = np.zeros(num_nodes, np.float64)
    np.add.at(deg, receivers, weights.astype(np.float64))
    if (deg <= 0).any():
        bad = np.flatnonzero(deg <= 0)
        raise ValueError(
            f"symmetric_normalize: {len(bad)} node(s) have weighted degree ≤ 0 (first: node "
            f"{bad[0]}); every node needs an edge (e.g. a self loop)"
        )
    inv = 1.0 / np.sqrt(deg)
    return (weights * inv[senders] * inv[receivers]).astype(np.float32)


def dense_normalize(adjacency: Array) -> Array:
    """``D^{-1/2} A D^{-1/2}`` of a dense weighted adjacency (D = row sums; no identity added)."""
    inv = jax.lax.rsqrt(adjacency.sum(axis=1))
    return adjacency * inv[:, None] * inv[None, :]


def graph_from_adjacency(
    adjacency: np.ndarray, nodes: np.ndarray | None = None
) -> jraph.GraphsTuple:
    """A ``GraphsTuple`` of the nonzero entries of a dense weighted adjacency, sym-normalised.

    ``adjacency[i, j]`` is the weight of the edge j → i (symmetric here anyway); ``edges`` holds
    the normalised coefficients; ``nodes`` (optional) rides along as node features.
    """
    a = np.asarray(adjacency)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"graph_from_adjacency: expected a square [N, N] matrix, got {a.shape}")
    receivers, senders = np.nonzero(a)
    import jraph

    coeffs = symmetric_normalize(senders, receivers, a[receivers, senders], a.shape[0])
    return jraph.GraphsTuple(
        nodes=nodes,
        edges=jnp.asarray(coeffs),
        senders=jnp.asarray(senders, jnp.int32),
        receivers=jnp.asarray(receivers, jnp.int32),
        n_node=jnp.asarray([a.shape[0]], jnp.int32),
        n_edge=jnp.asarray([len(senders)], jnp.int32),
        globals=None,
    )


def propagate(graph: Graph, x: Array) -> Array:
    """``Â · x``: weighted message passing (segment_sum) on a GraphsTuple, or a dense matmul."""
    import jraph

    if isinstance(graph, jraph.GraphsTuple):
        messages = graph.edges[:, None].astype(x.dtype) * x[graph.senders]
        return jax.ops.segment_sum(messages, graph.receivers, num_segments=x.shape[0])
    return graph.astype(x.dtype) @ x


def gcn_init(key: Array, in_dim: int, hidden_dim: int, num_classes: int) -> dict[str, Array]:
    """Kipf-style init (as pygcn): each weight uniform in ±1/√(fan_out); no biases.

    ``in_dim·hidden_dim + hidden_dim·num_classes`` parameters (1,150,976 for D = 1024, C = 100).
    """
    k1, k2 = jax.random.split(key)

    def uniform(k, shape):
        bound = 1.0 / np.sqrt(shape[1])
        return jax.random.uniform(k, shape, jnp.float32, -bound, bound)

    return {"w1": uniform(k1, (in_dim, hidden_dim)), "w2": uniform(k2, (hidden_dim, num_classes))}


def gcn_apply(params: dict[str, Array], graph: Graph, x: Array) -> tuple[Array, Array]:
    """Two-layer GCN: ``H1 = LeakyReLU_0.2(Â X W1)``, ``Z = Â H1 W2``; returns ``(H1, Z)``.

    ``graph`` is a ``GraphsTuple`` with normalised coefficients in ``edges`` (segment_sum message
    passing) or the dense normalised ``Â`` ``[N, N]``; ``x`` is ``[N, D_in]``. The features are
    transformed before they are propagated (``Â(XW)``, the same product) because the second
    layer's output width C is smaller than D. ``H1`` is what LSG's regulariser reads (the
    post-activation hidden features), ``Z`` the class logits (not row-normalised).
    """
    if x.ndim != 2 or x.shape[1] != params["w1"].shape[0]:
        raise ValueError(
            f"gcn_apply: node features {x.shape} do not match w1 {params['w1'].shape}; expected "
            f"[N, {params['w1'].shape[0]}]"
        )
    h1 = jax.nn.leaky_relu(propagate(graph, x @ params["w1"]), negative_slope=0.2)
    z = propagate(graph, h1 @ params["w2"])
    return h1, z


def num_params(params: dict[str, Array]) -> int:
    """Total number of scalars in the GCN params."""
    return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))
