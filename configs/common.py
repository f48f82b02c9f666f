"""Helpers shared by config files."""

from __future__ import annotations

from typing import Any

import ml_collections


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
    """Parses ``"a=1,b=foo,c"`` (from ``--config file.py:a=1,b=foo,c``) against typed defaults.

    A bare ``c`` means ``c=True``. Values are cast to the type of their default; unknown names
    are an error naming the key, so a typo never silently falls back to a default.
    """
    out = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, _, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(f"config arg {key!r} unknown; expected one of {sorted(defaults)}")
        default = defaults[key]
        if not _:
            out[key] = True
        elif isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"config arg {key}={value!r}: expected true/false")
            out[key] = value.lower() in ("true", "1")
        else:
            try:
                out[key] = type(default)(value)
            except ValueError as e:
                raise ValueError(
                    f"config arg {key}={value!r}: expected {type(default).__name__}"
                ) from e
    return out
