"""Bulk label files: CSV with a header row, or JSON lines. Pure parsing, no validation of values.

Each row comes back with its line number so a rejected row can be pointed at in the answer;
rows that cannot even be parsed come back as errors, the rest carry on (nothing is dropped
silently, one bad line never costs the good ones).

A file is bounded three ways, because parsing and validating rows costs CPU the API shares with
every other request: bytes (``api_max_bulk_bytes``, checked while reading), rows
(:data:`MAX_BULK_ROWS`, a 413 as soon as the file has more) and the errors listed in an answer
(:data:`MAX_REPORTED_REJECTIONS`; the total is always given), so a million bad rows cost neither
a 70 MB answer nor the event loop (the route parses in a worker thread).
"""

from __future__ import annotations

import csv
import io
from typing import Any

import orjson

CSV_TYPES = ("text/csv", "application/csv")
NDJSON_TYPES = ("application/x-ndjson", "application/jsonl", "application/json-lines",
                "application/json")
#: Most data rows one bulk file may hold (blank lines excepted); split larger files.
MAX_BULK_ROWS = 200_000
#: Rejected rows listed in a bulk answer (first ones by line); ``rejected_total`` counts all.
MAX_REPORTED_REJECTIONS = 100

Rows = list[tuple[int, dict[str, Any]]]
Errors = list[dict[str, Any]]


class BulkFormatError(ValueError):
    """The file as a whole cannot be read (wrong type, not UTF-8, no header, broken CSV)."""


class BulkTooManyRows(ValueError):
    """The file has more than :data:`MAX_BULK_ROWS` rows (answered with a 413)."""


def parse_bulk(body: bytes, content_type: str, max_rows: int = MAX_BULK_ROWS
               ) -> tuple[Rows, Errors]:
    """(rows as (line, object), errors as {"line", "error"})."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BulkFormatError(f"file is not UTF-8 text ({exc.reason} at byte {exc.start})") \
            from None
    if content_type in CSV_TYPES:
        return _csv(text, max_rows)
    if content_type in NDJSON_TYPES:
        return _ndjson(text, max_rows)
    raise BulkFormatError(f"content type must be text/csv (with a header row) or "
                          f"application/x-ndjson; got {content_type or 'none'!r}")


def _too_many(max_rows: int) -> BulkTooManyRows:
    return BulkTooManyRows(f"more than {max_rows:,} rows in one file; split it into files of "
                           f"at most {max_rows:,} rows")


def _csv(text: str, max_rows: int) -> tuple[Rows, Errors]:
    reader = csv.DictReader(io.StringIO(text))
    rows: Rows = []
    errors: Errors = []
    try:
        if not reader.fieldnames:
            raise BulkFormatError("CSV has no header row (e.g. id,number,label,note)")
        for row in reader:
            line = reader.line_num
            if None in row:
                errors.append({"line": line, "error": "more cells than header columns"})
            else:
                values = {k.strip(): (v.strip() if isinstance(v, str) else v)
                          for k, v in row.items() if k is not None}
                if not any(values.values()):
                    continue
                rows.append((line, {k: v for k, v in values.items() if v not in (None, "")}))
            if len(rows) + len(errors) > max_rows:
                raise _too_many(max_rows)
    except csv.Error as exc:
        # e.g. a field longer than csv.field_size_limit(): the rest of the file cannot be
        # trusted to line up, so the file is refused as a whole, pointing at the line.
        raise BulkFormatError(f"CSV cannot be read at line {reader.line_num + 1}: {exc}") \
            from None
    return rows, errors


def _ndjson(text: str, max_rows: int) -> tuple[Rows, Errors]:
    rows: Rows = []
    errors: Errors = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        if len(rows) + len(errors) >= max_rows:
            raise _too_many(max_rows)
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


def first_rejections(rejected: Errors, limit: int = MAX_REPORTED_REJECTIONS) -> Errors:
    """The first ``limit`` rejections by line (the answer also gives the total)."""
    return sorted(rejected, key=lambda r: r["line"])[:limit]
