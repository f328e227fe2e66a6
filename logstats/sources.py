"""Log files as streams of complete lines with byte positions.

A file is identified by the hash of its first complete line (plus its path and inode for
humans): a rotated (``mainlog`` -> ``mainlog.1``) or compressed (``.2.gz``) copy keeps its
identity, so reading it again continues where the last run stopped instead of counting it
twice.  Only complete lines are handed on; a partial last line waits for its newline,
except at the end of a compressed file, which is finished by definition.  A line longer
than the limit is skipped up to its newline and reported as ``too-long``.

Standard input (``-``) is read as a file is: identified by the hash of its first line, its
offsets count the bytes read from it (a last line without its newline waits, unless it is
compressed).  journalctl's own ``-- ... --`` lines (``-- Boot ID --``, ``-- No entries --``)
are left out of it, so that they neither count nor change its identity.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from logstats.errors import SourceError
from logstats.model import JournalCursor, Position

CHUNK = 1 << 20
HEAD = 256 * 1024  # bytes inspected for the identity, the MTA and the first timestamp
STDIN = "-"  # the path that names standard input
STDIN_NAME = "<stdin>"  # how standard input is named in reports and checkpoints
_MAGIC = ((b"\x1f\x8b", "gz"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"))
# journalctl's own lines: -- Boot ID --, -- No entries --, -- Journal begins at ... --
_JOURNAL_META = re.compile(rb"^-- [^\n]* --\r?(?:\n|\Z)", re.MULTILINE)


def compression(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}") from exc
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    return None


def open_binary(path: str) -> io.BufferedIOBase:
    kind = compression(path)
    try:
        if kind == "gz":
            return gzip.open(path, "rb")
        if kind == "bz2":
            return bz2.open(path, "rb")
        if kind == "xz":
            return lzma.open(path, "rb")
        return open(path, "rb")
    except OSError as exc:
        raise SourceError(f"cannot open {path}: {exc.strerror}") from exc


@dataclass(frozen=True, slots=True)
class FileInfo:
    path: str
    head_hash: str  # "" while the first line is incomplete
    first_lines: list[str]
    inode: int
    mtime: float  # of the uncompressed content when the container records it
    compressed: bool
    stream: bool = False  # standard input: read once, from its start


def inspect(path: str, sample: int = 50) -> FileInfo:
    """Identity and the first lines of a file (for MTA detection and ordering)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}") from exc
    if stat.S_ISDIR(st.st_mode):
        raise SourceError(f"{path}: is a directory, not a log file")
    kind = compression(path)
    mtime = st.st_mtime
    with open_binary(path) as f:
        try:
            head = f.read(HEAD)
        except (OSError, EOFError, lzma.LZMAError) as exc:
            raise SourceError(f"cannot read {path}: {exc}") from exc
        if kind == "gz" and isinstance(f, gzip.GzipFile) and f.mtime:
            mtime = float(f.mtime)
    head_hash, text = _identity(head, kind is not None, sample)
    return FileInfo(path, head_hash, text, st.st_ino, mtime, kind is not None)


def fingerprint(head: bytes, final: bool) -> str:
    """A file's identity: the hash of its first complete line in ``head`` (its first
    ``HEAD`` bytes), "" while there is none.  A ``final`` content (compressed: finished)
    without a newline is identified by all of ``head``.  Backfill, the daemon and the
    rotation catch-up all identify files by this one function."""
    nl = head.find(b"\n")
    if nl >= 0:
        return hashlib.sha1(head[: nl + 1]).hexdigest()
    return hashlib.sha1(head).hexdigest() if final and head else ""


def identity(path: str) -> str:
    """The fingerprint of the file ``path`` names (decompressed when it is compressed)."""
    with open_binary(path) as f:
        head = f.read(HEAD)
    return fingerprint(head, compression(path) is not None)


def _identity(head: bytes, final: bool, sample: int) -> tuple[str, list[str]]:
    """The fingerprint and the first lines, decoded."""
    return fingerprint(head, final), head.decode("utf-8", "replace").split("\n")[:sample]


class _Prepended(io.RawIOBase):
    """``head`` followed by the rest of ``rest``: bytes already taken off a stream, put back."""

    def __init__(self, head: bytes, rest: Any) -> None:
        super().__init__()
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        if self._head:
            n = min(len(out), len(self._head))
            out[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(out))
        out[: len(data)] = data
        return len(data)


class _WithoutJournalMeta(io.RawIOBase):
    """A stream without journalctl's ``-- ... --`` lines (only whole lines are judged)."""

    def __init__(self, raw: Any) -> None:
        super().__init__()
        self._raw = raw
        self._out = b""
        self._tail = b""  # the start of a line not yet judged
        self._midline = False  # inside a very long line passed on unjudged
        self._eof = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        while not self._out and not self._eof:
            data = self._raw.read(CHUNK)
            if not data:
                self._eof = True
                self._out, self._tail = self._keep(self._tail), b""
                break
            buf, self._tail = self._tail + data, b""
            if self._midline:
                cut = buf.find(b"\n")
                if cut < 0:
                    self._out = buf
                    continue
                self._out, buf, self._midline = buf[: cut + 1], buf[cut + 1 :], False
            last = buf.rfind(b"\n")
            if last < 0 and len(buf) < HEAD:
                self._tail = buf
            elif last < 0:  # a very long line: pass it on, it is not one of journalctl's
                self._out += buf
                self._midline = True
            else:
                self._out += self._keep(buf[: last + 1])
                self._tail = buf[last + 1 :]
        n = min(len(out), len(self._out))
        out[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    @staticmethod
    def _keep(block: bytes) -> bytes:
        return _JOURNAL_META.sub(b"", block) if b"-- " in block else block


@dataclass(slots=True)
class Stream:
    """Standard input opened for one read: what it is (``info``) and its content from the
    start (``content``)."""

    info: FileInfo
    content: io.BufferedIOBase


def open_stream(raw: Any, name: str, reference: float, sample: int = 50) -> Stream:
    """Open a stream (standard input): detect compression, leave out journalctl's own lines,
    read its head for the identity and the MTA.

    ``reference`` is the time yearless stamps are placed before, as a file's mtime is (see
    ``stdin_reference``); a gzip header's own mtime wins."""
    mtime = reference
    try:
        magic = raw.read(6)
        body: Any = io.BufferedReader(_Prepended(magic, raw), CHUNK)
        kind = next((k for m, k in _MAGIC if magic.startswith(m)), None)
        gz = None
        if kind == "gz":
            body = gz = gzip.GzipFile(fileobj=body, mode="rb")
        elif kind == "bz2":
            body = bz2.BZ2File(body, "rb")
        elif kind == "xz":
            body = lzma.LZMAFile(body, "rb")  # noqa: SIM115 - read through ``Stream``
        body = io.BufferedReader(_WithoutJournalMeta(body), CHUNK)
        head = body.read(HEAD)
        if gz is not None and gz.mtime:
            mtime = float(gz.mtime)
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise SourceError(f"cannot read {name}: {exc}") from exc
    head_hash, text = _identity(head, kind is not None, sample)
    info = FileInfo(name, head_hash, text, 0, mtime, kind is not None, stream=True)
    return Stream(info, io.BufferedReader(_Prepended(head, body), CHUNK))


def stdin_reference(raw: Any, now: float) -> float:
    """The reference time for yearless stamps on standard input: the mtime of the file it is
    redirected from (``< mainlog``), else ``now`` (a pipe: ``journalctl ... |``)."""
    try:
        st = os.fstat(raw.fileno())
    except (OSError, ValueError, AttributeError):
        return now
    return st.st_mtime if stat.S_ISREG(st.st_mode) else now


@dataclass(frozen=True, slots=True)
class RawChunk:
    body: bytes  # complete lines, each ending in a newline (or the final unterminated one)
    end_offset: int  # byte offset just past the body
    too_long: int  # lines skipped because they exceeded the limit


@dataclass(frozen=True, slots=True)
class Chunk:
    lines: list[str]
    end_offset: int  # byte offset just past the last line of this chunk
    too_long: int  # lines skipped for their length


def split_lines(body: bytes, max_line_length: int) -> tuple[list[str], int]:
    """Decode (bad bytes become U+FFFD) and split; over-long lines are dropped and counted.

    A line ending in CRLF is the same line as one ending in LF."""
    text = body.decode("utf-8", "replace")
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if any(len(x) > max_line_length for x in lines):
        kept = [x for x in lines if len(x) <= max_line_length]
        return kept, len(lines) - len(kept)
    return lines, 0


def read_chunks(
    path: str,
    offset: int,
    *,
    final: bool,
    max_line_length: int,
    chunk_size: int = CHUNK,
    stream: io.BufferedIOBase | None = None,
) -> Iterator[RawChunk]:
    """Complete lines from ``offset`` (uncompressed bytes), as raw chunks.

    A line longer than ``max_line_length`` that spans chunks is skipped up to its newline
    and counted once in ``too_long``.  With ``stream`` (standard input, from its start),
    that is read instead of the file ``path`` names.
    """
    if stream is not None:
        yield from _chunks_of(stream, path, offset, final, max_line_length, chunk_size)
        return
    with open_binary(path) as f:
        yield from _chunks_of(f, path, offset, final, max_line_length, chunk_size)


@dataclass(frozen=True, slots=True)
class Cut:
    """What ``LineCutter`` made of the bytes it was given."""

    body: bytes  # complete lines
    advance: int  # bytes consumed: the body and any over-long line skipped
    too_long: int  # over-long lines skipped (counted once each, when the skip starts)


class LineCutter:
    """Cuts bytes read one after another into runs of complete lines: the one place where
    over-long lines are skipped (backfill, the daemon and rotated files all read through it).

    A line longer than ``max_line_length`` that spans reads (no newline within the limit)
    is skipped up to its newline and counted once; a complete over-long line inside a body
    is left to ``split_lines``, which drops and counts it.  Bytes after the last newline
    wait for the next ``feed``; ``end`` says what becomes of them."""

    __slots__ = ("max_line_length", "skipping", "tail")

    def __init__(self, max_line_length: int, skipping: bool = False) -> None:
        self.max_line_length = max_line_length
        self.skipping = skipping  # inside an over-long line: skip up to its newline
        self.tail = b""

    def feed(self, data: bytes) -> Cut | None:
        buf = self.tail + data if self.tail else data
        self.tail = b""
        advance = 0
        if self.skipping:
            nl = buf.find(b"\n")
            if nl < 0:
                return Cut(b"", len(buf), 0)
            advance = nl + 1
            buf = buf[nl + 1 :]
            self.skipping = False
        last = buf.rfind(b"\n")
        if last < 0:
            if len(buf) > self.max_line_length:
                self.skipping = True
                return Cut(b"", advance + len(buf), 1)
            self.tail = buf
            return Cut(b"", advance, 0) if advance else None
        body, self.tail = buf[: last + 1], buf[last + 1 :]
        return Cut(body, advance + len(body), 0)

    def end(self, final: bool) -> Cut | None:
        """No more bytes for now.  A ``final`` content's unterminated last line is a line;
        otherwise it waits (is read again later), unless it is over-long already."""
        tail, self.tail = self.tail, b""
        if not tail:
            return None
        if final:
            return Cut(tail, len(tail), 0)
        if len(tail) > self.max_line_length:
            self.skipping = True
            return Cut(b"", len(tail), 1)
        return None


def line_count(body: bytes, too_long: int = 0) -> int:
    """The lines a piece of complete lines holds (its last may lack the newline), with
    the over-long lines skipped before it."""
    n = body.count(b"\n")
    return n + (1 if body and not body.endswith(b"\n") else 0) + too_long


def _chunks_of(
    f: io.BufferedIOBase, path: str, offset: int, final: bool, max_line_length: int, size: int
) -> Iterator[RawChunk]:
    skipping = False
    if offset:
        # a checkpoint inside a line can only come from skipping an over-long one:
        # go on skipping it, without counting it again
        try:
            _skip(f, offset - 1, path)
            skipping = f.read(1) != b"\n"
        except (OSError, EOFError, lzma.LZMAError) as exc:
            raise SourceError(f"cannot read {path}: {exc}") from exc
    cutter = LineCutter(max_line_length, skipping)
    pos = offset
    while True:
        try:
            data = f.read(size)
        except (OSError, EOFError, lzma.LZMAError) as exc:
            raise SourceError(f"cannot read {path}: {exc}") from exc
        if not data:
            break
        cut = cutter.feed(data)
        if cut is not None:
            pos += cut.advance
            yield RawChunk(cut.body, pos, cut.too_long)
    cut = cutter.end(final)
    if cut is not None:
        pos += cut.advance
        yield RawChunk(cut.body, pos, cut.too_long)


@dataclass(slots=True)
class Piece:
    """Complete lines read from one file, and where that file stands after them."""

    body: bytes
    position: Position
    too_long: int = 0  # over-long lines skipped just before ``body``
    # a journal source's piece: its checkpoint (instead of ``position``), the entries
    # without a MESSAGE left out of ``body``, and the gap met before it (a sample text)
    cursor: JournalCursor | None = None
    no_message: int = 0
    gap: str | None = None


def file_pieces(
    path: str,
    head_hash: str,
    offset: int,
    lines: int,
    *,
    inode: int,
    mtime: float,
    final: bool,
    done_at_end: bool,
    max_line_length: int,
    chunk_size: int = CHUNK,
    stream: io.BufferedIOBase | None = None,
) -> Iterator[Piece]:
    """A file (or ``stream``) from ``offset`` to its end, as pieces.

    There is always a last piece (maybe empty); it is marked ``done`` when ``done_at_end``
    (a rotated or compressed file: nothing will be added to it), so an interrupted read
    resumes from the last piece committed."""
    last: Piece | None = None
    for raw in read_chunks(
        path,
        offset,
        final=final,
        max_line_length=max_line_length,
        chunk_size=chunk_size,
        stream=stream,
    ):
        lines += line_count(raw.body, raw.too_long)
        if last is not None:
            yield last
        last = Piece(raw.body, Position(head_hash, path, inode, raw.end_offset, lines, mtime),
                     raw.too_long)  # fmt: skip
    if last is None:
        last = Piece(b"", Position(head_hash, path, inode, offset, lines, mtime))
    if done_at_end:
        last = Piece(last.body, replace(last.position, done=True), last.too_long)
    yield last


def read_lines(
    path: str, offset: int, *, final: bool, max_line_length: int, chunk_size: int = CHUNK
) -> Iterator[Chunk]:
    """Complete, decoded lines from ``offset``, a chunk at a time."""
    for raw in read_chunks(
        path, offset, final=final, max_line_length=max_line_length, chunk_size=chunk_size
    ):
        lines, too_long = split_lines(raw.body, max_line_length)
        yield Chunk(lines, raw.end_offset, raw.too_long + too_long)


class ShorterThanCheckpoint(SourceError):
    """A file or stream ends before the offset its checkpoint says was read."""


def _skip(f: io.BufferedIOBase, offset: int, path: str) -> None:
    if not getattr(f, "seekable", lambda: False)() or isinstance(
        f, gzip.GzipFile | bz2.BZ2File | lzma.LZMAFile
    ):
        remaining = offset
        while remaining:
            got = f.read(min(remaining, CHUNK))
            if not got:
                raise ShorterThanCheckpoint(
                    f"{path} is shorter than its checkpoint ({offset} bytes)"
                )
            remaining -= len(got)
        return
    size = os.fstat(f.fileno()).st_size
    if size < offset:
        raise ShorterThanCheckpoint(f"{path} is shorter than its checkpoint ({offset} bytes)")
    f.seek(offset)


def file_size(path: str) -> int:
    return Path(path).stat().st_size
