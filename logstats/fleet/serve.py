"""``logstats fleet --from DIR serve``: the stats shapes over every host's export, on HTTP.

The daemon's own ``api.Router`` (each API's authentication, the one scope rule, each
vendor's envelope and errors) and its listener (``server.ApiService``: uvicorn on TCP and
a Unix socket), with the numbers from a ``FleetEngine`` instead of a store: cPanel
``EmailTrack::stats`` (API 2 and WHM API 1 ``emailtrack_stats``), Mailgun stats, SendGrid
customer stats and SMTPeter tag stats.  The keys are the config's ``api.keys``, fleet-wide:
a key limited to accounts, domains or tags sees them on every host.  What reads Track
Delivery rows or a daemon's own state (EmailTrack::search, WHM ``emailtrack_search``,
Mailgun events, ``/v1/track``, the web UI, ``/metrics``) answers 404 in its API's envelope.

Hosts may export while it serves: with DuckDB every answer reads the files as they are then
(``FleetEngine.refresh``); Spark's listing takes seconds on a large fleet, so it is made again
apart, when a host's generation file changed (``FleetEngine.stale``) and every
``relist_seconds``, and swapped in between answers.  SIGTERM and SIGINT
stop it (exit 0): they are blocked in every thread from the start (``block_signals``, before
the engine starts any) and taken by ``signal.sigwait``.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from logstats.api import Answer, Router, Target, error_answer
from logstats.config import Config
from logstats.errors import LogstatsError
from logstats.fleet.engine import FleetEngine
from logstats.model import AccountStats, SeriesRequest, SeriesRow, StatsRequest
from logstats.notify import Notifier
from logstats.shapes import SHAPES

SIGNALS = {signal.SIGTERM, signal.SIGINT}
RELIST_CHECK = 2.0  # seconds between looks at the hosts' generation files
_CPANEL_FUNCS = ("stats",)  # EmailTrack's functions answered over the fleet


def block_signals() -> None:
    """Block SIGTERM and SIGINT in this thread and so in every thread it starts."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)


class FleetRouter(Router):
    """``api.Router`` answering from a fleet: the stats shapes, over every host."""

    def __init__(
        self,
        fleet: FleetEngine,
        config: Config,
        status: Callable[[], dict[str, Any]],
        log: Any = None,
    ) -> None:
        super().__init__(None, status, config, lambda cur: "")
        self.fleet = fleet
        self.log = log
        self.engine_lock = threading.Lock()  # one question at a time per engine
        self.stopped = threading.Event()
        self.relister: threading.Thread | None = None
        if fleet.relist_seconds > 0:
            self.relister = threading.Thread(target=self._relist, name="fleet-relist", daemon=True)
            self.relister.start()

    def _fresh(self) -> None:
        """The files as they are now: hosts export while it serves.  An engine whose
        listing is costly (Spark) is listed again apart, as soon as a host's generation
        changed and every ``relist_seconds``; an answer asked before that is done lists
        them itself (the listing it has would read a replaced file short)."""
        if self.fleet.relist_seconds <= 0 or self.fleet.stale():
            self.fleet.refresh()

    def _relist(self) -> None:
        last = time.monotonic()
        while not self.stopped.wait(min(RELIST_CHECK, self.fleet.relist_seconds)):
            try:
                if not self.fleet.stale() and time.monotonic() - last < self.fleet.relist_seconds:
                    continue
                listing = self.fleet.listing()  # the long part, while questions are answered
                with self.engine_lock:
                    self.fleet.use(listing)
                last = time.monotonic()
            except Exception as exc:  # the next round tries again; answers use the last listing
                if self.log is not None:
                    detail = (str(exc) or type(exc).__name__).splitlines()[0]
                    self.log.warning("fleet_relist_failed", detail=detail)

    def stop(self) -> None:
        self.stopped.set()
        if self.relister is not None:
            self.relister.join(timeout=5)  # a listing under way is left to the exit

    def stats(self, req: StatsRequest) -> list[AccountStats]:
        with self.engine_lock:
            self._fresh()
            return self.fleet.account_stats(req)

    def series(self, req: SeriesRequest) -> list[SeriesRow]:
        with self.engine_lock:
            self._fresh()
            return self.fleet.series(req)

    def refuse(self, target: Target, path: str, params: Mapping[str, list[str]]) -> Answer | None:
        if answered(target.family, target.name, params):
            return None
        return error_answer(
            target.family, 404, f"not answered over the fleet: {path}", xml=path.endswith(".xml")
        )


def answered(family: str, name: str, params: Mapping[str, list[str]]) -> bool:
    """Whether the fleet answers this route (its numbers come from the counters alone)."""
    if family == "health":
        return True
    if family == "cpanel":  # /json-api/cpanel and /v1/emailtrack alike take the function
        funcs = params.get("cpanel_jsonapi_func") or [""]
        return funcs[-1].strip() in (*_CPANEL_FUNCS, "")
    if family == "whm":
        return name == "emailtrack_stats"
    return name in SHAPES and name != "mailgun.events"


def run(fleet: FleetEngine, config: Config, args: Any, log: Any) -> int:
    """Serve until SIGTERM or SIGINT (``block_signals`` must have been called first)."""
    from logstats.server import ApiService

    tcp = args.tcp or config.tcp
    if not tcp and not args.socket:
        raise LogstatsError("fleet serve: no address: give --tcp HOST:PORT or --socket PATH")
    info = {"fleet": str(args.source), "engine": args.engine}
    router = FleetRouter(fleet, config, lambda: dict(info), log)
    service = ApiService(router, args.socket, tcp, log=log).start()
    notifier = Notifier.from_env()
    try:
        notifier.ready(f"fleet {args.source} ({args.engine})")
        log.info(
            "fleet_serve_ready",
            fleet=str(args.source),
            engine=args.engine,
            tcp=tcp,
            port=service.tcp_port,
            socket=args.socket,
        )
        signum = signal.sigwait(SIGNALS)
    finally:
        notifier.stopping()
        router.stop()
        service.stop()
    log.info("fleet_serve_stopped", signal=signal.Signals(signum).name)
    return 0
