"""ViT and Swin bodies: parity with HF PyTorch, the embeddings/encoder split, and loader errors."""

from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

from xmodal_jax.models import swin, vit
from xmodal_jax.models.pretrained import load_pretrained
from xmodal_jax.models.weights import WeightLoadError

ATOL = 1e-4


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Gives every parameter non-trivial values (HF zero-inits the Swin bias tables, ones LNs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            elif "relative_position_bias_table" in name:
                p.copy_(noise)  # large enough to matter next to the −100 mask
            else:
                p.copy_(0.1 * noise)
    return model.eval()


def _pixels(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _torch_hidden(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(pixel_values=torch.from_numpy(x)).last_hidden_state.numpy()


def _parity(pre, ref_model, x: np.ndarray, label: str) -> np.ndarray:
    ours = np.asarray(jax.jit(pre.apply)(pre.params, pixel_values=x))
    ref = _torch_hidden(ref_model, x)
    assert ours.shape == ref.shape
    err = float(np.abs(ours - ref).max())
    print(f"\n{label} parity: shape {ours.shape}, max|Δ| {err:.2e}")
    assert err <= ATOL
    return ours


def _vit_hf(**kw) -> transformers.ViTConfig:
    base = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        image_size=[12, 20],  # non-square: 3 × 5 patches
        patch_size=4,
        num_channels=3,
        attn_implementation="eager",
    )
    return transformers.ViTConfig(**{**base, **kw})


# Swin A: image 9×13 (HF pads to 10×14) → grid 5×7. Stage 0: window 3 does not divide 5×7 (pad to
# 6×9), block 1 is shifted with the mask. Odd grid → padded merging → 3×4. Stage 1: min(3, 4) ≤ 3
# clamps (shift off) and pads 4 → 6.
SWIN_A = dict(
    image_size=[9, 13],
    patch_size=2,
    num_channels=3,
    embed_dim=16,
    depths=[2, 2],
    num_heads=[2, 4],
    window_size=3,
    attn_implementation="eager",
)
# Swin B: three stages, 8×11 → 4×6 → 2×3 with window 2 (shifted windows in stages 0 and 1, clamp
# in stage 2), no q/k/v bias, tanh GELU, mlp_ratio 2, 2 channels.
SWIN_B = dict(
    image_size=[16, 22],
    patch_size=2,
    num_channels=2,
    embed_dim=8,
    depths=[2, 2, 2],
    num_heads=[1, 2, 2],
    window_size=2,
    mlp_ratio=2.0,
    qkv_bias=False,
    hidden_act="gelu_new",
    attn_implementation="eager",
)


@pytest.fixture(scope="module")
def vit_pair(tiny_hf):
    model = _randomize(transformers.ViTModel(_vit_hf()), seed=0)  # with pooler: ignored
    return model, load_pretrained(tiny_hf(model))


@pytest.fixture(scope="module")
def swin_a(tiny_hf):
    model = _randomize(transformers.SwinModel(transformers.SwinConfig(**SWIN_A)), seed=1)
    return model, load_pretrained(tiny_hf(model))


def test_vit_parity(vit_pair):
    model, pre = vit_pair
    assert pre.model_type == "vit" and pre.modality == "vision"
    assert pre.config.image_size == (12, 20) and pre.config.grid == (3, 5)
    _parity(pre, model, _pixels((2, 3, 12, 20)), "ViT")


def test_swin_parity_padding_shift_odd_merge_clamp(swin_a):
    model, pre = swin_a
    assert pre.model_type == "swin" and pre.config.grid == (5, 7)
    out = _parity(pre, model, _pixels((2, 3, 9, 13)), "Swin A")
    assert out.shape == (2, 3 * 4, 32)


def test_swin_parity_three_stages_other_input_size(tiny_hf):
    # Configured for 16×16 but fed 16×22: like HF, the grid comes from the input's size.
    cfg = transformers.SwinConfig(**{**SWIN_B, "image_size": 16})
    model = _randomize(transformers.SwinModel(cfg), seed=2)
    pre = load_pretrained(tiny_hf(model))
    out = _parity(pre, model, _pixels((2, 2, 16, 22)), "Swin B")
    assert out.shape == (2, 2 * 3, 32)


def test_swin_window_larger_than_grid_reads_centre_of_table(tiny_hf):
    """A grid smaller than the window (HF 5.x fails there) uses the window's central offsets.

    Reference: the same weights in a HF Swin whose window equals the grid, with the bias table
    cropped to its central (2·3−1)² offsets.
    """
    common = {**SWIN_A, "image_size": 6, "depths": [2], "num_heads": [2]}
    del common["window_size"]
    big = _randomize(transformers.SwinModel(transformers.SwinConfig(**common, window_size=4)), 3)
    pre = load_pretrained(tiny_hf(big))
    ref = transformers.SwinModel(transformers.SwinConfig(**common, window_size=3)).eval()
    state = big.state_dict()
    for key, table in state.items():
        if key.endswith("relative_position_bias_table"):
            heads = table.shape[-1]
            state[key] = table.reshape(7, 7, heads)[1:6, 1:6].reshape(25, heads)
    ref.load_state_dict(state, strict=True)
    _parity(pre, ref, _pixels((2, 3, 6, 6)), "Swin window > grid")


@pytest.mark.parametrize("kind", ["vit", "swin"])
def test_encoder_of_embeddings_equals_model(kind, vit_pair, swin_a):
    _, pre = vit_pair if kind == "vit" else swin_a
    body = pre.module()
    size = pre.config.image_size
    x = jnp.asarray(_pixels((1, pre.config.num_channels, *size), seed=5))
    chex.assert_trees_all_close(body.encoder(body.embeddings(x)), body(x), atol=1e-6)
    if kind == "vit":
        assert body.embeddings.patch.kernel.shape == (4, 4, 3, 32)
        assert body.embeddings.cls_token.shape == (1, 1, 32)
        assert body.embeddings.position.shape == (1, 16, 32)
        with pytest.raises(ValueError, match=r"shape \(1, 4, 10\); the body expects \[B, L, 32\]"):
            body.encoder(jnp.zeros((1, 4, 10)))
    else:
        assert body.token_dim == 16 and body.output_dim == 32
        assert body.embeddings.patch.kernel.shape == (2, 2, 3, 16)
        assert body.embeddings.norm.scale.shape == (16,)
        tokens = body.embeddings(x)
        assert tokens.shape == (1, 35, 16)
        with pytest.raises(ValueError, match=r"shape \(1, 35, 16\); a 6×6 grid"):
            body.encoder(tokens, grid_hw=(6, 6))


@pytest.mark.parametrize(
    "head_cls",
    [
        transformers.ViTForImageClassification,
        transformers.ViTForMaskedImageModeling,
        transformers.SwinForImageClassification,
        transformers.SwinForMaskedImageModeling,
    ],
    ids=lambda c: c.__name__,
)
def test_task_checkpoint_loads_body(head_cls, tiny_hf):
    is_vit = head_cls.__name__.startswith("ViT")
    hf_cfg = (
        _vit_hf(image_size=8, num_labels=3, encoder_stride=4)
        if is_vit
        else transformers.SwinConfig(**{**SWIN_A, "image_size": 12}, num_labels=3, encoder_stride=8)
    )
    model = _randomize(head_cls(hf_cfg), seed=4)
    pre = load_pretrained(tiny_hf(model))
    x = _pixels((1, 3, 8, 8) if is_vit else (1, 3, 12, 12))
    body = model.vit if is_vit else model.swin
    ours = np.asarray(pre.apply(pre.params, pixel_values=x))
    chex.assert_trees_all_close(ours, _torch_hidden(body, x), atol=ATOL)


# --- bad folders and configs ----------------------------------------------------------------------


def _edit_config(folder, **changes):
    path = f"{folder}/config.json"
    with open(path) as f:
        cfg = json.load(f)
    cfg.update(changes)
    with open(path, "w") as f:
        json.dump(cfg, f)


def test_vit_config_edit_reports_misshaped_keys(tiny_hf):
    folder = tiny_hf(transformers.ViTModel(_vit_hf(num_hidden_layers=1), add_pooling_layer=False))
    _edit_config(folder, intermediate_size=48)
    with pytest.raises(WeightLoadError) as err:
        load_pretrained(folder)
    msg = str(err.value)
    assert "mis-shaped: 3" in msg and "missing" not in msg and "unexpected" not in msg
    assert "encoder.layer.0.intermediate.dense.weight → encoder.layers.0.mlp.fc1.kernel" in msg
    assert "expected (32, 48)" in msg


def test_swin_tampered_tensor_names_key(swin_a, tmp_path):
    model, _ = swin_a
    model.save_pretrained(tmp_path)
    path = str(tmp_path / "model.safetensors")
    tensors = load_file(path)
    key = "encoder.layers.0.blocks.1.attention.self.relative_position_bias_table"
    tensors[key] = np.zeros((49, 2), np.float32)  # a window-4 table in a window-3 model
    tensors["encoder.layers.0.blocks.1.attention.self.relative_position_index"] = np.zeros(
        (9, 9), np.int64
    )  # an old-format buffer: ignored
    save_file(tensors, path)
    with pytest.raises(WeightLoadError) as err:
        load_pretrained(str(tmp_path))
    msg = str(err.value)
    assert "mis-shaped: 1" in msg and "missing" not in msg and "unexpected" not in msg
    assert f"{key} → encoder.stages.0.blocks.1.rel_pos_table: got (49, 2), expected (25, 2)" in msg


def test_swin_config_errors_name_fields(swin_a, tmp_path):
    model, _ = swin_a
    model.save_pretrained(tmp_path)
    _edit_config(tmp_path, use_absolute_embeddings=True)
    with pytest.raises(WeightLoadError, match=r"config\.json: field 'use_absolute_embeddings'"):
        load_pretrained(str(tmp_path))
    _edit_config(tmp_path, use_absolute_embeddings=False, num_heads=[2, 3])
    with pytest.raises(WeightLoadError, match=r"config\.json: num_heads\[1\]=3 does not divide"):
        load_pretrained(str(tmp_path))
    _edit_config(tmp_path, num_heads=[2, 4], depths="2,2")
    with pytest.raises(WeightLoadError, match=r"config\.json: field 'depths' should be list"):
        load_pretrained(str(tmp_path))


def test_config_defaults_are_base_models_and_validate():
    v = nnx.eval_shape(lambda: vit.ViTModel(vit.ViTConfig(), nnx.Rngs(0)))
    assert (v.token_dim, v.output_dim, v.cfg.grid) == (768, 768, (14, 14))
    assert v.embeddings.position.shape == (1, 197, 768)
    s = nnx.eval_shape(lambda: swin.SwinModel(swin.SwinConfig(), nnx.Rngs(0)))
    assert (s.token_dim, s.output_dim, s.cfg.grid) == (128, 1024, (56, 56))
    with pytest.raises(ValueError, match="hidden_size=30 is not divisible by num_heads"):
        vit.ViTConfig(hidden_size=30)
    with pytest.raises(ValueError, match="image_size=.* is smaller than patch_size=16"):
        vit.ViTConfig(image_size=8)
    with pytest.raises(ValueError, match=r"num_heads=\(4, 8\) must have one entry per stage"):
        swin.SwinConfig(depths=(2, 2, 2), num_heads=(4, 8))
    with pytest.raises(ValueError, match="window_size must be a positive int"):
        swin.SwinConfig(window_size=0)
    with pytest.raises(ValueError, match="hidden_act='tanh' is not supported"):
        swin.SwinConfig(hidden_act="tanh")
