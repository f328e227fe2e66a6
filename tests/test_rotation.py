"""Rotations while the daemon is stopped (one, two, three), done by the real ``logrotate``.

The defect these pin down: with two rotations while stopped, the start only finished the
file the path's last checkpoint named (now ``mainlog.2``/``.2.gz``) and then read the new
``mainlog``; every file rotated in between (``mainlog.1``) was never read, silently.

Two levels:

* the follower itself (``logstats.follow.Follower``) against an in-memory checkpoint table
  that behaves as the store's (a head's row is replaced, ``last_of_path`` is the newest row
  that still names the path), with a crash simulated after every poll (and twice);
* ``logstats serve`` as a real process, the rotations done by ``logrotate -f -s STATE CONF``
  with a config written here (numbered, ``compress``, ``delaycompress``, ``dateext``), the
  expectation from bench/genlog.py's ground truth and a clean ``logstats backfill`` of the
  same lines in one file.  Unknown marker lines (no timestamp) are mixed in: each is
  counted exactly once in ``unparsed``, so a line lost or read twice shows there even where
  the correlator would forgive a replayed line.

No timestamp comes from the wall clock: log lines are generated (2024) or fixed, mtimes
are set with ``os.utime`` where they matter.  (``dateext`` names are logrotate's, from the
clock; the tests only need them to sort, and wait for a new second between rotations.)
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from logstats import follow
from logstats.follow import Follower
from logstats.model import Position
from logstats.sources import Piece
from tests.daemon_harness import (
    Serve,
    append,
    backfill,
    domains_of,
    genlog,
    genlog_expected,
    short_dir,
    split_at_lines,
    store_summary,
    unparsed,
    write_config,
)

LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"
needs_logrotate = pytest.mark.skipif(
    not os.access(LOGROTATE, os.X_OK), reason="logrotate is not installed (tests/mta/install.sh)"
)


def stamp(day: int, hour: int = 0) -> float:
    """A fixed moment in March 2024 (epoch seconds)."""
    return datetime(2024, 3, day, hour, tzinfo=UTC).timestamp()


def lines(n: int, tag: str, start: int = 0) -> bytes:
    return b"".join(f"2024-03-04 00:00:00 {tag}{i}\n".encode() for i in range(start, start + n))


class Logrotate:
    """``logrotate -f -s STATE CONF`` for one log, with a config written here."""

    def __init__(self, log: Path, *directives: str, rotate: int = 10) -> None:
        folder = log.parent
        self.conf = folder / "logrotate.conf"
        self.state = folder / "logrotate.state"
        body = [f"rotate {rotate}", "missingok", "nocreate", *directives]
        self.conf.write_text(f"{log} {{\n" + "".join(f"    {d}\n" for d in body) + "}\n")
        self.dateext = "dateext" in directives
        self.last = -1e9

    def __call__(self) -> None:
        if self.dateext:
            # names carry the second of the rotation: one rotation per second of logrotate's
            # (real) clock; measured on the monotonic clock, which no test run shifts
            wait = self.last + 1.0 - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self.last = time.monotonic()
        proc = subprocess.run(
            [LOGROTATE, "-f", "-s", str(self.state), str(self.conf)],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        assert 0 == proc.returncode, proc.stderr


DATEEXT = ("dateext", "dateformat -%Y%m%d%H%M%S")
MODES = {
    "plain": (),
    "compress": ("compress",),
    "delaycompress": ("compress", "delaycompress"),
    "dateext-compress": (*DATEEXT, "compress"),
    "dateext-delaycompress": (*DATEEXT, "compress", "delaycompress"),
}


# --- the follower ----------------------------------------------------------------------------


class Table:
    """The store's checkpoint table: one row per first-line hash (replaced on update), and
    ``last_of_path`` the most recently updated row that names the path now."""

    def __init__(self, rows: dict[str, tuple[int, Position]] | None = None, clock: int = 0):
        self.rows = dict(rows or {})
        self.clock = clock

    def copy(self) -> Table:
        return Table(self.rows, self.clock)

    def position(self, head: str) -> Position | None:
        row = self.rows.get(head)
        return row[1] if row else None

    def last_of_path(self, path: str) -> Position | None:
        rows = [r for r in self.rows.values() if r[1].path == path]
        return max(rows, key=lambda r: r[0])[1] if rows else None

    def commit(self, pieces: list[Piece]) -> bytes:
        text = b""
        for p in pieces:
            text += p.body
            self.clock += 1
            self.rows[p.position.head_hash] = (self.clock, p.position)
        return text

    def follower(self, log: Path) -> Follower:
        return Follower(str(log), "exim", self.position, self.last_of_path)

    def read(self, f: Follower, max_bytes: int = 1 << 20) -> bytes:
        """Poll (committing each poll) until there is nothing more right away."""
        text = self.commit(f.poll(max_bytes))
        while f.more:
            text += self.commit(f.poll(max_bytes))
        return text


def stopped_rotations(
    tmp_path: Path, directives: tuple[str, ...], n: int, size: int = 60
) -> tuple[Path, Table, bytes]:
    """mainlog read, stopped; more lines; ``n`` logrotate runs, each followed by lines in
    the new mainlog.  The table as the stopped daemon left it, and what is still unread."""
    log = tmp_path / "mainlog"
    log.write_bytes(lines(5, "A"))
    table = Table()
    assert lines(5, "A") == table.read(table.follower(log))
    rotate = Logrotate(log, *directives)
    unread = lines(size, "A", 5)
    append(log, unread)  # after the last commit, before the stop
    for tag in "BCDEFG"[:n]:
        rotate()
        append(log, lines(size, tag))
        unread += lines(size, tag)
    return log, table, unread


@needs_logrotate
@pytest.mark.parametrize("mode", ["plain", "compress", "delaycompress"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_follower_reads_every_file_rotated_while_stopped(tmp_path: Path, n: int, mode: str):
    """After 1, 2 or 3 logrotate runs while stopped, the start reads the checkpointed file
    from its offset (by then maybe compressed), every file rotated after it whole, oldest
    first, then the new mainlog: every unread line once, in order.  A restart reads nothing."""
    log, table, unread = stopped_rotations(tmp_path, MODES[mode], n)
    f = table.follower(log)
    assert unread == table.read(f)
    notes = [x for x in f.notes if x.event == "source_rotated_while_stopped"]
    assert n == len(notes), f.notes
    assert f"mainlog.{n}" in notes[0].detail  # the checkpointed one first: the oldest
    assert b"" == table.read(table.follower(log))
    append(log, lines(3, "Z"))
    assert lines(3, "Z") == table.read(table.follower(log))


def dateext_rotate(log: Path, day: int, *, compress: bool, delay: bool) -> None:
    """What logrotate does with ``dateext`` (and compress / delaycompress), dated from a
    fixed day instead of today: the previous plain file is compressed (delaycompress), the
    log renamed to ``mainlog-202403DD`` and compressed at once (compress alone).  The gzip
    copies keep the original mtime, in the header and on the file, as logrotate's do."""

    def gz(path: Path) -> None:
        st = path.stat()
        with path.open("rb") as src, gzip.GzipFile(f"{path}.gz", "wb", mtime=st.st_mtime) as dst:
            shutil.copyfileobj(src, dst)
        os.utime(f"{path}.gz", (st.st_atime, st.st_mtime))
        path.unlink()

    if compress and delay:
        for old in log.parent.glob(f"{log.name}-2024????"):
            gz(old)
    target = log.with_name(f"{log.name}-202403{day:02d}")
    log.rename(target)
    if compress and not delay:
        gz(target)


@pytest.mark.parametrize("compress,delay", [(False, False), (True, False), (True, True)])
def test_follower_dateext_names(tmp_path: Path, compress: bool, delay: bool):
    """``dateext`` names (``mainlog-20240305``, ``...06.gz``) are put in the order of their
    dates, whatever the files' mtimes say (here the reverse), and each file is read once."""
    log = tmp_path / "mainlog"
    log.write_bytes(lines(5, "A"))
    table = Table()
    table.read(table.follower(log))
    unread = lines(40, "A", 5)
    append(log, unread)
    for day, tag in ((5, "B"), (6, "C"), (7, "D")):
        dateext_rotate(log, day, compress=compress, delay=delay)
        log.write_bytes(lines(40, tag))
        unread += lines(40, tag)
    for i, sib in enumerate(sorted(tmp_path.glob("mainlog-*"))):
        os.utime(sib, (stamp(20 - i), stamp(20 - i)))  # newest date, oldest mtime
    assert unread == table.read(table.follower(log))


def test_rotated_siblings_order(tmp_path: Path):
    """Numbered names in logrotate's order (``.10.gz`` oldest, ``.1`` newest) whatever the
    mtimes; dateext names by date; a file both plain and compressed once (plain); names
    that are not rotations (``.away``, ``.bak``, ``.conf``) are not candidates."""
    log = tmp_path / "mainlog"
    log.write_bytes(b"current\n")
    for n, mtime_day in ((1, 1), (2, 2), (3, 3), (10, 4)):
        body = f"2024-03-04 00:00:00 file {n}\n".encode()
        path = log.with_name(f"mainlog.{n}" + (".gz" if n > 1 else ""))
        path.write_bytes(gzip.compress(body) if n > 1 else body)
        os.utime(path, (stamp(mtime_day), stamp(mtime_day)))
    log.with_name("mainlog.1.gz").write_bytes(gzip.compress(b"2024-03-04 00:00:00 file 1\n"))
    for other in ("mainlog.away", "mainlog.bak", "mainlog.logrotate.conf", "mainlog-old"):
        log.with_name(other).write_bytes(b"not a rotation\n")
    names = [Path(r.path).name for r in follow.rotated_siblings(str(log))]
    assert ["mainlog.10.gz", "mainlog.3.gz", "mainlog.2.gz", "mainlog.1"] == names

    dated = tmp_path / "dated"
    dated.mkdir()
    log = dated / "mail.log"
    for day in (29, 1, 2):
        month = 2 if day == 29 else 3
        path = dated / (f"mail.log-2024{month:02d}{day:02d}" + (".gz" if day != 2 else ""))
        body = f"Mar  {day} 00:00:00 host x: {day}\n".encode()
        path.write_bytes(gzip.compress(body) if path.suffix == ".gz" else body)
        os.utime(path, (stamp(9), stamp(9)))  # all the same mtime
    assert ["mail.log-20240229.gz", "mail.log-20240301.gz", "mail.log-20240302"] == [
        Path(r.path).name for r in follow.rotated_siblings(str(log))
    ]
    postfix = "/x/mainlog.20240301-120000.gz"  # postfix logrotate's suffix, compressed
    assert follow.rotation_name("/x/mainlog", postfix) is not None
    assert follow.rotation_name("/x/mainlog", "/x/mainlog.old") is None


def test_mixed_names_are_ordered_by_content_time(tmp_path: Path):
    """A logrotate config changed from numbered to dateext: the two kinds of names cannot
    be compared, so content time orders them, and for a gzip file whose mtime was not kept
    (compressed later by another tool) that is the original mtime in its gzip header."""
    log = tmp_path / "mainlog"
    older = log.with_name("mainlog-20240301.gz")
    older.write_bytes(gzip.compress(b"2024-03-01 00:00:00 older\n", mtime=stamp(1)))
    os.utime(older, (stamp(9), stamp(9)))  # compressed (and touched) much later
    newer = log.with_name("mainlog.1")
    newer.write_bytes(b"2024-03-02 00:00:00 newer\n")
    os.utime(newer, (stamp(2), stamp(2)))
    names = [Path(r.path).name for r in follow.rotated_siblings(str(log))]
    assert [older.name, newer.name] == names


def test_unknown_older_and_done_files_are_not_read(tmp_path: Path):
    """A rotated file older than the checkpointed one that was never read (history from
    before logstats) is not read; a file already done (here: backfilled compressed) is not
    read again; the others are."""
    log = tmp_path / "mainlog"
    log.write_bytes(lines(10, "OLD"))  # the history logstats never followed ...
    rotate = Logrotate(log, "compress", "delaycompress")
    rotate()
    log.write_bytes(lines(5, "A"))  # ... it starts following this file
    table = Table()
    assert lines(5, "A") == table.read(table.follower(log))  # not mainlog.1 (unknown, older)
    append(log, lines(10, "A", 5))
    rotate()
    log.write_bytes(lines(10, "B"))
    rotate()
    log.write_bytes(lines(10, "C"))
    rotate()
    log.write_bytes(lines(10, "D"))
    # mainlog.4.gz OLD, mainlog.3.gz A (checkpointed), mainlog.2.gz B, mainlog.1 C, mainlog D
    b = str(log.with_name("mainlog.2.gz"))
    table.commit([Piece(b"", Position(follow.file_head_hash(b), b, 0, 999, 10, 0.0, done=True))])
    assert lines(10, "A", 5) + lines(10, "C") + lines(10, "D") == table.read(table.follower(log))


def test_checkpointed_file_gone(tmp_path: Path):
    """With ``rotate 1`` and two rotations while stopped, the checkpointed file is deleted:
    that is reported (its unread tail is lost), and of the rotated files the one written
    after it is read, not an older one that was never read."""
    log = tmp_path / "mainlog"
    old = log.with_name("mainlog-20240301")  # older history under another name, never read
    old.write_bytes(lines(3, "OLD"))
    os.utime(old, (stamp(1), stamp(1)))
    log.write_bytes(lines(5, "A"))
    os.utime(log, (stamp(4), stamp(4)))
    table = Table()
    table.read(table.follower(log))
    rotate = Logrotate(log, rotate=1)
    append(log, lines(5, "A", 5))
    rotate()
    log.write_bytes(lines(5, "B"))
    os.utime(log, (stamp(5), stamp(5)))
    rotate()  # mainlog.1 (A) is deleted, B becomes mainlog.1
    log.write_bytes(lines(5, "C"))
    f = table.follower(log)
    assert lines(5, "B") + lines(5, "C") == table.read(f)
    assert "source_predecessor_missing" in [x.event for x in f.notes]


def crash_points(table: Table, log: Path, max_bytes: int) -> list[tuple[Table, bytes]]:
    """Read to the end in small polls; after each poll, a copy of the table (what a
    SIGKILL right then leaves) and what was read up to then."""
    f = table.follower(log)
    f.chunk_size = 512
    got = b""
    points = [(table.copy(), got)]
    while True:
        got += table.commit(f.poll(max_bytes))
        points.append((table.copy(), got))
        if not f.more:
            return points


def some_polls(table: Table, log: Path, polls: int, max_bytes: int) -> bytes:
    f = table.follower(log)
    f.chunk_size = 512
    got = b""
    for _ in range(polls):
        got += table.commit(f.poll(max_bytes))
        if not f.more:
            break
    return got


@needs_logrotate
@pytest.mark.parametrize("mode", ["compress", "delaycompress", "plain"])
def test_interrupted_catch_up_resumes_exactly(tmp_path: Path, mode: str):
    """A SIGKILL after any poll of the catch-up (the last commit is what survives), and a
    second one a few polls into the next start: the next start goes on from there, and
    what was read before plus what is read after is every unread line once, in order."""
    log, table, unread = stopped_rotations(tmp_path, MODES[mode], 3, size=200)
    points = crash_points(table.copy(), log, 512)
    assert unread == points[-1][1]
    assert len(points) > 20
    for snapshot, before in points:
        once = snapshot.copy()
        assert unread == before + once.read(once.follower(log))
        for polls in (1, 3, 7):
            twice = snapshot.copy()
            more = some_polls(twice, log, polls, 512)
            assert unread == before + more + twice.read(twice.follower(log)), (before, polls)


@needs_logrotate
def test_rotation_during_the_catch_up(tmp_path: Path):
    """logrotate runs again while the catch-up is being read: files renamed and compressed
    under it are found again by their first lines, and the mainlog rotated meanwhile is
    read before the new one."""
    log, table, unread = stopped_rotations(tmp_path, ("compress",), 2, size=200)
    f = table.follower(log)
    f.chunk_size = 512
    got = table.commit(f.poll(2048))
    assert f.more
    rotate = Logrotate(log, "compress")
    rotate()
    log.write_bytes(lines(30, "X"))
    got += table.read(f, 2048)
    assert unread + lines(30, "X") == got


@needs_logrotate
@pytest.mark.parametrize("mode", ["plain", "delaycompress"])
def test_two_rotations_between_polls(tmp_path: Path, mode: str):
    """While running, two rotations between two polls: the old file is drained through its
    handle, the one rotated in between is read whole, then the new mainlog."""
    log = tmp_path / "mainlog"
    log.write_bytes(lines(5, "A"))
    table = Table()
    f = table.follower(log)
    table.read(f)
    rotate = Logrotate(log, *MODES[mode])
    append(log, lines(5, "A", 5))
    rotate()
    log.write_bytes(lines(7, "B"))
    rotate()
    log.write_bytes(lines(9, "C"))
    assert lines(5, "A", 5) + lines(7, "B") + lines(9, "C") == table.read(f)
    assert ["source_rotated", "source_rotated_unread"] == [x.event for x in f.notes]


# --- the daemon ------------------------------------------------------------------------------


@pytest.fixture
def work() -> Iterator[Path]:
    with short_dir("lsr-") as path:
        yield path


@pytest.fixture
def serve() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for d in started:
        d.close()


def start(serve: list[Serve], cfg: Path) -> Serve:
    d = Serve(cfg)
    serve.append(d)
    d.wait_ready(timeout=60)
    return d


@dataclass(frozen=True)
class Generated:
    body: bytes  # a genlog Exim log with marker lines
    expected: dict[str, dict[str, str]]  # genlog's truth in EmailTrack terms
    markers: int  # unknown lines in it (one `no-timestamp` each)
    sections: dict[str, Any]  # config sections: genlog's accounts, long TTLs


def generated(folder: Path, n: int, seed: int) -> Generated:
    """A genlog Exim log (2024, fixed dates) with an unknown marker line after every 5th."""
    truth = genlog("exim", n, folder / "exim.log", seed=seed)
    out, markers = [], 0
    for i, line in enumerate((folder / "exim.log").read_bytes().splitlines(keepends=True)):
        out.append(line)
        if i % 5 == 4:
            markers += 1
            out.append(f"logstats-rotation-test marker {markers}\n".encode())
    uids = {int(u): name for name, u in truth["local_users"].items()}
    sections = {
        "accounts": {"domains": domains_of(folder / "exim.log.userdomains"), "uids": uids},
        # the generated log is from 2024: keep in-flight messages, as tests/test_daemon.py
        "correlation": {"ttl": "3650d", "orphan_ttl": "3650d"},
    }
    return Generated(b"".join(out), genlog_expected(truth), markers, sections)


@pytest.fixture(scope="module")
def small_log(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    return generated(tmp_path_factory.mktemp("genlog"), 4000, seed=21)


@pytest.fixture(scope="module")
def big_log(tmp_path_factory: pytest.TempPathFactory) -> Generated:
    return generated(tmp_path_factory.mktemp("genlog-big"), 150_000, seed=22)


def stop_and_rotate(
    work: Path, serve: list[Serve], data: Generated, directives: tuple[str, ...], n: int,
    first: float = 0.1,
) -> tuple[Path, Path, int]:  # fmt: skip
    """The daemon reads the first part of the log and is stopped (SIGTERM); the next part
    goes to mainlog; then ``n`` times: logrotate, and the next part to the new mainlog.
    Returns the log, the config and the number of lines still unread."""
    log = work / "mainlog"
    log.touch()
    cfg = write_config(work, [(log, "exim")], **data.sections)
    step = (1 - first) / (n + 1)
    parts = split_at_lines(data.body, *(first + i * step for i in range(n + 1)))
    assert n + 2 == len(parts)
    d = start(serve, cfg)
    append(log, parts[0])
    d.wait_lines(parts[0].count(b"\n"), timeout=30)
    assert 0 == d.terminate()
    rotate = Logrotate(log, *directives)
    append(log, parts[1])
    for part in parts[2:]:
        rotate()
        append(log, part)
    return log, cfg, sum(p.count(b"\n") for p in parts[1:])


def in_flight(db: Path) -> list[tuple[Any, ...]]:
    """The pending rows of messages not finished (a finished message may be kept a while
    for its hand-off ledger; when it is dropped depends on where reading stopped, also
    without any rotation: a daemon restarted on one plain file keeps one a clean backfill
    has dropped)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(
            "SELECT mta, scope, queue_id, account, received, state FROM pending ORDER BY ALL"
        ).fetchall()
    finally:
        con.close()
    return [tuple(r[:5]) for r in rows if not json.loads(r[5]).get("finished")]


def assert_exactly_once(work: Path, cfg: Path, data: Generated) -> None:
    """Every unknown marker counted once; the store equals, hour by hour, a clean backfill
    of all the lines in one file (counters, unknown lines, messages in flight), and that
    equals genlog's truth."""
    db = work / "db.duckdb"
    assert {"no-timestamp": data.markers} == unparsed(db)
    whole = work / "whole.log"
    whole.write_bytes(data.body)
    clean = work / "clean.duckdb"
    assert data.expected == backfill(cfg, clean, whole)
    mine, theirs = store_summary(db), store_summary(clean)
    assert theirs["counters"] == mine["counters"]
    assert theirs["unparsed"] == mine["unparsed"]
    assert in_flight(clean) == in_flight(db)


@needs_logrotate
@pytest.mark.parametrize(
    "mode,n",
    [
        (mode, n)
        for mode in ("plain", "compress", "delaycompress")
        for n in (1, 2, 3)
    ]
    + [("dateext-compress", 2), ("dateext-delaycompress", 2), ("dateext-delaycompress", 3)],
)  # fmt: skip
def test_serve_after_rotations_while_stopped(
    work: Path, serve: list[Serve], small_log: Generated, mode: str, n: int
) -> None:
    """`logstats serve` stopped, 1-3 real logrotate runs (numbered, compressed, delayed
    compression, dateext), started again: the numbers equal genlog's truth, the new
    process took exactly the lines that were unread, and the store equals a clean
    backfill of the same lines (no line lost or counted twice)."""
    log, cfg, unread = stop_and_rotate(work, serve, small_log, MODES[mode], n)
    d = start(serve, cfg)
    assert small_log.expected == d.wait_stats(small_log.expected, timeout=30)
    assert 0 == d.terminate()
    assert unread == d.wait_event("serve_stopped")["lines"]
    caught_up = [e["detail"] for e in d.events if e.get("event") == "source_rotated_while_stopped"]
    assert n == len(caught_up), caught_up
    assert_exactly_once(work, cfg, small_log)
    assert log.exists()


def kill(d: Serve) -> None:
    """SIGKILL the daemon, then the parser workers it started (a killed daemon cannot stop
    them; they are known by the NOTIFY_SOCKET they inherited, which is this daemon's)."""
    d.kill()
    mark = f"NOTIFY_SOCKET={d.notify_path}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            inherited = mark in (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if inherited:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)


def caught_up(db: Path) -> bool:
    """Whether the three rotated files are done (read with the daemon stopped)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        row = con.execute("SELECT count(*) FROM checkpoints WHERE done").fetchone()
    finally:
        con.close()
    return row is not None and row[0] >= 3


@needs_logrotate
def test_serve_killed_during_the_catch_up(
    work: Path, serve: list[Serve], big_log: Generated
) -> None:
    """Three rotations (compress, delaycompress) of a large log while stopped, then the
    catch-up is killed with SIGKILL again and again: right after its first or second
    commit (inside one of the rotated files, or between two) and at random moments of the
    start.  The final store equals a clean backfill and genlog's truth, every marker once."""
    _log, cfg, _unread = stop_and_rotate(
        work, serve, big_log, MODES["delaycompress"], 3, first=0.02
    )
    # commits every 10,000 lines: the catch-up of ~175,000 lines takes some 18 commits, so
    # the first three kills, each after at most two commits, all land before it ends
    settings = yaml.safe_load(cfg.read_text())
    settings["ingest"] = {**settings.get("ingest", {}), "batch_lines": 10_000}
    cfg.write_text(yaml.safe_dump(settings, sort_keys=False))
    rng = random.Random(5)
    kills = 0
    while not caught_up(work / "db.duckdb"):
        assert kills < 24, "the catch-up does not progress"
        d = Serve(cfg)
        serve.append(d)
        if kills >= 3 and kills % 2:
            time.sleep(rng.uniform(0.3, 2.5))  # a random moment of the start, not a sync
        else:
            after = 0
            for _ in range(1 + kills % 2):  # right after its first or its second commit
                d.wait_event("batch_committed", timeout=60, after=after)
                after = 1 + next(
                    i
                    for i in range(after, len(d.events))
                    if d.events[i].get("event") == "batch_committed"
                )
        kill(d)
        kills += 1
    assert kills >= 3  # at least three kills with the catch-up unfinished
    d = start(serve, cfg)
    assert big_log.expected == d.wait_stats(big_log.expected, timeout=120)
    assert 0 == d.terminate()
    assert_exactly_once(work, cfg, big_log)
