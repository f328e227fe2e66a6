"""Wiring of the one-shot pipeline: files -> grammar -> correlator -> store.

``Ingestor`` owns the correlators (one per MTA, restored from the store) and writes one
transaction per batch with the counters, the in-flight messages and the file checkpoint,
so an interruption anywhere leaves a store the next run continues from.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import multiprocessing
import os
import re
import signal
import stat
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

from logstats.config import Config
from logstats.correlate import Correlator, Drained
from logstats.errors import SourceError, StoreError, cause_of
from logstats.grammar import ChunkParse, Clock, detect_mta, make_parser, parse_chunk, parse_lines
from logstats.model import Position
from logstats.sources import (
    CHUNK,
    STDIN,
    STDIN_NAME,
    FileInfo,
    RawChunk,
    ShorterThanCheckpoint,
    Stream,
    file_size,
    inspect,
    open_stream,
    read_chunks,
    split_lines,
    stdin_reference,
)
from logstats.store import Batch, Store

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
        self.workers_lost = 0  # times a parser worker died (its chunks were parsed here)
        self.chunk_size = chunk_size  # bytes read at a time; a batch ends on a chunk boundary
        self.config = config
        self.now = now
        self.policy = config.policy()
        self.tz = config.tz()
        self.correlators: dict[str, Correlator] = {}
        self._executor: ProcessPoolExecutor | None = None
        self.interrupted = False  # set (from a signal handler) to stop after this batch
        self.earliest_hour: int | None = None  # earliest counter bucket written (epoch hours)

    def correlator(self, mta: str) -> Correlator:
        c = self.correlators.get(mta)
        if c is None:
            c = self.correlators[mta] = Correlator(mta, self.policy, self.store.pending(mta))
        return c

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
        lines_done = known.lines if known else 0
        if known is not None and not info.compressed and not info.stream:
            size = _size(info.path)
            if size < offset:
                report.skipped = (
                    f"shorter ({size} bytes) than when it was read as {known.path} "
                    f"({offset} bytes): a partial copy? nothing read"
                )
                return report
        clock = Clock(self.tz, datetime.fromtimestamp(info.mtime, UTC))
        if known is not None:
            clock.restore(known.year, known.month)
        correlator = self.correlator(mta)
        correlator.events_since = self.now() - timedelta(days=self.config.retention_days)
        feed = correlator.feed
        batch_lines = self.config.batch_lines
        pending_lines = 0
        unparsed: Counter[str] = Counter()
        samples: dict[str, str] = {}
        try:
            for parsed, end_offset in self._parsed(info, mta, offset, clock):
                for record in parsed.records:
                    feed(record)
                report.records += len(parsed.records)
                report.ignored += parsed.ignored
                unparsed.update(parsed.unparsed)
                for reason, text in parsed.samples.items():
                    samples.setdefault(reason, text)
                report.lines += parsed.lines
                pending_lines += parsed.lines
                lines_done += parsed.lines
                offset = end_offset
                if pending_lines >= batch_lines:
                    self._commit(
                        mta=mta,
                        info=info,
                        offset=offset,
                        lines=lines_done,
                        clock=clock,
                        done=False,
                        unparsed=unparsed,
                        samples=samples,
                        report=report,
                    )
                    pending_lines = 0
                    unparsed, samples = Counter(), {}
                if progress is not None:
                    progress(info.path, report.lines, offset)
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
            self._commit(
                mta=mta,
                info=info,
                offset=offset,
                lines=lines_done,
                clock=clock,
                done=False,
                unparsed=unparsed,
                samples=samples,
                report=report,
            )
            raise
        self._commit(
            mta=mta,
            info=info,
            offset=offset,
            lines=lines_done,
            clock=clock,
            done=info.compressed,
            unparsed=unparsed,
            samples=samples,
            report=report,
        )
        return report

    def _parsed(
        self, info: FileInfo, mta: str, offset: int, clock: Clock
    ) -> Iterator[tuple[ChunkParse, int]]:
        """Parsed chunks in file order: in this process for small files, else in workers.

        A worker that dies (killed, out of memory) costs no chunk: what it had is parsed
        here, the rest of the file too, and the next file gets a new pool."""
        max_len = self.config.max_line_length
        stream = self._streams.pop(info.path, None) if info.stream else None
        if info.stream and stream is None:
            raise SourceError(f"{info.path}: standard input can be read only once")
        chunks: Iterator[RawChunk] = read_chunks(
            info.path,
            offset,
            final=info.compressed,
            max_line_length=max_len,
            chunk_size=self.chunk_size,
            stream=stream.content if stream is not None else None,
        )
        workers = self.config.workers
        if workers == 0:
            workers = os.cpu_count() or 1
        if stream is not None:  # no size to go by: read ahead to see whether it is large
            ahead: list[RawChunk] = []
            size = 0
            if workers >= 2:
                for raw in chunks:
                    ahead.append(raw)
                    size += len(raw.body)
                    if size >= self.config.parallel_bytes:
                        break
            chunks = itertools.chain(ahead, chunks)
        else:
            size = _size(info.path) - offset
        if workers < 2 or size < self.config.parallel_bytes:
            parser = make_parser(mta, clock, max_len)
            for raw in chunks:
                lines, too_long = split_lines(raw.body, max_len)
                parsed = parse_lines(parser, lines)
                if too_long or raw.too_long:
                    parsed.unparsed["too-long"] += too_long + raw.too_long
                    parsed.lines += too_long + raw.too_long
                yield parsed, raw.end_offset
            return
        pool: ProcessPoolExecutor | None = self._pool(workers)
        inflight: deque[tuple[Future[ChunkParse] | None, RawChunk]] = deque()
        for raw in chunks:
            future = None
            if pool is not None:
                try:
                    future = pool.submit(parse_chunk, mta, self.tz, info.mtime, max_len, raw.body)
                except BrokenProcessPool:
                    self._lose_pool()
                    pool = None
            inflight.append((future, raw))
            if len(inflight) > 2 * workers:
                yield self._result(mta, info, inflight.popleft())
        while inflight:
            yield self._result(mta, info, inflight.popleft())

    def _result(
        self, mta: str, info: FileInfo, item: tuple[Future[ChunkParse] | None, RawChunk]
    ) -> tuple[ChunkParse, int]:
        future, raw = item
        parsed = None
        if future is not None:
            try:
                parsed = future.result()
            except BrokenProcessPool:
                self._lose_pool()
        if parsed is None:  # its worker died: the same parse, here
            parsed = parse_chunk(mta, self.tz, info.mtime, self.config.max_line_length, raw.body)
        if raw.too_long:
            parsed.unparsed["too-long"] += raw.too_long
            parsed.lines += raw.too_long
        return parsed, raw.end_offset

    def _pool(self, workers: int) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = worker_pool(workers)
        return self._executor

    def _lose_pool(self) -> None:
        """A worker died: the pool is broken. Reap it; the next file gets a new one."""
        if self._executor is not None:
            self.workers_lost += 1
            discard_pool(self._executor)
            self._executor = None

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)
            self._executor = None

    def _commit(
        self,
        *,
        mta: str,
        info: FileInfo,
        offset: int,
        lines: int,
        clock: Clock,
        done: bool,
        unparsed: Counter[str],
        samples: dict[str, str],
        report: FileReport,
    ) -> None:
        correlator = self.correlator(mta)
        if correlator.last_ts is not None:
            correlator.expire(correlator.last_ts)
        d = correlator.drain()
        self.earliest_hour = earliest_hour(d, self.earliest_hour)
        year, month = clock.state()
        position = Position(
            info.head_hash, info.path, info.inode, offset, lines, info.mtime, done, year, month
        )
        batch = batch_of(mta, d, [position], dict(unparsed), samples)
        try:
            isolated = self.store.commit(batch)
        except duckdb.Error as exc:
            raise StoreError(
                f"database {self.store.path}: cannot write: {cause_of(exc)} (nothing of the "
                "batch in hand was stored; the same command continues from the last commit)"
            ) from exc
        report.events += len(d.events)
        report.unparsed.update(unparsed)
        report.anomalies.update(d.anomalies)
        if isolated:
            report.isolated += len(isolated)
            report.isolated_reason = report.isolated_reason or isolated[0].reason


def ignore_sigint() -> None:
    """Parser workers leave Ctrl-C to the main process, which stops after its batch."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def worker_init(parent: int) -> None:
    """A parser worker: leaves Ctrl-C to the main process and dies with it (on Linux, even
    when it is killed with SIGKILL), so that no worker outlives the command."""
    ignore_sigint()
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before that took effect
        os._exit(1)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """Parser processes (spawned: the main process has threads and a DuckDB connection)."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=worker_init,
        initargs=(os.getpid(),),
    )


def discard_pool(pool: ProcessPoolExecutor) -> None:
    """Drop a broken pool (a worker died) without waiting on it: its queue feeder may be
    blocked writing a chunk no worker will read, so a waiting shutdown can hang.  The
    remaining workers are killed and reaped."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        with contextlib.suppress(Exception):
            proc.kill()
            proc.join(5)


def stop_resource_tracker() -> None:
    """Stop and reap multiprocessing's resource tracker, which spawned pools start and which
    would otherwise outlive the command for a moment (an orphan, then a zombie).  Call it
    once the pools are shut down; a later pool starts a new one."""
    from multiprocessing import resource_tracker

    tracker = getattr(resource_tracker, "_resource_tracker", None)
    stop = getattr(tracker, "_stop", None)
    if stop is not None:
        with contextlib.suppress(Exception):
            stop()


def _size(path: str) -> int:
    try:
        return file_size(path)
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}") from exc


def batch_of(
    mta: str,
    drained: Drained,
    positions: list[Position],
    unparsed: dict[str, int],
    samples: dict[str, str],
) -> Batch:
    """One MTA's share of a transaction: the correlator's output and where files stand."""
    return Batch(
        mta=mta,
        events=drained.events,
        counters=drained.counters,
        dims=drained.dims,
        upsert=drained.upsert,
        dropped=drained.dropped,
        positions=positions,
        unparsed=unparsed,
        samples=samples,
        retracted=drained.retracted,
        anomalies=dict(drained.anomalies),
        anomaly_samples=drained.anomaly_samples,
    )


def earliest_hour(drained: Drained, current: int | None) -> int | None:
    """The earliest hour bucket among ``drained``'s counters and ``current``."""
    hours = [key[0] for key in drained.counters]
    if current is not None:
        hours.append(current)
    return min(hours, default=None)


def compact_since(store: Store, hour: int | None) -> None:
    """Fold and sort (by account) the counters written from ``hour`` on."""
    if hour is not None:
        store.compact(datetime.fromtimestamp(hour * 3600, UTC))
