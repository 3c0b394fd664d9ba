"""Registration by name, shared by audit suites, repair methods and tuning methods (config, CLI and report find
them there)."""

from __future__ import annotations

from .errors import TunelensError


def registrar(table: dict):
    """A `register(name)` class decorator that sets `cls.name` and files the class in `table`.

    A name already taken by another class is an error, never a silent overwrite: two plug-ins claiming one name
    would otherwise leave whichever imported last. The same class again (a module reloaded) is allowed."""

    def register(name: str):
        def wrap(cls):
            old = table.get(name)
            if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
                raise TunelensError(f"'{name}' is already registered by {old.__module__}.{old.__qualname__}; "
                                    f"{cls.__module__}.{cls.__qualname__} needs another name")
            cls.name = name
            table[name] = cls
            return cls

        return wrap

    return register
