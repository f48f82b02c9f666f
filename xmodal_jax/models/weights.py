"""Weight import machinery: safetensors reading and regex key-mapping tables (bonsai style).

Each model module declares ``HF_RULES`` (HF key regex → our dotted key + a layout transform),
``HF_IGNORE`` (HF keys it knowingly drops) and ``HF_PREFIXES``; :func:`map_weights` applies one
table and reports *every* missing, unexpected and mis-shaped key in a single error.
"""

from __future__ import annotations

import dataclasses
import enum
import glob
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flax import traverse_util


class WeightLoadError(ValueError):
    """A pretrained folder or file could not be turned into our parameters."""


class Transform(enum.Enum):
    """How a PyTorch tensor layout becomes ours."""

    IDENTITY = "identity"
    LINEAR = "linear"  # torch [out, in] → [in, out]
    CONV = "conv"  # torch [out, in, *k] → [*k, in, out]

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Returns ``x`` in our layout."""
        if self is Transform.LINEAR:
            if x.ndim != 2:
                raise ValueError(f"a linear weight must be 2-D, got shape {x.shape}")
            return x.T
        if self is Transform.CONV:
            if x.ndim < 3:
                raise ValueError(f"a conv weight must be at least 3-D, got shape {x.shape}")
            return np.moveaxis(x, (0, 1), (-1, -2))
        return x


@dataclasses.dataclass(frozen=True)
class Rule:
    """One row of a key-mapping table: ``re.fullmatch(pattern, hf_key)`` → ``expand(target)``."""

    pattern: str
    target: str
    transform: Transform


def require(raw: Mapping[str, Any], key: str, typ: type, source: str) -> Any:
    """Reads a required ``config.json`` field, naming the file and field when it is bad."""
    if key not in raw:
        raise WeightLoadError(f"{source}: missing required field {key!r}")
    value = raw[key]
    if typ is int and isinstance(value, bool) or not isinstance(value, typ):
        raise WeightLoadError(
            f"{source}: field {key!r} should be {typ.__name__}, "
            f"got {type(value).__name__} {value!r}"
        )
    return value


def safetensors_files(folder: str) -> list[str]:
    """The ``*.safetensors`` files of a HF folder, or a clear error (also for ``.bin``-only)."""
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    if files:
        return files
    bins = sorted(glob.glob(os.path.join(folder, "*.bin")))
    if bins:
        raise WeightLoadError(
            f"{folder}: found only PyTorch pickle weights "
            f"({', '.join(map(os.path.basename, bins))})."
            " xmodal_jax reads safetensors only (pickles can execute code). Convert once with:\n"
            "  python -c \"import transformers as t; m = t.AutoModel.from_pretrained('"
            f"{folder}'); m.save_pretrained('{folder}', safe_serialization=True)\""
        )
    raise WeightLoadError(f"{folder}: no *.safetensors weight file found")


def read_safetensors(files: Sequence[str]) -> dict[str, tuple[np.ndarray, str]]:
    """Reads all tensors as numpy arrays, keyed by name, remembering the file each came from."""
    from safetensors import SafetensorError, safe_open

    out: dict[str, tuple[np.ndarray, str]] = {}
    for path in files:
        try:
            # framework="flax" understands bfloat16; numpy alone does not.
            with safe_open(path, framework="flax") as f:
                for key in f.keys():
                    if key in out:
                        raise WeightLoadError(f"{path}: key {key!r} also appears in {out[key][1]}")
                    out[key] = (np.asarray(f.get_tensor(key)), path)
        except (SafetensorError, OSError) as e:
            raise WeightLoadError(
                f"{path}: unreadable safetensors file (truncated or corrupt?): {e}"
            ) from e
    bad = [
        f"{key} in {src} ({int((~np.isfinite(np.asarray(a, np.float32))).sum())} values)"
        for key, (a, src) in out.items()
        if a.dtype.kind == "f" and not np.isfinite(np.asarray(a, np.float32)).all()
    ]
    if bad:
        raise WeightLoadError(
            f"{len(bad)} tensor(s) hold NaN/inf weights (a damaged or diverged checkpoint):\n  "
            + "\n  ".join(bad[:10])
        )
    return out


def flat_keys(tree: Mapping) -> dict[str, tuple]:
    """Maps each dotted key of a nested params dict to its tuple path (ints kept as ints)."""
    return {".".join(map(str, k)): k for k in traverse_util.flatten_dict(tree)}


def map_weights(
    hf: Mapping[str, tuple[np.ndarray, str]],
    abstract: Mapping,
    rules: Sequence[Rule],
    ignore: Sequence[str] = (),
    prefixes: Sequence[str] = (),
    dtype: Any = np.float32,
) -> dict:
    """Fills a params tree shaped like ``abstract`` from HF tensors, or raises one full report.

    ``abstract`` is a nested dict whose leaves have ``.shape`` (e.g. ``jax.ShapeDtypeStruct``).
    Every HF key must be mapped by exactly one rule or ignored; every leaf must be filled once;
    every shape must match after the rule's transform. All violations are collected first.
    """
    compiled = [(re.compile(r.pattern), r) for r in rules]
    ignored = [re.compile(p) for p in ignore]
    targets = flat_keys(abstract)
    shapes = traverse_util.flatten_dict(abstract)
    filled: dict[tuple, np.ndarray] = {}
    origin: dict[tuple, str] = {}
    unexpected, misshaped, errors = [], [], []
    for hf_key, (value, path) in sorted(hf.items()):
        key = hf_key
        for p in prefixes:
            if key.startswith(p):
                key = key[len(p) :]
                break
        if any(rx.fullmatch(key) for rx in ignored):
            continue
        hits = [(m, r) for rx, r in compiled if (m := rx.fullmatch(key))]
        if not hits:
            unexpected.append(f"{hf_key} (in {os.path.basename(path)}, shape {value.shape})")
            continue
        match, rule = hits[0]
        ours = match.expand(rule.target)
        if ours not in targets:
            unexpected.append(f"{hf_key} → {ours} (no such parameter in our model)")
            continue
        tpath = targets[ours]
        if tpath in origin:
            errors.append(f"{hf_key} → {ours} is also filled from {origin[tpath]}")
            continue
        try:
            arr = rule.transform.apply(value)
        except ValueError as e:
            errors.append(f"{hf_key}: {e}")
            continue
        want = tuple(shapes[tpath].shape)
        if tuple(arr.shape) != want:
            origin[tpath] = hf_key  # reported as mis-shaped, not again as missing
            misshaped.append(f"{hf_key} → {ours}: got {tuple(arr.shape)}, expected {want}")
            continue
        filled[tpath] = np.asarray(arr, dtype=dtype)
        origin[tpath] = hf_key
    missing = sorted(k for k, p in targets.items() if p not in origin)
    if missing or unexpected or misshaped or errors:
        files = sorted({os.path.basename(p) for _, p in hf.values()})
        lines = [f"cannot load weights from {', '.join(files)}:"]
        for title, items in (
            ("missing (our parameters with no HF key)", missing),
            ("unexpected (HF keys with no place in our model)", unexpected),
            ("mis-shaped", misshaped),
            ("other", errors),
        ):
            if items:
                lines.append(f"  {title}: {len(items)}")
                lines += [f"    {item}" for item in items]
        raise WeightLoadError("\n".join(lines))
    return traverse_util.unflatten_dict(filled)
