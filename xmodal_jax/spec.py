"""What a task asks of a model: :class:`TaskSpec` (input shape → output kind and size).

A neutral module: the data layer (``data.tasks``) declares specs and the model layer
(``models.crossmodal``) builds from them, so neither imports the other for it.
"""

from __future__ import annotations

import dataclasses

OUTPUT_KINDS = ("classification", "multilabel", "regression", "dense")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """What the model must map: per-example input shape → output kind and size.

    ``input_shape`` is ``(C, L)`` for 1D signals, ``(C, H, W)`` for 2D fields/images/spectrograms
    (channels first, as the tasks store them) or ``(T, C, H, W)`` for videos of ``T`` frames (each
    frame goes through the image path; pooled outputs only). ``output`` is one of
    :data:`OUTPUT_KINDS`; ``num_outputs`` is the number of classes / labels / regression targets,
    or the output channels for ``dense``, whose spatial size equals the input's unless
    ``output_hw`` says otherwise (2D only). ``tabular``: the ``L`` positions of a ``(1, L)`` input
    are the columns of a table (no shared scale, order or locality), which picks the per-feature
    tokenizer under ``embedder.kind="auto"`` (:class:`~xmodal_jax.models.embedders.Embed1DOptions`).
    """

    input_shape: tuple[int, ...]
    output: str
    num_outputs: int
    target_seq_len: int = 512
    output_hw: tuple[int, int] | None = None
    tabular: bool = False

    def __post_init__(self):
        if len(self.input_shape) not in (2, 3, 4) or any(d < 1 for d in self.input_shape):
            raise ValueError(
                f"TaskSpec.input_shape must be (C, L), (C, H, W) or (T, C, H, W) of positive "
                f"ints, got {self.input_shape}"
            )
        if len(self.input_shape) == 4 and self.output == "dense":
            raise ValueError("video tasks (T, C, H, W) support pooled outputs only, not 'dense'")
        if self.output not in OUTPUT_KINDS:
            raise ValueError(f"TaskSpec.output={self.output!r}; expected one of {OUTPUT_KINDS}")
        if self.num_outputs < 1:
            raise ValueError(f"TaskSpec.num_outputs must be ≥ 1, got {self.num_outputs}")

    @property
    def is_1d(self) -> bool:
        """Whether inputs are ``[C, L]`` signals."""
        return len(self.input_shape) == 2

    @property
    def is_video(self) -> bool:
        """Whether inputs are ``[T, C, H, W]`` frame sequences."""
        return len(self.input_shape) == 4
