"""Read rows from JSONL, JSON, CSV, Parquet files or a `datasets` dataset ("hf:name[:config]").

Every row remembers where it came from for error messages: `path:line` with the 1-based line
number for JSONL and CSV, the 0-based element index for JSON arrays, and the 0-based row index
for Parquet and `datasets`.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError

DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
HF_PREFIX = "hf:"


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
    try:
        if suffix == ".parquet":
            rows = _read_parquet(path)
        else:
            text = path.read_text(encoding="utf-8-sig")
            rows = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv}[suffix](text, str(path))
    except DataError:
        raise
    except UnicodeDecodeError as e:
        raise DataError(f"cannot read file: not UTF-8 text ({e.reason} at byte {e.start})", path) from None
    except Exception as e:  # permissions, corrupt parquet, ...
        raise DataError(f"cannot read file: {e}", path) from None
    if not rows:
        raise DataError("contains no items", path)
    return rows


def _read_jsonl(text: str, path: str) -> list[Row]:
    rows = []
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON: {e.msg} (column {e.colno})", path, line_no) from None
        rows.append(Row(_as_object(value, path, line_no), path, line_no))
    return rows


def _read_json(text: str, path: str) -> list[Row]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e.msg} (column {e.colno})", path, e.lineno) from None
    if not isinstance(value, list):
        raise DataError(f"expected a JSON array of objects, got a JSON {_json_type(value)}", path)
    return [Row(_as_object(v, path, i), path, i) for i, v in enumerate(value)]


def _read_csv(text: str, path: str) -> list[Row]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows, end = [], 1  # line_num after the header row
    for record in reader:
        # a quoted field may span several lines: the record starts just after the previous one ended
        start, end = end + 1, reader.line_num
        if None in record:
            raise DataError("row has more values than the header has columns", path, start)
        # an empty cell is a missing value
        rows.append(Row({k: (v if v != "" else None) for k, v in record.items()}, path, start))
    return rows


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow.parquet as pq

    return [Row(v, str(path), i) for i, v in enumerate(pq.read_table(path).to_pylist())]


def read_hf(source: str, split: str) -> list[Row]:
    """`hf:name[:config]` through datasets.load_dataset; class-label columns become their names."""
    name, _, config = source[len(HF_PREFIX):].partition(":")
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
        rows.append(Row(v, source, i))
    if not rows:
        raise DataError(f"split '{split}' contains no items", source)
    return rows


def _as_object(value, path: str, line: int) -> dict:
    if not isinstance(value, dict):
        raise DataError(f"expected a JSON object, got a JSON {_json_type(value)}", path, line)
    return value


def _json_type(value) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")
