"""`logstats search`, `trace` and `report` on the bundled real-MTA logs (fixtures/demo).

The truth they are held to is independent of the Track Delivery rows: EmailTrack's
counters (`logstats query emailtrack --all`, kept apart from the rows), the real logs'
own lines, and pflogsumm run on the real Postfix log.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import ROOT, all_stats, run_cli
from tests.test_peers import PFLOGSUMM, pflogsumm_totals

DEMO = ROOT / "fixtures" / "demo"
CONFIG = str(ROOT / "config" / "logstats.yaml")


def _store(folder: Path, *logs: Path) -> list[str]:
    db = folder / "t.duckdb"
    run_cli("backfill", "--config", CONFIG, "--db", str(db), *map(str, logs))
    return ["--config", CONFIG, "--db", str(db)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A store of both demo logs (Exim and Postfix)."""
    return _store(tmp_path_factory.mktemp("demo"), *sorted(DEMO.iterdir()))


def _rows(base: list[str], *args: str) -> list[dict]:
    proc = run_cli("search", *base, "--format", "json", "--limit", "100000", *args, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


def _sums(db_args: list[str]) -> Counter[str]:
    total: Counter[str] = Counter()
    for row in all_stats(Path(db_args[3]), "--config", CONFIG).values():
        total.update({k: int(v) for k, v in row.items()})
    return total


def test_search_rows_agree_with_the_counters(demo):
    """Over everything stored, the rows of each type are what EmailTrack counts: delivered
    rows = SUCCESSCOUNT, deferred = DEFERCOUNT, failed + rejected = FAILCOUNT; the default
    window (24 hours up to the newest row) holds the whole demo, which spans minutes."""
    sums = _sums(demo)
    rows = _rows(demo, "--start", "0")
    kinds = Counter(r["outcome"] for r in rows)
    assert kinds["delivered"] == sums["SUCCESSCOUNT"] > 0
    assert kinds["deferred"] == sums["DEFERCOUNT"] > 0
    assert kinds["failed"] + kinds["rejected"] + kinds["expired"] == sums["FAILCOUNT"] > 0
    assert {r["queue_id"] for r in rows if r["outcome"] == "inprogress"}
    assert _rows(demo) == rows  # the default window follows the data, not the clock
    times = [r["ts"] for r in rows if r["outcome"] != "inprogress"]
    assert times == sorted(times, reverse=True)
    oldest = [r["ts"] for r in _rows(demo, "--oldest-first") if r["outcome"] != "inprogress"]
    assert oldest == sorted(times)


def test_search_filters(demo):
    """Each filter keeps exactly the rows it names (checked on the unfiltered rows)."""
    everything = _rows(demo)
    alice = _rows(demo, "--account", "alice")
    assert alice == [r for r in everything if r["account"] == "alice"] != []
    stats = all_stats(Path(demo[3]), "--config", CONFIG)["alice"]
    assert sum(r["outcome"] == "delivered" for r in alice) == int(stats["SUCCESSCOUNT"])
    defer = _rows(demo, "--recipient", "DEFER-*@remote.test")
    assert defer and all(r["recipient"].startswith("defer-") for r in defer)
    assert len(defer) == sum(r["recipient"].startswith("defer-") for r in everything)
    typed = _rows(demo, "--type", "failed", "--type", "rejected")
    assert typed == [r for r in everything if r["outcome"] in ("failed", "rejected")] != []
    sender = _rows(demo, "--sender", "bob@bob.test", "--type", "delivered")
    assert sender and {r["sender"] for r in sender} == {"bob@bob.test"}
    domain = _rows(demo, "--domain", "local.test")
    assert domain == [
        r
        for r in everything
        if r["sender_domain"] == "local.test" or r["recipient"].endswith("@local.test")
    ]
    qid = next(r["queue_id"] for r in everything if r["outcome"] == "failed")
    assert {r["queue_id"] for r in _rows(demo, "--queue-id", qid)} == {qid}
    mid = next(r["message_id"] for r in everything if r["message_id"])
    assert _rows(demo, "--message-id", f"<{mid.strip('<>')}>") == [
        r for r in everything if r["message_id"] == mid
    ]
    assert len(_rows(demo, "--limit", "3")) == 3


def test_search_exit_status_and_table(demo):
    """No rows: exit 1 and nothing on stdout (as grep); rows: exit 0 and a table whose
    reasons are cut to 60 characters off a terminal."""
    none = run_cli("search", *demo, "--account", "nobody-at-all", check=False)
    assert (1, "") == (none.returncode, none.stdout)
    table = run_cli("search", *demo, "--type", "deferred").stdout.splitlines()
    assert table[0].split()[:3] == ["TIME", "(UTC)", "TYPE"]
    assert len(table) == 1 + len(_rows(demo, "--type", "deferred"))
    reason_at = table[0].index("REASON")
    assert all(len(line) - reason_at <= 60 for line in table)
    assert any(line.endswith("…") for line in table)
    bad = run_cli("search", *demo, "--type", "bogus", check=False)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def _log_lines_with(qid: str) -> list[str]:
    return [
        line
        for log in DEMO.iterdir()
        for line in log.read_text(errors="replace").splitlines()
        if qid in line
    ]


def test_trace_a_bounced_postfix_message(demo):
    """A message with a failed recipient: its receipt, every attempt the log has for it,
    and its bounce, whose own receipt comes from the MTA (`from=<>`)."""
    everything = _rows(demo, "--start", "0")
    failed = next(r for r in everything if r["outcome"] == "failed" and r["mta"] == "postfix")
    qid = failed["queue_id"]
    body = json.loads(run_cli("trace", *demo, qid, "--format", "json").stdout)
    mine = next(m for m in body["messages"] if m["queue_id"] == qid)
    lines = _log_lines_with(qid)
    sender = re.search(r"from=<([^>]*)>", "\n".join(lines))
    assert sender is not None and mine["receipt"]["sender"] == sender.group(1)
    attempts = [line for line in lines if " status=" in line]
    assert len(mine["attempts"]) == len(attempts) > 0
    assert mine["bounces"], "the failure made a bounce"
    bounce = next(m for m in body["messages"] if m["queue_id"] == mine["bounces"][0])
    assert bounce["receipt"]["sender"] in ("", None)
    assert all(a["parent"] == qid for a in bounce["attempts"])
    text = run_cli("trace", *demo, qid).stdout
    assert f"bounce: the non-delivery notice is {mine['bounces'][0]}" in text
    assert f"from <{sender.group(1)}>" in text
    # by its Message-ID: the same message
    mid = mine["receipt"]["message_id"]
    by_mid = json.loads(run_cli("trace", *demo, f"<{mid}>", "--format", "json").stdout)
    assert qid in {m["queue_id"] for m in by_mid["messages"]}


def test_trace_puts_a_message_before_its_bounce_within_one_second(tmp_path: Path) -> None:
    """The demo's bounced Postfix message as a faster host logs it: everything within one
    second, and qmgr's ``from=<>`` line of the bounce before bounce's "sender non-delivery
    notification" line (two processes: either comes first), so the bounce's receipt is
    stored before its parent is known.  The trace is the message, then its bounce."""
    from logstats import track
    from logstats.store import Store

    orig, bounce = "EE78816229B", "15B5B1620E5"  # the bounce's queue id sorts first
    lines = [x for x in (DEMO / "maillog").read_text().splitlines() if orig in x or bounce in x]
    notice = next(i for i, x in enumerate(lines) if "non-delivery notification" in x)
    receipt = next(i for i, x in enumerate(lines) if f"{bounce}: from=<>" in x)
    assert receipt == notice + 1
    lines[notice], lines[receipt] = lines[receipt], lines[notice]
    log = tmp_path / "maillog"
    log.write_text("".join("Nov 24 06:00:19" + x[len("Nov 24 06:00:19"):] + "\n" for x in lines))
    args = _store(tmp_path, log)
    with Store(args[3], read_only=True) as store:
        rows = track.trace(store.con, orig)
    assert (orig, track.SEND) == (rows[0].queue_id, rows[0].outcome)
    ids = [r.queue_id for r in rows]
    assert ids == sorted(ids, key=lambda q: q != orig) and bounce in ids
    assert next(r.outcome for r in rows if r.queue_id == bounce) == track.SEND


def test_trace_still_queued_and_complete(demo):
    """A message whose recipient is still deferred is not complete and says what waits; a
    message with every recipient delivered is complete."""
    everything = _rows(demo, "--start", "0")
    queued = next(r["queue_id"] for r in everything if r["outcome"] == "inprogress")
    body = json.loads(run_cli("trace", *demo, queued, "--format", "json").stdout)
    mine = next(m for m in body["messages"] if m["queue_id"] == queued)
    assert mine["in_queue"] and not mine["complete"]
    assert "in queue" in run_cli("trace", *demo, queued).stdout
    by_queue: dict[str, set[str]] = {}
    for r in everything:
        by_queue.setdefault(r["queue_id"], set()).add(r["outcome"])
    done = next(q for q, kinds in by_queue.items() if kinds == {"delivered"})
    body = json.loads(run_cli("trace", *demo, done, "--format", "json").stdout)
    assert next(m for m in body["messages"] if m["queue_id"] == done)["complete"]


def test_trace_an_unknown_id(demo):
    proc = run_cli("trace", *demo, "NOSUCHID42", check=False)
    assert (1, "") == (proc.returncode, proc.stdout)
    assert proc.stderr.startswith("logstats: error: NOSUCHID42: no message")


def test_report_totals_are_the_emailtrack_counters(demo):
    """received + rejected = SENDCOUNT, bounced + rejected = FAILCOUNT, and delivered,
    deferred, bytes, in progress are SUCCESSCOUNT, DEFERCOUNT, TOTALSIZE, INPROGRESSCOUNT
    of `query emailtrack --all` for the same day; --day is that UTC day."""
    sums = _sums(demo)  # everything: the demo is one morning
    day = json.loads(run_cli("report", *demo, "--day", "2026-11-24", "--format", "json").stdout)
    t = day["totals"]
    assert t["received"] + t["rejected"] == sums["SENDCOUNT"]
    assert t["bounced"] + t["rejected"] == sums["FAILCOUNT"]
    assert (t["delivered"], t["deferred"], t["bytes_delivered"], t["in_progress"]) == (
        sums["SUCCESSCOUNT"],
        sums["DEFERCOUNT"],
        sums["TOTALSIZE"],
        sums["INPROGRESSCOUNT"],
    )
    assert t["rejected"] == len(_rows(demo, "--type", "rejected"))
    assert len(day["hourly"]) == 24
    assert sum(h["delivered"] for h in day["hourly"]) == t["delivered"]
    same = run_cli("report", *demo, "--start", "20261124", "--end", "20261125", "--format", "json")
    assert json.loads(same.stdout) == day
    # by default: the day before the newest row's day, here an empty one
    before = json.loads(run_cli("report", *demo, "--format", "json").stdout)
    assert before["start"].startswith("2026-11-23T00:00") and before["totals"]["delivered"] == 0
    top = {v["value"]: v["count"] for v in day["top"]["recipient_domains"]}
    delivered = [r for r in _rows(demo) if r["outcome"] == "delivered"]
    assert top == Counter(r["recipient"].rpartition("@")[2] for r in delivered)


@pytest.mark.skipif(shutil.which(PFLOGSUMM) is None, reason="pflogsumm is not installed")
def test_report_agrees_with_pflogsumm(tmp_path):
    """On the real Postfix log, the report's Grand Totals are pflogsumm's where the two
    count the same thing: pflogsumm's received leaves out the bounces Postfix made itself,
    its deferred line counts messages (its deferrals are our deferred events)."""
    base = _store(tmp_path, DEMO / "maillog")
    ours = json.loads(run_cli("report", *base, "--start", "0", "--format", "json").stdout)
    t = ours["totals"]
    p = pflogsumm_totals(DEMO / "maillog")
    assert {
        "received": t["received"] - t["generated"],
        "delivered": t["delivered"],
        "deferrals": t["deferred"],
        "bounced": t["bounced"],
        "rejected": t["rejected"],
        "bytes delivered": t["bytes_delivered"],
        "senders": t["senders"],
        "recipients": t["recipients"],
        "recipient hosts/domains": t["recipient_domains"],
        "sending hosts/domains": t["sending_domains"],
    } == {
        k: p[k]
        for k in (
            "received",
            "delivered",
            "deferrals",
            "bounced",
            "rejected",
            "bytes delivered",
            "senders",
            "recipients",
            "recipient hosts/domains",
            "sending hosts/domains",
        )
    }
    text = run_cli("report", *base, "--start", "0").stdout
    assert re.search(rf"^\s+{t['delivered']}\s+delivered$", text, re.MULTILINE)
    assert "Per-Hour Traffic Summary" in text and "Reject reasons" in text


def test_report_window_errors(demo):
    proc = run_cli("report", *demo, "--end", "20261125", check=False)
    assert proc.returncode == 1 and "--end needs --start" in proc.stderr
    proc = run_cli("report", *demo, "--day", "2026-13-01", check=False)
    assert proc.returncode == 2 and "is not a day" in proc.stderr


@pytest.mark.parametrize("command", ["search", "trace", "report"])
def test_new_commands_are_in_the_manual(command):
    proc = run_cli(command, "--help")
    assert "usage: logstats" in proc.stdout
    assert f"logstats {command}" in (ROOT / "docs" / "logstats.1").read_text().replace(
        "\\-", "-"
    ).replace("\\fB", "").replace("\\fR", "")


def test_through_a_running_daemon(tmp_path):
    """While `logstats serve` holds the database (DuckDB lets no other process open it),
    search, trace and report answer through its socket exactly as from a backfilled file."""
    import getpass

    from tests.daemon_harness import Serve, short_dir, write_config

    domains = {"alice.test": "alice", "bob.test": "bob"}
    with short_dir() as folder:
        logs = []
        for log in sorted(DEMO.iterdir()):
            copy = folder / log.name
            copy.write_bytes(log.read_bytes())
            logs.append((copy, "exim" if "exim" in log.name else "postfix"))
        me = getpass.getuser()
        cfg = write_config(folder, logs, domains=domains, api={"admins": [me]})
        offline_cfg = write_config(tmp_path, [], db=tmp_path / "off.duckdb", domains=domains)
        run_cli("backfill", "--config", str(offline_cfg), *(str(p) for p, _ in logs))
        d = Serve(cfg)
        try:
            d.wait_ready()
            want = _rows(["--config", str(offline_cfg)], "--start", "0")
            d.wait_lines(sum(len(p.read_text().splitlines()) for p, _ in logs), timeout=30)
            via = ["--config", str(cfg)]
            assert _rows(via, "--start", "0") == want != []
            qid = next(r["queue_id"] for r in want if r["outcome"] == "failed")
            assert (
                run_cli("trace", *via, qid).stdout
                == run_cli("trace", "--config", str(offline_cfg), qid).stdout
            )
            day = ["--day", "2026-11-24", "--format", "json"]
            assert json.loads(run_cli("report", *via, *day).stdout) == json.loads(
                run_cli("report", "--config", str(offline_cfg), *day).stdout
            )
        finally:
            d.close()


def test_the_daemon_route_is_for_admins_and_refuses_bad_requests(demo):
    """`GET /v1/track` answers a socket user in api.admins; anyone else is 403, and an odd
    command or request is a 400 in logstats' envelope, never an internal error."""
    from dataclasses import replace

    from logstats import api, config
    from logstats.store import Store

    cfg = config.load(CONFIG)
    with Store(demo[3], read_only=True) as store:
        router = api.Router(store.con, dict, replace(cfg, admins=("ops",)), lambda c: "")
        ok = router.route("GET", "/v1/track", {"command": ["trace"], "request": ['{"id": "x"}']},
                          {}, "ops")  # fmt: skip
        assert (200, {"rows": []}) == ok[:2]
        status, body, _ = router.route("GET", "/v1/track", {"command": ["search"]}, {}, "alice")
        assert (403, False) == (status, body["ok"])
        for params in (
            {"command": ["nope"]},
            {"command": ["search"], "request": ["{not json"]},
            {"command": ["search"], "request": ['{"start": "yesterday"}']},
            {"command": ["report"], "request": ['{"start": "2026-11-25", "end": "2026-11-24"}']},
            {"command": ["trace"], "request": ["[]"]},
        ):
            status, body, _ = router.route("GET", "/v1/track", params, {}, "ops")
            assert (400, False) == (status, body["ok"]), params
