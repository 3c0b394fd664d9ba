"""Checks for every value that enters from a config file, a flag or a caller, done where it enters.

A bad value is one line naming the setting, what it must be and what it was ("limit must be an integer >= 1,
got -5"), raised as `BadSetting` (a TunelensError: exit 2) which keeps the setting's name, so a loader can add
the file and the line the key is on (`key_lines`, `at_line`). Without these checks a negative limit slices
items from the end, a zero batch size fails deep inside training and a string fails a suite at run time.
"""

from __future__ import annotations

import math
from pathlib import Path

from .errors import DataError, TunelensError


class BadSetting(TunelensError):
    """A setting with a value of the wrong type or out of range; `key` is the setting's name."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key

    def located(self, where: str, lines: dict, section: str = "") -> "BadSetting":
        """This error with its place: `where` "FILE: ", the key's line from `lines` (key_lines), the section."""
        line = lines.get(f"{section}.{self.key}" if section else self.key)
        return BadSetting(self.key, at_line(where, line) + (f"section '{section}': " if section else "") + str(self))


def got(value) -> str:
    """A value as the user wrote it, with its type when that is the problem: 'ten' (a string), true (a boolean)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (int, float)):
        return repr(value)
    kind = {str: "a string", list: "a list", tuple: "a list", dict: "a mapping"}.get(type(value),
                                                                                     type(value).__name__)
    text = repr(value)
    return f"{text if len(text) <= 60 else text[:57] + '...'} ({kind})"


def _fail(name: str, what: str, value) -> BadSetting:
    return BadSetting(name.rpartition(".")[2], f"{name} must be {what}, got {got(value)}")


def integer(value, name: str, minimum: int = 1, *, null: bool = False, also: tuple = (), what: str | None = None):
    """`value` if it is an int >= minimum (or one of `also`, or None when `null`); a bool is not an int."""
    if value is None and null:
        return None
    what = what or f"an integer >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, int) or not (value >= minimum or value in also):
        raise _fail(name, what, value)
    return value


def number(value, name: str, *, above=None, at_least=None, below=None, at_most=None, null: bool = False):
    """`value` as a float if it is a finite int or float within the bounds (above/below are strict)."""
    if value is None and null:
        return None
    low = f"({above:g}" if above is not None else f"[{at_least:g}" if at_least is not None else None
    high = f"{below:g})" if below is not None else f"{at_most:g}]" if at_most is not None else None
    if low and high:
        what = f"a number in {low}, {high}"
    elif low:
        what = f"a number {'>' if above is not None else '>='} {low[1:]}"
    elif high:
        what = f"a number {'<' if below is not None else '<='} {high[:-1]}"
    else:
        what = "a number"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = ((above is None or value > above) and (at_least is None or value >= at_least)
              and (below is None or value < below) and (at_most is None or value <= at_most))
    if not ok:
        raise _fail(name, what, value)
    return float(value)


def flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(name, "true or false", value)
    return value


def text(value, name: str, *, null: bool = False) -> str | None:
    if value is None and null:
        return None
    if not isinstance(value, str):
        raise _fail(name, "a string", value)
    return value


def strings(value, name: str, *, null: bool = False, example: str = "") -> list[str] | None:
    """A list of strings; a lone string is an error (it would be read letter by letter), with `example`."""
    if value is None and null:
        return None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise _fail(name, "a list of strings" + (f", e.g. {example}" if example else ""), value)
    return list(value)


def mappings(value, name: str, *, example: str = "") -> list[dict]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, dict) for v in value):
        raise _fail(name, "a list of mappings" + (f", e.g. {example}" if example else ""), value)
    return list(value)


# ------------------------------------------------------------------------------------------------ YAML files


def read_yaml(path: str | Path):
    """The file's YAML; a syntax error names the file and its line (one line, exit 2)."""
    import yaml

    path = Path(path)
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or str(e).splitlines()[0]
        column = f" (column {mark.column + 1})" if mark else ""
        raise DataError(f"invalid YAML: {problem}{column}", path, mark.line + 1 if mark else None) from None
    except yaml.YAMLError as e:
        raise DataError(f"invalid YAML: {str(e).splitlines()[0]}", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read the file: {e}", path) from None


def key_lines(path: str | Path) -> dict[str, int]:
    """1-based line of each key of a YAML mapping, nested keys dotted ("audit.limit"); {} if unreadable."""
    import yaml

    try:
        root = yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    out: dict[str, int] = {}

    def walk(node, prefix):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode):
                    out[prefix + k.value] = k.start_mark.line + 1  # a repeated key: the last one counts
                    walk(v, f"{prefix}{k.value}.")

    walk(root, "")
    return out


def at_line(where: str, line: int | None) -> str:
    """A "FILE: " message prefix with the line put in: "run.yaml:7: "."""
    if line is None or not where.endswith(": "):
        return where
    return f"{where[:-2]}:{line}: "
