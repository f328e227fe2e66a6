"""Backfill end to end: counts equal the scripted truth, once, whatever the cuts."""

from __future__ import annotations

import gzip
import itertools
import json
import os
import stat
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logstats.config import Config
from logstats.ingest import Ingestor
from logstats.model import StatsRequest
from logstats.query import emailtrack_row
from logstats.store import Store
from tests.conftest import ROOT, all_stats, run_cli, scenario_config
from tests.logmaker import as_strings, exim_log

WINDOW = StatsRequest(datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC))
CONFIG = Config(
    timezone="UTC",
    batch_lines=7,  # tiny batches: many commits per file
    domains={"alice.test": "alice", "bob.test": "bob"},
)


def backfill(db: Path, *paths: Path) -> None:
    with Store(db) as store:
        ing = Ingestor(store, CONFIG, now=lambda: datetime(2025, 1, 1, tzinfo=UTC), chunk_size=300)
        for info, mta in ing.plan([str(p) for p in paths]):
            ing.ingest(info, mta)


def stats(db: Path) -> dict[str, dict[str, str]]:
    with Store(db, read_only=True) as store:
        return {s.account: emailtrack_row(s) for s in store.account_stats(WINDOW)}


def write(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


SETTINGS = settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(seed=st.integers(0, 10_000))
def test_one_pass_equals_truth(tmp_path, seed):
    """One pass over a scripted log gives exactly the script's numbers for every account."""
    script = exim_log(seed)
    run = uuid.uuid4().hex  # hypothesis reuses tmp_path across examples
    log = tmp_path / f"one{seed}-{run}.log"
    write(log, script.lines)
    db = tmp_path / f"one{seed}-{run}.duckdb"
    backfill(db, log)
    assert as_strings(script.truth) == stats(db)


@SETTINGS
@given(seed=st.integers(0, 10_000), cut=st.floats(0, 1))
def test_split_with_restart_equals_one_pass(tmp_path, seed, cut):
    """A log read in two runs (split at any line, the store reopened between) and then
    read a third time counts exactly what one pass counts."""
    script = exim_log(seed)
    k = int(len(script.lines) * cut)
    run = uuid.uuid4().hex  # hypothesis reuses tmp_path across examples
    log = tmp_path / f"split{seed}-{k}-{run}.log"
    db = tmp_path / f"split{seed}-{k}-{run}.duckdb"
    write(log, script.lines[:k])
    backfill(db, log)
    with log.open("a") as f:
        f.write("".join(line + "\n" for line in script.lines[k:]))
    backfill(db, log)
    backfill(db, log)
    assert as_strings(script.truth) == stats(db)


def test_partial_last_line_waits(tmp_path):
    """A last line without its newline is not consumed until it is complete."""
    script = exim_log(7)
    log = tmp_path / "partial.log"
    text = "".join(line + "\n" for line in script.lines)
    cut = text.rfind("\n", 0, len(text) - 1) + 10  # inside the last line
    log.write_text(text[:cut])
    db = tmp_path / "p.duckdb"
    backfill(db, log)
    log.write_text(text)
    backfill(db, log)
    assert as_strings(script.truth) == stats(db)


def test_rotated_and_compressed_copies_add_nothing(tmp_path):
    """mainlog, then mainlog.1 (renamed) and mainlog.2.gz (compressed): counted once; a
    rotated set given in any name order is read oldest first by content."""
    first, second = exim_log(1), exim_log(2)
    old = tmp_path / "mainlog.1"
    write(old, first.lines)
    db = tmp_path / "r.duckdb"
    backfill(db, old)
    gz = tmp_path / "mainlog.2.gz"
    with gzip.open(gz, "wt") as f:
        f.write("".join(line + "\n" for line in first.lines))
    old.unlink()
    new = tmp_path / "mainlog"
    write(
        new,
        [
            line.replace("2024-12-31", "2025-01-05").replace("2025-01-01", "2025-01-06")
            for line in second.lines
        ],
    )
    backfill(db, new, gz)
    backfill(db, gz, new)
    merged: dict[str, dict[str, int]] = {}
    for truth in (first.truth, second.truth):
        for account, values in truth.items():
            for k, v in values.items():
                merged.setdefault(account, {}).setdefault(k, 0)
                merged[account][k] += v
    assert as_strings(merged) == stats(db)


def test_cli_backfill_and_query(tmp_path):
    """The CLI backfills a gzipped log and answers with the EmailTrack envelope."""
    script = exim_log(3)
    log = tmp_path / "mainlog.gz"
    with gzip.open(log, "wt") as f:
        f.write("".join(line + "\n" for line in script.lines))
    db = tmp_path / "cli.duckdb"
    cfg = scenario_config(tmp_path)
    run_cli("backfill", "--config", str(cfg), "--db", str(db), str(log))
    assert as_strings(script.truth) == all_stats(db)
    out = json.loads(run_cli("query", "emailtrack", "--db", str(db), "--account", "alice").stdout)
    assert {
        "cpanelresult": {
            "apiversion": 2,
            "func": "stats",
            "module": "EmailTrack",
            "event": {"result": 1},
            "data": [as_strings(script.truth)["alice"]],
        }
    } == out


SAMPLES = ROOT / "tests" / "mta" / "samples"


def _sample_truth(mta: str) -> dict[str, dict[str, int]]:
    return json.loads((SAMPLES / f"{mta}.truth.json").read_text())["truth"]


def test_demo_equals_the_recorded_scenarios(tmp_path):
    """`make demo`'s input (fixtures/demo, bundled config) gives the sum of the two
    recorded scenarios' ground truths, account by account."""
    db = tmp_path / "demo.duckdb"
    config = str(ROOT / "config" / "logstats.yaml")
    demo = ROOT / "fixtures" / "demo"
    assert (SAMPLES / "exim.log").read_bytes() == (demo / "exim_mainlog").read_bytes()
    assert (SAMPLES / "postfix.log").read_bytes() == (demo / "maillog").read_bytes()
    run_cli("backfill", "--config", config, "--db", str(db), *map(str, sorted(demo.iterdir())))
    expected: dict[str, dict[str, int]] = {}
    for mta in ("exim", "postfix"):
        for account, row in _sample_truth(mta).items():
            for key, value in row.items():
                expected.setdefault(account, {}).setdefault(key, 0)
                expected[account][key] += value
    assert as_strings(expected) == all_stats(db, "--config", config)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(mta=st.sampled_from(["exim", "postfix"]), cut=st.floats(0, 1))
def test_real_log_split_anywhere_equals_truth(tmp_path, mta, cut):
    """A real MTA log cut at any line, read in two runs with the store reopened between
    them, gives exactly the scenario's ground truth."""
    text = (SAMPLES / f"{mta}.log").read_text()
    lines = text.splitlines(keepends=True)
    k = int(len(lines) * cut)
    run = uuid.uuid4().hex  # hypothesis reuses tmp_path across examples
    log = tmp_path / f"{mta}-{k}-{run}.log"
    db = tmp_path / f"{mta}-{k}-{run}.duckdb"
    cfg = Config(
        timezone="UTC",
        domains={"alice.test": "alice", "bob.test": "bob"},
        uids={1001: "lsuser1", 1002: "lsuser2"},
        batch_lines=5,
    )
    log.write_text("".join(lines[:k]))
    for part in (lines[:k], lines):
        log.write_text("".join(part))
        with Store(db) as store:
            ing = Ingestor(store, cfg, now=lambda: datetime(2030, 1, 1, tzinfo=UTC), chunk_size=300)
            for info, kind in ing.plan([str(log)], mta):
                ing.ingest(info, kind)
    assert as_strings(_sample_truth(mta)) == stats(db)


def test_file_shorter_than_its_checkpoint_is_skipped_not_fatal(tmp_path):
    """A plain file with a known first line but fewer bytes than were read (a partial copy)
    is reported and skipped; the other files are still read."""
    full, other = exim_log(21), exim_log(22)
    log = tmp_path / "mainlog"
    write(log, full.lines)
    db = tmp_path / "s.duckdb"
    backfill(db, log)
    partial = tmp_path / "partial-copy"
    write(partial, full.lines[: len(full.lines) // 2])
    second = tmp_path / "other"
    write(second, [line.replace("2024-12-31", "2025-02-01") for line in other.lines])
    proc = run_cli("backfill", "--db", str(db), str(partial), str(second))
    assert "a partial copy? nothing read" in proc.stderr
    assert "file_read" in proc.stderr


def test_worker_processes_count_exactly_what_one_process_counts(tmp_path):
    """Parsing in worker processes (used for large files) gives the same store as parsing
    in-process, on both real logs and a scripted one (chunks small, so many per file)."""
    script = exim_log(31, messages=300)
    scripted = tmp_path / "scripted.log"
    write(scripted, script.lines)
    paths = [str(SAMPLES / "exim.log"), str(SAMPLES / "postfix.log"), str(scripted)]
    results = []
    for workers in (1, 2):
        cfg = Config(
            timezone="UTC",
            domains={"alice.test": "alice", "bob.test": "bob"},
            uids={1001: "lsuser1", 1002: "lsuser2"},
            workers=workers,
            parallel_bytes=1,
        )
        db = tmp_path / f"w{workers}.duckdb"
        with Store(db) as store:
            ing = Ingestor(
                store, cfg, now=lambda: datetime(2030, 1, 1, tzinfo=UTC), chunk_size=2048
            )
            try:
                for info, mta in ing.plan(paths):
                    ing.ingest(info, mta)
            finally:
                ing.close()
        results.append(stats(db))
    assert results[0] == results[1]
    assert as_strings(script.truth)["alice"] == results[1]["alice"] or "alice" in results[1]


def test_backfill_leaves_counters_folded_and_sorted_by_account(tmp_path):
    """After backfills that wrote the same hours twice, counters and dims hold one row per
    key, each compacted range written in account order (few blocks per account query)."""
    script = exim_log(41, messages=200)
    log = tmp_path / "mainlog"
    db = tmp_path / "f.duckdb"
    half = len(script.lines) // 2
    for part in (script.lines[:half], script.lines):  # two runs: deltas for the same hours
        write(log, part)
        run_cli("backfill", "--db", str(db), str(log))
    with Store(db, read_only=True) as store:
        for table, key in (
            ("counters", "bucket, mta, account, sender_domain"),
            ("dims", "bucket, mta, account, sender_domain, kind, value"),
        ):
            rows, keys = store.con.execute(
                f"SELECT count(*), count(DISTINCT ({key})) FROM {table}"
            ).fetchone()
            assert keys == rows
        accounts = [r[0] for r in store.con.execute("SELECT account FROM counters").fetchall()]
        runs = 1 + sum(1 for a, b in itertools.pairwise(accounts) if a != b)
        assert runs <= 2 * len(set(accounts))  # one sorted block per compacted range


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_store_is_not_world_readable_whatever_the_umask(tmp_path):
    """backfill run with umask 000 creates the store's folder 0750 and the database 0640:
    its events hold addresses. A folder that exists keeps its mode."""
    log = tmp_path / "mainlog"
    script = exim_log(3)
    write(log, script.lines)
    db = tmp_path / "state" / "lib" / "logstats.duckdb"
    proc = subprocess.run(
        [sys.executable, "-m", "logstats", "backfill", "--config", str(scenario_config(tmp_path)),
         "--db", str(db), str(log)],
        capture_output=True, text=True, check=False, umask=0o000, cwd=ROOT,
    )  # fmt: skip
    assert 0 == proc.returncode, proc.stderr
    assert (0o750, 0o750, 0o640) == (mode(tmp_path / "state"), mode(db.parent), mode(db))
    assert [] == [p.name for p in db.parent.iterdir() if mode(p) & 0o007]
    assert as_strings(script.truth) == all_stats(db)
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with Store(shared / "x.duckdb"):
        pass
    assert (0o755, 0o640) == (mode(shared), mode(shared / "x.duckdb"))


def test_the_wal_is_private_and_the_umask_comes_back(tmp_path):
    """DuckDB makes the .wal anew after each checkpoint: it is 0640 too, because the
    process's umask is at least 027 while a store is open for writing; the umask it had
    comes back when the last one is closed."""
    before = os.umask(0o002)
    try:
        first = Store(tmp_path / "a.duckdb")
        second = Store(tmp_path / "b.duckdb")
        for store in (first, second):
            store.con.execute("CREATE TABLE t (x INTEGER)")
            store.con.execute("CHECKPOINT")
            store.con.execute("INSERT INTO t VALUES (1)")
        wal = tmp_path / "a.duckdb.wal"
        assert wal.exists()
        assert 0o640 == mode(wal)
        first.close()
        assert 0o027 == os.umask(0o027)  # the second is still open
        second.close()
        with Store(":memory:"), Store(tmp_path / "a.duckdb", read_only=True):
            assert 0o002 == os.umask(0o002)  # neither writes a file
    finally:
        os.umask(before)
