"""Read rows from JSONL, JSON, CSV, Parquet files or a `datasets` dataset ("hf:name[:config]").

Every row remembers where it came from for error messages: `path:line` with the 1-based line
number for JSONL and CSV, the 0-based element index for JSON arrays, and the 0-based row index
for Parquet and `datasets`.

Size limits. One oversized item (a whole document pasted into a field, a file that lost its line
breaks) used to run for minutes and take gigabytes before anything failed, so the readers refuse it
up front with the file and line:

- a JSONL or CSV line, a CSV row (its lines together), and a JSON, Parquet or `datasets` item (as a
  JSON line) may be at most ``MAX_LINE_BYTES`` (1 MiB) long; the environment variable
  ``TUNELENS_MAX_LINE_BYTES`` overrides it (a number of bytes). Lines are read with a bounded
  ``readline``, so a giant line is measured, not held in memory.
- a whole-file ``.json`` array is parsed in one piece, so it may be at most ``MAX_JSON_BYTES``
  (64 MiB); ``TUNELENS_MAX_JSON_BYTES`` overrides it. JSONL, read line by line, has no such cap.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, TunelensError

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
HF_PREFIX = "hf:"

MAX_LINE_BYTES = 1 << 20  # default longest line/row/item; TUNELENS_MAX_LINE_BYTES overrides it
MAX_JSON_BYTES = 64 << 20  # default largest whole-file .json; TUNELENS_MAX_JSON_BYTES overrides it
LINE_ENV = "TUNELENS_MAX_LINE_BYTES"
JSON_ENV = "TUNELENS_MAX_JSON_BYTES"
_SPLIT_HINT = "split or shorten the item"


def _limit(env: str, default: int) -> int:
    """The byte limit set in `env`, else `default`; read at every call so a changed environment applies."""
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise TunelensError(f"{env} must be a positive number of bytes, got '{raw}'")
    return value


def max_line_bytes() -> int:
    """Longest line, CSV row or item (bytes) the readers accept: TUNELENS_MAX_LINE_BYTES or MAX_LINE_BYTES."""
    return _limit(LINE_ENV, MAX_LINE_BYTES)


def max_json_bytes() -> int:
    """Largest whole-file .json (bytes) the readers parse: TUNELENS_MAX_JSON_BYTES or MAX_JSON_BYTES."""
    return _limit(JSON_ENV, MAX_JSON_BYTES)


@dataclass
class Row:
    values: dict
    path: str
    line: int

    @property
    def source(self) -> str:
        return f"{self.path}:{self.line}"


def is_hf(source: str) -> bool:
    return str(source).startswith(HF_PREFIX)


def read_source(source: str | list[str], base_dir: Path, hf_split: str = "train") -> list[Row]:
    """Rows of one source or a list of sources (concatenated); file paths are relative to `base_dir`."""
    if isinstance(source, (list, tuple)):
        return [row for s in source for row in read_source(s, base_dir, hf_split)]
    if is_hf(source):
        return read_hf(source, hf_split)
    return read_file(Path(base_dir) / source)


def read_file(path: Path) -> list[Row]:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise DataError(f"unsupported file type '{suffix or path.name}'; use .jsonl, .json, .csv, .parquet "
                        "or hf:<dataset>", path)
    if not path.is_file():
        raise DataError("file not found" if not path.exists() else "not a file", path)
    limit = max_line_bytes()
    try:
        if suffix == ".parquet":
            rows = _read_parquet(path, limit)
        elif suffix == ".json":
            rows = _read_json(path, limit)
        else:
            with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
                lines = _Lines(f, str(path), limit)
                rows = _read_jsonl(lines) if suffix == ".jsonl" else _read_csv(lines)
    except DataError:
        raise
    except UnicodeDecodeError as e:
        raise DataError(f"cannot read file: not UTF-8 text ({e.reason} at byte {e.start})", path) from None
    except Exception as e:  # permissions, corrupt parquet, ...
        raise DataError(f"cannot read file: {e}", path) from None
    if not rows:
        raise DataError("contains no items", path)
    return rows


class _Lines:
    """The lines of a UTF-8 text file (terminators kept), never holding more than `limit` + 2 characters of
    one line: a longer line is measured in bounded chunks and refused with its size in bytes.

    `f` is opened with ``newline=""`` (lines end at "\\n", "\\r\\n" or "\\r", as the csv module wants) and
    ``errors="surrogateescape"``, so a byte that is not UTF-8 is reported with its own line, not the line of
    whatever chunk the decoder happened to be on. ``mark()`` starts a record (a CSV row may span lines):
    the lines read since then may together be at most `limit` bytes too, so an unclosed quote cannot
    swallow the rest of the file either.
    """

    def __init__(self, f, path: str, limit: int):
        self.f, self.path, self.limit = f, path, limit
        self.line_no = 0  # of the line last returned
        self.mark()

    def mark(self) -> None:
        self.record_start, self.record_bytes = self.line_no + 1, 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self.f.readline(self.limit + 2)  # room for the longest allowed line and its "\r\n"
        if not line:
            raise StopIteration
        self.line_no += 1
        body = line.rstrip("\r\n")
        try:
            size = len(body.encode("utf-8"))
        except UnicodeEncodeError as e:  # an undecodable byte, escaped as a lone surrogate
            raise DataError(f"cannot read file: not UTF-8 text (byte 0x{ord(body[e.start]) - 0xDC00:02x} "
                            f"at column {e.start + 1})", self.path, self.line_no) from None
        if size > self.limit:
            if len(line) == len(body) and len(line) == self.limit + 2:  # cut by readline: measure the rest
                size += self._rest_of_line()
            raise DataError(f"line is {size:,} bytes, over the {self.limit:,}-byte limit ({LINE_ENV}); "
                            f"{_SPLIT_HINT}", self.path, self.line_no)
        self.record_bytes += size
        if self.record_bytes > self.limit:
            raise DataError(f"row (lines {self.record_start}-{self.line_no}) is over the {self.limit:,}-byte "
                            f"limit ({LINE_ENV}); check for an unclosed quote, or {_SPLIT_HINT}", self.path,
                            self.record_start)
        return line

    def _rest_of_line(self) -> int:
        """Bytes left in the current line, without its terminator; reads on in 64 Ki-character chunks."""
        n = 0
        while chunk := self.f.readline(1 << 16):
            body = chunk.rstrip("\r\n")
            n += len(body.encode("utf-8", "surrogateescape"))
            if len(body) < len(chunk):
                break
        return n


def _read_jsonl(lines: _Lines) -> list[Row]:
    rows, path = [], lines.path
    for line in lines:
        lines.mark()
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON: {e.msg} (column {e.colno})", path, lines.line_no) from None
        rows.append(Row(_as_object(value, path, lines.line_no), path, lines.line_no))
    return rows


def _read_json(path: Path, limit: int) -> list[Row]:
    cap, size = max_json_bytes(), path.stat().st_size
    if size > cap:
        raise DataError(f"file is {size:,} bytes, over the {cap:,}-byte limit for a whole-file JSON array "
                        f"({JSON_ENV}); write it as JSONL, one item per line", path)
    text = path.read_text(encoding="utf-8-sig")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e.msg} (column {e.colno})", path, e.lineno) from None
    if not isinstance(value, list):
        raise DataError(f"expected a JSON array of objects, got a JSON {_json_type(value)}", path)
    return [Row(_check_size(_as_object(v, str(path), i), str(path), i, limit), str(path), i)
            for i, v in enumerate(value)]


def _read_csv(lines: _Lines) -> list[Row]:
    path = lines.path
    # csv's own field limit (131,072 characters) would refuse fields our byte limit allows; a field is never
    # longer than its row, which _Lines bounds, so lift it while reading and restore it afterwards
    old = csv.field_size_limit(max(csv.field_size_limit(), lines.limit))
    try:
        reader = csv.DictReader(lines)
        reader.fieldnames  # reads the header row
        rows, end = [], reader.line_num  # line_num after the header row
        lines.mark()
        for record in reader:
            # a quoted field may span several lines: the record starts just after the previous one ended
            start, end = end + 1, reader.line_num
            lines.mark()
            if None in record:
                raise DataError("row has more values than the header has columns", path, start)
            # an empty cell is a missing value
            rows.append(Row({k: (v if v != "" else None) for k, v in record.items()}, path, start))
    finally:
        csv.field_size_limit(old)
    return rows


def _read_parquet(path: Path, limit: int) -> list[Row]:
    import pyarrow.parquet as pq

    return [Row(_check_size(v, str(path), i, limit), str(path), i)
            for i, v in enumerate(pq.read_table(path).to_pylist())]


def read_hf(source: str, split: str) -> list[Row]:
    """`hf:name[:config]` through datasets.load_dataset; class-label columns become their names."""
    name, _, config = source[len(HF_PREFIX):].partition(":")
    limit = max_line_bytes()
    try:
        import datasets

        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as e:
        raise DataError(f"cannot load split '{split}': {type(e).__name__}: {e}", source) from None
    names = {col: feat.names for col, feat in ds.features.items() if isinstance(feat, datasets.ClassLabel)}
    rows = []
    for i, v in enumerate(ds.to_list()):
        for col, labels in names.items():
            if isinstance(v.get(col), int) and 0 <= v[col] < len(labels):
                v[col] = labels[v[col]]
        rows.append(Row(_check_size(v, source, i, limit), source, i))
    if not rows:
        raise DataError(f"split '{split}' contains no items", source)
    return rows


def _check_size(value: dict, path: str, line: int, limit: int) -> dict:
    """`value`, unless written as a JSON line it would be over `limit` bytes: the JSONL rule for every format."""
    size = len(json.dumps(value, ensure_ascii=False, default=str).encode("utf-8"))
    if size > limit:
        raise DataError(f"item is {size:,} bytes as a JSON line, over the {limit:,}-byte limit ({LINE_ENV}); "
                        f"{_SPLIT_HINT}", path, line)
    return value


def _as_object(value, path: str, line: int) -> dict:
    if not isinstance(value, dict):
        raise DataError(f"expected a JSON object, got a JSON {_json_type(value)}", path, line)
    return value


def _json_type(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")
