"""ARFF and CSV tables → typed columns (OpenML-CC18-style files; ``offline.load_openml_file``).

ARFF: ``@attribute`` declarations (numeric | nominal ``{…}`` | string), dense and sparse
``{i v, …}`` rows, quoted values and ``%`` comments. CSV: a header row, comma-separated, double
quotes; a column's kind is inferred from its cells. Missing cells are ``None``; every error names
file, line and column.
"""

from __future__ import annotations

import csv
import math
import re

import numpy as np

from xmodal_jax.data.formats import DataFormatError

_MISSING = {"", "?", "na", "n/a", "nan", "null", "none"}


class Column:
    """One parsed column: raw string cells (``None`` = missing) and its ARFF type if declared."""

    def __init__(self, name: str, kind: str | None = None, levels: list[str] | None = None):
        self.name, self.kind, self.levels = name, kind, levels
        self.cells: list[str | None] = []
        self.lines: list[int] = []


def _split_fields(text: str, where: str) -> list[tuple[str, bool]]:
    """Splits an ARFF line on commas outside ``'…'`` / ``"…"``: ``(value, was_quoted)`` pairs."""
    fields: list[tuple[str, bool]] = []
    buf: list[str] = []
    quote, quoted, i = "", False, 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\" and i + 1 < len(text):
                buf.append(text[i + 1])
                i += 1
            elif ch == quote:
                quote = ""
            else:
                buf.append(ch)
        elif ch in "'\"":
            quote, quoted = ch, True
        elif ch == ",":
            fields.append(("".join(buf).strip(), quoted))
            buf, quoted = [], False
        else:
            buf.append(ch)
        i += 1
    if quote:
        raise DataFormatError(f"{where}: unterminated quote")
    fields.append(("".join(buf).strip(), quoted))
    return fields


def _strip_comment(line: str) -> str:
    """Drops a ``%`` comment that is outside quotes."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "%":
            return line[:i]
    return line


def read_arff(path: str) -> list[Column]:
    """Dense or sparse ARFF: numeric/real/integer, nominal ``{…}`` and string attributes.

    Our own small reader rather than ``scipy.io.arff``: scipy guesses the quoting of all data
    rows from the first one, so a quoted nominal value (``'no checking'``) in a later row of a
    file whose first row has no quotes fails, and its errors do not name the column.
    """
    cols: list[Column] = []
    in_data = False
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, raw in enumerate(f, 1):
            line = _strip_comment(raw).strip()
            if not line:
                continue
            where = f"{path}:{lineno}"
            if not in_data:
                head = line.split(None, 1)[0].lower()
                if head == "@attribute":
                    cols.append(_parse_attribute(line, where))
                elif head == "@data":
                    in_data = True
                elif head not in ("@relation", "@end"):
                    raise DataFormatError(f"{where}: unexpected header line {line[:60]!r}")
                continue
            if not cols:
                raise DataFormatError(f"{path}: @data before any @attribute")
            if line.startswith("{"):
                values = _sparse_row(line, cols, where)
            else:
                values = [None if not q and v == "?" else v for v, q in _split_fields(line, where)]
            if len(values) != len(cols):
                raise DataFormatError(f"{where}: {len(values)} values for {len(cols)} attributes")
            for col, v in zip(cols, values, strict=True):
                col.cells.append(v)
                col.lines.append(lineno)
    if not in_data:
        raise DataFormatError(f"{path}: no @data section (empty or not an ARFF file)")
    return cols


def _parse_attribute(line: str, where: str) -> Column:
    m = re.match(r"@attribute\s+('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|\S+)\s+(.*)$", line, re.I)
    if not m:
        raise DataFormatError(f"{where}: malformed @attribute line")
    name, kind = m.group(1), m.group(2).strip()
    if name[0] in "'\"":
        name = name[1:-1]
    if kind.startswith("{"):
        if not kind.endswith("}"):
            raise DataFormatError(f"{where}: attribute {name!r}: unterminated {{…}} value list")
        levels = [v for v, _ in _split_fields(kind[1:-1], where)]
        return Column(name, "nominal", levels)
    base = kind.split()[0].lower()
    if base in ("numeric", "real", "integer"):
        return Column(name, "numeric")
    if base == "string":
        return Column(name, "string")
    raise DataFormatError(f"{where}: attribute {name!r} has unsupported type {kind!r}")


def _sparse_row(line: str, cols: list[Column], where: str) -> list[str | None]:
    """``{index value, …}``: omitted entries are 0, i.e. a nominal column's first level."""
    values: list[str | None] = [
        (c.levels[0] if c.levels else "0") if c.kind == "nominal" else "0" for c in cols
    ]
    body = line.strip()
    if not body.endswith("}"):
        raise DataFormatError(f"{where}: unterminated sparse row")
    for item, quoted in _split_fields(body[1:-1], where):
        if not item:
            continue
        parts = item.split(None, 1)
        if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) >= len(cols):
            raise DataFormatError(f"{where}: bad sparse entry {item!r}")
        v = parts[1].strip().strip("'\"")
        values[int(parts[0])] = None if v == "?" and not quoted else v
    return values


def read_csv(path: str) -> list[Column]:
    """A CSV with a header row: one column per header name, missing cells (empty, ``?``,
    ``NA``, ``nan``, … in any case) as ``None``; kinds are left to :func:`infer_kind`."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        rows = [(i, r) for i, r in enumerate(csv.reader(f), 1) if any(c.strip() for c in r)]
    if not rows:
        raise DataFormatError(f"{path}: empty file (expected a header row and data rows)")
    header = [h.strip() for h in rows[0][1]]
    if len(set(header)) != len(header) or "" in header:
        raise DataFormatError(f"{path}: header has empty or repeated column names: {header}")
    cols = [Column(h) for h in header]
    for lineno, row in rows[1:]:
        if len(row) != len(cols):
            raise DataFormatError(f"{path}:{lineno}: {len(row)} fields, header has {len(cols)}")
        for col, v in zip(cols, row, strict=True):
            v = v.strip()
            col.cells.append(None if v.lower() in _MISSING else v)
            col.lines.append(lineno)
    return cols


def to_float(col: Column, path: str) -> np.ndarray:
    """Numeric cells as float64 (NaN = missing); an unparseable cell names line and column."""
    out = np.full(len(col.cells), np.nan)
    for i, v in enumerate(col.cells):
        if v is None:
            continue
        try:
            out[i] = float(v)
        except ValueError:
            raise DataFormatError(
                f"{path}:{col.lines[i]}: column {col.name!r}: value {v!r} is not a number"
            ) from None
        if not math.isfinite(out[i]):
            raise DataFormatError(
                f"{path}:{col.lines[i]}: column {col.name!r}: value {v!r} is not finite"
            )
    return out


def infer_kind(col: Column, path: str) -> None:
    """CSV columns: numeric if every present cell is a number, categorical if none is."""
    if col.kind is not None:
        return
    present = [(i, v) for i, v in enumerate(col.cells) if v is not None]
    numeric = []
    for _, v in present:
        try:
            float(v)
            numeric.append(True)
        except ValueError:
            numeric.append(False)
    if all(numeric):
        col.kind = "numeric"
    elif not any(numeric):
        col.kind = "string"
    else:
        i, v = present[numeric.index(False)]
        raise DataFormatError(
            f"{path}:{col.lines[i]}: column {col.name!r} mixes numbers and text: value {v!r} is "
            "not a number"
        )


def label_names(col: Column, rows: np.ndarray, path: str) -> list[str]:
    """The target's class name at each of ``rows`` (numeric labels normalised: "1.0" is "1";
    nominal ones checked against the declared levels)."""
    if col.kind == "numeric":  # "1" and "1.0" are one class
        out = []
        for i in rows:
            try:
                v = float(col.cells[i])  # type: ignore[arg-type]
            except ValueError:
                raise DataFormatError(
                    f"{path}:{col.lines[i]}: target {col.name!r}: value {col.cells[i]!r} is not "
                    "a number"
                ) from None
            out.append(str(int(v)) if v.is_integer() else repr(v))
        return out
    cells = [col.cells[i] for i in rows]
    if col.kind == "nominal":
        for i, v in zip(rows, cells, strict=True):
            if v not in col.levels:  # type: ignore[operator]
                raise DataFormatError(
                    f"{path}:{col.lines[i]}: target {col.name!r}: value {v!r} not among the "
                    f"declared {col.levels}"
                )
    return [str(v) for v in cells]
