"""Command line: ``logstats backfill | query | parse | check-config``.

structlog is configured here, once: JSON lines when stderr is not a terminal, readable
console output when it is.  A ``LogstatsError`` becomes one line on stderr and exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import structlog

from logstats import __version__
from logstats import config as config_mod
from logstats.errors import LogstatsError, SourceError, StoreError, cause_of
from logstats.model import Ignored, Mta, Unparsed

if TYPE_CHECKING:
    from logstats.ingest import Ingestor
    from logstats.sources import FileInfo
    from logstats.store import Store

BUNDLED_CONFIG = Path(__file__).resolve().parent.parent / "config" / "logstats.yaml"


def configure_logging(stream: TextIO = sys.stderr) -> None:
    """Console output on a terminal, JSON lines otherwise (systemd's journal)."""
    renderer: Any
    if stream.isatty() and "JOURNAL_STREAM" not in os.environ:
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def parse_time(value: str) -> datetime:
    """ISO 8601 (``2024-05-01``, ``2024-05-01T10:00:00+02:00``) or Unix seconds."""
    from logstats.api import BadRequest
    from logstats.api import parse_time as parse

    try:
        return parse("time", value)
    except BadRequest as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def positive_int(value: str) -> int:
    if not value.isdigit() or int(value) <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive whole number")
    return int(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="logstats",
        description="Per-account mail statistics from Exim and Postfix logs.",
    )
    parser.add_argument("--version", action="version", version=f"logstats {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", metavar="FILE", help="YAML configuration (default: none; built-in defaults)"
    )
    common.add_argument(
        "--db",
        metavar="FILE",
        help=f"DuckDB file (default: store.path of the config, else {config_mod.DEFAULT_DB})",
    )

    bf = sub.add_parser(
        "backfill",
        parents=[common],
        help="read log files (plain, .gz, .bz2, .xz) into the store, once",
        description="Read whole log files into the store. Files already read (also rotated or "
        "compressed copies) are skipped; a file that grew is read from where it stopped. Each "
        "MTA's files are read oldest first, ordered by their first timestamp.",
    )
    bf.add_argument(
        "paths", nargs="+", metavar="PATH|GLOB", help="log files; - reads standard input"
    )
    bf.add_argument(
        "--mta", choices=[m.value for m in Mta], help="the files' MTA (default: detected per file)"
    )

    q = sub.add_parser("query", help="answer in the shape of a mail statistics API")
    qsub = q.add_subparsers(dest="shape", required=True, metavar="SHAPE")
    et = qsub.add_parser(
        "emailtrack",
        parents=[common],
        help="cPanel API2 EmailTrack::stats",
        description="Print cPanel API2 EmailTrack::stats (cpanelresult JSON) for one account, "
        "or a row per account with --all. Windows are UTC, at hour granularity.",
    )
    who = et.add_mutually_exclusive_group(required=True)
    who.add_argument("--account", metavar="NAME", help="the account (cPanel user)")
    who.add_argument("--all", action="store_true", help="every account")
    et.add_argument(
        "--start",
        type=parse_time,
        metavar="T",
        help="window start, ISO 8601 or Unix time (default: beginning)",
    )
    end = et.add_mutually_exclusive_group()
    end.add_argument("--end", type=parse_time, metavar="T", help="window end, exclusive")
    end.add_argument(
        "--days", type=positive_int, metavar="N", help="window: the last N days up to now"
    )
    et.add_argument(
        "--deliverytype",
        choices=["remote", "local", "remote_or_faildefer"],
        help="count only remote or only local deliveries (SUCCESSCOUNT, TOTALSIZE); "
        "remote_or_faildefer: remote deliveries plus all deferrals and failures",
    )
    et.add_argument("--nosize", action="store_true", help="leave out TOTALSIZE")
    et.add_argument("--nosuccess", action="store_true", help="leave out SUCCESSCOUNT")
    et.add_argument(
        "--format",
        choices=["table", "json"],
        default=None,
        help="with --all: a text table (default) or a JSON object by account",
    )

    examples = {
        "mailgun": "/v3/stats/total event=delivered event=failed duration=7d",
        "sendgrid": "/api/distributor.manage.json method=stats user=alice days=7",
        "smtpeter": "/v1/stats/newsletter",
    }
    vendors = {"mailgun": "Mailgun", "sendgrid": "SendGrid", "smtpeter": "SMTPeter"}
    for api_name, example in examples.items():
        vp = qsub.add_parser(
            api_name,
            parents=[common],
            help=f"{vendors[api_name]} stats, the same paths and parameters as its API",
            description=f"Answer as the {vendors[api_name]} API would, for the endpoint "
            f"PATH and NAME=VALUE parameters (repeat a name for several values), e.g. "
            f"`logstats query {api_name} {example}`. Through a running `logstats serve` "
            "when it serves this database, else from the file (read-only, as an admin).",
        )
        vp.add_argument("path", metavar="PATH", help="the API path, e.g. " + example.split()[0])
        vp.add_argument("params", nargs="*", metavar="NAME=VALUE")

    ps = sub.add_parser(
        "parse",
        help="run the grammar over files and report what it recognised",
        description="Report in the style of fail2ban-regex: lines, parsed by kind, irrelevant "
        "by reason, unknown by reason, and the first unknown lines. Reads nothing into a store.",
    )
    ps.add_argument("paths", nargs="+", metavar="FILE")
    ps.add_argument("--mta", choices=[m.value for m in Mta], help="default: detected per file")
    ps.add_argument(
        "--show",
        type=int,
        default=10,
        metavar="N",
        help="how many unknown lines to print (default 10)",
    )

    sv = sub.add_parser(
        "serve",
        parents=[common],
        help="follow the configured logs and answer queries (the systemd service)",
        description="Follow the logs listed under `sources` in the config through appends, "
        "rotation and truncation, count every line exactly once, and answer queries on "
        "serve.socket. SIGTERM commits and exits 0; SIGHUP reloads the config.",
    )
    sv.set_defaults(shape=None)

    cc = sub.add_parser(
        "check-config",
        parents=[common],
        help="validate a configuration and print the effective settings",
        description="Validate the configuration and report every mistake at once, one line "
        "each naming the file and the dotted key (exit 1). A valid one: the effective value of "
        "every setting as `key = JSON` lines (defaults included, API keys masked), then what "
        "follows from them as `#` lines; warnings (a missing accounts.userdomains) on stderr.",
    )
    cc.set_defaults(shape=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    configure_logging()
    args = build_parser().parse_args(argv)
    try:
        if args.command == "backfill":
            return cmd_backfill(args)
        if args.command == "query":
            return cmd_query(args)
        if args.command == "parse":
            return cmd_parse(args)
        if args.command == "serve":
            return cmd_serve(args)
        return cmd_check_config(args)
    except LogstatsError as exc:
        print(f"logstats: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `logstats query ... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        message = _operational(exc)
        if message is None:
            raise
        print(f"logstats: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "logstats: interrupted; the store holds every batch committed so far", file=sys.stderr
        )
        return 130


def _operational(exc: Exception) -> str | None:
    """One line for a failure of the database the commands did not foresee, else None."""
    import duckdb

    if isinstance(exc, duckdb.Error):
        return f"database: {cause_of(exc)}"
    return None


@contextlib.contextmanager
def _opened(store: Store) -> Iterator[Store]:
    """Close ``store`` at the end; a failure to close never hides the error that ended it."""
    import duckdb

    try:
        yield store
    except BaseException:
        with contextlib.suppress(duckdb.Error):
            store.close()
        raise
    try:
        store.close()
    except duckdb.Error as exc:
        raise StoreError(f"database {store.path}: cannot close it: {cause_of(exc)}") from exc


def _readable(db: str, exc: Exception) -> StoreError:
    return StoreError(
        f"database {db} cannot be read: {cause_of(exc)} (is it damaged? restore it from a "
        "backup, or move it away and backfill the logs again)"
    )


def _load(args: argparse.Namespace) -> config_mod.Config:
    cfg = config_mod.load(args.config)
    if args.command in ("backfill", "serve"):
        for warning in cfg.warnings():
            structlog.get_logger().warning("config_warning", detail=warning)
    return cfg


def _db(args: argparse.Namespace, cfg: config_mod.Config) -> str:
    return str(args.db or cfg.db)


class _ProgressBar:
    """One refreshed line on a terminal: file, lines, lines/s."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.last = 0.0

    def __call__(self, path: str, lines: int, offset: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.25:
            return
        self.last = now
        rate = lines / max(now - self.start, 1e-9)
        sys.stderr.write(
            f"\r{Path(path).name}: {lines:,} lines, {rate:,.0f} lines/s, {offset / 1e6:,.1f} MB "
        )
        sys.stderr.flush()

    def done(self) -> None:
        sys.stderr.write("\n")


def _backfill_file(ingestor: Ingestor, info: FileInfo, mta: str, log: Any) -> int:
    bar = _ProgressBar() if sys.stderr.isatty() else None
    t0 = time.monotonic()
    report = ingestor.ingest(info, mta, bar)
    if bar is not None:
        bar.done()
    seconds = time.monotonic() - t0
    log.info(
        "file_read" if report.skipped is None else "file_skipped",
        path=report.path,
        mta=mta,
        lines=report.lines,
        records=report.records,
        irrelevant=report.ignored,
        unknown=sum(report.unparsed.values()),
        unknown_by_reason=dict(report.unparsed),
        events=report.events,
        anomalies=dict(report.anomalies),
        lines_per_s=round(report.lines / seconds) if seconds > 0 else None,
        reason=report.skipped,
    )
    if report.isolated:
        log.error(
            "rows_isolated",
            path=report.path,
            rows=report.isolated,
            reason=report.isolated_reason,
            kept_in="quarantine",
            hint="the rest was committed",
        )
    return report.lines


def cmd_backfill(args: argparse.Namespace) -> int:
    """Read every path it can; one line on stderr for each it cannot, and exit 1 then."""
    import duckdb

    from logstats.ingest import Ingestor
    from logstats.pipeline import compact_since, stop_resource_tracker
    from logstats.store import Store

    cfg = _load(args)
    log = structlog.get_logger()
    failed: list[str] = []

    def problem(exc: SourceError) -> None:
        failed.append(str(exc))
        print(f"logstats: error: {exc}", file=sys.stderr, flush=True)

    with _opened(Store(_db(args, cfg), memory_limit=cfg.memory_limit)) as store:
        ingestor = Ingestor(store, cfg, now=lambda: datetime.now(UTC))

        def interrupt(signum: int, frame: object) -> None:
            if ingestor.interrupted:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now (the store stays consistent)
            ingestor.interrupted = True

        previous = signal.signal(signal.SIGINT, interrupt)
        try:
            started = time.monotonic()
            plan = ingestor.plan(args.paths, args.mta, on_problem=problem)
            total_lines = 0
            for info, mta in plan:
                try:
                    total_lines += _backfill_file(ingestor, info, mta, log)
                except SourceError as exc:  # what was read of it is stored; on to the next
                    problem(exc)
                if ingestor.interrupted:
                    break
        finally:
            signal.signal(signal.SIGINT, previous)
            ingestor.close()
            stop_resource_tracker()  # no process of ours outlives the command
        if ingestor.interrupted:
            log.warning(
                "backfill_interrupted",
                lines=total_lines,
                hint="every batch read so far is stored; run the same command to continue",
            )
            return 130
        try:
            compact_since(store, ingestor.earliest_hour)
            pruned = store.prune(datetime.now(UTC) - timedelta(days=cfg.retention_days))
        except duckdb.Error as exc:
            raise StoreError(
                f"database {store.path}: cannot fold the counters: {cause_of(exc)} (what was "
                "read is stored; the next backfill folds them)"
            ) from exc
        seconds = time.monotonic() - started
        log.info(
            "backfill_done",
            files=len(plan),
            failed=len(failed),
            lines=total_lines,
            events_pruned=pruned,
            seconds=round(seconds, 3),
            lines_per_s=round(total_lines / seconds) if seconds > 0 else None,
            **({"parse_workers_lost": ingestor.workers_lost} if ingestor.workers_lost else {}),
        )
    return 1 if failed else 0


def cmd_query_api(args: argparse.Namespace) -> int:
    """``logstats query mailgun|sendgrid|smtpeter PATH NAME=VALUE...``."""
    from logstats import api
    from logstats.store import Store

    cfg = _load(args)
    db = _db(args, cfg)
    params: dict[str, list[str]] = {}
    for item in args.params:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise LogstatsError(f"{item!r}: parameters are NAME=VALUE")
        params.setdefault(name, []).append(value)
    path = args.path if args.path.startswith("/") else "/" + args.path
    answer = _ask_daemon(cfg.socket, db, params, route=path)
    if answer is not None:
        status, body = answer
    else:
        import duckdb

        with _opened(Store(db, read_only=True)) as store:
            try:
                status, body, _ = api.LocalRouter(store.con, cfg).route(
                    "GET", path, params, {}, None
                )
            except duckdb.Error as exc:
                raise _readable(db, exc) from exc
    print(body if isinstance(body, str) else json.dumps(body, indent=2))
    return 0 if status < 400 else 1


def cmd_query(args: argparse.Namespace) -> int:
    if args.shape != "emailtrack":
        return cmd_query_api(args)
    from logstats import api, query
    from logstats.store import Store

    cfg = _load(args)
    db = _db(args, cfg)
    params = {
        "account": args.account or "",
        "all": "1" if args.all else "",
        "start": args.start.isoformat() if args.start else "",
        "end": args.end.isoformat() if args.end else "",
        "days": str(args.days or ""),
        "deliverytype": args.deliverytype or "",
        "nosize": "1" if args.nosize else "",
        "nosuccess": "1" if args.nosuccess else "",
    }
    params = {k: v for k, v in params.items() if v}
    import duckdb

    try:
        asked = _ask_daemon(cfg.socket, db, params)
        answer = asked[1] if asked is not None else None
        if answer is None:
            with _opened(Store(db, read_only=True)) as store:
                try:
                    answer = api.emailtrack(store.con, params)
                except duckdb.Error as exc:
                    raise _readable(db, exc) from exc
    except (LogstatsError, api.BadRequest) as exc:
        if args.all:
            raise LogstatsError(str(exc)) from exc
        print(json.dumps(query.emailtrack_error(str(exc)), indent=2))
        return 1
    if args.all and args.format != "json":
        print(query.emailtrack_table(answer))
    else:
        print(json.dumps(answer, indent=2))
    if not args.all and answer["cpanelresult"]["event"]["result"] != 1:
        return 1
    return 0


def _ask_daemon(
    socket_path: str, db: str, params: Any, route: str = "/v1/emailtrack"
) -> tuple[int, Any] | None:
    """(status, answer) from a running ``logstats serve`` for this database, else None."""
    from logstats import api

    if not os.path.exists(socket_path):
        return None
    try:
        status, health = api.get(socket_path, "/healthz", {})
        if status != 200 or os.path.realpath(health.get("db", "")) != os.path.realpath(db):
            return None
        return api.get(socket_path, route, params)
    except (OSError, ValueError):
        return None


def cmd_parse(args: argparse.Namespace) -> int:
    from logstats.grammar import Clock, detect_mta, make_parser
    from logstats.ingest import expand
    from logstats.sources import inspect, read_lines

    tz = config_mod.local_zone()
    for path in expand(args.paths):
        info = inspect(path)
        mta = args.mta or detect_mta(info.first_lines)
        if mta is None:
            raise LogstatsError(
                f"{path}: cannot tell whether it is an Exim or Postfix log (use --mta)"
            )
        parser = make_parser(mta, Clock(tz, datetime.fromtimestamp(info.mtime, UTC)))
        kinds: Counter[str] = Counter()
        ignored: Counter[str] = Counter()
        unknown: Counter[str] = Counter()
        shown: list[str] = []
        total = 0
        for chunk in read_lines(path, 0, final=True, max_line_length=65536):
            unknown["too-long"] += chunk.too_long
            total += len(chunk.lines) + chunk.too_long
            for line in chunk.lines:
                r = parser.parse(line)
                if isinstance(r, Ignored):
                    ignored[r.kind] += 1
                elif isinstance(r, Unparsed):
                    unknown[r.reason] += 1
                    if len(shown) < args.show:
                        shown.append(f"  [{r.reason}] {line[:300]}")
                else:
                    kinds[type(r).__name__.lower()] += 1
        unknown = +unknown
        print(f"{path} ({mta})")
        print(
            f"{total} lines, {sum(kinds.values())} parsed, {sum(ignored.values())} "
            f"irrelevant, {sum(unknown.values())} unknown"
        )
        for title, counter in (("parsed", kinds), ("irrelevant", ignored), ("unknown", unknown)):
            if counter:
                print(f"{title}:")
                for k, n in counter.most_common():
                    print(f"  {n:8d}  {k}")
        if shown:
            print(f"first unknown lines ({len(shown)}):")
            print("\n".join(shown))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from logstats.daemon import Daemon

    configure_logging(sys.stdout)  # the service logs to stdout: systemd keeps it
    cfg = _load(args)
    if args.db:
        cfg = replace(cfg, db=args.db)
    if not cfg.sources:
        raise LogstatsError(
            f"{cfg.path or 'built-in defaults'}: no `sources` to follow "
            "(list the MTA logs under sources:)"
        )
    return Daemon(cfg, structlog.get_logger()).run()


def cmd_check_config(args: argparse.Namespace) -> int:
    """Every setting's effective value (``key = JSON`` lines), then what follows from them;
    warnings on stderr.  A broken file: every mistake on stderr, one line each, exit 1."""
    import glob

    from logstats.errors import ConfigError

    try:
        cfg = config_mod.load(args.config)
        table = cfg.domain_map()
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"logstats: error: {line}", file=sys.stderr)
        return 1
    values = config_mod.settings(cfg)
    notes = {"timezone": f"the machine's zone: {cfg.tz()}"} if cfg.timezone is None else {}
    if args.db:
        values["store.path"] = args.db
        notes["store.path"] = f"from --db (the config's: {cfg.db})"
    if cfg.workers == 0:
        notes["ingest.workers"] = f"one parser process per core: {os.cpu_count() or 1}"
    if cfg.tcp is None:
        notes["api.tcp"] = "off: the API answers on serve.socket only"
    print(f"# {cfg.where}: valid")
    for key, value in values.items():
        note = f"  # {notes[key]}" if key in notes else ""
        print(f"{key} = {json.dumps(value, ensure_ascii=False)}{note}")
    print("# derived")
    listed = set(table) - {k.lower() for k in cfg.domains}
    print(
        f"# account map: {len(table)} domains of {len(set(table.values()))} accounts "
        f"({len(listed)} from accounts.userdomains, {len(cfg.domains)} from accounts.domains)"
    )
    if not cfg.sources:
        print("# sources: none (`logstats serve` needs some; backfill takes paths)")
    for i, source in enumerate(cfg.sources):
        mta = source.mta or "detected from the content"
        if glob.has_magic(source.path):
            found = f"{len(glob.glob(source.path))} files match now"
        else:
            found = (
                "exists" if os.path.exists(source.path) else "not there yet (followed once it is)"
            )
        print(f"# sources[{i}]: {source.path} ({mta}): {found}")
    print(f"# api keys: {len(cfg.api_keys)}; socket admins: {', '.join(cfg.admins) or 'none'}")
    for warning in cfg.warnings():
        print(f"logstats: warning: {warning}", file=sys.stderr)
    return 0
