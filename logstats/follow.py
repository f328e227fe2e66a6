"""Follow one log path through appends, rotation and truncation.

These log files are appended to by the MTA (or syslog) and are, from time to time, rotated
or truncated by logrotate, ``exicyclog`` or cPanel:

* **rename + create** (logrotate's default, exicyclog): the path names a new inode.  The
  old file may still get a last line from a writer holding it open, so it is drained to
  its end through the handle we already hold, then the new file is read from its start.
* **delete + re-create**: the same, seen as a missing path for a while.
* **copytruncate**: the same inode shrinks (or starts with a different first line).  The
  lines written between our last read and the copy are in the copy, which has the old
  first line: it is found among the siblings by that fingerprint and read from our offset.
* **compressed later** (``.1`` -> ``.2.gz``): a file is identified by the hash of its first
  line, not by name or inode, so the compressed copy is recognised and not read twice.
* **rotated while stopped**: at start, if the path's last checkpoint names a different
  first line, that predecessor is looked up among the siblings and finished first.

Only complete lines are handed on; a partial last line waits for its newline.  A line
longer than the limit is skipped up to its newline and counted.  ``poll()`` does all of
this without sleeping; the daemon decides when to call it (watchdog wake-up or timer).
"""

from __future__ import annotations

import glob
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from logstats.errors import SourceError
from logstats.model import Position
from logstats.sources import compression, open_binary, read_chunks

READ = 1 << 20
READ_BUDGET = 8 << 20  # bytes one poll reads at most
HEAD_LIMIT = 64 * 1024
HEAD_CHECK_SECONDS = 1.0


@dataclass(slots=True)
class Piece:
    """Complete lines read from one file, and where that file stands afterwards."""

    body: bytes
    position: Position
    too_long: int = 0


@dataclass(slots=True)
class Note:
    """Something worth a log line: rotation, truncation, a missing or unreadable file."""

    event: str  # source_rotated, source_truncated, source_missing, source_error, ...
    path: str
    detail: str = ""


@dataclass(slots=True)
class _Open:
    path: str
    fh: BinaryIO
    inode: int
    head_hash: str
    offset: int
    lines: int
    mtime: float
    skipping: bool = False
    head_checked: float = 0.0


def head_hash_of(fh: BinaryIO) -> str:
    """Hash of the first complete line ("" while there is none)."""
    fh.seek(0)
    head = fh.read(HEAD_LIMIT)
    nl = head.find(b"\n")
    return hashlib.sha1(head[: nl + 1]).hexdigest() if nl >= 0 else ""


def siblings(path: str) -> list[str]:
    """Rotated copies of ``path``: ``path.1``, ``path.2.gz``, ``path-20240101`` ..."""
    base = glob.escape(path)
    found = set(glob.glob(base + ".*")) | set(glob.glob(base + "-*"))
    found.discard(path)
    return sorted(found, key=lambda p: os.stat(p).st_mtime if os.path.exists(p) else 0.0)


def file_head_hash(path: str) -> str:
    with open_binary(path) as f:
        head = f.read(HEAD_LIMIT)
    nl = head.find(b"\n")
    if nl >= 0:
        return hashlib.sha1(head[: nl + 1]).hexdigest()
    return hashlib.sha1(head).hexdigest() if head and compression(path) else ""


@dataclass(slots=True)
class Follower:
    """The state of one followed path; ``poll()`` returns what is new since last time."""

    path: str
    mta: str
    checkpoint: Callable[[str], Position | None]  # head hash -> stored position
    last_of_path: Callable[[str], Position | None]  # path -> its newest stored position
    max_line_length: int = 65536
    current: _Open | None = None
    missing_reported: bool = False
    error_reported: str = ""
    notes: list[Note] = field(default_factory=list)
    started: bool = False
    chunk_size: int = READ  # bytes per read
    more: bool = False  # the last poll stopped at its budget: poll again right away
    _finishing: Iterator[Piece] | None = None  # a finished file still being read

    def poll(self, max_bytes: int = READ_BUDGET) -> list[Piece]:
        """What is new since the last poll, at most about ``max_bytes`` of it (``more`` tells
        whether there is more to read right away: a backlog is caught up in bounded steps)."""
        self.more = False
        budget = [max_bytes]
        pieces: list[Piece] = []
        if not self.started:
            self.started = True
            self._finishing = self._predecessor()
        if self._finishing is not None:
            pieces += self._pull(budget)
            if self._finishing is not None:
                self.more = True
                return pieces  # older lines first: the rest of them on the next poll
        if self.current is None and not self._open(pieces):
            return pieces
        cur = self.current
        assert cur is not None
        if self._was_truncated(cur):
            # before reading: the bytes after our offset belong to new content now
            self._truncated(cur)
            self.more = True
            return pieces
        pieces += self._read(cur, False, budget)
        if budget[0] <= 0:
            self.more = True
            return pieces
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if not self.missing_reported:
                self.notes.append(Note("source_missing", self.path, "waiting for it to return"))
                self.missing_reported = True
            return pieces
        except OSError as exc:
            self._error(f"cannot stat: {exc.strerror}")
            return pieces
        self.missing_reported = False
        if st.st_ino != cur.inode:
            pieces += self._read(cur, True, budget)  # drain the renamed or deleted file
            if budget[0] <= 0:
                self.more = True
                return pieces  # not drained yet: switch on a later poll
            cur.fh.close()
            self.current = None
            self.notes.append(
                Note("source_rotated", self.path, f"inode {cur.inode} -> {st.st_ino}")
            )
            self.more = True  # the new file is read on the next poll
        return pieces

    def _pull(self, budget: list[int]) -> list[Piece]:
        """Continue reading a finished file (predecessor or copytruncate copy)."""
        assert self._finishing is not None
        pieces = []
        for piece in self._finishing:
            pieces.append(piece)
            budget[0] -= len(piece.body)
            if budget[0] <= 0:
                return pieces
        self._finishing = None
        return pieces

    def close(self) -> None:
        if self.current is not None:
            self.current.fh.close()
            self.current = None

    # -- internals ---------------------------------------------------------------------------
    def _error(self, detail: str) -> None:
        if detail != self.error_reported:
            self.notes.append(Note("source_error", self.path, detail))
            self.error_reported = detail

    def _open(self, pieces: list[Piece]) -> bool:
        try:
            fh: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - held across polls
        except FileNotFoundError:
            if not self.missing_reported:
                self.notes.append(Note("source_missing", self.path, "waiting for it to appear"))
                self.missing_reported = True
            return False
        except OSError as exc:
            self._error(f"cannot open: {exc.strerror} (will retry)")
            return False
        self.missing_reported = False
        self.error_reported = ""
        head = head_hash_of(fh)
        if not head:
            fh.close()  # no complete first line yet: no identity, try again later
            return False
        st = os.fstat(fh.fileno())
        known = self.checkpoint(head)
        offset = known.byte_offset if known and not known.done else 0
        lines = known.lines if known and not known.done else 0
        if known is not None and known.done:
            fh.close()
            return False
        if st.st_size < offset:
            offset, lines = 0, 0  # shorter than its checkpoint: truncated and rewritten
        skipping = False
        if offset:
            # a checkpoint inside a line comes from skipping an over-long one: go on skipping
            fh.seek(offset - 1)
            skipping = fh.read(1) != b"\n"
        self.current = _Open(self.path, fh, st.st_ino, head, offset, lines, st.st_mtime, skipping)
        return True

    def _was_truncated(self, cur: _Open) -> bool:
        """copytruncate: the open file shrank, or starts with another first line (a file
        truncated and written past the old offset between two polls: checked once a second
        and whenever it grew)."""
        try:
            size = os.fstat(cur.fh.fileno()).st_size
            if size < cur.offset:
                return True
            now = time.monotonic()
            if size == cur.offset and now - cur.head_checked < HEAD_CHECK_SECONDS:
                return False
            cur.head_checked = now
            return head_hash_of(cur.fh) not in ("", cur.head_hash)
        except OSError:
            return False

    def _truncated(self, cur: _Open) -> None:
        """copytruncate: finish the copy (same first line) from our offset, restart at 0."""
        for sib in reversed(siblings(self.path)):
            try:
                if file_head_hash(sib) != cur.head_hash:
                    continue
            except (OSError, SourceError, EOFError):
                continue
            self._finishing = self._read_file(sib, cur.head_hash, cur.offset, cur.lines)
            break
        self.notes.append(Note("source_truncated", self.path, f"at byte {cur.offset}"))
        cur.fh.close()
        self.current = None

    def _predecessor(self) -> Iterator[Piece] | None:
        """Rotation while stopped: finish the file this path named at the last checkpoint."""
        last = self.last_of_path(self.path)
        if last is None or last.done:
            return None
        try:
            if os.path.exists(self.path) and file_head_hash(self.path) == last.head_hash:
                return None  # still the same file: poll() resumes it
        except (OSError, SourceError):
            return None
        for sib in reversed(siblings(self.path)):
            try:
                if file_head_hash(sib) != last.head_hash:
                    continue
            except (OSError, SourceError, EOFError):
                continue
            self.notes.append(Note("source_rotated_while_stopped", self.path, f"finishing {sib}"))
            return self._read_file(sib, last.head_hash, last.byte_offset, last.lines)
        self.notes.append(
            Note(
                "source_predecessor_missing",
                self.path,
                f"the file last read ({last.head_hash[:12]}) is gone; lines after byte "
                f"{last.byte_offset} of it cannot be read",
            )
        )
        return None

    def _read_file(self, path: str, head: str, offset: int, lines: int) -> Iterator[Piece]:
        """Read a finished (rotated, maybe compressed) file to its end, a chunk at a time.

        Only its last piece is marked ``done``: an interrupted read resumes from the last
        committed piece."""
        st = os.stat(path)
        chunks = read_chunks(
            path,
            offset,
            final=True,
            max_line_length=self.max_line_length,
            chunk_size=self.chunk_size,
        )
        last: Piece | None = None
        for raw in chunks:
            lines += raw.body.count(b"\n") + (0 if raw.body.endswith(b"\n") or not raw.body else 1)
            if last is not None:
                yield last
            position = Position(head, path, st.st_ino, raw.end_offset, lines, st.st_mtime)
            last = Piece(raw.body, position, raw.too_long)
        if last is None:
            last = Piece(b"", Position(head, path, st.st_ino, offset, lines, st.st_mtime))
        p = last.position
        done = Position(p.head_hash, p.path, p.inode, p.byte_offset, p.lines, p.mtime, done=True)
        yield Piece(last.body, done, last.too_long)

    def _read(self, cur: _Open, final: bool, budget: list[int]) -> list[Piece]:
        """Complete lines appended to the open file since the last read (within budget)."""
        pieces = []
        cur.fh.seek(cur.offset)
        pending = b""
        while budget[0] > 0:
            try:
                data = cur.fh.read(self.chunk_size)
            except OSError as exc:
                self._error(f"cannot read: {exc.strerror}")
                break
            if not data:
                break
            buf = pending + data
            too_long = 0
            if cur.skipping:
                nl = buf.find(b"\n")
                if nl < 0:
                    cur.offset += len(buf)
                    pending = b""
                    continue
                cur.offset += nl + 1
                buf = buf[nl + 1 :]
                cur.skipping = False
            last = buf.rfind(b"\n")
            if last < 0:
                if len(buf) > self.max_line_length:
                    cur.offset += len(buf)
                    cur.skipping = True
                    pending = b""
                    pieces.append(self._piece(cur, b"", 1))
                else:
                    pending = buf
                continue
            body, pending = buf[: last + 1], buf[last + 1 :]
            cur.offset += len(body)
            cur.lines += body.count(b"\n")
            budget[0] -= len(body)
            pieces.append(self._piece(cur, body, too_long))
        if budget[0] <= 0:
            return pieces  # the partial tail, if any, is read again next time
        if final and pending and not cur.skipping:
            cur.offset += len(pending)
            cur.lines += 1
            pieces.append(self._piece(cur, pending, 0))
        elif len(pending) > self.max_line_length:
            cur.offset += len(pending)  # an over-long line still being written: skip it
            cur.skipping = True
            pieces.append(self._piece(cur, b"", 1))
        return pieces

    def _piece(self, cur: _Open, body: bytes, too_long: int) -> Piece:
        return Piece(
            body,
            Position(cur.head_hash, cur.path, cur.inode, cur.offset, cur.lines, cur.mtime),
            too_long,
        )
