"""One central syslog file for many MTAs: the syslog host is part of the queue-id scope and a
dimension of every counter.

A central rsyslog or syslog-ng writes the lines of several MTAs into one file, each with the
sending host in its syslog header.  Queue ids are unique per MTA only, so the files here are
built so that they collide on purpose:

- Postfix: the real recorded scenario (tests/mta/samples/postfix.log) as logged by three
  hosts at once, line for line: every queue id appears three times at the same second;
- Exim: three different scripted logs (tests/logmaker.py, each with its own truth) whose
  message ids are renamed to one shared sequence, wrapped in syslog as Exim logs there
  (``Mmm dd hh:mm:ss host exim[pid]: id <= ...``).

Each host's numbers must equal that host's own truth, and the numbers across hosts their
sum, in EmailTrack, Mailgun, SendGrid and SMTPeter and in the Track Delivery search.
"""

from __future__ import annotations

import heapq
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli, scenario_config
from tests.daemon_harness import SAMPLES, SAMPLES_END, summed
from tests.logmaker import as_strings, exim_log

HOSTS = ("mx1", "mx2", "mx3")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_EXIM_ID = re.compile(
    r"\b[0-9A-Za-z]{6}-(?:[0-9A-Za-z]{11}-[0-9A-Za-z]{4}|[0-9A-Za-z]{6}-[0-9A-Za-z]{2})\b"
)


def _emailtrack(db: Path, cfg: Path, *extra: str) -> dict[str, dict[str, str]]:
    out = run_cli(
        "query", "emailtrack", "--config", str(cfg), "--db", str(db), "--all", "--format",
        "json", *extra,
    )  # fmt: skip
    return dict(json.loads(out.stdout))


def _api(db: Path, cfg: Path, shape: str, path: str, *params: str) -> Any:
    out = run_cli("query", shape, "--config", str(cfg), "--db", str(db), path, *params)
    return json.loads(out.stdout)


def _central_postfix(path: Path) -> dict[str, dict[str, int]]:
    """The recorded Postfix log as three hosts logged it into one file; one host's truth."""
    lines = (SAMPLES / "postfix.log").read_text().splitlines(keepends=True)
    assert all(line[15:19] == " mx " for line in lines)  # "Nov 24 06:00:18 mx postfix/..."
    with path.open("w") as out:
        for line in lines:
            for host in HOSTS:  # the same second, the same queue id, three MTAs
                out.write(line[:15] + f" {host} " + line[19:])
    stamp = SAMPLES_END.timestamp()  # yearless stamps take their year from the file's mtime
    os.utime(path, (stamp, stamp))
    return dict(json.loads((SAMPLES / "postfix.truth.json").read_text())["truth"])


def _shared_ids(lines: list[str]) -> list[str]:
    """The log with its message ids renamed to the same sequence every host gets: the n-th
    id first seen becomes the n-th id of the sequence."""
    names: dict[str, str] = {}

    def rename(m: re.Match[str]) -> str:
        old = m.group(0)
        if old not in names:
            n = len(names)
            names[old] = f"Q{n:05d}-{n:011d}-WXYZ"  # Exim 4.97's form
        return names[old]

    return [_EXIM_ID.sub(rename, line) for line in lines]


def _central_exim(path: Path) -> dict[str, dict[str, dict[str, int]]]:
    """Three scripted Exim logs, ids shared, syslog-wrapped and merged by time; truths."""
    truths: dict[str, dict[str, dict[str, int]]] = {}
    streams = []
    for n, host in enumerate(HOSTS):
        script = exim_log(seed=101 + n, messages=40)
        truths[host] = {a: dict(row) for a, row in script.truth.items()}
        wrapped = []
        for line in _shared_ids(script.lines):
            ts = datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S")
            head = f"{_MONTHS[ts.month - 1]} {ts.day:2d} {ts:%H:%M:%S} {host} exim[{4000 + n}]: "
            wrapped.append((ts, head + line[20:] + "\n"))
        streams.append(wrapped)
    with path.open("w") as out:
        for _, text in heapq.merge(*streams, key=lambda item: item[0]):
            out.write(text)
    # the scripts run over New Year: the year comes from the file's mtime, after the end
    stamp = datetime(2025, 1, 2, tzinfo=UTC).timestamp()
    os.utime(path, (stamp, stamp))
    return truths


@pytest.fixture(scope="module")
def central(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Both central files backfilled into one store, with the shipped defaults and the
    account map only."""
    folder = tmp_path_factory.mktemp("central")
    cfg = scenario_config(folder)
    # the logs are dated: keep their Track Delivery rows on any date the suite runs
    cfg.write_text(cfg.read_text() + "store:\n  retention_days: 36500\n")
    postfix, exim = folder / "central-postfix.log", folder / "central-exim.log"
    postfix_truth = _central_postfix(postfix)
    exim_truths = _central_exim(exim)
    db = folder / "central.duckdb"
    run_cli("backfill", "--config", str(cfg), "--db", str(db), "--mta", "postfix", str(postfix))
    run_cli("backfill", "--config", str(cfg), "--db", str(db), "--mta", "exim", str(exim))
    return {"cfg": cfg, "db": db, "postfix": postfix_truth, "exim": exim_truths}


def test_the_queue_ids_collide_across_hosts(central: dict[str, Any], tmp_path: Path) -> None:
    """The files are what the test claims: every host uses the same queue ids, so a scope
    without the host would mix their messages."""
    text = (central["cfg"].parent / "central-exim.log").read_text()
    ids = {host: set() for host in HOSTS}  # type: dict[str, set[str]]
    for line in text.splitlines():
        host = line.split()[3]
        ids[host].update(_EXIM_ID.findall(line))
    assert ids["mx1"] & ids["mx2"] & ids["mx3"]
    assert len(ids["mx1"] & ids["mx2"] & ids["mx3"]) >= 25
    # and the scripts differ: one scope for all would not give any host's truth
    assert central["exim"]["mx1"] != central["exim"]["mx2"]


def test_each_host_answers_its_own_truth(central: dict[str, Any]) -> None:
    """EmailTrack per host (``--host``) is that host's scripted truth, for every account
    (in-progress messages included); across hosts it is the sum."""
    db, cfg = central["db"], central["cfg"]
    for host in HOSTS:
        want = summed(central["postfix"], central["exim"][host])
        assert _emailtrack(db, cfg, "--host", host) == want, host
    every = summed(*([central["postfix"]] * 3), *central["exim"].values())
    assert _emailtrack(db, cfg) == every
    assert _emailtrack(db, cfg, "--host", "mx9") == {}
    exim_only = as_strings(central["exim"]["mx2"])
    assert exim_only != summed(central["postfix"], central["exim"]["mx2"])


def _sum_stats(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """Mailgun ``stats`` items summed field by field (the totals of the answers)."""
    total: dict[str, Any] = {}

    def add(into: dict[str, Any], item: dict[str, Any]) -> None:
        for key, value in item.items():
            if isinstance(value, dict):
                add(into.setdefault(key, {}), value)
            elif isinstance(value, int) and not isinstance(value, bool):
                into[key] = into.get(key, 0) + value

    for answer in answers:
        for item in answer["stats"]:
            add(total, {k: v for k, v in item.items() if k != "time"})
    return total


WINDOW = ("start=1700000000", "end=1900000000", "resolution=month")


def test_the_vendor_shapes_add_up_over_hosts(central: dict[str, Any]) -> None:
    """Mailgun, SendGrid and SMTPeter per host (``host=``) sum to their answer across
    hosts, and a host's answer is its own (the hosts' mail differs)."""
    db, cfg = central["db"], central["cfg"]
    events = [f"event={e}" for e in ("accepted", "delivered", "failed", "stored")]
    path = "/v3/stats/total"
    per_host = [_api(db, cfg, "mailgun", path, *events, *WINDOW, f"host={h}") for h in HOSTS]
    every = _api(db, cfg, "mailgun", path, *events, *WINDOW)
    assert _sum_stats(per_host) == _sum_stats([every])
    assert _sum_stats([every])["delivered"]["total"] > 0
    assert per_host[0]["stats"] != per_host[1]["stats"]

    sg = "/api/distributor.manage.json"
    args = ("method=stats", "user=alice", "start_date=2023-01-01", "end_date=2030-01-01")
    sg_hosts = [_api(db, cfg, "sendgrid", sg, *args, "aggregate=1", f"host={h}") for h in HOSTS]
    sg_all = _api(db, cfg, "sendgrid", sg, *args, "aggregate=1")

    def sg_sum(answers: list[Any]) -> dict[str, int]:
        out: dict[str, int] = {}
        for answer in answers:
            for row in answer if isinstance(answer, list) else [answer]:
                for k, v in row.items():
                    if isinstance(v, int) and not isinstance(v, bool):
                        out[k] = out.get(k, 0) + v
        return out

    assert sg_sum(sg_hosts) == sg_sum([sg_all])
    assert sg_sum([sg_all])["requests"] > 0

    tagged = [_api(db, cfg, "smtpeter", "/v1/stats/newsletter", f"host={h}") for h in HOSTS]
    tag_all = _api(db, cfg, "smtpeter", "/v1/stats/newsletter")

    def tag_sum(answers: list[Any]) -> dict[str, int]:
        out: dict[str, int] = {}
        for answer in answers:
            for k, v in answer.items():
                if isinstance(v, int) and not isinstance(v, bool):
                    out[k] = out.get(k, 0) + v
        return out

    assert tag_sum(tagged) == tag_sum([tag_all])


def test_a_bad_host_parameter_is_the_apis_own_400(central: dict[str, Any]) -> None:
    db, cfg = central["db"], central["cfg"]
    out = run_cli(
        "query", "mailgun", "--config", str(cfg), "--db", str(db), "/v3/stats/total",
        "event=delivered", "host=a b", check=False,
    )  # fmt: skip
    assert out.returncode == 1
    assert "host" in json.loads(out.stdout)["message"]


def test_track_delivery_rows_are_found_per_host(central: dict[str, Any]) -> None:
    """The search by host finds that host's rows only, and the rows of one queue id on the
    three hosts are three messages."""
    db, cfg = central["db"], central["cfg"]

    def rows(*extra: str) -> list[dict[str, Any]]:
        out = run_cli(
            "search", "--config", str(cfg), "--db", str(db), "--start", "20241231",
            "--end", "20270101", "--limit", "100000", "--format", "json", *extra,
            check=False,
        )  # fmt: skip
        return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]

    found = {host: rows("--host", host) for host in HOSTS}
    every = rows()
    assert sum(len(r) for r in found.values()) == len(every) > 0
    for host, got in found.items():
        assert {r["scope"].partition("/")[0] for r in got} == {host}
    scopes: dict[str, set[str]] = {}
    for r in every:
        scopes.setdefault(r["queue_id"], set()).add(r["scope"])
    assert sum(1 for s in scopes.values() if s == set(HOSTS)) >= 25


def test_metrics_are_per_host(central: dict[str, Any]) -> None:
    """/metrics labels the mail counters by MTA and syslog host: each (MTA, host) pair is
    that host's scripted truth as EmailTrack counts it (delivered = SUCCESSCOUNT,
    deferrals = DEFERCOUNT, delivered bytes = TOTALSIZE, accepted + rejected = SENDCOUNT,
    failed + rejected = FAILCOUNT)."""
    import duckdb
    from prometheus_client.parser import text_string_to_metric_families

    from logstats.metrics import render

    con = duckdb.connect(str(central["db"]), read_only=True)
    try:
        text = render(con)
    finally:
        con.close()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    got: dict[tuple[str, str], dict[str, int]] = {}
    for name, key in (("logstats_messages_accepted", "accepted"),
                      ("logstats_deferrals", "deferred"),
                      ("logstats_delivered_bytes", "bytes")):  # fmt: skip
        for sample in families[name].samples:
            pair = (sample.labels["mta"], sample.labels["host"])
            got.setdefault(pair, {})[key] = int(sample.value)
    for sample in families["logstats_recipients"].samples:
        pair = (sample.labels["mta"], sample.labels["host"])
        got.setdefault(pair, {})[sample.labels["outcome"]] = int(sample.value)
    assert set(got) == {(mta, h) for mta in ("exim", "postfix") for h in HOSTS}
    for host in HOSTS:
        for mta, truth in (("postfix", central["postfix"]), ("exim", central["exim"][host])):
            keys = ("SENDCOUNT", "SUCCESSCOUNT", "DEFERCOUNT", "FAILCOUNT", "TOTALSIZE")
            want = {k: sum(int(row.get(k, 0)) for row in truth.values()) for k in keys}
            mine = got[(mta, host)]
            assert want == {
                "SENDCOUNT": mine["accepted"] + mine["rejected"],
                "SUCCESSCOUNT": mine["delivered"],
                "DEFERCOUNT": mine["deferred"],
                "FAILCOUNT": mine["failed"] + mine["rejected"],
                "TOTALSIZE": mine["bytes"],
            }, (mta, host)
            assert want["SENDCOUNT"] > 0
