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
* **rotated while stopped** (once or several times): at start, unless the path still names
  a known file, the rotated siblings (``.1``, ``.2.gz``, ``-20240101``, ``-20240101.gz`` ...)
  are identified by their first lines and put in order (see ``rotated_siblings``); from the
  file the path's last checkpoint names, the ones not done yet are read oldest first (the
  checkpointed one from its offset, the ones after it whole), then the path.  After an
  interruption during that catch-up the newest known sibling is where it resumes.  The
  same look is taken after a rotation or truncation seen while running, in case more than
  one happened between two polls.

Only complete lines are handed on; a partial last line waits for its newline.  A line
longer than the limit is skipped up to its newline and counted.  ``poll()`` does all of
this without sleeping; the daemon decides when to call it (watchdog wake-up or timer).
"""

from __future__ import annotations

import contextlib
import glob
import lzma
import os
import re
import stat
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from logstats.errors import SourceError
from logstats.model import Position
from logstats.sources import (
    HEAD,
    LineCutter,
    Piece,
    compression,
    file_pieces,
    fingerprint,
    identity,
    line_count,
)

READ = 1 << 20
READ_BUDGET = 32 << 20  # bytes one poll reads at most (a backlog is caught up in such steps)
HEAD_CHECK_SECONDS = 1.0
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz")  # what sources.open_binary can read
_NUMBERED = re.compile(r"\.(\d{1,5})")  # logrotate .1, .2 (exicyclog .01, savelog .0)
_DATED = re.compile(r"[-.]\d[\d._-]*\d")  # dateext -20240101, postfix .20240101-120000
_READ_ERRORS = (OSError, SourceError, EOFError, lzma.LZMAError, zlib.error)


@dataclass(slots=True)
class Note:
    """Something worth a log line: rotation, truncation, a missing or unreadable file."""

    event: str  # source_rotated, source_truncated, source_missing, source_error, ...
    path: str
    detail: str = ""
    fields: dict[str, str] = field(default_factory=dict)  # more to log (journal_gap's times)


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
    """The fingerprint of an open (plain, growing) file: "" while it has no complete line."""
    fh.seek(0)
    return fingerprint(fh.read(HEAD), False)


def siblings(path: str) -> list[str]:
    """Rotated copies of ``path``: ``path.1``, ``path.2.gz``, ``path-20240101`` ..."""
    base = glob.escape(path)
    found = set(glob.glob(base + ".*")) | set(glob.glob(base + "-*"))
    found.discard(path)
    return sorted(found, key=lambda p: os.stat(p).st_mtime if os.path.exists(p) else 0.0)


def file_head_hash(path: str) -> str:
    """The fingerprint of a (maybe rotated, maybe compressed) file."""
    return identity(path)


@dataclass(frozen=True, slots=True)
class Rotated:
    """A rotated copy of a followed path, and what puts it in order among the others."""

    path: str
    head_hash: str
    scheme: str  # "num" (.1, .2.gz), a date shape such as "-99999999", or "" (path.gz)
    rank: tuple[int, ...]  # within one scheme: larger is newer
    when: float  # when its content was last written (see content_mtime)
    compressed: bool


def rotation_name(path: str, candidate: str) -> tuple[str, tuple[int, ...]] | None:
    """(scheme, rank) of a rotated name of ``path``, or None for any other name.

    ``.N`` is logrotate's numbering (``.1`` is the newest: rank ``-N``); ``-YYYYMMDD`` and
    other dateext/postfix forms (six digits or more) rank by their digits, which are
    compared only with names of the same shape; ``path.gz`` alone has scheme "".  A
    ``.gz``/``.bz2``/``.xz`` suffix does not change a name's place (``.2.gz`` is ``.2``)."""
    if not candidate.startswith(path):
        return None
    suffix = candidate[len(path) :]
    for ext in COMPRESSED_SUFFIXES:
        if suffix.endswith(ext):
            suffix = suffix[: -len(ext)]
            break
    if not suffix:
        return "", ()
    m = _NUMBERED.fullmatch(suffix)
    if m:
        return "num", (-int(m.group(1)),)
    if _DATED.fullmatch(suffix) and sum(c.isdigit() for c in suffix) >= 6:
        return re.sub(r"\d", "9", suffix), tuple(int(d) for d in re.findall(r"\d+", suffix))
    return None


def content_mtime(path: str, st: os.stat_result) -> float:
    """When a file's content was last written: its mtime, unless it is a gzip file whose
    mtime was not kept when it was compressed (an older logrotate, a copy): then the
    original mtime gzip recorded in its header, when there is one."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return st.st_mtime
    if len(head) == 8 and head[:2] == b"\x1f\x8b":
        (stamp,) = struct.unpack("<I", head[4:8])
        if stamp and abs(st.st_mtime - stamp) >= 1.0:
            return float(stamp)
    return st.st_mtime


def ordered(files: list[Rotated]) -> list[Rotated]:
    """Oldest first.  Names of one scheme are put in the order they encode (logrotate's
    numbering or the date in the name: exact, whatever the mtimes say); names of mixed
    schemes (a changed logrotate config) by content_mtime."""
    if len({f.scheme for f in files}) <= 1:
        return sorted(files, key=lambda f: (f.rank, f.when, f.path))
    return sorted(files, key=lambda f: (f.when, f.scheme, f.rank, f.path))


def rotated_siblings(path: str) -> list[Rotated]:
    """The rotated copies of ``path`` with a first line, one per first line, oldest first.

    A file present both plain and compressed (``.1`` and ``.1.gz`` while logrotate
    compresses) is taken plain: the compressed copy may still be incomplete."""
    best: dict[str, tuple[tuple[bool, int], Rotated]] = {}
    for sib in siblings(path):
        name = rotation_name(path, sib)
        if name is None:
            continue
        try:
            st = os.stat(sib)
            if not stat.S_ISREG(st.st_mode):
                continue
            head = file_head_hash(sib)
            compressed = compression(sib) is not None
        except _READ_ERRORS:
            continue
        if not head:
            continue
        when = content_mtime(sib, st) if compressed else st.st_mtime
        rotated = Rotated(sib, head, name[0], name[1], when, compressed)
        preference = (not compressed, 0 if compressed else st.st_size)
        other = best.get(head)
        if other is None or preference > other[0]:
            best[head] = (preference, rotated)
    return ordered([r for _, r in best.values()])


@dataclass(frozen=True, slots=True)
class _Step:
    """One file of a catch-up: read ``path`` (first line ``head_hash``) from ``offset``."""

    path: str
    head_hash: str
    offset: int
    lines: int
    event: str  # the note logged when it is started
    finishing: bool  # a file read before (from its checkpoint), else read whole


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
    _finishing: Iterator[Piece] | None = None  # finished files still being read
    _check: bool = True  # look for rotated files not read yet before going on with the path
    _resumed: bool = False  # the catch-up at start has been planned
    _anchor: str = ""  # head of the file the path named last, read to its end here
    _finished: set[str] = field(default_factory=set)  # heads read to their end in this process

    def poll(self, max_bytes: int = READ_BUDGET) -> list[Piece]:
        """What is new since the last poll, at most about ``max_bytes`` of it (``more`` tells
        whether there is more to read right away: a backlog is caught up in bounded steps)."""
        self.more = False
        budget = [max_bytes]
        pieces: list[Piece] = []
        self.started = True
        while True:
            if self._finishing is None and self._check:
                self._check = False
                self._finishing = self._catch_up()
            if self._finishing is None:
                break
            pieces += self._pull(budget)
            if self._finishing is not None:
                self.more = True
                return pieces  # older lines first: the rest of them on the next poll
            self._check = True  # the path may have been rotated while those were read
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
            self._finished.add(cur.head_hash)
            self._anchor = cur.head_hash
            self._check = True  # rotated more than once since the last poll?
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
        self._anchor = cur.head_hash
        self._check = True

    def _catch_up(self) -> Iterator[Piece] | None:
        steps = self._plan()
        return self._read_steps(steps) if steps else None

    def _plan(self) -> list[_Step]:
        """The rotated files to read before the path, oldest first.

        At start: from the file the path's last checkpoint names (or, when that checkpoint
        is stale or gone after an interrupted catch-up, the newest sibling with a
        checkpoint), every sibling not done yet.  While running (after a rotation or a
        truncation): the siblings newer than the file just finished."""
        try:
            with open(self.path, "rb") as fh:
                current = head_hash_of(fh)
        except FileNotFoundError:
            current = ""  # missing (nocreate, or not re-created yet): the siblings still count
        except OSError:
            self._check = True  # unreadable for now (poll() reports it): look again later
            return []
        at_start, self._resumed = not self._resumed, True
        reading = self.current.head_hash if self.current is not None else ""
        if current and (
            current in (reading, *self._finished) or self.checkpoint(current) is not None
        ):
            return []  # the path names a known file: nothing was rotated past us
        files = [f for f in rotated_siblings(self.path) if f.head_hash != current]
        last = self.last_of_path(self.path) if at_start else None
        anchor = last.head_hash if last is not None else self._anchor
        heads = [f.head_hash for f in files]
        start = heads.index(anchor) if anchor in heads else None
        if start is None and at_start:
            known = [i for i, h in enumerate(heads) if self.checkpoint(h) is not None]
            start = known[-1] if known else None
        event = "source_rotated_while_stopped" if at_start else "source_rotated_unread"
        if start is not None:
            return self._steps(files[start:], event)
        if at_start and last is not None and not last.done and last.head_hash != current:
            return self._lost_checkpoint(last, files, event)
        return []

    def _steps(self, files: list[Rotated], event: str) -> list[_Step]:
        steps = []
        for f in files:
            if f.head_hash in self._finished:
                continue
            known = self.checkpoint(f.head_hash)
            if known is None:
                steps.append(_Step(f.path, f.head_hash, 0, 0, event, False))
            elif not known.done:
                steps.append(
                    _Step(f.path, f.head_hash, known.byte_offset, known.lines, event, True)
                )
        return steps

    def _lost_checkpoint(self, last: Position, files: list[Rotated], event: str) -> list[_Step]:
        """The file of the path's last checkpoint is not among the rotated names (none of
        them is known): finish it if it is under another name, and read the rotated files
        written after it (by content_mtime; the older ones were never to be read)."""
        since = last.mtime
        steps = []
        for sib in reversed(siblings(self.path)):
            if self._head_of(sib) != last.head_hash:
                continue
            steps.append(_Step(sib, last.head_hash, last.byte_offset, last.lines, event, True))
            with contextlib.suppress(OSError):
                since = content_mtime(sib, os.stat(sib))
            break
        else:
            self.notes.append(
                Note(
                    "source_predecessor_missing",
                    self.path,
                    f"the file last read ({last.head_hash[:12]}) is gone; lines after byte "
                    f"{last.byte_offset} of it cannot be read",
                )
            )
        if since > 0:
            steps += self._steps([f for f in files if f.when > since], event)
        return steps

    def _read_steps(self, steps: list[_Step]) -> Iterator[Piece]:
        for step in steps:
            path = self._locate(step)
            if path is None:
                self.notes.append(
                    Note(
                        "source_predecessor_missing",
                        self.path,
                        f"{step.path} ({step.head_hash[:12]}) is gone before it was read; "
                        f"lines after byte {step.offset} of it cannot be read",
                    )
                )
            else:
                what = (
                    f"finishing {path} from byte {step.offset}"
                    if step.finishing
                    else f"reading {path} (rotated before it was read)"
                )
                self.notes.append(Note(step.event, self.path, what))
                try:
                    yield from self._read_file(path, step.head_hash, step.offset, step.lines)
                except _READ_ERRORS as exc:
                    self.notes.append(
                        Note("source_error", self.path, f"cannot read {path} to its end: {exc}")
                    )
            self._finished.add(step.head_hash)  # (also when it failed: go on with the next)
            self._anchor = step.head_hash

    def _locate(self, step: _Step) -> str | None:
        """Where the step's file is now (it may have been renamed or compressed since the
        plan was made); a plain copy is preferred to a compressed one."""
        if self._head_of(step.path) == step.head_hash:
            return step.path
        found = [s for s in siblings(self.path) if self._head_of(s) == step.head_hash]
        found.sort(key=lambda s: s.endswith(COMPRESSED_SUFFIXES))
        return found[0] if found else None

    @staticmethod
    def _head_of(path: str) -> str:
        """First-line hash of a file, "" when it is missing, unreadable or has none yet."""
        try:
            return file_head_hash(path)
        except _READ_ERRORS:
            return ""

    def _read_file(self, path: str, head: str, offset: int, lines: int) -> Iterator[Piece]:
        """Read a finished (rotated, maybe compressed) file to its end, a chunk at a time.

        Only its last piece is marked ``done``: an interrupted read resumes from the last
        committed piece."""
        st = os.stat(path)
        yield from file_pieces(
            path,
            head,
            offset,
            lines,
            inode=st.st_ino,
            mtime=content_mtime(path, st),
            final=True,
            done_at_end=True,
            max_line_length=self.max_line_length,
            chunk_size=self.chunk_size,
        )
        self._finished.add(head)

    def _read(self, cur: _Open, final: bool, budget: list[int]) -> list[Piece]:
        """Complete lines appended to the open file since the last read (within budget)."""
        pieces: list[Piece] = []
        with contextlib.suppress(OSError):
            # yearless stamps are placed before the file's modification time: as it is now
            cur.mtime = os.fstat(cur.fh.fileno()).st_mtime
        cur.fh.seek(cur.offset)
        cutter = LineCutter(self.max_line_length, cur.skipping)
        while budget[0] > 0:
            try:
                data = cur.fh.read(self.chunk_size)
            except OSError as exc:
                self._error(f"cannot read: {exc.strerror}")
                break
            if not data:
                break
            cut = cutter.feed(data)
            cur.skipping = cutter.skipping
            if cut is not None:
                budget[0] -= len(cut.body)
                self._advance(cur, cut.body, cut.advance, cut.too_long, pieces)
        if budget[0] <= 0:
            return pieces  # the partial tail, if any, is read again next time
        cut = cutter.end(final)
        cur.skipping = cutter.skipping
        if cut is not None:
            self._advance(cur, cut.body, cut.advance, cut.too_long, pieces)
        return pieces

    def _advance(
        self, cur: _Open, body: bytes, advance: int, too_long: int, pieces: list[Piece]
    ) -> None:
        cur.offset += advance
        cur.lines += line_count(body, too_long)
        if body or too_long:
            pieces.append(
                Piece(
                    body,
                    Position(cur.head_hash, cur.path, cur.inode, cur.offset, cur.lines, cur.mtime),
                    too_long,
                )
            )
