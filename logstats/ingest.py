"""``logstats backfill``: files -> ``Pipeline`` -> store.

``Ingestor`` plans the files (paths and globs expanded, each file's MTA detected, each
MTA's files oldest first) and reads each one through the ``Pipeline`` that the daemon
uses too, committing every ``ingest.batch_lines`` lines and at the end of each file, so an
interruption anywhere leaves a store the next run continues from.
"""

from __future__ import annotations

import glob
import os
import re
import stat
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb

from logstats.config import Config
from logstats.correlate import Correlator
from logstats.errors import SourceError, StoreError, cause_of
from logstats.grammar import Clock, detect_mta
from logstats.journal import JournalReader
from logstats.pipeline import Parsed, Pipeline
from logstats.sources import (
    CHUNK,
    STDIN,
    STDIN_NAME,
    FileInfo,
    ShorterThanCheckpoint,
    Stream,
    file_pieces,
    file_size,
    inspect,
    open_stream,
    stdin_reference,
)
from logstats.store import Store

_ISO = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[-+]\d\d:?\d\d)?")
_BSD = re.compile(r"^[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d")

Progress = Callable[[str, int, int], None]  # path, lines so far, bytes so far
OnProblem = Callable[[SourceError], None]  # told of a path that cannot be read (and left out)


@dataclass(slots=True)
class FileReport:
    path: str
    mta: str | None
    lines: int = 0
    records: int = 0
    ignored: int = 0
    unparsed: Counter[str] = field(default_factory=Counter)
    events: int = 0
    skipped: str | None = None  # why nothing was read
    anomalies: Counter[str] = field(default_factory=Counter)
    isolated: int = 0  # rows the store could not take (kept in its quarantine table)
    isolated_reason: str | None = None


def expand(patterns: Iterable[str], on_problem: OnProblem | None = None) -> list[str]:
    """Paths and globs -> existing files; ``-`` (standard input) is passed on, once.

    A pattern matching nothing or a path that is not a readable regular file is an error:
    raised, or, with ``on_problem``, handed to it and left out while the rest is expanded."""

    def problem(error: SourceError) -> None:
        if on_problem is None:
            raise error
        on_problem(error)

    out: list[str] = []
    for pattern in patterns:
        if pattern == STDIN:
            if STDIN in out:
                problem(SourceError("-: standard input is given more than once"))
            else:
                out.append(pattern)
            continue
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            problem(SourceError(f"{pattern}: no file matches"))
        for m in matches:
            why = unusable(m)
            if why is not None:
                problem(SourceError(f"{m}: {why}"))
            else:
                out.append(m)
    return out


def unusable(path: str) -> str | None:
    """Why ``path`` cannot be read as a log file, or None."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            return f"is a broken symbolic link (to {os.readlink(path)})"
        return "no such file"
    except OSError as exc:
        return f"cannot read: {exc.strerror}"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory, not a log file"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file (give a pipe's output as standard input: -)"
    return None


def first_timestamp(info: FileInfo, clock: Clock) -> datetime | None:
    for line in info.first_lines:
        m = _ISO.search(line[:80])
        if m:
            ts = clock.iso(m.group(0).replace(" ", "T", 1) if "T" not in m.group(0) else m.group(0))
            if ts is not None:
                return ts
        m = _BSD.match(line)
        if m:
            ts = clock.bsd(m.group(0))
            if ts is not None:
                return ts
    return None


class Ingestor:
    """``logstats backfill``: plans the files and reads each through the ``Pipeline``,
    committing a batch every ``ingest.batch_lines`` lines and at the end of each file."""

    def __init__(
        self,
        store: Store,
        config: Config,
        now: Callable[[], datetime],
        chunk_size: int = CHUNK,
        stdin: Any = None,
    ) -> None:
        self.store = store
        self.stdin = stdin  # what ``-`` reads (binary); None: the process's standard input
        self._streams: dict[str, Stream] = {}  # standard input, inspected, waiting to be read
        self.chunk_size = chunk_size  # bytes read at a time; a batch ends on a chunk boundary
        self.config = config
        self.now = now
        self.tz = config.tz()
        self.pipeline = Pipeline(store, config, now)
        self.interrupted = False  # set (from a signal handler) to stop after this batch

    @property
    def correlators(self) -> dict[str, Correlator]:
        return self.pipeline.correlators

    @property
    def workers_lost(self) -> int:
        return self.pipeline.workers_lost

    @property
    def earliest_hour(self) -> int | None:
        return self.pipeline.earliest_hour

    def plan(
        self, paths: Iterable[str], mta: str | None = None, on_problem: OnProblem | None = None
    ) -> list[tuple[FileInfo, str]]:
        """Inspect files, detect their MTA and order each MTA's files oldest first.

        A path that cannot be read, or whose MTA cannot be told, raises ``SourceError``; with
        ``on_problem`` it is handed to that and left out of the plan instead."""
        planned: list[tuple[datetime, str, FileInfo, str]] = []
        for path in expand(paths, on_problem):
            try:
                info = self._inspect(path)
                kind = mta or detect_mta(info.first_lines)
                if kind is None and not info.head_hash:
                    kind = ""  # empty, or no complete line yet: ingest() skips it
                if kind is None:
                    raise SourceError(
                        f"{info.path}: cannot tell whether it is an Exim or Postfix log (use --mta)"
                    )
            except SourceError as exc:
                if on_problem is None:
                    raise
                on_problem(exc)
                continue
            clock = Clock(self.tz, datetime.fromtimestamp(info.mtime, UTC))
            first = first_timestamp(info, clock) or datetime.fromtimestamp(info.mtime, UTC)
            planned.append((first, kind, info, path))
        planned.sort(key=lambda p: (p[1], p[0], p[3]))
        return [(info, kind) for _, kind, info, _ in planned]

    def _inspect(self, path: str) -> FileInfo:
        if path != STDIN:
            return inspect(path)
        raw = self.stdin if self.stdin is not None else sys.stdin.buffer
        reference = stdin_reference(raw, self.now().timestamp())
        stream = open_stream(raw, STDIN_NAME, reference)
        self._streams[STDIN_NAME] = stream
        return stream.info

    def ingest(self, info: FileInfo, mta: str, progress: Progress | None = None) -> FileReport:
        report = FileReport(info.path, mta)
        if not info.head_hash:
            report.skipped = "no complete line yet"
            return report
        known = self.store.positions().get(info.head_hash)
        if known is not None and known.done:
            report.skipped = f"already read as {known.path}"
            return report
        offset = known.byte_offset if known else 0
        if known is not None and not info.compressed and not info.stream:
            size = _size(info.path)
            if size < offset:
                report.skipped = (
                    f"shorter ({size} bytes) than when it was read as {known.path} "
                    f"({offset} bytes): a partial copy? nothing read"
                )
                return report
        stream = self._streams.pop(info.path, None) if info.stream else None
        if info.stream and stream is None:
            raise SourceError(f"{info.path}: standard input can be read only once")
        pieces = file_pieces(
            info.path,
            info.head_hash,
            offset,
            known.lines if known else 0,
            inode=info.inode,
            mtime=info.mtime,
            final=info.compressed,
            done_at_end=info.compressed,  # a plain file may still grow: never done
            max_line_length=self.config.max_line_length,
            chunk_size=self.chunk_size,
            stream=stream.content if stream is not None else None,
        )
        pipeline = self.pipeline
        try:
            for parsed in pipeline.take(mta, pieces, self._size_hint(info, offset, stream)):
                self._took(report, parsed)
                if progress is not None:
                    progress(info.path, report.lines, parsed.piece.position.byte_offset)
                if self.interrupted:
                    report.skipped = "interrupted"
                    break
        except SourceError as exc:
            if isinstance(exc, ShorterThanCheckpoint) and info.stream and not report.lines:
                assert known is not None
                report.skipped = (
                    f"nothing new: it ends before byte {offset}, where it was read up to "
                    f"as {known.path}"
                )
                return report
            # what was read before the failure is consistent with the offset reached: keep it
            self._commit(report)
            raise
        self._commit(report)
        if known is not None and not report.lines and report.skipped is None:
            report.skipped = f"already read (as {known.path}, up to byte {offset}): nothing new"
        return report

    def _took(self, report: FileReport, parsed: Parsed) -> None:
        """Count one parsed piece into its source's report; commit when a batch is due."""
        chunk = parsed.chunk
        report.records += len(chunk.records)
        report.ignored += chunk.ignored
        report.lines += parsed.lines
        if self.pipeline.due:
            self._commit(report)

    def ingest_journal(self, reader: JournalReader) -> FileReport:
        """Read a journal source from its committed cursor to the journal's end (what it
        holds now), through the same pipeline, committing as a file is committed."""
        report = FileReport(reader.path, reader.mta)
        pipeline = self.pipeline
        while True:
            pieces = reader.poll()
            for parsed in pipeline.take(reader.mta, pieces):
                self._took(report, parsed)
                if self.interrupted:
                    break
            if self.interrupted:
                report.skipped = "interrupted"
                break
            if not reader.more:
                break
        self._commit(report)
        if not report.lines and report.skipped is None:
            report.skipped = "nothing new in the journal"
        return report

    def _size_hint(self, info: FileInfo, offset: int, stream: Stream | None) -> int:
        """About how many bytes are left to read (workers pay off on large files only; a
        stream has no size: the pipeline goes by what it has read)."""
        return 0 if stream is not None else _size(info.path) - offset

    def _commit(self, report: FileReport) -> None:
        drain = self.pipeline.drain()
        try:
            isolated = self.pipeline.commit([drain])
        except duckdb.Error as exc:
            raise StoreError(
                f"database {self.store.path}: cannot write: {cause_of(exc)} (nothing of the "
                "batch in hand was stored; the same command continues from the last commit)"
            ) from exc
        for batch in drain.batches:
            report.events += len(batch.events)
            report.unparsed.update(batch.unparsed)
            report.anomalies.update(batch.anomalies)
        if isolated:
            report.isolated += len(isolated)
            report.isolated_reason = report.isolated_reason or isolated[0].reason

    def close(self) -> None:
        self.pipeline.close()


def _size(path: str) -> int:
    try:
        return file_size(path)
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}") from exc
