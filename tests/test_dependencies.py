"""Every third-party package that src/tunelens imports is a declared runtime dependency.

Why: a green `make test` installs the dev extras, and their dependencies can hide a package the product needs
but pyproject.toml does not declare. That happened with scipy: lm-eval and mergekit pulled it in, so the tests
passed while a plain `pip install tunelens` lost the safety suites to a ModuleNotFoundError. This test reads the
imports from the source (the AST, every `import` and `from ... import`, at any depth), maps each top-level module
to the distributions that provide it in this environment, and fails unless one of them is in
`[project.dependencies]`. An import that only an optional extra needs is listed in OPTIONAL with the extra's name,
and the file must try it inside a `try: ... except ImportError` (before using it) so that its absence becomes a
clear error, not a traceback.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "tunelens"
# top-level module -> the optional extra (in [project.optional-dependencies]) that provides it
OPTIONAL = {"lm_eval": "lmeval"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_names(reqs: list[str]) -> set[str]:
    return {_norm(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", r).group(1)) for r in reqs}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def imports_of(path: Path) -> list[tuple[str, int, bool]]:
    """(top-level module, line, guarded by `except ImportError`) for every absolute import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    guarded_lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(_catches_import_error(h) for h in node.handlers):
            for stmt in node.body:
                for sub in ast.walk(stmt):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)):
                        guarded_lines.add(sub.lineno)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name.split(".")[0], node.lineno, node.lineno in guarded_lines) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module.split(".")[0], node.lineno, node.lineno in guarded_lines))
    return out


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names)


def undeclared(src: Path, declared: set[str], optional: dict[str, str], extras: dict[str, set[str]]) -> list[str]:
    """One message per import whose distribution is not declared (or whose extra is not, or is not guarded)."""
    dists = md.packages_distributions()
    problems = []
    for path in sorted(src.rglob("*.py")):
        rel = path.relative_to(src.parent)
        found = imports_of(path)
        probed = {m for m, _, guarded in found if guarded}  # the file tries the module before using it
        for module, line, _ in found:
            guarded = module in probed
            if module in sys.stdlib_module_names or module == "tunelens":
                continue
            where = f"{rel}:{line}"
            if module in optional:
                extra = optional[module]
                provided = {_norm(d) for d in dists.get(module, [])}
                if extra not in extras:
                    problems.append(f"{where}: '{module}' is listed for the extra '{extra}', which pyproject.toml "
                                    "does not define")
                elif provided and not provided & extras[extra]:
                    problems.append(f"{where}: '{module}' comes from {sorted(provided)}, not in the extra '{extra}'")
                elif not guarded:
                    problems.append(f"{where}: '{module}' belongs to the optional extra '{extra}' but its import is "
                                    "never tried inside try/except ImportError in this file")
                continue
            provided = {_norm(d) for d in dists.get(module, [])}
            if not provided:
                problems.append(f"{where}: no installed distribution provides '{module}'")
            elif not provided & declared:
                problems.append(f"{where}: '{module}' (distribution {', '.join(sorted(provided))}) is not in "
                                "[project.dependencies]")
    return problems


def test_every_import_is_a_declared_dependency():
    project = _pyproject()["project"]
    declared = _requirement_names(project["dependencies"])
    extras = {name: _requirement_names(reqs) for name, reqs in project.get("optional-dependencies", {}).items()}
    problems = undeclared(SRC, declared, OPTIONAL, extras)
    assert not problems, "imports the runtime install would lack:\n" + "\n".join(problems)


def test_the_check_catches_a_missing_dependency(tmp_path):
    """Guards the guard: a module importing scipy, with scipy undeclared, is named with file and line."""
    pkg = tmp_path / "tunelens"
    pkg.mkdir()
    (pkg / "m.py").write_text("import json\n\ndef f():\n    from scipy.stats import binomtest\n    return binomtest\n")
    (pkg / "opt.py").write_text("def g():\n    import lm_eval\n")
    problems = undeclared(pkg, {"numpy"}, {"lm_eval": "lmeval"}, {"lmeval": {"lm-eval"}})
    assert any("tunelens/m.py:4" in p and "'scipy'" in p for p in problems), problems
    assert any("tunelens/opt.py:2" in p and "never tried inside try/except ImportError" in p for p in problems), problems
    assert not any("json" in p for p in problems)
    fixed = undeclared(pkg, {"numpy", "scipy"}, {"lm_eval": "lmeval"}, {"lmeval": {"lm-eval"}})
    assert len(fixed) == 1 and "opt.py:2" in fixed[0], fixed
