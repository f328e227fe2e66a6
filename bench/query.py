"""Answer latency of the query shapes on a year of hourly counters for many accounts.

Builds (and caches under ``bench/.data/``) a store holding ``--days`` of hourly counters and
dimension rows for ``--accounts`` accounts, through ``logstats.store.Store`` (real schema and
migrations), appended in time order as the daemon writes them, then ``Store.compact()``-ed.
Then times, for one account's window at a time:

1. in-process: the functions the API calls (``account_stats`` + ``query.emailtrack_answer``;
   ``SHAPES[name].parse`` -> ``series`` -> ``render``), each request on its own cursor;
2. over HTTP: ``logstats serve`` on that database, TCP on 127.0.0.1, an API key.

``--variants`` also applies candidate store changes to a copy of the database and times
the same in-process cases on it (before/after figures for a proposed change).

    python bench/query.py [--accounts 10000] [--days 365] [--runs 200] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import random
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import duckdb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from logstats import query as lquery  # noqa: E402
from logstats.metrics import render as render_metrics  # noqa: E402
from logstats.model import SeriesRequest, StatsRequest  # noqa: E402
from logstats.shapes import SHAPES  # noqa: E402
from logstats.store import Store, account_stats, series  # noqa: E402

DATA = ROOT / "bench" / ".data"
GEN_VERSION = 3  # bump when the generated data changes (invalidates the cache)
SHARED_TAGS = (
    "newsletter",
    "invoice",
    "password-reset",
    "order-confirmation",
    "welcome",
    "promo",
    "digest",
    "alert",
)
PROVIDERS = ("gmail", "outlook", "yahoo", "icloud", "gmx", "other")
RCPT_DOMAINS = (
    "gmail.com",
    "outlook.com",
    "hotmail.com",
    "yahoo.com",
    "icloud.com",
    "gmx.de",
    "web.de",
    "orange.fr",
    "comcast.net",
    "example.org",
)
HEAVY_SHARE = 0.01  # accounts active in ~95% of hours, with bigger counts and more domains


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- building ----------------------------------------------------------------------------------


def _u(*parts: str) -> str:
    """A uniform [0, 1) number from DuckDB's hash of the given SQL expressions."""
    return f"(hash({', '.join(parts)}) % 1000000) / 1000000.0"


def build(path: Path, accounts: int, days: int, seed: int, end: datetime) -> dict[str, Any]:
    """Create the store at ``path``; returns build facts (times, rows, size)."""
    for p in (path, Path(f"{path}.wal")):
        p.unlink(missing_ok=True)
    t0 = time.perf_counter()
    store = Store(path)
    con = store.con
    hours = days * 24
    start = end - timedelta(hours=hours)
    s = str(seed)
    # Accounts: cPanel-like names (a letter, then 6-11 of [0-9a-f]); 1% heavy; 1-3 sender
    # domains (heavy: 5); each active in a random 10-30% of hours (heavy: 95%).
    con.execute(
        f"""
        CREATE TEMP TABLE acct AS
        SELECT i AS id,
               chr(97 + (hash(i, {s}, 'c') % 26)::INT)
                 || substr(md5(i::VARCHAR || '-{s}'), 1, 6 + (i % 6)::INT) AS name,
               {_u("i", s, "'h'")} < {HEAVY_SHARE} AS heavy,
               CASE WHEN {_u("i", s, "'h'")} < {HEAVY_SHARE} THEN 5
                    ELSE 1 + (hash(i, {s}, 'd') % 3)::INT END AS ndom,
               CASE WHEN {_u("i", s, "'h'")} < {HEAVY_SHARE} THEN 0.95
                    ELSE 0.10 + 0.20 * {_u("i", s, "'p'")} END AS p
        FROM range({accounts}) t(i)
        """
    )
    con.execute(
        """
        CREATE TEMP TABLE dom AS
        SELECT a.id, d AS idx,
               CASE d WHEN 0 THEN a.name || '.com' WHEN 1 THEN 'shop.' || a.name || '.nl'
                      ELSE 'mail' || d::VARCHAR || '.' || a.name || '.net' END AS domain
        FROM acct a, range(5) r(d) WHERE d < a.ndom
        """
    )
    # Day-time hours are 3x as likely as night hours (mean factor 1.0).
    day = "CASE WHEN hour(h.b) BETWEEN 8 AND 19 THEN 1.5 ELSE 0.5 END"
    chunk_hours = 24 * 7  # one INSERT per week, in time order, like a long-running daemon
    counter_rows = dim_rows = 0
    for off in range(0, hours, chunk_hours):
        n = min(chunk_hours, hours - off)
        t_chunk = start + timedelta(hours=off)
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE act AS
            SELECT h.b AS bucket, a.id, a.name, a.heavy, d.idx, d.domain,
                   (hash(a.id, d.idx, epoch(h.b)::BIGINT, {s}) >> 1)::BIGINT AS r
            FROM (SELECT ?::TIMESTAMP + to_hours(k::BIGINT) AS b FROM range({n}) t(k)) h
            JOIN acct a ON {_u("a.id", "epoch(h.b)::BIGINT", s, "'a'")} < a.p * {day}
            JOIN dom d ON d.id = a.id
                AND (d.idx = 0 OR {_u("a.id", "d.idx", "epoch(h.b)::BIGINT", s)} < 0.35)
            """,
            [t_chunk.replace(tzinfo=None)],
        )
        # Counter deltas: one per key, and a second delta for ~25% of keys (a key touched
        # by two batches), which compact() folds.
        sends = "CASE WHEN heavy THEN 40 + r % 400 ELSE 1 + r % 12 END"
        counters_sql = f"""
            SELECT bucket, 'exim', name, domain,
                   s AS sends,
                   s * (1 + (r >> 8) % 3) - (r >> 12) % 2 AS successes,
                   (r >> 16) % 3 AS defers, (r >> 20) % 2 AS fails,
                   (s * (1 + (r >> 8) % 3)) * (2000 + (r >> 24) % 60000) AS bytes,
                   CASE WHEN (r >> 28) % 10 = 0 THEN 1 ELSE 0 END AS rejects,
                   0 AS expired,
                   CASE WHEN (r >> 32) % 5 = 0 THEN 1 ELSE 0 END AS local_successes,
                   CASE WHEN (r >> 32) % 5 = 0 THEN 4000 ELSE 0 END AS local_bytes
            FROM (SELECT *, {sends} AS s FROM act) x
        """
        con.execute(
            f"""
            INSERT INTO counters (bucket, mta, account, sender_domain, sends, successes, defers,
                fails, bytes, rejects, expired, local_successes, local_bytes)
            SELECT * FROM (
                {counters_sql}
                UNION ALL
                SELECT bucket, 'exim', name, domain, 1, 1, 0, 0, 5000, 0, 0, 0, 0
                FROM act WHERE (r >> 40) % 4 = 0
            ) ORDER BY 1, 3, 4
            """
        )
        # '-remote-' (mail from outside) every hour, from a few sender domains.
        con.execute(
            f"""
            INSERT INTO counters (bucket, mta, account, sender_domain, sends, successes, defers,
                fails, bytes, rejects, expired, local_successes, local_bytes)
            SELECT ?::TIMESTAMP + to_hours(k::BIGINT), 'exim', '-remote-',
                   'sender' || (d % 5)::VARCHAR || '.example', 20 + hash(k, d) % 50,
                   20 + hash(k, d) % 50, 1, 1, 800000, 3, 0, 20, 800000
            FROM range({n}) t(k), range(5) u(d) ORDER BY 1
            """,
            [t_chunk.replace(tzinfo=None)],
        )
        # Dimension rows per counter key: its outgoing IP, 1-2 providers, 1-2 recipient
        # domains, and in 40% of keys a tag (shared names, or the account's own).
        tags = "[" + ", ".join(f"'{t}'" for t in SHARED_TAGS) + "]"
        provs = "[" + ", ".join(f"'{p}'" for p in PROVIDERS) + "]"
        rdoms = "[" + ", ".join(f"'{d}'" for d in RCPT_DOMAINS) + "]"
        con.execute(
            f"""
            INSERT INTO dims (bucket, mta, account, sender_domain, kind, value, accepted_out,
                accepted_in, delivered, deferred, failed, rejected, bytes, first_at, last_at)
            SELECT bucket, 'exim', name, domain, kind, value,
                   1 + r % 9, 0, 1 + r % 9, (r >> 16) % 2, (r >> 20) % 2,
                   CASE WHEN (r >> 28) % 10 = 0 THEN 1 ELSE 0 END,
                   (1 + r % 9) * (2000 + (r >> 24) % 60000),
                   bucket + to_minutes(((r >> 5) % 30)::BIGINT),
                   bucket + to_minutes((30 + (r >> 9) % 30)::BIGINT)
            FROM (
                SELECT bucket, name, domain, r, 'ip' AS kind,
                       '192.0.2.' || (10 + id % 4)::VARCHAR AS value FROM act
                UNION ALL
                SELECT bucket, name, domain, r, 'provider', {provs}[1 + (r >> 3) % 6] FROM act
                UNION ALL
                SELECT bucket, name, domain, r >> 7, 'provider', {provs}[1 + (r >> 44) % 6]
                FROM act WHERE (r >> 50) % 10 < 3 AND (r >> 44) % 6 <> (r >> 3) % 6
                UNION ALL
                SELECT bucket, name, domain, r, 'recipient_domain', {rdoms}[1 + (r >> 13) % 10]
                FROM act
                UNION ALL
                SELECT bucket, name, domain, r >> 11, 'recipient_domain',
                       {rdoms}[1 + (r >> 46) % 10]
                FROM act WHERE (r >> 54) % 10 < 3 AND (r >> 46) % 10 <> (r >> 13) % 10
                UNION ALL
                SELECT bucket, name, domain, r, 'tag',
                       CASE WHEN (r >> 36) % 10 < 3 THEN name || '-campaign'
                            ELSE {tags}[1 + (r >> 39) % 8] END
                FROM act WHERE (r >> 58) % 10 < 4
            ) ORDER BY 1, 2, 3, 4, 5
            """
        )
        counter_rows = con.execute("SELECT count(*) FROM counters").fetchone()[0]  # type: ignore[index]
        dim_rows = con.execute("SELECT count(*) FROM dims").fetchone()[0]  # type: ignore[index]
        if off // chunk_hours % 8 == 0:
            log(
                f"  build: {off // 24:>4}/{days} days, {counter_rows:,} counter rows, "
                f"{dim_rows:,} dims rows ({time.perf_counter() - t0:.0f} s)"
            )
    con.execute("DROP TABLE act")
    con.execute("CHECKPOINT")
    t_insert = time.perf_counter() - t0
    before = counter_rows
    t1 = time.perf_counter()
    store.compact()
    con.execute("CHECKPOINT")
    t_compact = time.perf_counter() - t1
    counter_rows = con.execute("SELECT count(*) FROM counters").fetchone()[0]  # type: ignore[index]
    store.close()
    return {
        "accounts": accounts,
        "days": days,
        "seed": seed,
        "end": end.isoformat(),
        "counter_rows_before_compact": before,
        "counter_rows": counter_rows,
        "dims_rows": dim_rows,
        "insert_s": round(t_insert, 1),
        "compact_s": round(t_compact, 1),
        "build_s": round(t_insert + t_compact, 1),
        "db_bytes": path.stat().st_size,
        "gen_version": GEN_VERSION,
    }


def cached_db(accounts: int, days: int, seed: int, rebuild: bool) -> tuple[Path, dict[str, Any]]:
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"query-a{accounts}-d{days}-s{seed}.duckdb"
    meta_path = Path(f"{path}.json")
    if not rebuild and path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("gen_version") == GEN_VERSION:
            # a store built by an older logstats: migrated once, as the daemon would
            t = time.perf_counter()
            Store(path).close()
            if time.perf_counter() - t > 1:
                log(f"migrated {path.name} in {time.perf_counter() - t:.0f} s")
            meta["cached"] = True
            meta["db_bytes"] = path.stat().st_size
            return path, meta
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    log(f"building {path.name} ({accounts} accounts x {days} days) ...")
    meta = build(path, accounts, days, seed, end)
    meta_path.write_text(json.dumps(meta, indent=1))
    meta["cached"] = False
    return path, meta


# -- subjects and cases ------------------------------------------------------------------------


@dataclass
class Subject:
    account: str
    domain: str  # its main sender domain
    own_tag: str  # a tag only it uses
    shared_tag: str  # a tag many accounts use, which it used too
    rows: int  # its counter rows


def subjects(con: duckdb.DuckDBPyConnection, n: int, seed: int) -> list[Subject]:
    """``n`` accounts drawn at random, plus the busiest one (heavy accounts are ~1%)."""
    names = [
        r[0]
        for r in con.execute(
            "SELECT DISTINCT account FROM counters WHERE account <> '-remote-' ORDER BY 1"
        ).fetchall()
    ]
    rng = random.Random(seed)
    picked = rng.sample(names, min(n - 1, len(names)))
    busiest = con.execute(
        "SELECT account FROM counters WHERE account <> '-remote-' GROUP BY 1 "
        "ORDER BY count(*) DESC, 1 LIMIT 1"
    ).fetchone()
    if busiest and busiest[0] not in picked:
        picked.append(busiest[0])
    out = []
    for a in picked:
        dom, rows = con.execute(
            "SELECT arg_max(sender_domain, n), sum(n) FROM (SELECT sender_domain, count(*) n "
            "FROM counters WHERE account = ? GROUP BY 1)",
            [a],
        ).fetchone()  # type: ignore[misc]
        shared = con.execute(
            "SELECT value FROM dims WHERE account = ? AND kind = 'tag' AND value <> ? "
            "GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1",
            [a, f"{a}-campaign"],
        ).fetchone()
        out.append(
            Subject(a, dom, f"{a}-campaign", shared[0] if shared else SHARED_TAGS[0], int(rows))
        )
    return out


@dataclass
class Case:
    shape: str  # cpanel.emailtrack, mailgun.domain_total, sendgrid.json, smtpeter
    window: str  # 7d, 30d, 365d, all
    resolution: str  # hour, day, month, total
    key: str  # admin (sees every account) or account (a key scoped to the account)
    # subject -> (in-process params, path params, HTTP path with query)
    make: Callable[[Subject], tuple[dict[str, Any], dict[str, str], str]]
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.shape} {self.window} {self.resolution} ({self.key} key)"


def cases(end: datetime) -> list[Case]:
    """The windows each shape has, ending at the data's newest hour."""
    out: list[Case] = []
    last = end - timedelta(seconds=1)  # inside the newest hour
    for days in (7, 30, 365):
        start = end - timedelta(days=days)

        def cp(s: Subject, start: datetime = start) -> tuple[dict[str, Any], dict[str, str], str]:
            p = {
                "cpanel_jsonapi_module": "EmailTrack",
                "cpanel_jsonapi_func": "stats",
                "cpanel_jsonapi_apiversion": "2",
                "cpanel_jsonapi_user": s.account,
                "start": start.isoformat(),
                "end": end.isoformat(),
            }
            return p, {}, "/json-api/cpanel?" + urlencode(p)

        out.append(Case("cpanel.emailtrack", f"{days}d", "total", "admin", cp))
    for days, res in (
        (7, "hour"),
        (7, "day"),
        (30, "hour"),
        (30, "day"),
        (365, "day"),
        (365, "month"),
    ):
        start = end - timedelta(days=days)
        for key in ("admin", "account"):

            def mg(
                s: Subject, start: datetime = start, res: str = res
            ) -> tuple[dict[str, Any], dict[str, str], str]:
                p = {
                    "event": ["accepted", "delivered", "failed"],
                    "start": str(int(start.timestamp())),
                    "end": str(int(last.timestamp())),
                    "resolution": res,
                }
                return (
                    p,
                    {"domain": s.domain},
                    (f"/v3/{quote(s.domain)}/stats/total?" + urlencode(p, doseq=True)),
                )

            out.append(Case("mailgun.domain_total", f"{days}d", res, key, mg))
    for days in (7, 30, 365):
        first = (last - timedelta(days=days - 1)).date()

        def sg(s: Subject, first: Any = first) -> tuple[dict[str, Any], dict[str, str], str]:
            p = {
                "method": "stats",
                "user": s.account,
                "start_date": first.isoformat(),
                "end_date": last.date().isoformat(),
            }
            return p, {}, "/api/distributor.manage.json?" + urlencode(p)

        out.append(Case("sendgrid.json", f"{days}d", "day", "admin", sg))

    def sp_own(s: Subject) -> tuple[dict[str, Any], dict[str, str], str]:
        return {}, {"tag": s.own_tag}, f"/v1/stats/{quote(s.own_tag)}"

    def sp_shared(s: Subject) -> tuple[dict[str, Any], dict[str, str], str]:
        return {}, {"tag": s.shared_tag}, f"/v1/stats/{quote(s.shared_tag)}"

    out.append(Case("smtpeter (own tag)", "all", "total", "admin", sp_own))
    out.append(Case("smtpeter (own tag)", "all", "total", "account", sp_own))
    out.append(Case("smtpeter (shared tag)", "all", "total", "account", sp_shared))
    out.append(Case("smtpeter (shared tag)", "all", "total", "admin", sp_shared))

    def metrics(s: Subject) -> tuple[dict[str, Any], dict[str, str], str]:
        return {}, {}, "/metrics"

    # all-time totals per MTA and per account (api.metrics_per_account), every scrape
    out.append(Case(METRICS, "all", "total", "admin", metrics))
    return out


METRICS = "prometheus /metrics"


def shape_name(case: Case) -> str:
    return "smtpeter" if case.shape.startswith("smtpeter") else case.shape


# -- timing ------------------------------------------------------------------------------------


def summary(ms: list[float]) -> dict[str, float]:
    xs = sorted(ms)
    p99 = xs[min(len(xs) - 1, max(0, round(0.99 * len(xs)) - 1))]
    return {
        "runs": len(xs),
        "median_ms": round(statistics.median(xs), 3),
        "p99_ms": round(p99, 3),
        "max_ms": round(xs[-1], 3),
    }


SeriesFn = Callable[[duckdb.DuckDBPyConnection, SeriesRequest], list[Any]]


def in_process_once(
    con: duckdb.DuckDBPyConnection, case: Case, s: Subject, now: datetime, series_fn: SeriesFn
) -> Any:
    params, path, _ = case.make(s)
    cur = con.cursor()  # the API reads through a cursor per request
    try:
        if case.shape == METRICS:
            return render_metrics(cur, per_account=True)
        if case.shape == "cpanel.emailtrack":
            from logstats.api import window

            start, stop = window(params)
            rows = account_stats(cur, StatsRequest(start, stop, s.account))
            return lquery.emailtrack_answer(rows, account=s.account)
        shape = SHAPES[shape_name(case)]
        q = shape.parse(params, now, path)
        if case.key == "account":
            q = q.scoped((s.account,))  # what the API does for a key scoped to the account
        rows = series_fn(cur, q.request) if q.request is not None else []
        return shape.render(q, rows, now)
    finally:
        cur.close()


def time_in_process(
    con: duckdb.DuckDBPyConnection,
    the_cases: list[Case],
    subs: list[Subject],
    runs: int,
    now: datetime,
    series_fn: SeriesFn = series,
    tag: str = "in-process",
) -> None:
    for case in the_cases:
        for s in subs[:3]:  # warm up (first touches of the blocks)
            in_process_once(con, case, s, now, series_fn)
        ms = []
        for i in range(runs):
            s = subs[i % len(subs)]
            t = time.perf_counter_ns()
            in_process_once(con, case, s, now, series_fn)
            ms.append((time.perf_counter_ns() - t) / 1e6)
        case.results[tag] = summary(ms)
        log(f"  {tag:<14} {case.label:<52} {case.results[tag]}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SERVE_AS_IS = ["-m", "logstats"]


@contextlib.contextmanager
def served(
    db: Path, subs: list[Subject], how: list[str] = SERVE_AS_IS
) -> Iterator[tuple[int, dict[str, str]]]:
    """``logstats serve`` on ``db`` (TCP on a free port); yields (port, account -> key)."""
    tmp = Path(tempfile.mkdtemp(prefix="logstats-bench-query-"))
    port = free_port()
    (tmp / "empty.log").write_text("")
    keys = {s.account: f"bench-{i}" for i, s in enumerate(subs)}
    cfg = {
        "timezone": "UTC",
        "store": {"path": str(db)},
        "sources": [{"path": str(tmp / "empty.log"), "mta": "exim"}],
        "serve": {"socket": str(tmp / "serve.socket")},
        "api": {
            "tcp": f"127.0.0.1:{port}",
            "metrics_per_account": True,
            "keys": [{"key": "bench-admin", "name": "admin"}]
            + [{"key": k, "name": a, "accounts": [a]} for a, k in keys.items()],
        },
    }
    (tmp / "logstats.yaml").write_text(json.dumps(cfg))  # JSON is YAML
    proc = subprocess.Popen(
        [sys.executable, *how, "serve", "--config", str(tmp / "logstats.yaml")],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "serve.err", "w"),  # noqa: SIM115
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"logstats serve exited {proc.returncode}: {(tmp / 'serve.err').read_text()}"
                )
            with contextlib.suppress(OSError):
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/healthz", headers={"Authorization": "Bearer bench-admin"})
                if c.getresponse().status == 200:
                    c.close()
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("logstats serve did not answer /healthz within 120 s")
            time.sleep(0.2)
        yield port, keys
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


def time_http(
    port: int,
    keys: dict[str, str],
    the_cases: list[Case],
    subs: list[Subject],
    runs: int,
    tag: str = "http",
    fresh: bool = False,
) -> None:
    """GET each case ``runs`` times: on one keep-alive connection, or (``fresh``) a new
    connection per request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def get(path: str, key: str) -> tuple[int, bytes]:
        nonlocal conn
        if fresh:
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for attempt in range(2):
            try:
                conn.request("GET", path, headers={"Authorization": f"Bearer {key}"})
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    for case in the_cases:

        def one(s: Subject, case: Case = case) -> None:
            _, _, path = case.make(s)
            key = "bench-admin" if case.key == "admin" else keys[s.account]
            status, body = get(path, key)
            if status != 200:
                raise RuntimeError(f"{case.label}: GET {path} -> {status} {body[:300]!r}")

        for s in subs[:3]:
            one(s)
        ms = []
        for i in range(runs):
            s = subs[i % len(subs)]
            t = time.perf_counter_ns()
            one(s)
            ms.append((time.perf_counter_ns() - t) / 1e6)
        case.results[tag] = summary(ms)
        log(f"  {tag:<14} {case.label:<52} {case.results[tag]}")
    conn.close()


# -- candidate store changes (measured on a copy) ----------------------------------------------


def series_account_eq(con: duckdb.DuckDBPyConnection, req: SeriesRequest) -> list[Any]:
    """``store.series`` with the account filter spelled ``account IN (...)`` instead of
    ``list_contains(?, account)`` (a comparison DuckDB pushes into the scan and checks
    against each row group's min/max, where ``list_contains`` is a filter after the scan)."""
    if req.accounts is None:
        return series(con, req)

    class Spelled:
        def __init__(self, inner: duckdb.DuckDBPyConnection) -> None:
            self.inner = inner

        def execute(self, sql: str, params: list[Any]) -> Any:
            i = sql.index("list_contains(?, account)")
            n = sql[:i].count("?")
            accounts = params[n]
            marks = ", ".join("?" for _ in accounts)
            sql = sql.replace("list_contains(?, account)", f"account IN ({marks})")
            return self.inner.execute(sql, [*params[:n], *accounts, *params[n + 1 :]])

    return series(Spelled(con), req)  # type: ignore[arg-type]


def series_domain_owner(con: duckdb.DuckDBPyConnection, req: SeriesRequest) -> list[Any]:
    """``store.series`` where a sender-domain filter without an account restriction (an
    admin key) is narrowed to the domain's accounts, looked up in a small ``sender_domains``
    table (domain, account), so the scan of ``counters`` (ordered by account) prunes."""
    domains = [v for d, v in req.filters if d.value == "sender_domain"]
    if req.accounts is None and domains:
        owners = [
            r[0]
            for r in con.execute(
                "SELECT DISTINCT account FROM sender_domains WHERE sender_domain = ?",
                [domains[0]],
            ).fetchall()
        ]
        if not owners:
            return []
        req = SeriesRequest(
            req.start, req.end, req.resolution, tuple(owners), req.filters, req.group
        )
    return series(con, req)


VARIANTS: dict[str, tuple[str, list[str], SeriesFn]] = {
    "dims-by-account": (
        "dims rewritten ORDER BY account, kind, value, bucket (as compact() orders counters)",
        [
            "CREATE TEMP TABLE d2 AS SELECT * FROM dims ORDER BY account, kind, value, bucket",
            "DELETE FROM dims",
            "INSERT INTO dims SELECT * FROM d2",
            "DROP TABLE d2",
        ],
        series,
    ),
    "account-in": (
        "series() filters accounts with `account IN (?, ...)`, not list_contains (store as built)",
        [],
        series_account_eq,
    ),
    "domain-owner": (
        "a sender_domains(sender_domain, account) table (one row per pair, kept on write); "
        "series() adds the owners as the account filter of an admin's domain query",
        [
            "CREATE TABLE sender_domains AS SELECT sender_domain, account FROM counters "
            "GROUP BY ALL ORDER BY ALL",
        ],
        series_domain_owner,
    ),
    "dims-by-account+account-in": (
        "both of the above",
        [
            "CREATE TEMP TABLE d2 AS SELECT * FROM dims ORDER BY account, kind, value, bucket",
            "DELETE FROM dims",
            "INSERT INTO dims SELECT * FROM d2",
            "DROP TABLE d2",
        ],
        series_account_eq,
    ),
}


def run_variants(
    db: Path,
    names: list[str],
    the_cases: list[Case],
    subs: list[Subject],
    runs: int,
    now: datetime,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    made: dict[tuple[str, ...], Path] = {}
    for name in names:
        what, statements, fn = VARIANTS[name]
        key = tuple(statements)
        if key and key not in made:
            copy = DATA / f"{db.stem}.variant-{len(made)}.duckdb"
            log(f"variant {name}: copying the store and applying the change ...")
            shutil.copyfile(db, copy)
            t = time.perf_counter()
            with Store(copy) as st:
                st.con.execute("BEGIN TRANSACTION")
                for sql in statements:
                    st.con.execute(sql)
                st.con.execute("COMMIT")
                st.con.execute("CHECKPOINT")
            made[key] = copy
            out.setdefault("_apply_s", {})[name] = round(time.perf_counter() - t, 1)
            out.setdefault("_db_bytes", {})[name] = copy.stat().st_size
        path = made.get(key, db)
        con = duckdb.connect(str(path), read_only=True)
        try:
            time_in_process(con, the_cases, subs, runs, now, fn, tag=f"variant:{name}")
        finally:
            con.close()
        out[name] = what
    for copy in made.values():
        copy.unlink(missing_ok=True)
        Path(f"{copy}.wal").unlink(missing_ok=True)
    return out


# -- report ------------------------------------------------------------------------------------


def table(the_cases: list[Case], hows: list[str]) -> str:
    lines = [
        "| shape | window | resolution | key | how | median ms | p99 ms | p99 < 50 ms |",
        "|---|---|---|---|---|---:|---:|---|",
    ]
    for case in the_cases:
        for how in hows:
            r = case.results.get(how)
            if r is None:
                continue
            ok = "yes" if r["p99_ms"] < 50 else "**no**"
            lines.append(
                f"| {case.shape} | {case.window} | {case.resolution} | {case.key} | {how} | "
                f"{r['median_ms']:.2f} | {r['p99_ms']:.2f} | {ok} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--accounts", type=int, default=10_000)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--runs", type=int, default=200, help="timed requests per case and path")
    ap.add_argument("--subjects", type=int, default=25, help="accounts the runs rotate over")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", metavar="FILE.json", help="also write every figure as JSON")
    ap.add_argument("--rebuild", action="store_true", help="build the store even if cached")
    ap.add_argument("--no-http", action="store_true", help="in-process only")
    ap.add_argument(
        "--variants",
        nargs="*",
        metavar="NAME",
        help=f"also time candidate store changes on a copy: {', '.join(VARIANTS)} (no NAME: all)",
    )
    ap.add_argument("--only", metavar="TEXT", help="only cases whose label contains TEXT")
    args = ap.parse_args(argv)

    db, meta = cached_db(args.accounts, args.days, args.seed, args.rebuild)
    end = datetime.fromisoformat(meta["end"])
    now = end  # the shapes' "now": the newest hour of the data
    log(
        f"store {db} ({meta['db_bytes'] / 2**20:.0f} MiB, {meta['counter_rows']:,} counter rows, "
        f"{meta['dims_rows']:,} dims rows; built in {meta['build_s']} s"
        f"{', cached' if meta['cached'] else ''})"
    )
    the_cases = cases(end)
    if args.only:
        the_cases = [c for c in the_cases if args.only in c.label]
    con = duckdb.connect(str(db), read_only=True)
    try:
        subs = subjects(con, args.subjects, args.seed)
        time_in_process(con, the_cases, subs, args.runs, now)
    finally:
        con.close()
    hows = ["in-process"]
    if not args.no_http:
        with served(db, subs) as (port, keys):
            time_http(port, keys, the_cases, subs, args.runs)
            time_http(port, keys, the_cases, subs, args.runs, "http-newconn", fresh=True)
        hows += ["http", "http-newconn"]
    variants: dict[str, Any] = {}
    if args.variants is not None:
        names = args.variants or list(VARIANTS)
        variants = run_variants(db, names, the_cases, subs, args.runs, now)
        hows += [f"variant:{n}" for n in names]

    command = "python bench/query.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    print(f"## Query latency, one account's window\n\n`{command.strip()}`\n")
    print(
        f"Store: {meta['accounts']:,} accounts x {meta['days']} days, "
        f"{meta['counter_rows']:,} counter rows (from {meta['counter_rows_before_compact']:,} "
        f"deltas), {meta['dims_rows']:,} dims rows, {meta['db_bytes'] / 2**20:.0f} MiB; built in "
        f"{meta['build_s']} s (insert {meta['insert_s']} s, compact {meta['compact_s']} s)"
        f"{' [cached]' if meta['cached'] else ''}. Runs rotate over {len(subs)} accounts "
        f"(their counter rows: median {statistics.median(s.rows for s in subs):,.0f}, max "
        f"{max(s.rows for s in subs):,}). DuckDB {duckdb.__version__}, Python "
        f"{platform.python_version()}, {os.cpu_count()} CPUs.\n"
    )
    print(table(the_cases, hows))
    print("\nhttp: one keep-alive connection; http-newconn: a new connection per request.")
    for name, what in variants.items():
        if not name.startswith("_"):
            print(f"\n- variant:{name}: {what}")
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "command": command.strip(),
                    "store": meta,
                    "subjects": [s.__dict__ for s in subs],
                    "variants": variants,
                    "cases": [
                        {
                            "shape": c.shape,
                            "window": c.window,
                            "resolution": c.resolution,
                            "key": c.key,
                            **c.results,
                        }
                        for c in the_cases
                    ],
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
