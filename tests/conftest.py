"""Shared fixtures: the shipped MiniLM (loaded once) and tiny random HF folders.

The suite runs with 8 fake CPU devices (set before JAX is imported) so that sharded code paths
are exercised everywhere; single-device runs use ``config.mesh.num_devices = 1``.
"""

from __future__ import annotations

import os

# LLVM optimisation level 0 for the suite's programs: they are tiny, so compiling dominates
# their run time, and the unoptimised code computes the same IEEE operations (every parity and
# golden test passes at its tolerance). Measured: a PaRe-on-Swin + a MoNA trainer test 49.6 s →
# 39.0 s. Benchmarks do not import this file and run fully optimised code.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()

# Most of the suite's time is XLA compiling the same tiny programs again in other tests (every
# trainer test builds fresh closures, so jit's in-memory cache never hits). JAX's persistent
# compilation cache keys on the program itself, so one compile serves every test that lowers the
# same step: one cache per test run, shared by the xdist workers and the subprocesses tests start
# (measured: tests/test_budgets.py 162 s → 106 s from an empty cache). A run starts empty, so
# nothing carries over between runs; set JAX_COMPILATION_CACHE_DIR to choose the folder yourself.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    # Made by the first process to load this file (xdist's controller, before it starts the
    # workers, which inherit the environment), removed by it when the session ends.
    import tempfile

    _OWN_CACHE = tempfile.mkdtemp(prefix="xmodal_jax_test_cc_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

from xmodal_jax.models.pretrained import load_pretrained  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
    """Removes the session's compilation cache (only in the process that made it)."""
    del session, exitstatus
    if _OWN_CACHE is not None:
        import shutil

        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def minilm():
    """The shipped MiniLM-L6 body, loaded once per test session."""
    return load_pretrained()


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory):
    """Factory: ``tiny_hf(model)`` saves a HF PyTorch model as safetensors; returns the dir."""
    counter = iter(range(10**6))

    def save(model, tokenizer_from: str | None = None) -> str:
        path = tmp_path_factory.mktemp(f"hf{next(counter)}")
        model.save_pretrained(path, safe_serialization=True)
        if tokenizer_from is not None:
            from transformers import AutoTokenizer

            AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(path)
        return str(path)

    return save


def tiny_bert_config(**overrides):
    """A ``transformers.BertConfig`` of the suite's tiny size (hidden 32, 1 layer, 4 heads, MLP
    64, 128 positions, MiniLM's vocabulary); ``overrides`` change any field."""
    import transformers

    fields = dict(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    return transformers.BertConfig(**{**fields, **overrides})


@pytest.fixture(scope="session")
def tiny_bert_path(tmp_path_factory, minilm):
    """A tiny random BERT (hidden 32, 1 layer) with MiniLM's tokenizer: fast trainer tests.

    One layer: XLA's compile time, most of the suite's, grows with depth; layer stacking is
    covered by the 6-layer MiniLM parity tests.
    """
    import shutil

    import torch
    import transformers

    cfg = tiny_bert_config()
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_bert")
    transformers.BertModel(cfg).save_pretrained(path, safe_serialization=True)
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(minilm.path, name), path / name)
    return str(path)


@pytest.fixture
def tiny_config(tiny_bert_path):
    """Factory: ``tiny_config("steps=20,align=otdd", **{"mesh.data": 4})`` → unlocked config."""

    def make(arg: str | None = None, **overrides):
        from configs import tiny

        c = tiny.get_config(arg)
        c.unlock()
        c.body.path = tiny_bert_path
        for key, value in overrides.items():
            node = c
            *parents, leaf = key.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = value
        return c

    return make


@pytest.fixture(scope="session")
def tiny_swin_path(tmp_path_factory):
    """A tiny random Swin (32 px, patch 4, two stages) saved as a HF folder."""
    import torch
    import transformers

    cfg = transformers.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=4
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_swin")
    transformers.SwinModel(cfg).save_pretrained(path, safe_serialization=True)
    return str(path)


@pytest.fixture(scope="session")
def tiny_resnet_path(tmp_path_factory):
    """A tiny random ResNet (bottleneck, stem 8, two stages 16/32) saved as a HF folder."""
    import torch
    import transformers

    cfg = transformers.ResNetConfig(embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1])
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_resnet")
    transformers.ResNetModel(cfg).save_pretrained(path, safe_serialization=True)
    return str(path)
