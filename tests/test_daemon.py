"""``logstats serve`` end to end: a real daemon process following real logs.

Each test starts ``logstats serve --config CFG`` as its own process (tests/daemon_harness.py)
with ``NOTIFY_SOCKET`` bound here, waits for ``READY=1`` or for the daemon's JSON log lines,
appends to the followed files, and compares ``emailtrack --all`` with a ground truth: the
scripted truth of the real Exim/Postfix sample logs, bench/genlog.py's truth, or a clean
``logstats backfill`` of the same final file.  Nothing sleeps to synchronise: waits are on
the notify socket, on stdout events, or polls of the query with a deadline.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from tests.daemon_harness import (
    NOBODY,
    Messages,
    Serve,
    append,
    as_nobody,
    backfill,
    chunks,
    cli,
    domains_of,
    genlog,
    genlog_expected,
    query_all,
    sample,
    short_dir,
    split_at_lines,
    store_summary,
    summed,
    unparsed,
    write_config,
)

EXIM, EXIM_TRUTH = sample("exim")
POSTFIX, POSTFIX_TRUTH = sample("postfix")
BOTH = summed(EXIM_TRUTH, POSTFIX_TRUTH)
EXIM_ONLY = summed(EXIM_TRUTH)


@pytest.fixture
def work() -> Iterator[Path]:
    """A short private folder for logs, database and sockets."""
    with short_dir() as path:
        yield path


@pytest.fixture
def serve() -> Iterator[list[Serve]]:
    """Started daemons are registered here and killed at teardown, whatever happened."""
    started: list[Serve] = []
    yield started
    for d in started:
        d.close()


def start(serve: list[Serve], cfg: Path, **kw) -> Serve:
    d = Serve(cfg, **kw)
    serve.append(d)
    d.wait_ready()
    return d


def exim_setup(work: Path, **sections) -> tuple[Path, Path]:
    log = work / "mainlog"
    log.touch()
    return log, write_config(work, [(log, "exim")], **sections)


# --- 1, 2: following --------------------------------------------------------------------------


def test_follow_mode_equals_truth(work: Path, serve: list[Serve]) -> None:
    """Appending the real Exim and Postfix logs in random-sized pieces (lines split across
    writes, the daemon often seeing half a line) gives exactly both scripts' truths summed
    per account, and no line is counted as unknown."""
    rng = random.Random(20261124)
    mainlog, maillog = work / "mainlog", work / "maillog"
    mainlog.touch()
    maillog.touch()
    cfg = write_config(work, [(mainlog, "exim"), (maillog, "postfix")])
    d = start(serve, cfg)
    streams = [(mainlog, list(chunks(EXIM, rng))), (maillog, list(chunks(POSTFIX, rng)))]
    complete = 0
    while any(pieces for _, pieces in streams):
        path, pieces = rng.choice([s for s in streams if s[1]])
        piece = pieces.pop(0)
        append(path, piece)
        complete += piece.count(b"\n")
        if b"\n" in piece and not piece.endswith(b"\n") and rng.random() < 0.3:
            d.wait_lines(complete)  # the daemon has read up to a partial line
    got = d.wait_stats(BOTH, timeout=20)
    assert BOTH == got
    assert 0 == d.terminate()
    assert {} == unparsed(work / "db.duckdb")
    assert EXIM.count(b"\n") + POSTFIX.count(b"\n") == sum(
        e["lines"] for e in d.events if e.get("event") == "batch_committed"
    )


def test_appended_line_is_visible_within_a_second(work: Path, serve: list[Serve]) -> None:
    """A message appended to a followed log shows in `emailtrack` within 1 s, every time
    (5 appends, each timed from the write to the first query answer that counts it)."""
    log, cfg = exim_setup(work)
    d = start(serve, cfg)
    gen = Messages(2)
    latencies = []
    for i in range(5):
        t0 = time.monotonic()
        append(log, gen.send("alice", "alice.test"))
        while time.monotonic() - t0 < 5:
            if d.stats().get("alice", {}).get("SENDCOUNT") == str(i + 1):
                break
            time.sleep(0.005)  # polling with a deadline
        latencies.append(time.monotonic() - t0)
    assert all(s <= 1.0 for s in latencies), latencies
    assert "5" == query_all(cfg)["alice"]["SENDCOUNT"]  # `logstats query` through the socket


# --- 3: exactly once under kill -9 ------------------------------------------------------------


class Writer(threading.Thread):
    """Appends files' contents in random chunks at a steady pace; reports bytes written."""

    def __init__(self, jobs: list[tuple[Path, bytes]], seconds: float, seed: int) -> None:
        super().__init__(daemon=True)
        self.jobs = jobs
        self.total = sum(len(b) for _, b in jobs)
        self.seconds = seconds
        self.rng = random.Random(seed)
        self.written = 0
        self.cond = threading.Condition()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            pieces = [(p, list(chunks(b, self.rng, 1, 6000))) for p, b in self.jobs]
            t0 = time.monotonic()
            while any(c for _, c in pieces):
                path, cs = self.rng.choice([x for x in pieces if x[1]])
                piece = cs.pop(0)
                append(path, piece)
                with self.cond:
                    self.written += len(piece)
                    self.cond.notify_all()
                ahead = t0 + self.seconds * self.written / self.total - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)  # pacing the writer, not synchronisation
        except BaseException as exc:  # pragma: no cover - reported by the test
            self.error = exc
        finally:
            with self.cond:
                self.written = self.total if self.error is None else self.written
                self.cond.notify_all()

    def wait_written(self, n: int, timeout: float) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.written >= n, timeout), "writer stalled"


def test_exactly_once_under_sigkill(work: Path, serve: list[Serve]) -> None:
    """A writer appends a 14,000-line genlog Exim log and a 14,000-line genlog Postfix log
    while the daemon is killed with SIGKILL 12 times at seeded random moments (right after
    READY, during start-up, mid-stream, right after a commit) and restarted.  At the end
    the store equals, account by account and hour by hour, a single clean backfill of the
    same final files into another store, and both equal the generator's truth."""
    rng = random.Random(9)
    gen = work / "gen"
    gen.mkdir()
    # one seed: both logs come from the same simulated host (same domains, users, uids)
    texim = genlog("exim", 14000, gen / "exim.log", seed=3)
    tpostfix = genlog("postfix", 14000, gen / "postfix.log", seed=3)
    domains = domains_of(gen / "exim.log.userdomains")
    uids = texim["local_users"]
    mainlog, maillog = work / "mainlog", work / "maillog"
    mainlog.touch()
    maillog.touch()
    sections = {
        "accounts": {"domains": domains, "uids": {int(u): n for n, u in uids.items()}},
        # the generated logs are from 2024: keep in-flight messages (see the TTL test below)
        "correlation": {"ttl": "3650d", "orphan_ttl": "3650d"},
    }
    cfg = write_config(work, [(mainlog, "exim"), (maillog, "postfix")], **sections)
    exim_body = (gen / "exim.log").read_bytes()
    postfix_body = (gen / "postfix.log").read_bytes()
    writer = Writer([(mainlog, exim_body), (maillog, postfix_body)], seconds=12, seed=10)
    d = start(serve, cfg)
    writer.start()
    kinds = ["ready", "startup", "progress", "commit"] * 3
    rng.shuffle(kinds)
    for i, kind in enumerate(kinds):
        if kind == "progress":
            writer.wait_written(int(writer.total * (i + rng.random()) / len(kinds)), 30)
        elif kind == "commit":
            # right after a commit; once the writer is done there may be none left to wait for
            seen = len(d.events)
            deadline = time.monotonic() + 30
            while "batch_committed" not in d.names()[seen:] and writer.written < writer.total:
                assert time.monotonic() < deadline, "no commit within 30 s while lines arrive"
                time.sleep(0.01)  # polling with a deadline
        elif kind == "startup":
            d.kill()
            d = Serve(cfg)
            serve.append(d)
            time.sleep(rng.uniform(0.2, 1.2))  # a random moment of start-up, not a sync
        d.kill()
        d = start(serve, cfg)
    writer.wait_written(writer.total, 60)
    writer.join(10)
    assert writer.error is None

    clean_db = work / "clean.duckdb"
    clean = backfill(cfg, clean_db, mainlog, maillog)
    got = d.wait_stats(clean, timeout=60)
    assert clean == got
    assert 0 == d.terminate()
    theirs, mine = store_summary(clean_db), store_summary(work / "db.duckdb")
    for part, rows in theirs.items():
        only_clean = sorted(set(rows) - set(mine[part]))
        only_daemon = sorted(set(mine[part]) - set(rows))
        assert ([], []) == (only_clean[:20], only_daemon[:20]), part
        assert rows == mine[part], part
    expected = genlog_expected(texim)
    for account, row in genlog_expected(tpostfix).items():
        mine = expected.setdefault(account, dict.fromkeys(row, "0"))
        for k, v in row.items():
            mine[k] = str(int(mine[k]) + int(v))
    assert expected == clean


def test_following_an_old_log_equals_backfill(work: Path, serve: list[Serve]) -> None:
    """With the default TTLs, following a log whose lines are older than the TTL (a backlog
    read at first start, or a replayed log) counts what a backfill of the same file counts.

    (The daemon once expired in-flight messages against the wall clock while backfill
    used the log's own time: every still-queued message of an old log became an expiry.)"""
    from tests.logmaker import exim_log

    script = exim_log(5, messages=60)
    body = "".join(line + "\n" for line in script.lines).encode()
    first, second = split_at_lines(body, 0.5)
    log, cfg = exim_setup(work)
    d = start(serve, cfg)
    append(log, first)
    d.wait_lines(first.count(b"\n"))
    d.wait_event("batch_committed")
    append(log, second)
    d.wait_lines(body.count(b"\n"))
    assert 0 == d.terminate()
    follow = query_all(cfg)
    whole = work / "whole.log"
    whole.write_bytes(body)
    assert backfill(cfg, work / "clean.duckdb", whole) == follow


# --- 4: rotation ------------------------------------------------------------------------------


def rotate_setup(work: Path, serve: list[Serve], **kw) -> tuple[Path, Path, Serve, list[bytes]]:
    """The Exim sample split in four parts; part 1 read, part 2 written but maybe unread."""
    log, cfg = exim_setup(work)
    d = start(serve, cfg, **kw)
    parts = split_at_lines(EXIM, 0.3, 0.45, 0.75)
    append(log, parts[0])
    d.wait_lines(parts[0].count(b"\n"))
    append(log, parts[1])  # written just before the rotation: the daemon must drain it
    return log, cfg, d, parts


def test_rotation_rename_and_create(work: Path, serve: list[Serve]) -> None:
    """logrotate's default (and exicyclog): mainlog -> mainlog.1, a new mainlog, writing
    continues there.  Lines written to the old file just before the rename, and by a writer
    still holding it after the rename, are drained from it before the new file is read;
    the totals equal the truth; `source_rotated` is logged."""
    log, _cfg, d, parts = rotate_setup(work, serve)
    old = log.with_name("mainlog.1")
    log.rename(old)
    append(old, parts[2])  # a writer still holding the old file adds its last lines
    log.touch()
    append(log, parts[3])
    d.wait_event("source_rotated")
    assert EXIM_ONLY == d.wait_stats(EXIM_ONLY)
    assert 0 == d.terminate()
    assert EXIM_ONLY == query_all(d.cfg)


def test_rotation_copytruncate(work: Path, serve: list[Serve]) -> None:
    """copytruncate: mainlog copied to mainlog.1 (with lines the daemon has not read yet),
    then truncated in place; writing continues.  The unread lines are read from the copy,
    nothing twice; `source_truncated` is logged."""
    log, _cfg, d, parts = rotate_setup(work, serve)
    shutil.copy2(log, log.with_name("mainlog.1"))
    with open(log, "r+b") as f:
        f.truncate(0)
    append(log, parts[2])
    d.wait_event("source_truncated")
    append(log, parts[3])
    assert EXIM_ONLY == d.wait_stats(EXIM_ONLY)
    assert 0 == d.terminate()
    assert EXIM_ONLY == query_all(d.cfg)


def test_rotation_copytruncate_before_anything_new_is_written(
    work: Path, serve: list[Serve]
) -> None:
    """copytruncate where the truncated file stays empty for a while and then gets fewer
    bytes than the old offset: still detected (size shrank), nothing lost or doubled."""
    log, _cfg, d, parts = rotate_setup(work, serve)
    shutil.copy2(log, log.with_name("mainlog.1"))
    os.truncate(log, 0)
    d.wait_event("source_truncated")
    append(log, parts[2] + parts[3])
    assert EXIM_ONLY == d.wait_stats(EXIM_ONLY)
    assert 0 == d.terminate()


def test_rotation_delete_and_recreate(work: Path, serve: list[Serve]) -> None:
    """The file is deleted (with unread lines in it) and re-created a moment later: the
    open handle still gives the deleted file's last lines, then the new file is read."""
    log, _cfg, d, parts = rotate_setup(work, serve)
    log.unlink()
    d.wait_event("source_missing")
    append(log, parts[2])
    append(log, parts[3])
    assert EXIM_ONLY == d.wait_stats(EXIM_ONLY)
    assert 0 == d.terminate()


def test_rotated_file_compressed_later(work: Path, serve: list[Serve]) -> None:
    """mainlog -> mainlog.1, then (next rotation) mainlog.1 -> mainlog.2.gz while the daemon
    runs and after a restart.  The compressed copy is known by its first line: a later
    `logstats backfill mainlog.2.gz mainlog` on the daemon's store reads nothing again."""
    log, cfg, d, parts = rotate_setup(work, serve)
    one = log.with_name("mainlog.1")
    log.rename(one)
    log.touch()
    append(log, parts[2])
    d.wait_event("source_rotated")
    d.wait_lines(sum(p.count(b"\n") for p in parts[:3]))
    two = log.with_name("mainlog.2.gz")
    with open(one, "rb") as src, gzip.open(two, "wb") as dst:
        shutil.copyfileobj(src, dst)
    one.unlink()
    append(log, parts[3])
    assert EXIM_ONLY == d.wait_stats(EXIM_ONLY)
    assert 0 == d.terminate()
    d = start(serve, cfg)
    assert EXIM_ONLY == d.wait_stats(EXIM_ONLY, timeout=5)
    assert 0 == d.terminate()
    proc = cli("backfill", "--config", str(cfg), str(two), str(log))
    assert 0 == proc.returncode, proc.stderr
    assert EXIM_ONLY == query_all(cfg)


def test_rotation_while_stopped(work: Path, serve: list[Serve]) -> None:
    """SIGTERM; more lines go to mainlog; it is rotated (mainlog.1) and the new mainlog
    gets lines; start.  The old file is finished first (its receipts come before the new
    file's deliveries, so reading them out of order would change the numbers)."""
    log, cfg, d, parts = rotate_setup(work, serve)
    d.wait_lines(sum(p.count(b"\n") for p in parts[:2]))
    assert 0 == d.terminate()
    append(log, parts[2])  # while stopped, to the file that will be rotated
    log.rename(log.with_name("mainlog.1"))
    log.write_bytes(parts[3])
    d = start(serve, cfg)
    assert "mainlog.1" in d.wait_event("source_rotated_while_stopped", timeout=5)["detail"]
    assert EXIM_ONLY == d.wait_stats(EXIM_ONLY, timeout=5)
    assert 0 == d.terminate()


def test_file_disappears_and_comes_back(work: Path, serve: list[Serve]) -> None:
    """mainlog is moved away (lines are still written to it there), then moved back and
    written to again: reported missing, then followed on, each line once."""
    log, _cfg, d, parts = rotate_setup(work, serve)
    away = work / "mainlog.away"
    log.rename(away)
    d.wait_event("source_missing")
    append(away, parts[2])
    away.rename(log)
    append(log, parts[3])
    assert EXIM_ONLY == d.wait_stats(EXIM_ONLY)
    assert 0 == d.terminate()


def test_unreadable_file_is_retried(work: Path, serve: list[Serve]) -> None:
    """The daemon runs as an unprivileged user (uid 65534).  After a rotation the new
    mainlog is created mode 000: `source_error` is logged (once) and the daemon keeps
    running; once the mode is fixed the file is read from its start."""
    prefix = as_nobody()
    if prefix is None:
        pytest.skip("needs root and setpriv to run the daemon as an unprivileged user")
    state = work / "state"
    state.mkdir()
    os.chown(state, NOBODY, NOBODY)
    log = work / "mainlog"
    log.touch()
    cfg = write_config(
        work, [(log, "exim")], db=state / "db.duckdb", serve={"socket": str(state / "ls.sock")}
    )
    probe = subprocess.run([*prefix, "cat", str(cfg)], capture_output=True, check=False, timeout=10)
    if probe.returncode != 0:
        pytest.skip(f"uid {NOBODY} cannot read {cfg}: {probe.stderr!r}")
    d = start(serve, cfg, prefix=prefix, notify_dir=state)
    parts = split_at_lines(EXIM, 0.4, 0.7)
    append(log, parts[0])
    d.wait_lines(parts[0].count(b"\n"))
    log.rename(log.with_name("mainlog.1"))
    log.touch(mode=0o000)
    os.chmod(log, 0o000)
    append(log, parts[1])  # root writes regardless of the mode
    err = d.wait_event("source_error")
    assert "Permission denied" in err["detail"]
    os.chmod(log, 0o644)
    append(log, parts[2])
    assert EXIM_ONLY == d.wait_stats(EXIM_ONLY)
    assert 0 == d.terminate()
    assert 1 == d.names().count("source_error")


# --- 5: signals -------------------------------------------------------------------------------


def test_sigterm_commits_and_exits_zero(work: Path, serve: list[Serve]) -> None:
    """Lines appended just before SIGTERM are committed by the exit (exit code 0, visible
    in the store with no daemon running) and not read again after a restart."""
    log, cfg, d, parts = rotate_setup(work, serve)
    append(log, parts[2])
    assert 0 == d.terminate()
    assert "serve_stopped" == d.names()[-1]
    expected_before = query_all(cfg)  # read-only, from the store
    whole = work / "first.log"
    whole.write_bytes(b"".join(parts[:3]))
    assert backfill(cfg, work / "clean.duckdb", whole) == expected_before
    d = start(serve, cfg)
    append(log, parts[3])
    assert EXIM_ONLY == d.wait_stats(EXIM_ONLY)
    assert 0 == d.terminate()
    assert parts[3].count(b"\n") == d.wait_event("serve_stopped")["lines"]


def test_sighup_reloads_the_account_map(work: Path, serve: list[Serve]) -> None:
    """SIGHUP with alice.test now owned by alice2: messages sent before the reload stay
    alice's, messages after it are alice2's, none lost (RELOADING=1 then READY=1 is sent)."""
    log, cfg = exim_setup(work)
    d = start(serve, cfg)
    gen = Messages(7)
    for _ in range(3):
        append(log, gen.send("alice", "alice.test", 100))
    d.wait_lines(9)
    write_config(work, [(log, "exim")], domains={"alice.test": "alice2", "bob.test": "bob"})
    seen, notes = len(d.events), len(d.datagrams)
    d.signal(signal.SIGHUP)
    d.wait_event("config_reloaded", after=seen)
    d.wait_ready(after=notes)
    assert any(n.startswith("RELOADING=1") for n in d.datagrams[notes:])
    for _ in range(4):
        append(log, gen.send("alice", "alice.test", 100))
    expected = {
        "alice": summed({"a": {"SENDCOUNT": 3, "SUCCESSCOUNT": 3, "TOTALSIZE": 300}})["a"],
        "alice2": summed({"a": {"SENDCOUNT": 4, "SUCCESSCOUNT": 4, "TOTALSIZE": 400}})["a"],
    }
    assert expected == d.wait_stats(expected)
    assert 0 == d.terminate()


def test_a_storm_of_signals_while_lines_arrive(work: Path, serve: list[Serve]) -> None:
    """Thousands of SIGHUPs, sent while lines arrive and the loop waits, wakes and sleeps:
    a signal that lands while the loop holds one of its locks (in a wait or a clear) must
    neither hang the daemon nor lose a line; the SIGTERM after them stops it within the
    harness's bound, exit 0, every message counted once."""
    log, cfg = exim_setup(work)
    d = start(serve, cfg)
    gen = Messages(11)
    stop = threading.Event()

    def storm() -> None:
        while not stop.is_set():
            for _ in range(200):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(d.pid, signal.SIGHUP)
            time.sleep(0.001)

    stormer = threading.Thread(target=storm, daemon=True)
    stormer.start()
    try:
        for _ in range(40):
            append(log, gen.send("alice", "alice.test", 100))
            time.sleep(0.05)
        expected = {
            "alice": summed({"a": {"SENDCOUNT": 40, "SUCCESSCOUNT": 40, "TOTALSIZE": 4000}})["a"]
        }
        assert expected == d.wait_stats(expected)
    finally:
        stop.set()
        stormer.join(5)
    assert "config_reloaded" in d.names()
    assert 0 == d.terminate()


def test_sighup_reads_a_userdomains_that_appeared(work: Path, serve: list[Serve]) -> None:
    """accounts.userdomains configured but not there (yet): the daemon starts with a
    `config_warning` naming the config file and the key, and counts carol.test as its own
    account; once cPanel writes the file, SIGHUP reads it and carol.test is carol's."""
    log, cfg = exim_setup(work, accounts={"userdomains": "userdomains"})
    d = start(serve, cfg)
    warning = d.wait_event("config_warning")
    assert warning["detail"].startswith(f"{cfg}: accounts.userdomains: {work / 'userdomains'} ")
    gen = Messages(9)
    append(log, gen.send("carol", "carol.test", 100))
    d.wait_lines(3)
    (work / "userdomains").write_text("carol.test: carol\n*: nobody\n")
    seen, notes = len(d.events), len(d.datagrams)
    d.signal(signal.SIGHUP)
    d.wait_event("config_reloaded", after=seen)
    d.wait_ready(after=notes)
    assert "config_warning" not in d.names()[seen:]
    append(log, gen.send("carol", "carol.test", 100))
    one = summed({"c": {"SENDCOUNT": 1, "SUCCESSCOUNT": 1, "TOTALSIZE": 100}})["c"]
    assert {"carol.test": one, "carol": one} == d.wait_stats({"carol.test": one, "carol": one})
    assert 0 == d.terminate()


def test_sighup_with_a_broken_config_keeps_the_old_one(work: Path, serve: list[Serve]) -> None:
    """SIGHUP after the config was broken (an unknown key): `reload_failed` names the file
    and key, the daemon keeps running with the old account map, and READY=1 follows."""
    log, cfg = exim_setup(work)
    d = start(serve, cfg)
    gen = Messages(8)
    good = cfg.read_text()
    cfg.write_text(good + "bogus_key: 1\n")
    seen, notes = len(d.events), len(d.datagrams)
    d.signal(signal.SIGHUP)
    failed = d.wait_event("reload_failed", after=seen)
    assert str(cfg) in failed["error"]
    assert "bogus_key" in failed["error"]
    d.wait_ready(after=notes)
    for _ in range(2):
        append(log, gen.send("bob", "bob.test", 10))
    expected = {"bob": summed({"b": {"SENDCOUNT": 2, "SUCCESSCOUNT": 2, "TOTALSIZE": 20}})["b"]}
    assert expected == d.wait_stats(expected)
    assert d.proc.poll() is None
    assert 0 == d.terminate()


# --- 6: bad conditions ------------------------------------------------------------------------


def one_line_error(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert 1 == len(lines), stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_backfill_while_the_daemon_runs_is_refused(work: Path, serve: list[Serve]) -> None:
    """`logstats backfill` on the store the daemon holds exits 1 with one line naming the
    lock and `logstats serve`, and the daemon keeps working."""
    log, cfg = exim_setup(work)
    d = start(serve, cfg)
    other = work / "other.log"
    other.write_bytes(EXIM)
    proc = cli("backfill", "--config", str(cfg), str(other))
    assert 1 == proc.returncode
    line = one_line_error(proc.stderr)
    assert "locked" in line
    assert "serve" in line
    append(log, EXIM)
    assert EXIM_ONLY == d.wait_stats(EXIM_ONLY)


def test_serve_on_a_locked_store_exits_1(work: Path, serve: list[Serve]) -> None:
    """`serve` on a database another process holds read-write exits 1 with one clear line,
    and does not take over the running daemon's socket."""
    log, cfg = exim_setup(work)
    d = start(serve, cfg)
    cfg2 = write_config(
        work, [(log, "exim")], name="second.yaml", serve={"socket": str(work / "two.sock")}
    )
    proc = cli("serve", "--config", str(cfg2), timeout=60)
    assert 1 == proc.returncode
    line = one_line_error(proc.stderr)
    assert "locked" in line
    assert d.health()["ok"]


def test_serve_on_a_store_from_a_newer_version_exits_1(work: Path) -> None:
    """A store with a schema migration this logstats does not know: exit 1, one line that
    says it was written by a newer version."""
    log, cfg = exim_setup(work)
    log.write_bytes(EXIM)
    assert 0 == cli("backfill", "--config", str(cfg), str(log)).returncode  # a real store
    con = duckdb.connect(str(work / "db.duckdb"))
    con.execute("INSERT INTO migrations VALUES ('9999_from_the_future', now())")
    con.close()
    proc = cli("serve", "--config", str(cfg), timeout=60)
    assert 1 == proc.returncode
    line = one_line_error(proc.stderr)
    assert "9999_from_the_future" in line
    assert "newer" in line


def test_serve_with_an_invalid_config_exits_1(work: Path) -> None:
    """A config with a wrong value: exit 1, one line naming the file and the dotted key."""
    _log, cfg = exim_setup(work)
    cfg.write_text(cfg.read_text().replace("batch_seconds: 0.1", "batch_seconds: -2"))
    proc = cli("serve", "--config", str(cfg), timeout=60)
    assert 1 == proc.returncode
    line = one_line_error(proc.stderr)
    assert str(cfg) in line
    assert "serve.batch_seconds" in line


def test_binary_junk_and_a_huge_line_are_unknown(work: Path, serve: list[Serve]) -> None:
    """Binary junk (NULs, invalid UTF-8) and a 10 MB line, written in pieces, are counted as
    unknown lines; the daemon keeps following and the real log after them counts right."""
    log, cfg = exim_setup(work)
    d = start(serve, cfg)
    rng = random.Random(3)
    junk = bytes(rng.randrange(256) for _ in range(5000)).replace(b"\n", b"\x00")
    append(log, EXIM[: EXIM.index(b"\n") + 1])  # a first line: the file's identity
    append(log, junk + b"\n" + b"\xff\xfe\x00garbage\n")
    d.wait_lines(3)
    huge = b"2026-11-24 05:13:00 " + b"x" * (10 << 20)
    for piece in (huge[: 3 << 20], huge[3 << 20 : 7 << 20], huge[7 << 20 :] + b"\n"):
        append(log, piece)
    d.wait_lines(4)  # the over-long line is one (unknown) line, counted once it is seen
    append(log, EXIM[EXIM.index(b"\n") + 1 :])
    assert EXIM_ONLY == d.wait_stats(EXIM_ONLY)
    assert 0 == d.terminate()
    unknown = unparsed(work / "db.duckdb")
    assert 1 == unknown.get("too-long")
    assert 3 == sum(unknown.values())


def test_restart_in_the_middle_of_a_huge_line_counts_it_once(
    work: Path, serve: list[Serve]
) -> None:
    """A daemon stopped (SIGTERM) while an over-long line is half written, then restarted
    when the rest and its newline arrive, counts that line as one `too-long` unknown line,
    and nothing else: the tail of the line is not taken for a line of its own.

    Fails today: the follower's ``skipping`` state is not checkpointed, so after the
    restart the rest of the line (read from the mid-line checkpoint) is counted again."""
    log, cfg = exim_setup(work)
    d = start(serve, cfg)
    append(log, EXIM[: EXIM.index(b"\n") + 1])
    huge = b"2026-11-24 05:13:00 " + b"x" * (1 << 20)
    append(log, huge[:600_000])
    d.wait_lines(2)
    assert 0 == d.terminate()
    append(log, huge[600_000:] + b"\n")
    d = start(serve, cfg)
    append(log, EXIM[EXIM.index(b"\n") + 1 :])
    assert EXIM_ONLY == d.wait_stats(EXIM_ONLY)
    assert 0 == d.terminate()
    assert {"too-long": 1} == unparsed(work / "db.duckdb")


def test_disk_full_during_commit(work: Path, serve: list[Serve]) -> None:
    """The store lives on a 16 MB tmpfs (in a private mount namespace) that is filled up
    while lines arrive: `commit_failed` is logged and retried; when space returns the
    daemon either recovers or has exited non-zero after its retries (then it is restarted
    on the same store).  The final numbers equal the truth, and the store equals a clean
    backfill of the same file hour by hour (nothing corrupted, lost or doubled)."""
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("nsenter")):
        pytest.skip("needs root, unshare(1) and nsenter(1) for a private tmpfs")
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
            assert holder.stderr is not None
            pytest.skip(f"cannot mount a tmpfs in a private namespace: {holder.stderr.read()}")
        inside = Path(f"/proc/{holder.pid}/root") / str(small).lstrip("/")
        enter = ["nsenter", "-t", str(holder.pid), "-m", "--"]
        log, cfg = exim_setup(
            work, store={"path": str(small / "db.duckdb")}, serve={"commit_retries": 4}
        )
        d = start(serve, cfg, prefix=enter)
        filler = inside / "filler"
        parts = split_at_lines(EXIM, 0.3)
        append(log, parts[0])
        d.wait_lines(parts[0].count(b"\n"))
        with open(filler, "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * (64 << 10))
                f.flush()
        seen = len(d.events)
        gen = Messages(11)
        extra = b"".join(gen.send("bob", "bob.test", 10) for _ in range(200))
        append(log, parts[1] + extra)
        d.wait_event("commit_failed", after=seen, timeout=20)
        d.wait_event("commit_failed", after=seen, timeout=20, where=lambda e: e["attempt"] >= 2)
        filler.unlink()
        expected = summed(
            EXIM_TRUTH, {"bob": {"SENDCOUNT": 200, "SUCCESSCOUNT": 200, "TOTALSIZE": 2000}}
        )
        got = d.wait_stats(expected, timeout=40)
        print("disk full: events", [n for n in d.names() if n != "batch_committed"])
        if d.proc.poll() is not None:
            assert 0 != d.proc.returncode
            assert "giving_up" in d.names()
            d = start(serve, cfg, prefix=enter)
            got = d.wait_stats(expected, timeout=20)
        assert expected == got
        assert 0 == d.terminate()
        whole = work / "whole.log"
        whole.write_bytes(log.read_bytes())
        clean_db = work / "clean.duckdb"
        assert expected == backfill(cfg, clean_db, whole)
        copy = work / "daemon-copy.duckdb"  # duckdb resolves /proc/PID/root to our own "/"
        shutil.copyfile(inside / "db.duckdb", copy)
        if (inside / "db.duckdb.wal").exists():
            shutil.copyfile(inside / "db.duckdb.wal", work / "daemon-copy.duckdb.wal")
        mine = store_summary(copy)
        theirs = store_summary(clean_db)
        assert theirs["counters"] == mine["counters"]
        assert theirs["pending"] == mine["pending"]
    finally:
        holder.kill()
        holder.wait(10)


def test_a_backlog_parsed_in_workers_equals_backfill(work: Path, serve: list[Serve]) -> None:
    """A log of several MiB waiting when the daemon starts (a day's backlog) is parsed in
    worker processes, in order, and counts exactly what a backfill of the file counts."""
    gen = work / "gen"
    gen.mkdir()
    truth = genlog("exim", 60000, gen / "exim.log", seed=5)
    domains = domains_of(gen / "exim.log.userdomains")
    uids = {int(u): n for n, u in truth["local_users"].items()}
    log = work / "mainlog"
    log.write_bytes((gen / "exim.log").read_bytes())
    assert log.stat().st_size > 4 << 20  # above the daemon's worker threshold
    sections = {
        "accounts": {"domains": domains, "uids": uids},
        "correlation": {"ttl": "3650d", "orphan_ttl": "3650d"},
    }
    cfg = write_config(work, [(log, "exim")], **sections)
    d = start(serve, cfg)
    d.wait_lines(60000, timeout=60.0)
    assert 0 == d.terminate()
    followed = query_all(cfg)
    assert backfill(cfg, work / "clean.duckdb", log) == followed
