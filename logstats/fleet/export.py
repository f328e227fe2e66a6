"""Export of a store's counters, dimensions, Track Delivery rows and queue as Parquet files
that a fleet shares (``DIR`` may be shared storage; each host writes only its own
partitions)::

    DIR/{counters,dims,events,pending}/host=H/date=YYYY-MM-DD/data.parquet

``H`` is the row's ``host`` (the syslog host of its line), or this host's name
(``export.host``, default the machine's name) when the line named none; percent-encoded
(``urllib.parse.quote``), as Spark and DuckDB decode hive partition values.  Counters and
dimensions are folded to one row per key (the sums ``compact()`` would give); events are
exported as stored.  No column of a file repeats ``host`` or ``date``.

Exactly once, incremental, idempotent: a partition's content is a pure function of the
store's rows for its (host, date), written sorted; its fingerprint (row count and the sum
of the rows' hashes, with the layout's version) is kept in the file's Parquet key-value
metadata (``logstats.fingerprint``).  A run computes every partition's fingerprint from the
store in one pass, and rewrites only the partitions whose file is missing or carries
another one.  A write goes to ``.data.parquet.tmp-PID`` in the partition's folder (skipped
by readers: a leading dot, and no ``.parquet`` suffix), is fsynced, then ``os.replace``d
onto ``data.parquet`` (and the folder fsynced): a reader sees the old or the new file,
never half of one.  A run killed at any point leaves at most temp files, which the next
run removes, and partitions it then rewrites.

``pending`` (the accepted messages not completed, by the day they were accepted) is a
snapshot: its partitions of a day with no message left in the queue are removed.  Other
dates with no rows left in the store (events pruned by retention) leave their partition
alone; so does the oldest date of events still stored when the store holds fewer of its
rows than the file (retention pruned the start of that day).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import duckdb

from logstats.store import COUNTER_COLUMNS, DIM_COLUMNS
from logstats.track import COLUMNS as EVENT_COLUMNS

LAYOUT = "1"  # the layout's version: part of every fingerprint (a change rewrites all)
FINGERPRINT_KEY = "logstats.fingerprint"
DATA = "data.parquet"
TEMP_PREFIX = ".data.parquet.tmp-"
GENERATIONS = "_generations"  # one file per host: its partitions' digest (generation_file)
TABLES = ("counters", "dims", "events", "pending")


@dataclass(frozen=True, slots=True)
class Table:
    """How one store table is exported: the rows (``{host}``: the host expression), the
    column the date comes from, the columns of a file, and their order."""

    name: str
    rows: str
    time: str
    columns: tuple[str, ...]
    snapshot: bool = False  # the rows as they are now: a partition with none left is removed


def _tables(has_host: dict[str, bool]) -> dict[str, Table]:
    def host(table: str) -> str:
        return "CASE WHEN host = '' THEN $host ELSE host END" if has_host[table] else "$host"

    counter_sums = ", ".join(f"CAST(sum({c}) AS BIGINT) AS {c}" for c in COUNTER_COLUMNS)
    dim_sums = ", ".join(f"CAST(sum({c}) AS BIGINT) AS {c}" for c in DIM_COLUMNS)
    counter_key = ("bucket", "mta", "account", "sender_domain")
    dim_key = ("bucket", "mta", "account", "sender_domain", "kind", "value")
    return {
        "counters": Table(
            "counters",
            f"SELECT {host('counters')} AS fleet_host, {', '.join(counter_key)}, {counter_sums} "
            f"FROM counters GROUP BY fleet_host, {', '.join(counter_key)}",
            "bucket",
            (*counter_key, *COUNTER_COLUMNS),
        ),
        "dims": Table(
            "dims",
            f"SELECT {host('dims')} AS fleet_host, {', '.join(dim_key)}, {dim_sums}, "
            "min(first_at) AS first_at, max(last_at) AS last_at "
            f"FROM dims GROUP BY fleet_host, {', '.join(dim_key)}",
            "bucket",
            (*dim_key, *DIM_COLUMNS, "first_at", "last_at"),
        ),
        "events": Table(
            "events",
            f"SELECT {host('events')} AS fleet_host, {', '.join(EVENT_COLUMNS)} FROM events",
            "ts",
            EVENT_COLUMNS,
        ),
        # the messages in the queue now (store.account_stats' INPROGRESSCOUNT): the
        # accepted ones, each once (the first message of a filter's chain names it)
        "pending": Table(
            "pending",
            "SELECT CASE WHEN split_part(scope, '/', 1) = '' THEN $host "
            "ELSE split_part(scope, '/', 1) END AS fleet_host, "  # model.host_of
            "account, accepted_at, coalesce(root, scope || ' ' || queue_id) AS message "
            "FROM pending WHERE received AND accepted_at IS NOT NULL",
            "accepted_at",
            ("account", "accepted_at", "message"),
            snapshot=True,
        ),
    }


@dataclass(slots=True)
class Exported:
    """What one run did: partitions written and left as they were, temp files removed."""

    written: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)  # snapshot partitions now empty
    unchanged: int = 0
    kept: int = 0  # partitions the store no longer holds all rows of, left as they are
    temps_removed: int = 0
    damaged: list[Path] = field(default_factory=list)  # unreadable files, written again
    prints: dict[Path, str] = field(default_factory=dict)  # each partition's fingerprint now
    seconds: float = 0.0


def default_host() -> str:
    return socket.gethostname()


def encode(value: str) -> str:
    """A partition value as a directory name: percent-encoded, never empty."""
    return quote(value, safe="") or "%00"


def decode(name: str) -> str:
    return unquote(name)


def partition(directory: Path, table: str, host: str, day: date) -> Path:
    return directory / table / f"host={encode(host)}" / f"date={day.isoformat()}"


def _nothing() -> None:
    pass


def export(
    con: duckdb.DuckDBPyConnection,
    directory: str | Path,
    host: str,
    progress: Callable[[], None] | None = None,
) -> Exported:
    """Export the store behind ``con`` (read-only is enough) into ``directory`` as this
    host, ``host``.  The one export of the CLI (``logstats export``) and the daemon, which
    passes its watchdog ping as ``progress`` (called after each table and partition)."""
    started = time.perf_counter()
    out = Exported()
    root = Path(directory)
    tick = progress or _nothing
    cur = con.cursor()
    try:
        has_host = {t: _has_column(cur, t, "host") for t in TABLES}
        hosts: set[str] = set()  # every host this store holds rows of
        for table in _tables(has_host).values():
            hosts |= _export_table(cur, root, host, table, out, hosts, tick)
            tick()
        lines: dict[str, list[str]] = {f"host={encode(h)}": [] for h in hosts}
        for path, fp in out.prints.items():  # table/host=H/date=D/data.parquet
            rel = path.relative_to(root)
            lines.setdefault(rel.parts[1], []).append(f"{rel.as_posix()} {fp}\n")
        for h in sorted(hosts):
            _mark(root, h, lines[f"host={encode(h)}"])
    finally:
        cur.close()
    out.seconds = time.perf_counter() - started
    return out


def _has_column(cur: duckdb.DuckDBPyConnection, table: str, column: str) -> bool:
    row = cur.execute(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = ? AND column_name = ?",
        [table, column],
    ).fetchone()
    return bool(row and row[0])


def _hash(columns: tuple[str, ...]) -> str:
    return f"hash({', '.join(columns)})"


def _export_table(
    cur: duckdb.DuckDBPyConnection,
    root: Path,
    host: str,
    table: Table,
    out: Exported,
    known: set[str],
    tick: Callable[[], None],
) -> set[str]:
    """Write the partitions of ``table`` that changed; the hosts it holds rows of.  A
    snapshot table's partitions of this store's hosts (``known``, those of the tables
    before) that no row is left in are removed."""
    day = f"CAST({table.time} AS DATE)"
    prints = cur.execute(
        f"SELECT fleet_host, {day} AS d, count(*), CAST(sum({_hash(table.columns)}) AS VARCHAR) "
        f"FROM ({table.rows}) GROUP BY fleet_host, d ORDER BY fleet_host, d",
        {"host": host},
    ).fetchall()
    hosts = {h for h, *_ in prints} | {host}
    for h in sorted(hosts | known if table.snapshot else hosts):
        out.temps_removed += _remove_temps(root / table.name / f"host={encode(h)}")
    existing = _existing(
        cur, root / table.name, hosts | known if table.snapshot else hosts, out.damaged
    )
    out.prints.update((path, fp) for path, (fp, _) in existing.items())
    if table.snapshot:
        now = {partition(root, table.name, h, d) / DATA for h, d, _, _ in prints}
        for gone in sorted(set(existing) - now):
            out.prints.pop(gone, None)
            with contextlib.suppress(FileNotFoundError):
                gone.unlink()
                _fsync(gone.parent)
                out.removed.append(gone)
    oldest = min((d for _, d, _, _ in prints), default=None)
    todo: list[tuple[str, date, str]] = []
    for h, d, n, digest in prints:
        fingerprint = f"v{LAYOUT}:{n}:{digest}"
        before = existing.get(partition(root, table.name, h, d) / DATA)
        if before is not None and before[0] == fingerprint:
            out.unchanged += 1
        elif table.name == "events" and d == oldest and before is not None and before[1] > n:
            out.kept += 1  # retention pruned the start of the day: the file has them all
        else:
            todo.append((h, d, fingerprint))
    if not todo:
        return hosts
    # the rows of the days to write, once, in time order: each partition then reads only
    # its own blocks (the store's tables are clustered by account)
    cur.execute(
        f"CREATE OR REPLACE TEMP TABLE fleet_rows AS SELECT * FROM ({table.rows}) "
        f"WHERE list_contains($days, {day}) ORDER BY {table.time}, fleet_host",
        {"host": host, "days": sorted({d for _, d, _ in todo})},
    )
    try:
        for h, d, fingerprint in todo:
            folder = partition(root, table.name, h, d)
            _write(cur, folder, table, h, d, fingerprint)
            out.written.append(folder / DATA)
            out.prints[folder / DATA] = fingerprint
            tick()
    finally:
        cur.execute("DROP TABLE IF EXISTS fleet_rows")
    return hosts


def _existing(
    cur: duckdb.DuckDBPyConnection, folder: Path, hosts: set[str], damaged: list[Path]
) -> dict[Path, tuple[str, int]]:
    """(fingerprint, rows) of the partitions of ``hosts`` already exported.  A file whose
    metadata cannot be read (cut short, not Parquet) is ``damaged``: it has no fingerprint,
    so it is written again (or removed, for a snapshot day with no rows left)."""
    found: dict[Path, tuple[str, int]] = {}
    for h in hosts:
        files = sorted(str(p) for p in (folder / f"host={encode(h)}").glob(f"date=*/{DATA}"))
        if not files:
            continue
        try:
            rows = _fingerprints(cur, files)
        except duckdb.InvalidInputException:  # one file at a time, to tell which are damaged
            rows = []
            for file in files:
                try:
                    rows += _fingerprints(cur, [file])
                except duckdb.InvalidInputException:  # not Parquet (cut short, overwritten);
                    damaged.append(Path(file))  # an I/O error (EIO, EACCES) stops the export
                    found[Path(file)] = ("", 0)
        for name, value in rows:
            n = value.split(":")[1] if value.count(":") >= 2 else "0"
            found[Path(name)] = (str(value), int(n) if n.isdigit() else 0)
    return found


def _fingerprints(cur: duckdb.DuckDBPyConnection, files: list[str]) -> list[tuple[str, str]]:
    return [
        (str(name), str(value))
        for name, value in cur.execute(
            "SELECT file_name, decode(value) FROM parquet_kv_metadata($files) "
            "WHERE decode(key) = $key",
            {"files": files, "key": FINGERPRINT_KEY},
        ).fetchall()
    ]


def _remove_temps(folder: Path) -> int:
    removed = 0
    for temp in folder.glob(f"date=*/{TEMP_PREFIX}*"):
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
            removed += 1
    return removed


def _write(
    cur: duckdb.DuckDBPyConnection,
    folder: Path,
    table: Table,
    host: str,
    day: date,
    fingerprint: str,
) -> None:
    """One partition from ``fleet_rows``: a temp file, fsynced, renamed onto data.parquet."""
    folder.mkdir(parents=True, exist_ok=True)
    temp = folder / f"{TEMP_PREFIX}{os.getpid()}"
    columns = ", ".join(table.columns)
    escaped = str(temp).replace("'", "''")
    cur.execute(
        f"COPY (SELECT {columns} FROM fleet_rows WHERE fleet_host = $h "
        f"AND {table.time} >= $day AND {table.time} < $day + INTERVAL 1 DAY "
        f"ORDER BY {columns}) TO '{escaped}' (FORMAT parquet, "
        f"KV_METADATA {{'{FINGERPRINT_KEY}': '{fingerprint}'}})",
        {"h": host, "day": day},
    )
    _fsync(temp)
    os.replace(temp, folder / DATA)
    _fsync(folder)


def generation_file(directory: str | Path, host: str) -> Path:
    """The file whose text changes whenever a partition of ``host`` changed (a digest of
    its partitions' fingerprints), so that a reader that lists the files once (Spark) can
    tell that it must list them again."""
    return Path(directory) / GENERATIONS / f"host={encode(host)}"


def _mark(root: Path, host: str, lines: list[str]) -> None:
    """Write ``host``'s generation file (the digest of ``lines``, its partitions and their
    fingerprints) when it changed: after every partition of the run is in place, so an
    interrupted export leaves the old one and the next one writes it."""
    mine = f"host={encode(host)}"
    digest = hashlib.sha256("".join(sorted(lines)).encode()).hexdigest() + "\n"
    path = generation_file(root, host)
    with contextlib.suppress(OSError):
        if path.read_text() == digest:
            return
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f"{TEMP_PREFIX}{mine}.{os.getpid()}"
    with temp.open("w") as f:
        f.write(digest)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    _fsync(path.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def exported_files(directory: str | Path, table: str) -> Iterator[Path]:
    yield from sorted(Path(directory, table).glob(f"host=*/date=*/{DATA}"))


def summary(result: Exported) -> dict[str, Any]:
    return {
        "written": len(result.written),
        "removed": len(result.removed),
        "unchanged": result.unchanged,
        "kept": result.kept,
        "temps_removed": result.temps_removed,
        "damaged": [str(p) for p in result.damaged],
        "ms": round(result.seconds * 1000, 1),
    }
