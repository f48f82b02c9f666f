"""tensorflow-datasets builders over the task readers (ArrayRecord, built and read without TF)."""

from xmodal_jax.data.tfds.builders import build, builder_class, load_splits

__all__ = ["build", "builder_class", "load_splits"]
