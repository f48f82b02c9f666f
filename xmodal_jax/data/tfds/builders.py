"""One ``GeneratorBasedBuilder`` per task, generated from the task registry.

``build(task_cfg, data_dir)`` reads the task's original files from its manual dir (``task_cfg``
carries it, the same config the trainer uses) through the task's own reader and writes
ArrayRecord shards; ``load_splits(task_cfg, data_dir)`` reads them back TF-free with
``tfds.data_source`` as :class:`~xmodal_jax.data.formats.LazyArray` columns, which the Grain
pipeline indexes like in-memory arrays. Building and reading need no TensorFlow.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from xmodal_jax.data import formats, tasks

_VERSION = "1.0.0"


def _features(split: dict[str, Any]):
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict(
        {
            k: tfds.features.Tensor(shape=tuple(v.shape[1:]), dtype=np.dtype(v.dtype))
            for k, v in split.items()
        }
    )


@functools.cache
def builder_class(task_name: str) -> type:
    """The builder class for a registered task (named ``xmodal_<task>``), made once."""
    import tensorflow_datasets as tfds

    if task_name not in tasks.names():
        raise ValueError(f"no task {task_name!r}; registered: {tasks.names()}")

    class Builder(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version(_VERSION)
        RELEASE_NOTES = {_VERSION: "Written by xmodal_jax from the task's original files."}

        def __init__(self, *, task_cfg: Any, **kwargs: Any):
            self._task = tasks.get(task_cfg)
            self._splits: dict | None = None
            super().__init__(**kwargs)

        def _read(self) -> dict:
            if self._splits is None:
                self._splits = self._task.load()
            return self._splits

        def _info(self):
            splits = self._read()
            return self.dataset_info_from_configs(features=_features(splits["train"]))

        def _split_generators(self, dl_manager):
            del dl_manager  # the task reader reads its manual dir itself
            return {name: self._generate_examples(name) for name in self._read()}

        def _generate_examples(self, split: str):
            arrays = self._read()[split]
            n = len(next(iter(arrays.values())))
            for i in range(n):
                yield i, {k: np.asarray(v[i]) for k, v in arrays.items()}

    Builder.__name__ = f"Xmodal{''.join(p.title() for p in task_name.split('_'))}"
    Builder.name = f"xmodal_{task_name}"
    return Builder


def build(task_cfg: Any, data_dir: str) -> str:
    """Reads the task's original files and writes ArrayRecord shards under ``data_dir``."""
    builder = builder_class(task_cfg.name)(
        task_cfg=task_cfg, data_dir=data_dir, file_format="array_record"
    )
    builder.download_and_prepare()
    return builder.data_dir


def load_splits(task_cfg: Any, data_dir: str) -> formats.Splits:
    """The built dataset as ``{split: {field: LazyArray}}`` over ``tfds.data_source``."""
    import tensorflow_datasets as tfds

    name = f"xmodal_{task_cfg.name}"
    try:
        sources = tfds.data_source(name, data_dir=data_dir)
    except Exception as e:  # tfds raises several types for a missing dataset
        raise formats.DataFormatError(
            f"{data_dir}: no built dataset {name!r} ({e}); build it first with "
            f"xmodal_jax.data.tfds.build(config.task, {data_dir!r})"
        ) from e
    out: formats.Splits = {}
    for split, source in sources.items():
        first = source[0]
        out[split] = {
            key: formats.LazyArray(
                len(source),
                np.shape(value),
                np.asarray(value).dtype,
                functools.partial(lambda i, s, k: s[i][k], s=source, k=key),
                name=f"{name}/{split}/{key}",
            )
            for key, value in first.items()
        }
    return out
