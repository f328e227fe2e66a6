"""Command line: ``logstats backfill | query | search | trace | report | parse | serve |
check-config | example``.

Answers and data go to stdout, logs to stderr, for every command.  structlog is
configured here, once: JSON lines when stderr is not a terminal, readable console output
when it is, and on the journal (``$JOURNAL_STREAM``) JSON lines with their sd-daemon
priority prefix.  A ``LogstatsError`` becomes one line on stderr and exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO

import structlog

from logstats import __version__
from logstats import config as config_mod
from logstats.errors import LogstatsError, SourceError, StoreError, cause_of
from logstats.model import Ignored, Mta, Unparsed

if TYPE_CHECKING:
    from logstats.ingest import FileReport, Ingestor
    from logstats.sources import FileInfo
    from logstats.store import Store

# sd-daemon(3) priority prefixes: journald files each line at its level
PRIORITIES = {"critical": 2, "exception": 3, "error": 3, "warning": 4, "warn": 4, "info": 6}
_log_to = {"journal": False}  # stderr is the journal: every line carries its <N> prefix


def on_journal(stream: TextIO) -> bool:
    """``stream`` is the journal: ``$JOURNAL_STREAM`` names its device and inode."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):
        return False
    return bool(value) and value == f"{st.st_dev}:{st.st_ino}"


def _no_empty_values(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """Leave out ``None`` and empty values (``reason=None unknown_by_reason={}``)."""
    return {k: v for k, v in event.items() if not (v is None or (_is_sized(v) and not v))}


def _is_sized(value: object) -> bool:
    return isinstance(value, str | dict | list | tuple | set)


def _priority(_: Any, method: str, rendered: str) -> str:
    return f"<{PRIORITIES.get(method, 7)}>{rendered}"


def configure_logging(stream: TextIO = sys.stderr) -> None:
    """Every command logs to stderr (answers and data go to stdout): readable console lines
    on a terminal, JSON lines otherwise; on the journal each line starts with its
    sd-daemon priority (``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>`` debug)."""
    journal = _log_to["journal"] = on_journal(stream)
    processors: list[Any] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if stream.isatty() and not journal:
        processors += [_no_empty_values, structlog.dev.ConsoleRenderer()]
    else:
        processors.append(structlog.processors.JSONRenderer())
    if journal:
        processors.append(_priority)
    structlog.configure(
        processors=processors,
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )


def error_line(message: str) -> None:
    """One ``logstats: error: ...`` line on stderr (at priority error on the journal)."""
    prefix = "<3>" if _log_to["journal"] else ""
    print(f"{prefix}logstats: error: {message}", file=sys.stderr, flush=True)


def parse_time(value: str) -> datetime:
    """A time for --start/--end (logstats.timeparse: YYYYMMDD, ISO 8601, Unix seconds)."""
    from logstats.timeparse import parse_time as parse

    try:
        return parse(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


# `logstats example NAME`: (data package, file name) of the files that ship in the wheel,
# packaged from config/, systemd/ and docs/ (pyproject.toml [tool.setuptools.package-dir])
SHIPPED = {
    "config": ("logstats.examples", "logstats.example.yaml", "config"),
    "unit": ("logstats.unitfiles", "logstats.service", "systemd"),
    "sysusers": ("logstats.unitfiles", "logstats.conf", "systemd"),
    "report-service": ("logstats.unitfiles", "logstats-report.service", "systemd"),
    "report-timer": ("logstats.unitfiles", "logstats-report.timer", "systemd"),
    "manpage": ("logstats.manual", "logstats.1", "docs"),
}


def shipped_file(name: str) -> str:
    """The text of a shipped file: from the installed package, else from the checkout."""
    from importlib import resources

    package, filename, folder = SHIPPED[name]
    try:
        return resources.files(package).joinpath(filename).read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        pass
    checkout = Path(__file__).resolve().parent.parent / folder / filename
    try:
        return checkout.read_text(encoding="utf-8")
    except OSError as exc:
        raise LogstatsError(
            f"{filename} is not installed with this logstats ({exc.strerror}: {checkout})"
        ) from exc


def cmd_example(args: argparse.Namespace) -> int:
    sys.stdout.write(shipped_file(args.file))
    return 0


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
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="what to do (COMMAND --help)"
    )

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
        "paths", nargs="*", metavar="PATH|GLOB", help="log files; - reads standard input"
    )
    bf.add_argument(
        "--journal",
        action="store_true",
        help="also read the config's journal sources (sources[].journal), each from its "
        "stored cursor to what the journal holds now",
    )
    bf.add_argument(
        "--mta", choices=[m.value for m in Mta], help="the files' MTA (default: detected per file)"
    )
    bf.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar per file on stderr: percentage of its bytes, ETA, lines and "
        "lines/s (default: only when stderr is a terminal)",
    )

    q = sub.add_parser(
        "query",
        help="answer in the shape of a mail statistics API",
        description="Answer from the store in the shape of a mail statistics API: cPanel "
        "EmailTrack::stats, or the Mailgun, SendGrid or SMTPeter stats API. Through a "
        "running `logstats serve` when it serves the database, else from the file.",
    )
    qsub = q.add_subparsers(
        dest="shape", required=True, metavar="SHAPE", help="the API (SHAPE --help)"
    )
    _query_parsers(qsub, common)

    ps = sub.add_parser(
        "parse",
        help="run the grammar over files and report what it recognised",
        description="Report in the style of fail2ban-regex: lines, parsed by kind, irrelevant "
        "by reason, unknown by reason, and the first unknown lines. Reads nothing into a store.",
    )
    ps.add_argument("paths", nargs="+", metavar="FILE", help="log files (plain, .gz, .bz2, .xz)")
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

    _track_parsers(sub, common)
    _fleet_parsers(sub, common)

    ex = sub.add_parser(
        "example",
        help="print a file that ships with logstats: config, unit, sysusers, report-service, "
        "report-timer or manpage",
        description="Print one of the files installed with logstats to stdout, to lay it "
        "down where it belongs (see docs/systemd.md): config (the example configuration, "
        "config/logstats.example.yaml), unit (the systemd unit, systemd/logstats.service), "
        "sysusers (the sysusers.d file of the logstats user, systemd/logstats.conf), "
        "report-service and report-timer (the daily mailed report, "
        "systemd/logstats-report.service and .timer) or "
        "manpage (this manual page, docs/logstats.1).",
    )
    ex.add_argument(
        "file", choices=sorted(SHIPPED), metavar="NAME", help="which: " + ", ".join(sorted(SHIPPED))
    )
    ex.set_defaults(shape=None)
    return parser


def _query_parsers(qsub: Any, common: argparse.ArgumentParser) -> None:
    """The shapes of `logstats query` (and of `logstats fleet query`)."""
    et = qsub.add_parser(
        "emailtrack",
        parents=[common],
        help="cPanel API2 EmailTrack::stats",
        description="Print cPanel API2 EmailTrack::stats (cpanelresult JSON) for one account, "
        "or a row per account with --all. Windows are UTC, at hour granularity.",
    )
    who = et.add_mutually_exclusive_group(required=True)
    who.add_argument(
        "--account",
        metavar="NAME",
        help="the account (cPanel user); a pseudo-account as --account=-remote-. One that "
        "does not exist (not in the account map, nothing ever counted) is a failure",
    )
    who.add_argument("--all", action="store_true", help="every account")
    et.add_argument(
        "--start",
        type=parse_time,
        metavar="T",
        help="window start (default: the beginning). T is YYYYMMDD or YYYYMMDDhhmmss "
        "(UTC; a valid date wins), ISO 8601 (UTC without an offset), or other digits: "
        "Unix seconds",
    )
    end = et.add_mutually_exclusive_group()
    end.add_argument(
        "--end", type=parse_time, metavar="T", help="window end, exclusive (T as for --start)"
    )
    end.add_argument(
        "--days", type=positive_int, metavar="N", help="window: the last N days up to now"
    )
    et.add_argument(
        "--deliverytype",
        choices=["remote", "local", "remote_or_faildefer"],
        help="count only remote or only local deliveries (SUCCESSCOUNT, TOTALSIZE); "
        "remote_or_faildefer: remote deliveries plus all deferrals and failures",
    )
    et.add_argument(
        "--host",
        metavar="NAME",
        help="count only the lines this syslog host logged (one MTA of a central log; "
        "default: every host)",
    )
    et.add_argument("--nosize", action="store_true", help="leave out TOTALSIZE")
    et.add_argument("--nosuccess", action="store_true", help="leave out SUCCESSCOUNT")
    et.add_argument(
        "--format",
        choices=["table", "json"],
        default=None,
        help="table: aligned text columns; json: cPanel's cpanelresult (one account) or an "
        "object by account (--all). Default: json with --account, table with --all",
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
        vp.add_argument(
            "params",
            nargs="*",
            metavar="NAME=VALUE",
            help="the API's query parameters (a name repeated: several values)",
        )


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
        if args.command == "example":
            return cmd_example(args)
        if args.command in TRACK_COMMANDS:
            return TRACK_COMMANDS[args.command](args)
        if args.command == "export":
            return cmd_export(args)
        if args.command == "fleet":
            return cmd_fleet(args)
        return cmd_check_config(args)
    except LogstatsError as exc:
        error_line(str(exc))
        return 1
    except BrokenPipeError:  # `logstats query ... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:
        message = _operational(exc)
        if message is None:
            raise
        error_line(message)
        return 1
    except KeyboardInterrupt:
        prefix = "<4>" if _log_to["journal"] else ""
        print(
            f"{prefix}logstats: interrupted; the store holds every batch committed so far",
            file=sys.stderr,
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


def lines_per_s(lines: int, seconds: float) -> int | None:
    """The one rate of a file's read: the progress bar's and the ``file_read`` line's."""
    return round(lines / seconds) if seconds > 0 else None


def content_size(info: FileInfo) -> int | None:
    """About how many bytes a file's content has (what the read offsets count), or None.

    Plain files: their size. gzip: the size in its trailer (modulo 4 GiB, so the smallest
    size not below the compressed one). xz: the sizes in the last stream's index. bzip2
    and standard input: unknown.
    """
    if info.stream:
        return None
    try:
        size = os.path.getsize(info.path)
        if not info.compressed:
            return size
        with open(info.path, "rb") as f:
            magic = f.read(6)
            if magic[:2] == b"\x1f\x8b" and size >= 18:
                f.seek(-4, os.SEEK_END)
                isize = int.from_bytes(f.read(4), "little")
                while isize < size:
                    isize += 1 << 32
                return isize
            if magic == b"\xfd7zXZ\x00" and size >= 32:
                return _xz_size(f, size)
    except (OSError, ValueError, IndexError):  # damaged: the bar shows bytes read only
        return None
    return None


def _xz_size(f: BinaryIO, size: int) -> int | None:
    """The uncompressed size of an xz file's last stream, from its index."""
    f.seek(-12, os.SEEK_END)
    footer = f.read(12)
    if footer[10:] != b"YZ":
        return None
    index_size = (int.from_bytes(footer[4:8], "little") + 1) * 4
    if index_size > min(size - 24, 1 << 24):
        return None
    f.seek(-12 - index_size, os.SEEK_END)
    index = f.read(index_size)
    pos = 1  # after the index indicator (0x00)

    def number() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            byte = index[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    if not index or index[0] != 0:
        return None
    total = 0
    for _ in range(number()):
        number()  # unpadded size
        total += number()
    return total


class _ProgressBar:
    """A tqdm bar per file on stderr: bytes of the file's content read (percentage, ETA),
    lines and lines/s; drawn a last time with the numbers the ``file_read`` line logs."""

    def __init__(self, name: str, total: int | None, initial: int, started: float) -> None:
        from tqdm import tqdm

        tqdm.monitor_interval = 0  # no monitor thread
        if total is not None:
            total = max(total, initial)
        self.started = started
        self.bar = tqdm(
            desc=name,
            total=total,
            initial=initial,
            unit="B",
            unit_scale=True,
            unit_divisor=1000,
            file=sys.stderr,
            mininterval=0.25,
            dynamic_ncols=True,
            leave=True,
            bar_format=(
                "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}B/{total_fmt}B{postfix} "
                "[{elapsed}<{remaining}]"
                if total is not None
                else "{desc}: {n_fmt}B{postfix} [{elapsed}]"
            ),
        )

    def _postfix(self, lines: int, seconds: float) -> None:
        rate = lines_per_s(lines, seconds)
        text = f"{lines:,} lines" + ("" if rate is None else f", {rate:,} lines/s")
        self.bar.set_postfix_str(text, refresh=False)

    def __call__(self, path: str, lines: int, offset: int) -> None:
        self._postfix(lines, time.monotonic() - self.started)
        if offset > self.bar.n:
            self.bar.update(offset - self.bar.n)  # redraws at most every mininterval

    def done(self, lines: int, seconds: float, complete: bool) -> None:
        """The last draw: 100 % when the file was read to its end."""
        if complete:
            total = self.bar.total
            self.bar.total = self.bar.n if total is None else max(total, self.bar.n)
            self.bar.n = self.bar.total
        self._postfix(lines, seconds)
        self.bar.refresh()
        self.bar.close()


def _backfill_file(ingestor: Ingestor, info: FileInfo, mta: str, log: Any, progress: bool) -> int:
    t0 = time.monotonic()
    bars: list[_ProgressBar] = []

    def draw(path: str, lines: int, offset: int) -> None:
        if not bars and not lines:
            return  # nothing new (yet): no bar
        if not bars:  # a file with something to read: the bar starts at its checkpoint
            known = ingestor.store.positions().get(info.head_hash)
            start = known.byte_offset if known is not None else 0
            bars.append(_ProgressBar(Path(path).name, content_size(info), start, t0))
        bars[0](path, lines, offset)

    try:
        report = ingestor.ingest(info, mta, draw if progress else None)
    except BaseException:
        for bar in bars:
            bar.bar.close()
        raise
    seconds = time.monotonic() - t0
    for bar in bars:
        bar.done(report.lines, seconds, complete=report.skipped is None)
    log.info(
        "file_read" if report.skipped is None else "file_skipped",
        path=report.path,
        mta=mta,
        **_read_fields(report, seconds),
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


def _read_fields(report: FileReport, seconds: float) -> dict[str, Any]:
    """What a ``file_read`` or ``journal_read`` line says of one source's report."""
    return {
        "lines": report.lines,
        "records": report.records,
        "irrelevant": report.ignored,
        "unknown": sum(report.unparsed.values()),
        "unknown_by_reason": dict(report.unparsed),
        "events": report.events,
        "anomalies": dict(report.anomalies),
        "lines_per_s": lines_per_s(report.lines, seconds),
        "reason": report.skipped,
    }


def _backfill_journal(ingestor: Ingestor, source: Any, log: Any) -> int:
    """One journal source, from its stored cursor to the journal's end."""
    from logstats.journal import JournalReader

    reader = JournalReader(source.journal, source.mta, ingestor.store.journal_cursor)
    t0 = time.monotonic()
    report = ingestor.ingest_journal(reader)
    seconds = time.monotonic() - t0
    for note in reader.notes:
        log.warning(note.event, path=note.path, detail=note.detail, **note.fields)
    errors = [n.detail for n in reader.notes if n.event == "source_error"]
    log.info(
        "journal_read" if report.skipped is None else "journal_skipped",
        path=report.path,
        source=reader.source,
        mta=report.mta,
        **_read_fields(report, seconds),
    )
    if errors:
        raise SourceError(f"{reader.path}: {errors[0]}")
    return report.lines


def _backfill_journals(ingestor: Ingestor, journals: list[Any], log: Any, problem: Any) -> int:
    lines = 0
    for source in journals:
        if ingestor.interrupted:
            break
        try:
            lines += _backfill_journal(ingestor, source, log)
        except SourceError as exc:
            problem(exc)
    return lines


def _journal_sources(args: argparse.Namespace, cfg: config_mod.Config) -> list[Any]:
    """The journal sources ``backfill --journal`` reads (none without it)."""
    journals = [s for s in cfg.sources if s.journal is not None] if args.journal else []
    if not args.paths and not args.journal:
        raise LogstatsError("backfill: give paths to read, or --journal")
    if args.journal and not journals:
        raise LogstatsError(
            f"{cfg.path or 'built-in defaults'}: --journal: no journal source under sources: "
            "(sources: [{journal: {units: [...]}, mta: postfix}])"
        )
    return journals


def cmd_backfill(args: argparse.Namespace) -> int:
    """Read every path it can; one line on stderr for each it cannot, and exit 1 then."""
    import duckdb

    from logstats.ingest import Ingestor
    from logstats.pipeline import compact_since, stop_resource_tracker
    from logstats.store import Store

    cfg = _load(args)
    journals = _journal_sources(args, cfg)
    log = structlog.get_logger()
    failed: list[str] = []

    def problem(exc: SourceError) -> None:
        failed.append(str(exc))
        error_line(str(exc))

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
            progress = args.progress
            if progress is None:  # on a terminal, not on a pipe or the journal
                progress = sys.stderr.isatty() and not _log_to["journal"]
            total_lines = 0
            for info, mta in plan:
                try:
                    total_lines += _backfill_file(ingestor, info, mta, log, progress)
                except SourceError as exc:  # what was read of it is stored; on to the next
                    problem(exc)
                if ingestor.interrupted:
                    break
            total_lines += _backfill_journals(ingestor, journals, log, problem)
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
            journals=len(journals),
            failed=len(failed),
            lines=total_lines,
            events_pruned=pruned,
            seconds=round(seconds, 3),
            lines_per_s=round(total_lines / seconds) if seconds > 0 else None,
            **({"parse_workers_lost": ingestor.workers_lost} if ingestor.workers_lost else {}),
        )
    return 1 if failed else 0


def api_request(args: argparse.Namespace) -> tuple[str, dict[str, list[str]]]:
    """The path and the NAME=VALUE parameters of ``logstats [fleet] query VENDOR PATH ...``."""
    params: dict[str, list[str]] = {}
    for item in args.params:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise LogstatsError(f"{item!r}: parameters are NAME=VALUE")
        params.setdefault(name, []).append(value)
    return (args.path if args.path.startswith("/") else "/" + args.path), params


def cmd_query_api(args: argparse.Namespace) -> int:
    """``logstats query mailgun|sendgrid|smtpeter PATH NAME=VALUE...``."""
    from logstats import api
    from logstats.store import Store

    cfg = _load(args)
    db = _db(args, cfg)
    path, params = api_request(args)
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

    cfg = _load(args)
    db = _db(args, cfg)
    return print_emailtrack(args, lambda params: _emailtrack(cfg, db, params))


def print_emailtrack(args: argparse.Namespace, ask: Callable[[dict[str, str]], Any]) -> int:
    """Print ``logstats query emailtrack``'s answer (``ask``: parameters -> the EmailTrack
    answer, from this host's store or daemon, or from the fleet); the exit status."""
    from logstats import api, query

    params = {
        "account": args.account or "",
        "all": "1" if args.all else "",
        "start": args.start.isoformat() if args.start else "",
        "end": args.end.isoformat() if args.end else "",
        "days": str(args.days or ""),
        "deliverytype": args.deliverytype or "",
        "nosize": "1" if args.nosize else "",
        "nosuccess": "1" if args.nosuccess else "",
        "host": args.host or "",
    }
    params = {k: v for k, v in params.items() if v}
    table = args.format == "table" or (args.all and args.format is None)
    try:
        answer = ask(params)
    except (LogstatsError, api.BadRequest) as exc:
        if args.all or table:
            raise LogstatsError(str(exc)) from exc
        print(json.dumps(query.emailtrack_error(str(exc)), indent=2))
        return 1
    if not args.all:
        event = answer["cpanelresult"]["event"]
        if event["result"] != 1:
            if table:
                raise LogstatsError(event.get("reason") or "the query failed")
            print(json.dumps(answer, indent=2))
            return 1
        if table:
            answer = {args.account: answer["cpanelresult"]["data"][0]}
    print(query.emailtrack_table(answer) if table else json.dumps(answer, indent=2))
    return 0


def _emailtrack(cfg: config_mod.Config, db: str, params: dict[str, str]) -> dict[str, Any]:
    """The EmailTrack answer from a running daemon for ``db``, else from the file."""
    import duckdb

    from logstats import api
    from logstats.store import Store

    asked = _ask_daemon(cfg.socket, db, params)
    if asked is not None:
        return dict(asked[1])
    with _opened(Store(db, read_only=True)) as store:
        try:
            return api.emailtrack(store.con, params, cfg)
        except duckdb.Error as exc:
            raise _readable(db, exc) from exc


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
        if source.journal is not None:
            from logstats.journal import describe, source_id

            spec = source.journal
            where = spec.directory or "the local journal"
            there = spec.directory is None or os.path.isdir(spec.directory)
            print(
                f"# sources[{i}]: {describe(spec)} ({mta}): read with journalctl from {where}"
                f"{'' if there else ' (not there yet)'}; checkpoint key {source_id(spec)}"
            )
            continue
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


# -- Track Delivery: search, trace, report ------------------------------------------

TYPES = ("delivered", "deferred", "failed", "rejected", "inprogress")


# the filters of ``logstats search`` and ``logstats fleet search`` (trackview.SEARCH_FILTERS)
SEARCH_FILTER_HELP = (
    ("account", "the account (cPanel user)"),
    ("sender", "the sender address (* and ? are wildcards; case-insensitive)"),
    ("recipient", "the recipient address (* and ? are wildcards; case-insensitive)"),
    ("domain", "the sender's or the recipient's domain"),
    ("queue-id", "the MTA's queue id (also the ids continuing it after a content filter)"),
    ("message-id", "the Message-ID header, with or without <>"),
    ("tag", "a tag of the message (X-Mailgun-Tag and the like)"),
    ("host", "the syslog host that logged it (one MTA of a central log)"),
)


def _track_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """``logstats search``, ``trace`` and ``report``: the stored rows of every recipient."""
    se = sub.add_parser(
        "search",
        parents=[common],
        help="search the stored deliveries (Track Delivery), newest first",
        description="Print the stored outcomes of recipients (and messages still in the "
        "queue) that match every filter given. The default window is the 24 hours up to the "
        "newest stored row (not the clock, so an idle or copied store still answers). "
        "Exit status 0 when rows were found, 1 when none (as grep).",
    )
    for name, what in SEARCH_FILTER_HELP:
        se.add_argument(f"--{name}", metavar="VALUE", help=what)
    se.add_argument(
        "--type",
        action="append",
        choices=TYPES,
        help="only rows of this type; repeat for several (default: all of them)",
    )
    _window_args(se, "default: 24 hours before --end")
    se.add_argument(
        "--limit",
        type=positive_int,
        default=250,
        metavar="N",
        help="at most N rows (default 250)",
    )
    se.add_argument("--oldest-first", action="store_true", help="oldest rows first")
    _format_arg(
        se,
        "table: aligned columns, the reason cut to the terminal's width (60 "
        "characters off a terminal); json: one object per line, every column",
    )

    tr = sub.add_parser(
        "trace",
        parents=[common],
        help="print the whole life of one message by queue id or Message-ID",
        description="Print the life of one message: its receipt (sender, size, client, "
        "authentication, Message-ID), every delivery attempt with its reason and remote host, "
        "the queue ids it continued as after a content filter, the bounce about it, and "
        "whether it is complete or what is still in the queue. An id not stored is one line "
        "on stderr, exit 1.",
    )
    tr.add_argument("id", metavar="ID", help="a queue id, or a Message-ID (with or without <>)")
    _format_arg(tr, "table: lines for a terminal; json: an object per queue id")

    rp = sub.add_parser(
        "report",
        parents=[common],
        help="a pflogsumm-style daily report (plain text for mail, or JSON)",
        description="Print a report in pflogsumm's sections: Grand Totals, Per-Hour Traffic "
        "Summary, top senders, sender domains and recipient domains, top deferral, bounce "
        "and reject reasons. The totals are EmailTrack's: received + rejected = SENDCOUNT, "
        "bounced + rejected = FAILCOUNT of `logstats query emailtrack --all` summed over "
        "accounts for the same window. Times are UTC; the window is widened to whole hours.",
    )
    when = rp.add_mutually_exclusive_group()
    when.add_argument(
        "--day",
        type=_day,
        metavar="YYYY-MM-DD",
        help="the UTC day to report (default: the day before the newest stored row's day, "
        "so a morning timer reports yesterday)",
    )
    when.add_argument(
        "--start",
        type=parse_time,
        metavar="T",
        help="window start (T as for query emailtrack); with --end instead of --day",
    )
    rp.add_argument(
        "--end",
        type=parse_time,
        metavar="T",
        help="window end, exclusive (default with --start: the newest stored row)",
    )
    rp.add_argument(
        "--top",
        type=positive_int,
        default=10,
        metavar="N",
        help="rows in each top list (default 10)",
    )
    _format_arg(rp, "table: fixed-width text for mail; json: one object")


def _window_args(p: argparse.ArgumentParser, start_default: str) -> None:
    p.add_argument(
        "--start",
        type=parse_time,
        metavar="T",
        help=f"window start ({start_default}). T is YYYYMMDD or YYYYMMDDhhmmss (UTC), "
        "ISO 8601 (UTC without an offset), or other digits: Unix seconds",
    )
    p.add_argument(
        "--end",
        type=parse_time,
        metavar="T",
        help="window end, exclusive (default: just after the newest stored row)",
    )


def _format_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--format", choices=["table", "json"], default="table", help=what)


def _day(value: str) -> datetime:
    try:
        return datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a day (YYYY-MM-DD)") from None


def _track_answer(args: argparse.Namespace, request: dict[str, Any]) -> dict[str, Any]:
    """``trackview.answer`` from a running ``logstats serve`` for this database (DuckDB lets
    no other process open a file a writer holds), else from the file opened read-only."""
    import duckdb

    from logstats import trackview
    from logstats.store import Store

    cfg = _load(args)
    db = _db(args, cfg)
    asked = _ask_daemon(
        cfg.socket,
        db,
        {"command": args.command, "request": json.dumps(request)},
        route="/v1/track",
    )
    if asked is not None:
        status, body = asked
        if status != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else body
            raise LogstatsError(
                str(error) if status == 400 else f"logstats serve answered {status}: {error}"
            )
        return body
    with _opened(Store(db, read_only=True)) as store:
        try:
            return trackview.answer(store.con, args.command, request)
        except trackview.BadRequest as exc:
            raise LogstatsError(str(exc)) from exc
        except duckdb.Error as exc:
            raise _readable(db, exc) from exc


def _iso(ts: datetime | None) -> str | None:
    return ts.isoformat() if ts is not None else None


def cmd_search(args: argparse.Namespace) -> int:
    """``logstats search``: 0 with rows, 1 with none (as grep); errors are 1 with a line."""
    import shutil

    from logstats import trackview

    request = {
        "start": _iso(args.start),
        "end": _iso(args.end),
        **{k: getattr(args, k) for k in trackview.SEARCH_FILTERS},
        "types": args.type or list(TYPES),
        "limit": args.limit,
        "oldest_first": args.oldest_first,
    }
    rows = _track_answer(args, request)["rows"]
    if args.format == "json":
        for r in rows:
            print(json.dumps(r, ensure_ascii=False))
    elif rows:
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
        print(trackview.search_table([trackview.row_from_dict(r) for r in rows], width))
    return 0 if rows else 1


def cmd_trace(args: argparse.Namespace) -> int:
    from logstats import trackview

    rows = [trackview.row_from_dict(r) for r in _track_answer(args, {"id": args.id})["rows"]]
    if not rows:
        raise LogstatsError(f"{args.id}: no message with this queue id or Message-ID is stored")
    found = trackview.lives(rows)
    if args.format == "json":
        print(json.dumps({"id": args.id, "messages": [m.as_dict() for m in found]}, indent=2))
    else:
        print(trackview.trace_text(args.id, found))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import socket

    from logstats import trackview

    request = {
        "day": _iso(args.day),
        "start": _iso(args.start),
        "end": _iso(args.end),
        "top": args.top,
    }
    body = _track_answer(args, request)
    if args.format == "json":
        print(json.dumps(body, indent=2))
    else:
        sys.stdout.write(trackview.report_text(trackview.report_from_dict(body), socket.getfqdn()))
    return 0


TRACK_COMMANDS = {"search": cmd_search, "trace": cmd_trace, "report": cmd_report}


# -- the fleet: export to Parquet, and queries over every host's export -----------------


def _fleet_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    ex = sub.add_parser(
        "export",
        parents=[common],
        help="export counters, dimensions and Track Delivery rows as Parquet for the fleet",
        description="Write this store's hourly counters and dimensions (one row per key), "
        "its Track Delivery rows and the messages now in its queue as hive-partitioned "
        "Parquet, DIR/{counters,dims,events,pending}/host=H/date=YYYY-MM-DD/data.parquet, "
        "rewriting only the partitions whose content changed (each file is replaced whole; "
        "a day with no message left in the queue loses its pending file). Idempotent: a "
        "repeated export writes nothing; an interrupted one is finished by the next run. "
        "`logstats serve` does the same every export.every when export.directory is set.",
    )
    ex.add_argument(
        "--to", metavar="DIR", help="the export folder (default: export.directory of the config)"
    )
    ex.add_argument(
        "--host",
        metavar="NAME",
        help="this host's name, for rows whose log names no host (default: export.host of "
        "the config, else the machine's hostname)",
    )
    fl = sub.add_parser(
        "fleet",
        help="answer the API shapes and Track Delivery searches over every host's export",
        description="Answer as `logstats query` and `logstats search` do, over the Parquet "
        "export of every host in DIR (`logstats export`), with DuckDB or Apache Spark, or "
        "serve the stats shapes on HTTP (serve). INPROGRESSCOUNT is what each host's queue "
        "held at its last export.",
    )
    fl.add_argument("--from", dest="source", required=True, metavar="DIR", help="the export")
    fl.add_argument(
        "--engine",
        choices=["duckdb", "spark"],
        default="duckdb",
        help="duckdb (in-process, default) or spark (pyspark in local mode, local[2])",
    )
    fsub = fl.add_subparsers(
        dest="fleet_command", required=True, metavar="COMMAND", help="query, search or serve"
    )
    fleet_common = argparse.ArgumentParser(add_help=False)
    fleet_common.add_argument(
        "--config", metavar="FILE", help="YAML configuration (default: none; built-in defaults)"
    )
    fq = fsub.add_parser(
        "query",
        help="a shape of `logstats query` (emailtrack, mailgun, sendgrid, smtpeter)",
        description="As `logstats query`, over every host (or one: emailtrack --host NAME, "
        "host=NAME among the others' parameters).",
    )
    fqsub = fq.add_subparsers(
        dest="shape", required=True, metavar="SHAPE", help="the API (SHAPE --help)"
    )
    _query_parsers(fqsub, fleet_common)
    fs = fsub.add_parser(
        "search",
        parents=[fleet_common],
        help="a Track Delivery search (as `logstats search`) over every host",
        description="As `logstats search`, over every host's exported rows (no inprogress "
        "rows: the queued recipients are not exported). JSON rows carry the host.",
    )
    for name, what in SEARCH_FILTER_HELP:
        fs.add_argument(f"--{name}", metavar="VALUE", help=what)
    fs.add_argument(
        "--type",
        action="append",
        choices=TYPES[:-1],
        help="only rows of this type; repeat for several (default: all of them)",
    )
    _window_args(fs, "default: 24 hours before --end")
    fs.add_argument(
        "--limit", type=positive_int, default=250, metavar="N", help="at most N rows (default 250)"
    )
    fs.add_argument("--oldest-first", action="store_true", help="oldest rows first")
    _format_arg(fs, "table: aligned columns; json: one object per line, every column and host")
    fv = fsub.add_parser(
        "serve",
        parents=[fleet_common],
        help="serve EmailTrack::stats, Mailgun, SendGrid and SMTPeter stats on HTTP",
        description="Answer the stats APIs of `logstats serve` (cPanel EmailTrack::stats and "
        "WHM emailtrack_stats, Mailgun stats, SendGrid customer stats, SMTPeter tag stats) "
        "over every host, with the keys of api.keys (fleet-wide: a key's accounts, domains "
        "and tags on every host). Routes that read Track Delivery rows or a daemon's state "
        "answer 404. SIGTERM or SIGINT stops it (exit 0); READY=1 is sent to systemd.",
    )
    fv.add_argument(
        "--tcp", metavar="HOST:PORT", help="listen on this address (default: api.tcp of the config)"
    )
    fv.add_argument(
        "--socket", metavar="PATH", help="also (or only) listen on this Unix socket"
    )


def cmd_export(args: argparse.Namespace) -> int:
    from logstats.fleet import export
    from logstats.store import Store

    cfg = _load(args)
    db = _db(args, cfg)
    directory = args.to or cfg.export_directory
    if not directory:
        raise LogstatsError("no export folder: give --to DIR (or set export.directory)")
    host = args.host or cfg.export_host or export.default_host()
    with _opened(Store(db, read_only=True)) as store:
        try:
            result = export.export(store.con, directory, host)
        except OSError as exc:
            raise LogstatsError(f"export to {directory}: {cause_of(exc)}") from exc
    log = structlog.get_logger()
    log.info("export_done", to=str(directory), host=host, **export.summary(result))
    return 0


def cmd_fleet(args: argparse.Namespace) -> int:
    from logstats.fleet import cli as fleet_cli

    return fleet_cli.run(args)
