"""DuckDB store: counters, recent events, in-flight messages, checkpoints.

Everything a batch changes is written in one transaction (``commit``), so a crash at any
point leaves counters, in-flight state and file checkpoints consistent with each other.

``counters`` is append-only: each batch adds one row per (hour, mta, account, sender
domain) it touched, and queries sum.  ``compact()`` folds the rows of each key into one.
There is no index over the history (see README, Performance): keys live on the small
tables only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

from logstats.errors import SchemaError, StoreError, StoreLockedError, cause_of
from logstats.model import (
    SYSTEM,
    AccountStats,
    Attempt,
    CounterKey,
    Detail,
    Dimension,
    DimKey,
    DimTally,
    Event,
    HistKey,
    JournalCursor,
    Message,
    Outcome,
    Position,
    SeriesRequest,
    SeriesRow,
    StatsRequest,
    Tally,
    host_of,
)

MIGRATIONS: tuple[tuple[str, str], ...] = (
    (
        "0001_initial",
        """
        CREATE TABLE counters (
            bucket TIMESTAMP NOT NULL,          -- UTC hour
            mta VARCHAR NOT NULL,
            account VARCHAR NOT NULL,
            sender_domain VARCHAR NOT NULL,
            sends BIGINT NOT NULL,              -- accepted messages
            successes BIGINT NOT NULL,          -- delivered recipients
            defers BIGINT NOT NULL,             -- deferral events
            fails BIGINT NOT NULL,              -- failed recipients
            bytes BIGINT NOT NULL,              -- message size summed over deliveries
            rejects BIGINT NOT NULL,            -- SMTP-time RCPT rejects (a send and a fail)
            expired BIGINT NOT NULL,            -- in-flight messages dropped by the TTL
            local_successes BIGINT NOT NULL,    -- of successes: deliveries on this host
            local_bytes BIGINT NOT NULL         -- of bytes: deliveries on this host
        );
        CREATE TABLE events (
            ts TIMESTAMP NOT NULL, mta VARCHAR NOT NULL, scope VARCHAR NOT NULL,
            queue_id VARCHAR NOT NULL, account VARCHAR NOT NULL, sender_domain VARCHAR NOT NULL,
            recipient VARCHAR NOT NULL, outcome VARCHAR NOT NULL, size BIGINT NOT NULL
        );
        CREATE TABLE pending (
            mta VARCHAR NOT NULL, scope VARCHAR NOT NULL, queue_id VARCHAR NOT NULL,
            account VARCHAR, accepted_at TIMESTAMP, received BOOLEAN NOT NULL,
            continuation BOOLEAN NOT NULL, last_seen TIMESTAMP NOT NULL, state VARCHAR NOT NULL,
            PRIMARY KEY (mta, scope, queue_id)
        );
        CREATE TABLE checkpoints (
            head_hash VARCHAR PRIMARY KEY, mta VARCHAR NOT NULL, path VARCHAR NOT NULL,
            inode BIGINT NOT NULL, byte_offset BIGINT NOT NULL, lines BIGINT NOT NULL,
            mtime DOUBLE NOT NULL, done BOOLEAN NOT NULL, year INTEGER NOT NULL,
            month INTEGER NOT NULL, updated_at TIMESTAMP NOT NULL
        );
        CREATE TABLE unparsed (
            mta VARCHAR NOT NULL, reason VARCHAR NOT NULL, lines BIGINT NOT NULL,
            sample VARCHAR, PRIMARY KEY (mta, reason)
        );
        """,
    ),
)

MIGRATIONS += (
    (
        "0002_dimensions",
        """
        CREATE TABLE dims (
            bucket TIMESTAMP NOT NULL,          -- UTC hour
            mta VARCHAR NOT NULL,
            account VARCHAR NOT NULL,
            sender_domain VARCHAR NOT NULL,
            kind VARCHAR NOT NULL,              -- tag, ip, recipient_domain, provider
            value VARCHAR NOT NULL,
            accepted_out BIGINT NOT NULL,       -- messages sent by accounts
            accepted_in BIGINT NOT NULL,        -- messages from outside (-remote-)
            delivered BIGINT NOT NULL,
            deferred BIGINT NOT NULL,
            failed BIGINT NOT NULL,             -- failed recipients, rejects included
            rejected BIGINT NOT NULL,
            bytes BIGINT NOT NULL,
            first_at TIMESTAMP NOT NULL,        -- first and last activity in the bucket
            last_at TIMESTAMP NOT NULL
        );
        """,
    ),
)

MIGRATIONS += (
    (
        "0003_anomalies",
        """
        CREATE TABLE anomalies (                -- inconsistencies met and resolved, by kind
            mta VARCHAR NOT NULL, kind VARCHAR NOT NULL, count BIGINT NOT NULL,
            sample VARCHAR, PRIMARY KEY (mta, kind)
        );
        CREATE TABLE quarantine (               -- rows a commit could not store, kept aside
            stored_at TIMESTAMP NOT NULL, mta VARCHAR NOT NULL, tbl VARCHAR NOT NULL,
            content VARCHAR NOT NULL, reason VARCHAR NOT NULL
        );
        """,
    ),
)

MIGRATIONS += (
    (
        "0004_pending_root",
        """
        -- the message a continuation (a filter's re-injection) belongs to: in progress is
        -- counted once per original message, while any of its parts is in the queue
        ALTER TABLE pending ADD COLUMN root VARCHAR;
        """,
    ),
)

MIGRATIONS += (
    (
        "0005_cross_account_copies",
        """
        -- counters and dims again, clustered for answers across accounts (counters and
        -- dims are clustered by account): by sender domain, and by dimension value.
        -- compact() keeps them; rows written since are read from counters/dims by rowid.
        CREATE TABLE counters_by_domain AS
            SELECT * FROM counters ORDER BY sender_domain, bucket;
        CREATE TABLE dims_by_value AS
            SELECT * FROM dims ORDER BY kind, value, bucket;
        -- all-time totals per MTA and account (the /metrics answer), of the same rows
        CREATE TABLE counter_totals AS
            SELECT mta, account, sum(sends)::BIGINT AS sends,
                   sum(successes)::BIGINT AS successes, sum(defers)::BIGINT AS defers,
                   sum(fails)::BIGINT AS fails, sum(bytes)::BIGINT AS bytes,
                   sum(rejects)::BIGINT AS rejects, sum(expired)::BIGINT AS expired,
                   sum(local_successes)::BIGINT AS local_successes,
                   sum(local_bytes)::BIGINT AS local_bytes
            FROM counters GROUP BY mta, account ORDER BY mta, account;
        CREATE TABLE copy_marks (
            tbl VARCHAR PRIMARY KEY,            -- counters (and counter_totals) or dims
            rows_copied BIGINT NOT NULL,        -- rows of tbl its copies hold (summed)
            rowid_end BIGINT                    -- rows of tbl from this rowid on: not
        );                                      -- copied (NULL: not known, read tbl)
        INSERT INTO copy_marks SELECT 'counters', count(*), coalesce(max(rowid) + 1, 0)
            FROM counters;
        INSERT INTO copy_marks SELECT 'dims', count(*), coalesce(max(rowid) + 1, 0) FROM dims;
        """,
    ),
)

MIGRATIONS += (
    (
        "0006_histograms",
        """
        -- the /metrics histograms (delivery delay, message size), all-time, per MTA: one row
        -- per bucket, its observations and their sum (in the integer unit of the metric:
        -- milliseconds, bytes); ``le`` is the bucket's upper bound in that unit, and
        -- 9223372036854775807 for +Inf.  Buckets are not cumulative here.
        CREATE TABLE histograms (
            mta VARCHAR NOT NULL, metric VARCHAR NOT NULL, le BIGINT NOT NULL,
            count BIGINT NOT NULL, sum BIGINT NOT NULL, PRIMARY KEY (mta, metric, le)
        );
        """,
    ),
)

MIGRATIONS += (
    (
        "0007_track_delivery",
        """
        -- Track Delivery: what each event row shows besides what it counts (model.Detail).
        -- Rows stored before this migration have these columns NULL.
        ALTER TABLE events ADD COLUMN local BOOLEAN;
        ALTER TABLE events ADD COLUMN sender VARCHAR;
        ALTER TABLE events ADD COLUMN orig_recipient VARCHAR;
        ALTER TABLE events ADD COLUMN message_id VARCHAR;
        ALTER TABLE events ADD COLUMN client_host VARCHAR;
        ALTER TABLE events ADD COLUMN client_ip VARCHAR;
        ALTER TABLE events ADD COLUMN auth VARCHAR;
        ALTER TABLE events ADD COLUMN sent_at TIMESTAMP;
        ALTER TABLE events ADD COLUMN reason VARCHAR;
        ALTER TABLE events ADD COLUMN router VARCHAR;
        ALTER TABLE events ADD COLUMN transport VARCHAR;
        ALTER TABLE events ADD COLUMN remote_host VARCHAR;
        ALTER TABLE events ADD COLUMN remote_ip VARCHAR;
        ALTER TABLE events ADD COLUMN dsn VARCHAR;
        ALTER TABLE events ADD COLUMN tags VARCHAR;
        ALTER TABLE events ADD COLUMN origin VARCHAR;
        ALTER TABLE events ADD COLUMN parent VARCHAR;
        """,
    ),
)

MIGRATIONS += (
    (
        "0008_host",
        """
        -- the syslog host of the lines counted (model.host_of): a central syslog file holds
        -- many MTAs, and every counter can be asked per host.  '' where the log names none
        -- (a plain Exim mainlog); rows stored before this migration have ''.
        ALTER TABLE counters ADD COLUMN host VARCHAR DEFAULT '';
        ALTER TABLE counters_by_domain ADD COLUMN host VARCHAR DEFAULT '';
        ALTER TABLE dims ADD COLUMN host VARCHAR DEFAULT '';
        ALTER TABLE dims_by_value ADD COLUMN host VARCHAR DEFAULT '';
        ALTER TABLE events ADD COLUMN host VARCHAR DEFAULT '';
        """,
    ),
)

MIGRATIONS += (
    (
        "0009_journal_cursors",
        """
        -- where each journal source stands: the cursor of the last entry committed, written
        -- in the same transaction as the counters it led to
        CREATE TABLE journal_cursors (
            source VARCHAR PRIMARY KEY,         -- journal.source_id: directory, units, identifiers
            mta VARCHAR NOT NULL,
            cursor VARCHAR NOT NULL,            -- journalctl's __CURSOR
            realtime TIMESTAMP NOT NULL,        -- that entry's __REALTIME_TIMESTAMP (UTC)
            entries BIGINT NOT NULL,            -- entries read so far
            updated_at TIMESTAMP NOT NULL
        );
        """,
    ),
)

MIGRATIONS += (
    (
        "0010_totals_host",
        """
        -- the all-time totals per MTA, syslog host and account (the /metrics answer, which
        -- labels the mail counters by host), made again from the rows the copies hold
        CREATE OR REPLACE TABLE counter_totals AS
            SELECT mta, host, account, sum(sends)::BIGINT AS sends,
                   sum(successes)::BIGINT AS successes, sum(defers)::BIGINT AS defers,
                   sum(fails)::BIGINT AS fails, sum(bytes)::BIGINT AS bytes,
                   sum(rejects)::BIGINT AS rejects, sum(expired)::BIGINT AS expired,
                   sum(local_successes)::BIGINT AS local_successes,
                   sum(local_bytes)::BIGINT AS local_bytes
            FROM counters_by_domain GROUP BY mta, host, account ORDER BY mta, host, account;
        """,
    ),
)

# A copy of a table clustered for answers across accounts, and its order on disk.
COPIES: dict[str, tuple[str, str]] = {
    "counters": ("counters_by_domain", "sender_domain, bucket"),
    "dims": ("dims_by_value", "kind, value, bucket"),
}

COUNTER_COLUMNS = (
    "sends",
    "successes",
    "defers",
    "fails",
    "bytes",
    "rejects",
    "expired",
    "local_successes",
    "local_bytes",
)


DIM_COLUMNS = (
    "accepted_out",
    "accepted_in",
    "delivered",
    "deferred",
    "failed",
    "rejected",
    "bytes",
)


@dataclass(slots=True)
class Batch:
    """What one transaction writes."""

    mta: str
    events: list[Event] = field(default_factory=list)
    # hourly deltas from the correlator; None: computed from ``events``
    counters: dict[CounterKey, Tally] | None = None
    # hourly per-dimension deltas (tag, ip, recipient domain, provider) from the correlator
    dims: dict[DimKey, DimTally] = field(default_factory=dict)
    upsert: list[Message] = field(default_factory=list)
    dropped: set[tuple[str, str]] = field(default_factory=set)
    positions: list[Position] = field(default_factory=list)
    unparsed: dict[str, int] = field(default_factory=dict)
    samples: dict[str, str] = field(default_factory=dict)
    retracted: list[Event] = field(default_factory=list)  # event rows taken back
    anomalies: dict[str, int] = field(default_factory=dict)
    anomaly_samples: dict[str, str] = field(default_factory=dict)
    # histogram deltas: (metric, upper bound) -> [observations, their sum]
    histograms: dict[HistKey, list[int]] = field(default_factory=dict)
    cursors: list[JournalCursor] = field(default_factory=list)  # journal sources' checkpoints


def _naive(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(tzinfo=None)


def _aware(ts: datetime | None) -> datetime | None:
    return None if ts is None else ts.replace(tzinfo=UTC)


def aggregate(events: Iterable[Event]) -> dict[tuple[int, str, str, str, str], Tally]:
    """Hourly counter deltas per (bucket, mta, account, sender domain, host)."""
    by_hour: dict[tuple[int, str, str, str, str], Tally] = {}
    for e in events:
        key = (int(e.ts.timestamp()) // 3600, e.mta, e.account, e.sender_domain, host_of(e.scope))
        row = by_hour.get(key)
        if row is None:
            row = by_hour[key] = Tally()
        match e.outcome:
            case Outcome.SEND:
                row.sends += 1
            case Outcome.DELIVERED:
                row.successes += 1
                row.bytes += e.size
                if e.local:
                    row.local_successes += 1
                    row.local_bytes += e.size
            case Outcome.DEFERRED:
                row.defers += 1
            case Outcome.FAILED:
                row.fails += 1
            case Outcome.REJECTED:
                row.rejects += 1
            case Outcome.EXPIRED:
                row.expired += 1
    return by_hour


def _micros(ts: datetime) -> int:
    """A timestamp as the store's rows carry it: microseconds since the epoch (UTC)."""
    return int((ts - _EPOCH) // _MICROSECOND)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


_MESSAGE_FIELDS = tuple(f.name for f in fields(Message))


def message_to_json(msg: Message) -> str:
    data = {name: getattr(msg, name) for name in _MESSAGE_FIELDS}
    for key in ("first_seen", "last_seen", "accepted_at"):
        if data[key] is not None:
            data[key] = data[key].isoformat()
    data["orphans"] = [
        {**a._asdict(), "ts": a.ts.isoformat(), "outcome": a.outcome.value} for a in msg.orphans
    ]
    return json.dumps(data, separators=(",", ":"))


def message_from_json(text: str) -> Message:
    data: dict[str, Any] = json.loads(text)
    for key in ("first_seen", "last_seen", "accepted_at"):
        if data[key] is not None:
            data[key] = datetime.fromisoformat(data[key])
    data["orphans"] = [
        Attempt(**{**a, "ts": datetime.fromisoformat(a["ts"]), "outcome": Outcome(a["outcome"])})
        for a in data["orphans"]
    ]
    return Message(**data)


class _Umask:
    lock = threading.Lock()
    writers = 0  # stores open for writing in this process
    before = 0  # the umask before the first of them


def _private(opening: bool) -> None:
    """While a store is open for writing, this process's umask is at least 027, so that the
    database, its .wal (created anew after each checkpoint: a chmod would not last) and
    DuckDB's spill files are 0640 or stricter whatever umask it was started with.  The
    umask before is restored when the last such store is closed."""
    with _Umask.lock:
        if opening:
            if _Umask.writers == 0:
                _Umask.before = os.umask(0o077)  # never looser in between
                os.umask(_Umask.before | 0o027)
            _Umask.writers += 1
        else:
            _Umask.writers -= 1
            if _Umask.writers == 0:
                os.umask(_Umask.before)


class Store:
    """One DuckDB connection (read-write for the single writer, or read-only)."""

    def __init__(
        self, path: str | Path, *, read_only: bool = False, memory_limit: str | None = None
    ) -> None:
        """``memory_limit``: DuckDB's (``128MB``); beyond it, large sorts spill to disk.
        Opened for writing, what the store creates is not world-readable (``_private``)."""
        self.path = str(path)
        self.read_only = read_only
        self._private = not read_only and self.path != ":memory:"
        if self._private:
            _private(True)
        try:
            self._open(memory_limit)
        except BaseException:
            self.close_private()
            raise

    def close_private(self) -> None:
        if self._private:
            self._private = False
            _private(False)

    def _open(self, memory_limit: str | None) -> None:
        read_only = self.read_only
        if read_only and self.path != ":memory:" and not Path(self.path).exists():
            raise StoreError(f"database {self.path} does not exist (run `logstats backfill`)")
        if not read_only and self.path != ":memory:":
            folder = Path(self.path).parent
            try:
                if not folder.is_dir():
                    folder.mkdir(parents=True, exist_ok=True)
                    folder.chmod(0o750)  # whatever the umask: the events hold addresses
            except OSError as exc:
                raise StoreError(
                    f"cannot create the folder of database {self.path}: {exc.strerror}"
                ) from exc
        try:
            self.con = duckdb.connect(self.path, read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                holder = re.search(r"held in (.*?) \(PID (\d+)\)", str(exc))
                who = (
                    f"process {holder.group(2)} ({holder.group(1)})"
                    if holder
                    else "another process"
                )
                raise StoreLockedError(
                    f"database {self.path} is locked by {who}: a running `logstats serve` or "
                    "`logstats backfill`. Queries go through a running `logstats serve`; to "
                    "backfill, stop the service (systemctl stop logstats), run backfill, start it "
                    "again"
                ) from exc
            raise self._open_error(exc) from exc
        except duckdb.Error as exc:
            raise self._open_error(exc) from exc
        try:
            if memory_limit:
                self.con.execute(f"SET memory_limit = '{memory_limit}'")
            self._check_size()
            self._migrate()
        except StoreError:
            self.con.close()
            raise
        except duckdb.Error as exc:
            self.con.close()
            raise self._open_error(exc) from exc

    # what DuckDB says of a file that is not (all) a database
    _DAMAGED = ("not a valid DuckDB database", "Could not read enough bytes", "Corrupt", "checksum")

    def _open_error(self, exc: BaseException) -> StoreError:
        """One line for a database that cannot be opened: damaged, or why not."""
        if any(s in str(exc) for s in self._DAMAGED):
            return StoreError(self._damaged(exc))
        return StoreError(f"cannot open database {self.path}: {cause_of(exc)}")

    def _damaged(self, exc: BaseException) -> str:
        return (
            f"database {self.path} is damaged or not a logstats database ({cause_of(exc)}): "
            "restore it from a backup, or move it away and backfill the logs again"
        )

    def _check_size(self) -> None:
        """A file shorter than the blocks its header counts was truncated (a copy cut short,
        a full disk): refuse it at once rather than fail on the first block it lacks.  With
        a WAL next to it the count may include blocks only the WAL holds: no verdict then."""
        if self.path == ":memory:" or Path(self.path + ".wal").exists():
            return
        row = self.con.execute("PRAGMA database_size").fetchone()
        if not row:
            return
        block_size, total_blocks, free_blocks = int(row[2]), int(row[3]), int(row[5])
        headers = 3 * 4096  # the main header and two database headers, then the blocks
        # a checkpoint may cut free blocks off the end of the file, still counted
        expected = headers + block_size * (total_blocks - free_blocks)
        actual = Path(self.path).stat().st_size
        if actual < expected:
            raise StoreError(
                self._damaged(
                    ValueError(f"the file has {actual} bytes of the {expected} its header counts")
                )
            )

    def close(self) -> None:
        try:
            self.con.close()
        finally:
            self.close_private()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema ------------------------------------------------------------------------------
    def _migrate(self) -> None:
        con = self.con
        has_table = con.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'migrations'"
        ).fetchone()
        applied: set[str] = set()
        if has_table and has_table[0]:
            applied = {r[0] for r in con.execute("SELECT name FROM migrations").fetchall()}
        known = {name for name, _ in MIGRATIONS}
        unknown = applied - known
        if unknown:
            raise SchemaError(
                f"database {self.path} has schema migrations this logstats does not know "
                f"({', '.join(sorted(unknown))}): it was written by a newer version"
            )
        missing = [(n, sql) for n, sql in MIGRATIONS if n not in applied]
        if not missing:
            return
        if self.read_only:
            raise SchemaError(f"database {self.path} needs migrations; open it read-write once")
        for name, sql in missing:
            con.execute("BEGIN TRANSACTION")
            try:
                con.execute(
                    "CREATE TABLE IF NOT EXISTS migrations (name VARCHAR PRIMARY KEY, "
                    "applied_at TIMESTAMP NOT NULL)"
                )
                con.execute(sql)
                con.execute("INSERT INTO migrations VALUES (?, ?)", [name, _naive(_now())])
                con.execute("COMMIT")
            except duckdb.Error:
                with contextlib.suppress(duckdb.Error):  # never hide why it failed
                    con.execute("ROLLBACK")
                raise

    def migrations(self) -> list[str]:
        return [
            r[0] for r in self.con.execute("SELECT name FROM migrations ORDER BY name").fetchall()
        ]

    # -- writing -----------------------------------------------------------------------------
    def commit(self, batch: Batch, *, events_since: datetime | None = None) -> list[Isolated]:
        """Write one batch in one transaction (see ``commit_many``)."""
        return self.commit_many([batch], events_since=events_since)

    def commit_many(
        self, batches: Sequence[Batch], *, events_since: datetime | None = None
    ) -> list[Isolated]:
        """Write batches (one per MTA) in one transaction.

        A failure of the disk or IO (``is_io_error``) rolls back and raises: nothing is
        written, the caller retries.  Any other failure is a row that cannot be stored: the
        rows are tried again to find it, and the rest is committed with the rows that could
        not be stored kept in ``quarantine`` (with their content and the reason) and counted
        as an anomaly.  Returns those rows (empty when all was stored)."""
        rows = self._rows(batches, events_since)
        first: BaseException
        try:
            self._transaction(rows)
            return []
        except duckdb.Error as exc:
            if is_io_error(exc):
                raise
            first = exc
        except (OverflowError, ValueError, TypeError) as exc:  # a value duckdb cannot bind
            first = exc
        good, bad = self._isolate(rows, first)
        isolated = [
            Isolated(mta, table, repr(row)[:2000], reason) for mta, table, row, reason in bad
        ]
        self._transaction(good, isolated)
        return isolated

    def _transaction(self, rows: list[_Row], isolated: Sequence[Isolated] = ()) -> None:
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            self._write_rows(rows)
            if isolated:
                now = _naive(_now())
                for item in isolated:
                    con.execute(
                        "INSERT INTO quarantine VALUES (?, ?, ?, ?, ?)",
                        [now, item.mta, item.table, item.row, item.reason[:2000]],
                    )
                    con.execute(
                        "INSERT INTO anomalies VALUES (?, ?, 1, ?) ON CONFLICT (mta, kind) DO "
                        "UPDATE SET count = anomalies.count + 1",
                        [item.mta, f"unstorable-{item.table}", item.reason[:500]],
                    )
            con.execute("COMMIT")
        except BaseException:
            _rollback(con)
            raise

    def _trial(self, rows: list[_Row]) -> str | None:
        """Write ``rows`` in a transaction that is always rolled back: None if they can be
        stored, else the reason."""
        con = self.con
        con.execute("BEGIN TRANSACTION")
        try:
            self._write_rows(rows)
        except duckdb.Error as exc:
            _rollback(con)
            if is_io_error(exc):
                raise
            return str(exc).splitlines()[0]
        except (OverflowError, ValueError, TypeError) as exc:
            _rollback(con)
            return f"{type(exc).__name__}: {exc}"
        except BaseException:
            _rollback(con)
            raise
        _rollback(con)
        return None

    def _isolate(
        self, rows: list[_Row], first: BaseException
    ) -> tuple[list[_Row], list[tuple[str, str, tuple[Any, ...], str]]]:
        """Split rows into those that can be stored together and those that cannot.

        Rows are added in runs; a run that fails is halved until the failing row is alone
        (a row that conflicts only with an earlier one is found the same way)."""
        good: list[_Row] = []
        bad: list[tuple[str, str, tuple[Any, ...], str]] = []
        runs: list[list[_Row]] = [rows]
        while runs:
            run = runs.pop(0)
            if not run:
                continue
            reason = self._trial(good + run)
            if reason is None:
                good += run
            elif len(run) == 1:
                mta, table, row = run[0]
                bad.append((mta, table, row, reason or str(first)))
            else:
                half = len(run) // 2
                runs[:0] = [run[:half], run[half:]]
        return good, bad

    @staticmethod
    def _rows(batches: Sequence[Batch], since: datetime | None) -> list[_Row]:
        """Every row the batches write, in the order they must be written."""
        rows: list[_Row] = []
        for batch in batches:
            mta = batch.mta
            if batch.counters is None:
                counters = aggregate(batch.events)
            else:
                counters = {
                    (h, mta, a, d, host): row for (h, a, d, host), row in batch.counters.items()
                }
            # timestamps as numbers (hours, seconds, microseconds since the epoch): the
            # store turns them into TIMESTAMPs (see _WRITERS); the host is the last column
            rows += [
                (mta, "counters", (h, m, a, d, *t.values(), host))
                for (h, m, a, d, host), t in counters.items()
            ]
            for (hour, account, domain, kind, value, host), d in batch.dims.items():
                row = (
                    hour, mta, account, domain, kind, value, *d.counts(), d.first_at, d.last_at,
                    host,
                )  # fmt: skip
                rows.append((mta, "dims", row))
            for e in batch.events:
                if since is None or e.ts >= since:
                    rows.append((mta, "events", _event_row(e)))
            for e in batch.retracted:
                rows.append((mta, "retract", _event_row(e)))
            gone = {(s, q) for s, q in batch.dropped} | {
                (m.scope, m.queue_id) for m in batch.upsert
            }
            rows += [(mta, "unpend", (mta, s, q)) for s, q in gone]
            for m in {(m.scope, m.queue_id): m for m in batch.upsert}.values():
                rows.append(
                    (
                        mta,
                        "pending",
                        (
                            mta,
                            m.scope,
                            m.queue_id,
                            m.account,
                            _micros(m.accepted_at) if m.accepted_at else None,
                            m.received and not m.finished,
                            m.origin is not None,
                            _micros(m.last_seen),
                            message_to_json(m),
                            m.origin or f"{m.scope} {m.queue_id}",
                        ),
                    )
                )
            for p in batch.positions:
                rows.append(
                    (
                        mta,
                        "checkpoints",
                        (p.head_hash, mta, p.path, p.inode, p.byte_offset, p.lines, p.mtime,
                         p.done, p.year, p.month),
                    )
                )  # fmt: skip
            for c in batch.cursors:
                rows.append(
                    (mta, "journal_cursors", (c.source, mta, c.cursor, c.realtime, c.entries))
                )
            for reason, n in batch.unparsed.items():
                rows.append((mta, "unparsed", (mta, reason, n, batch.samples.get(reason))))
            for kind, n in batch.anomalies.items():
                rows.append((mta, "anomalies", (mta, kind, n, batch.anomaly_samples.get(kind))))
            for (metric, bound), (n, total) in batch.histograms.items():
                if n or total:
                    rows.append((mta, "histograms", (mta, metric, bound, n, total)))
        return rows

    def _write_rows(self, rows: list[_Row]) -> None:
        by_table: dict[str, list[tuple[Any, ...]]] = {}
        for _, table, row in rows:
            by_table.setdefault(table, []).append(row)
        for table in _TABLE_ORDER:
            if table in by_table:
                _WRITERS[table](self.con, by_table[table])

    def prune(self, older_than: datetime) -> int:
        """Delete event rows older than the retention horizon; counters are kept."""
        row = self.con.execute(
            "DELETE FROM events WHERE ts < ? RETURNING 1", [_naive(older_than)]
        ).fetchall()
        return len(row)

    def compact(self, since: datetime | None = None) -> None:
        """Fold the counter and dimension deltas of buckets from ``since`` (default: all) into
        one row per key, written sorted by account: a single account's window then reads few
        blocks (see README, Performance).  The copies clustered for answers across accounts
        (``COPIES``) are brought up to date in the same transaction: afterwards each holds
        exactly the rows of its table (``copy_marks``).  One transaction."""
        con = self.con
        hour = None if since is None else _naive(since).replace(minute=0, second=0, microsecond=0)
        where, params = ("", []) if hour is None else ("WHERE bucket >= ?", [hour])
        sums = ", ".join(f"sum({c})::BIGINT" for c in COUNTER_COLUMNS)
        dim_sums = ", ".join(f"sum({c})::BIGINT" for c in DIM_COLUMNS)
        folds = {
            "counters": (
                f"SELECT bucket, mta, account, sender_domain, {sums}, host FROM counters {where} "
                "GROUP BY ALL ORDER BY account, bucket, host"
            ),
            "dims": (
                "SELECT bucket, mta, account, sender_domain, kind, value, "
                f"{dim_sums}, min(first_at), max(last_at), host FROM dims {where} "
                "GROUP BY bucket, mta, account, sender_domain, kind, value, host "
                "ORDER BY account, kind, value, bucket, host"
            ),
        }
        con.execute("BEGIN TRANSACTION")
        try:
            for table, fold in folds.items():
                copy, order = COPIES[table]
                end = _uncopied_from(con, table)
                if end is None:  # the marks do not hold: copy the whole table afresh
                    con.execute(f"DELETE FROM {copy}")
                else:
                    # rows written since the last compaction, outside the buckets folded now,
                    # stay as they are in the table: the copy takes them as they are
                    outside = "" if hour is None else "AND bucket < ?"
                    if hour is not None:
                        con.execute(
                            f"INSERT INTO {copy} SELECT * FROM {table} "
                            f"WHERE rowid >= ? {outside} ORDER BY {order}",
                            [end, *params],
                        )
                    con.execute(f"DELETE FROM {copy} {where}", params)
                    if table == "counters":  # folding keeps sums: only rows since add
                        _add_totals(con, "WHERE rowid >= ?", [end])
                con.execute(f"CREATE TEMP TABLE folded AS {fold}", params)
                con.execute(f"DELETE FROM {table} {where}", params)
                con.execute(f"INSERT INTO {table} SELECT * FROM folded")
                if end is None:
                    con.execute(f"INSERT INTO {copy} SELECT * FROM {table} ORDER BY {order}")
                    if table == "counters":
                        con.execute("DELETE FROM counter_totals")
                        _add_totals(con, "", [])
                else:
                    con.execute(f"INSERT INTO {copy} SELECT * FROM folded ORDER BY {order}")
                con.execute("DROP TABLE folded")
                # rows inserted in a transaction have their final rowids once committed
                con.execute(
                    f"UPDATE copy_marks SET rows_copied = (SELECT count(*) FROM {table}), "
                    "rowid_end = NULL WHERE tbl = ?",
                    [table],
                )
            con.execute("COMMIT")
        except BaseException:
            _rollback(con)
            raise
        for table in folds:
            # rows written by another writer in between are counted in neither: the marks
            # then do not hold (``_uncopied_from``) and the next compaction copies afresh
            con.execute(
                "UPDATE copy_marks SET rowid_end = "
                f"(SELECT coalesce(max(rowid) + 1, 0) FROM {table}) "
                "WHERE tbl = ? AND rowid_end IS NULL",
                [table],
            )

    # -- reading -----------------------------------------------------------------------------
    def positions(self) -> dict[str, Position]:
        rows = self.con.execute(
            "SELECT head_hash, path, inode, byte_offset, lines, mtime, done, year, month "
            "FROM checkpoints"
        ).fetchall()
        return {r[0]: Position(*r) for r in rows}

    def pending(self, mta: str) -> dict[tuple[str, str], Message]:
        rows = self.con.execute(
            "SELECT scope, queue_id, state FROM pending WHERE mta = ?", [mta]
        ).fetchall()
        return {(r[0], r[1]): message_from_json(r[2]) for r in rows}

    def account_stats(self, req: StatsRequest) -> list[AccountStats]:
        """EmailTrack numbers per account for the window (hour granularity, end exclusive)."""
        return account_stats(self.con, req)

    def last_of_path(self, path: str) -> Position | None:
        """The newest checkpoint of a path (the file that path named when last read)."""
        row = self.con.execute(
            "SELECT head_hash, path, inode, byte_offset, lines, mtime, done, year, month "
            "FROM checkpoints WHERE path = ? ORDER BY updated_at DESC LIMIT 1",
            [path],
        ).fetchone()
        return Position(*row) if row else None

    def journal_cursor(self, source: str) -> JournalCursor | None:
        """The committed cursor of a journal source (``journal.source_id``), if any."""
        row = self.con.execute(
            "SELECT source, cursor, epoch_us(realtime), entries FROM journal_cursors "
            "WHERE source = ?",
            [source],
        ).fetchone()
        return JournalCursor(row[0], row[1], int(row[2]), int(row[3])) if row else None

    def position(self, head_hash: str) -> Position | None:
        row = self.con.execute(
            "SELECT head_hash, path, inode, byte_offset, lines, mtime, done, year, month "
            "FROM checkpoints WHERE head_hash = ?",
            [head_hash],
        ).fetchone()
        return Position(*row) if row else None


_Row = tuple[str, str, tuple[Any, ...]]  # (mta, table, row)


@dataclass(frozen=True, slots=True)
class Isolated:
    """A row a commit could not store; kept in ``quarantine`` with the reason."""

    mta: str
    table: str
    row: str
    reason: str


def is_io_error(exc: BaseException) -> bool:
    """A failure of the disk, the file or memory (retry later), not of one row's content."""
    if isinstance(exc, duckdb.IOException | duckdb.OutOfMemoryException | duckdb.FatalException):
        return True
    text = str(exc)
    return any(
        s in text
        for s in ("No space left", "Input/output error", "invalidated", "Read-only file system")
    )


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    """Roll back, never hiding the error that made us roll back."""
    with contextlib.suppress(duckdb.Error):
        con.execute("ROLLBACK")


_NO_DETAIL = Detail()


def _event_row(e: Event) -> tuple[Any, ...]:
    d = e.detail or _NO_DETAIL
    return (
        _micros(e.ts), e.mta, e.scope, e.queue_id, e.account, e.sender_domain, e.recipient,
        e.outcome.value, e.size, e.local, d.sender, d.orig_recipient, d.message_id,
        d.client_host, d.client_ip, d.auth,
        None if d.sent_at is None else int(d.sent_at * 1_000_000),
        d.reason, d.router, d.transport, d.remote_host, d.remote_ip, d.dsn, d.tags, d.origin,
        d.parent, host_of(e.scope),
    )  # fmt: skip


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    cols: list[list[Any]] = [[] for _ in range(width)]
    for row in rows:
        for i, v in enumerate(row):
            cols[i].append(v)
    return cols


_FEW_ROWS = 200  # up to this many rows go as lists of values (less fixed cost than JSON)
_JSON_ROWS = 2000  # rows per JSON text


def _insert(table: str, *kinds: str) -> Any:
    """A writer of rows into ``table`` whose columns are of ``kinds``: ``s`` text, ``n`` a
    number, ``b`` a boolean, ``h``/``t``/``u`` hours/seconds/microseconds since the epoch,
    stored as a TIMESTAMP.  Many rows go to DuckDB as one JSON text (far cheaper to hand
    over than Python values one by one); a few as one list per column."""
    json_forms = {
        "s": "j->>{i}",
        "n": "(j->>{i})::BIGINT",
        "b": "(j->>{i})::BOOLEAN",
        "h": "make_timestamp((j->>{i})::BIGINT * 3600000000)",
        "t": "make_timestamp((j->>{i})::BIGINT * 1000000)",
        "u": "make_timestamp((j->>{i})::BIGINT)",
    }
    list_forms = {
        "s": "unnest(${p})::VARCHAR",
        "n": "unnest(${p})::BIGINT",
        "b": "unnest(${p})::BOOLEAN",
        "h": "make_timestamp(unnest(${p})::BIGINT * 3600000000)",
        "t": "make_timestamp(unnest(${p})::BIGINT * 1000000)",
        "u": "make_timestamp(unnest(${p})::BIGINT)",
    }
    from_json = ", ".join(json_forms[k].format(i=i) for i, k in enumerate(kinds))
    many = (
        f"INSERT INTO {table} SELECT {from_json} "
        "FROM (SELECT unnest(from_json($1::VARCHAR, '[\"JSON\"]')) AS j)"
    )
    few = f"INSERT INTO {table} SELECT " + ", ".join(
        list_forms[k].format(p=i + 1) for i, k in enumerate(kinds)
    )

    def write(con: duckdb.DuckDBPyConnection, rows: list[tuple[Any, ...]]) -> None:
        if len(rows) <= _FEW_ROWS:
            con.execute(few, _columns(rows, len(kinds)))
            return
        # in slices: DuckDB holds a JSON text's parsed rows at once, and the store works
        # within store.memory_limit (an event row has 26 columns)
        for at in range(0, len(rows), _JSON_ROWS):
            part = rows[at : at + _JSON_ROWS]
            con.execute(many, [json.dumps(part, ensure_ascii=False, allow_nan=False)])

    return write


def _retract(con: duckdb.DuckDBPyConnection, rows: list[tuple[Any, ...]]) -> None:
    for row in rows:
        con.execute(
            "DELETE FROM events WHERE rowid = (SELECT min(rowid) FROM events WHERE "
            "ts = make_timestamp(?) "
            "AND mta = ? AND scope = ? AND queue_id = ? AND account = ? AND sender_domain = ? "
            "AND recipient = ? AND outcome = ?)",
            list(row[:8]),
        )


def _unpend(con: duckdb.DuckDBPyConnection, rows: list[tuple[Any, ...]]) -> None:
    con.execute(
        "DELETE FROM pending WHERE (mta, scope, queue_id) IN "
        "(SELECT (unnest($1), unnest($2), unnest($3)))",
        _columns(rows, 3),
    )


def _checkpoints(con: duckdb.DuckDBPyConnection, rows: list[tuple[Any, ...]]) -> None:
    """A file's checkpoint is updated in place (an update costs a third of an upsert on
    the key's index, and a followed file's checkpoint is rewritten by every commit)."""
    now = _naive(_now())
    for head, *rest in rows:
        changed = con.execute(
            "UPDATE checkpoints SET mta = ?, path = ?, inode = ?, byte_offset = ?, lines = ?, "
            "mtime = ?, done = ?, year = ?, month = ?, updated_at = ? WHERE head_hash = ?",
            [*rest, now, head],
        ).fetchone()
        if not changed or not changed[0]:
            con.execute(
                "INSERT INTO checkpoints VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [head, *rest, now],
            )


def _journal_cursors(con: duckdb.DuckDBPyConnection, rows: list[tuple[Any, ...]]) -> None:
    now = _naive(_now())
    for source, mta, cursor, realtime, entries in rows:
        con.execute(
            "INSERT INTO journal_cursors VALUES (?, ?, ?, make_timestamp(?), ?, ?) "
            "ON CONFLICT (source) DO UPDATE SET mta = excluded.mta, cursor = excluded.cursor, "
            "realtime = excluded.realtime, entries = excluded.entries, "
            "updated_at = excluded.updated_at",
            [source, mta, cursor, realtime, entries, now],
        )


def _tally(table: str, key: str, count: str) -> Any:
    sql = (
        f"INSERT INTO {table} VALUES (?, ?, ?, ?) ON CONFLICT (mta, {key}) DO UPDATE "
        f"SET {count} = {table}.{count} + excluded.{count}, "
        f"sample = coalesce({table}.sample, excluded.sample)"
    )

    def write(con: duckdb.DuckDBPyConnection, rows: list[tuple[Any, ...]]) -> None:
        for row in rows:
            con.execute(sql, list(row))

    return write


def _histograms(con: duckdb.DuckDBPyConnection, rows: list[tuple[Any, ...]]) -> None:
    for row in rows:
        con.execute(
            "INSERT INTO histograms VALUES (?, ?, ?, ?, ?) ON CONFLICT (mta, metric, le) DO "
            "UPDATE SET count = histograms.count + excluded.count, "
            "sum = histograms.sum + excluded.sum",
            list(row),
        )


_WRITERS: dict[str, Any] = {
    "counters": _insert("counters", "h", "s", "s", "s", *"n" * len(COUNTER_COLUMNS), "s"),
    "dims": _insert("dims", "h", "s", "s", "s", "s", "s", *"n" * 7, "t", "t", "s"),
    "events": _insert(
        "events", "u", "s", "s", "s", "s", "s", "s", "s", "n", "b", *"s" * 6, "u", *"s" * 10
    ),
    "retract": _retract,
    "unpend": _unpend,
    "pending": _insert("pending", "s", "s", "s", "s", "u", "b", "b", "u", "s", "s"),
    "checkpoints": _checkpoints,
    "journal_cursors": _journal_cursors,
    "unparsed": _tally("unparsed", "reason", "lines"),
    "anomalies": _tally("anomalies", "kind", "count"),
    "histograms": _histograms,
}
_TABLE_ORDER = tuple(_WRITERS)


def account_stats(con: duckdb.DuckDBPyConnection, req: StatsRequest) -> list[AccountStats]:
    """EmailTrack numbers per account (any connection or cursor: readers use their own)."""
    start = _naive(req.start).replace(minute=0, second=0, microsecond=0)
    end = _naive(req.end)
    where = "bucket >= ? AND bucket < ?"
    params: list[Any] = [start, end]
    pwhere = "received AND accepted_at >= ? AND accepted_at < ?"
    pparams: list[Any] = [start, end]
    if req.account is not None:
        where += " AND account = ?"
        params.append(req.account)
        pwhere += " AND account = ?"
        pparams.append(req.account)
    if req.host is not None:
        where += " AND host = ?"
        params.append(req.host)
        pwhere += " AND split_part(scope, '/', 1) = ?"  # model.host_of
        pparams.append(req.host)
    counts = con.execute(
        "SELECT account, sum(sends + rejects), sum(successes), sum(defers), "
        "sum(fails + rejects), sum(bytes), sum(local_successes), sum(local_bytes) "
        f"FROM counters WHERE {where} GROUP BY account",
        params,
    ).fetchall()
    progress = dict(
        con.execute(
            "SELECT account, count(DISTINCT coalesce(root, scope || ' ' || queue_id)) "
            f"FROM pending WHERE {pwhere} GROUP BY account",
            pparams,
        ).fetchall()
    )
    out: dict[str, AccountStats] = {}
    for acct, sends, succ, defers, fails, size, lsucc, lsize in counts:
        out[acct] = AccountStats(
            account=acct,
            sendcount=int(sends),
            successcount=int(succ),
            defercount=int(defers),
            failcount=int(fails),
            totalsize=int(size),
            inprogresscount=int(progress.pop(acct, 0)),
            local_successcount=int(lsucc),
            local_totalsize=int(lsize),
        )
    for acct, n in progress.items():
        out[acct] = AccountStats(account=acct, inprogresscount=int(n))
    return [out[k] for k in sorted(out)]


def _now() -> datetime:
    return datetime.now(UTC)


def _uncopied_from(con: duckdb.DuckDBPyConnection, table: str) -> int | None:
    """The rowid from which ``table``'s rows are not in its copy (``COPIES``): those written
    since the last ``compact()``; None when that cannot be told (then only the table itself
    answers).  Holds because the table is append-only between compactions: rows since are
    appended after the copied ones, and rowids keep their order."""
    row = con.execute(
        "SELECT m.rows_copied, m.rowid_end, (SELECT count(*) FROM " + table + ") "
        "FROM copy_marks m WHERE m.tbl = ?",
        [table],
    ).fetchone()
    if row is None or row[1] is None:
        return None
    copied, end, total = (int(v) for v in row)
    since = con.execute(f"SELECT count(*) FROM {table} WHERE rowid >= ?", [end]).fetchone()
    return end if since is not None and copied + int(since[0]) == total else None


def _add_totals(con: duckdb.DuckDBPyConnection, where: str, params: list[Any]) -> None:
    """Add the counters rows matching ``where`` to ``counter_totals`` (one row per key)."""
    sums = ", ".join(f"sum({c})::BIGINT" for c in COUNTER_COLUMNS)
    con.execute(
        "CREATE TEMP TABLE totals AS SELECT mta, host, account, "
        f"{sums} FROM (SELECT * FROM counter_totals UNION ALL BY NAME "
        f"SELECT mta, host, account, {', '.join(COUNTER_COLUMNS)} FROM counters {where}) "
        "GROUP BY mta, host, account ORDER BY mta, host, account",
        params,
    )
    con.execute("DELETE FROM counter_totals")
    con.execute("INSERT INTO counter_totals SELECT * FROM totals")
    con.execute("DROP TABLE totals")


@contextlib.contextmanager
def _snapshot(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Statements inside read one snapshot: a transaction, unless one is open already."""
    try:
        con.execute("BEGIN TRANSACTION")
    except duckdb.TransactionException:
        yield  # already inside the caller's transaction
        return
    try:
        yield
    finally:
        _rollback(con)  # nothing was written: ending the read transaction is enough


DIM_KINDS = {  # the dimensions kept in dims (``kind``), not as columns of counters
    Dimension.TAG: "tag",
    Dimension.IP: "ip",
    Dimension.PROVIDER: "provider",
    Dimension.RECIPIENT_DOMAIN: "recipient_domain",
}


def dim_kind(req: SeriesRequest) -> str | None:
    """The ``kind`` of dims a series request reads (its filter's or grouping's), None for
    counters; ``ValueError`` for a filter on one and a grouping by another (not kept)."""
    kinds = {DIM_KINDS[d] for d, _ in req.filters if d in DIM_KINDS}
    if req.group in DIM_KINDS:
        kinds.add(DIM_KINDS[req.group])
    if len(kinds) > 1:
        raise ValueError(
            "filtering by one of tag/ip/provider/recipient domain and grouping "
            "by another is not supported"
        )
    return kinds.pop() if kinds else None


def series(con: duckdb.DuckDBPyConnection, req: SeriesRequest) -> list[SeriesRow]:
    """Counts per time bucket (and group value) for the vendor shapes.

    Account and sender-domain series come from ``counters``; tag, IP, provider and
    recipient-domain series from ``dims``. A filter on one of the latter combined with a
    grouping by another is not kept (``ValueError``).

    What the vendors count is what was accepted for delivery: ``accepted_*`` and
    ``failed_permanent`` leave out SMTP-time RCPT rejects (those are in ``rejected`` only;
    EmailTrack counts them, see ``account_stats``), and messages the MTA generated itself
    (account ``-system-``: bounces, delay warnings) are no vendor's statistics at all."""
    kind = dim_kind(req)
    where = ["bucket >= ?", "bucket < ?"]
    params: list[Any] = [
        _naive(req.start).replace(minute=0, second=0, microsecond=0),
        _naive(req.end),
    ]
    where.append("account <> ?")
    params.append(SYSTEM)
    if req.accounts is not None:
        where.append("list_contains(?, account)")
        params.append(list(req.accounts))
    for dim, value in req.filters:
        if dim is Dimension.ACCOUNT:
            where.append("account = ?")
        elif dim is Dimension.SENDER_DOMAIN:
            where.append("sender_domain = ?")
        else:
            where.append("value = ?")
        params.append(value)
    if req.host is not None:
        where.append("host = ?")
        params.append(req.host)
    if req.domain_patterns:  # GLOB reads * ? [...] [!...] as fnmatch does
        where.append(f"({' OR '.join(['sender_domain GLOB ?'] * len(req.domain_patterns))})")
        params.extend(req.domain_patterns)
    bucket = (
        "NULL::TIMESTAMP"
        if req.resolution is None
        else (f"date_trunc('{req.resolution.value}', bucket)")
    )
    if kind is not None:
        where.append("kind = ?")
        params.append(kind)
        # grouped by the dimension's value, or by a column dims keep (a tag's mail per domain)
        columns = {Dimension.ACCOUNT: "account", Dimension.SENDER_DOMAIN: "sender_domain"}
        key = "NULL"
        if req.group in DIM_KINDS:
            key = "value"
        elif req.group is not None:
            key = columns.get(req.group, "NULL")
        table = "dims"
        sql = (
            # dims count a reject as accepted (in or out by account) and failed: take it out
            f"SELECT {bucket} AS b, {key} AS k, "
            "sum(accepted_out - CASE WHEN account = '-remote-' THEN 0 ELSE rejected END), "
            "sum(accepted_in - CASE WHEN account = '-remote-' THEN rejected ELSE 0 END), "
            "sum(delivered), sum(deferred), sum(failed - rejected), sum(rejected), sum(bytes), "
            "min(first_at), max(last_at) FROM {source} GROUP BY ALL ORDER BY 1, 2"
        )
    else:
        names = {Dimension.ACCOUNT: "account", Dimension.SENDER_DOMAIN: "sender_domain"}
        key = names.get(req.group, "NULL") if req.group is not None else "NULL"
        sql = (
            f"SELECT {bucket} AS b, {key} AS k, "
            "sum(CASE WHEN account = '-remote-' THEN 0 ELSE sends END), "
            "sum(CASE WHEN account = '-remote-' THEN sends ELSE 0 END), "
            "sum(successes), sum(defers), sum(fails), sum(rejects), sum(bytes), "
            "min(bucket), max(bucket) + INTERVAL 1 HOUR "
            "FROM {source} GROUP BY ALL ORDER BY 1, 2"
        )
        table = "counters"
    found = _series_rows(con, table, sql, " AND ".join(where), params, _across(req, table))
    return series_rows(found, _aware)


def series_rows(
    found: Iterable[Sequence[Any]], time_of: Callable[[Any], datetime | None]
) -> list[SeriesRow]:
    """``SeriesRow``s of the series SQL's rows (bucket, key, the seven sums, first, last;
    a row whose sums are NULL is none), its times read by ``time_of`` (here and over a
    fleet, logstats.fleet.engine)."""
    return [
        SeriesRow(
            bucket=time_of(b),
            key=None if k is None else str(k),
            accepted_outgoing=int(ao),
            accepted_incoming=int(ai),
            delivered=int(dl),
            failed_temporary=int(df),
            failed_permanent=int(fp),
            rejected=int(rj),
            bytes=int(by),
            first=time_of(first),
            last=time_of(last),
        )
        for b, k, ao, ai, dl, df, fp, rj, by, first, last in found
        if ao is not None
    ]


def _across(req: SeriesRequest, table: str) -> bool:
    """Whether the copy of ``table`` clustered across accounts (``COPIES``) answers ``req``
    with fewer blocks read: any account's rows, filtered by what the copy is sorted by."""
    if req.accounts is not None or any(d is Dimension.ACCOUNT for d, _ in req.filters):
        return False
    if table == "counters":
        return any(d is Dimension.SENDER_DOMAIN for d, _ in req.filters)
    return any(d in DIM_KINDS for d, _ in req.filters)


def _series_rows(
    con: duckdb.DuckDBPyConnection,
    table: str,
    sql: str,
    where: str,
    params: list[Any],
    across: bool,
) -> list[tuple[Any, ...]]:
    """Run ``sql`` (``{source}``: the rows to sum) over ``table``'s rows matching ``where``;
    ``across``: read them from its copy plus the table's rows written since the copy was
    made, which is the same rows, clustered for answers across accounts."""
    if not across:
        return con.execute(sql.replace("{source}", f"{table} WHERE {where}"), params).fetchall()
    copy, _ = COPIES[table]
    with _snapshot(con):
        end = _uncopied_from(con, table)
        if end is None:
            return con.execute(sql.replace("{source}", f"{table} WHERE {where}"), params).fetchall()
        source = (
            f"(SELECT * FROM {copy} WHERE {where} "
            f"UNION ALL SELECT * FROM {table} WHERE rowid >= ? AND {where})"
        )
        return con.execute(sql.replace("{source}", source), [*params, end, *params]).fetchall()


_OUTCOME_SUMS = (
    ("send", "sends"),
    ("delivered", "successes"),
    ("deferred", "defers"),
    ("failed", "fails"),
    ("rejected", "rejects"),
    ("expired", "expired"),
    ("bytes_delivered", "bytes"),
)


def metric_rows(
    con: duckdb.DuckDBPyConnection, per_account: bool
) -> tuple[
    list[tuple[tuple[str, str], str, int]],
    list[tuple[str, str, int]],
    list[tuple[str, str, int]] | None,
]:
    """((mta, host), outcome, total), (mta, reason, unknown lines), and per-account totals
    (host: the syslog host of the lines, ``""`` where the log names none).

    All-time sums: read from ``counter_totals`` plus the counters rows written since it was
    made (``_uncopied_from``), or from ``counters`` when its marks do not hold."""
    sums = ", ".join(f"sum({col})" for _, col in _OUTCOME_SUMS)
    with _snapshot(con):
        end = _uncopied_from(con, "counters")
        source, params = "counters", []
        if end is not None:
            cols = ", ".join(COUNTER_COLUMNS)
            source = (
                f"(SELECT mta, host, account, {cols} FROM counter_totals UNION ALL "
                f"SELECT mta, host, account, {cols} FROM counters WHERE rowid >= ?)"
            )
            params = [end]
        mail = []
        for row in con.execute(
            f"SELECT mta, host, {sums} FROM {source} GROUP BY mta, host ORDER BY mta, host",
            params,
        ).fetchall():
            mail += [
                ((row[0], row[1] or ""), name, int(v or 0))
                for (name, _), v in zip(_OUTCOME_SUMS, row[2:], strict=True)
            ]
        unknown = [
            (m, r, int(n))
            for m, r, n in con.execute(
                "SELECT mta, reason, lines FROM unparsed ORDER BY 1, 2"
            ).fetchall()
        ]
        accounts = None
        if per_account:
            accounts = []
            for row in con.execute(
                f"SELECT account, {sums} FROM {source} GROUP BY account ORDER BY account",
                params,
            ).fetchall():
                accounts += [
                    (row[0], n, int(v or 0))
                    for (n, _), v in zip(_OUTCOME_SUMS, row[1:], strict=True)
                ]
    return mail, unknown, accounts


def anomaly_rows(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, int]]:
    """(mta, kind, count) of every anomaly met so far."""
    return [
        (m, k, int(n))
        for m, k, n in con.execute(
            "SELECT mta, kind, count FROM anomalies ORDER BY 1, 2"
        ).fetchall()
    ]


def histogram_rows(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, int, int, int]]:
    """(mta, metric, upper bound, observations, their sum) of every stored bucket."""
    return [
        (m, metric, int(le), int(n), int(total))
        for m, metric, le, n, total in con.execute(
            "SELECT mta, metric, le, count, sum FROM histograms ORDER BY 1, 2, 3"
        ).fetchall()
    ]
