"""logstats against logs written by a REAL Exim and a REAL Postfix.

The scenario (tests/mta/scenario.py) is played against each MTA running on 127.0.0.1
and relaying to an SMTP sink that answers as real servers do (tests/mta/sink.py):
``250 2.0.0 Ok: queued as ID`` with a fresh id per transaction, multi-line replies, a
``421`` disconnect after the data of one message (deferred, delivered at the next queue
run), a slow end-of-data reply. Each MTA runs it twice: relaying straight to the sink
(a smarthost that re-injects nothing), and with every message handed to a content filter
on loopback (tests/mta/filter.py) that re-injects it into the same MTA, as amavisd-new
does. The expected numbers come from the script, not from the log: what was submitted,
as whom, to which recipients, and what the sink answered at each attempt (the runner
checks the sink's own record of its answers against that prediction). They are the same
with and without the filter. The only log-derived input is the per-message size used
for TOTALSIZE (the MTA adds headers the script cannot predict);
``test_logged_sizes_are_the_bytes_the_next_hop_received`` checks those sizes
independently.

logstats runs with the shipped defaults plus the account map (``tests/mta/record.py
logstats_config``): nothing is tuned for this setup.

Needs root (installs packages on first use, see tests/mta/install.sh). Run with
``pytest -m mta``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.mta.fixtures import LogstatsGetter, ScenarioGetter, serve_config
from tests.mta.runner import ScenarioResult
from tests.mta.scenario import COUNTERS, SUBMISSIONS, simulate
from tests.mta.sink import DATA_QUIRKS, DROPPED

pytestmark = pytest.mark.mta

MTAS = ("exim", "postfix")
VARIANTS = [
    pytest.param(mta, filtered, id=f"{mta}-filter" if filtered else mta)
    for mta in MTAS
    for filtered in (False, True)
]


def test_script_truth_follows_the_counting_rules() -> None:
    """The truth is computed from the script: spot-check it against a hand count.

    alice: m1 (3 ok), m2 (1 fail + 1 ok), m3 (deferred at the first attempt and at both
    queue runs, still queued). bob: m4 (later-b1 deferred twice, then delivered; ok-b1),
    m5 (the sink hangs up with a 421 after its data: deferred once, delivered at the
    first queue run), m12 (defer-b2 three times, still queued; fail-b3). -remote-: 2
    accepted messages plus 2 RCPTs rejected at SMTP time (each one send and one
    failure). -system-: one bounce per message with a delivery-time 550 (m2, m7, m12),
    each delivered. With a content filter every account's numbers are the same.
    """
    sim = simulate()
    sizes = {s.key: 0 for s in SUBMISSIONS} | {f"bounce-{k}-0": 0 for k in ("m2", "m7", "m12")}
    truth = sim.with_sizes(sizes)
    assert {k: truth["alice"][k] for k in COUNTERS if k != "TOTALSIZE"} == {
        "SENDCOUNT": 3,
        "SUCCESSCOUNT": 4,
        "DEFERCOUNT": 3,
        "FAILCOUNT": 1,
        "DEFERFAILCOUNT": 4,
        "INPROGRESSCOUNT": 1,
    }
    assert {k: truth["bob"][k] for k in COUNTERS if k != "TOTALSIZE"} == {
        "SENDCOUNT": 3,
        "SUCCESSCOUNT": 3,
        "DEFERCOUNT": 6,
        "FAILCOUNT": 1,
        "DEFERFAILCOUNT": 7,
        "INPROGRESSCOUNT": 1,
    }
    assert DATA_QUIRKS["m5"] == "drop-once"
    assert sim.sink_attempts["ok-b2@remote.test"] == [DROPPED, 250]
    assert truth["-remote-"]["SENDCOUNT"] == 4
    assert truth["-remote-"]["FAILCOUNT"] == 2
    assert truth["-system-"]["SENDCOUNT"] == 3
    assert truth["-system-"]["SUCCESSCOUNT"] == 3
    assert set(truth) == {"alice", "bob", "lsuser1", "-remote-", "-system-"}
    recipients = {s.key: len(s.accepted) for s in SUBMISSIONS} | dict.fromkeys(sim.bounces, 1)
    for filter_bounces in (False, True):
        filtered = simulate(filtered=True, filter_bounces=filter_bounces)
        assert filtered.with_sizes(sizes) == truth
        assert filtered.sink_attempts == sim.sink_attempts
        assert set(filtered.filter_passes) == {s.key for s in SUBMISSIONS if s.accepted} | (
            set(sim.bounces) if filter_bounces else set()
        )
        # one hand-over line per recipient of each message that passes the filter
        extra = filtered.expected_lines[-1] - sim.expected_lines[-1]
        assert sum(extra.values()) == sum(
            recipients[k] * n for k, n in filtered.filter_passes.items()
        )


@pytest.mark.parametrize(("mta", "filtered"), VARIANTS)
def test_logged_sizes_are_the_bytes_the_next_hop_received(
    mta: str, filtered: bool, mta_scenario: ScenarioGetter
) -> None:
    """For every scripted message, the MTA's logged receipt size (Exim ``S=``, Postfix qmgr
    ``size=``; with a filter, of the first receipt) equals the bytes the MTA's first hop
    received (the sink, or the content filter; Exim counts LF line ends, Postfix CRLF):
    the sizes behind TOTALSIZE are not taken on trust."""
    result = mta_scenario(mta, filtered)
    assert result.sink_sizes, "the next hop received no scripted message"
    if filtered:
        assert set(result.sink_sizes) == {s.key for s in SUBMISSIONS if s.accepted}
    assert {k: result.sizes[k] for k in result.sink_sizes} == result.sink_sizes


def _reply_in_log(mta: str, line: str, text: str) -> bool:
    """``text`` (one SMTP reply line, or lines joined by '\\n') is in ``line`` as the MTA
    logs it: Exim escapes a newline as ``\\n`` (``\\\\n`` inside ``C="..."``), Postfix joins
    the lines of a multi-line reply with a space."""
    parts = text.split("\n")
    if mta == "postfix":
        return " ".join(parts) in line
    return "\\n".join(parts) in line or "\\\\n".join(parts) in line


@pytest.mark.parametrize(("mta", "filtered"), VARIANTS)
def test_the_log_shows_what_the_sink_and_filter_answered(
    mta: str, filtered: bool, mta_scenario: ScenarioGetter
) -> None:
    """A check of the harness, not of logstats: the MTA logged each reply the sink gave
    at the end of the data (``queued as ID``, the multi-line one, the 421 that deferred
    m5), and with a filter each hand-over carries the filter's answer with the
    re-injected message's id (``queued as NEWID`` / ``id=NEWID``), which the MTA logged
    as a receipt before the hand-over line."""
    result = mta_scenario(mta, filtered)
    lines = result.log.read_text().splitlines()
    for tx in result.sink_transactions:
        if tx.data_code is None:
            continue
        reply = "\n".join(tx.data_reply)
        hits = [ln for ln in lines if _reply_in_log(mta, ln, reply)]
        assert hits, f"sink reply not in the log: {reply!r}"
        if tx.data_code == DROPPED:
            assert any(re.search(r" == |status=deferred", ln) for ln in hits), hits
        else:
            assert tx.queue_id and all(tx.queue_id in ln for ln in hits)
            assert not any(re.search(r" == |status=deferred", ln) for ln in hits), hits
    assert any(tx.data_code == DROPPED for tx in result.sink_transactions)
    assert any(len(tx.data_reply) > 1 and tx.data_code == 250 for tx in result.sink_transactions)
    assert len(result.hops) == (len(result.simulation.filter_passes) if filtered else 0)
    for hop in result.hops:
        assert hop.new_id is not None
        at = [i for i, ln in enumerate(lines) if hop.reply in ln]
        assert len(at) == len(hop.recipients), (hop, at)
        receipt = [
            i
            for i, ln in enumerate(lines)
            if re.search(rf"\b{re.escape(hop.new_id)}(?:: client=| <= )", ln)
        ]
        assert len(receipt) == 1 and receipt[0] < min(at), (hop, receipt, at)


@pytest.mark.parametrize(("mta", "filtered"), VARIANTS)
def test_logstats_numbers_equal_the_script_truth(
    mta: str, filtered: bool, logstats_on: LogstatsGetter
) -> None:
    """Backfilling the MTA's log and querying ``emailtrack --all`` gives, for every
    account (alice, bob, lsuser1, -remote-, -system-), exactly the counters the script
    implies: sends, successful recipient deliveries, every deferral event, failures
    (delivery 5xx and SMTP-time RCPT rejects), messages still queued, and TOTALSIZE;
    with the content filter exactly the same (the hop is neither a send nor a delivery)."""
    run = logstats_on(mta, filtered)
    expected = run.result.truth
    got = run.all_accounts()
    assert expected == got


@pytest.mark.parametrize(("mta", "filtered"), VARIANTS)
def test_single_account_query_has_the_cpanel_envelope(
    mta: str, filtered: bool, logstats_on: LogstatsGetter
) -> None:
    """``emailtrack --account alice`` answers in cPanel's API2 envelope
    (``cpanelresult`` with apiversion 2, func ``stats``, module ``EmailTrack``, event
    result 1) with one data row whose counters are alice's truth as strings."""
    run = logstats_on(mta, filtered)
    expected_row = {k: str(v) for k, v in run.result.truth["alice"].items()}
    got = run.query("--account", "alice")
    assert isinstance(got, dict)
    assert set(got) == {"cpanelresult"}
    envelope = got["cpanelresult"]
    assert {k: envelope.get(k) for k in ("apiversion", "func", "event", "module")} == {
        "apiversion": 2,
        "func": "stats",
        "event": {"result": 1},
        "module": "EmailTrack",
    }
    assert len(envelope["data"]) == 1
    row = envelope["data"][0]
    assert expected_row == {k: row.get(k) for k in COUNTERS}


@pytest.mark.parametrize(("mta", "filtered"), VARIANTS)
def test_serve_follows_the_live_mta_log_to_the_truth(
    mta: str, filtered: bool, tmp_path: Path
) -> None:
    """``logstats serve`` follows the MTA's own log while the scenario sends mail (started
    as soon as the MTA runs, before any message); once the script is done, its answers
    equal the script's ground truth for every account, with and without the filter."""
    from tests.daemon_harness import Serve, short_dir
    from tests.mta.runner import run_scenario

    with short_dir() as folder:
        served: list[Serve] = []

        def follow(log_path: Path) -> Callable[[ScenarioResult], None]:
            daemon = Serve(serve_config(folder, log_path, mta))
            served.append(daemon)
            daemon.wait_ready()

            def check(result: ScenarioResult) -> None:
                expected = {
                    account: {k: str(v) for k, v in row.items()}
                    for account, row in result.truth.items()
                }
                assert expected == daemon.wait_stats(expected, timeout=30.0)

            return check

        try:
            run_scenario(mta, tmp_path / "live", follow=follow, filtered=filtered)
        finally:
            for daemon in served:
                daemon.close()


# -- the README's "Counting rules per API" on the real MTAs' stores --------------------------


def _shape(
    store: Any,
    name: str,
    params: dict[str, Any],
    accounts: tuple[str, ...] | None,
    now: Any,
    path: dict[str, str] | None = None,
) -> Any:
    """One vendor shape's answer over ``store`` (as ``accounts``' key would get it, or as
    an admin), with the shapes' clock fixed to ``now``."""
    from logstats.shapes import SHAPES
    from logstats.store import series

    s = SHAPES[name]
    q = s.parse(params, now, path)
    if accounts is not None:
        q = q.scoped(accounts)
    rows = series(store.con, q.request) if q.request is not None else []
    return s.render(q, rows, now)


def _mailgun_sums(body: Any) -> dict[str, int]:
    out = dict.fromkeys(("accepted", "outgoing", "incoming", "delivered", "deferred", "failed"), 0)
    for item in body["stats"]:
        acc, failed = item["accepted"], item["failed"]
        out["accepted"] += int(acc["total"])
        out["outgoing"] += int(acc["outgoing"])
        out["incoming"] += int(acc["incoming"])
        out["delivered"] += int(item["delivered"]["total"])
        out["deferred"] += int(failed["temporary"]["total"])
        out["failed"] += int(failed["permanent"]["total"])
    return out


@pytest.mark.parametrize(("mta", "filtered"), VARIANTS)
def test_counting_rules_agree_across_the_four_shapes(
    mta: str, filtered: bool, logstats_on: LogstatsGetter
) -> None:
    """The README's table, on the store of a real MTA's log: for every account the four
    shapes say the same where the table says they mean the same, and each equals the
    script's ground truth.  Per account (a key scoped to it; SendGrid ``user=``):
    Mailgun accepted = SendGrid requests (``aggregate=1`` and per day) = SENDCOUNT less the
    account's RCPT rejects (never accepted); Mailgun delivered = SUCCESSCOUNT;
    failed.temporary = DEFERCOUNT; failed.permanent = SendGrid bounces = FAILCOUNT less the
    rejects; outgoing vs incoming by ``-remote-``.  The MTA's own bounces are EmailTrack's
    ``-system-`` row and in no vendor answer (the admin's Mailgun total is the sum over
    the other accounts; no domain ``""``).  Per tag: SMTPeter messages/deliveries = Mailgun
    ``filter=tag:T`` accepted/delivered = the sum of SendGrid ``category=T`` requests over
    the customers = the truth's tag counts; per customer the category sum is its requests
    less its untagged messages plus one per extra tag of a message."""
    from datetime import UTC, timedelta

    from logstats.model import REMOTE, SYSTEM
    from logstats.store import Store

    run = logstats_on(mta, filtered)
    run.check_backfill()
    truth = run.result.truth
    sim = run.result.simulation
    emailtrack = run.all_accounts()
    assert truth == emailtrack  # EmailTrack as cPanel counts it, rejects included
    rejects: dict[str, int] = {}
    for sub in SUBMISSIONS:
        owner = sub.account if sub.how != "anon" else REMOTE
        rejects[owner] = rejects.get(owner, 0) + len(sub.rejected)
    assert rejects[REMOTE] > 0 and truth[SYSTEM]["SENDCOUNT"] > 0  # both rules are exercised
    with Store(run.db, read_only=True) as store:
        lo, hi = store.con.execute("SELECT min(bucket), max(bucket) FROM counters").fetchone()
        start = lo.replace(tzinfo=UTC)
        end = hi.replace(tzinfo=UTC) + timedelta(hours=1)
        now = end + timedelta(days=1)  # the shapes' clock: from the log, not the wall
        window = {"start": str(int(start.timestamp())), "end": str(int(end.timestamp()))}
        days = {"start_date": start.date().isoformat(), "end_date": end.date().isoformat()}
        events = ["accepted", "delivered", "failed"]
        admin_total = dict.fromkeys(("accepted", "delivered", "deferred", "failed"), 0)
        categories: dict[str, dict[str, int]] = {}
        for account, row in truth.items():
            if account == SYSTEM:
                continue
            own = rejects.get(account, 0)
            want = {
                "accepted": row["SENDCOUNT"] - own,
                "outgoing": 0 if account == REMOTE else row["SENDCOUNT"] - own,
                "incoming": row["SENDCOUNT"] - own if account == REMOTE else 0,
                "delivered": row["SUCCESSCOUNT"],
                "deferred": row["DEFERCOUNT"],
                "failed": row["FAILCOUNT"] - own,
            }
            mg = _mailgun_sums(
                _shape(store, "mailgun.total", {"event": events, **window}, (account,), now)
            )
            assert want == mg, account
            for k in admin_total:
                admin_total[k] += mg[k]
            sg = {"method": "stats", "user": account}
            agg = _shape(store, "sendgrid.json", {**sg, "aggregate": "1"}, None, now)
            per_day = _shape(store, "sendgrid.json", {**sg, **days}, None, now)
            assert isinstance(agg, dict) and isinstance(per_day, list)
            assert [mg["accepted"], mg["failed"]] == [agg["requests"], agg["bounces"]], account
            assert [agg["requests"], agg["bounces"]] == [
                sum(d["requests"] for d in per_day),
                sum(d["bounces"] for d in per_day),
            ], account
            listed = _shape(store, "sendgrid.json", {**sg, "list": "true"}, None, now)
            names = [c["category"] for c in listed]
            mine = [m for m in sim.messages.values() if m.account == account and not m.bounce_of]
            assert sorted({t for m in mine for t in m.tags}) == names, account
            if not names:
                continue
            cat_rows = _shape(
                store, "sendgrid.json", {**sg, **days, "category[]": names}, None, now
            )
            assert isinstance(cat_rows, list)
            untagged = sum(1 for m in mine if not m.tags)
            extra = sum(len(m.tags) - 1 for m in mine if m.tags)
            assert agg["requests"] - untagged + extra == sum(r["requests"] for r in cat_rows)
            for r in cat_rows:
                c = categories.setdefault(r["category"], {"requests": 0, "bounces": 0})
                c["requests"] += r["requests"]
                c["bounces"] += r["bounces"]
        admin = _mailgun_sums(
            _shape(store, "mailgun.total", {"event": events, **window}, None, now)
        )
        assert admin_total == {k: admin[k] for k in admin_total}  # -system- is in no account
        assert (
            admin["delivered"]
            == sum(r["SUCCESSCOUNT"] for r in truth.values()) - truth[SYSTEM]["SUCCESSCOUNT"]
        )
        stamp = str(int(start.timestamp()))
        domains = _shape(store, "mailgun.domains", {"event": events, "timestamp": stamp}, None, now)
        names = [i["domain"] for i in domains["stats"]]
        assert "" not in names and names == sorted(d for d in sim.sender_domains if d)
        for tag, want_tag in sim.tags.items():
            smtpeter = _shape(store, "smtpeter", {}, None, now, {"tag": tag})
            mg_tag = _mailgun_sums(
                _shape(store, "mailgun.filter", {"event": events, "group": "total",
                       "filter": f"tag:{tag}", **window}, None, now)
            )  # fmt: skip
            assert isinstance(smtpeter, dict)
            assert (
                [want_tag["messages"], want_tag["deliveries"]]
                == [smtpeter["messages"], smtpeter["deliveries"]]
                == [mg_tag["accepted"], mg_tag["delivered"]]
                == [categories[tag]["requests"], mg_tag["delivered"]]
            ), tag
            assert [want_tag["failed"], want_tag["deferred"]] == [
                categories[tag]["bounces"], mg_tag["deferred"]
            ], tag  # fmt: skip


# --- Track Delivery: every recipient found by every filter ---------------------------------

_KIND = {250: "delivered", 451: "deferred", DROPPED: "deferred", 550: "failed"}


@pytest.mark.parametrize(("mta", "filtered"), VARIANTS)
def test_track_delivery_finds_every_recipient_by_every_filter(
    mta: str, filtered: bool, logstats_on: LogstatsGetter
) -> None:
    """For every recipient of every submitted message, the stored rows are the script's
    attempts, in order: one row per attempt with the outcome the sink's answer makes
    (250 delivered, 451 and the 421 hang-up deferred, 550 failed; local recipients
    delivered; RCPT rejects rejected), each with the account, the sender, the Message-ID
    and a reason carrying the sink's code.  The same rows are found by recipient, by
    Message-ID, by queue id (the original's, across a content filter's re-injection), by
    sender, by account and by domain; the trace of the message holds them all, after its
    receipt, and the MTA's bounce when one was due.  A filter's hand-over is no row."""
    from datetime import UTC, datetime

    from logstats import track
    from logstats.model import REMOTE, SYSTEM
    from logstats.store import Store

    run = logstats_on(mta, filtered)
    run.check_backfill()
    sim = run.result.simulation
    far = (datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC))
    everything = frozenset((*track.RECIPIENT_TYPES, track.SEND))
    with Store(run.db, read_only=True) as store:
        con = store.con

        def find(**filters: Any) -> list[track.TrackRow]:
            q = track.TrackQuery(
                *far, newest_first=False, limit=None, types=everything, **filters
            )
            return track.search(con, q)

        for sub in SUBMISSIONS:
            owner = sub.account if sub.how != "anon" else REMOTE
            mid = sub.message_id.strip("<>")
            for rcpt in sub.rejected:
                rows = find(recipient=rcpt)
                assert [("rejected", owner)] == [(r.outcome, r.account) for r in rows], rcpt
                assert rows[0].reason, rcpt
            if not sub.accepted:
                continue
            by_mid = find(message_id=mid)
            receipts = [r for r in by_mid if r.outcome == track.SEND]
            assert 1 == len(receipts), sub.key  # the re-injection is no second receipt
            receipt = receipts[0]
            assert (owner, sub.sender, receipt.sent_at) == (
                receipt.account, receipt.sender, receipt.ts
            ), sub.key  # fmt: skip
            by_qid = find(queue_id=receipt.queue_id)
            # a Postfix RCPT reject after an accepted RCPT names the queue id, and precedes
            # the Message-ID: found by queue id only
            kept = ("delivered", "deferred", "failed", "inprogress")
            per_message = [r for r in by_mid if r.outcome in kept]
            assert per_message == [r for r in by_qid if r.outcome in kept], sub.key
            for rcpt in sub.accepted:
                if rcpt.rsplit("@", 1)[1] in ("local.test", "mx.logstats.test"):
                    codes = [250]
                else:
                    codes = sim.sink_attempts[rcpt.lower()]
                rows = found = find(recipient=rcpt, message_id=mid)
                waiting = rcpt in sim.messages[sub.key].pending  # deferred, still queued
                assert [*(_KIND[c] for c in codes), *["inprogress"] * waiting] == [
                    r.outcome for r in rows
                ], (sub.key, rcpt)
                if waiting:
                    assert (owner, sub.sender) == (rows[-1].account, rows[-1].sender)
                    rows = rows[:-1]
                for row, code in zip(rows, codes, strict=True):
                    assert (owner, sub.sender, mid, receipt.queue_id) == (
                        row.account, row.sender, (row.message_id or "").strip("<>"),
                        row.origin or row.queue_id,
                    ), (sub.key, rcpt)  # fmt: skip
                    # the MTA's text: Exim logs none for a local delivery
                    assert row.reason or (mta == "exim" and row.local), (sub.key, rcpt, row)
                    if codes != [250] or row.remote_host:  # a remote answer: its code
                        assert str(code) in row.reason, (sub.key, rcpt, row.reason)
                    assert row in per_message, (sub.key, rcpt)
                    assert row in find(sender=sub.sender, recipient=rcpt), (sub.key, rcpt)
                    assert row in find(account=owner, recipient=rcpt), (sub.key, rcpt)
                    assert row in find(domain=rcpt.rsplit("@", 1)[1], message_id=mid)
                assert len(found) == len(find(recipient=rcpt, account=owner)) or any(
                    other.key != sub.key and rcpt in other.accepted for other in SUBMISSIONS
                ), (sub.key, rcpt)
            trace = track.trace(con, sub.message_id)
            assert receipt == trace[0], sub.key
            assert all(r in trace for r in per_message), sub.key
            bounced = any(m.bounce_of == sub.key for m in sim.messages.values())
            assert bounced == any(
                r.account == SYSTEM and r.outcome == track.SEND for r in trace
            ), sub.key
            assert bounced == any(
                r.account == SYSTEM and r.outcome == "delivered" and r.recipient == sub.sender
                for r in trace
            ) or not sub.sender.endswith(("alice.test", "bob.test", "mx.logstats.test")), sub.key
