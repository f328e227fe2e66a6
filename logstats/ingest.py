"""Wiring of the one-shot pipeline: files -> grammar -> correlator -> store.

``Ingestor`` owns the correlators (one per MTA, restored from the store) and writes one
transaction per batch with the counters, the in-flight messages and the file checkpoint,
so an interruption anywhere leaves a store the next run continues from.
"""

from __future__ import annotations

import glob
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from logstats.config import Config
from logstats.correlate import Correlator
from logstats.errors import SourceError
from logstats.grammar import Clock, detect_mta, make_parser
from logstats.model import Ignored, Position, Unparsed
from logstats.sources import FileInfo, inspect, read_lines
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
    def __init__(self, store: Store, config: Config, now: Callable[[], datetime]) -> None:
        self.store = store
        self.config = config
        self.now = now
        self.policy = config.policy()
        self.tz = config.tz()
        self.correlators: dict[str, Correlator] = {}

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
        clock = Clock(self.tz, datetime.fromtimestamp(info.mtime, UTC))
        if known is not None:
            clock.restore(known.year, known.month)
        parser = make_parser(mta, clock, self.config.max_line_length)
        correlator = self.correlator(mta)
        feed = correlator.feed
        batch_lines = self.config.batch_lines
        pending_lines = 0
        unparsed: Counter[str] = Counter()
        samples: dict[str, str] = {}
        for chunk in read_lines(
            info.path,
            offset,
            final=info.compressed,
            max_line_length=self.config.max_line_length,
        ):
            if chunk.too_long:
                unparsed["too-long"] += chunk.too_long
            for line in chunk.lines:
                result = parser.parse(line)
                if isinstance(result, Ignored):
                    report.ignored += 1
                elif isinstance(result, Unparsed):
                    unparsed[result.reason] += 1
                    samples.setdefault(result.reason, result.text[:500])
                else:
                    report.records += 1
                    feed(result)
            n = len(chunk.lines) + chunk.too_long
            report.lines += n
            pending_lines += n
            lines_done += n
            offset = chunk.end_offset
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
        events, upsert, dropped = correlator.drain()
        year, month = clock.state()
        batch = Batch(
            mta=mta,
            events=events,
            upsert=upsert,
            dropped=dropped,
            positions=[
                Position(
                    info.head_hash,
                    info.path,
                    info.inode,
                    offset,
                    lines,
                    info.mtime,
                    done,
                    year,
                    month,
                )
            ],
            unparsed=dict(unparsed),
            samples=samples,
        )
        now = self.now()
        self.store.commit(batch, events_since=now - timedelta(days=self.config.retention_days))
        report.events += len(events)
        report.unparsed.update(unparsed)
