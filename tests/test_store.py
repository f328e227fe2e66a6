"""The DuckDB store: one transaction per batch, named migrations, clear errors."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import duckdb
import pytest

import logstats.store as store_mod
from logstats.errors import SchemaError, StoreError, StoreLockedError
from logstats.model import Event, Message, Outcome, Position, StatsRequest
from logstats.store import MIGRATIONS, Batch, Store

T0 = datetime(2024, 5, 1, 10, 30, tzinfo=UTC)
ALL = StatsRequest(datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC))


def batch(n: int = 1) -> Batch:
    events = [
        Event(T0, "exim", "", f"id{i}", "alice", "alice.test", Outcome.SEND) for i in range(n)
    ]
    msg = Message(
        scope="",
        queue_id="id0",
        first_seen=T0,
        last_seen=T0,
        received=True,
        account="alice",
        accepted_at=T0,
    )
    return Batch(
        mta="exim", events=events, upsert=[msg], positions=[Position("h1", "/var/log/x", 1, 100, 2)]
    )


def test_commit_writes_counters_pending_and_checkpoint_together(tmp_path):
    """After a commit the counters, the in-flight message and the checkpoint are stored."""
    with Store(tmp_path / "s.duckdb") as store:
        store.commit(batch(3))
        assert 3 == store.account_stats(ALL)[0].sendcount
        assert 1 == store.account_stats(ALL)[0].inprogresscount
        assert 100 == store.positions()["h1"].byte_offset
        assert ["id0"] == [k[1] for k in store.pending("exim")]


def test_failure_inside_commit_changes_nothing(tmp_path, monkeypatch):
    """A failure after the counters were written rolls everything back."""
    with Store(tmp_path / "s.duckdb") as store:
        store.commit(batch(1))

        def boom(*args, **kwargs):
            raise duckdb.IOException("disk full (injected)")

        monkeypatch.setitem(store_mod._WRITERS, "checkpoints", boom)
        with pytest.raises(duckdb.IOException):
            store.commit(batch(5))
        monkeypatch.undo()
        assert 1 == store.account_stats(ALL)[0].sendcount
        assert 100 == store.positions()["h1"].byte_offset


def test_pending_round_trip(tmp_path):
    """An in-flight message, orphans included, reads back equal to what was written."""
    from logstats.model import Attempt

    orphan = Attempt(T0, "", "id9", "a@b", Outcome.DELIVERED, cut_through=True)
    msg = Message(
        scope="",
        queue_id="id9",
        first_seen=T0,
        last_seen=T0,
        orphans=[orphan],
        done={"x@y": "delivered"},
        deferrals=["x@y|2024"],
    )
    with Store(tmp_path / "s.duckdb") as store:
        store.commit(Batch(mta="exim", upsert=[msg]))
        assert msg == store.pending("exim")[("", "id9")]


def test_migrations_are_recorded_once(tmp_path):
    """Each named migration is applied once and recorded; reopening applies nothing."""
    path = tmp_path / "m.duckdb"
    Store(path).close()
    with Store(path) as store:
        assert [name for name, _ in MIGRATIONS] == store.migrations()


def test_newer_schema_is_refused(tmp_path):
    """A database written by a newer logstats (unknown migration) is refused by name."""
    path = tmp_path / "n.duckdb"
    with Store(path) as store:
        store.con.execute("INSERT INTO migrations VALUES ('9999_future', now()::TIMESTAMP)")
    with pytest.raises(SchemaError, match="9999_future"):
        Store(path)


def test_missing_database_for_reading(tmp_path):
    """Querying a database that does not exist says so, and creates nothing."""
    with pytest.raises(StoreError, match="does not exist"):
        Store(tmp_path / "nope.duckdb", read_only=True)
    assert not (tmp_path / "nope.duckdb").exists()


def test_locked_database_gives_a_clear_error(tmp_path):
    """A database held by another process gives StoreLockedError, not a traceback."""
    path = tmp_path / "l.duckdb"
    Store(path).close()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb,sys; c=duckdb.connect({str(path)!r}); print('ok', flush=True); "
            "sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert "ok" == holder.stdout.readline().strip()
        with pytest.raises(StoreLockedError, match=rf"locked by process {holder.pid} "):
            Store(path)
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)


def test_compact_keeps_sums(tmp_path):
    """Folding counter deltas keeps every sum."""
    with Store(tmp_path / "c.duckdb") as store:
        for _ in range(3):
            store.commit(batch(2))
        before = store.account_stats(ALL)
        store.compact()
        assert before == store.account_stats(ALL)
        assert 1 == store.con.execute("SELECT count(*) FROM counters").fetchone()[0]


def test_retention_prunes_events_keeps_counters(tmp_path):
    """Events older than the horizon are deleted; counters stay."""
    with Store(tmp_path / "r.duckdb") as store:
        store.commit(batch(4))
        assert 4 == store.prune(datetime(2024, 6, 1, tzinfo=UTC))
        assert 0 == store.con.execute("SELECT count(*) FROM events").fetchone()[0]
        assert 4 == store.account_stats(ALL)[0].sendcount
