"""A batch that cannot be stored as it is does not stop ingestion.

The store refuses a row (here: a byte counter beyond 64 bits, made by one message of a
size just under the grammar's limit delivered to 9,000 recipients in one hour).  The row
is kept in ``quarantine`` with its content and reason, counted as an anomaly (in the store
and on ``/metrics``), the rest of the batch and every later line is committed, and the
daemon neither exits nor retries the same batch forever.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from prometheus_client.parser import text_string_to_metric_families

from logstats import api
from logstats.model import MAX_NUMBER, Event, Outcome, StatsRequest, Tally
from logstats.store import Batch, Store
from tests.daemon_harness import Messages, Serve, append, short_dir, summed, write_config

HUGE = MAX_NUMBER - 1  # accepted by the grammar; 9,000 deliveries of it overflow BIGINT


def huge_message(n: int = 9000) -> bytes:
    ts = "2026-11-24 07:00:00"
    q = "1xHuge-0000AA-01"
    lines = [
        f"{ts} {q} <= carol@carol.test H=(c.test) [192.0.2.5] P=esmtpa "
        f"A=plain_server:carol@carol.test S={HUGE} id=huge@carol.test"
    ]
    lines += [
        f"{ts} {q} => r{i}@dest.example R=dnslookup T=remote_smtp H=mx.dest.example "
        f'[192.0.2.9] C="250 OK"'
        for i in range(n)
    ]
    lines.append(f"{ts} {q} Completed")
    return "".join(line + "\n" for line in lines).encode()


@pytest.fixture
def work() -> Iterator[Path]:
    with short_dir() as path:
        yield path


@pytest.fixture
def serve() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for d in started:
        d.close()


def test_store_keeps_what_it_can_and_quarantines_the_rest(tmp_path: Path) -> None:
    """Store level: one unstorable counter row among good ones; the good rows, the
    checkpoint and the events are committed, the bad row is kept with its reason."""
    from datetime import UTC, datetime

    from logstats.model import Position

    ts = datetime(2026, 11, 24, 6, tzinfo=UTC)
    hour = int(ts.timestamp()) // 3600
    batch = Batch(
        mta="exim",
        events=[Event(ts, "exim", "", "q1", "alice", "alice.test", Outcome.SEND)],
        counters={
            (hour, "alice", "alice.test", ""): Tally(sends=1),
            (hour, "carol", "carol.test", ""): Tally(sends=1, successes=9000, bytes=9000 * HUGE),
        },
        positions=[Position("h1", "/var/log/exim4/mainlog", 1, 100, 3)],
    )
    with Store(tmp_path / "s.duckdb") as store:
        isolated = store.commit(batch)
        assert ["counters"] == [i.table for i in isolated]
        assert "carol" in isolated[0].row
        assert 100 == store.positions()["h1"].byte_offset
        everything = StatsRequest(
            datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
        )
        assert ["alice"] == [s.account for s in store.account_stats(everything)]
        rows = store.con.execute("SELECT tbl, content, reason FROM quarantine").fetchall()
        assert 1 == len(rows) and "carol" in rows[0][1] and rows[0][2]
        assert [("exim", "unstorable-counters", 1)] == store.con.execute(
            "SELECT mta, kind, count FROM anomalies"
        ).fetchall()


def test_store_raises_io_errors_and_writes_nothing(tmp_path: Path, monkeypatch) -> None:
    """A disk or IO failure is not a bad row: nothing is written, the caller retries."""
    import logstats.store as store_mod

    def boom(*args: object) -> None:
        raise duckdb.IOException("No space left on device (injected)")

    with Store(tmp_path / "s.duckdb") as store:
        monkeypatch.setitem(store_mod._WRITERS, "checkpoints", boom)
        from logstats.model import Position

        with pytest.raises(duckdb.IOException):
            store.commit(Batch(mta="exim", positions=[Position("h", "/x", 1, 5, 1)]))
        monkeypatch.undo()
        assert {} == store.positions()
        assert [] == store.con.execute("SELECT * FROM quarantine").fetchall()


def test_daemon_isolates_an_unstorable_batch_and_goes_on(work: Path, serve: list[Serve]) -> None:
    log = work / "mainlog"
    log.touch()
    cfg = write_config(work, [(log, "exim")], domains={"bob.test": "bob", "carol.test": "carol"})
    d = Serve(cfg)
    serve.append(d)
    d.wait_ready()
    append(log, huge_message())
    isolated = d.wait_event("rows_isolated", timeout=30)
    assert "counters" in isolated["tables"] and isolated["reason"]
    gen = Messages(3)
    append(log, b"".join(gen.send("bob", "bob.test", 10) for _ in range(5)))
    expected = summed({"bob": {"SENDCOUNT": 5, "SUCCESSCOUNT": 5, "TOTALSIZE": 50}})
    got = d.wait_stats(expected, timeout=20)
    assert expected["bob"] == got["bob"]
    assert d.proc.poll() is None
    assert "commit_failed" not in d.names()
    assert 1 == d.names().count("rows_isolated")
    status, text = api.get(str(work / "ls.sock"), "/metrics", {})
    assert 200 == status
    anomalies = {
        (s.labels["mta"], s.labels["kind"]): s.value
        for f in text_string_to_metric_families(text)
        if f.name == "logstats_anomalies"
        for s in f.samples
    }
    assert 1 == anomalies[("exim", "unstorable-counters")]
    assert 0 == d.terminate()
    with Store(work / "db.duckdb", read_only=True) as store:
        tables = {r[0] for r in store.con.execute("SELECT tbl FROM quarantine").fetchall()}
        assert "counters" in tables
