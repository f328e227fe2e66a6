"""Wiring of the one-shot pipeline: files -> grammar -> correlator -> store.

``Ingestor`` owns the correlators (one per MTA, restored from the store) and writes one
transaction per batch with the counters, the in-flight messages and the file checkpoint,
so an interruption anywhere leaves a store the next run continues from.
"""

from __future__ import annotations

import glob
import multiprocessing
import os
import re
import signal
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from logstats.config import Config
from logstats.correlate import Correlator, Drained
from logstats.errors import SourceError
from logstats.grammar import ChunkParse, Clock, detect_mta, make_parser, parse_chunk, parse_lines
from logstats.model import Position
from logstats.sources import CHUNK, FileInfo, file_size, inspect, read_chunks, split_lines
from logstats.store import Batch, Store

_ISO = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[-+]\d\d:?\d\d)?")
_BSD = re.compile(r"^[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d")

Progress = Callable[[str, int, int], None]  # path, lines so far, bytes so far


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


def expand(patterns: Iterable[str]) -> list[str]:
    """Paths and globs -> existing files (a pattern matching nothing is an error)."""
    out: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise SourceError(f"{pattern}: no file matches")
        for m in matches:
            if not Path(m).is_file():
                raise SourceError(f"{m}: no such file")
            out.append(m)
    return out


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
        self, store: Store, config: Config, now: Callable[[], datetime], chunk_size: int = CHUNK
    ) -> None:
        self.store = store
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

    def plan(self, paths: Iterable[str], mta: str | None = None) -> list[tuple[FileInfo, str]]:
        """Inspect files, detect their MTA and order each MTA's files oldest first."""
        planned: list[tuple[datetime, str, FileInfo, str]] = []
        for path in expand(paths):
            info = inspect(path)
            kind = mta or detect_mta(info.first_lines)
            if kind is None and not info.head_hash:
                kind = ""  # empty, or no complete line yet: ingest() skips it
            if kind is None:
                raise SourceError(
                    f"{path}: cannot tell whether it is an Exim or Postfix log (use --mta)"
                )
            clock = Clock(self.tz, datetime.fromtimestamp(info.mtime, UTC))
            first = first_timestamp(info, clock) or datetime.fromtimestamp(info.mtime, UTC)
            planned.append((first, kind, info, path))
        planned.sort(key=lambda p: (p[1], p[0], p[3]))
        return [(info, kind) for _, kind, info, _ in planned]

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
        if known is not None and not info.compressed and file_size(info.path) < offset:
            report.skipped = (
                f"shorter ({file_size(info.path)} bytes) than when it was read as {known.path} "
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
        """Parsed chunks in file order: in this process for small files, else in workers."""
        max_len = self.config.max_line_length
        chunks = read_chunks(
            info.path,
            offset,
            final=info.compressed,
            max_line_length=max_len,
            chunk_size=self.chunk_size,
        )
        workers = self.config.workers
        if workers == 0:
            workers = os.cpu_count() or 1
        size = file_size(info.path) - offset
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
        pool = self._pool(workers)
        inflight: deque[tuple[Future[ChunkParse], int, int]] = deque()
        for raw in chunks:
            inflight.append(
                (
                    pool.submit(parse_chunk, mta, self.tz, info.mtime, max_len, raw.body),
                    raw.end_offset,
                    raw.too_long,
                )
            )
            if len(inflight) > 2 * workers:
                yield self._result(inflight.popleft())
        while inflight:
            yield self._result(inflight.popleft())

    @staticmethod
    def _result(item: tuple[Future[ChunkParse], int, int]) -> tuple[ChunkParse, int]:
        future, end_offset, too_long = item
        parsed = future.result()
        if too_long:
            parsed.unparsed["too-long"] += too_long
            parsed.lines += too_long
        return parsed, end_offset

    def _pool(self, workers: int) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=ignore_sigint,
            )
        return self._executor

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
        self.store.commit(batch)
        report.events += len(d.events)
        report.unparsed.update(unparsed)


def ignore_sigint() -> None:
    """Parser workers leave Ctrl-C to the main process, which stops after its batch."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


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
