"""Registration by name, shared by audit suites and repair methods (config, CLI and report find them there)."""

from __future__ import annotations


def registrar(table: dict):
    """A `register(name)` class decorator that sets `cls.name` and files the class in `table`."""

    def register(name: str):
        def wrap(cls):
            cls.name = name
            table[name] = cls
            return cls

        return wrap

    return register
