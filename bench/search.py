"""Latency of Track Delivery searches and traces on ten days of a busy host.

Builds (and caches under ``bench/.data/``) a store through ``logstats.store.Store`` (real
schema and migrations) holding ``--days`` days of a host handling ``--per-day`` recipients a
day: one ``send`` row per message and one row per recipient, appended day by day in time
order as the daemon writes them.  The rows are generated in SQL: ``--accounts`` accounts
with skewed activity (a few send most of the mail), ~2 recipients per message over a skewed
set of recipient domains, Postfix-like queue ids, Message-IDs, remote hosts and reasons;
90 % delivered, 6 % deferred, 3 % failed, 1 % rejected.

Then times ``track.search`` for each filter (account, sender, recipient, domain, queue id,
Message-ID) over the last day and the whole window, and ``track.trace`` by queue id and by
Message-ID: p50/p99 over ``--runs`` runs, the subjects rotating over values taken from the
store.  Prints a table and one JSON line.  The goal: p99 < 100 ms.

    python bench/search.py [--days 10] [--per-day 1000000] [--runs 50] [--rebuild]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from logstats import track  # noqa: E402
from logstats.store import Store  # noqa: E402

DATA = ROOT / "bench" / ".data"
GEN_VERSION = 2  # bump when the generated data changes (invalidates the cache)
END = datetime(2026, 11, 24, tzinfo=UTC)  # fixed: the data never depends on the clock
GOAL_MS = 100.0


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _day_sql(day: int, messages: int, accounts: int, start: datetime) -> str:
    """One day's rows, in time order: a receipt and two recipients per message."""
    t0 = start + timedelta(days=day)
    base = day * messages
    return f"""
    WITH m AS (
        SELECT i + {base} AS n,
            TIMESTAMP '{t0:%Y-%m-%d %H:%M:%S}' + to_microseconds(
                CAST(i * (86400000000 / {messages}) AS BIGINT)) AS ts,
            'acct' || CAST(floor({accounts} * pow(hash(i + {base}, 'a') % 1000000 / 1e6, 3))
                AS INTEGER) AS account,
            CAST(hash(i + {base}, 's') % 40 AS INTEGER) AS who,
            1000 + CAST(hash(i + {base}, 'z') % 200000 AS INTEGER) AS size
        FROM range({messages}) t(i)
    ), r AS (
        SELECT m.*, j,
            'r' || CAST(hash(n, j) % 3000000 AS INTEGER) || '@' ||
            'dom' || CAST(floor(5000 * pow(hash(n, j, 'd') % 1000000 / 1e6, 2)) AS INTEGER)
            || '.test' AS recipient,
            CAST(hash(n, j, 'o') % 100 AS INTEGER) AS roll
        FROM m, range(2) u(j)
    )
    SELECT * FROM (
        SELECT ts, 'postfix' AS mta, 'mx' AS scope, printf('%011X', n) AS queue_id, account,
            account || '.example' AS sender_domain, '' AS recipient, 'send' AS outcome, size,
            NULL::BOOLEAN AS local, 'u' || who || '@' || account || '.example' AS sender,
            NULL AS orig_recipient, printf('%016x.%d@%s.example', hash(n, 'mid'), n, account)
            AS message_id, 'client' || (n % 300) || '.isp.test' AS client_host,
            '10.0.' || (n % 250) || '.' || (n % 200) AS client_ip, account AS auth,
            ts AS sent_at, NULL AS reason, NULL AS router, NULL AS transport,
            NULL AS remote_host, NULL AS remote_ip, NULL AS dsn,
            CASE WHEN n % 7 = 0 THEN 'newsletter' END AS tags, NULL AS origin, NULL AS parent
        FROM m
        UNION ALL
        SELECT ts + INTERVAL 2 SECOND + to_microseconds(j * 1000), 'postfix', 'mx',
            printf('%011X', n), account, account || '.example', recipient,
            CASE WHEN roll < 90 THEN 'delivered' WHEN roll < 96 THEN 'deferred'
                 WHEN roll < 99 THEN 'failed' ELSE 'rejected' END,
            size, false, 'u' || who || '@' || account || '.example', NULL,
            printf('%016x.%d@%s.example', hash(n, 'mid'), n, account), NULL, NULL, NULL, ts,
            CASE WHEN roll < 90 THEN '250 2.0.0 Ok: queued as ' || printf('%08X', hash(n, j))
                 WHEN roll < 96 THEN '451 4.7.1 ' || recipient || ': try again later'
                 WHEN roll < 99 THEN '550 5.1.1 ' || recipient || ': no such user'
                 ELSE '554 5.7.1 Relay access denied' END,
            NULL, 'smtp', 'mx.' || split_part(recipient, '@', 2),
            '192.0.2.' || (hash(recipient) % 250), NULL, NULL, NULL, NULL
        FROM r
    ) ORDER BY ts, queue_id, recipient
    """


def build(path: Path, days: int, per_day: int, accounts: int) -> dict[str, Any]:
    messages = per_day // 2
    start = END - timedelta(days=days)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    store = Store(tmp)
    t0 = time.monotonic()
    try:
        con = store.con
        for day in range(days):
            con.execute(
                f"INSERT INTO events ({', '.join(track.COLUMNS)}) "
                f"{_day_sql(day, messages, accounts, start)}"
            )
            log(f"day {day + 1}/{days} written ({time.monotonic() - t0:.0f} s)")
        con.execute("CHECKPOINT")
        (rows,) = con.execute("SELECT count(*) FROM events").fetchone() or (0,)
    finally:
        store.close()
    tmp.rename(path)
    return {"rows": int(rows), "build_s": round(time.monotonic() - t0, 1)}


def cached_db(days: int, per_day: int, accounts: int, rebuild: bool) -> tuple[Path, dict[str, Any]]:
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"search-v{GEN_VERSION}-{days}d-{per_day}-{accounts}.duckdb"
    meta = path.with_suffix(".json")
    if rebuild or not path.exists() or not meta.exists():
        path.unlink(missing_ok=True)
        log(f"building {path.name}: {days} days x {per_day:,} recipients")
        info = build(path, days, per_day, accounts)
        meta.write_text(json.dumps(info))
    return path, json.loads(meta.read_text())


def subjects(
    con: duckdb.DuckDBPyConnection, start: datetime, n: int, seed: int
) -> list[dict[str, str]]:
    """Filter values from recipient rows of the last day (a reproducible sample)."""
    rows = con.execute(
        "SELECT account, sender, recipient, split_part(recipient, '@', 2), queue_id, message_id "
        "FROM (SELECT * FROM events WHERE outcome <> 'send' AND ts >= ?) "
        "USING SAMPLE reservoir(200 ROWS) REPEATABLE (1)",
        [start.replace(tzinfo=None)],
    ).fetchall()
    random.Random(seed).shuffle(rows)
    keys = ("account", "sender", "recipient", "domain", "queue_id", "message_id")
    return [dict(zip(keys, r, strict=True)) for r in rows[:n]]


def timed(fn: Callable[[], Any], runs: int) -> dict[str, float]:
    ms = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t) * 1000)
    ms.sort()
    return {
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 2),
        "max_ms": round(ms[-1], 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=10)
    ap.add_argument("--per-day", type=int, default=1_000_000, help="recipients a day")
    ap.add_argument("--accounts", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rebuild", action="store_true")
    args = ap.parse_args(argv)
    path, info = cached_db(args.days, args.per_day, args.accounts, args.rebuild)
    store = Store(path, read_only=True)
    con = store.con
    day = (END - timedelta(days=1), END)
    whole = (END - timedelta(days=args.days), END)
    subs = subjects(con, day[0], max(args.runs, 1), args.seed)
    results: dict[str, dict[str, float]] = {}
    for window_name, (start, end) in (("1d", day), (f"{args.days}d", whole)):
        for key in ("account", "sender", "recipient", "domain", "queue_id", "message_id"):
            it = iter(range(10**9))

            def one(
                key: str = key, start: datetime = start, end: datetime = end, it: Any = it
            ) -> Any:
                s = subs[next(it) % len(subs)]
                return track.search(con, track.TrackQuery(start=start, end=end, **{key: s[key]}))

            one()  # warm
            results[f"search {key} {window_name}"] = timed(one, args.runs)
    for key in ("queue_id", "message_id"):
        it2 = iter(range(10**9))

        def tr(key: str = key, it2: Any = it2) -> Any:
            return track.trace(con, subs[next(it2) % len(subs)][key])

        tr()
        results[f"trace {key}"] = timed(tr, args.runs)
    store.close()
    width = max(len(k) for k in results)
    print(f"{'case'.ljust(width)}  {'p50 ms':>9}  {'p99 ms':>9}  {'max ms':>9}")
    for k, v in results.items():
        flag = "" if v["p99_ms"] < GOAL_MS else "  > goal"
        print(f"{k.ljust(width)}  {v['p50_ms']:9.2f}  {v['p99_ms']:9.2f}  {v['max_ms']:9.2f}{flag}")
    worst = max(v["p99_ms"] for v in results.values())
    print(
        json.dumps(
            {
                "bench": "search",
                "rows": info["rows"],
                "build_s": info["build_s"],
                "days": args.days,
                "per_day": args.per_day,
                "runs": args.runs,
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "duckdb": duckdb.__version__,
                "worst_p99_ms": worst,
                "goal_met": worst < GOAL_MS,
                "cases": results,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
