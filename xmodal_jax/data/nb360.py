"""Readers for the original NAS-Bench-360 files (spec/orca.md §7) with our splits (§8.1–§8.2).

Every reader takes the manual data dir ``root`` and returns ``Splits``
(``{"train", "val", "test"}`` × ``{"x", "y"}``), inputs channels-first:

============  ==========================================  ===================================
task          x                                           y
============  ==========================================  ===================================
cifar100      uint8 N×3×32×32 (raw pixels, not /255)      int32, 100 classes
spherical     float32 N×3×60×60 (/255)                    int32, 100 classes
darcy         float32 N×3×85×85 (coeff, grid x, grid y)   float32 N×1×85×85 (not normalised)
ninapro       float32 N×1×16×52                           int32, 18 classes
ecg           float32 N×1×1000 (lazy windows)             int32, 4 classes (N, A, O, ~)
satellite     float32 N×1×46                              int32, 24 classes (file's 1-based − 1)
deepsea       float32 N×4×1000 (lazy, memory-mapped)      float32 N×36 multi-label
============  ==========================================  ===================================

Files are parsed as the reference loaders (sjunhongshen/ORCA ``src/data_loaders.py``) parse them;
only the validation splits differ (the reference selected on test). ``ecg`` and ``deepsea`` x are
``LazyArray`` subclasses that gather a batch in one vectorised step and convert with
``np.asarray``. Every malformed file raises ``DataFormatError`` naming file and field.

This module is the registry (:data:`READERS`) and the one import of the readers; they live by
input family in ``nb360_2d`` and ``nb360_1d``, their shared file helpers in ``nb360_files``.
"""

from __future__ import annotations

from collections.abc import Callable

from xmodal_jax.data.formats import Splits
from xmodal_jax.data.nb360_1d import (
    ECG_CLASS_STRIDES,
    ECG_LABELS,
    ECG_STRIDE,
    ECG_WINDOW,
    read_deepsea,
    read_ecg,
    read_satellite,
    reference_test_split,
)
from xmodal_jax.data.nb360_2d import (
    darcy_grid,
    read_cifar100,
    read_darcy,
    read_ninapro,
    read_spherical,
)
from xmodal_jax.data.nb360_files import NUM_CLASSES
from xmodal_jax.data.nb360_files import npz_member as _npz_member  # noqa: F401  (old name)

__all__ = [
    "ECG_CLASS_STRIDES",
    "ECG_LABELS",
    "ECG_STRIDE",
    "ECG_WINDOW",
    "NUM_CLASSES",
    "READERS",
    "darcy_grid",
    "read_cifar100",
    "read_darcy",
    "read_deepsea",
    "read_ecg",
    "read_ninapro",
    "read_satellite",
    "read_spherical",
    "reference_test_split",
]

READERS: dict[str, Callable[..., Splits]] = {
    "cifar100": read_cifar100,
    "spherical": read_spherical,
    "darcy": read_darcy,
    "ninapro": read_ninapro,
    "ecg": read_ecg,
    "satellite": read_satellite,
    "deepsea": read_deepsea,
}
