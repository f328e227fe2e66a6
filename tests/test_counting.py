"""The counting rules per API (README "Counting rules per API"), in-process: records ->
correlator -> store -> the four shapes, for the cases the table names.

The real-MTA version of these equalities is tests/test_real_mta.py
``test_counting_rules_agree_across_the_four_shapes``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from logstats.correlate import Correlator, Policy
from logstats.model import (
    SYSTEM,
    Attempt,
    Finished,
    Outcome,
    Received,
    Record,
    Rejected,
    StatsRequest,
    Tagged,
)
from logstats.shapes import EPOCH, FAR_FUTURE, SHAPES
from logstats.store import Batch, Store, series

T = datetime(2024, 6, 3, 9, 0, tzinfo=UTC)
NOW = datetime(2024, 6, 20, 12, 0, tzinfo=UTC)  # the shapes' clock: fixed
SCOPE = "mx"
D, F, S = Outcome.DELIVERED, Outcome.FAILED, Outcome.DEFERRED


def at(minutes: int) -> datetime:
    return T + timedelta(minutes=minutes)


def message(
    qid: str,
    minute: int,
    outcomes: list[tuple[str, Outcome]],
    *,
    tags: tuple[str, ...] = (),
    auth: str | None = "carol@carol.test",
    sender: str = "carol@carol.test",
    parent: str | None = None,
) -> list[Record]:
    """One Exim-like message: optional tag line, receipt, attempts, Completed."""
    out: list[Record] = []
    if tags:
        out.append(Tagged(at(minute), SCOPE, qid, tags))
    out.append(
        Received(
            at(minute), SCOPE, qid, True, sender=sender, size=1000, auth_id=auth,
            protocol="esmtpa" if auth else "local", client_ip="192.0.2.7" if auth else None,
            parent_id=parent, local_user=None if auth else "mailnull",
        )
    )  # fmt: skip
    for i, (rcpt, outcome) in enumerate(outcomes):
        out.append(
            Attempt(at(minute) + timedelta(seconds=i + 1), SCOPE, qid, rcpt, outcome,
                    relay="mx.example.net [198.51.100.1]", transport="remote_smtp")
        )  # fmt: skip
    if all(o is not S for _, o in outcomes):
        out.append(Finished(at(minute) + timedelta(seconds=30), SCOPE, qid))
    return out


def reject(minute: int, rcpt: str, auth: str | None = "carol@carol.test") -> Rejected:
    return Rejected(
        at(minute), SCOPE, None, "RCPT", sender="carol@carol.test", recipient=rcpt, auth_id=auth,
        client_ip="192.0.2.7",
    )  # fmt: skip


def build(tmp_path: Path, records: list[Record]) -> Store:
    c = Correlator("exim", Policy(domains={"carol.test": "carol"}))
    for r in records:
        c.feed(r)
    d = c.drain()
    store = Store(tmp_path / "s.duckdb")
    store.commit(
        Batch(mta="exim", events=d.events, counters=d.counters, dims=d.dims, upsert=d.upsert,
              dropped=d.dropped, retracted=d.retracted)
    )  # fmt: skip
    return store


def ask(
    store: Store, shape: str, params: dict[str, Any], path: dict[str, str] | None = None
) -> Any:
    s = SHAPES[shape]
    q = s.parse(params, NOW, path)
    rows = series(store.con, q.request) if q.request is not None else []
    return s.render(q, rows, NOW)


def sendgrid(store: Store, **params: Any) -> Any:
    return ask(store, "sendgrid.json", {"method": "stats", "user": "carol", **params})


def category_sums(store: Store, categories: list[str]) -> dict[str, int]:
    rows = sendgrid(store, **{"category[]": categories, "start_date": "2024-06-01",
                              "end_date": "2024-06-20"})  # fmt: skip
    return {k: sum(r[k] for r in rows) for k in ("requests", "bounces")}


def mailgun_total(store: Store) -> dict[str, int]:
    body = ask(store, "mailgun.total", {"event": ["accepted", "delivered", "failed"],
                                         "start": "1717200000"})  # fmt: skip
    out = {"accepted": 0, "outgoing": 0, "delivered": 0, "temporary": 0, "permanent": 0}
    for item in body["stats"]:
        out["accepted"] += item["accepted"]["total"]
        out["outgoing"] += item["accepted"]["outgoing"]
        out["delivered"] += item["delivered"]["total"]
        out["temporary"] += item["failed"]["temporary"]["total"]
        out["permanent"] += item["failed"]["permanent"]["total"]
    return out


def emailtrack(store: Store, account: str = "carol") -> dict[str, int]:
    (row,) = store.account_stats(StatsRequest(EPOCH, FAR_FUTURE, account))
    return {"send": row.sendcount, "success": row.successcount, "defer": row.defercount,
            "fail": row.failcount}  # fmt: skip


ONE_TAG_EACH = [
    *message("Q1", 0, [("a@example.net", D), ("b@example.net", D)], tags=("news",)),
    *message("Q2", 5, [("c@example.net", F), ("d@example.net", D)], tags=("billing",)),
    *message("Q3", 10, [("e@example.net", S), ("e@example.net", D)], tags=("news",)),
    reject(12, "nobody@example.net"),
    reject(13, "nobody2@example.net"),
]


def test_sendgrid_aggregate_equals_the_category_sum_when_each_message_has_one_tag(tmp_path):
    """SendGrid: ``aggregate=1`` (all-time totals of the customer) equals the sum over
    ``category[]`` of every category over days holding all its mail when each message has
    exactly one category.  RCPT rejects (two here, identified as carol by ``A=``) were never
    requests: they are in neither (they were the difference: aggregate counted them, the
    untagged reject rows did not); EmailTrack still counts them as cPanel does."""
    with build(tmp_path, ONE_TAG_EACH) as store:
        aggregate = sendgrid(store, aggregate="1")
        assert {"requests": 3, "bounces": 1} == {k: aggregate[k] for k in ("requests", "bounces")}
        listed = [c["category"] for c in sendgrid(store, list="true")]
        assert ["billing", "news"] == listed
        assert {"requests": 3, "bounces": 1} == category_sums(store, listed)
        # EmailTrack: each reject is a send and a failure (cPanel's count)
        assert {"send": 5, "success": 4, "defer": 1, "fail": 3} == emailtrack(store)


def test_untagged_and_multi_tagged_mail_make_the_category_sum_differ(tmp_path):
    """Where SendGrid's own definitions make them differ: an untagged message is in no
    category (the sum is lower), a message with two categories is in both (higher)."""
    records = [
        *ONE_TAG_EACH,
        *message("Q4", 20, [("f@example.net", D)]),  # no tag
        *message("Q5", 25, [("g@example.net", F)], tags=("news", "promo")),
    ]
    with build(tmp_path, records) as store:
        aggregate = sendgrid(store, aggregate="1")
        assert {"requests": 5, "bounces": 2} == {k: aggregate[k] for k in ("requests", "bounces")}
        cats = category_sums(store, ["billing", "news", "promo"])
        # -1 for Q4 (untagged), +1 for Q5's second category
        assert cats == {"requests": 5 - 1 + 1, "bounces": 2 + 1}


def test_rejects_and_mta_bounces_in_the_four_shapes(tmp_path):
    """One account, every row of the table: Mailgun accepted / SendGrid requests = messages
    accepted (no reject); Mailgun delivered = SUCCESSCOUNT; failed.temporary = DEFERCOUNT;
    failed.permanent = SendGrid bounces = FAILCOUNT less the rejects; SMTPeter per tag
    = Mailgun ``filter=tag:`` = the SendGrid category.  The MTA's own bounce (``<> R=``,
    ``-system-``) is in EmailTrack's ``-system-`` row only: not in Mailgun's account total
    and no domain ``""``."""
    bounce = message("B1", 6, [("carol@carol.test", D)], auth=None, sender="", parent="Q2")
    with build(tmp_path, [*ONE_TAG_EACH, *bounce]) as store:
        et = emailtrack(store)
        rejects = 2
        mg = mailgun_total(store)
        assert {
            "accepted": et["send"] - rejects,
            "outgoing": et["send"] - rejects,
            "delivered": et["success"],
            "temporary": et["defer"],
            "permanent": et["fail"] - rejects,
        } == mg
        aggregate = sendgrid(store, aggregate="1")
        assert [mg["accepted"], mg["permanent"]] == [aggregate["requests"], aggregate["bounces"]]
        # the bounce is -system-'s in EmailTrack, and nobody's in the vendors' shapes
        assert {"send": 1, "success": 1, "defer": 0, "fail": 0} == emailtrack(store, SYSTEM)
        when = str(int(T.timestamp()))
        domains = ask(
            store, "mailgun.domains", {"event": ["accepted", "delivered"], "timestamp": when}
        )
        assert ["carol.test"] == [i["domain"] for i in domains["stats"]]
        assert [3, 4] == [domains["stats"][0]["accepted"]["total"],
                          domains["stats"][0]["delivered"]["total"]]  # fmt: skip
        # SMTPeter per tag = Mailgun filter=tag: = the SendGrid category (independent shapes)
        news = ask(store, "smtpeter", {}, {"tag": "news"})
        tagged = ask(store, "mailgun.filter", {"event": ["accepted", "delivered"],
                                               "filter": "tag:news", "start": "1717200000"})
        category = category_sums(store, ["news"])
        assert [news["messages"], news["deliveries"]] == [
            sum(i["accepted"]["total"] for i in tagged["stats"]),
            sum(i["delivered"]["total"] for i in tagged["stats"]),
        ]
        assert news["messages"] == category["requests"] > 0
