"""Failures an operator can act on, and what keeps going past them.

The README's promise: such an error is ONE line on stderr naming the file and the key or
the cause, exit status 1, never a traceback, and nothing corrupted.  Here: paths backfill
cannot use (it reads the others), standard input, parser workers (none outlives the
command; one that dies costs nothing), a full disk, a damaged database, a config that is
not UTF-8.  Every log line comes from fixtures, bench/genlog.py or fixed dates.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import logstats.pipeline as pipeline_mod
from logstats.config import Config
from logstats.ingest import Ingestor
from logstats.store import Store
from tests.daemon_harness import (
    NOBODY,
    Serve,
    as_nobody,
    backfill,
    domains_of,
    genlog,
    query_all,
    sample,
    short_dir,
    store_summary,
    summed,
    unparsed,
    write_config,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "config" / "logstats.yaml")  # the samples' accounts (domains, uids)
EXIM, EXIM_TRUTH = sample("exim")
POSTFIX, POSTFIX_TRUTH = sample("postfix")


def run(
    *args: str, stdin: Any = None, prefix: tuple[str, ...] = (), timeout: float = 300.0
) -> subprocess.CompletedProcess[str]:
    """``logstats ARGS`` as its own process; ``stdin``: bytes to pipe in, or an open file."""
    return subprocess.run(
        [*prefix, sys.executable, "-m", "logstats", *args],
        input=stdin if isinstance(stdin, bytes) else None,
        stdin=None if isinstance(stdin, bytes) else stdin,
        capture_output=True,
        check=False,
        cwd=ROOT,
        timeout=timeout,
    )  # bytes in, bytes out: decoded by the callers


def err(proc: subprocess.CompletedProcess[Any]) -> str:
    out = proc.stderr
    return out.decode("utf-8", "replace") if isinstance(out, bytes) else str(out)


def error_lines(proc: subprocess.CompletedProcess[Any]) -> list[str]:
    return [line for line in err(proc).splitlines() if line.startswith("logstats: error:")]


def events(proc: subprocess.CompletedProcess[Any], name: str) -> list[dict[str, Any]]:
    found = []
    for line in err(proc).splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict) and event.get("event") == name:
                found.append(event)
    return found


def one_error(proc: subprocess.CompletedProcess[Any], *words: str) -> str:
    """Exit 1, no traceback, exactly one error line, and it contains ``words``."""
    assert 1 == proc.returncode, err(proc)
    assert "Traceback" not in err(proc), err(proc)
    lines = error_lines(proc)
    assert 1 == len(lines), err(proc)
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def stats(db: Path, *prefix: str) -> dict[str, dict[str, str]]:
    proc = run(
        "query", "emailtrack", "--config", CONFIG, "--db", str(db), "--all", "--format", "json",
        prefix=prefix,
    )  # fmt: skip
    assert 0 == proc.returncode, err(proc)
    return dict(json.loads(proc.stdout))


def group(pgid: int) -> list[tuple[int, str, str]]:
    """(pid, state, command line) of every process of process group ``pgid``."""
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if int(fields[2]) == pgid:
            members.append((int(name), fields[0], cmdline))
    return members


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of the live child processes of ``pid``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append((int(name), cmdline))
    return found


@pytest.fixture
def work() -> Iterator[Path]:
    with short_dir("lsf-") as path:
        yield path


# --- backfill keeps going ----------------------------------------------------------------------


def test_backfill_reads_every_path_it_can_and_names_each_it_cannot(work: Path) -> None:
    """A directory, a file of no known format, a dangling symlink, a missing path and a
    glob matching nothing: one line each saying why; both logs are still read; exit 1."""
    (work / "mainlog").write_bytes(EXIM)
    (work / "maillog").write_bytes(POSTFIX)
    (work / "adir").mkdir()
    (work / "notes.txt").write_text("shopping list\nmilk\neggs\n")
    (work / "dangling").symlink_to(work / "gone.log")
    db = work / "db.duckdb"
    proc = run(
        "backfill", "--config", CONFIG, "--db", str(db),
        str(work / "adir"), str(work / "mainlog"), str(work / "notes.txt"),
        str(work / "dangling"), str(work / "missing.log"), str(work / "*.xz"),
        str(work / "maillog"),
    )  # fmt: skip
    assert 1 == proc.returncode, err(proc)
    assert "Traceback" not in err(proc)
    lines = error_lines(proc)
    expected = {
        "adir": "directory",
        "notes.txt": "Exim or Postfix",
        "dangling": "broken symbolic link",
        "missing.log": "no such file",
        "*.xz": "no file matches",
    }
    assert len(expected) == len(lines), lines
    for name, why in expected.items():
        assert any(str(work / name) in line and why in line for line in lines), (name, lines)
    assert [2] == [e["files"] for e in events(proc, "backfill_done")]
    assert summed(EXIM_TRUTH, POSTFIX_TRUTH) == stats(db)


def test_a_file_that_fails_midway_keeps_what_was_read_and_the_rest_goes_on(work: Path) -> None:
    """A compressed log cut short (a copy interrupted): one line naming it, the log after it
    is still read, exit 1; what was read of it is kept with its checkpoint, so running the
    same command again adds nothing."""
    genlog("exim", 30000, work / "gen.log", seed=2)
    cut = work / "mainlog.2.gz"
    packed = gzip.compress((work / "gen.log").read_bytes(), mtime=0)
    cut.write_bytes(packed[: len(packed) * 2 // 3])
    (work / "maillog").write_bytes(POSTFIX)
    db = work / "db.duckdb"
    args = ("backfill", "--config", CONFIG, "--db", str(db), str(cut), str(work / "maillog"))
    one_error(run(*args), str(cut))
    first = stats(db)
    alone = work / "alone.duckdb"
    proc = run("backfill", "--config", CONFIG, "--db", str(alone), str(work / "maillog"))
    assert 0 == proc.returncode, err(proc)
    maillog = stats(alone)
    named = {a for a in maillog if not a.startswith("-")}  # not the pseudo-accounts
    assert named
    assert {a: maillog[a] for a in named} == {a: first[a] for a in named}
    assert set(first) - set(maillog)  # the accounts of what was read of the cut log
    one_error(run(*args), str(cut))
    assert first == stats(db)


def test_backfill_goes_on_past_a_file_it_may_not_read(work: Path) -> None:
    """As an unprivileged user, a log it may not read is one line (Permission denied), the
    other is read, exit 1."""
    prefix = as_nobody()
    if prefix is None:
        pytest.skip("needs root and setpriv(1) to run as nobody")
    os.chown(work, NOBODY, NOBODY)
    (work / "mainlog").write_bytes(EXIM)
    secret = work / "maillog"
    secret.write_bytes(POSTFIX)
    secret.chmod(0o600)  # root's: nobody may not read it
    db = work / "db.duckdb"
    proc = run(
        "backfill", "--config", CONFIG, "--db", str(db), str(secret), str(work / "mainlog"),
        prefix=tuple(prefix),
    )  # fmt: skip
    one_error(proc, str(secret), "Permission denied")
    assert summed(EXIM_TRUTH) == stats(db)


# --- standard input ----------------------------------------------------------------------------


def test_stdin_is_read_once_whatever_form_it_comes_in(work: Path) -> None:
    """`cat mainlog | logstats backfill -` counts the log; the same input again, the file
    itself and a gzipped copy on standard input add nothing (same first line)."""
    db = work / "db.duckdb"
    args = ("backfill", "--config", CONFIG, "--db", str(db), "-")
    first = run(*args, stdin=EXIM)
    assert 0 == first.returncode, err(first)
    assert "<stdin>" == events(first, "file_read")[0]["path"]
    assert summed(EXIM_TRUTH) == stats(db)
    again = run(*args, stdin=EXIM)
    assert 0 == again.returncode, err(again)
    skipped = events(again, "file_skipped")
    assert [0] == [e["lines"] for e in skipped]  # read again: nothing new, and it says so
    assert skipped[0]["reason"].startswith("already read")
    (work / "mainlog").write_bytes(EXIM)
    proc = run("backfill", "--config", CONFIG, "--db", str(db), str(work / "mainlog"))
    assert 0 == proc.returncode, err(proc)
    packed = run(*args, stdin=gzip.compress(EXIM, mtime=0))
    assert 0 == packed.returncode, err(packed)
    assert summed(EXIM_TRUTH) == stats(db)


def journal(body: bytes, ends: str) -> bytes:
    """``body`` as journalctl prints it: its header (which names the newest entry, so it
    changes from run to run) and a boot marker in the middle."""
    lines = body.splitlines(keepends=True)
    middle = len(lines) // 3
    return b"".join(
        [
            f"-- Journal begins at Tue 2026-11-24 06:00:00 UTC, ends at {ends}. --\n".encode(),
            *lines[:middle],
            b"-- Boot 0f3c5a0a9d2e4e0c8b1f6a7d9e2c4b11 --\n",
            *lines[middle:],
        ]
    )


def test_stdin_from_journalctl_continues_where_it_stopped(work: Path) -> None:
    """`journalctl -u postfix -o short | logstats backfill --mta postfix -`, run as the
    journal grows: each run reads only what is new (journalctl's own lines neither count nor
    change the input's identity), and the end result is the log's truth."""
    db = work / "db.duckdb"
    args = ("backfill", "--config", CONFIG, "--db", str(db), "--mta", "postfix", "-")
    lines = POSTFIX.splitlines(keepends=True)
    half = b"".join(lines[: len(lines) // 2])
    proc = run(*args, stdin=journal(half, "Tue 2026-11-24 06:05:00 UTC"))
    assert 0 == proc.returncode, err(proc)
    proc = run(*args, stdin=journal(POSTFIX, "Tue 2026-11-24 06:10:00 UTC"))
    assert 0 == proc.returncode, err(proc)
    assert [len(lines) - len(lines) // 2] == [e["lines"] for e in events(proc, "file_read")]
    proc = run(*args, stdin=journal(POSTFIX, "Tue 2026-11-24 07:00:00 UTC"))
    assert [0] == [e["lines"] for e in events(proc, "file_skipped")]  # already read
    proc = run(*args, stdin=journal(half, "Tue 2026-11-24 07:00:00 UTC"))  # an older, shorter
    assert 0 == proc.returncode, err(proc)
    assert "nothing new" in events(proc, "file_skipped")[0]["reason"]
    assert summed(POSTFIX_TRUTH) == stats(db)
    (work / "maillog").write_bytes(POSTFIX)
    clean = work / "clean.duckdb"
    proc = run("backfill", "--config", CONFIG, "--db", str(clean), str(work / "maillog"))
    assert 0 == proc.returncode, err(proc)
    assert unparsed(clean) == unparsed(db)  # the -- lines were not taken for log lines


def test_stdin_of_unknown_format_needs_mta(work: Path) -> None:
    proc = run("backfill", "--db", str(work / "db.duckdb"), "-", stdin=b"hello\nworld\n")
    one_error(proc, "<stdin>", "--mta")


def test_stdin_yearless_stamps_take_the_year_before_the_reference(work: Path) -> None:
    """Yearless stamps on standard input: before the mtime of the file it is redirected from,
    before "now" (the time of reading) for a pipe."""
    bucket = "SELECT year(min(bucket)) FROM counters"
    maillog = work / "maillog"
    maillog.write_bytes(POSTFIX)  # stamps of Nov 24 06:00 to 06:10
    for mtime, year in ((datetime(2026, 11, 24, 7, tzinfo=UTC), 2026),
                        (datetime(2029, 2, 1, tzinfo=UTC), 2028)):  # fmt: skip
        os.utime(maillog, (mtime.timestamp(), mtime.timestamp()))
        db = work / f"redirected-{year}.duckdb"
        with open(maillog, "rb") as f:
            proc = run("backfill", "--config", CONFIG, "--db", str(db), "-", stdin=f)
        assert 0 == proc.returncode, err(proc)
        with Store(db, read_only=True) as store:
            assert (year,) == store.con.execute(bucket).fetchone()
    for now, year in ((datetime(2027, 1, 15, tzinfo=UTC), 2026),
                      (datetime(2026, 11, 1, tzinfo=UTC), 2025)):  # fmt: skip
        with Store(work / f"piped-{year}.duckdb") as store:
            ing = Ingestor(
                store, Config(timezone="UTC"), now=lambda now=now: now, stdin=io.BytesIO(POSTFIX)
            )
            for info, mta in ing.plan(["-"]):
                ing.ingest(info, mta)
            assert (year,) == store.con.execute(bucket).fetchone()


# --- parser workers ----------------------------------------------------------------------------


def big_log(folder: Path, lines: int = 70000) -> tuple[Path, Path]:
    """A genlog Exim log above ingest.parallel_bytes (8 MiB) and a config that parses it in
    two worker processes."""
    log = folder / "big.log"
    genlog("exim", lines, log, seed=9)
    assert log.stat().st_size > 8 << 20
    cfg = folder / "workers.yaml"
    cfg.write_text("timezone: UTC\ningest: {workers: 2}\n")
    return log, cfg


def test_backfill_leaves_no_process_behind(work: Path) -> None:
    """Backfill of a large log (parsed in worker processes), in a process group of its own:
    once it has exited, no process of that group remains, not even a zombie; killed with
    SIGKILL, its workers die with it."""
    log, cfg = big_log(work)
    cmd = [sys.executable, "-m", "logstats", "backfill", "--config", str(cfg)]
    proc = subprocess.Popen(
        [*cmd, "--db", str(work / "a.duckdb"), str(log)],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
    )  # fmt: skip
    seen: set[str] = set()
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            seen |= {cmdline for _, _, cmdline in group(proc.pid)}
            time.sleep(0.05)  # sampling the group while it runs
        assert 0 == proc.wait(10)
        assert any("spawn_main" in c for c in seen), seen  # it did use worker processes
        assert [] == group(proc.pid)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    proc = subprocess.Popen(
        [*cmd, "--db", str(work / "b.duckdb"), str(log)],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not any("spawn_main" in c for _, _, c in group(proc.pid)):
            assert proc.poll() is None and time.monotonic() < deadline, "no worker started"
            time.sleep(0.01)  # until its workers run
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 15
        while live := [m for m in group(proc.pid) if m[1] != "Z"]:
            assert time.monotonic() < deadline, f"outlived the command: {live}"
            time.sleep(0.05)  # the workers notice their parent's death
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


class _DyingPool:
    """A parser pool whose workers die after ``answers`` answers (as after a SIGKILL or the
    OOM killer): every later chunk fails with BrokenProcessPool."""

    made = 0

    def __init__(self, workers: int, answers: int) -> None:
        type(self).made += 1
        self.answers = answers

    def submit(self, fn: Any, *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        if self.answers > 0:
            self.answers -= 1
            future.set_result(fn(*args))
        else:
            future.set_exception(BrokenProcessPool("a child process terminated abruptly"))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


def test_backfill_parses_here_what_a_dead_worker_had(
    work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that dies mid-file costs nothing: its chunks are parsed in-process and the
    store equals that of a backfill parsed in one process; the next file gets a new pool."""
    cfg: dict[str, Any] = {
        "timezone": "UTC",
        "domains": {"alice.test": "alice", "bob.test": "bob"},
        "uids": {1001: "lsuser1", 1002: "lsuser2"},
    }
    (work / "exim.log").write_bytes(EXIM)
    (work / "postfix.log").write_bytes(POSTFIX)
    paths = [str(work / "exim.log"), str(work / "postfix.log")]

    def fill(db: Path, config: Config) -> Ingestor:
        with Store(db) as store:
            ing = Ingestor(store, config, now=lambda: datetime(2030, 1, 1, tzinfo=UTC),
                           chunk_size=1024)  # fmt: skip
            try:
                for info, mta in ing.plan(paths):
                    ing.ingest(info, mta)
            finally:
                ing.close()
        return ing

    fill(work / "one.duckdb", Config(**cfg, workers=1))
    monkeypatch.setattr(pipeline_mod, "worker_pool", lambda n, *_: _DyingPool(n, answers=3))
    ing = fill(work / "dying.duckdb", Config(**cfg, workers=2, parallel_bytes=1))
    assert 2 == ing.workers_lost == _DyingPool.made
    assert store_summary(work / "one.duckdb") == store_summary(work / "dying.duckdb")


def test_daemon_recovers_when_a_parse_worker_dies(work: Path) -> None:
    """A parser worker killed (SIGKILL) while the daemon catches up a backlog: the daemon
    logs it, parses that part itself, keeps running, and counts exactly what a backfill of
    the file counts; the next backlog gets a new pool."""
    gen = work / "gen"
    gen.mkdir()
    truth = genlog("exim", 150000, gen / "exim.log", seed=5)
    body = (gen / "exim.log").read_bytes()
    lines = body.splitlines(keepends=True)
    first, second = b"".join(lines[:100000]), b"".join(lines[100000:])
    assert len(second) > 4 << 20  # a backlog again (the daemon's worker threshold)
    log = work / "mainlog"
    log.write_bytes(first)
    cfg = write_config(
        work, [(log, "exim")],
        accounts={"domains": domains_of(gen / "exim.log.userdomains"),
                  "uids": {int(u): n for n, u in truth["local_users"].items()}},
        correlation={"ttl": "3650d", "orphan_ttl": "3650d"},
    )  # fmt: skip
    with Serve(cfg) as d:
        deadline = time.monotonic() + 60
        while not (workers := [p for p, c in children(d.pid) if "spawn_main" in c]):
            assert d.proc.poll() is None and time.monotonic() < deadline, d.stderr[-5:]
            time.sleep(0.005)  # until the pool for the backlog is up
        os.kill(workers[0], signal.SIGKILL)
        d.wait_ready(timeout=60)
        d.wait_lines(len(lines[:100000]), timeout=60)
        with open(log, "ab") as f:
            f.write(second)
        d.wait_lines(len(lines), timeout=60)
        assert "parse_workers_lost" in d.names()
        assert d.proc.poll() is None
        assert 0 == d.terminate()
    followed = query_all(cfg)
    assert backfill(cfg, work / "clean.duckdb", log) == followed


# --- one line instead of a traceback -----------------------------------------------------------


def test_disk_full_during_backfill_is_one_line_and_the_next_run_completes(work: Path) -> None:
    """The database on a small tmpfs (a private mount namespace) that fills up during the
    backfill: one line naming the database and "No space left on device" (not an error of
    the ROLLBACK after it), exit 1; with space again, the same command completes the store
    to what a clean backfill gives."""
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter")):
        pytest.skip("needs root, unshare(1) and nsenter(1) for a private tmpfs")
    log = work / "big.log"
    genlog("exim", 120000, log, seed=4)
    cfg = work / "c.yaml"
    cfg.write_text(f"timezone: UTC\naccounts: {{userdomains: {log}.userdomains}}\n")
    small = work / "small"
    small.mkdir()
    holder = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f'mount -t tmpfs -o size=16m tmpfs "{small}" && echo mounted && exec sleep 600'],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        if holder.stdout.readline().strip() != "mounted":
            holder.wait(10)
            pytest.skip("cannot mount a tmpfs in a private namespace")
        inside = Path(f"/proc/{holder.pid}/root") / str(small).lstrip("/")
        enter = ("nsenter", "-t", str(holder.pid), "-m", f"--wd={ROOT}", "--")
        db = small / "db.duckdb"
        free = os.statvfs(inside).f_bavail * os.statvfs(inside).f_frsize
        filler = inside / "filler"
        filler.write_bytes(b"\0" * (free - (1 << 20)))  # 1 MiB left: the store needs more
        args = ("backfill", "--config", str(cfg), "--db", str(db), str(log))
        proc = run(*args, prefix=enter)
        one_error(proc, str(db), "No space left on device")
        filler.unlink()
        proc = run(*args, prefix=enter)
        assert 0 == proc.returncode, err(proc)
        clean = work / "clean.duckdb"
        assert 0 == run("backfill", "--config", str(cfg), "--db", str(clean), str(log)).returncode
        assert stats(clean) == stats(db, *enter)
    finally:
        holder.kill()
        holder.wait(10)


@pytest.fixture(params=["random-bytes", "truncated"])
def damaged(request: pytest.FixtureRequest, work: Path) -> Path:
    """A database file that is not one (random bytes) or a real one cut to half its size."""
    db = work / "damaged.duckdb"
    if request.param == "random-bytes":
        db.write_bytes(random.Random(7).randbytes(300_000))
    else:
        (work / "mainlog").write_bytes(EXIM)
        proc = run("backfill", "--config", CONFIG, "--db", str(db), str(work / "mainlog"))
        assert 0 == proc.returncode, err(proc)
        assert not Path(f"{db}.wal").exists()
        os.truncate(db, db.stat().st_size // 2)
    return db


def test_damaged_database_is_one_line_for_query_backfill_and_serve(
    work: Path, damaged: Path
) -> None:
    """`logstats query`, `backfill` and `serve` on a damaged database: one line naming it,
    exit 1, and the file is left as it was."""
    before = damaged.read_bytes()
    (work / "maillog").write_bytes(POSTFIX)
    db = ("--db", str(damaged))
    for args in (
        ("query", "emailtrack", *db, "--all"),
        ("query", "mailgun", *db, "/v3/stats/total", "event=delivered"),
        ("backfill", "--config", CONFIG, *db, str(work / "maillog")),
    ):
        one_error(run(*args), str(damaged), "damaged")
    cfg = write_config(work, [(work / "maillog", "postfix")], db=damaged)
    one_error(run("serve", "--config", str(cfg), timeout=60), str(damaged), "damaged")
    assert before == damaged.read_bytes()


def test_config_not_utf8_is_one_line_naming_the_file(work: Path) -> None:
    cfg = work / "latin1.yaml"
    cfg.write_bytes("timezone: UTC\n# Zürich office\n".encode("latin-1"))
    for args in (
        ("check-config", "--config", str(cfg)),
        ("backfill", "--config", str(cfg), "--db", str(work / "db.duckdb"), CONFIG),
        ("query", "emailtrack", "--config", str(cfg), "--all"),
    ):
        one_error(run(*args), str(cfg), "UTF-8", "line 2")
