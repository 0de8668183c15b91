"""Bulk label files: CSV with a header row, or JSON lines. Pure parsing, no validation of values.

Each row comes back with its line number so a rejected row can be pointed at in the answer;
rows that cannot even be parsed come back as errors, the rest carry on (nothing is dropped
silently, one bad line never costs the good ones).
"""

from __future__ import annotations

import csv
import io
from typing import Any

import orjson

CSV_TYPES = ("text/csv", "application/csv")
NDJSON_TYPES = ("application/x-ndjson", "application/jsonl", "application/json-lines",
                "application/json")


class BulkFormatError(ValueError):
    """The file as a whole cannot be read (wrong type, not UTF-8, no header)."""


def parse_bulk(body: bytes, content_type: str
               ) -> tuple[list[tuple[int, dict[str, Any]]], list[dict[str, Any]]]:
    """(rows as (line, object), errors as {"line", "error"})."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BulkFormatError(f"file is not UTF-8 text ({exc.reason} at byte {exc.start})") \
            from None
    if content_type in CSV_TYPES:
        return _csv(text)
    if content_type in NDJSON_TYPES:
        return _ndjson(text)
    raise BulkFormatError(f"content type must be text/csv (with a header row) or "
                          f"application/x-ndjson; got {content_type or 'none'!r}")


def _csv(text: str) -> tuple[list[tuple[int, dict[str, Any]]], list[dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames:
        raise BulkFormatError("CSV has no header row (e.g. id,number,label,note)")
    rows: list[tuple[int, dict[str, Any]]] = []
    errors: list[dict[str, Any]] = []
    for row in reader:
        line = reader.line_num
        if None in row:
            errors.append({"line": line, "error": "more cells than header columns"})
            continue
        values = {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items()
                  if k is not None}
        if not any(values.values()):
            continue
        rows.append((line, {k: v for k, v in values.items() if v not in (None, "")}))
    return rows, errors


def _ndjson(text: str) -> tuple[list[tuple[int, dict[str, Any]]], list[dict[str, Any]]]:
    rows: list[tuple[int, dict[str, Any]]] = []
    errors: list[dict[str, Any]] = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            errors.append({"line": line, "error": f"not JSON: {exc.msg}"})
            continue
        if not isinstance(obj, dict):
            errors.append({"line": line, "error": "not a JSON object"})
            continue
        rows.append((line, obj))
    return rows, errors
