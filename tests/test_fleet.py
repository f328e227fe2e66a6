"""The fleet: three hosts' stores, built from generated logs by `logstats backfill`, exported
by `logstats export` into one folder; `logstats fleet` over it (DuckDB and Spark) answers
what the hosts' own `logstats query` answers add up to.  The export is exactly once:
killed at random points it ends as one clean export, and repeated it writes nothing."""

from __future__ import annotations

import contextlib
import io
import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from logstats import cli
from logstats.fleet import export as fleet_export
from tests.conftest import ROOT, run_cli
from tests.logmaker import exim_log

HOSTS = ("mx1.example", "mx2.example", "mx3.example")
TYPES = ("--type", "delivered", "--type", "deferred", "--type", "failed", "--type", "rejected")

# (shape, arguments): the same for `logstats query` and `logstats fleet query`; fixed
# windows (the logs are of 2024-12-31 to 2025-01-02)
QUERIES: list[tuple[str, list[str]]] = [
    ("emailtrack", ["--all", "--format", "json", "--start", "20241231", "--end", "20250104"]),
    ("emailtrack", ["--account", "alice.test", "--start", "20241231", "--end", "20250104"]),
    (
        "mailgun",
        [
            "/v3/stats/total",
            "event=accepted",
            "event=delivered",
            "event=failed",
            "start=1735603200",  # 2024-12-31
            "end=1735948800",  # 2025-01-04
            "resolution=day",
        ],
    ),
    (
        "sendgrid",
        [
            "/api/distributor.manage.json",
            "method=stats",
            "user=bob.test",
            "start_date=2024-12-31",
            "end_date=2025-01-03",
        ],
    ),
    ("smtpeter", ["/v1/stats/alice"]),
]


def _config(folder: Path) -> Path:
    cfg = folder / "logstats.yaml"
    cfg.write_text(
        "timezone: UTC\n"
        "store:\n  retention_days: 36500\n"  # the 2024 logs' Track rows are kept
        f"serve:\n  socket: {folder / 'none.sock'}\n"
        "tags:\n"
        "  - {tag: alice, sender: '*@alice.test'}\n"
        "  - {tag: bob, sender: '*@bob.test'}\n"
    )
    return cfg


def _shifted(lines: list[str], days: int) -> list[str]:
    """Exim lines moved ``days`` later (the stamp is the first 19 characters)."""
    out = []
    for line in lines:
        ts = datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S") + timedelta(days=days)
        out.append(f"{ts:%Y-%m-%d %H:%M:%S}{line[19:]}")
    return out


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("fleet")
    cfg = _config(folder)
    out = folder / "export"
    dbs = {}
    for i, host in enumerate(HOSTS):
        log = folder / f"{host}.log"
        log.write_text("\n".join(exim_log(seed=100 + i, messages=300).lines) + "\n")
        db = folder / f"{host}.duckdb"
        run_cli("backfill", "--config", str(cfg), "--db", str(db), "--no-progress", str(log))
        run_cli("export", "--config", str(cfg), "--db", str(db), "--to", str(out), "--host", host)
        dbs[host] = db
    return {"cfg": cfg, "out": out, "dbs": dbs, "folder": folder}


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    from logstats.fleet.engine import spark_session

    session = spark_session()
    yield session
    session.stop()


def _fleet(out: Path, engine: str, *args: str) -> tuple[int, str]:
    """``logstats fleet`` in this process (one Spark session for the module)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = cli.main(["fleet", "--from", str(out), "--engine", engine, *args])
    return code, buffer.getvalue()


def _host_answer(fleet: dict[str, Any], host: str, shape: str, args: list[str]) -> Any:
    proc = run_cli(
        "query", shape, "--config", str(fleet["cfg"]), "--db", str(fleet["dbs"][host]), *args
    )
    return json.loads(proc.stdout)


ENVELOPE = frozenset({"apiversion", "result"})  # numbers of the envelope, not counts


def _add(a: Any, b: Any, key: str = "") -> Any:
    """Two hosts' answers as one: counts add up (cPanel's are strings of digits), first
    and last times are the earlier and the later, everything else must be the same."""
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: _add(a.get(k), b.get(k), k) for k in {**a, **b}}
    if isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), (key, a, b)
        return [_add(x, y, key) for x, y in zip(a, b, strict=True)]
    if a is None or b is None:
        return b if a is None else a
    if isinstance(a, bool) or key in ENVELOPE:
        assert a == b, key
        return a
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a + b
    if isinstance(a, str) and a.isdigit() and isinstance(b, str) and b.isdigit():
        return str(int(a) + int(b))
    if key == "first":
        return min(a, b)
    if key == "last":
        return max(a, b)
    assert a == b, (key, a, b)
    return a


def _expected(fleet: dict[str, Any], shape: str, args: list[str], hosts: tuple[str, ...]) -> Any:
    total: Any = None
    for host in hosts:
        answer = _host_answer(fleet, host, shape, args)
        total = answer if total is None else _add(total, answer)
    return total


@pytest.mark.parametrize(
    ("shape", "args"), QUERIES, ids=[f"{s}-{i}" for i, (s, _) in enumerate(QUERIES)]
)
def test_duckdb_answers_are_the_sum_of_the_hosts(
    fleet: dict[str, Any], shape: str, args: list[str]
) -> None:
    code, text = _fleet(fleet["out"], "duckdb", "query", shape, *args)
    assert code == 0, text
    answer = json.loads(text)
    assert answer == _expected(fleet, shape, args, HOSTS)
    # the numbers are not all zero: the comparison holds something
    assert any(ch in "123456789" for ch in json.dumps(answer))
    if args[0] == "--all":  # messages in the queues too: the hosts' exported snapshots
        assert any(row["INPROGRESSCOUNT"] != "0" for row in answer.values())


def test_one_host_is_that_hosts_answer(fleet: dict[str, Any]) -> None:
    shape, args = QUERIES[0]
    code, text = _fleet(fleet["out"], "duckdb", "query", shape, "--host", HOSTS[1], *args)
    assert code == 0
    assert json.loads(text) == _expected(fleet, shape, args, (HOSTS[1],))
    assert json.loads(text) != _expected(fleet, shape, args, HOSTS)


def _search_rows(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_search_finds_every_hosts_rows(fleet: dict[str, Any]) -> None:
    window = ["--start", "20241231", "--end", "20250104", "--limit", "100000"]
    code, text = _fleet(
        fleet["out"], "duckdb", "search", *window, *TYPES, "--format", "json", "--domain",
        "dest2.test",
    )  # fmt: skip
    assert code == 0
    found = _search_rows(text)
    expected = []
    for host in HOSTS:
        proc = run_cli(
            "search", "--config", str(fleet["cfg"]), "--db", str(fleet["dbs"][host]), *window,
            *TYPES, "--format", "json", "--domain", "dest2.test",
        )  # fmt: skip
        expected += [{**row, "host": host} for row in _search_rows(proc.stdout)]
    key = json.dumps
    assert sorted(map(key, found)) == sorted(map(key, expected))
    assert {r["host"] for r in found} == set(HOSTS)
    assert [r["ts"] for r in found] == sorted((r["ts"] for r in found), reverse=True)


def test_spark_answers_as_duckdb(fleet: dict[str, Any], spark: Any) -> None:
    """The same SQL on Spark: every shape, the sum of the hosts, and a search."""
    for shape, args in QUERIES:
        code, spark_text = _fleet(fleet["out"], "spark", "query", shape, *args)
        assert code == 0, spark_text
        _, duck_text = _fleet(fleet["out"], "duckdb", "query", shape, *args)
        assert json.loads(spark_text) == json.loads(duck_text)
        assert json.loads(spark_text) == _expected(fleet, shape, args, HOSTS)
    search = ["search", "--start", "20241231", "--end", "20250104", "--sender", "alice@*",
              "--format", "json", "--limit", "40"]  # fmt: skip
    _, spark_text = _fleet(fleet["out"], "spark", *search)
    _, duck_text = _fleet(fleet["out"], "duckdb", *search)
    assert len(_search_rows(duck_text)) == 40
    assert _search_rows(spark_text) == _search_rows(duck_text)
    shape, args = QUERIES[0]
    code, text = _fleet(fleet["out"], "spark", "query", shape, "--host", HOSTS[2], *args)
    assert code == 0
    assert json.loads(text) == _expected(fleet, shape, args, (HOSTS[2],))


# -- the export: exactly once, incremental, idempotent ----------------------------------


def _rows(out: Path) -> dict[str, list[tuple[Any, ...]]]:
    con = duckdb.connect()
    rows = {}
    for table in fleet_export.TABLES:
        files = sorted(str(p) for p in fleet_export.exported_files(out, table))
        rows[table] = (
            con.execute(
                "SELECT * FROM read_parquet($f, hive_partitioning = true) ORDER BY ALL",
                {"f": files},
            ).fetchall()
            if files
            else []
        )
    return rows


def _files(out: Path) -> dict[Path, tuple[int, bytes]]:
    return {
        p: (p.stat().st_mtime_ns, p.read_bytes())
        for t in fleet_export.TABLES
        for p in fleet_export.exported_files(out, t)
    }


def _temps(out: Path) -> list[Path]:
    return list(out.glob(f"*/host=*/date=*/{fleet_export.TEMP_PREFIX}*"))


def _export_cmd(cfg: Path, db: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "logstats", "export", "--config", str(cfg), "--db", str(db),
            "--to", str(out), "--host", "mx9.example"]  # fmt: skip


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One host with a few days of mail (more partitions for a kill to land between)."""
    folder = tmp_path_factory.mktemp("big")
    cfg = _config(folder)
    log = folder / "mainlog"
    lines = exim_log(seed=7, messages=4000).lines
    log.write_text("\n".join(lines) + "\n")
    db = folder / "mx9.duckdb"
    run_cli("backfill", "--config", str(cfg), "--db", str(db), "--no-progress", str(log))
    return {"cfg": cfg, "db": db, "log": log, "folder": folder}


def test_killed_exports_end_as_one_clean_export(big: dict[str, Path]) -> None:
    fresh = big["folder"] / "fresh"
    started = time.monotonic()
    subprocess.run(_export_cmd(big["cfg"], big["db"], fresh), cwd=ROOT, check=True,
                   capture_output=True)  # fmt: skip
    whole = time.monotonic() - started  # one clean run, from the process's start
    complete = len(_files(fresh))
    out = big["folder"] / "killed"
    rng = random.Random(11)
    cut = []  # complete partitions after each run that was killed while it ran
    for _ in range(8):
        proc = subprocess.Popen(
            _export_cmd(big["cfg"], big["db"], out),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.1, whole))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            cut.append(len(_files(out)))
        proc.wait()
    assert any(n < complete for n in cut)  # some runs were cut short of a whole export
    subprocess.run(_export_cmd(big["cfg"], big["db"], out), cwd=ROOT, check=True,
                   capture_output=True)  # fmt: skip
    assert _temps(out) == []
    killed_rows, fresh_rows = _rows(out), _rows(fresh)
    assert killed_rows == fresh_rows
    assert all(fresh_rows.values())
    assert sorted(p.relative_to(out) for p in _files(out)) == sorted(
        p.relative_to(fresh) for p in _files(fresh)
    )


def test_a_repeated_export_rewrites_nothing(big: dict[str, Path]) -> None:
    out = big["folder"] / "repeated"
    run_cli("export", "--config", str(big["cfg"]), "--db", str(big["db"]), "--to", str(out),
            "--host", "mx9.example")  # fmt: skip
    before = _files(out)
    assert len(before) > 6
    proc = run_cli("export", "--config", str(big["cfg"]), "--db", str(big["db"]), "--to",
                   str(out), "--host", "mx9.example")  # fmt: skip
    assert _files(out) == before
    done = json.loads(proc.stderr.strip().splitlines()[-1])
    assert done["written"] == 0 and done["unchanged"] == len(before)


def test_a_damaged_partition_is_written_again(big: dict[str, Path]) -> None:
    """A partition file cut short or overwritten (a disk or shared-storage fault) has no
    fingerprint to read: the next export names it and writes it again, and the others are
    left as they were."""
    out = big["folder"] / "damaged"
    args = ["--config", str(big["cfg"]), "--db", str(big["db"]), "--to", str(out),
            "--host", "mx9.example"]  # fmt: skip
    run_cli("export", *args)
    clean = _rows(out)
    before = _files(out)
    cut, junk = sorted(before)[0], sorted(before)[-1]
    cut.write_bytes(cut.read_bytes()[:10])
    junk.write_bytes(b"not parquet at all")
    proc = run_cli("export", *args)
    done = json.loads(proc.stderr.strip().splitlines()[-1])
    assert sorted(done["damaged"]) == sorted([str(cut), str(junk)])
    assert done["written"] == 2 and done["unchanged"] == len(before) - 2
    assert _rows(out) == clean
    after = _files(out)
    assert {p for p in before if after[p] == before[p]} == set(before) - {cut, junk}


def test_an_export_tells_its_progress(big: dict[str, Path]) -> None:
    """The daemon's watchdog is pinged through the export (``progress``): after every
    partition written and every table, so a long first export is not taken for a hang."""
    calls = []
    con = duckdb.connect(str(big["db"]), read_only=True)
    try:
        result = fleet_export.export(con, big["folder"] / "progress", "mx9.example",
                                     lambda: calls.append(1))  # fmt: skip
    finally:
        con.close()
    assert len(result.written) > 6
    assert len(calls) == len(result.written) + len(fleet_export.TABLES)


def test_more_lines_rewrite_only_the_partitions_they_touch(big: dict[str, Path]) -> None:
    out = big["folder"] / "incremental"
    folder = big["folder"] / "incremental-store"
    folder.mkdir()
    log, db = folder / "mainlog", folder / "mx9.duckdb"
    first = exim_log(seed=21, messages=300).lines
    log.write_text("\n".join(first) + "\n")
    args = ["--config", str(big["cfg"]), "--db", str(db)]
    run_cli("backfill", *args, "--no-progress", str(log))
    run_cli("export", *args, "--to", str(out), "--host", "mx9.example")
    before = _files(out)
    old_days = {p.parent.name for p in before}
    # the same file grows by a later day's mail (other queue ids, four days on)
    later = _shifted(exim_log(seed=22, messages=300).lines, 4)
    new_days = {f"date={line[:10]}" for line in later}
    assert not new_days & old_days
    with log.open("a") as f:
        f.write("\n".join(later) + "\n")
    run_cli("backfill", *args, "--no-progress", str(log))
    run_cli("export", *args, "--to", str(out), "--host", "mx9.example")
    after = _files(out)
    unchanged = {p for p in before if after.get(p) == before[p]}
    assert unchanged == set(before)  # no partition of the earlier days was rewritten
    added = set(after) - set(before)
    assert {p.parent.name for p in added} == new_days
    assert {p.parents[2].name for p in added} == set(fleet_export.TABLES)


def test_the_queue_is_the_snapshot_of_the_last_export(tmp_path: Path) -> None:
    """INPROGRESSCOUNT over the fleet is what the host's queue held at its last export.
    A log cut in the middle of messages, exported; the rest, exported; then mail of a
    month later (by when ``correlation.ttl``, 7 days, has dropped what was still queued):
    after each export the fleet's count is the host's own, the messages that completed
    left it, and the days with no message left in the queue lost their partition."""
    cfg = _config(tmp_path)
    log, db, out = tmp_path / "mainlog", tmp_path / "mx.duckdb", tmp_path / "export"
    lines = exim_log(seed=41, messages=300).lines
    args = ["--config", str(cfg), "--db", str(db)]
    span = ["--start", "20241231", "--end", "20250301"]
    queued: list[set[str]] = []
    days: list[set[str]] = []
    later = _shifted(exim_log(seed=42, messages=100).lines, 30)
    for part in (lines[: len(lines) // 2], lines[len(lines) // 2 :], later):
        with log.open("a") as f:
            f.write("\n".join(part) + "\n")
        run_cli("backfill", *args, "--no-progress", str(log))
        run_cli("export", *args, "--to", str(out), "--host", "mx.example")
        own = json.loads(run_cli("query", "emailtrack", *args, "--all", "--format", "json",
                                 *span).stdout)  # fmt: skip
        code, text = _fleet(out, "duckdb", "query", "emailtrack", "--all", "--format", "json",
                            *span)  # fmt: skip
        assert code == 0
        assert json.loads(text) == own
        rows = _search_rows(run_cli("search", *args, *span, "--type", "inprogress", "--format",
                                    "json", "--limit", "100000").stdout)  # fmt: skip
        queued.append({r["queue_id"] for r in rows})
        days.append({p.parent.name for p in fleet_export.exported_files(out, "pending")})
        assert days[-1] == {f"date={r['sent_at'][:10]}" for r in rows}
        assert len(queued[-1]) == sum(int(r["INPROGRESSCOUNT"]) for r in own.values())
    assert queued[0] - queued[1], "no message queued at the cut completed after it"
    assert queued[1] and not queued[1] & queued[2]  # dropped by the ttl a month later
    assert days[1] - days[2] and days[2] - days[1]  # the old days' files gone, new ones


def test_a_central_logs_hosts_are_partitions_of_their_own(tmp_path: Path) -> None:
    """Rows that name their syslog host are exported under it, not under the exporting
    host's name: one central Postfix log of three MTAs is three hosts of the fleet."""
    from tests.conftest import scenario_config
    from tests.test_central import HOSTS as CENTRAL_HOSTS
    from tests.test_central import _central_postfix

    cfg = scenario_config(tmp_path)
    cfg.write_text(cfg.read_text() + "store:\n  retention_days: 36500\n")
    log = tmp_path / "maillog"
    _central_postfix(log)
    db, out = tmp_path / "central.duckdb", tmp_path / "export"
    args = ["--config", str(cfg), "--db", str(db)]
    run_cli("backfill", *args, "--no-progress", "--mta", "postfix", str(log))
    run_cli("export", *args, "--to", str(out), "--host", "collector.example")
    hosts = {p.name for p in (out / "counters").iterdir()}
    assert hosts == {f"host={h}" for h in CENTRAL_HOSTS}
    window = ["--all", "--format", "json", "--start", "19700101"]
    for host in (*CENTRAL_HOSTS, None):
        chosen = ["--host", host] if host else []
        own = json.loads(run_cli("query", "emailtrack", *args, *window, *chosen).stdout)
        code, text = _fleet(out, "duckdb", "query", "emailtrack", "--config", str(cfg),
                            *window, *chosen)  # fmt: skip
        assert code == 0
        assert json.loads(text) == own
        assert any(row["SENDCOUNT"] != "0" for row in own.values())


def test_the_daemon_exports_every_export_every(tmp_path: Path) -> None:
    """`logstats serve` with export.directory exports from its own loop (the function of
    `logstats export`): after it stops, the CLI finds nothing to write, and a fresh CLI
    export holds the same rows."""
    from tests.daemon_harness import Serve, short_dir, write_config

    with contextlib.ExitStack() as stack:
        work = stack.enter_context(short_dir())
        log = work / "mainlog"
        script = exim_log(seed=31, messages=200)
        log.write_text("\n".join(script.lines[:300]) + "\n")
        out = work / "export"
        cfg = write_config(
            work, [(log, "exim")], export={"directory": str(out), "host": "mxd.example",
                                           "every": 1},
        )  # fmt: skip
        d = stack.enter_context(Serve(cfg))
        d.wait_ready()
        first = d.wait_event("export_done", timeout=30, where=lambda e: e["written"] > 0)
        assert first["host"] == "mxd.example"
        seen = len(d.events)
        with log.open("a") as f:  # more mail: the next export writes what it touched
            f.write("\n".join(script.lines[300:]) + "\n")
        d.wait_lines(len(script.lines), timeout=30)
        d.wait_event("export_done", timeout=30, after=seen, where=lambda e: e["written"] > 0)
        settled = d.wait_event(
            "export_done", timeout=30, after=seen, where=lambda e: e["written"] == 0
        )
        assert settled["unchanged"] > 0
        assert d.terminate() == 0
        db = work / "db.duckdb"
        again = run_cli("export", "--config", str(cfg), "--db", str(db))
        assert json.loads(again.stderr.strip().splitlines()[-1])["written"] == 0
        fresh = work / "fresh"
        run_cli("export", "--config", str(cfg), "--to", str(fresh))
        assert _rows(out) == _rows(fresh)
        assert all(_rows(fresh).values())
        assert {p.parent.parent.name for p in _files(out)} == {"host=mxd.example"}


# -- the fleet on HTTP: the daemon's API code over every host --------------------------------


def _http(port: int, path: str, params: dict[str, Any], headers: dict[str, str]) -> Any:
    """(status, JSON body) of a GET on the fleet server."""
    import http.client
    from urllib.parse import urlencode

    con = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        con.request("GET", f"{path}?{urlencode(params, doseq=True)}", headers=headers)
        resp = con.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        con.close()


def _params(args: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for arg in args:
        name, _, value = arg.partition("=")
        out.setdefault(name, []).append(value)
    return out


@pytest.mark.filterwarnings("ignore:DEPRECATED API CALL:DeprecationWarning")  # v3 stats
def test_fleet_serve_answers_the_stats_apis_over_http(fleet: dict[str, Any]) -> None:
    """`logstats fleet serve`: the daemon's router and listener over the fleet. Each vendor
    shape's HTTP answer is `logstats fleet query`'s (itself the sum of the hosts, above);
    cPanel EmailTrack::stats and WHM emailtrack_stats are the sum of the hosts' own rows;
    the official Mailgun SDK reads it; the keys are fleet-wide (scope rule, 401 without a
    key); routes of Track Delivery rows are 404 in their API's envelope; SIGTERM exits 0."""
    import yaml

    from tests.daemon_harness import Serve
    from tests.mta.sink import free_port
    from tests.test_api import ADMIN_KEY, emailtrack_params, whm

    alice_key = "fleet-alice-key-0123456"

    cfg = fleet["folder"] / "fleet-serve.yaml"
    settings = yaml.safe_load(fleet["cfg"].read_text())
    keys = [{"key": ADMIN_KEY, "name": "admin"},
            {"key": alice_key, "name": "alice.test", "accounts": ["alice.test"]}]  # fmt: skip
    settings["api"] = {"keys": keys, "admins": ["root"]}
    cfg.write_text(yaml.safe_dump(settings, sort_keys=False))
    port = free_port()
    argv = [sys.executable, "-m", "logstats", "fleet", "--from", str(fleet["out"]), "serve",
            "--config", str(cfg), "--tcp", f"127.0.0.1:{port}"]  # fmt: skip
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with Serve(cfg, argv=argv) as d:
        d.wait_ready(timeout=60)
        # the vendor shapes: what `logstats fleet query` prints
        for shape, args in QUERIES[2:]:
            path, params = args[0], _params(args[1:])
            _, cli_text = _fleet(fleet["out"], "duckdb", "query", shape, *args)
            auth = {
                "mailgun": {"Authorization": "Basic " + _basic("api", ADMIN_KEY)},
                "sendgrid": {},
                "smtpeter": {},
            }[shape]
            if shape == "sendgrid":
                params = {**params, "api_user": ["admin"], "api_key": [ADMIN_KEY]}
            if shape == "smtpeter":
                params = {**params, "access_token": [ADMIN_KEY]}
            status, body = _http(port, path, params, auth)
            assert 200 == status, body
            assert json.loads(cli_text) == body, shape
        # cPanel API 2 EmailTrack::stats for one account: the hosts' rows added up
        window = {"starttime": "1735603200", "endtime": "1735948800"}  # 2024-12-31 .. 01-04
        asked = {**emailtrack_params("alice.test"), **window}
        status, body = _http(port, "/json-api/cpanel", asked, whm(ADMIN_KEY))
        assert 200 == status, body
        [row] = body["cpanelresult"]["data"]
        span = ["--all", "--format", "json", "--start", "20241231", "--end", "20250104"]
        own = [_host_answer(fleet, h, "emailtrack", span).get("alice.test") for h in HOSTS]
        expected = {k: str(sum(int(r[k]) for r in own if r)) for k in own[0]}
        assert {k: row[k] for k in expected} == expected
        assert int(row["SENDCOUNT"]) > 0 and int(row["INPROGRESSCOUNT"]) >= 0
        # WHM API 1 emailtrack_stats: every account, every host
        status, body = _http(port, "/json-api/emailtrack_stats", {"api.version": "1", **window},
                             whm(ADMIN_KEY))  # fmt: skip
        assert 200 == status and 1 == body["metadata"]["result"], body
        # the official Mailgun SDK, unpatched, reads the fleet's totals
        client_mod = pytest.importorskip("mailgun.client")
        with client_mod.Client(auth=("api", ADMIN_KEY), api_url=f"http://127.0.0.1:{port}") as c:
            total = c.stats_total.get(filters={"event": ["accepted", "delivered"],
                                               "start": "1735603200", "end": "1735948800"})
            assert 200 == total.status_code, total.text
            _, cli_text = _fleet(fleet["out"], "duckdb", "query", "mailgun", "/v3/stats/total",
                                 "event=accepted", "event=delivered", "start=1735603200",
                                 "end=1735948800")  # fmt: skip
            assert json.loads(cli_text)["stats"] == total.json()["stats"]
        # keys are fleet-wide: alice's key sees alice, not bob; no key on TCP is 401
        mine = {"Authorization": f"cpanel alice.test:{alice_key}"}
        status, body = _http(port, "/json-api/cpanel", asked, mine)
        assert 200 == status and [row] == body["cpanelresult"]["data"]
        status, _ = _http(port, "/json-api/cpanel",
                          {**emailtrack_params("bob.test"), **window}, mine)  # fmt: skip
        assert 403 == status
        status, _ = _http(port, "/v3/stats/total", {"event": "accepted"}, {})
        assert 401 == status
        # what reads Track Delivery rows is not answered over the fleet
        status, body = _http(port, "/v3/alice.test/events", {}, admin)
        assert (404, "not answered over the fleet: /v3/alice.test/events") == (
            status, body.get("message"))  # fmt: skip
        status, body = _http(port, "/json-api/cpanel",
                             {**emailtrack_params("alice.test"), "cpanel_jsonapi_func": "search"},
                             whm(ADMIN_KEY))  # fmt: skip
        assert 404 == status
        status, body = _http(port, "/v1/emailtrack", {"account": "alice.test",
                             "cpanel_jsonapi_func": "search"}, admin)  # fmt: skip
        assert 404 == status, body
        assert 0 == d.terminate()
        assert "fleet_serve_stopped" in d.names()


def _basic(user: str, secret: str) -> str:
    import base64

    return base64.b64encode(f"{user}:{secret}".encode()).decode()


def _copy_host(out: Path, host: str, to: str) -> None:
    """Every partition of ``host`` again under the host name ``to`` (a host that exported
    after the fleet was opened)."""
    import shutil

    for table in fleet_export.TABLES:
        source = out / table / f"host={host}"
        if source.is_dir():
            shutil.copytree(source, out / table / f"host={to}")


def test_the_fleet_reads_exports_made_while_it_serves(
    fleet: dict[str, Any], spark: Any, tmp_path: Path
) -> None:
    """Hosts export while the fleet is read: a day's queue drained (its last ``pending``
    file removed), a host that exported since the engine started, a partition replaced.
    Both engines answer from the files as they are at the question, as a new engine would;
    and `logstats fleet serve` does over HTTP."""
    import shutil
    from datetime import UTC

    from logstats.config import load as load_config
    from logstats.fleet.engine import DuckDBEngine, SparkEngine, engine
    from logstats.fleet.serve import FleetRouter
    from logstats.model import StatsRequest
    from tests.daemon_harness import Serve
    from tests.mta.sink import free_port
    from tests.test_api import ADMIN_KEY, emailtrack_params, whm

    out = tmp_path / "export"
    shutil.copytree(fleet["out"], out)
    req = StatsRequest(datetime(2024, 12, 31, tzinfo=UTC), datetime(2025, 1, 4, tzinfo=UTC))

    def fresh() -> list[Any]:
        e = engine("duckdb", out)
        try:
            return e.account_stats(req)
        finally:
            e.close()

    engines = [DuckDBEngine(out), SparkEngine(out, spark=spark)]
    relisted = SparkEngine(out, spark=spark)  # behind a router: listed again apart
    relisted.relist_seconds = 0.2
    router = FleetRouter(relisted, load_config(str(fleet["cfg"])), dict)
    cfg = fleet["folder"] / "fleet-serve-live.yaml"
    cfg.write_text(fleet["cfg"].read_text() + f"api:\n  keys: [{{key: {ADMIN_KEY}, name: admin}}]\n"
                   "  admins: [root]\n")  # fmt: skip
    port = free_port()
    argv = [sys.executable, "-m", "logstats", "fleet", "--from", str(out), "serve",
            "--config", str(cfg), "--tcp", f"127.0.0.1:{port}"]  # fmt: skip
    window = {"starttime": "1735603200", "endtime": "1735948800"}

    def served() -> dict[str, str]:
        """alice.test's EmailTrack::stats row from `logstats fleet serve`."""
        asked = {**emailtrack_params("alice.test"), **window}
        status, body = _http(port, "/json-api/cpanel", asked, whm(ADMIN_KEY))
        assert 200 == status, body
        [row] = body["cpanelresult"]["data"]
        return {k: str(v) for k, v in row.items()}

    def alice(stats: list[Any]) -> dict[str, str]:
        [mine] = [a for a in stats if a.account == "alice.test"]
        return {"SENDCOUNT": str(mine.sendcount), "SUCCESSCOUNT": str(mine.successcount),
                "INPROGRESSCOUNT": str(mine.inprogresscount)}  # fmt: skip

    def same(row: dict[str, str], stats: list[Any]) -> None:
        want = alice(stats)
        assert {k: row[k] for k in want} == want

    with Serve(cfg, argv=argv) as d:
        d.wait_ready(timeout=60)
        start = fresh()
        for e in engines:
            assert e.account_stats(req) == start
        same(served(), start)
        queued = fleet_export.exported_files(out, "pending")
        assert queued and alice(start)["INPROGRESSCOUNT"] != "0"
        for path in queued:  # every queue drained: the pending files removed
            path.unlink()
        drained = fresh()
        assert not any(a.inprogresscount for a in drained)
        for e in engines:
            assert e.account_stats(req) == drained
        same(served(), drained)
        _copy_host(out, HOSTS[0], "mx4.example")  # a host that exported since
        grown = fresh()
        assert int(alice(grown)["SENDCOUNT"]) > int(alice(drained)["SENDCOUNT"])
        for e in engines:
            if isinstance(e, SparkEngine):
                e.refresh()  # Spark lists the files when the views are made
            assert e.account_stats(req) == grown
        same(served(), grown)
        assert 0 == d.terminate()
    deadline = time.monotonic() + 60
    while router.stats(req) != grown:  # the relisting thread's next round swaps it in
        assert time.monotonic() < deadline, "Spark behind the router never saw the new host"
        time.sleep(0.2)
    router.stop()
    assert router.relister is not None
    router.relister.join(timeout=30)
    assert not router.relister.is_alive()
    for e in engines:
        e.close()


def test_spark_behind_the_server_reads_a_rewritten_partition_whole(
    fleet: dict[str, Any], spark: Any, tmp_path: Path
) -> None:
    """A Spark DataFrame keeps each file's size as listed, so a partition an export
    replaced since would be read short, without an error.  The export's generation file
    of the host changes with its partitions, and the server lists again before answering:
    after a host's store grew within the days it had exported, `fleet serve` on Spark
    answers as a fresh DuckDB engine does."""
    import shutil
    from datetime import UTC

    from logstats.config import load as load_config
    from logstats.fleet.engine import DuckDBEngine, SparkEngine
    from logstats.fleet.serve import FleetRouter
    from logstats.model import StatsRequest

    out = tmp_path / "export"
    shutil.copytree(fleet["out"], out)
    cfg = fleet["cfg"]
    log, db = tmp_path / "mainlog", tmp_path / "mx5.duckdb"
    lines = exim_log(seed=300, messages=600).lines
    args = ["--config", str(cfg), "--db", str(db)]
    export = [*args, "--to", str(out), "--host", "mx5.example"]
    log.write_text("\n".join(lines[: len(lines) // 3]) + "\n")
    run_cli("backfill", *args, "--no-progress", str(log))
    run_cli("export", *export)
    marker = fleet_export.generation_file(out, "mx5.example")
    first = marker.read_text()
    req = StatsRequest(datetime(2024, 12, 31, tzinfo=UTC), datetime(2025, 1, 4, tzinfo=UTC))

    def fresh() -> list[Any]:
        e = DuckDBEngine(out)
        try:
            return e.account_stats(req)
        finally:
            e.close()

    engine = SparkEngine(out, spark=spark)
    router = FleetRouter(engine, load_config(str(cfg)), dict)
    try:
        assert router.stats(req) == fresh()
        assert not engine.stale()
        before = _files(out)
        log.write_text("\n".join(lines) + "\n")  # the same days, three times the mail
        run_cli("backfill", *args, "--no-progress", str(log))
        proc = run_cli("export", *export)
        done = json.loads(proc.stderr.strip().splitlines()[-1])
        rewritten = [p for p in before if "host=mx5.example" in str(p) and p in _files(out)
                     and _files(out)[p] != before[p]]  # fmt: skip
        assert rewritten and done["written"] >= len(rewritten)
        assert marker.read_text() != first
        assert engine.stale()
        assert router.stats(req) == fresh()  # listed again before the answer
        assert not engine.stale()
        # nothing changed: the generation stays, and nothing is listed again
        run_cli("export", *export)
        assert not engine.stale()
    finally:
        router.stop()
