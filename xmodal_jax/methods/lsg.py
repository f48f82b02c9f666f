"""LSG: language-semantic-graph guided training (spec/lsg.md), for any CrossModalModel.

Stage 0 (:func:`label_embeddings`): every class name is put into the 80 CLIP ImageNet prompt
templates and embedded by a local HF text encoder (mean of the class-name tokens of the last
hidden state, L2-normalised) → ``[C, 80, D]``, cached on disk. Stage 1 (:func:`train_gcn`): a
2-layer GCN is trained on the label graph of prompts 1–K (:func:`build_label_graph`), validated on
prompts K+1–2K, best weights kept (Orbax). Stage 2 (stage kind ``"lsg"``, :func:`lsg_stage`): the
project's model (embedder → body → pooled head) plus a trained projection ``lsg_proj`` (pooled
feature → D) is trained with

    CE(head) + λ_g·CE(GCN logits of the image nodes) + λ_c·mean‖norm(h) − sg(norm(g))‖₂

on two augmented views per labelled example, the image nodes attached to the frozen label graph
inside the jitted step (:func:`augmented_graph`, static shapes). SSL (``lsg_cu`` > 0) adds the
same graph losses for the unlabelled split under argmax pseudo-labels, weighted by ``cu``.
Inference is the plain model: the evaluation path never sees the graph.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import jraph
import numpy as np
import optax
from flax import nnx

from xmodal_jax import losses
from xmodal_jax.methods.base import Context, Method, Stage
from xmodal_jax.models import crossmodal, gnn, heads
from xmodal_jax.models.pretrained import Pretrained, default_path, load_pretrained, read_config

Array = jax.Array
PROJ_GROUP = "lsg_proj"
CACHE_VERSION = 1

# The 80 prompt templates of CLIP's ImageNet zero-shot notebook, in the reference's order.
TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)


# --- stage 0: label embeddings --------------------------------------------------------------------


def clean_class_name(name: str) -> str:
    """``"001.Black_footed_Albatross"`` → ``"Black footed Albatross"`` (prefix, underscores)."""
    name = re.sub(r"^\s*\d+\.", "", str(name))
    return " ".join(name.replace("_", " ").split())


def prompt(template: str, name: str) -> tuple[str, tuple[int, int]]:
    """The prompt text and the character span ``[start, end)`` of ``name`` inside it.

    Templates starting with "a" or "the" get the prefix "This is " — a plain ``startswith`` as in
    the reference, so "art of a {}." is prefixed too.
    """
    if "{}" not in template:
        raise ValueError(f"prompt template {template!r} has no '{{}}' slot for the class name")
    if template.startswith("a") or template.startswith("the"):
        template = "This is " + template
    start = template.index("{}")
    return template.replace("{}", name, 1), (start, start + len(name))


def name_token_mask(offsets: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """``[B, L]`` mask of the tokens whose character offsets overlap each prompt's name span.

    ``offsets``: the fast tokenizer's ``offset_mapping`` ``[B, L, 2]`` (special and padding
    tokens have empty ``(0, 0)`` spans and never match); ``spans``: ``[B, 2]``. Offsets instead of
    the reference's token counting keep this exact for BPE tokenizers, whose tokens absorb the
    preceding space.
    """
    start, end = offsets[..., 0], offsets[..., 1]
    nonempty = end > start
    return nonempty & (start < spans[:, 1:2]) & (end > spans[:, 0:1])


def default_cache_dir() -> str:
    """``$XMODAL_CACHE/lsg`` or ``~/.cache/xmodal_jax/lsg``: label embeddings and GCNs."""
    root = os.environ.get("XMODAL_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "xmodal_jax"
    )
    return os.path.join(root, "lsg")


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=4)
def _text_model(path: str) -> Pretrained:
    return load_pretrained(path)


def _resolve_text_model(path: str | None) -> str:
    # Normalised as load_pretrained does, so cache keys and "is it the body?" checks agree.
    return os.path.abspath(os.path.expanduser(path or default_path()))


def label_embeddings(
    class_names: Sequence[str],
    *,
    model_path: str | None = None,
    pretrained: Pretrained | None = None,
    templates: Sequence[str] = TEMPLATES,
    cache_dir: str | None = None,
    batch_size: int = 128,
) -> np.ndarray:
    """Prompted class-name embeddings ``[C, T, D]`` (unit norm) from a local HF text encoder.

    Each class name is cleaned (:func:`clean_class_name`), put into every template
    (:func:`prompt`), tokenised with character offsets, and run through the encoder
    (``model_path``, default the shipped MiniLM; or an already loaded ``pretrained``); the vector
    of a prompt is the mean of the last hidden state over exactly the class-name tokens, then
    L2-normalised. The result is cached as ``<cache_dir>/emb-<hash>.npz``, the hash covering the
    model folder, the cleaned names and the templates (``cache_dir=""`` disables the cache).
    """
    if not class_names:
        raise ValueError("label_embeddings: no class names given")
    names = [clean_class_name(n) for n in class_names]
    if any(not n for n in names):
        raise ValueError(
            f"label_embeddings: empty class name after cleaning in {list(class_names)}"
        )
    path = pretrained.path if pretrained is not None else _resolve_text_model(model_path)
    key = _digest({"v": CACHE_VERSION, "model": path, "names": names, "templates": list(templates)})
    cache = default_cache_dir() if cache_dir is None else cache_dir
    file = os.path.join(cache, f"emb-{key}.npz") if cache else ""
    if file and os.path.exists(file):
        with np.load(file) as f:
            return f["embeddings"]
    model = pretrained if pretrained is not None else _text_model(path)
    if model.modality != "text" or model.tokenizer is None:
        raise ValueError(f"label_embeddings: {path} is a {model.modality} model; need a text one")
    texts, spans = [], []
    for name in names:
        for t in templates:
            text, span = prompt(t, name)
            texts.append(text)
            spans.append(span)
    enc = model.tokenizer(texts, padding=True, return_offsets_mapping=True, return_tensors="np")
    mask = name_token_mask(np.asarray(enc["offset_mapping"]), np.asarray(spans))
    empty = np.flatnonzero(mask.sum(1) == 0)
    if len(empty):
        raise ValueError(f"label_embeddings: no token covers the class name in {texts[empty[0]]!r}")
    ids = np.asarray(enc["input_ids"], np.int32)
    att = np.asarray(enc["attention_mask"], np.int32)
    n = len(texts)
    pad = -n % batch_size
    ids, att, mask = (np.concatenate([a, np.repeat(a[:1], pad, 0)]) for a in (ids, att, mask))

    @jax.jit
    def embed(params, ids, att, mask):
        hidden = model.apply(params, input_ids=ids, attention_mask=att)
        m = mask.astype(hidden.dtype)[..., None]
        v = (hidden * m).sum(1) / m.sum(1)
        return v / jnp.linalg.norm(v, axis=-1, keepdims=True)

    out = [
        np.asarray(embed(model.params, *(a[i : i + batch_size] for a in (ids, att, mask))))
        for i in range(0, len(ids), batch_size)
    ]
    emb = np.concatenate(out)[:n].reshape(len(names), len(templates), -1).astype(np.float32)
    if file:
        os.makedirs(cache, exist_ok=True)
        tmp = f"{file}.{os.getpid()}.tmp.npz"
        np.savez(tmp, embeddings=emb, names=np.asarray(names), templates=np.asarray(templates))
        os.replace(tmp, file)  # atomic: concurrent runs never read a half-written file
    return emb


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


# --- stage 2: the guided loss ---------------------------------------------------------------------


def lsg_loss(
    gcn_params: dict[str, Array],
    text: TextGraph,
    h: Array,
    labels: Array,
    *,
    align_rownorm: bool = False,
    dense_nodes: int = 2048,
) -> tuple[Array, Array, Array]:
    """Per-image-node LSG losses ``(align [M], reg [M], z [M, C])`` for features ``h [M, D]``.

    The image nodes are attached to the frozen text graph by ``labels`` (:func:`augmented_graph`),
    the GCN runs on ``[X_text; h]`` with ``stop_gradient`` on its params (gradients flow through
    it into ``h``); for the image rows, ``g = H1`` and ``z = Z``. ``align = CE(z, label)`` (raw
    ``z`` as the reference; ``align_rownorm`` uses stage 1's row-normalised logits) and
    ``reg = ‖h/‖h‖ − sg(g/‖g‖)‖₂`` (an unsquared distance). Callers weight and average them.
    Graphs of at most ``dense_nodes`` nodes propagate with a dense ``Â`` (one matmul), larger ones
    by segment_sum on the GraphsTuple; the two agree (tested).
    """
    n = len(text.x)
    labels = labels.astype(jnp.int32)
    if n + labels.shape[0] <= dense_nodes:
        graph = augmented_dense(text, labels)
    else:
        graph = augmented_graph(text, labels)
    frozen = jax.lax.stop_gradient(gcn_params)
    x = jnp.concatenate([jnp.asarray(text.x, h.dtype), h])
    h1, z = gnn.gcn_apply(frozen, graph, x)
    g, z = h1[n:], z[n:]
    if align_rownorm:
        z_ce = z / jnp.maximum(jnp.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    else:
        z_ce = z
    align = optax.softmax_cross_entropy_with_integer_labels(z_ce, labels.astype(jnp.int32))

    def unit(v):
        return v / jnp.maximum(jnp.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    reg = jnp.linalg.norm(unit(h) - jax.lax.stop_gradient(unit(g)), axis=1)
    return align, reg, z


def augment(key: Array, x: Array, *, shift: float = 0.125, noise: float = 0.05) -> Array:
    """One random view of a batch, by input rank (static shapes, per-example randomness).

    ``[B, C, L]`` signals: a random shift of up to ``shift·L`` samples (zero fill) and Gaussian
    noise of ``noise`` × the example's std. ``[B, C, H, W]`` images: a random crop of the image
    reflect-padded by ``shift·H``/``shift·W`` (a random translation), a horizontal flip with
    probability ½, the same noise. ``[B, T, C, H, W]`` videos: the image transform with one crop
    and flip per clip (every frame moves alike).
    """
    if x.ndim == 5:
        b, t, c, hh, ww = x.shape
        return augment(key, x.reshape(b, t * c, hh, ww), shift=shift, noise=noise).reshape(x.shape)
    b = x.shape[0]
    k_shift, k_flip, k_noise = jax.random.split(key, 3)
    if x.ndim == 3:
        s = int(round(shift * x.shape[2]))
        if s:
            padded = jnp.pad(x, ((0, 0), (0, 0), (s, s)))
            start = jax.random.randint(k_shift, (b,), 0, 2 * s + 1)
            x = jax.vmap(lambda r, o: jax.lax.dynamic_slice_in_dim(r, o, x.shape[2], 1))(
                padded, start
            )
    elif x.ndim == 4:
        sh, sw = int(round(shift * x.shape[2])), int(round(shift * x.shape[3]))
        padded = jnp.pad(x, ((0, 0), (0, 0), (sh, sh), (sw, sw)), mode="reflect")
        starts = jax.random.randint(k_shift, (b, 2), 0, jnp.asarray([2 * sh + 1, 2 * sw + 1]))
        x = jax.vmap(
            lambda r, o: jax.lax.dynamic_slice(r, (0, o[0], o[1]), (x.shape[1], *x.shape[2:]))
        )(padded, starts)
        flip = jax.random.bernoulli(k_flip, 0.5, (b, 1, 1, 1))
        x = jnp.where(flip, x[..., ::-1], x)
    else:
        raise ValueError(
            f"augment: expected [B, C, L], [B, C, H, W] or [B, T, C, H, W] inputs, got {x.shape}"
        )
    if noise:
        std = x.reshape(b, -1).std(1).reshape((b,) + (1,) * (x.ndim - 1))
        x = x + noise * std * jax.random.normal(k_noise, x.shape, x.dtype)
    return x


def pooled_features(head: nnx.Module, tokens: Array) -> Array:
    """The feature vector the head's classifier reads: a head's ``pool`` method, or PooledHead's
    mean over the tokens after its skipped (class) tokens."""
    if hasattr(head, "pool"):
        return head.pool(tokens)
    if isinstance(head, heads.PooledHead):
        return heads.masked_mean(tokens[:, head.skip_tokens :], None)
    raise ValueError(
        f"LSG needs a pooled classification head (PooledHead or one with a `pool` method); the "
        f"model has {type(head).__name__}"
    )


# --- stage kind "lsg" -----------------------------------------------------------------------------


def _text_dim(cfg: Any, ctx: Context) -> int:
    path = _resolve_text_model(cfg.get("lsg_text_model", ""))
    if ctx.pretrained.path == path:
        return int(ctx.pretrained.config.hidden_size)
    return int(read_config(path)[2].hidden_size)


def init_params(name: str, cfg: Any, ctx: Context, key: Array) -> dict[str, Any]:
    """The ``lsg_proj`` group: Linear(pooled feature → label-embedding width D), PyTorch init.

    A parameter group of its own (not part of the model), so the trainer optimises it when the
    stage lists ``lsg_proj`` in ``trainable``; the evaluation path never reads it.
    """
    del name
    f = ctx.pretrained.dims[1]
    d = _text_dim(cfg, ctx)
    bound = 1.0 / np.sqrt(f)
    kw, kb = jax.random.split(key)
    return {
        PROJ_GROUP: {
            "kernel": jax.random.uniform(kw, (f, d), jnp.float32, -bound, bound),
            "bias": jax.random.uniform(kb, (d,), jnp.float32, -bound, bound),
        }
    }


def prepare_graph(cfg: Any, ctx: Context, verbose: bool = True) -> tuple[TextGraph, dict, dict]:
    """Label embeddings → stage-1 GCN (cached by its inputs) → the frozen text graph.

    Returns ``(text graph, GCN params, stage-1 meta)``. The GCN is trained once per (embeddings,
    K, edge ratio, steps, lr, seed) and restored from ``<cache>/gcn-<hash>`` afterwards.
    """
    names = tuple(ctx.task.class_names)
    c = ctx.task.spec.num_outputs
    if not names:
        raise ValueError(
            f"LSG: task {ctx.task.name!r} has no class names (Task.class_names); the label graph "
            "is built from them"
        )
    if len(names) != c:
        raise ValueError(
            f"LSG: task {ctx.task.name!r} has {len(names)} class names for {c} classes"
        )
    path = _resolve_text_model(cfg.get("lsg_text_model", ""))
    cache = cfg.get("lsg_cache_dir", "") or default_cache_dir()
    text_model = ctx.pretrained if ctx.pretrained.path == path else None
    emb = label_embeddings(names, model_path=path, pretrained=text_model, cache_dir=cache)
    k, ratio = int(cfg.lsg_prompts), float(cfg.lsg_edge_ratio)
    steps, lr = int(cfg.lsg_gcn_steps), float(cfg.lsg_gcn_lr)
    key = _digest(
        {
            "emb": hashlib.sha256(emb.tobytes()).hexdigest(),
            "k": k,
            "r": ratio,
            "steps": steps,
            "lr": lr,
            "seed": int(ctx.config.seed),
            "v": CACHE_VERSION,
        }
    )
    gcn_dir = os.path.join(cache, f"gcn-{key}")
    if os.path.isdir(gcn_dir):
        params, meta = load_gcn(gcn_dir)
    else:
        res = train_gcn(
            emb,
            prompts=k,
            edge_ratio=ratio,
            steps=steps,
            lr=lr,
            seed=int(ctx.config.seed),
            checkpoint_dir=gcn_dir,
        )
        params, meta = res.params, {"best_step": res.best_step, "val_acc": res.val_acc}
        if verbose and jax.process_index() == 0:
            print(
                f"[lsg] stage 1: GCN on {c}×{k} prompt nodes, val prompt acc "
                f"{res.val_acc:.3f} at step {res.best_step} ({res.seconds:.1f}s) → {gcn_dir}"
            )
    return TextGraph.build(emb, k, ratio), params, {**meta, "dir": gcn_dir}


def lsg_stage(name: str, cfg: Any, ctx: Context) -> Stage:
    """Stage 2 of LSG (TL, or SSL when ``lsg_cu`` > 0) on the project's model + ``lsg_proj``.

    Per step: two augmented views of the labelled batch (and, in SSL, of an unlabelled batch)
    go through the model in one forward; the task loss is the CE of both labelled views; the
    pooled features, projected by ``lsg_proj``, become image nodes of the frozen label graph;
    the graph losses of :func:`lsg_loss` are added with ``lsg_cg`` / ``lsg_cc``, unlabelled nodes
    (argmax pseudo-labels of their first view under the *current* params, stop-gradient) with a
    further factor ``lsg_cu`` (raised linearly from 0 over the first ``lsg_cu_rampup`` of the stage
    when > 0: early pseudo-labels of a fresh head are near-constant, and with the reference's
    immediate full weight they can collapse a small model). ``trainable`` must include
    ``lsg_proj``. With ``lsg_cg = lsg_cc =
    0`` the stage is augmented CE (the ablation that isolates the graph terms).
    """
    if PROJ_GROUP not in cfg.trainable:
        raise ValueError(
            f"stages.{name}.trainable={list(cfg.trainable)}: an lsg stage trains its projection, "
            f"add {PROJ_GROUP!r}"
        )
    if not ctx.task.classes or ctx.task.spec.output != "classification":
        raise ValueError(f"stages.{name}: LSG needs a classification task, got {ctx.task.name!r}")
    text, gcn_params, _ = prepare_graph(cfg, ctx)
    gcn_const = jax.tree.map(np.asarray, gcn_params)  # numpy: embedded as jit constants
    cg, cc, cu = float(cfg.lsg_cg), float(cfg.lsg_cc), float(cfg.lsg_cu)
    rownorm = bool(cfg.lsg_align_rownorm)
    dense_nodes = int(cfg.get("lsg_dense_nodes", 2048))
    # Ramps and warm-ups in stage steps (the trainer resolves the stage length into cfg.steps).
    steps = int(cfg.steps)
    if steps <= 0:
        per_epoch = max(len(ctx.splits["train"]["x"]) // int(ctx.config.data.batch_size), 1)
        steps = int(np.ceil(float(cfg.epochs) * per_epoch))
    ramp = float(cfg.get("lsg_cu_rampup", 0.0)) * steps
    u_start = float(cfg.get("lsg_u_warmup", 0.0)) * steps
    graph_ramp = float(cfg.get("lsg_graph_rampup", 0.0)) * steps
    threshold = float(cfg.get("lsg_threshold", 0.0))
    normalize_h = bool(cfg.get("lsg_normalize_h", False))
    separate = bool(cfg.get("lsg_separate_graphs", True))
    aug = dict(shift=float(cfg.lsg_shift), noise=float(cfg.lsg_noise))
    task_loss = losses.get(ctx.task.loss)
    datasets = {"": ctx.splits["train"]}
    ssl = cu > 0
    if ssl:
        unl = ctx.splits.get("unlabeled")
        if unl is None or len(unl["x"]) == 0:
            raise ValueError(
                f"stages.{name}.lsg_cu={cu} (SSL) needs unlabelled data: set data.label_ratio < 1"
            )
        datasets["u_"] = {"x": unl["x"], "y": unl["y"]}  # u_y: monitoring only (pseudo_acc)

    def loss_fn(params, batch, rng, step):
        model = crossmodal.merge(ctx.graphdef, params)  # model groups, in the compute dtype
        x, y = batch["x"], batch["y"].astype(jnp.int32)
        b = x.shape[0]
        keys = jax.random.split(rng, 4)
        views = [augment(keys[0], x, **aug), augment(keys[1], x, **aug)]
        if ssl:
            xu = batch["u_x"]
            views += [augment(keys[2], xu, **aug), augment(keys[3], xu, **aug)]
        tokens = model.features(jnp.concatenate(views))
        logits = model.outputs(tokens)
        y2 = jnp.concatenate([y, y])
        ce = task_loss(logits[: 2 * b], y2, None, **ctx.task.loss_kwargs)
        metrics = {"task_loss": ce}
        if cg == 0 and cc == 0:
            return ce, metrics
        proj = params[PROJ_GROUP]
        pooled = pooled_features(model.head, tokens).astype(proj["kernel"].dtype)
        h = pooled @ proj["kernel"] + proj["bias"]
        if normalize_h:
            h = h / jnp.maximum(jnp.linalg.norm(h, axis=1, keepdims=True), 1e-12)
        metrics["h_norm"] = jnp.linalg.norm(h[: 2 * b], axis=1).mean()

        def graph_losses(h_nodes, node_labels):
            return lsg_loss(
                gcn_const,
                text,
                h_nodes,
                node_labels,
                align_rownorm=rownorm,
                dense_nodes=dense_nodes,
            )

        w_graph = jnp.minimum(1.0, step / graph_ramp) if graph_ramp > 0 else 1.0
        if ssl:
            bu = batch["u_x"].shape[0]
            probs = jax.nn.softmax(jax.lax.stop_gradient(logits[2 * b : 2 * b + bu]), axis=1)
            pseudo, conf = jnp.argmax(probs, axis=1), jnp.max(probs, axis=1)
            keep = (conf >= threshold).astype(h.dtype)  # threshold 0: every node (reference)
            metrics["pseudo_acc"] = (pseudo == batch["u_y"]).mean()
            metrics["pseudo_kept"] = keep.mean()
            if separate:  # the reference's two graph forwards: labelled, then unlabelled nodes
                align, reg, z = graph_losses(h[: 2 * b], y2)
                align_u, reg_u, _ = graph_losses(h[2 * b :], jnp.concatenate([pseudo, pseudo]))
            else:
                align_all, reg_all, z_all = graph_losses(h, jnp.concatenate([y2, pseudo, pseudo]))
                align, reg, z = align_all[: 2 * b], reg_all[: 2 * b], z_all[: 2 * b]
                align_u, reg_u = align_all[2 * b :], reg_all[2 * b :]
        else:
            align, reg, z = graph_losses(h, y2)
        graph = w_graph * (cg * align.mean() + cc * reg.mean())
        metrics.update(
            align_loss=align.mean(), reg_loss=reg.mean(), graph_acc=(z.argmax(1) == y2).mean()
        )
        if ssl:
            w_u = cu * jnp.minimum(1.0, step / ramp) if ramp > 0 else cu
            w_u = jnp.where(step >= u_start, w_u, 0.0) * w_graph  # labelled CE warm-up first
            k2 = jnp.concatenate([keep, keep])
            mean_u = lambda v: (v * k2).sum() / jnp.maximum(k2.sum(), 1.0)  # noqa: E731
            graph = graph + w_u * (cg * mean_u(align_u) + cc * mean_u(reg_u))
            metrics["unlabeled_align"] = mean_u(align_u)
        return ce + graph, metrics

    return Stage(
        name=name,
        trainable=tuple(cfg.trainable),
        datasets=datasets,
        loss_fn=jax.checkpoint(loss_fn) if cfg.get("remat", False) else loss_fn,
        evaluate=bool(cfg.get("evaluate", True)),
        uses_step=True,
    )


# LSG's stage keys.
STAGE_DEFAULTS = dict(
    # LSG (kind="lsg", spec/lsg.md): label embeddings of the task's class names from
    # lsg_text_model ("" = the shipped MiniLM), cached with the stage-1 GCN in lsg_cache_dir
    # ("" = $XMODAL_CACHE/lsg or ~/.cache/xmodal_jax/lsg); lsg_prompts graph nodes per class
    # (the next as many validate the GCN), inter-class edges at the top lsg_edge_ratio.
    # Loss CE + lsg_cg·align + lsg_cc·reg (+ lsg_cu × the same on pseudo-labelled unlabelled
    # data: SSL when > 0). Views: shift by ≤ lsg_shift of the length/size, noise lsg_noise·std.
    lsg_text_model="",
    lsg_cache_dir="",
    lsg_prompts=20,
    lsg_edge_ratio=0.003,
    lsg_gcn_steps=5005,
    lsg_gcn_lr=0.01,
    lsg_cg=1.0,
    lsg_cc=8.0,
    lsg_cu=0.0,
    lsg_align_rownorm=False,  # align on stage 1's row-normalised logits (reference: raw)
    lsg_shift=0.125,
    lsg_noise=0.05,
    lsg_cu_rampup=0.0,  # cu rises linearly from 0 over this fraction of the stage (0 = off)
    # Departures from the reference that keep LSG from collapsing (README, architecture
    # notes): SSL pseudo-labels count only at softmax confidence ≥ lsg_threshold (0 = every
    # argmax, as the reference), unlabelled terms start after lsg_u_warmup of the stage
    # (labelled CE first; 0 = from the start, as the reference), the graph weights rise from
    # 0 over lsg_graph_rampup of the stage, and lsg_normalize_h feeds unit-norm h to the
    # GCN (the text nodes are unit-norm). Defaults measured on digits, 15 % labels.
    lsg_threshold=0.95,
    lsg_u_warmup=0.25,
    lsg_graph_rampup=0.0,
    lsg_normalize_h=False,
    # Labelled and unlabelled image nodes in separate graph forwards (the reference's
    # main_lsg.py runs two), or one graph holding both.
    lsg_separate_graphs=True,
    lsg_dense_nodes=2048,  # augmented graphs up to this many nodes run dense (Â matmul)
)

METHOD = Method(
    name="lsg",
    stage_kinds={"lsg": lsg_stage},
    defaults=STAGE_DEFAULTS,
    ranges=(
        ("lsg_threshold", 0.0, 1.0, True),
        ("lsg_u_warmup", 0.0, 1.0, True),
        ("lsg_graph_rampup", 0.0, 1.0, True),
        ("lsg_cu_rampup", 0.0, 1.0, True),
    ),
    groups=(PROJ_GROUP,),
    param_inits={"lsg": init_params},
)
