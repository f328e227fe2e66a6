"""Exceptions, kept apart so that every module can import them without import loops."""


class LogstatsError(Exception):
    """An error the user can act on; the CLI prints it as one line and exits 1."""


class ConfigError(LogstatsError):
    """The configuration file is missing, not YAML, or has a bad key or value."""


class StoreError(LogstatsError):
    """The database cannot be opened or written."""


class StoreLockedError(StoreError):
    """Another process holds the database's write lock."""


class SchemaError(StoreError):
    """The database was written by a newer logstats (unknown migrations)."""


class SourceError(LogstatsError):
    """A log file cannot be found or read."""


def cause_of(exc: BaseException) -> str:
    """The first line of what really went wrong behind ``exc``.

    A failure while cleaning up (a ROLLBACK on a full disk) is raised with the error that
    caused it as its ``__context__``: the innermost exception of the chain is the real cause,
    and an exhausted disk, wherever it appears in the chain, is named first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    for item in chain:
        text = str(item)
        if "No space left on device" in text or getattr(item, "errno", None) == 28:
            return _first_line(item)
    return _first_line(chain[-1])


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
