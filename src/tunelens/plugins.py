"""Plug-ins: audit suites, repair methods, tuning methods and objectives from outside the package, each one file.

A plug-in is a module whose classes register themselves (`audit.core.register`, `repair.core.register`,
`tune.methods.register`, `tune.objectives.register`) when it is imported. Two ways bring it in, both read by each registry when its package
is first imported, so every listing, `--help` text and config check sees the plug-ins from the start:

- an installed distribution's entry points in the group ``tunelens.suites``, ``tunelens.repairs``,
  ``tunelens.tuning_methods`` or ``tunelens.objectives`` (``toy = my_pkg.toy_suite``: loading it imports the module);
- ``TUNELENS_PLUGINS=mod_a,mod_b``: modules imported by name from ``sys.path`` (a file on ``PYTHONPATH`` is
  enough, no packaging).

A plug-in that fails to import is named in one line on stderr and left out, and tunelens goes on: the CLI reads
the registries to build its help, so raising would take every command down, `tunelens tasks` included, for a
plug-in it does not use. A command that does ask for the missing name gets the registry's "unknown ... did you
mean" error.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points

from .progress import log

ENV = "TUNELENS_PLUGINS"
SUITES, REPAIRS, TUNING_METHODS = "tunelens.suites", "tunelens.repairs", "tunelens.tuning_methods"
OBJECTIVES = "tunelens.objectives"

_loaded: set[str] = set()  # groups already loaded (a plug-in importing another registry must not loop back)
_failed: set[str] = set()  # plug-ins already reported: a TUNELENS_PLUGINS module is tried by all three registries

def import_builtins(package: str, path, skip: tuple[str, ...] = ()) -> None:
    """Import every module of a registry's own package (the folder `path`), so a built-in suite or method is a
    new file there and nothing else: no import line to add. `skip`: modules that register nothing and are
    costly to import."""
    import pkgutil

    for info in pkgutil.iter_modules(path):
        if not info.name.startswith("_") and info.name not in skip:
            importlib.import_module(f"{package}.{info.name}")


def load(group: str) -> None:
    """Import the plug-ins of one registry (its entry-point group, then every TUNELENS_PLUGINS module): once per
    process, at the end of the registry package's import."""
    if group in _loaded:
        return
    _loaded.add(group)
    for ep in entry_points(group=group):
        _import(f"'{ep.name}' (entry point {ep.value} in {group})", ep.load)
    for name in modules():
        _import(f"'{name}' ({ENV})", lambda name=name: importlib.import_module(name))


def modules() -> list[str]:
    """The module names in TUNELENS_PLUGINS (comma-separated; blanks ignored)."""
    return [m.strip() for m in os.environ.get(ENV, "").split(",") if m.strip()]


def _import(label: str, do) -> None:
    if label in _failed:
        return
    try:
        do()
    except Exception as e:  # any failure of someone else's module: name it, leave it out, go on
        _failed.add(label)
        log.error(f"tunelens: error: plug-in {label} failed to import ({type(e).__name__}: {_one_line(e)}); "
                  "it is left out")


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or "no message"
