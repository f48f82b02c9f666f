"""Parameter paths: the one convention for naming leaves of a params tree with a regex.

A leaf's path is its keys joined by ``/``, counted from the root of the tree it is asked of:
``body/layers/0/attn/query/kernel`` in the full params, ``layers/0/attn/query/kernel`` in the body
subtree. Dict keys are written as they are, list indices (and integer layer keys) as decimals.
Checkpoint shape reports name leaves the same way (also through optimizer state: named-tuple
fields are entries too). Every config key that selects parameters by regex goes through
:func:`matches`, with the tree and mode its documentation fixes:

- ``sharding_rules`` (``parallel.param_shardings``): the full params, ``fullmatch`` (a rule
  covers the whole path: ``body/.*kernel``).
- a stage's ``freeze`` (``train.optim.train_labels``): the full params, ``search``
  (``body/.*attn/(query|key)/``).
- MoNA's ``inner_params`` (``methods.mona.inner_mask``): the body subtree, ``search``
  (``layers/1/``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax

MODES = ("search", "fullmatch")


def key_str(entry: Any) -> str:
    """One path entry as it appears in a path string: a dict key, sequence index or named-tuple
    field (jax key entries), or a raw key (``flax.traverse_util``)."""
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def path_str(path: tuple) -> str:
    """A key path (from ``jax.tree_util`` or ``flax.traverse_util``) → ``"a/b/c"``."""
    return "/".join(key_str(k) for k in path)


def leaf_paths(tree: Any) -> list[str]:
    """Every leaf's path string, in ``jax.tree`` leaf order."""
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def map_paths(fn: Callable[[str, Any], Any], tree: Any) -> Any:
    """``tree`` with each leaf replaced by ``fn(path string, leaf)`` (same structure)."""
    return jax.tree_util.tree_map_with_path(lambda p, x: fn(path_str(p), x), tree)


def matches(pattern: str | re.Pattern, path: str, mode: str) -> bool:
    """Whether ``pattern`` matches the path string: anywhere (``search``) or all of it
    (``fullmatch``)."""
    if mode not in MODES:
        raise ValueError(f"path match mode {mode!r}; expected one of {MODES}")
    rx = re.compile(pattern) if isinstance(pattern, str) else pattern
    return (rx.search(path) if mode == "search" else rx.fullmatch(path)) is not None


def matching(tree: Any, pattern: str | re.Pattern, mode: str) -> list[str]:
    """The paths of ``tree``'s leaves that ``pattern`` matches under ``mode``."""
    rx = re.compile(pattern) if isinstance(pattern, str) else pattern
    return [p for p in leaf_paths(tree) if matches(rx, p, mode)]
