"""One exception type for every user-facing error: the CLI prints its message on one line and exits 2."""


def suggest(value, options, otherwise: str = "", cutoff: float = 0.6) -> str:
    """"; did you mean 'X'?" for the option closest to a mistyped value, else ``otherwise`` (e.g. the list)."""
    import difflib

    hint = difflib.get_close_matches(str(value), list(options), n=1, cutoff=cutoff)
    return f"; did you mean '{hint[0]}'?" if hint else otherwise


class TunelensError(Exception):
    """An error caused by the user's input (data, model path, config). Message says what and where."""

    exit_code = 2


class UnknownMetric(TunelensError):
    """A gate or a select expression names a metric the ledger does not have; `name` and `valid` let a caller
    act on it (e.g. say which suite would provide it) without reading the message."""

    def __init__(self, message: str, name: str, valid):
        super().__init__(message)
        self.name, self.valid = name, sorted(valid)


class DataError(TunelensError):
    """Malformed or unusable data. Built with the file, line and field when they are known."""

    def __init__(self, message: str, path=None, line: int | None = None, field: str | None = None):
        where = []
        if path is not None:
            where.append(str(path) + (f":{line}" if line is not None else ""))
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__((": ".join([", ".join(where), message])) if where else message)
        self.path, self.line, self.field = path, line, field
        self.detail = message  # without the location, to raise again with a line found later


class ModelError(TunelensError):
    """A model path, checkpoint or tokenizer that cannot be used as asked."""
