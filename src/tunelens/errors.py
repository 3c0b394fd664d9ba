"""One exception type for every user-facing error: the CLI prints its message on one line and exits 2."""


class TunelensError(Exception):
    """An error caused by the user's input (data, model path, config). Message says what and where."""

    exit_code = 2


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


class ModelError(TunelensError):
    """A model path, checkpoint or tokenizer that cannot be used as asked."""
