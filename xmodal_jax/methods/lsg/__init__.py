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

from xmodal_jax.methods.lsg.graph import (  # noqa: F401
    GCNResult,
    TextGraph,
    _gcn_accuracy,
    _gcn_run,
    _gcn_tx,
    _rownorm_ce,
    augmented_adjacency,
    augmented_dense,
    augmented_graph,
    build_label_graph,
    label_adjacency,
    load_gcn,
    save_gcn,
    train_gcn,
)
from xmodal_jax.methods.lsg.prompts import (  # noqa: F401
    CACHE_VERSION,
    TEMPLATES,
    _digest,
    _resolve_text_model,
    _text_model,
    clean_class_name,
    default_cache_dir,
    label_embeddings,
    name_token_mask,
    prompt,
)
from xmodal_jax.methods.lsg.stage import (  # noqa: F401
    METHOD,
    PROJ_GROUP,
    STAGE_DEFAULTS,
    _text_dim,
    augment,
    init_params,
    lsg_loss,
    lsg_stage,
    prepare_graph,
)
