"""Whatever path a line takes through the pipeline, the store ends up the same.

Three paths: the line-by-line one (every record fed to the one correlator of the main
process: ``ingest.workers: 1``), the fast one (workers parse pieces and count the
self-contained messages themselves; the main process merges their counts and correlates
the rest), and the daemon following the same lines.  They are compared on everything a
store holds (``store_contents``): counters and dimension counters folded by key, event
rows, messages in flight with their state, unknown lines, anomalies, the /metrics
histograms (delivery delay, message size) bucket by bucket.  Inputs: the real
MTAs' logs of tests/mta/samples, the public corpus, and large logs of bench/genlog.py,
cut into small pieces so that many messages span pieces.  Every log line comes from those
files or from fixed dates; no test reads the wall clock.
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from logstats.config import Config
from logstats.ingest import Ingestor
from logstats.pipeline import Pipeline
from logstats.store import Store
from tests.daemon_harness import (
    DOMAINS,
    SAMPLES,
    Serve,
    domains_of,
    genlog,
    store_contents,
    write_config,
)

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)  # a fixed "now": which event rows are recent


def ingest(db: Path, config: Config, paths: list[Path], chunk: int) -> Pipeline:
    """Backfill ``paths`` into ``db`` reading ``chunk`` bytes at a time; the pipeline used."""
    with Store(db) as store:
        ing = Ingestor(store, config, now=lambda: NOW, chunk_size=chunk)
        try:
            for info, mta in ing.plan([str(p) for p in paths]):
                ing.ingest(info, mta)
        finally:
            ing.close()
    return ing.pipeline


def both_ways(tmp: Path, paths: list[Path], chunk: int, **cfg: Any) -> Pipeline:
    """Backfill line by line and by the fast path; assert the stores are alike and return
    the fast path's pipeline (to see what it did)."""
    settings: dict[str, Any] = {"timezone": "UTC", "domains": dict(DOMAINS), **cfg}
    ingest(tmp / "lines.duckdb", Config(**settings, workers=1), paths, chunk)
    fast = ingest(
        tmp / "fast.duckdb", Config(**settings, workers=2, parallel_bytes=1), paths, chunk
    )
    lines, quick = store_contents(tmp / "lines.duckdb"), store_contents(tmp / "fast.duckdb")
    for table in lines:
        assert lines[table] == quick[table], table
    return fast


def test_real_mta_logs_fast_path_equals_line_by_line(tmp_path: Path) -> None:
    """The logs real Exim and Postfix wrote in the scenario (tests/mta/samples).  The
    Postfix scenario submits over loopback (every message may be a filter's re-injection,
    so all of it is correlated in the main process); Exim's has self-contained messages."""
    counted = {}
    for mta in ("exim", "postfix"):
        work = tmp_path / mta
        work.mkdir()
        counted[mta] = both_ways(work, [SAMPLES / f"{mta}.log"], 2048).counted_in_workers
        # the histograms compared hold something: sizes of both, delays of Postfix (the
        # Exim scenario's log_selector has no +queue_time)
        metrics = {row[1] for row in store_contents(work / "fast.duckdb")["histograms"]}
        assert {"message_size", *(["delivery_delay"] if mta == "postfix" else [])} == metrics
    assert counted["exim"] > 0


def test_corpus_fast_path_equals_line_by_line(tmp_path: Path) -> None:
    """Every file of the public corpus, each MTA's files in one store."""
    for mta in ("exim", "postfix"):
        files = sorted(p for p in (CORPUS / mta).rglob("*") if p.is_file())
        assert files, f"no corpus files under {CORPUS / mta}"
        work = tmp_path / mta
        work.mkdir()
        copies = []
        for i, f in enumerate(files):
            copy = work / f"{i:03d}.log"
            shutil.copyfile(f, copy)
            os.utime(copy, (NOW.timestamp(), NOW.timestamp()))  # yearless stamps: before NOW
            copies.append(copy)
        settings: dict[str, Any] = {"timezone": "UTC", "domains": dict(DOMAINS)}
        for name, workers in (("lines", 1), ("fast", 2)):
            with Store(work / f"{name}.duckdb") as store:
                config = Config(**settings, workers=workers, parallel_bytes=1)
                ing = Ingestor(store, config, now=lambda: NOW, chunk_size=4096)
                try:
                    for path in copies:
                        for info, kind in ing.plan([str(path)], mta):
                            ing.ingest(info, kind)
                finally:
                    ing.close()
        assert store_contents(work / "lines.duckdb") == store_contents(work / "fast.duckdb")


@pytest.mark.parametrize("mta", ["exim", "postfix"])
def test_generated_log_fast_path_equals_line_by_line(tmp_path: Path, mta: str) -> None:
    """A large generated log in 64 KiB pieces: most messages are counted by the workers,
    the ones that span pieces, hop or are named by others by the main process."""
    log = tmp_path / f"{mta}.log"
    truth = genlog(mta, 60000, log, seed=3)
    fast = both_ways(
        tmp_path,
        [log],
        65536,
        domains=domains_of(Path(f"{log}.userdomains")),
        uids={int(u): n for n, u in truth["local_users"].items()},
    )
    assert fast.counted_in_workers > 1000
    assert fast.fed_here == 0


def exim(ts: str, text: str) -> str:
    return f"2024-05-01 {ts} {text}\n"


def test_a_message_in_flight_here_is_not_counted_by_a_worker(tmp_path: Path) -> None:
    """A queue id whose message is still in flight in the main process (received in an
    earlier file) comes back whole in the next file (a replayed receipt, a delivery, its
    completion): a worker alone would count a second message; the main process sees the
    id in flight, feeds those records itself, and the store equals the line-by-line one
    (one send, one delivery, a duplicate-receipt anomaly)."""
    receipt = (
        "1rAAAA-000001-AB <= a@alice.test H=(x) [10.0.0.1] P=esmtpa A=plain:a@alice.test S=100"
    )
    older = tmp_path / "mainlog.1"
    older.write_text(
        exim("00:00:00", receipt) + exim("00:00:01", "SMTP connection from [10.9.9.9]")
    )
    newer = tmp_path / "mainlog"
    newer.write_text(
        exim("00:02:00", receipt)
        + exim(
            "00:02:01", "1rAAAA-000001-AB => b@bob.test R=dnslookup T=remote_smtp H=mx [10.1.1.1]"
        )
        + exim("00:02:02", "1rAAAA-000001-AB Completed")
    )
    fast = both_ways(tmp_path, [older, newer], 1 << 20)
    assert fast.fed_here == 1 and fast.counted_in_workers == 0
    anomalies = store_contents(tmp_path / "fast.duckdb")["anomalies"]
    assert [("exim", "duplicate-receipt", 1)] == anomalies


def test_a_clock_jump_is_left_to_the_main_process(tmp_path: Path) -> None:
    """A piece whose records jump more than a day: its records all go to the main
    process, whose log clock decides (the stray stamp does not move it)."""
    msg = "1rBBBB-000001-AB"
    body = (
        exim(
            "00:00:00", f"{msg} <= a@alice.test H=(x) [10.0.0.1] P=esmtpa A=plain:a@alice.test S=1"
        )
        + "2024-05-09 00:00:00 1rCCCC-000001-AB <= c@alice.test H=(x) [10.0.0.2] P=esmtp S=1\n"
        + exim("00:00:02", f"{msg} => b@bob.test R=dnslookup T=remote_smtp H=mx [10.1.1.1]")
        + exim("00:00:03", f"{msg} Completed")
    )
    log = tmp_path / "mainlog"
    log.write_text(body)
    fast = both_ways(tmp_path, [log], 1 << 20)
    assert fast.counted_in_workers == 0


def test_daemon_fed_the_same_lines_equals_both(tmp_path: Path) -> None:
    """The daemon catching up a backlog (parsed and counted in workers), then following
    the rest as it is appended (parsed here): the store equals a line-by-line backfill."""
    log = tmp_path / "gen.log"
    truth = genlog("exim", 60000, log, seed=4)
    body = log.read_bytes()
    lines = body.splitlines(keepends=True)
    first, rest = b"".join(lines[:50000]), lines[50000:]
    assert len(first) > 4 << 20  # a backlog: the daemon hands it to workers
    accounts = {
        "domains": domains_of(Path(f"{log}.userdomains")),
        "uids": {int(u): n for n, u in truth["local_users"].items()},
    }
    followed = tmp_path / "mainlog"
    followed.write_bytes(first)
    cfg = write_config(
        tmp_path, [(followed, "exim")], accounts=accounts, ingest={"batch_lines": 5000}
    )
    with Serve(cfg) as d:
        d.wait_ready(timeout=120)
        with followed.open("ab") as f:
            for i in range(0, len(rest), 1000):
                f.write(b"".join(rest[i : i + 1000]))
                f.flush()
                d.wait_lines(50000 + min(i + 1000, len(rest)), timeout=60)
        assert 0 == d.terminate()
    settings: dict[str, Any] = {"timezone": "UTC", **accounts}
    ingest(tmp_path / "lines.duckdb", Config(**settings, workers=1), [log], 1 << 20)
    daemon, lines_db = (
        store_contents(tmp_path / "db.duckdb"),
        store_contents(tmp_path / "lines.duckdb"),
    )
    assert daemon["histograms"], "no message sizes counted"
    for table in ("counters", "dims", "pending", "unparsed", "anomalies", "histograms"):
        assert daemon[table] == lines_db[table], table
