"""Shared fixtures: the shipped MiniLM (loaded once) and tiny random HF folders."""

from __future__ import annotations

import pytest

from xmodal_jax.models.pretrained import load_pretrained


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
