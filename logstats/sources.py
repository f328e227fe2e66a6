"""Log files as streams of complete lines with byte positions.

A file is identified by the hash of its first complete line (plus its path and inode for
humans): a rotated (``mainlog`` -> ``mainlog.1``) or compressed (``.2.gz``) copy keeps its
identity, so reading it again continues where the last run stopped instead of counting it
twice.  Only complete lines are handed on; a partial last line waits for its newline,
except at the end of a compressed file, which is finished by definition.  A line longer
than the limit is skipped up to its newline and reported as ``too-long``.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from logstats.errors import SourceError

CHUNK = 1 << 20
_MAGIC = ((b"\x1f\x8b", "gz"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"))


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


def inspect(path: str, sample: int = 50) -> FileInfo:
    """Identity and the first lines of a file (for MTA detection and ordering)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}") from exc
    kind = compression(path)
    mtime = st.st_mtime
    with open_binary(path) as f:
        try:
            head = f.read(256 * 1024)
        except (OSError, EOFError, lzma.LZMAError) as exc:
            raise SourceError(f"cannot read {path}: {exc}") from exc
        if kind == "gz" and isinstance(f, gzip.GzipFile) and f.mtime:
            mtime = float(f.mtime)
    nl = head.find(b"\n")
    head_hash = hashlib.sha1(head[: nl + 1]).hexdigest() if nl >= 0 else ""
    if nl < 0 and kind is not None and head:
        head_hash = hashlib.sha1(head).hexdigest()
    text = head.decode("utf-8", "replace").split("\n")[:sample]
    return FileInfo(path, head_hash, text, st.st_ino, mtime, kind is not None)


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
    path: str, offset: int, *, final: bool, max_line_length: int, chunk_size: int = CHUNK
) -> Iterator[RawChunk]:
    """Complete lines from ``offset`` (uncompressed bytes), as raw chunks.

    A line longer than ``max_line_length`` that spans chunks is skipped up to its newline
    and counted once in ``too_long``.
    """
    with open_binary(path) as f:
        skipping = False
        if offset:
            # a checkpoint inside a line can only come from skipping an over-long one:
            # go on skipping it, without counting it again
            _skip(f, offset - 1, path)
            skipping = f.read(1) != b"\n"
        pos = offset
        tail = b""
        while True:
            try:
                data = f.read(chunk_size)
            except (OSError, EOFError, lzma.LZMAError) as exc:
                raise SourceError(f"cannot read {path}: {exc}") from exc
            if not data:
                break
            buf = tail + data
            last = buf.rfind(b"\n")
            if last < 0:
                if skipping or len(buf) > max_line_length:
                    pos += len(buf)
                    tail = b""
                    yield RawChunk(b"", pos, 0 if skipping else 1)
                    skipping = True
                else:
                    tail = buf
                continue
            body, tail = buf[: last + 1], buf[last + 1 :]
            if skipping:
                cut = body.find(b"\n")
                pos += cut + 1
                body = body[cut + 1 :]
                skipping = False
            pos += len(body)
            yield RawChunk(body, pos, 0)
        if final and tail and not skipping:
            pos += len(tail)
            yield RawChunk(tail, pos, 0)


def read_lines(
    path: str, offset: int, *, final: bool, max_line_length: int, chunk_size: int = CHUNK
) -> Iterator[Chunk]:
    """Complete, decoded lines from ``offset``, a chunk at a time."""
    for raw in read_chunks(
        path, offset, final=final, max_line_length=max_line_length, chunk_size=chunk_size
    ):
        lines, too_long = split_lines(raw.body, max_line_length)
        yield Chunk(lines, raw.end_offset, raw.too_long + too_long)


def _skip(f: io.BufferedIOBase, offset: int, path: str) -> None:
    if not getattr(f, "seekable", lambda: False)() or isinstance(
        f, gzip.GzipFile | bz2.BZ2File | lzma.LZMAFile
    ):
        remaining = offset
        while remaining:
            got = f.read(min(remaining, CHUNK))
            if not got:
                raise SourceError(f"{path} is shorter than its checkpoint ({offset} bytes)")
            remaining -= len(got)
        return
    size = os.fstat(f.fileno()).st_size
    if size < offset:
        raise SourceError(f"{path} is shorter than its checkpoint ({offset} bytes)")
    f.seek(offset)


def file_size(path: str) -> int:
    return Path(path).stat().st_size
