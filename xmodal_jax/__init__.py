"""xmodal_jax: cross-modal transfer of pretrained transformers in JAX/Flax.

The public API: load a pretrained body from a local Hugging Face folder, build a cross-modal model
(target embedder + body + head) for a task, and call it through pure functions of params pytrees.
"""

from xmodal_jax.models.crossmodal import CrossModalModel, apply, build_crossmodal
from xmodal_jax.models.embedders import Embed1DOptions
from xmodal_jax.models.pretrained import Pretrained, load_pretrained
from xmodal_jax.models.weights import WeightLoadError
from xmodal_jax.spec import TaskSpec

__all__ = [
    "CrossModalModel",
    "Embed1DOptions",
    "Pretrained",
    "TaskSpec",
    "WeightLoadError",
    "apply",
    "build_crossmodal",
    "load_pretrained",
]
__version__ = "0.1.0"
