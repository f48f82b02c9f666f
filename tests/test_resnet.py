"""ResNet body: HF parity, folded BN, loader errors; vision bodies on images, audio and video."""

from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file, save_file

import xmodal_jax as xm
from xmodal_jax import train_lib
from xmodal_jax.models import resnet
from xmodal_jax.models.weights import WeightLoadError

ATOL = 1e-5


def _randomize_bn(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial BN statistics and affines (HF initialises mean 0, var 1, γ 1, β 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(0.1 * torch.randn(buf.shape, generator=gen))
            elif name.endswith("running_var"):
                buf.copy_(0.5 + torch.rand(buf.shape, generator=gen))
        for name, p in model.named_parameters():
            if "normalization" in name:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _pixels(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# Bottleneck: stride on the first 1×1 (downsample_in_bottleneck), a projection shortcut in every
# stage's first layer, three stages. Basic: GELU as hidden_act (stem and residual outputs only;
# HF's inner convs stay ReLU), stride 2 already in the first stage, identity shortcuts in stage 0.
BOTTLENECK = dict(
    embedding_size=8,
    hidden_sizes=[16, 24, 32],
    depths=[2, 1, 2],
    layer_type="bottleneck",
    downsample_in_bottleneck=True,
)
BASIC = dict(
    embedding_size=8,
    hidden_sizes=[8, 16],
    depths=[2, 2],
    layer_type="basic",
    downsample_in_first_stage=True,
    hidden_act="gelu",
)


@pytest.fixture(scope="module")
def bottleneck_pair(tiny_hf):
    model = _randomize_bn(transformers.ResNetModel(transformers.ResNetConfig(**BOTTLENECK)), 0)
    return model, xm.load_pretrained(tiny_hf(model))


@pytest.fixture(scope="module")
def tiny_resnet(tiny_resnet_path):
    return xm.load_pretrained(tiny_resnet_path)


def _parity(pre, ref_model, x: np.ndarray, label: str) -> None:
    ours = np.asarray(jax.jit(pre.apply)(pre.params, pixel_values=x))
    pooled = np.asarray(jax.jit(lambda p, x: pre.module(p).pooled(x))(pre.params, x))
    with torch.no_grad():
        out = ref_model(pixel_values=torch.from_numpy(x))
    ref = out.last_hidden_state.numpy()  # NCHW
    b, c, h, w = ref.shape
    ref_tokens = ref.transpose(0, 2, 3, 1).reshape(b, h * w, c)
    assert ours.shape == ref_tokens.shape
    err = float(np.abs(ours - ref_tokens).max())
    err_pool = float(np.abs(pooled - out.pooler_output.numpy()[:, :, 0, 0]).max())
    print(f"\n{label} parity: last_hidden {ours.shape} max|Δ| {err:.2e}, pooled {err_pool:.2e}")
    assert err <= ATOL and err_pool <= ATOL


def test_bottleneck_parity(bottleneck_pair):
    model, pre = bottleneck_pair
    assert pre.model_type == "resnet" and pre.modality == "vision"
    assert pre.config.layer_type == "bottleneck" and pre.config.downsample_in_bottleneck
    # 29×35: odd sizes exercise PyTorch's floor rule in every strided conv and the max pool.
    _parity(pre, model, _pixels((2, 3, 29, 35)), "ResNet bottleneck")
    # Only trainable leaves: conv kernels and the folded BN affine; no running statistics.
    leaves = jax.tree_util.tree_leaves_with_path(pre.params)
    names = {str(path[-1].key) for path, _ in leaves}
    assert names == {"kernel", "scale", "bias"}


def test_basic_blocks_parity_from_a_classifier_checkpoint(tiny_hf):
    # A ResNetForImageClassification folder: "resnet." prefix and a classifier to ignore.
    clf = transformers.ResNetForImageClassification(
        transformers.ResNetConfig(**BASIC, num_labels=5)
    )
    clf = _randomize_bn(clf, 1)
    pre = xm.load_pretrained(tiny_hf(clf))
    assert pre.config.layer_type == "basic" and pre.config.hidden_act == "gelu"
    _parity(pre, clf.resnet, _pixels((2, 3, 24, 20), seed=1), "ResNet basic")


def test_folded_bn_is_pytorch_eval_bn():
    gen = np.random.default_rng(0)
    w, b, m = (gen.standard_normal(4).astype(np.float32) for _ in range(3))
    v = gen.uniform(0.5, 1.5, 4).astype(np.float32)
    key = "embedder.embedder.normalization."
    hf = {
        key + k: (x, "f")
        for k, x in zip(
            ("weight", "bias", "running_mean", "running_var"), (w, b, m, v), strict=True
        )
    }
    hf[key + "num_batches_tracked"] = (np.array(3), "f")
    folded = resnet.fold_batch_norms(hf)
    assert sorted(folded) == [key + "bias", key + "weight"]
    bn = torch.nn.BatchNorm2d(4).eval()
    with torch.no_grad():
        for name, x in (("weight", w), ("bias", b), ("running_mean", m), ("running_var", v)):
            getattr(bn, name).copy_(torch.from_numpy(x))
        x = torch.randn(2, 4, 3, 3)
        ref = bn(x).numpy()
    ours = (
        x.numpy() * folded[key + "weight"][0][:, None, None]
        + folded[key + "bias"][0][:, None, None]
    )
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def _corrupt(src: str, dst, edit) -> str:
    import shutil

    dst.mkdir()
    shutil.copy(f"{src}/config.json", dst / "config.json")
    tensors = load_file(f"{src}/model.safetensors")
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"))
    return str(dst)


def test_bad_folders_name_the_key(tiny_resnet_path, tmp_path):
    conv = "encoder.stages.1.layers.0.layer.1.convolution.weight"

    def misshape_conv(t):
        t[conv] = np.zeros((3, 3, 3, 3), np.float32)

    with pytest.raises(WeightLoadError, match="mis-shaped") as e:
        xm.load_pretrained(_corrupt(tiny_resnet_path, tmp_path / "a", misshape_conv))
    assert conv in str(e.value) and "encoder.stages.1.layers.0.convs.1.conv.kernel" in str(e.value)

    var = "encoder.stages.0.layers.0.shortcut.normalization.running_var"

    def misshape_var(t):
        t[var] = np.ones((5,), np.float32)

    with pytest.raises(WeightLoadError, match="shapes differ") as e:
        xm.load_pretrained(_corrupt(tiny_resnet_path, tmp_path / "b", misshape_var))
    assert var in str(e.value)

    def drop_mean(t):
        del t["embedder.embedder.normalization.running_mean"]

    with pytest.raises(WeightLoadError, match="running_mean"):
        xm.load_pretrained(_corrupt(tiny_resnet_path, tmp_path / "c", drop_mean))

    (tmp_path / "d").mkdir()
    cfg = json.loads(open(f"{tiny_resnet_path}/config.json").read())
    cfg["layer_type"] = "preact"
    with open(tmp_path / "d" / "config.json", "w") as f:
        json.dump(cfg, f)
    with pytest.raises(WeightLoadError, match="layer_type"):
        xm.load_pretrained(str(tmp_path / "d"))


# --- cross-modal models ---------------------------------------------------------------------------


def test_rgb_task_reproduces_the_pretrained_resnet(tiny_resnet):
    task = xm.TaskSpec((3, 24, 24), "classification", 5)
    graphdef, params = xm.build_crossmodal(task, tiny_resnet)
    assert set(params) == {"embedder", "body", "head", "source_embedder"}
    x = jnp.asarray(_pixels((2, 3, 24, 24)))

    @jax.jit
    def run(p, body, x):
        feats = xm.apply(graphdef, p, x, method="features")
        return feats, tiny_resnet.apply(body, pixel_values=x), xm.apply(graphdef, p, x)

    feats, ref, logits = run(params, tiny_resnet.params, x)
    chex.assert_trees_all_close(feats, ref)
    chex.assert_shape(logits, (2, 5))
    chex.assert_shape(params["head"]["linear"]["kernel"], (32, 5))


@pytest.mark.parametrize("c_in", [1, 8])
def test_stem_kernel_adapted_to_the_input_channels(tiny_resnet, c_in):
    task = xm.TaskSpec((c_in, 16, 20), "classification", 4)
    graphdef, params = xm.build_crossmodal(task, tiny_resnet)
    src = np.asarray(tiny_resnet.params["embeddings"]["stem"]["conv"]["kernel"])
    ours = np.asarray(params["embedder"]["stem"]["conv"]["kernel"])
    assert ours.shape == (7, 7, c_in, 8)
    if c_in == 1:
        np.testing.assert_allclose(ours[:, :, 0], src.sum(axis=2), rtol=1e-6)
    else:
        np.testing.assert_allclose(ours, src[:, :, np.arange(8) % 3] * 3 / 8, rtol=1e-6)
    x = jnp.asarray(_pixels((2, c_in, 16, 20)))

    @jax.jit
    def run(p, body, x):
        # A grey image must give the pretrained body's features of its RGB copy.
        ref = tiny_resnet.apply(body, pixel_values=jnp.repeat(x[:, :1], 3, axis=1))
        return xm.apply(graphdef, p, x), xm.apply(graphdef, p, x, method="features"), ref

    out, feats, ref = run(params, tiny_resnet.params, x)
    chex.assert_shape(out, (2, 4))
    if c_in == 1:
        chex.assert_trees_all_close(feats, ref, atol=1e-5)


def test_spectrogram_through_the_2d_path(tiny_resnet):
    """Audio: a [1, F, T] log-mel spectrogram is a 1-channel image (FSD50K is (1, 96, 102))."""
    task = xm.TaskSpec((1, 40, 51), "multilabel", 6)
    graphdef, params = xm.build_crossmodal(task, tiny_resnet)
    x = jnp.asarray(_pixels((3, 1, 40, 51)))

    @jax.jit
    def run(p, x, images):
        # Source images of another size are resized onto the task grid.
        src = xm.apply(graphdef, p, method="source_features", pixel_values=images)
        return xm.apply(graphdef, p, x), src

    out, src = run(params, x, jnp.ones((2, 3, 16, 16)))
    chex.assert_shape(out, (3, 6))
    # The target grid is static: 40×51 → stem 10×13 (no resize) → stage 1 (stride 2) → 5×7.
    assert dict(nnx.merge(graphdef, params).body_kwargs)["grid_hw"] == (10, 13)
    chex.assert_shape(src, (2, 5 * 7, 32))


@pytest.fixture(scope="module")
def tiny_vit(tiny_hf):
    cfg = transformers.ViTConfig(
        image_size=16,
        patch_size=4,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    torch.manual_seed(0)
    return xm.load_pretrained(tiny_hf(transformers.ViTModel(cfg).eval()))


@pytest.mark.parametrize("body", ["resnet", "vit", "swin"])
def test_video_is_the_temporal_mean_of_per_frame_features(
    body, tiny_resnet, tiny_vit, tiny_swin_path
):
    pre = {"resnet": tiny_resnet, "vit": tiny_vit, "swin": None}[body]
    pre = pre or xm.load_pretrained(tiny_swin_path)
    t, c, h, w = 3, 2, 16, 16
    video = xm.TaskSpec((t, c, h, w), "classification", 4)
    gv, pv = xm.build_crossmodal(video, pre, seed=1)
    gi, pi = xm.build_crossmodal(xm.TaskSpec((c, h, w), "classification", 4), pre, seed=1)
    chex.assert_trees_all_equal(pv, pi)  # one frame model: the same params either way
    x = jnp.asarray(_pixels((2, t, c, h, w)))

    @jax.jit
    def run(p, x):
        per_frame = xm.apply(gi, p, x.reshape(2 * t, c, h, w)).reshape(2, t, -1)
        return xm.apply(gv, p, x), per_frame

    logits, per_frame = run(pv, x)
    chex.assert_shape(logits, (2, 4))
    # The head is affine, so the logits of the mean-pooled features are the mean of per-frame ones.
    chex.assert_trees_all_close(logits, per_frame.mean(axis=1), atol=1e-5)


def test_rejected_combinations(tiny_resnet):
    with pytest.raises(ValueError, match="pooled outputs only"):
        xm.TaskSpec((4, 1, 8, 8), "dense", 1)
    with pytest.raises(ValueError, match="not implemented for ResNet"):
        xm.build_crossmodal(xm.TaskSpec((1, 16, 16), "dense", 1), tiny_resnet)
    graphdef, params = xm.build_crossmodal(
        xm.TaskSpec((2, 1, 8, 8), "classification", 3), tiny_resnet
    )
    with pytest.raises(ValueError, match="expects \\[B, 2, C, H, W\\]"):
        xm.apply(graphdef, params, jnp.ones((1, 3, 1, 8, 8)))


def test_gradients_reach_every_group(tiny_resnet):
    task = xm.TaskSpec((2, 1, 8, 8), "classification", 3)
    graphdef, params = xm.build_crossmodal(task, tiny_resnet)
    x = jnp.asarray(_pixels((2, 2, 1, 8, 8)))
    y = jnp.array([0, 2])

    def loss(p):
        logits = xm.apply(graphdef, p, x)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(2), y])

    grads = jax.jit(jax.grad(loss))(params)
    for group in ("embedder", "body", "head"):
        leaves = jax.tree.leaves(grads[group])
        assert all(bool(jnp.isfinite(g).all()) for g in leaves)
        assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0, group
    # The folded BN affine is trainable.
    assert (
        float(jnp.abs(grads["body"]["stages"][0]["layers"][0]["convs"][0]["norm"]["scale"]).sum())
        > 0
    )


def test_train_end_to_end_on_digit_images(tiny_resnet_path, tmp_path):
    from configs import tiny

    c = tiny.get_config("steps=2")
    c.unlock()
    c.body.path = tiny_resnet_path
    c.task = ml_collections.ConfigDict(
        dict(name="digits", layout="1x8x8", target_seq_len=64, train_limit=64, test_fraction=0.05)
    )
    c.eval_every = 2
    res = train_lib.train(c, str(tmp_path / "run"), verbose=False)
    assert np.isfinite(res["test_last"]) and 0 <= res["test_last"] <= 100
