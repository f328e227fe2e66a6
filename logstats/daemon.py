"""``logstats serve``: follow the configured logs, count exactly once, answer queries.

One thread (this loop) owns the followers, the pipeline (correlators, parser workers) and
the read-write DuckDB connection.  watchdog's inotify reader only wakes it; a timer wakes
it too, because inotify can lose events and some filesystems have none.  Work is
committed in batches, bounded by size (``ingest.batch_lines``) and by age
(``serve.batch_seconds``), each in one transaction
with the files' checkpoints and the in-flight messages: after ``kill -9`` the next start
continues from the last commit, and nothing is lost or counted twice.

SIGTERM/SIGINT commit the open batch and exit 0; SIGHUP reloads the configuration
(account map, sources) without losing a line.  A commit that fails (disk full) is rolled
back and retried with back-off; after ``serve.commit_retries`` failures the daemon exits
1 so that systemd restarts it from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any, Protocol

import duckdb

from logstats import config as config_mod
from logstats.api import Router
from logstats.correlate import Correlator
from logstats.errors import ConfigError, StoreError, cause_of
from logstats.follow import Follower
from logstats.grammar import detect_mta
from logstats.journal import JournalReader
from logstats.notify import Notifier
from logstats.pipeline import Drain, Pipeline, compact_since, stop_resource_tracker
from logstats.server import ApiService
from logstats.sources import Piece, split_lines
from logstats.store import Store

Log = Any  # a structlog bound logger
MIN_POLL_INTERVAL = 0.1  # seconds: inotify wake-ups closer than this share one poll


class Daemon:
    def __init__(
        self,
        config: config_mod.Config,
        log: Log,
        notifier: Notifier | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.log = log
        self.notifier = notifier or Notifier.from_env()
        self.monotonic = monotonic
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.reload_requested = False
        self.followers: dict[str, Follower | JournalReader] = {}
        self.first_at: float | None = None  # when the open batch took its first line
        self.giving_up = False  # a commit failed too often: exit 1 (systemd restarts us)
        self.unsaved: list[Drain] = []
        self.failures = 0
        self.retry_at = 0.0
        self.total_lines = 0
        self.rate_window: list[tuple[float, int]] = []
        self.last_sample: dict[str, float] = {}
        self.last_prune = 0.0
        self.last_export: float | None = None  # when the fleet export last ran (monotonic)
        self.backlog = False
        self.commit_s = 0.0
        self.compacted_month: str | None = None
        self.lines_by_source: dict[str, int] = {}
        self._signal_fd: int | None = None  # the write end of the signals' wakeup pipe

    # -- life cycle --------------------------------------------------------------------------
    def run(self) -> int:
        # a damaged or locked database: StoreError
        self.store = Store(self.config.db, memory_limit=self.config.memory_limit)
        try:
            return self._run()
        except duckdb.Error as exc:  # not a commit (those are retried): reading the store
            raise StoreError(f"database {self.config.db}: {cause_of(exc)}") from exc
        finally:
            try:
                self.store.close()
            except duckdb.Error as exc:
                self.log.error("store_close_failed", error=cause_of(exc))
            stop_resource_tracker()  # the parser pool is shut down by now
            self._unsignal()

    def _run(self) -> int:
        self.pipeline = Pipeline(
            self.store,
            self.config,
            lambda: datetime.now(UTC),
            on_sample=self._sample,
            on_workers_lost=self._workers_lost,
        )
        for mta in ("exim", "postfix"):
            self.pipeline.correlator(mta)
        self._sync_followers()
        self.router = Router(self.store.con, self.status, self.config, self._metrics)
        self.api = ApiService(
            self.router, self.config.socket, self.config.tcp, log=self.log
        ).start()
        observer = self._observe()
        self._signals()
        self._poll_all()
        self._commit(force=True)
        self.notifier.ready(self._status_line())
        self.log.info(
            "serve_ready",
            sources=list(self.followers),
            socket=self.config.socket,
            tcp=self.config.tcp,
            db=self.config.db,
            max_connections=self.api.limits.max_connections,
        )
        code = 0
        try:
            code = self._loop()
        finally:
            self.notifier.stopping()
            if observer is not None:
                observer.stop()
            self.api.stop()
            self.pipeline.close()
            for follower in self.followers.values():
                follower.close()
        self.log.info("serve_stopped", lines=self.total_lines, exit_code=code)
        return code

    def _loop(self) -> int:
        ping = self.notifier.watchdog_interval()
        last_ping = last_status = self.monotonic()
        while not self.stop.is_set() and not self.giving_up:
            self.wake.wait(self._timeout())
            if not self.backlog:
                # let a burst of inotify events (one per write) become one poll
                self.stop.wait(MIN_POLL_INTERVAL)
            self.wake.clear()
            if self.reload_requested:
                self._reload()
            self._poll_all()
            if self.giving_up or not self._commit(force=False):
                return 1
            now = self.monotonic()
            if ping is not None and now - last_ping >= ping:
                self.notifier.watchdog()
                last_ping = now
            if now - last_status >= 5.0:
                self.notifier.status(self._status_line())
                last_status = now
            if now - self.last_prune > 3600:
                self.last_prune = now
                self._prune()
                self._compact()
            every = self.config.export_every.total_seconds()
            if self.config.export_directory and (
                self.last_export is None or now - self.last_export >= every
            ):
                self.last_export = now
                self._export()
        if self.giving_up:
            return 1
        self._poll_all()
        return 0 if not self.giving_up and self._commit(force=True, final=True) else 1

    def _timeout(self) -> float:
        if self.backlog:
            return 0.0  # catching up: read on at once (commits are bounded by batch_lines)
        timeout = self.config.poll_seconds
        if self.first_at is not None:
            due = self.first_at + self.config.batch_seconds - self.monotonic()
            timeout = min(timeout, max(due, 0.0))
        if self.unsaved:
            timeout = min(timeout, max(self.retry_at - self.monotonic(), 0.0))
        return timeout

    def _signals(self) -> None:
        """SIGTERM/SIGINT stop, SIGHUP reloads.

        A Python signal handler runs in this thread between two bytecodes, possibly while
        the loop holds the lock inside ``wake`` or ``stop`` (in ``wait`` or ``clear``):
        setting an Event there waits for that lock forever.  So the handlers do nothing;
        ``signal.set_wakeup_fd`` writes each signal's number to a pipe, and a thread of
        its own reads the pipe and sets the events (a plain lock wait, never a deadlock)."""
        read, write = os.pipe()
        os.set_blocking(write, False)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, _no_handler)
        self._signal_fd = write
        relay = threading.Thread(target=self._relay_signals, args=(read,), name="signals")
        relay.daemon = True
        relay.start()

    def _relay_signals(self, read: int) -> None:
        while True:
            try:
                data = os.read(read, 512)
            except OSError:
                return
            if not data or 0 in data:  # 0: _unsignal's end of the relay
                os.close(read)
                return
            if signal.SIGHUP in data:
                self.reload_requested = True
            if signal.SIGTERM in data or signal.SIGINT in data:
                self.stop.set()
            self.wake.set()

    def _unsignal(self) -> None:
        """The default actions again, and the relay thread ended."""
        write = self._signal_fd
        if write is None:
            return
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        with contextlib.suppress(OSError):
            os.write(write, b"\0")
        os.close(write)
        self._signal_fd = None  # the read end is the relay thread's: it closes it

    def _observe(self) -> Any:
        """inotify (watchdog) on the sources' folders; polling covers what it misses.

        Only a wake-up is needed, so watchdog's inotify reader is used on its own where it
        is available (one thread, a callback per event); its observer (three threads and
        an event object per write, several % of a core at 100 lines/s) otherwise."""
        folders = sorted(
            {os.path.dirname(os.path.abspath(p)) for p, f in self.followers.items()
             if isinstance(f, Follower)}
            | {d for f in self.followers.values() if isinstance(f, JournalReader)
               for d in f.folders()}
        )  # fmt: skip
        folders = [f for f in folders if os.path.isdir(f)]
        try:
            return _inotify_waker(folders, self.wake) or _observer_waker(folders, self.wake)
        except OSError as exc:
            self.log.warning("inotify_unavailable", error=str(exc), fallback="polling")
            return None

    def _reload(self) -> None:
        self.reload_requested = False
        self.notifier.reloading()
        path = self.config.path
        try:
            new = config_mod.load(path)
            new.domain_map()  # a map file that cannot be read fails the reload, not the daemon
        except ConfigError as exc:
            self.log.error("reload_failed", error=str(exc), keeping="the running configuration")
            self.notifier.ready(self._status_line())
            return
        for warning in new.warnings():
            self.log.warning("config_warning", detail=warning)
        if new.db != self.config.db:
            self.log.warning(
                "reload_db_ignored",
                db=new.db,
                running=self.config.db,
                hint="a new store.path takes effect on restart",
            )
            new = replace(new, db=self.config.db)
        self.config = new
        self.router.config = new
        self.pipeline.reconfigure(new)
        self._sync_followers()
        self.log.info("config_reloaded", path=path, sources=list(self.followers))
        self.notifier.ready(self._status_line())

    def _sync_followers(self) -> None:
        wanted: dict[str, str | None] = {}
        journals: dict[str, JournalReader] = {}
        for source in self.config.sources:
            if source.journal is not None:
                reader = JournalReader(source.journal, source.mta or "", self.store.journal_cursor)
                journals[reader.path] = reader
                continue
            for path in _expand(source.path):
                wanted[path] = source.mta
        for path in list(self.followers):
            if path not in wanted and path not in journals:
                self.followers.pop(path).close()
        for path, reader in journals.items():
            self.followers.setdefault(path, reader)
        for path, mta in wanted.items():
            if path not in self.followers:
                self.followers[path] = Follower(
                    path,
                    mta or "",
                    self.store.position,
                    self.store.last_of_path,
                    self.config.max_line_length,
                )

    @property
    def correlators(self) -> dict[str, Correlator]:
        return self.pipeline.correlators

    # -- reading -----------------------------------------------------------------------------
    def _poll_all(self) -> None:
        self.backlog = False
        for follower in self.followers.values():
            pieces = follower.poll()
            self.backlog = self.backlog or follower.more
            for note in follower.notes:
                self.log.warning(note.event, path=note.path, detail=note.detail, **note.fields)
            follower.notes.clear()
            if pieces and not follower.mta:
                follower.mta = self._detect(follower, pieces)
            if not follower.mta:
                continue  # neither counted nor checkpointed: a restart reads them again
            size = sum(len(p.body) for p in pieces)
            for parsed in self.pipeline.take(follower.mta, pieces, size):
                self.total_lines += parsed.lines
                self.lines_by_source[follower.path] = (
                    self.lines_by_source.get(follower.path, 0) + parsed.lines
                )
                if self.first_at is None:
                    self.first_at = self.monotonic()
                if self.pipeline.due and not self._commit(force=False):
                    self.giving_up = True  # a batch is as large as batches get, even mid-poll
                    return

    def _detect(self, follower: Follower | JournalReader, pieces: list[Piece]) -> str:
        lines: list[str] = []
        for piece in pieces:
            lines += split_lines(piece.body, self.config.max_line_length)[0][:50]
        mta = detect_mta(lines[:50]) or ""
        if not mta and lines:
            self.log.warning(
                "source_mta_unknown", path=follower.path, hint="set sources[].mta in the config"
            )
        return mta

    def _workers_lost(self, exc: BaseException) -> None:
        self.log.warning(
            "parse_workers_lost",
            error=str(exc) or type(exc).__name__,
            recovery="the rest of these lines are parsed in the daemon; a new pool next time",
        )

    def _sample(self, mta: str, reason: str, text: str) -> None:
        now = self.monotonic()
        if now - self.last_sample.get(reason, -1e9) >= 60.0:
            self.last_sample[reason] = now
            self.log.warning("unknown_line", mta=mta, reason=reason, sample=text[:300])

    # -- committing --------------------------------------------------------------------------
    def _commit(self, *, force: bool, final: bool = False) -> bool:
        """Commit if the open batch is due; False when the daemon must exit."""
        now = self.monotonic()
        due = (
            force
            or self.pipeline.due
            or (self.first_at is not None and now - self.first_at >= self.config.batch_seconds)
        )
        if self.unsaved and now < self.retry_at and not final:
            return True
        if not due and not self.unsaved:
            return True
        if due:
            self.unsaved.append(self.pipeline.drain())
            self.first_at = None
        started = time.perf_counter()
        try:
            isolated = self.pipeline.commit(self.unsaved)
        except duckdb.Error as exc:
            self.failures += 1
            backoff = min(0.5 * 2 ** (self.failures - 1), 30.0)
            self.retry_at = now + backoff
            self.log.error(
                "commit_failed",
                error=str(exc),
                attempt=self.failures,
                retry_in_s=backoff,
                rolled_back=True,
            )
            if self.failures > self.config.commit_retries:
                self.log.error("giving_up", hint="restarting resumes from the last commit")
                return False
            return not final or self._retry_final()
        ms = (time.perf_counter() - started) * 1000
        self.commit_s = ms / 1000
        lines = sum(b.lines for b in self.unsaved)
        if isolated:
            self.log.error(
                "rows_isolated",
                rows=len(isolated),
                tables=sorted({i.table for i in isolated}),
                reason=isolated[0].reason,
                kept_in="quarantine",
                hint="the rest of the batch was committed",
            )
        self._log_anomalies()
        if lines:
            self.log.info(
                "batch_committed",
                lines=lines,
                events=sum(d.events for d in self.unsaved),
                unknown=sum(d.unknown for d in self.unsaved),
                lag_s=self._lag(),
                ms=round(ms, 1),
            )
        self.unsaved.clear()
        self.failures = 0
        self._count_rate(lines)
        return True

    def _log_anomalies(self) -> None:
        """One warning per anomaly kind and minute at most (all are counted in the store)."""
        for batch in (b for d in self.unsaved for b in d.batches):
            for kind, n in batch.anomalies.items():
                key = "anomaly:" + kind
                now = self.monotonic()
                if now - self.last_sample.get(key, -1e9) >= 60.0:
                    self.last_sample[key] = now
                    self.log.warning(
                        "anomaly",
                        mta=batch.mta,
                        kind=kind,
                        count=n,
                        sample=batch.anomaly_samples.get(kind, "")[:300],
                    )

    def _retry_final(self) -> bool:
        while self.unsaved and self.failures <= self.config.commit_retries:
            time.sleep(max(self.retry_at - self.monotonic(), 0.0))
            try:
                self.pipeline.commit(self.unsaved)
            except duckdb.Error as exc:
                self.failures += 1
                self.retry_at = self.monotonic() + min(0.5 * 2 ** (self.failures - 1), 30.0)
                self.log.error("commit_failed", error=str(exc), attempt=self.failures)
                continue
            self.unsaved.clear()
            return True
        return not self.unsaved

    def _compact(self) -> None:
        """Hourly: fold the counter deltas written since the last time, sorted by account;
        in a new month, re-sort the whole previous month (few blocks per account query)."""
        month = datetime.now(UTC).strftime("%Y-%m")
        since = self.pipeline.earliest_hour
        if self.compacted_month not in (None, month):
            first = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            previous = (first - timedelta(days=1)).replace(day=1)
            hour = int(previous.timestamp()) // 3600
            since = hour if since is None else min(since, hour)
        self.compacted_month = month
        if since is None:
            return
        started = time.perf_counter()
        try:
            compact_since(self.store, since)
        except duckdb.Error as exc:
            self.log.error("compact_failed", error=str(exc))
            return
        self.pipeline.earliest_hour = None
        self.notifier.watchdog()
        self.log.info(
            "counters_compacted",
            since_hour=since,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )

    def _export(self) -> None:
        """Every ``export.every``: the fleet export (``logstats export``'s own function),
        from this process (DuckDB lets no other open the store while it runs)."""
        from logstats.fleet import export

        directory = str(self.config.export_directory)
        host = self.config.export_host or export.default_host()
        try:
            result = export.export(self.store.con, directory, host, self.notifier.watchdog)
        except (OSError, duckdb.Error) as exc:
            self.log.error("export_failed", to=directory, error=cause_of(exc))
            return
        self.notifier.watchdog()
        self.log.info("export_done", to=directory, host=host, **export.summary(result))

    def _prune(self) -> None:
        horizon = datetime.now(UTC) - timedelta(days=self.config.retention_days)
        try:
            removed = self.store.prune(horizon)
        except duckdb.Error as exc:
            self.log.error("prune_failed", error=str(exc))
            return
        if removed:
            self.log.info("events_pruned", rows=removed, older_than=horizon.isoformat())

    # -- status ------------------------------------------------------------------------------
    def _count_rate(self, lines: int) -> None:
        now = self.monotonic()
        self.rate_window.append((now, lines))
        self.rate_window = [(t, n) for t, n in self.rate_window if now - t <= 60.0]

    def _rate(self) -> float:
        if not self.rate_window:
            return 0.0
        span = max(self.monotonic() - self.rate_window[0][0], 1.0)
        return sum(n for _, n in self.rate_window) / span

    def _lag(self) -> float | None:
        newest = max((c.last_ts for c in self.correlators.values() if c.last_ts), default=None)
        if newest is None:
            return None
        return round((datetime.now(UTC) - newest).total_seconds(), 3)

    def _status_line(self) -> str:
        lag = self._lag()
        lag_text = "-" if lag is None else f"{lag:.1f}s"
        return f"{self._rate():.0f} lines/s, lag {lag_text}, {len(self.followers)} sources"

    def status(self) -> dict[str, Any]:
        return {
            "db": self.config.db,
            "lines": self.total_lines,
            "lines_per_s": round(self._rate(), 1),
            "lag_s": self._lag(),
            "sources": sorted(self.followers),
            "in_flight": sum(len(c.messages) for c in self.correlators.values()),
            "lines_by_source": dict(self.lines_by_source),
            "commit_s": self.commit_s,
        }

    def _metrics(self, cursor: duckdb.DuckDBPyConnection) -> str:
        from logstats.metrics import render

        return render(cursor, per_account=self.config.metrics_per_account, status=self.status())


class _Stoppable(Protocol):
    def stop(self) -> None: ...


def _inotify_waker(folders: list[str], wake: threading.Event) -> _Stoppable | None:
    """Set ``wake`` on any change in ``folders``, through watchdog's inotify reader (its
    ``InotifyFD``, watchdog 5 and later); None where that is not available."""
    try:
        from watchdog.observers.inotify_c import (
            CallbackId,
            InotifyConstants,
            InotifyEvent,
            InotifyFD,
            Mask,
            WatchDescriptor,
        )
    except ImportError:
        return None
    c = InotifyConstants
    mask = (
        c.IN_MODIFY | c.IN_CREATE | c.IN_DELETE | c.IN_MOVED_FROM | c.IN_MOVED_TO
        | c.IN_CLOSE_WRITE | c.IN_ATTRIB | c.IN_DELETE_SELF | c.IN_MOVE_SELF
    )  # fmt: skip

    class Waker:
        def on_event(self, event: InotifyEvent) -> None:
            wake.set()

        def on_watch_deleted(self, wd: WatchDescriptor) -> None:
            wake.set()

        def on_queue_overflow(self) -> None:
            wake.set()

    reader = InotifyFD()
    waker = Waker()
    try:
        for i, folder in enumerate(folders):
            reader.add_callback(os.fsencode(folder), Mask(mask), waker, CallbackId(i))
    except OSError:
        reader.close()
        raise
    reader.daemon = True
    reader.start()

    class Reader:
        def stop(self) -> None:
            reader.close()

    return Reader()


def _observer_waker(folders: list[str], wake: threading.Event) -> _Stoppable | None:
    try:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
    except ImportError:  # pragma: no cover - watchdog is a dependency
        return None

    class Waker(FileSystemEventHandler):
        def on_any_event(self, event: Any) -> None:
            wake.set()

    observer = Observer()
    for folder in folders:
        observer.schedule(Waker(), folder, recursive=False)
    observer.start()
    return observer


def _no_handler(signum: int, frame: FrameType | None) -> None:
    """The Python-level handler of the daemon's signals: their work is done by the relay
    thread (Daemon._signals), which the wakeup fd tells."""


def _expand(pattern: str) -> list[str]:
    import glob

    if glob.has_magic(pattern):
        return sorted(p for p in glob.glob(pattern) if not _looks_rotated(p))
    return [pattern]


def _looks_rotated(path: str) -> bool:
    tail = path.rsplit("/", 1)[-1]
    return tail.endswith((".gz", ".bz2", ".xz")) or tail.rsplit(".", 1)[-1].isdigit()
