"""Queries over a fleet's Parquet export (``logstats.fleet.export``), with DuckDB or Spark.

The SQL is written once, in what DuckDB and Spark SQL both accept (no GLOB, list
functions, ``GROUP BY ALL`` or ``::`` casts; ``date_trunc``, ``CAST``, ``IN`` lists,
``LIKE ... ESCAPE``), over three views each engine defines alike: ``counters``, ``dims``
and ``events``, the exported columns plus ``host`` (a string) and ``day`` (the partition's
date, so that a window prunes partitions).  Values are bound as named parameters
(``:name``; DuckDB's ``$name``), timestamps as ``YYYY-MM-DD HH:MM:SS`` text cast in SQL and
read back as text, so neither engine's time zone handling touches them (Spark's session
zone is UTC).

The messages in each host's queue at its last export (``pending``, a snapshot) give
``inprogresscount``; searches have no ``inprogress`` rows (their recipients are not exported).

Hosts export while the fleet is read: ``refresh`` defines the views again over the files as
they are now (a table whose last file was removed, or that got its first, and Spark's
listing of files), a question that meets a file removed since the views were defined is
asked once more after a ``refresh``, and ``stale`` tells that Spark's listing no longer
holds (a host's generation file changed: a partition may have been replaced).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from logstats.fleet.export import GENERATIONS, TEMP_PREFIX
from logstats.model import (
    SYSTEM,
    AccountStats,
    Dimension,
    SeriesRequest,
    SeriesRow,
    StatsRequest,
)
from logstats.store import COUNTER_COLUMNS, DIM_COLUMNS, DIM_KINDS, dim_kind, series_rows
from logstats.track import COLUMNS as EVENT_COLUMNS
from logstats.track import STORED_TYPES, TrackQuery, TrackRow

# the exported columns and their types (for a table no host has exported yet)
_TEXT = "STRING"
SCHEMAS: dict[str, tuple[tuple[str, str], ...]] = {
    "counters": (
        ("bucket", "TIMESTAMP"),
        *((c, _TEXT) for c in ("mta", "account", "sender_domain")),
        *((c, "BIGINT") for c in COUNTER_COLUMNS),
    ),
    "dims": (
        ("bucket", "TIMESTAMP"),
        *((c, _TEXT) for c in ("mta", "account", "sender_domain", "kind", "value")),
        *((c, "BIGINT") for c in DIM_COLUMNS),
        ("first_at", "TIMESTAMP"),
        ("last_at", "TIMESTAMP"),
    ),
    "events": tuple(
        (
            c,
            {"ts": "TIMESTAMP", "sent_at": "TIMESTAMP", "size": "BIGINT", "local": "BOOLEAN"}.get(
                c, _TEXT
            ),
        )
        for c in EVENT_COLUMNS
    ),
    "pending": (("account", _TEXT), ("accepted_at", "TIMESTAMP"), ("message", _TEXT)),
}
VIEWS = tuple(SCHEMAS)


def empty_view(table: str) -> str:
    """A view of no rows with ``table``'s columns (and host, day)."""
    cols = ", ".join(f"CAST(NULL AS {t}) AS {c}" for c, t in SCHEMAS[table])
    return f"SELECT {cols}, CAST(NULL AS STRING) AS host, CAST(NULL AS DATE) AS day WHERE 1 = 0"


class Sql:
    """A statement and its named parameters (``:name`` markers)."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self.text = ""

    def bind(self, value: Any) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f":{name}"


def _stamp(ts: datetime) -> str:
    return ts.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")


def _time(value: Any) -> datetime | None:
    """A timestamp read back as text (both engines' form), as an aware UTC datetime."""
    if value is None:
        return None
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


def _like(value: str) -> str:
    """``value`` as a LIKE operand matched literally (escape ``!``)."""
    return value.replace("!", "!!").replace("%", "!%").replace("_", "!_")


def _pattern(glob: str) -> str:
    """An address or domain pattern (``*``, ``?``) as a LIKE operand (escape ``!``)."""
    return _like(glob).replace("*", "%").replace("?", "_")


def _window(sql: Sql, column: str, start: datetime, end: datetime) -> list[str]:
    """The window on ``column``, and on ``day`` (the partitions it spans)."""
    return [
        f"{column} >= CAST({sql.bind(_stamp(start))} AS TIMESTAMP)",
        f"{column} < CAST({sql.bind(_stamp(end))} AS TIMESTAMP)",
        f"day >= CAST({sql.bind(start.astimezone(UTC).date().isoformat())} AS DATE)",
        f"day <= CAST({sql.bind(end.astimezone(UTC).date().isoformat())} AS DATE)",
    ]


def _hour(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _domain_patterns(sql: Sql, patterns: Sequence[str]) -> str:
    """Sender domains matching fnmatch patterns: ``*`` and ``?`` as LIKE; a ``[...]`` class
    is not kept by LIKE and is refused."""
    if any("[" in p for p in patterns):
        raise ValueError("domain patterns with [...] are not supported over the fleet")
    return (
        "("
        + " OR ".join(f"sender_domain LIKE {sql.bind(_pattern(p))} ESCAPE '!'" for p in patterns)
        + ")"
    )


def _account_window(sql: Sql, column: str, req: StatsRequest, host: str | None) -> str:
    """The conditions of a StatsRequest: its window on ``column``, its account, the host."""
    where = _window(sql, column, _hour(req.start), req.end)
    if req.account is not None:
        where.append(f"account = {sql.bind(req.account)}")
    if host is not None:
        where.append(f"host = {sql.bind(host)}")
    return " AND ".join(where)


def progress_sql(req: StatsRequest, host: str | None) -> Sql:
    """``store.account_stats``' INPROGRESSCOUNT over the fleet: per account, the messages
    accepted in the window that were in a host's queue at its last export (a message is
    one per host: the same queue id on two hosts is two messages)."""
    sql = Sql()
    where = _account_window(sql, "accepted_at", req, host)
    sql.text = (
        "SELECT account, count(*) FROM (SELECT DISTINCT host, account, message FROM pending "
        f"WHERE {where}) queued GROUP BY account ORDER BY account"
    )
    return sql


def stats_sql(req: StatsRequest, host: str | None) -> Sql:
    """``store.account_stats`` over the fleet, but INPROGRESSCOUNT (``progress_sql``)."""
    sql = Sql()
    where = _account_window(sql, "bucket", req, host)
    sql.text = (
        "SELECT account, sum(sends + rejects), sum(successes), sum(defers), "
        "sum(fails + rejects), sum(bytes), sum(local_successes), sum(local_bytes) "
        f"FROM counters WHERE {where} GROUP BY account ORDER BY account"
    )
    return sql


def series_sql(req: SeriesRequest, host: str | None) -> Sql:
    """``store.series`` over the fleet: the same rows, in SQL both engines accept."""
    kind = dim_kind(req)
    sql = Sql()
    where = _window(sql, "bucket", _hour(req.start), req.end)
    where.append(f"account <> {sql.bind(SYSTEM)}")
    if req.accounts is not None:
        if not req.accounts:
            where.append("1 = 0")
        else:
            where.append(f"account IN ({', '.join(sql.bind(a) for a in req.accounts)})")
    for dim, value in req.filters:
        column = {Dimension.ACCOUNT: "account", Dimension.SENDER_DOMAIN: "sender_domain"}.get(
            dim, "value"
        )
        where.append(f"{column} = {sql.bind(value)}")
    if req.domain_patterns:
        where.append(_domain_patterns(sql, req.domain_patterns))
    if host is not None:
        where.append(f"host = {sql.bind(host)}")
    groups: list[str] = []
    bucket = "CAST(NULL AS TIMESTAMP)"
    if req.resolution is not None:
        bucket = f"date_trunc('{req.resolution.value}', bucket)"
        groups.append(bucket)
    columns = {Dimension.ACCOUNT: "account", Dimension.SENDER_DOMAIN: "sender_domain"}
    if kind is not None:
        where.append(f"kind = {sql.bind(kind)}")
        key = ""
        if req.group in DIM_KINDS:
            key = "value"
        elif req.group is not None:
            key = columns.get(req.group, "")
        sums = (
            "sum(accepted_out - CASE WHEN account = '-remote-' THEN 0 ELSE rejected END), "
            "sum(accepted_in - CASE WHEN account = '-remote-' THEN rejected ELSE 0 END), "
            "sum(delivered), sum(deferred), sum(failed - rejected), sum(rejected), sum(bytes), "
            "CAST(min(first_at) AS STRING), CAST(max(last_at) AS STRING)"
        )
        table = "dims"
    else:
        key = columns.get(req.group, "") if req.group is not None else ""
        sums = (
            "sum(CASE WHEN account = '-remote-' THEN 0 ELSE sends END), "
            "sum(CASE WHEN account = '-remote-' THEN sends ELSE 0 END), "
            "sum(successes), sum(defers), sum(fails), sum(rejects), sum(bytes), "
            "CAST(min(bucket) AS STRING), CAST(max(bucket) + INTERVAL 1 HOUR AS STRING)"
        )
        table = "counters"
    if key:
        groups.append(key)
    group_by = f" GROUP BY {', '.join(groups)}" if groups else ""
    sql.text = (
        f"SELECT CAST({bucket} AS STRING) AS b, {key or 'CAST(NULL AS STRING)'} AS k, {sums} "
        f"FROM {table} WHERE {' AND '.join(where)}{group_by} ORDER BY b, k"
    )
    return sql


def search_sql(q: TrackQuery, host: str | None) -> Sql:
    """``track.search`` over the fleet's stored rows (no paging by key, no queue)."""
    sql = Sql()
    where = _window(sql, "ts", q.start, q.end)
    if q.accounts is not None:
        where.append(
            f"account IN ({', '.join(sql.bind(a) for a in q.accounts)})" if q.accounts else "1 = 0"
        )
    if q.account is not None:
        where.append(f"account = {sql.bind(q.account)}")
    if q.domain_patterns:
        where.append(_domain_patterns(sql, q.domain_patterns))
    for column, value in (("sender", q.sender), ("recipient", q.recipient)):
        if value is not None:
            low = value.lower()
            if "*" in low or "?" in low:
                where.append(f"lower({column}) LIKE {sql.bind(_pattern(low))} ESCAPE '!'")
            else:
                where.append(f"lower({column}) = {sql.bind(low)}")
    if q.domain is not None:
        low = q.domain.lower()
        where.append(
            f"(sender_domain = {sql.bind(low)} OR "
            f"lower(recipient) LIKE {sql.bind('%@' + _like(low))} ESCAPE '!')"
        )
    if q.sender_domain is not None:
        where.append(f"sender_domain = {sql.bind(q.sender_domain.lower())}")
    if q.queue_id is not None:
        where.append(f"(queue_id = {sql.bind(q.queue_id)} OR origin = {sql.bind(q.queue_id)})")
    if q.message_id is not None:
        where.append(f"message_id = {sql.bind(q.message_id.strip().strip('<>'))}")
    if q.tag is not None:
        where.append(
            f"concat(',', tags, ',') LIKE {sql.bind('%,' + _like(q.tag) + ',%')} ESCAPE '!'"
        )
    if q.local is not None:
        where.append(f"local = {sql.bind(q.local)}")
    if q.exclude_accounts:
        where.append(f"account NOT IN ({', '.join(sql.bind(a) for a in q.exclude_accounts)})")
    if host is not None:
        where.append(f"host = {sql.bind(host)}")
    types = sorted(t for t in q.types if t in STORED_TYPES)
    where.append(f"outcome IN ({', '.join(sql.bind(t) for t in types)})" if types else "1 = 0")
    order = "DESC" if q.newest_first else "ASC"
    selected = [
        f"CAST({c} AS STRING) AS {c}_text" if c in ("ts", "sent_at") else c for c in EVENT_COLUMNS
    ]
    sql.text = (
        f"SELECT {', '.join(selected)}, host FROM events WHERE {' AND '.join(where)} "
        f"ORDER BY ts {order}, queue_id {order}, recipient {order}, outcome {order}, "
        f"host {order}"
    )
    if q.limit is not None:
        sql.text += f" LIMIT {int(q.limit) + int(q.offset)}"
    return sql


def newest_sql(host: str | None) -> Sql:
    sql = Sql()
    where = f" WHERE host = {sql.bind(host)}" if host is not None else ""
    sql.text = f"SELECT CAST(max(ts) AS STRING) FROM events{where}"
    return sql


@dataclass(frozen=True, slots=True)
class FleetRow:
    """A Track Delivery row of the fleet: the row, and the host it was exported by."""

    row: TrackRow
    host: str

    def as_dict(self) -> dict[str, Any]:
        return {**self.row.as_dict(), "host": self.host}


class FleetEngine(Protocol):
    """What ``logstats fleet`` asks of an engine."""

    def account_stats(self, req: StatsRequest) -> list[AccountStats]: ...

    def series(self, req: SeriesRequest) -> list[SeriesRow]: ...

    def search(self, q: TrackQuery) -> list[FleetRow]: ...

    def newest(self) -> datetime | None: ...

    relist_seconds: float  # 0: refresh before every answer (cheap); else how often, apart

    def listing(self) -> Any: ...

    def use(self, listing: Any) -> None: ...

    def refresh(self) -> None: ...

    def stale(self) -> bool: ...

    def close(self) -> None: ...


class SqlEngine:
    """The rows of each question from the shared SQL; subclasses list the files
    (``listing``, which may take long and runs without the views), define the views over a
    listing (``use``), run the SQL (``_execute``), and tell a file gone since (``_gone``)."""

    relist_seconds = 0.0

    def __init__(self, directory: str | Path, host: str | None = None) -> None:
        self.directory = Path(directory)
        self.host = host  # only this host's rows (None: every host)

    def listing(self) -> Any:
        raise NotImplementedError

    def use(self, listing: Any) -> None:
        raise NotImplementedError

    def refresh(self) -> None:
        self.use(self.listing())

    def stale(self) -> bool:
        """Whether a host exported since the views were made, and they would not see it."""
        return False

    def _execute(self, sql: Sql) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _gone(self, exc: Exception) -> bool:
        raise NotImplementedError

    def _run(self, sql: Sql) -> list[tuple[Any, ...]]:
        try:
            return self._execute(sql)
        except Exception as exc:
            if not self._gone(exc):
                raise
        self.refresh()  # a host's export removed or replaced a file since the views were made
        return self._execute(sql)

    def _host(self, req: Any) -> str | None:
        asked: str | None = getattr(req, "host", None)
        return asked if asked is not None else self.host

    def account_stats(self, req: StatsRequest) -> list[AccountStats]:
        host = self._host(req)
        progress = {str(a): int(n) for a, n in self._run(progress_sql(req, host))}
        out = {
            str(acct): AccountStats(
                account=str(acct),
                sendcount=int(sends),
                successcount=int(succ),
                defercount=int(defers),
                failcount=int(fails),
                totalsize=int(size),
                inprogresscount=progress.pop(str(acct), 0),
                local_successcount=int(lsucc),
                local_totalsize=int(lsize),
            )
            for acct, sends, succ, defers, fails, size, lsucc, lsize in self._run(
                stats_sql(req, host)
            )
        }
        for acct, n in progress.items():  # in the queue, nothing else in the window
            out[acct] = AccountStats(account=acct, inprogresscount=n)
        return [out[k] for k in sorted(out)]

    def series(self, req: SeriesRequest) -> list[SeriesRow]:
        return series_rows(self._run(series_sql(req, self._host(req))), _time)

    def search(self, q: TrackQuery) -> list[FleetRow]:
        found = self._run(search_sql(q, self._host(q)))[int(q.offset) :]
        out = []
        for r in found:
            values = list(r[: len(EVENT_COLUMNS)])
            for i, c in enumerate(EVENT_COLUMNS):
                if c in ("ts", "sent_at") and values[i] is not None:
                    values[i] = datetime.fromisoformat(str(values[i]))
                elif c == "size":
                    values[i] = int(values[i] or 0)
            out.append(FleetRow(TrackRow(*values), str(r[len(EVENT_COLUMNS)])))
        return out

    def newest(self) -> datetime | None:
        rows = self._run(newest_sql(self.host))
        return _time(rows[0][0]) if rows and rows[0][0] is not None else None

    def close(self) -> None:
        pass


_MARKER = re.compile(r":(p\d+)\b")


class DuckDBEngine(SqlEngine):
    """In-memory DuckDB over ``read_parquet(..., hive_partitioning=true)``."""

    def __init__(self, directory: str | Path, host: str | None = None) -> None:
        import duckdb

        super().__init__(directory, host)
        self.con = duckdb.connect(":memory:")
        self.con.execute("SET TimeZone = 'UTC'")
        self.filled: dict[str, bool] = {}  # whether each view reads files (else: no rows)
        self.refresh()

    def listing(self) -> dict[str, bool]:
        """Which tables have files: a view over a glob reads the files there are at each
        question, so only a table's first file and its last file's removal change a view."""
        return {table: _has_files(self.directory, table) for table in VIEWS}

    def use(self, listing: dict[str, bool]) -> None:
        import duckdb

        for table, filled in listing.items():
            if self.filled.get(table) == filled:
                continue
            files = f"{self.directory / table}/*/*/*.parquet"
            if not filled:
                view = empty_view(table)
            else:
                view = (
                    'SELECT * EXCLUDE ("date"), CAST("date" AS DATE) AS day FROM read_parquet('
                    f"'{_quoted(files)}', hive_partitioning = true, "
                    "hive_types = {'host': VARCHAR, 'date': VARCHAR})"
                )
            try:
                self.con.execute(f"CREATE OR REPLACE VIEW {table} AS {view}")
                self.filled[table] = filled
            except duckdb.IOException:  # the last file went since the listing
                self.con.execute(f"CREATE OR REPLACE VIEW {table} AS {empty_view(table)}")
                self.filled[table] = False

    def _execute(self, sql: Sql) -> list[tuple[Any, ...]]:
        text = _MARKER.sub(r"$\1", sql.text)
        return self.con.execute(text, sql.params).fetchall()

    def _gone(self, exc: Exception) -> bool:
        import duckdb

        return isinstance(exc, duckdb.IOException | duckdb.InvalidInputException)

    def close(self) -> None:
        self.con.close()


class SparkEngine(SqlEngine):
    """pyspark in local mode over ``spark.read.parquet`` (partition discovery, which lists
    every partition: seconds for a large fleet, so a server lists again apart, when the
    listing is ``stale`` and every ``relist_seconds``)."""

    relist_seconds = 300.0  # as well as when a host's generation file changed

    def __init__(self, directory: str | Path, host: str | None = None, spark: Any = None) -> None:
        super().__init__(directory, host)
        if spark is None:
            from pyspark.sql import SparkSession

            spark = SparkSession.getActiveSession()
        self.own = spark is None  # a session this engine started: stopped with it
        self.spark = spark if spark is not None else spark_session()
        self.generations: dict[str, str] = {}
        self.refresh()

    def listing(self) -> tuple[dict[str, Any], dict[str, str]]:
        """A DataFrame of each table over its files as they are now, and the hosts'
        generations read before they were listed."""
        generations = read_generations(self.directory)
        frames = {}
        for table in VIEWS:
            base = str(self.directory / table)
            if not _has_files(self.directory, table):
                df = self.spark.sql(empty_view(table))
            else:
                from pyspark.sql import functions as F

                df = self.spark.read.option("basePath", base).parquet(base)
                df = df.withColumn("day", F.col("date").cast("date")).drop("date")
            frames[table] = df
        return frames, generations

    def use(self, listing: tuple[dict[str, Any], dict[str, str]]) -> None:
        frames, self.generations = listing
        for table, df in frames.items():
            df.createOrReplaceTempView(table)

    def stale(self) -> bool:
        """A DataFrame keeps the size of each file as listed: a partition an export
        replaced since would be read short, without an error.  So a host's generation file
        that changed since the listing (``export.generation_file``) makes the views stale."""
        return read_generations(self.directory) != self.generations

    def _execute(self, sql: Sql) -> list[tuple[Any, ...]]:
        rows = self.spark.sql(sql.text, args=sql.params).collect()
        return [tuple(r) for r in rows]

    def _gone(self, exc: Exception) -> bool:
        text = str(exc)
        return any(
            mark in text
            for mark in ("FILE_NOT_EXIST", "FileNotFoundException", "FAILED_READ_FILE",
                         "PATH_NOT_FOUND")
        )  # fmt: skip

    def close(self) -> None:
        if self.own:
            self.spark.stop()


def spark_session() -> Any:
    """A local Spark (two cores) whose SQL reads partitions as text and times in UTC."""
    import os

    from pyspark.sql import SparkSession

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # local mode: no other interface
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("logstats-fleet")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.sources.partitionColumnTypeInference.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.driver.extraJavaOptions", "-Duser.timezone=UTC")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def read_generations(directory: str | Path) -> dict[str, str]:
    """Each exporting host's generation (``export.generation_file``), by file name."""
    out = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir(Path(directory) / GENERATIONS):
            if entry.name.startswith(TEMP_PREFIX):
                continue
            with contextlib.suppress(OSError):
                out[entry.name] = Path(entry.path).read_text()
    return out


def _has_files(directory: str | Path, table: str) -> bool:
    return any(Path(directory, table).glob("host=*/date=*/*.parquet"))


def _quoted(text: str) -> str:
    return text.replace("'", "''")


def engine(name: str, directory: str | Path, host: str | None = None) -> FleetEngine:
    if name == "spark":
        return SparkEngine(directory, host)
    return DuckDBEngine(directory, host)
