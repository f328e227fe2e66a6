"""The fleet: export cost, and query latency over many hosts' Parquet, DuckDB and Spark.

1. Export cost: one host's store of ``--days`` days of hourly counters for ``--accounts``
   accounts (plus 10 days of Track Delivery rows) is built through ``logstats.store.Store``
   (real schema), then exported by ``logstats.fleet.export.export`` (the code of
   ``logstats export`` and the daemon): a first export (every partition), a repeated one
   (nothing changed: fingerprints only) and one after a new hour of counters (one
   partition).  Figures per host per day.
2. Query latency: a fleet of ``--hosts`` hosts is written directly as Parquet in the export
   layout (``counters/host=H/date=D/``; generated in DuckDB SQL, deterministic), plus 10
   days of delivery rows per host; hosts are added in steps (``--steps``, e.g. 10, 30, 100)
   and at each step the questions are timed ``--runs`` times with each engine
   (``FleetEngine``: the code of ``logstats fleet``):
   - one account's 30-day window (EmailTrack::stats),
   - one sender domain across the fleet over the whole period (Mailgun domain totals, by day),
   - the fleet-wide top 10 accounts by messages sent over the whole period.

Sparsity: each account is active (one counters row, one of its 1 to 3 sender domains) in
``--active`` of the hours (default 0.1: 2.4 hours a day), chosen by a hash of (host,
account, hour): 24 x active x accounts rows per host and day.

    python bench/fleet.py [--hosts 100] [--days 365] [--accounts 1000] [--runs 5]
                          [--steps 10,30,100] [--engines duckdb,spark] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from logstats.fleet import export as fleet_export
from logstats.fleet.engine import DuckDBEngine, FleetEngine, SparkEngine
from logstats.model import (
    Dimension,
    Resolution,
    SeriesRequest,
    StatsRequest,
)
from logstats.store import COUNTER_COLUMNS, Store

START = datetime(2025, 1, 1, tzinfo=UTC)
EVENT_DAYS = 10
EVENTS_PER_DAY = 2000  # delivery rows per host and day


def _counters_sql(host_expr: str, hosts: str, days: int, accounts: int, active: float) -> str:
    """Hourly counter rows: (host, hour, account) kept where a hash falls under ``active``."""
    keep = int(active * 1_000_000)
    return f"""
        SELECT {host_expr} AS host,
               TIMESTAMP '2025-01-01' + to_hours(h.i) AS bucket,
               'exim' AS mta,
               'acct' || lpad(CAST(a.i AS VARCHAR), 5, '0') AS account,
               'd' || CAST(a.i AS VARCHAR) || '-' || CAST(hash(hh.i, a.i, h.i) % (1 + a.i % 3)
                   AS VARCHAR) || '.example' AS sender_domain,
               CAST(1 + hash(hh.i, a.i, h.i, 1) % 20 AS BIGINT) AS sends,
               CAST(1 + hash(hh.i, a.i, h.i, 2) % 40 AS BIGINT) AS successes,
               CAST(hash(hh.i, a.i, h.i, 3) % 3 AS BIGINT) AS defers,
               CAST(hash(hh.i, a.i, h.i, 4) % 2 AS BIGINT) AS fails,
               CAST(1000 + hash(hh.i, a.i, h.i, 5) % 400000 AS BIGINT) AS bytes,
               CAST(0 AS BIGINT) AS rejects,
               CAST(0 AS BIGINT) AS expired,
               CAST(hash(hh.i, a.i, h.i, 6) % 2 AS BIGINT) AS local_successes,
               CAST(0 AS BIGINT) AS local_bytes
        FROM {hosts} hh, range({days * 24}) h(i), range({accounts}) a(i)
        WHERE hash(hh.i, a.i, h.i) % 1000000 < {keep}
    """


def _events_sql(host_expr: str, hosts: str, days: int, accounts: int) -> str:
    first = max(days - EVENT_DAYS, 0)
    n = min(days, EVENT_DAYS) * EVENTS_PER_DAY
    outcomes = "['send', 'delivered', 'delivered', 'deferred', 'failed']"
    return f"""
        SELECT {host_expr} AS host,
               TIMESTAMP '2025-01-01' + to_days({first})
                   + to_microseconds(CAST(e.i * 86400000000 // {EVENTS_PER_DAY} AS BIGINT)) AS ts,
               'exim' AS mta, '' AS scope,
               'Q' || CAST(hash(hh.i, e.i) % 100000000 AS VARCHAR) AS queue_id,
               'acct' || lpad(CAST(hash(hh.i, e.i, 1) % {accounts} AS VARCHAR), 5, '0') AS account,
               'd' || CAST(hash(hh.i, e.i, 1) % {accounts} AS VARCHAR) || '-0.example'
                   AS sender_domain,
               'r' || CAST(e.i % 997 AS VARCHAR) || '@dest' || CAST(e.i % 7 AS VARCHAR)
                   || '.test' AS recipient,
               {outcomes}[1 + CAST(hash(hh.i, e.i, 2) % 5 AS INTEGER)] AS outcome,
               CAST(1000 + e.i % 50000 AS BIGINT) AS size, false AS local,
               'u@x.example' AS sender, NULL AS orig_recipient, NULL AS message_id,
               NULL AS client_host, NULL AS client_ip, NULL AS auth, NULL AS sent_at,
               '250 OK' AS reason, 'dnslookup' AS router, 'remote_smtp' AS transport,
               'mx.dest.test' AS remote_host, '192.0.2.9' AS remote_ip, NULL AS dsn,
               NULL AS tags, NULL AS origin, NULL AS parent
        FROM {hosts} hh, range({n}) e(i)
    """


def build_fleet(
    directory: Path, first: int, last: int, days: int, accounts: int, active: float
) -> tuple[int, float]:
    """Hosts ``first`` to ``last - 1`` as Parquet in the export layout: (rows, seconds)."""
    started = time.perf_counter()
    con = duckdb.connect()
    con.execute("SET preserve_insertion_order = false")
    rows = 0
    for h in range(first, last):
        hosts = f"(SELECT {h} AS i)"
        host_expr = "'h' || lpad(CAST(hh.i AS VARCHAR), 3, '0') || '.example'"
        for table, sql in (
            ("counters", _counters_sql(host_expr, hosts, days, accounts, active)),
            ("events", _events_sql(host_expr, hosts, days, accounts)),
        ):
            time_col = "bucket" if table == "counters" else "ts"
            (directory / table).mkdir(parents=True, exist_ok=True)
            written = con.execute(
                f"COPY (SELECT * EXCLUDE (host), host, CAST({time_col} AS DATE) AS date "
                f"FROM ({sql}) ORDER BY {time_col}) TO '{directory / table}' "
                "(FORMAT parquet, PARTITION_BY (host, date), OVERWRITE_OR_IGNORE, "
                "FILENAME_PATTERN 'data_{i}')"
            ).fetchone()
            if table == "counters":
                rows += int(written[0]) if written else 0
    con.close()
    return rows, time.perf_counter() - started


def export_cost(folder: Path, days: int, accounts: int, active: float) -> dict[str, Any]:
    """One host's store of ``days`` days through the real export."""
    db = folder / "host.duckdb"
    store = Store(db)
    con = store.con
    gen = _counters_sql("'h'", "(SELECT 0 AS i)", days, accounts, active)
    cols = ", ".join(
        c for c in ("bucket", "mta", "account", "sender_domain", "sends", "successes", "defers",
                    "fails", "bytes", "rejects", "expired", "local_successes", "local_bytes")
    )  # fmt: skip
    con.execute(f"INSERT INTO counters BY NAME SELECT {cols} FROM ({gen}) ORDER BY account, bucket")
    ev = _events_sql("'h'", "(SELECT 0 AS i)", days, accounts)
    ecols = ", ".join(fleet_export.EVENT_COLUMNS)
    con.execute(f"INSERT INTO events BY NAME SELECT {ecols} FROM ({ev}) ORDER BY ts")
    counters = con.execute("SELECT count(*) FROM counters").fetchone()
    out = folder / "export"
    first = fleet_export.export(con, out, "h000.example")
    again = fleet_export.export(con, out, "h000.example")
    last_hour = START + timedelta(days=days) - timedelta(hours=1)
    con.execute(
        "INSERT INTO counters BY NAME SELECT ? AS bucket, 'exim' AS mta, 'acct00000' AS account, "
        "'d0-0.example' AS sender_domain, " + ", ".join(f"1 AS {c}" for c in COUNTER_COLUMNS),
        [last_hour.replace(tzinfo=None)],
    )
    touched = fleet_export.export(con, out, "h000.example")
    store.close()
    size = sum(p.stat().st_size for p in out.rglob("*.parquet"))
    return {
        "days": days,
        "accounts": accounts,
        "counter_rows": int(counters[0]) if counters else 0,
        "partitions": len(first.written),
        "first_s": round(first.seconds, 3),
        "first_ms_per_host_day": round(first.seconds * 1000 / days, 2),
        "repeat_s": round(again.seconds, 3),
        "repeat_written": len(again.written),
        "one_new_hour_s": round(touched.seconds, 3),
        "one_new_hour_written": len(touched.written),
        "export_mb": round(size / 1e6, 1),
    }


def questions(days: int) -> dict[str, Callable[[FleetEngine], Any]]:
    whole = (START, START + timedelta(days=days))
    month = (START + timedelta(days=max(days - 30, 0)), whole[1])

    def one_account(e: FleetEngine) -> Any:
        return e.account_stats(StatsRequest(*month, account="acct00042"))

    def one_domain(e: FleetEngine) -> Any:
        return e.series(
            SeriesRequest(
                *whole, Resolution.DAY, filters=((Dimension.SENDER_DOMAIN, "d42-0.example"),)
            )
        )

    def top10(e: FleetEngine) -> Any:
        rows = e.account_stats(StatsRequest(*whole))
        return sorted(rows, key=lambda s: (-s.sendcount, s.account))[:10]

    return {"account_30d": one_account, "domain_fleet": one_domain, "top10_accounts": top10}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def time_queries(
    engine: FleetEngine, days: int, runs: int
) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    out: dict[str, dict[str, float]] = {}
    answers: dict[str, Any] = {}
    for name, ask in questions(days).items():
        answers[name] = ask(engine)  # a first run (caches, JIT) is not counted
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            ask(engine)
            times.append((time.perf_counter() - started) * 1000)
        out[name] = {
            "p50_ms": round(statistics.median(times), 1),
            "p99_ms": round(_pct(times, 0.99), 1),
        }
    return out, answers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=100)
    p.add_argument("--days", type=int, default=365)
    p.add_argument("--accounts", type=int, default=1000)
    p.add_argument("--active", type=float, default=0.1, help="fraction of hours an account sends")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--steps", default="", help="host counts to time at (default: 10,30,HOSTS)")
    p.add_argument("--engines", default="duckdb,spark")
    p.add_argument("--dir", help="work folder (default: a temporary one, removed after)")
    p.add_argument("--out", help="write the figures as JSON here too")
    args = p.parse_args()
    steps = [int(s) for s in args.steps.split(",") if s] or sorted(
        {s for s in (10, 30) if s < args.hosts} | {args.hosts}
    )
    engines = [e for e in args.engines.split(",") if e]
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="logstats-fleet-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {platform.python_version()}, duckdb "
        f"{duckdb.__version__}",
        "command": " ".join(["python", *sys.argv]),
        "sparsity": {
            "active_hours": args.active,
            "rows_per_host_day": 24 * args.active * args.accounts,
        },
    }
    try:
        result["export"] = export_cost(work / "one-host", args.days, args.accounts, args.active)
        print(json.dumps({"export": result["export"]}), flush=True)
        fleet = work / "fleet"
        built = 0
        rows = 0
        spark = None
        result["steps"] = []
        for hosts in steps:
            n, seconds = build_fleet(fleet, built, hosts, args.days, args.accounts, args.active)
            rows += n
            built = hosts
            step: dict[str, Any] = {"hosts": hosts, "counter_rows": rows,
                                    "build_s": round(seconds, 1)}  # fmt: skip
            step["parquet_mb"] = round(
                sum(f.stat().st_size for f in fleet.rglob("*.parquet")) / 1e6, 1
            )
            answers = {}
            for name in engines:
                if name == "spark" and spark is None:
                    from logstats.fleet.engine import spark_session

                    started = time.perf_counter()
                    spark = spark_session()
                    result["spark_start_ms"] = round((time.perf_counter() - started) * 1000)
                started = time.perf_counter()  # open: the views (Spark: partition discovery)
                if name == "spark":
                    engine: FleetEngine = SparkEngine(fleet, spark=spark)
                else:
                    engine = DuckDBEngine(fleet)
                opened = time.perf_counter() - started
                times, answers[name] = time_queries(engine, args.days, args.runs)
                step[name] = {"open_ms": round(opened * 1000, 1), **times}
                engine.close()
            if len(answers) == 2:
                step["engines_agree"] = answers["duckdb"] == answers["spark"]
            result["steps"].append(step)
            print(json.dumps(step), flush=True)
        if spark is not None:
            spark.stop()
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
