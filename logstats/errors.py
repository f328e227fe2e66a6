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
