"""The one path from pieces of log files to committed batches.

    source (Piece) -> grammar (ChunkParse) -> correlator -> Drain (Batch per MTA) -> store

``Pipeline`` is shared by ``logstats backfill`` (``ingest``: file planning and progress
around it) and ``logstats serve`` (``daemon``: waking, signals, reload, deadlines and the
API around it).  It owns the correlators (one per MTA, restored from the store), the
clocks of the files being read, the parser worker pool and the open batch: the lines
taken since the last drain, where each file stands after them, and the unknown lines by
reason.  A drain expires idle messages by the log's own clock and hands the store one
``Batch`` per MTA; a commit writes the counters, the in-flight messages and the files'
checkpoints in one transaction, so an interruption anywhere leaves a store the next run
continues from, with nothing lost or counted twice.

Large runs of pieces (a backfilled file, a daemon's backlog) are parsed in worker
processes, small ones here, by the same function (``grammar.parse_chunk``: each piece has
a clock of its own, anchored at the file's modification time when it was read), so a line
gets the same record either way, and the records reach the correlator in file order.
Workers also count the messages that are whole within their piece and that nothing else
refers to (``correlate.self_contained``), with a correlator of their own; the main process
merges those counts and correlates the rest, or, when one of those messages is in flight
here, feeds the piece's records itself.  Either way the store ends up the same
(tests/test_pipeline.py).  A worker that dies (killed, out of memory) costs no piece:
what it had is done here.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from logstats.config import Config
from logstats.correlate import (
    CLOCK_JUMP,
    Correlator,
    Counts,
    Drained,
    Key,
    Policy,
    self_contained,
)
from logstats.grammar import ChunkParse, parse_chunk
from logstats.model import JournalCursor, Position, Rejected
from logstats.sources import Piece
from logstats.store import Batch, Isolated, Store

OnSample = Callable[[str, str, str], None]  # mta, reason, text of an unknown line
OnWorkersLost = Callable[[BaseException], None]


@dataclass(slots=True)
class Counted:
    """What a worker made of a piece: the records left to the main process (in order), and
    the counts of the self-contained messages it counted itself."""

    chunk: ChunkParse
    counts: Counts | None = None
    keys: list[Key] = field(default_factory=list)  # the messages counted in ``counts``
    first: datetime | None = None  # the time of the piece's first record
    newest: datetime | None = None  # the latest record time (the records run without jumps)


@dataclass(slots=True)
class Parsed:
    """A piece and what the grammar made of it."""

    piece: Piece
    chunk: ChunkParse
    counted: Counted | None = None  # from a worker

    @property
    def lines(self) -> int:
        """Lines consumed: parsed, unknown and over-long ones."""
        return self.chunk.lines + self.piece.too_long


@dataclass(slots=True)
class _Open:
    """What was taken since the last drain."""

    lines: int = 0
    positions: dict[str, tuple[str, Position]] = field(default_factory=dict)  # head -> mta, pos
    unparsed: dict[str, Counter[str]] = field(default_factory=dict)  # mta -> reason -> lines
    samples: dict[str, dict[str, str]] = field(default_factory=dict)  # mta -> reason -> line
    cursors: dict[str, tuple[str, JournalCursor]] = field(default_factory=dict)  # source -> ...


@dataclass(slots=True)
class Drain:
    """A drained batch (one ``Batch`` per MTA) to be committed in one transaction."""

    lines: int
    batches: list[Batch] = field(default_factory=list)

    @property
    def events(self) -> int:
        """Countable outcomes in the counters (sends, deliveries, deferrals, failures...)."""
        return sum(t.events for b in self.batches for t in (b.counters or {}).values())

    @property
    def unknown(self) -> int:
        return sum(sum(b.unparsed.values()) for b in self.batches)


class Pipeline:
    def __init__(
        self,
        store: Store,
        config: Config,
        now: Callable[[], datetime],
        *,
        on_sample: OnSample | None = None,
        on_workers_lost: OnWorkersLost | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.now = now  # wall clock: only for which event rows are recent enough to keep
        self.on_sample = on_sample
        self.on_workers_lost = on_workers_lost
        self.policy = config.policy()
        self.tz = config.tz()
        self.correlators: dict[str, Correlator] = {}
        self.open = _Open()
        self.workers_lost = 0  # times a parser worker died (its pieces were parsed here)
        self.earliest_hour: int | None = None  # earliest counter bucket drained (epoch hours)
        self.counted_in_workers = 0  # self-contained messages counted by workers
        self.fed_here = 0  # ... that had to be fed here after all (a key in flight here)
        self._pool: ProcessPoolExecutor | None = None
        self._generation = 0
        self._token = ""

    # -- configuration -----------------------------------------------------------------------
    def correlator(self, mta: str) -> Correlator:
        c = self.correlators.get(mta)
        if c is None:
            c = Correlator(mta, self.policy, self.store.pending(mta))
            c.events_since = self._events_since()
            self.correlators[mta] = c
        return c

    def reconfigure(self, config: Config) -> None:
        """A reloaded configuration: the new account map applies from the next record (the
        workers, which count with the account map too, are replaced)."""
        self.config = config
        self.policy = config.policy()
        self.tz = config.tz()
        for correlator in self.correlators.values():
            correlator.policy = self.policy
        self.close()

    def _events_since(self) -> datetime:
        return self.now() - timedelta(days=self.config.retention_days)

    # -- taking pieces -----------------------------------------------------------------------
    def take(self, mta: str, pieces: Iterable[Piece], size_hint: int = 0) -> Iterator[Parsed]:
        """Parse pieces of one file (``size_hint``: about how many bytes they hold, which
        decides whether workers are worth it) and feed them to ``mta``'s correlator, in
        order; each is yielded once it is counted in the open batch."""
        for parsed in self._parsed(mta, pieces, size_hint):
            self._absorb(mta, parsed)
            yield parsed

    @property
    def due(self) -> bool:
        """The open batch is as large as a batch gets (``ingest.batch_lines``)."""
        return self.open.lines >= self.config.batch_lines

    def _workers(self) -> int:
        return self.config.workers or os.cpu_count() or 1

    def _parsed(self, mta: str, pieces: Iterable[Piece], size_hint: int) -> Iterator[Parsed]:
        """Parsed pieces in order: here while they are few, in workers once they are many
        (``size_hint`` or what was read passes ``Config.parallel_bytes``).  After a worker
        died, the rest of the run is parsed here; the next run gets a new pool."""
        workers = self._workers()
        lost = self.workers_lost
        threshold = self.config.parallel_bytes
        seen = size_hint
        inflight: deque[tuple[Future[Counted] | None, Piece]] = deque()
        for piece in pieces:
            if workers < 2 or seen < threshold:
                seen += len(piece.body)
                yield Parsed(piece, self._parse_here(mta, piece))
                continue
            future = None
            pool = self._pool_of(workers) if self.workers_lost == lost else None
            if pool is not None:
                try:
                    future = pool.submit(count_chunk, *self._work(mta, piece))
                except BrokenProcessPool as exc:
                    self._lose_pool(exc)
            inflight.append((future, piece))
            if len(inflight) > 2 * workers:
                yield self._result(mta, *inflight.popleft())
        while inflight:
            yield self._result(mta, *inflight.popleft())

    def _parse_here(self, mta: str, piece: Piece) -> ChunkParse:
        """The same parse a worker makes (``parse_chunk``), in this process."""
        return parse_chunk(*self._work(mta, piece)[1:6])

    def _work(self, mta: str, piece: Piece) -> tuple[Any, ...]:
        """The arguments of ``count_chunk`` for a piece."""
        since = self.correlator(mta).events_since
        return (
            self._token, mta, self.tz, piece.position.mtime, self.config.max_line_length,
            piece.body, since,
        )  # fmt: skip

    def _result(self, mta: str, future: Future[Counted] | None, piece: Piece) -> Parsed:
        counted = None
        if future is not None:
            try:
                counted = future.result()
            except BrokenProcessPool as exc:
                self._lose_pool(exc)
        if counted is None:  # its worker died: the same work, here
            counted = count_chunk(*self._work(mta, piece))
        return Parsed(piece, counted.chunk, counted)

    def _absorb(self, mta: str, parsed: Parsed) -> None:
        """Feed the records to the correlator and note where the file stands."""
        correlator = self.correlator(mta)
        counted = parsed.counted
        if counted is not None and counted.counts is not None:
            assert counted.first is not None and counted.newest is not None
            if any(correlator.knows(k) for k in counted.keys) or not correlator.observe(
                counted.first, counted.newest
            ):
                # what the worker counted depends on what is in flight here: all of the
                # piece's records are fed here instead (the same parse)
                parsed.chunk = self._parse_here(mta, parsed.piece)
                self.fed_here += len(counted.keys)
            else:
                correlator.merge(counted.counts)
                self.counted_in_workers += len(counted.keys)
        feed = correlator.feed
        for record in parsed.chunk.records:
            feed(record)
        piece, chunk = parsed.piece, parsed.chunk
        pos = piece.position
        year, month = chunk.clock
        op = self.open
        if piece.cursor is not None:  # a journal source: its cursor is its checkpoint
            op.cursors[piece.cursor.source] = (mta, piece.cursor)
            if piece.no_message:
                chunk.unparsed["no-message"] += piece.no_message
            if piece.gap is not None:
                correlator.anomaly("journal-gap", piece.gap)
        else:
            op.positions[pos.head_hash] = (mta, replace(pos, year=year, month=month))
        if piece.too_long:
            chunk.unparsed["too-long"] += piece.too_long
        if chunk.unparsed:
            op.unparsed.setdefault(mta, Counter()).update(chunk.unparsed)
            samples = op.samples.setdefault(mta, {})
            for reason, text in chunk.samples.items():
                samples.setdefault(reason, text)
                if self.on_sample is not None:
                    self.on_sample(mta, reason, text)
        op.lines += parsed.lines

    # -- draining and committing -------------------------------------------------------------
    def drain(self) -> Drain:
        """Close the open batch: expire idle messages (by the log's clock) and collect what
        each correlator counted, with where the files stand."""
        op, self.open = self.open, _Open()
        drain = Drain(lines=op.lines)
        since = self._events_since()
        for mta, correlator in self.correlators.items():
            if correlator.last_ts is not None:
                correlator.expire(correlator.last_ts)
            drained = correlator.drain()
            correlator.events_since = since
            self.earliest_hour = earliest_hour(drained, self.earliest_hour)
            drain.batches.append(
                batch_of(
                    mta,
                    drained,
                    [p for m, p in op.positions.values() if m == mta],
                    dict(op.unparsed.get(mta, {})),
                    op.samples.get(mta, {}),
                    [c for m, c in op.cursors.values() if m == mta],
                )
            )
        return drain

    def commit(self, drains: list[Drain]) -> list[Isolated]:
        """Write drains in one transaction (``duckdb.Error``: nothing of them was written)."""
        return self.store.commit_many([b for d in drains for b in d.batches])

    # -- workers -----------------------------------------------------------------------------
    def _pool_of(self, workers: int) -> ProcessPoolExecutor | None:
        if self._pool is None:
            self._generation += 1
            _POLICIES.pop(self._token, None)
            self._token = f"{os.getpid()}.{id(self)}.{self._generation}"
            _POLICIES[self._token] = self.policy  # for count_chunk run here (a dead worker)
            self._pool = worker_pool(workers, self._token, self.config)
        return self._pool

    def _lose_pool(self, exc: BaseException) -> None:
        """A worker died: the pool is broken.  Reap it; the next run of pieces gets a new one."""
        if self._pool is not None:
            self.workers_lost += 1
            discard_pool(self._pool)
            self._pool = None
            if self.on_workers_lost is not None:
                self.on_workers_lost(exc)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None
        _POLICIES.pop(self._token, None)


def batch_of(
    mta: str,
    drained: Drained,
    positions: list[Position],
    unparsed: dict[str, int],
    samples: dict[str, str],
    cursors: list[JournalCursor] | None = None,
) -> Batch:
    """One MTA's share of a transaction: the correlator's output and where files and
    journal sources stand."""
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
        histograms=drained.histograms,
        cursors=cursors or [],
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


# -- parser worker processes ---------------------------------------------------------------
_POLICIES: dict[str, Policy] = {}  # token -> the policy its workers count with


def count_chunk(
    token: str,
    mta: str,
    tz: tzinfo,
    reference: float,
    max_line_length: int,
    body: bytes,
    events_since: datetime | None,
) -> Counted:
    """A worker's share of a piece: parse it, and count its self-contained messages
    (``correlate.self_contained``) and its rejects without a queue id (which depend on
    nothing in flight) with a correlator of its own, with the same code and policy as the
    main process.  The rest of the records, in order, are left to the main
    process, which merges the counts unless one of those messages turns out to be in
    flight there (see ``Pipeline._absorb``)."""
    chunk = parse_chunk(mta, tz, reference, max_line_length, body)
    policy = _POLICIES.get(token)
    records = chunk.records
    if policy is None or not records:
        return Counted(chunk)
    first = newest = records[0].ts
    for r in records:
        if r.ts > newest:
            if r.ts > newest + CLOCK_JUMP:
                return Counted(chunk)  # a jump: the log clock's rules need every record
            newest = r.ts
    keys = self_contained(records, policy)
    correlator = Correlator(mta, policy)
    correlator.events_since = events_since
    rest = []
    for r in records:
        if (r.scope, r.queue_id) in keys or (type(r) is Rejected and not r.queue_id):
            correlator.feed(r)  # (a reject without a queue id is counted on its own)
        else:
            rest.append(r)
    if len(rest) == len(records):
        return Counted(chunk)
    if correlator.messages:
        return Counted(chunk)  # not self-contained after all: all of it to the main process
    chunk.records = rest
    return Counted(chunk, correlator.counts(), list(keys), first, newest)


def ignore_sigint() -> None:
    """Parser workers leave Ctrl-C to the main process, which stops after its batch."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def worker_init(parent: int, token: str, config: Config) -> None:
    """A parser worker: leaves Ctrl-C to the main process and dies with it (on Linux, even
    when it is killed with SIGKILL), so that no worker outlives the command; it counts
    with the policy of ``config``."""
    ignore_sigint()
    _POLICIES[token] = config.policy()
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            pr_set_pdeathsig = 1
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before that took effect
        os._exit(1)


def worker_pool(workers: int, token: str, config: Config) -> ProcessPoolExecutor:
    """Parser processes (spawned: the main process has threads and a DuckDB connection)."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=worker_init,
        initargs=(os.getpid(), token, config),
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
