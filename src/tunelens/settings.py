"""Settings defined once: a dataclass field holds a setting's name, type, default and help text, and the CLI
options, the YAML sections and the Python API defaults are all read from it.

Why: the same setting written in several places drifts (graft's defaults once disagreed three ways; a comment
gave IA3 a learning rate the code did not use). Here a command's options are generated from the fields of its
settings class (`cli_options`), so `tunelens tune --help` states TuneConfig's default because it *is*
TuneConfig's default, and a YAML section loads into the same class, whose `__post_init__` checks every value.

A field made with `setting(default, "help", ...)` carries its CLI spelling in `metadata`:
  flag     the option name when it is not --field-name (e.g. "--lr" for learning_rate), short its one-letter alias
  cli      False keeps a setting out of the command line (still settable in YAML, and with `tune --set`)
  each     for a list: "repeat" (--task A --task B) or "comma" (--suites task,safety)
  says_default  the help text already states the default (it is not appended)
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from typing import Any, Optional

MISSING = dataclasses.MISSING


def setting(default=MISSING, help: str = "", *, factory=None, flag: str | None = None, short: str | None = None,
            cli: bool = True, each: str = "repeat", metavar: str | None = None,
            says_default: bool = False):
    """A dataclass field that is also a documented, typed command-line option (see the module docstring)."""
    meta = {"help": help, "flag": flag, "short": short, "cli": cli, "each": each, "metavar": metavar,
            "says_default": says_default}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def default_of(f: dataclasses.Field):
    """A field's default value (a fresh one for a factory); MISSING when it has none."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def defaults(cls) -> dict[str, Any]:
    """Every field's default, by name."""
    return {f.name: default_of(f) for f in dataclasses.fields(cls)}


def shown(value) -> str:
    """A default as help text states it: 0.0003 as 3e-05-style %g, lists as a, b."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(shown(v) for v in value) or "none"
    if isinstance(value, dict):
        return ", ".join(f"{k}={shown(v)}" for k, v in value.items()) or "none"
    return str(value)


def _option_type(hint):
    """The click-friendly type of a field: Optional[X] for scalars, Optional[list[str]] for lists, None when
    the field cannot be a plain option (a union of unrelated types)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if len(args) != 1:
            return None
        hint = args[0]
        origin = typing.get_origin(hint)
    if origin in (list, tuple):
        inner = (typing.get_args(hint) or (str,))[0]
        return Optional[list[inner if inner in (str, int, float) else str]]
    if origin is dict or hint is dict:
        return Optional[list[str]]
    if hint in (str, int, float, bool):
        return Optional[hint]
    return None


def _help(f: dataclasses.Field, with_default: bool) -> str:
    """The field's help with its default stated ("LoRA rank (default 16)."), unless the help already says it."""
    text = f.metadata.get("help", "")
    value = default_of(f)
    if not with_default or f.metadata.get("says_default") or value is None or value is MISSING or value in ([], {}):
        return text
    if isinstance(value, bool):
        said = "on by default" if value else "off by default"
    else:
        said = f"default {shown(value)}"
    return f"{text.rstrip('.')} ({said})." if text else said


def cli_options(cls, *, only: tuple[str, ...] | None = None, skip: tuple[str, ...] = (), unset: bool = False,
                into: str = "settings"):
    """Decorate a typer command so that it takes one option per field of `cls` (the fields marked cli=True,
    narrowed by `only` / `skip`), and receives them as a dict in its parameter `into`.

    unset=False: each option's default is the field's default (the same object), so the command's defaults
    cannot drift from the class. unset=True: the options default to None meaning "not given" (for commands
    that merge a YAML file under the flags, like `tune --config`), and the help text states the class default.
    A mapping field is a repeated KEY=VALUE option and arrives as that list of strings (see `parse_pairs`); a
    comma list arrives as the text given (see `split`).
    """
    hints = typing.get_type_hints(cls)
    chosen = [f for f in dataclasses.fields(cls)
              if f.metadata.get("cli", True) and f.name not in skip and (only is None or f.name in only)]

    def decorate(fn):
        sig = inspect.signature(fn)
        hand = [p for p in sig.parameters.values() if p.name != into]
        import typer

        generated = []
        for f in chosen:
            kind = _option_type(hints[f.name])
            if kind is None:
                raise TypeError(f"{cls.__name__}.{f.name}: give it cli=False or a plain type")  # a programming error
            m = f.metadata
            name = m.get("flag") or "--" + f.name.replace("_", "-")
            decls = [name] + ([m["short"]] if m.get("short") else [])
            scalar = typing.get_args(kind)[0]
            if scalar is bool:
                decls = [f"{name}/--no-{name[2:]}"] + decls[1:]
            default = None if unset else default_of(f)
            if not unset and isinstance(default, dict):
                default = [f"{k}={v}" for k, v in default.items()] or None
            if not unset and isinstance(default, list) and not default:
                default = None
            text = _help(f, unset)
            if m.get("each") == "comma" and typing.get_origin(scalar) is list:
                kind = Optional[str]
                default = ",".join(map(str, default)) if isinstance(default, list) else default
            option = typer.Option(default, *decls, help=text, metavar=m.get("metavar"),
                                  show_default=not unset and default is not None and not isinstance(default, list))
            generated.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                               annotation=kind))
        names = [p.name for p in generated]
        clash = set(names) & {p.name for p in hand}
        if clash:
            raise TypeError(f"{fn.__name__}: {sorted(clash)} written by hand and generated from {cls.__name__}")

        @functools.wraps(fn)
        def command(*args, **kwargs):
            values = {n: kwargs.pop(n) for n in names if n in kwargs}
            previous = kwargs.pop(into, None) or {}
            return fn(*args, **kwargs, **{into: {**previous, **values}})

        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.kind == p.POSITIONAL_OR_KEYWORD else p
                  for p in hand]
        command.__signature__ = sig.replace(parameters=params + generated)
        hand_hints = typing.get_type_hints(fn)
        command.__annotations__ = {**{p.name: hand_hints.get(p.name, p.annotation) for p in hand},
                                   **{p.name: p.annotation for p in generated}}
        return command

    return decorate


def unknown_key(key: str, valid, where: str = ""):
    """The error for a key no settings class has: "unknown key 'x'" with the closest valid one, else the list."""
    from .errors import TunelensError, suggest

    return TunelensError(f"{where}unknown key '{key}'" + suggest(key, valid, f"; valid keys: {', '.join(valid)}",
                                                                 cutoff=0.5))


def load_section(cls, raw, name: str = "", where: str = "", lines: dict | None = None, *,
                 line_of_unknown: bool = False):
    """A YAML mapping loaded into settings class `cls` (a run config's section `name`, or a whole file when
    `name` is ""): an unknown key is an error with the closest valid one, a value of the wrong type or range
    names the file, the key's line, the section and what the value must be (`cls.__post_init__`'s checks).
    `where`: the message prefix naming the file ("run.yaml: "); `lines`: its keys' lines (checks.key_lines)."""
    from . import checks as C
    from .errors import TunelensError

    lines = lines or {}
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise TunelensError(f"{where}" + (f"section '{name}' must be a mapping of settings" if name else
                                          "expected a mapping of settings"))
    valid = [f.name for f in dataclasses.fields(cls)]
    dotted = (lambda k: f"{name}.{k}") if name else str
    for key in raw:
        if key not in valid:
            at = C.at_line(where, lines.get(dotted(key))) if line_of_unknown else where
            raise unknown_key(dotted(key), [dotted(v) for v in valid], at)
    try:
        return cls(**raw)
    except C.BadSetting as e:
        raise e.located(where, lines, name) from None
    except (TypeError, TunelensError) as e:
        raise TunelensError(f"{where}" + (f"section '{name}': " if name else "") + str(e)) from None


def split(value: str | list | None) -> list[str] | None:
    """A comma option's text as a list (None stays None: not given)."""
    if value is None or isinstance(value, list):
        return value
    return [s.strip() for s in value.split(",") if s.strip()]


def parse_pairs(items: list[str] | None, flag: str, example: str, key: str = "KEY") -> dict[str, float]:
    """Repeated KEY=VALUE options as a mapping, each VALUE a number; a malformed one says how to write it."""
    from .errors import TunelensError

    out: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = None
        if not sep or not name.strip() or number is None:
            raise TunelensError(f"{flag} '{item}': write {key}=VALUE, e.g. {flag} {example}")
        out[name.strip()] = number
    return out


def parse_sets(items: list[str] | None, cls) -> dict[str, Any]:
    """`--set key=value` (repeatable) as settings of `cls`: the value is read as YAML (16, 0.5, [a, b], null),
    an unknown key is an error with the closest valid one."""
    import yaml

    from .errors import TunelensError, suggest

    valid = [f.name for f in dataclasses.fields(cls)]
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise TunelensError(f"--set '{item}': write KEY=VALUE, e.g. --set {valid[0]}=...")
        if key not in valid:
            raise TunelensError(f"--set: unknown setting '{key}'" + suggest(key, valid))
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise TunelensError(f"--set {key}: '{value}' is not a YAML value (quote text with spaces)") from None
    return out


def build(cls, values: dict):
    """`cls(**values)` for values given as options: a bad one is named by its flag (--limit, not limit)."""
    from .checks import BadSetting

    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = {k: v for k, v in values.items() if v is not None or default_of(fields[k]) is None}  # an unset list
    try:
        return cls(**values)
    except BadSetting as e:
        f = fields.get(e.key)
        text = str(e)
        if f is None or not text.startswith(e.key):
            raise
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        raise BadSetting(e.key, flag + text[len(e.key):]) from None


def given(values: dict) -> dict:
    """The options the user gave (an unset option is None)."""
    return {k: v for k, v in values.items() if v is not None}
