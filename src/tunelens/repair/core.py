"""What every repair method shares: the registry, its options, and the result it hands back.

A repair takes the base model and the tuned model (full checkpoint or PEFT adapter) plus method options and
writes one candidate: a `save_pretrained` model folder or a PEFT adapter folder that `resolve_model` loads.
Methods register by name, so the config, the CLI (`tunelens repair --method NAME`) and the report find them;
each module keeps its options dataclass beside its code, and adding a method never edits the others.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TunelensError, suggest
from ..registry import registrar

REPAIRS: dict[str, type["Repair"]] = {}

register = registrar(REPAIRS)


@dataclass
class RepairResult:
    method: str
    out: Path  # the candidate: a model folder (kind "model") or a PEFT adapter folder (kind "adapter")
    kind: str
    options: dict = field(default_factory=dict)
    modules: list[dict] = field(default_factory=list)  # per module/tensor: what the method saw and did
    summary: dict = field(default_factory=dict)  # e.g. {"projected": 12, "modules": 210}


class Repair:
    """Subclasses set `Options` (a dataclass of the method's settings) and implement `run`."""

    name = "repair"
    description = ""

    @dataclass
    class Options:
        pass

    def run(self, base: str, tuned: str, out: Path, opts: Any, *, progress: bool = True) -> RepairResult:
        raise NotImplementedError  # pragma: no cover - interface


def make_options(method: str, options: dict | None):
    """The method's Options from a plain dict, unknown keys named with the valid ones."""
    cls = get(method)
    valid = {f.name for f in dataclasses.fields(cls.Options)}
    unknown = sorted(set(options or {}) - valid)
    if unknown:
        raise TunelensError(f"repair method {method!r}: unknown option(s) {', '.join(unknown)}; "
                            f"valid: {', '.join(sorted(valid)) or '(none)'}")
    return cls.Options(**(options or {}))


def get(method: str) -> type[Repair]:
    if method not in REPAIRS:
        raise TunelensError(f"unknown repair method {method!r}"
                            + suggest(method, REPAIRS, "") + f"; available: {', '.join(sorted(REPAIRS))}")
    return REPAIRS[method]


def repair(base: str | None, tuned: str, method: str, out, *, progress: bool = True, **options) -> RepairResult:
    """Run one repair method and write its candidate to `out` (base None: the tuned adapter's base)."""
    cls = get(method)
    opts = make_options(method, options)
    return cls().run(None if base is None else str(base), str(tuned), Path(out), opts, progress=progress)
