"""Following one path through appends, rotation and truncation, poll by poll (no sleeps).

A small in-memory checkpoint table stands in for the store: every piece a poll returns is
"committed" at once, as the daemon does at the end of a batch.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

from logstats.follow import Follower
from logstats.model import Position


class Checkpoints:
    """The store's checkpoint table, by first-line hash and by path."""

    def __init__(self) -> None:
        self.by_head: dict[str, Position] = {}
        self.by_path: dict[str, Position] = {}

    def commit(self, pieces) -> bytes:
        text = b""
        for p in pieces:
            text += p.body
            self.by_head[p.position.head_hash] = p.position
            self.by_path[p.position.path] = p.position
        return text

    def read(self, f: Follower, max_bytes: int = 1 << 20) -> bytes:
        """Poll until the follower has nothing more to read right away; commit each poll."""
        text = self.commit(f.poll(max_bytes))
        while f.more:
            text += self.commit(f.poll(max_bytes))
        return text

    def follower(self, path: Path, max_line_length: int = 65536) -> Follower:
        return Follower(str(path), "exim", self.by_head.get, self.by_path.get, max_line_length)


def lines(n: int, start: int = 0, tag: str = "L") -> bytes:
    return b"".join(f"2024-01-01 00:00:00 {tag}{i}\n".encode() for i in range(start, start + n))


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def test_appends_and_partial_lines(tmp_path):
    """Complete lines are read once; a partial last line waits for its newline."""
    log = tmp_path / "mainlog"
    log.write_bytes(lines(3) + b"2024-01-01 00:00:00 par")
    cp = Checkpoints()
    f = cp.follower(log)
    assert lines(3) == cp.read(f)
    assert b"" == cp.read(f)
    append(log, b"tial\n" + lines(2, 3))
    assert b"2024-01-01 00:00:00 partial\n" + lines(2, 3) == cp.read(f)


def test_rename_and_create_drains_the_old_file_first(tmp_path):
    """logrotate's default: the renamed file's last lines come before the new file's."""
    log = tmp_path / "mainlog"
    log.write_bytes(lines(3))
    cp = Checkpoints()
    f = cp.follower(log)
    cp.read(f)
    with log.open("ab") as writer:  # a writer still holding the old file
        log.rename(tmp_path / "mainlog.1")
        writer.write(lines(2, 3))
    log.write_bytes(lines(2, 100, tag="N"))
    assert lines(2, 3) + lines(2, 100, tag="N") == cp.read(f)
    assert ["source_rotated"] == [n.event for n in f.notes]


def test_delete_and_recreate(tmp_path):
    """A deleted file's unread tail is drained through the open handle; the new file follows."""
    log = tmp_path / "mainlog"
    log.write_bytes(lines(2))
    cp = Checkpoints()
    f = cp.follower(log)
    cp.read(f)
    with log.open("ab") as writer:
        writer.write(lines(1, 2))
    log.unlink()
    assert lines(1, 2) == cp.read(f)  # drained; the path is missing
    assert "source_missing" in [n.event for n in f.notes]
    log.write_bytes(lines(2, 50, tag="N"))
    assert lines(2, 50, tag="N") == cp.read(f)


def test_copytruncate_reads_the_copy_from_the_last_offset(tmp_path):
    """Lines written between the last read and the copy are read from the copy, once."""
    log = tmp_path / "mainlog"
    log.write_bytes(lines(3))
    cp = Checkpoints()
    f = cp.follower(log)
    cp.read(f)
    append(log, lines(2, 3))  # not yet read when logrotate copies and truncates
    (tmp_path / "mainlog.1").write_bytes(log.read_bytes())
    with log.open("r+b") as t:
        t.truncate(0)
    append(log, lines(4, 200, tag="N"))  # longer than before: size alone would not tell
    assert lines(2, 3) + lines(4, 200, tag="N") == cp.read(f)
    assert "source_truncated" in [n.event for n in f.notes]


def test_rotation_while_stopped_finishes_the_predecessor(tmp_path):
    """On start, the file the path named at the last checkpoint is found among the
    siblings (here already compressed) and finished before the new file."""
    log = tmp_path / "mainlog"
    log.write_bytes(lines(3))
    cp = Checkpoints()
    cp.read(cp.follower(log))
    append(log, lines(2, 3))  # written after the last commit, before the stop
    with gzip.open(tmp_path / "mainlog.1.gz", "wb") as gz:
        gz.write(log.read_bytes())
    log.write_bytes(lines(1, 500, tag="N"))
    f = cp.follower(log)  # a new daemon process
    assert lines(2, 3) + lines(1, 500, tag="N") == cp.read(f)
    assert "source_rotated_while_stopped" in [n.event for n in f.notes]


def test_restart_resumes_at_the_checkpoint(tmp_path):
    """A new follower for the same file continues after the last committed line."""
    log = tmp_path / "mainlog"
    log.write_bytes(lines(3))
    cp = Checkpoints()
    cp.read(cp.follower(log))
    append(log, lines(2, 3))
    assert lines(2, 3) == cp.read(cp.follower(log))


def test_missing_file_that_appears_later(tmp_path):
    """A missing source is reported once and read from its start when it appears."""
    log = tmp_path / "maillog"
    cp = Checkpoints()
    f = cp.follower(log)
    assert b"" == cp.read(f)
    assert b"" == cp.read(f)
    assert ["source_missing"] == [n.event for n in f.notes]
    log.write_bytes(lines(2))
    assert lines(2) == cp.read(f)


def test_unreadable_file_is_reported_and_retried(tmp_path, monkeypatch):
    """A file it may not open gives one clear note, and is read once it can be."""
    import builtins

    log = tmp_path / "mainlog"
    log.write_bytes(lines(2))
    cp = Checkpoints()
    f = cp.follower(log)
    real_open = builtins.open

    def denied(path, *args, **kwargs):
        if os.fspath(path) == str(log):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", denied)
    assert b"" == cp.read(f)
    assert b"" == cp.read(f)
    assert ["source_error"] == [n.event for n in f.notes]
    assert "Permission denied" in f.notes[0].detail
    monkeypatch.undo()
    assert lines(2) == cp.read(f)


def test_overlong_line_is_skipped_across_polls(tmp_path):
    """A line longer than the limit, written in pieces, is skipped up to its newline and
    counted once; the next line is read."""
    log = tmp_path / "mainlog"
    log.write_bytes(lines(1) + b"x" * 300)
    cp = Checkpoints()
    f = cp.follower(log, max_line_length=100)
    first = f.poll()
    assert 1 == sum(p.too_long for p in first)
    cp.commit(first)
    append(log, b"y" * 300)
    assert 0 == sum(p.too_long for p in f.poll())
    append(log, b"z\n" + lines(1, 1))
    assert lines(1, 1) == cp.read(f)


def test_a_backlog_is_read_in_bounded_polls(tmp_path):
    """A large backlog (also a rotated predecessor) comes in polls of bounded size, in
    order, and nothing is lost or repeated."""
    log = tmp_path / "mainlog"
    log.write_bytes(lines(10))
    cp = Checkpoints()
    cp.read(cp.follower(log))
    append(log, lines(2000, 10))
    log.rename(tmp_path / "mainlog.1")
    log.write_bytes(lines(2000, 5000, tag="N"))
    f = cp.follower(log)
    f.chunk_size = 1024
    seen = b""
    polls = 0
    while True:
        pieces = f.poll(max_bytes=4096)
        assert sum(len(p.body) for p in pieces) <= 4096 + 1024 + 64  # + one chunk, one line
        seen += cp.commit(pieces)
        polls += 1
        if not f.more:
            break
    assert lines(2000, 10) + lines(2000, 5000, tag="N") == seen
    assert polls > 20
