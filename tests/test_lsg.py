"""LSG: label graph, GCN paths, class-name token pooling, stage 1, stage 2 (trainer), splits."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xmodal_jax.data import pipeline
from xmodal_jax.methods import lsg
from xmodal_jax.models import gnn

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _clustered(c=6, k=20, d=16, seed=0, spread=0.6):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((c, d))
    x = np.repeat(centres, k, 0) + spread * rng.standard_normal((c * k, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.repeat(np.arange(c), k)


# --- graph ----------------------------------------------------------------------------------------


def test_label_graph_structure_and_normalisation():
    x, y = _clustered()
    n, r = len(x), 0.01
    a = lsg.label_adjacency(x, y, r)
    np.testing.assert_array_equal(a, a.T)
    same = y[:, None] == y[None, :]
    s = x @ x.T
    assert (a[same] != 0).all(), "intra-class blocks (self loops included) must be complete"
    np.testing.assert_allclose(a[a != 0], s[a != 0], rtol=1e-5)  # weights are the cosines
    inter = int(((a != 0) & ~same).sum())
    assert abs(inter - r * n * n) <= 2, (inter, r * n * n)  # top-r of the N² entries, up to ties
    g = lsg.build_label_graph(x, y, r)
    dense = np.zeros((n, n), np.float32)
    dense[np.asarray(g.receivers), np.asarray(g.senders)] = np.asarray(g.edges)
    d = a.sum(1)
    np.testing.assert_allclose(dense, a / np.sqrt(d[:, None] * d[None, :]), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(gnn.dense_normalize(jnp.asarray(a)), dense, rtol=1e-5, atol=1e-7)


def test_zero_degree_is_an_error():
    a = np.eye(3, dtype=np.float32)
    a[2, 2] = 0
    with pytest.raises(ValueError, match="degree"):
        gnn.graph_from_adjacency(a)


def test_segment_sum_gcn_equals_dense_gcn():
    x, y = _clustered()
    g = lsg.build_label_graph(x, y, 0.01)
    dense = gnn.dense_normalize(jnp.asarray(lsg.label_adjacency(x, y, 0.01)))
    params = gnn.gcn_init(jax.random.key(0), x.shape[1], x.shape[1], 6)
    h_s, z_s = gnn.gcn_apply(params, g, jnp.asarray(x))
    h_d, z_d = gnn.gcn_apply(params, dense, jnp.asarray(x))
    np.testing.assert_allclose(h_s, h_d, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z_s, z_d, rtol=1e-5, atol=1e-6)
    shapes = jax.eval_shape(lambda: gnn.gcn_init(jax.random.key(0), 1024, 1024, 100))
    assert gnn.num_params(shapes) == 1_150_976


def test_augmented_graph_matches_dense_reference():
    x, y = _clustered(c=4, k=5)
    emb = np.stack([x[y == c] for c in range(4)])  # [C, K, D]
    text = lsg.TextGraph.build(emb, 5, 0.02)
    labels = np.array([1, 3, 1, 0, 3, 1])
    a_text = lsg.label_adjacency(text.x, np.repeat(np.arange(4), 5), 0.02)
    ref = lsg.augmented_adjacency(a_text, labels, 5)
    np.testing.assert_array_equal(ref[:20, :20], a_text)  # text block = the stage-1 A
    assert (ref[20:, :20].sum(1) == 5).all()  # each image → exactly K prompts of its label
    g = jax.jit(lsg.augmented_graph, static_argnums=0)(text, jnp.asarray(labels))
    got = np.zeros_like(ref)
    np.add.at(got, (np.asarray(g.receivers), np.asarray(g.senders)), np.asarray(g.edges))
    d = ref.sum(1)
    np.testing.assert_allclose(got, ref / np.sqrt(d[:, None] * d[None, :]), rtol=1e-5, atol=1e-7)


def test_stage2_dense_and_sparse_graph_losses_agree():
    x, y = _clustered(c=4, k=5)
    emb = np.stack([x[y == c] for c in range(4)])
    text = lsg.TextGraph.build(emb, 5, 0.02)
    params = gnn.gcn_init(jax.random.key(0), x.shape[1], x.shape[1], 4)
    h = jax.random.normal(jax.random.key(1), (6, x.shape[1]))
    labels = jnp.array([1, 3, 1, 0, 3, 1])
    dense = lsg.lsg_loss(params, text, h, labels, dense_nodes=10**6)
    sparse = lsg.lsg_loss(params, text, h, labels, dense_nodes=0)
    for a, b in zip(dense, sparse, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_jraph_utilities_run_inside_the_compat_shim():
    import jraph

    g = jraph.GraphsTuple(
        nodes=jnp.ones((3, 2)),
        edges=jnp.ones((2, 1)),
        senders=jnp.array([0, 1]),
        receivers=jnp.array([1, 2]),
        n_node=jnp.array([3]),
        n_edge=jnp.array([2]),
        globals=jnp.ones((1, 1)),
    )
    padded = jraph.pad_with_graphs(g, n_node=5, n_edge=4, n_graph=2)
    assert "tree_map" not in vars(jax)
    with gnn.jraph_tree_compat():
        out = jraph.zero_out_padding(padded)
    assert "tree_map" not in vars(jax) and "tree_leaves" not in vars(jax)  # nothing leaks
    np.testing.assert_array_equal(out.nodes[3:], 0)


# --- label embeddings -----------------------------------------------------------------------------


def test_prompt_rules_and_names():
    assert lsg.prompt("a photo of a {}.", "cat")[0] == "This is a photo of a cat."
    assert lsg.prompt("the toy {}.", "cat")[0] == "This is the toy cat."
    assert lsg.prompt("itap of a {}.", "cat")[0] == "itap of a cat."
    text, (s, e) = lsg.prompt("graffiti of the {}.", "sea lion")
    assert text[s:e] == "sea lion"
    assert lsg.clean_class_name("001.Black_footed_Albatross") == "Black footed Albatross"
    assert len(lsg.TEMPLATES) == 80 and len(set(lsg.TEMPLATES)) == 80


def test_name_tokens_are_exactly_the_class_name(minilm):
    tok = minilm.tokenizer
    name = "Black footed Albatross hummingbird"  # several words, several word pieces
    text, span = lsg.prompt("a photo of the {}.", name)
    enc = tok([text], return_offsets_mapping=True, return_tensors="np")
    mask = lsg.name_token_mask(np.asarray(enc["offset_mapping"]), np.asarray([span]))[0]
    picked = tok.convert_ids_to_tokens(enc["input_ids"][0][mask])
    assert picked == tok.tokenize(name), picked
    assert len(picked) > 4


@pytest.mark.parametrize("trim_offsets", [True, False])
def test_name_tokens_with_a_byte_level_bpe_tokenizer(trim_offsets):
    """RoBERTa-style byte-level BPE: word tokens carry the preceding space ("Ġsea").

    With ``trim_offsets=False`` their offsets include that space, so a token-counting rule or a
    containment test would be off by one; the overlap rule picks exactly the name's tokens.
    """
    from tokenizers import ByteLevelBPETokenizer, processors
    from transformers import PreTrainedTokenizerFast

    corpus = [lsg.prompt(t, n)[0] for t in lsg.TEMPLATES for n in ("sea lion", "cat", "tabby")]
    bpe = ByteLevelBPETokenizer(trim_offsets=trim_offsets)
    bpe.train_from_iterator(corpus, vocab_size=300, min_frequency=1, special_tokens=["<s>", "</s>"])
    bpe.post_processor = processors.RobertaProcessing(
        ("</s>", bpe.token_to_id("</s>")),
        ("<s>", bpe.token_to_id("<s>")),
        trim_offsets=trim_offsets,
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>"
    )
    for name in ("sea lion", "tabby cat lion"):
        text, span = lsg.prompt("a photo of the {}.", name)
        enc = tok([text], return_offsets_mapping=True, return_tensors="np")
        offsets = np.asarray(enc["offset_mapping"])
        mask = lsg.name_token_mask(offsets, np.asarray([span]))[0]
        picked = tok.convert_ids_to_tokens(enc["input_ids"][0][mask])
        # The name's own tokens, as the tokenizer splits " name" in context.
        assert tok.convert_tokens_to_string(picked).strip() == name, picked
        assert picked[0].startswith("Ġ")  # the space-absorbing token is kept, "the" is not
        if not trim_offsets:
            assert offsets[0][mask][0][0] == span[0] - 1  # its offset starts at the space


def test_label_embeddings_shape_norm_and_cache(minilm, tmp_path):
    emb = lsg.label_embeddings(["sea lion", "cat"], pretrained=minilm, cache_dir=str(tmp_path))
    assert emb.shape == (2, 80, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1.0, rtol=1e-5)
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].startswith("emb-")
    again = lsg.label_embeddings(["sea lion", "cat"], pretrained=minilm, cache_dir=str(tmp_path))
    np.testing.assert_array_equal(emb, again)
    # One prompt by hand: the mean of the name's token states, normalised.
    text, span = lsg.prompt(lsg.TEMPLATES[0], "sea lion")
    enc = minilm.tokenizer([text], return_offsets_mapping=True, return_tensors="np")
    mask = lsg.name_token_mask(np.asarray(enc["offset_mapping"]), np.asarray([span]))[0]
    hidden = np.asarray(minilm.apply(minilm.params, input_ids=jnp.asarray(enc["input_ids"])))[0]
    v = hidden[mask].mean(0)
    np.testing.assert_allclose(emb[0, 0], v / np.linalg.norm(v), atol=2e-5)


# --- stage 1 --------------------------------------------------------------------------------------


def test_stage1_separates_digit_names_and_saves_best(minilm, tmp_path):
    emb = lsg.label_embeddings(DIGITS, pretrained=minilm, cache_dir=str(tmp_path))
    res = lsg.train_gcn(emb, steps=300, eval_every=100, checkpoint_dir=str(tmp_path / "gcn"))
    print(f"\nstage-1 validation-prompt accuracy: {res.val_acc:.3f} at step {res.best_step}")
    assert res.val_acc >= 0.95
    assert [h[0] for h in res.history] == [100, 200, 300]
    params, meta = lsg.load_gcn(str(tmp_path / "gcn"))
    assert meta["best_step"] == res.best_step
    for k in ("w1", "w2"):
        np.testing.assert_array_equal(params[k], res.params[k])


# --- stage 2 --------------------------------------------------------------------------------------


def test_lsg_loss_gradients():
    x, y = _clustered(c=3, k=4, d=8)
    emb = np.stack([x[y == c] for c in range(3)])
    text = lsg.TextGraph.build(emb, 4, 0.05)
    params = gnn.gcn_init(jax.random.key(1), 8, 8, 3)
    h = jax.random.normal(jax.random.key(2), (5, 8))
    labels = jnp.array([0, 1, 2, 1, 0])

    def total(p, h):
        align, reg, _ = lsg.lsg_loss(p, text, h, labels)
        return align.mean() + reg.mean()

    gp, gh = jax.grad(total, argnums=(0, 1))(params, h)
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree.leaves(gp))  # GCN frozen
    assert float(jnp.abs(gh).max()) > 0
    # L_r = 0 when h ∝ g: feed g back as h (g is recomputed from h, so take a fixed point-free
    # check: reg with h replaced by 3·g computed on the same graph must vanish against that g).
    n = len(text.x)
    g = gnn.gcn_apply(params, lsg.augmented_graph(text, labels), jnp.concatenate([text.x, h]))
    g = g[0][n:]
    unit = lambda v: v / jnp.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(jnp.linalg.norm(unit(3.0 * g) - unit(g), axis=1), 0.0, atol=1e-6)


def test_augment_views_are_shape_preserving_and_random():
    x = jnp.arange(2 * 3 * 16, dtype=jnp.float32).reshape(2, 3, 16)
    a, b = lsg.augment(jax.random.key(0), x), lsg.augment(jax.random.key(1), x)
    assert a.shape == x.shape and not np.allclose(a, b)
    img = jax.random.normal(jax.random.key(0), (2, 3, 8, 8))
    assert lsg.augment(jax.random.key(0), img).shape == img.shape
    video = jax.random.normal(jax.random.key(0), (2, 4, 3, 8, 8))
    assert lsg.augment(jax.random.key(0), video).shape == video.shape


@pytest.fixture(scope="module")
def lsg_cache(tmp_path_factory):
    """One label-embedding / GCN cache for the module's trainer runs (computed once)."""
    return str(tmp_path_factory.mktemp("lsg_cache"))


def _lsg_config(tiny_config, cache, **stage):
    cfg = tiny_config("steps=12")
    cfg.task = dict(
        name="digits", layout="8x8", target_seq_len=8, train_limit=160, test_fraction=0.1
    )
    cfg.data.label_ratio = 0.5
    cfg.data.val_size = 16
    cfg.mesh.num_devices = 1
    cfg.log_every = 1
    cfg.eval_every = 6
    from xmodal_jax import config_lib

    config_lib.add_stage(
        cfg,
        "lsg",
        kind="lsg",
        trainable=("embedder", "body", "head", "lsg_proj"),
        steps=12,
        lr=1e-3,
        optimizer="adam",
        schedule="constant",
        lsg_cache_dir=cache,
        lsg_gcn_steps=200,
        **stage,
    )
    cfg.stage_order = "lsg"
    return cfg


def test_stage2_trains_through_the_trainer_with_a_frozen_gcn(tiny_config, lsg_cache, tmp_path):
    from xmodal_jax import train_lib

    cfg = _lsg_config(tiny_config, lsg_cache)
    run = train_lib.setup(cfg)
    assert "lsg_proj" in run.params and "unlabeled" in run.splits
    proj0 = jax.tree.map(np.asarray, run.params["lsg_proj"])
    stage = train_lib.build_stages(run)[0][0]
    assert set(stage.datasets) == {""}  # TL: the unlabelled split is never read
    # Inference is graph-free: the projection group does not change predictions.
    from xmodal_jax.models import crossmodal

    x = run.splits["val"]["x"][:4]
    without = {g: p for g, p in run.params.items() if g != "lsg_proj"}
    np.testing.assert_array_equal(
        crossmodal.apply(run.graphdef, run.params, x), crossmodal.apply(run.graphdef, without, x)
    )
    train_lib.train(cfg, str(tmp_path / "run"), verbose=False)
    recs = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    train = [r for r in recs if r["split"] == "train"]
    assert {"align_loss", "reg_loss", "graph_acc"} <= set(train[0])
    first, last = np.mean([r["loss"] for r in train[:3]]), np.mean([r["loss"] for r in train[-3:]])
    print(f"\nstage-2 loss: first 3 steps {first:.3f} → last 3 steps {last:.3f}")
    assert last < first
    # The GCN: the one stage 1 saved is the one the stage used, unchanged by stage 2.
    _, used, meta = lsg.prepare_graph(cfg.stages.lsg, run.ctx, verbose=False)
    assert os.path.dirname(meta["dir"]) == lsg_cache
    saved, _ = lsg.load_gcn(meta["dir"])
    for k in saved:
        np.testing.assert_array_equal(saved[k], used[k])
    # The projection is trained (it is a parameter group of the train state).
    from xmodal_jax import checkpoint

    ck = checkpoint.Checkpointer(str(tmp_path / "run"))
    meta = ck.read_meta("latest")
    assert meta["stage"] == "lsg"
    ck.close()
    from tests.test_train import saved_params

    after = saved_params(tmp_path / "run")
    assert not np.allclose(after["lsg_proj"]["kernel"], proj0["kernel"])


def test_ssl_stage_reads_unlabelled_batches_on_8_devices(tiny_config, lsg_cache, tmp_path):
    from xmodal_jax import train_lib

    cfg = _lsg_config(tiny_config, lsg_cache, lsg_cu=1.0)
    cfg.stages.lsg.steps = 4
    cfg.mesh.num_devices = 8
    cfg.mesh.data = 8
    res = train_lib.train(cfg, str(tmp_path / "ssl"), verbose=False)
    recs = [json.loads(line) for line in open(tmp_path / "ssl" / "metrics.jsonl")]
    train = [r for r in recs if r["split"] == "train"]
    assert "pseudo_acc" in train[0] and "unlabeled_align" in train[0]
    assert np.isfinite(res["test_last"])


def test_ssl_without_unlabelled_data_is_an_error(tiny_config, lsg_cache):
    from xmodal_jax import train_lib

    cfg = _lsg_config(tiny_config, lsg_cache, lsg_cu=1.0)
    cfg.data.label_ratio = 1.0
    with pytest.raises(ValueError, match="label_ratio"):
        train_lib.build_stages(train_lib.setup(cfg))


# --- label-ratio splits ---------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.15, 0.3, 0.5, 1.0])
def test_label_subset_per_class_counts(ratio):
    y = np.repeat(np.arange(4), [40, 21, 7, 3])
    arrays = {"x": np.arange(len(y))[:, None].astype(np.float32), "y": y}
    lab, unl = pipeline.label_subset(arrays, ratio, seed=3)
    for c, n in zip(range(4), (40, 21, 7, 3), strict=True):
        want = min(n, max(1, int(np.floor(ratio * n + 0.5))))
        assert (lab["y"] == c).sum() == want
        assert (unl["y"] == c).sum() == n - want
    assert not set(lab["x"][:, 0]) & set(unl["x"][:, 0])
    again, _ = pipeline.label_subset(arrays, ratio, seed=3)
    np.testing.assert_array_equal(again["x"], lab["x"])  # seeded
    with pytest.raises(ValueError, match="label ratio"):
        pipeline.label_subset(arrays, 0.0, seed=0)


def test_stage2_on_a_vision_body(tiny_config, tiny_swin_path, lsg_cache, tmp_path):
    """The same stage on a 2D model (tiny Swin on digits as 1×8×8 images): crop/flip views."""
    from xmodal_jax import train_lib

    cfg = _lsg_config(tiny_config, lsg_cache)
    cfg.body.path = tiny_swin_path
    cfg.task.layout = "1x8x8"
    cfg.stages.lsg.steps = 3
    res = train_lib.train(cfg, str(tmp_path / "swin"), verbose=False)
    assert np.isfinite(res["test_last"])


def _stage_loss(tiny_config, lsg_cache, step, **stage):
    """One SSL loss evaluation of the lsg stage on a fixed batch (no training)."""
    from xmodal_jax import train_lib

    cfg = _lsg_config(tiny_config, lsg_cache, **{"lsg_cu": 1.0, **stage})
    run = train_lib.setup(cfg)
    ((st, _, _),) = train_lib.build_stages(run)
    batch = next(train_lib.StageBatches(st, int(cfg.data.batch_size), 0, 0, None))
    return st.loss_fn(run.params, batch, jax.random.key(0), jnp.int32(step))


def test_pseudo_label_threshold_and_unlabelled_warmup(tiny_config, lsg_cache):
    # A threshold above every confidence (a fresh head is far from 0.999) keeps no node.
    ref = dict(lsg_threshold=0.0, lsg_u_warmup=0.0)  # the reference: every argmax, from step 0
    none_kept, m = _stage_loss(tiny_config, lsg_cache, 5, **{**ref, "lsg_threshold": 0.999})
    assert float(m["pseudo_kept"]) == 0.0
    every, m_all = _stage_loss(tiny_config, lsg_cache, 5, **ref)
    assert float(m_all["pseudo_kept"]) == 1.0 and float(every) > float(none_kept)
    # Before lsg_u_warmup of the stage the unlabelled terms are off; after it, on.
    early, _ = _stage_loss(tiny_config, lsg_cache, 2, lsg_threshold=0.0, lsg_u_warmup=0.5)
    late, _ = _stage_loss(tiny_config, lsg_cache, 6, lsg_threshold=0.0, lsg_u_warmup=0.5)
    assert float(early) == pytest.approx(float(none_kept), rel=1e-6)
    assert float(late) == pytest.approx(float(every), rel=1e-6)


def test_one_graph_and_separate_graphs_differ_only_in_the_unlabelled_terms(tiny_config, lsg_cache):
    ref = dict(lsg_threshold=0.0, lsg_u_warmup=0.0)  # every pseudo-label counts from step 0
    sep, m_sep = _stage_loss(tiny_config, lsg_cache, 5, lsg_separate_graphs=True, **ref)
    one, m_one = _stage_loss(tiny_config, lsg_cache, 5, lsg_separate_graphs=False, **ref)
    # Labelled nodes see the same text prompts either way but a different normalisation once
    # unlabelled nodes share their class blocks: both are finite, and not identical.
    assert np.isfinite(float(sep)) and np.isfinite(float(one))
    assert float(m_sep["task_loss"]) == pytest.approx(float(m_one["task_loss"]), rel=1e-6)
    assert float(m_sep["unlabeled_align"]) != pytest.approx(float(m_one["unlabeled_align"]))


def test_graph_rampup_and_unit_norm_features(tiny_config, lsg_cache):
    start, m0 = _stage_loss(tiny_config, lsg_cache, 0, lsg_cu=0.0, lsg_graph_rampup=0.5)
    assert float(start) == pytest.approx(float(m0["task_loss"]), rel=1e-6)  # graph weight 0
    _, m = _stage_loss(tiny_config, lsg_cache, 5, lsg_cu=0.0, lsg_normalize_h=True)
    assert float(m["h_norm"]) == pytest.approx(1.0, rel=1e-5)
