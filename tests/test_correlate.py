"""Correlation rules, record by record (no grammar involved)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from logstats.correlate import Correlator, Policy
from logstats.model import (
    DELAY,
    REMOTE,
    SIZE,
    SYSTEM,
    UNKNOWN,
    Attempt,
    Expired,
    Finished,
    Notice,
    Outcome,
    Received,
    Rejected,
)
from logstats.store import Batch

T = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
POLICY = Policy(domains={"alice.test": "alice"}, uid_name={1001: "bob"}.get)
D, F, S = Outcome.DELIVERED, Outcome.FAILED, Outcome.DEFERRED


def at(seconds: int) -> datetime:
    return T + timedelta(seconds=seconds)


def totals(c: Correlator) -> dict[str, list[int]]:
    """Per account: sends, successes, defers, fails, bytes, rejects, expired."""
    out: dict[str, list[int]] = {}
    for (_, account, _, _), tally in c.drain().counters.items():
        acc = out.setdefault(account, [0] * 7)
        for i, n in enumerate(tally.values()[:7]):
            acc[i] += n
    return out


def postfix_receipt(c: Correlator, qid: str, **kw: object) -> None:
    c.feed(Received(at(0), "mx/postfix", qid, False, client_ip="10.0.0.1", auth_id=kw.get("sasl")))  # type: ignore[arg-type]
    c.feed(
        Received(
            at(1),
            "mx/postfix",
            qid,
            True,
            sender=str(kw.get("sender", "a@x.test")),
            size=int(kw.get("size", 100)),
            nrcpt=int(kw.get("nrcpt", 1)),
        )
    )  # type: ignore[call-overload]


def test_postfix_pieces_join_and_sasl_maps_through_domain():
    """smtpd sasl_username + qmgr from= are one message of the mapped account."""
    c = Correlator("postfix", POLICY)
    postfix_receipt(c, "A1", sasl="alice@alice.test", size=500, nrcpt=2)
    c.feed(Attempt(at(2), "mx/postfix", "A1", "r1@y", D))
    c.feed(Attempt(at(2), "mx/postfix", "A1", "r2@y", F))
    c.feed(Finished(at(3), "mx/postfix", "A1"))
    assert {"alice": [1, 1, 0, 1, 500, 0, 0]} == totals(c)
    assert {} == c.messages


def test_qmgr_repeats_on_retry_count_one_send():
    """A deferred Postfix message re-enters the active queue: still one send."""
    c = Correlator("postfix", POLICY)
    postfix_receipt(c, "B1")
    c.feed(Attempt(at(2), "mx/postfix", "B1", "r@y", S))
    c.feed(Received(at(600), "mx/postfix", "B1", True, sender="a@x.test", size=100, nrcpt=1))
    c.feed(Attempt(at(601), "mx/postfix", "B1", "r@y", S))
    assert {REMOTE: [1, 0, 2, 0, 0, 0, 0]} == totals(c)


def test_queue_id_reuse_after_removed():
    """A short Postfix id reused after `removed` is a new message."""
    c = Correlator("postfix", POLICY)
    postfix_receipt(c, "C1")
    c.feed(Finished(at(2), "mx/postfix", "C1"))
    postfix_receipt(c, "C1", sasl="alice@alice.test")
    assert {REMOTE: [1, 0, 0, 0, 0, 0, 0], "alice": [1, 0, 0, 0, 0, 0, 0]} == totals(c)


def test_filter_hop_is_one_message():
    """A hand-off logged before NEWID appears: counted as a delivery until NEWID enters the
    queue, then taken back; the re-injected message is the same message (no second send),
    its deliveries count for the original account with the original size."""
    c = Correlator("postfix", POLICY)
    postfix_receipt(c, "D1", sasl="alice@alice.test", size=100)
    c.feed(
        Attempt(
            at(2), "mx/postfix", "D1", "r@y", D, relay="127.0.0.1[127.0.0.1]:10024", handoff_id="D2"
        )
    )
    c.feed(Finished(at(3), "mx/postfix", "D1"))
    c.feed(Received(at(3), "mx/postfix", "D2", False, client_ip="127.0.0.1"))
    c.feed(Received(at(3), "mx/postfix", "D2", True, sender="alice@alice.test", size=180, nrcpt=1))
    c.feed(Attempt(at(4), "mx/postfix", "D2", "r@y", D, relay="mx.y[192.0.2.1]:25"))
    c.feed(Finished(at(5), "mx/postfix", "D2"))
    assert {"alice": [1, 1, 0, 0, 100, 0, 0]} == totals(c)


def test_handoff_to_a_remote_relay_is_a_delivery():
    """`queued as` from a remote relay is an ordinary delivery."""
    c = Correlator("postfix", POLICY)
    postfix_receipt(c, "E1")
    c.feed(
        Attempt(at(2), "mx/postfix", "E1", "r@y", D, relay="mx.y[192.0.2.1]:25", handoff_id="XYZ")
    )
    assert {REMOTE: [1, 1, 0, 0, 100, 0, 0]} == totals(c)


def test_bounce_notification_is_system_mail():
    """Postfix bounce notifications are sends of the system pseudo-account."""
    c = Correlator("postfix", POLICY)
    postfix_receipt(c, "F1", sasl="alice@alice.test")
    c.feed(Attempt(at(2), "mx/postfix", "F1", "r@y", F))
    c.feed(Received(at(2), "mx/postfix", "F2", False, message_id="x@y"))
    c.feed(Notice(at(2), "mx/postfix", "F1", "F2"))
    c.feed(Received(at(2), "mx/postfix", "F2", True, sender="", size=2000, nrcpt=1))
    c.feed(Attempt(at(3), "mx/postfix", "F2", "alice@alice.test", D))
    assert {"alice": [1, 0, 0, 1, 0, 0, 0], SYSTEM: [1, 1, 0, 0, 2000, 0, 0]} == totals(c)


def test_postmaster_notification_is_system_mail_whatever_the_line_order():
    """Postfix's postmaster notification (sender ``double-bounce@host``) is the MTA's own
    mail, also when its qmgr line is logged before the bounce daemon's ``notification:``
    line, and also with ``sender_domain_fallback`` on and the host's domain in the table
    (it is nobody's send); the same for a ``MAILER-DAEMON@`` sender."""
    policy = Policy(domains={"mx.test": "hostowner"}, sender_domain_fallback=True)
    for sender in ("double-bounce@mx.test", "MAILER-DAEMON@mx.test"):
        c = Correlator("postfix", policy)
        c.feed(Received(at(1), "mx/postfix", "P2", False, message_id="n@mx.test"))
        c.feed(Received(at(1), "mx/postfix", "P2", True, sender=sender, size=900, nrcpt=1))
        c.feed(Notice(at(2), "mx/postfix", "P1", "P2"))
        c.feed(Attempt(at(3), "mx/postfix", "P2", "postmaster@mx.test", D, relay="local"))
        assert {SYSTEM: [1, 1, 0, 0, 900, 0, 0]} == totals(c), sender
    # mail from a client with that sender is a client's, not the MTA's
    c = Correlator("postfix", policy)
    c.feed(Received(at(1), "mx/postfix", "P3", False, client_ip="192.0.2.9"))
    c.feed(Received(at(1), "mx/postfix", "P3", True, sender="double-bounce@mx.test", nrcpt=1))
    assert ["hostowner"] == list(totals(c))


def test_expired_fails_each_outstanding_recipient():
    """status=expired fails every recipient not yet delivered or failed."""
    c = Correlator("postfix", POLICY)
    postfix_receipt(c, "G1", nrcpt=3)
    c.feed(Attempt(at(2), "mx/postfix", "G1", "r1@y", D))
    c.feed(Attempt(at(2), "mx/postfix", "G1", "r2@y", S))
    c.feed(Expired(at(9), "mx/postfix", "G1"))
    assert {REMOTE: [1, 1, 1, 2, 100, 0, 0]} == totals(c)


def test_cut_through_before_receipt():
    """Exim `>>` logged before `<=` waits for the receipt and counts for its account."""
    c = Correlator("exim", POLICY)
    c.feed(Attempt(at(0), "", "1a-1", "r@y", D, relay="127.0.0.1", cut_through=True))
    c.feed(
        Received(at(1), "", "1a-1", True, sender="u@h", size=10, local_user="bob", protocol="local")
    )
    assert {"bob": [1, 1, 0, 0, 10, 0, 0]} == totals(c)


def test_orphans_without_receipt_expire_to_unknown():
    """Outcomes whose receipt never comes count for -unknown- after orphan_ttl."""
    c = Correlator("exim", POLICY)
    c.feed(Attempt(at(0), "", "1b-1", "r@y", D, relay="h"))
    c.expire(at(10))
    assert {} == totals(c)
    c.expire(at(2 * 3600))
    assert {UNKNOWN: [0, 1, 0, 0, 0, 0, 0]} == totals(c)


def test_ttl_expires_stale_messages_and_counts_them():
    """A message idle past the TTL is forgotten and counted as expired."""
    c = Correlator("exim", Policy(ttl=timedelta(days=1)))
    c.feed(Received(at(0), "", "1c-1", True, sender="a@b", size=1, client_ip="1.2.3.4"))
    assert 1 == c.expire(at(3 * 86400))
    assert {REMOTE: [1, 0, 0, 0, 0, 0, 1]} == totals(c)
    assert {} == c.messages


def test_final_outcomes_and_receipts_count_once_per_recipient():
    """A recipient is delivered (or failed) once and a message received once, even if the
    line comes twice; deferrals are attempts, so two in the same second are two."""
    c = Correlator("exim", POLICY)
    c.feed(Received(at(0), "", "1d-1", True, sender="a@b", size=5, auth_id="alice@alice.test"))
    for _ in range(2):
        c.feed(Attempt(at(1), "", "1d-1", "r@y", S))
        c.feed(Attempt(at(2), "", "1d-1", "r@y", D, relay="h"))
        c.feed(Received(at(0), "", "1d-1", True, sender="a@b", size=5))
    assert {"alice": [1, 1, 2, 0, 5, 0, 0]} == totals(c)


def test_rejects():
    """A permanent RCPT reject is a send and a failure of -remote- unless identified;
    temporary and non-RCPT rejects count nothing."""
    c = Correlator("postfix", POLICY)
    c.feed(Rejected(at(0), "mx/postfix", None, "RCPT", sender="s@x", recipient="r@y"))
    c.feed(Rejected(at(0), "mx/postfix", None, "RCPT", recipient="r@y", temporary=True))
    c.feed(Rejected(at(0), "mx/postfix", None, "DATA", recipient="r@y"))
    c.feed(Received(at(0), "mx/postfix", "H1", False, auth_id="alice@alice.test"))
    c.feed(Rejected(at(1), "mx/postfix", "H1", "RCPT", recipient="r@y"))
    c.feed(Received(at(0), "mx/postfix", "H2", False, uid=1001))
    c.feed(Rejected(at(1), "mx/postfix", "H2", "RCPT", recipient="r@y"))
    assert {
        REMOTE: [0, 0, 0, 0, 0, 1, 0],
        "alice": [0, 0, 0, 0, 0, 1, 0],
        "bob": [0, 0, 0, 0, 0, 1, 0],
    } == totals(c)


def test_exim_account_order():
    """Exim: P=local U= wins over A=; an address id maps by domain; else -remote-;
    bounces (R=, U=mailnull) are system mail."""
    c = Correlator("exim", POLICY)
    c.feed(
        Received(
            at(0),
            "",
            "1",
            True,
            sender="x@h",
            local_user="carol",
            protocol="local",
            auth_id="alice@alice.test",
        )
    )
    c.feed(Received(at(0), "", "2", True, sender="x@h", auth_id="alice@alice.test"))
    c.feed(Received(at(0), "", "3", True, sender="x@h", auth_id="dave@other.test"))
    c.feed(Received(at(0), "", "4", True, sender="x@h", client_ip="192.0.2.1"))
    c.feed(
        Received(
            at(0),
            "",
            "5",
            True,
            sender="",
            parent_id="4",
            local_user="Debian-exim",
            protocol="local",
        )
    )
    assert {m.queue_id: m.account for m in c.messages.values()} == {
        "1": "carol",
        "2": "alice",
        "3": "other.test",
        "4": REMOTE,
        "5": SYSTEM,
    }


def test_exim_filter_reinjection_links_by_message_id():
    """Exim -> amavis (127.0.0.1:10024, whose answer ends in Exim's "250 OK id=1e-2") ->
    Exim again from 127.0.0.1 with the same Message-ID: one message, one send, the hop is
    not a delivery, the size is the one alice submitted."""
    c = Correlator("exim", POLICY)
    c.feed(
        Received(
            at(0),
            "",
            "1e-1",
            True,
            sender="alice@alice.test",
            size=50,
            auth_id="alice@alice.test",
            message_id="m1@alice.test",
        )
    )
    c.feed(
        Attempt(
            at(1),
            "",
            "1e-1",
            "r@y",
            D,
            relay="127.0.0.1",
            transport="amavis",
            handoff_id="1e-2",
        )
    )
    c.feed(Finished(at(1), "", "1e-1"))
    c.feed(
        Received(
            at(2),
            "",
            "1e-2",
            True,
            sender="alice@alice.test",
            size=90,
            client_ip="127.0.0.1",
            message_id="m1@alice.test",
        )
    )
    c.feed(Attempt(at(3), "", "1e-2", "r@y", D, relay="mx.y"))
    c.feed(Finished(at(3), "", "1e-2"))
    assert {"alice": [1, 1, 0, 0, 50, 0, 0]} == totals(c)
    c.expire(at(3) + timedelta(hours=1))
    assert {} == c.messages


def test_postfix_local_forward_is_the_same_message():
    """`status=sent (forwarded as NEWID)` continues the message under NEWID."""
    c = Correlator("postfix", POLICY)
    postfix_receipt(c, "K1", sasl="alice@alice.test")
    c.feed(
        Attempt(
            at(2),
            "mx/postfix",
            "K1",
            "alias@here",
            D,
            relay="local",
            transport="local",
            handoff_id="K2",
            reply="forwarded as K2",
        )
    )
    c.feed(Finished(at(2), "mx/postfix", "K1"))
    c.feed(Received(at(2), "mx/postfix", "K2", True, sender="a@x.test", size=120, nrcpt=1))
    c.feed(Attempt(at(3), "mx/postfix", "K2", "user@elsewhere", D, relay="mx[192.0.2.3]:25"))
    assert {"alice": [1, 1, 0, 0, 100, 0, 0]} == totals(c)


# --- hand-offs recognised by what happens next -------------------------------------------------


def exim_send(c: Correlator, qid: str, t: int, **kw: object) -> None:
    c.feed(
        Received(
            at(t),
            "",
            qid,
            True,
            sender=str(kw.get("sender", "alice@alice.test")),
            size=int(kw.get("size", 50)),  # type: ignore[call-overload]
            auth_id=kw.get("auth", "alice@alice.test"),  # type: ignore[arg-type]
            client_ip=str(kw.get("ip", "127.0.0.1")),
            message_id=kw.get("mid", f"{qid}@alice.test"),  # type: ignore[arg-type]
        )
    )


def test_smarthost_queued_as_shared_by_recipients_is_delivery():
    """A loopback smarthost answers `queued as S00012` once per transaction, for all its
    recipients; no S00012 ever enters our queue: every recipient is a delivery, and the
    placeholder is forgotten after the hand-off window."""
    c = Correlator("exim", POLICY)
    exim_send(c, "1s-1", 0, size=70)
    for r in ("a@y", "b@y", "c@y"):
        c.feed(Attempt(at(1), "", "1s-1", r, D, relay="127.0.0.1", handoff_id="S00012"))
    c.feed(Finished(at(1), "", "1s-1"))
    assert {"alice": [1, 3, 0, 0, 210, 0, 0]} == totals(c)
    assert not c.anomalies
    c.expire(at(1) + timedelta(hours=1))
    assert {} == c.messages
    assert {} == totals(c)


def test_reinjection_received_before_the_handoff_line():
    """The usual order: the filter re-injects (NEWID `<=` from 127.0.0.1, unauthenticated,
    counted at first as a -remote- send), NEWID is even delivered and completed, and only
    then does the first hop log `=> ... C="250 OK id=NEWID"`.  The send of NEWID is taken
    back and its delivery moves to alice with alice's size."""
    c = Correlator("exim", POLICY)
    exim_send(c, "1r-1", 0, size=50, mid="m@a")
    exim_send(c, "1r-2", 1, size=80, mid="m@a", auth=None, sender="alice@alice.test")
    c.feed(Attempt(at(1), "", "1r-2", "r@y", D, relay="mx.y"))
    c.feed(Finished(at(1), "", "1r-2"))
    c.feed(Attempt(at(2), "", "1r-1", "r@y", D, relay="127.0.0.1", handoff_id="1r-2"))
    c.feed(Finished(at(2), "", "1r-1"))
    got = totals(c)
    assert [1, 1, 0, 0, 50, 0, 0] == got["alice"]
    assert [0, 0, 0, 0, 0, 0, 0] == got.get(REMOTE, [0] * 7)


def test_same_id_with_another_message_id_is_not_a_hop():
    """NEWID entering the queue with another Message-ID (an id of the smarthost's queue
    that happens to be ours as well): the hand-off stays a delivery, NEWID its own send."""
    c = Correlator("exim", POLICY)
    exim_send(c, "1m-1", 0, mid="one@a")
    c.feed(Attempt(at(1), "", "1m-1", "r@y", D, relay="127.0.0.1", handoff_id="1m-2"))
    exim_send(c, "1m-2", 2, mid="two@a", auth=None, ip="192.0.2.7")
    anomalies = dict(c.anomalies)
    got = totals(c)
    assert [1, 1, 0, 0, 50, 0, 0] == got["alice"]
    assert [1, 0, 0, 0, 0, 0, 0] == got[REMOTE]
    assert {"handoff-message-id-mismatch": 1} == anomalies


def test_one_handoff_id_claimed_by_two_messages():
    """Two messages both handed off as X (ids colliding): an anomaly, and both stay
    deliveries; X, when it comes, links to neither."""
    c = Correlator("exim", POLICY)
    exim_send(c, "1c-1", 0, mid=None)
    exim_send(c, "1c-2", 0, mid=None)
    c.feed(Attempt(at(1), "", "1c-1", "r@y", D, relay="127.0.0.1", handoff_id="X"))
    c.feed(Attempt(at(1), "", "1c-2", "s@y", D, relay="127.0.0.1", handoff_id="X"))
    exim_send(c, "X", 2, mid=None, auth=None)
    anomalies = dict(c.anomalies)
    got = totals(c)
    assert [2, 2, 0, 0, 100, 0, 0] == got["alice"]
    assert [1, 0, 0, 0, 0, 0, 0] == got[REMOTE]
    assert {"handoff-claimed-twice": 1} == anomalies


def test_a_hop_survives_a_restart_between_its_lines():
    """Ledgers, finished messages and placeholders are state like any other: rebuilt from
    what ``drain()`` hands to the store, the correlator continues the same way."""
    from logstats.store import message_from_json, message_to_json

    def restart(c: Correlator) -> Correlator:
        c.drain()
        state = {k: message_from_json(message_to_json(m)) for k, m in c.messages.items()}
        fresh = Correlator("exim", POLICY, state)
        fresh.last_ts = c.last_ts
        return fresh

    c = Correlator("exim", POLICY)
    exim_send(c, "1p-1", 0, size=50, mid="m@a")
    exim_send(c, "1p-2", 1, size=80, mid="m@a", auth=None)
    c.feed(Attempt(at(1), "", "1p-2", "r@y", D, relay="mx.y"))
    c.feed(Finished(at(1), "", "1p-2"))
    first = totals(c)
    c = restart(c)
    c.feed(Attempt(at(2), "", "1p-1", "r@y", D, relay="127.0.0.1", handoff_id="1p-2"))
    second = totals(c)
    summed = {
        a: [x + y for x, y in zip(first.get(a, [0] * 7), second.get(a, [0] * 7), strict=True)]
        for a in first | second
    }
    assert [1, 1, 0, 0, 50, 0, 0] == summed["alice"]
    assert [0] * 7 == summed[REMOTE]


def test_a_junk_stamp_far_ahead_does_not_expire_everything():
    """One record stamped years ahead does not move the log clock (expiry runs on it);
    two that agree do."""
    c = Correlator("exim", POLICY)
    exim_send(c, "1j-1", 0)
    c.feed(Finished(T + timedelta(days=3000), "", "1zz-1"))
    assert c.last_ts == at(0)
    c.feed(Finished(T + timedelta(days=3000, seconds=5), "", "1zz-2"))
    assert c.last_ts == T + timedelta(days=3000, seconds=5)


def test_provider_lookup_is_fnmatch_in_configuration_order() -> None:
    """The compiled provider lookup answers as fnmatch.fnmatchcase tried provider by
    provider, pattern by pattern, on the recipient domain or the MX host (the oracle)."""
    import fnmatch
    import random

    from logstats.config import DEFAULT_PROVIDERS

    providers = {
        **DEFAULT_PROVIDERS,
        "mine": ("*.example", "mx?.corp.test", "[ab]*.zz"),
        "none": (),
    }

    def oracle(domain: str, relay: str | None) -> str | None:
        host = (relay or "").split("[", 1)[0].lower()
        for name, patterns in providers.items():
            for p in patterns:
                if fnmatch.fnmatchcase(domain, p) or (host and fnmatch.fnmatchcase(host, p)):
                    return name
        return None

    policy = Policy(providers=providers)
    patterns = [p for ps in providers.values() for p in ps]
    words = ["gmail.com", "mx.google.com", "a.example", "mx1.corp.test", "b.zz", "yahoo.com",
             "outlook.com", "x.y", "", "GMAIL.COM", "aspmx.l.google.com", "icloud.com"]  # fmt: skip
    rnd = random.Random(1)
    for _ in range(5000):
        fill = rnd.choice(["", "a", "x.y"])
        domain = rnd.choice([*words, *(p.replace("*", fill).replace("?", "1") for p in patterns)])
        relay = rnd.choice([None, "", domain, rnd.choice(words) + "[192.0.2.1]:25", "local"])
        assert policy.provider_for(domain, relay) == oracle(domain, relay), (domain, relay)


def histograms(c: Correlator) -> dict[tuple[str, int], list[int]]:
    """The histogram deltas, buckets with nothing in them left out."""
    return {k: v for k, v in c.drain().histograms.items() if v != [0, 0]}


def test_histograms_count_a_filter_hop_once():
    """A hop to a content filter (the hand-off first): its delivery's delay is taken back
    with the delivery; the size is the original message's, once; the delay is the final
    delivery's."""
    c = Correlator("postfix", POLICY)
    postfix_receipt(c, "H1", sasl="alice@alice.test", size=100)
    hop = "127.0.0.1[127.0.0.1]:10024"
    c.feed(Attempt(at(2), "mx/postfix", "H1", "r@y", D, relay=hop, handoff_id="H2", delay_ms=50))
    c.feed(Finished(at(3), "mx/postfix", "H1"))
    c.feed(Received(at(3), "mx/postfix", "H2", False, client_ip="127.0.0.1"))
    c.feed(Received(at(3), "mx/postfix", "H2", True, sender="alice@alice.test", size=180, nrcpt=1))
    c.feed(Attempt(at(4), "mx/postfix", "H2", "r@y", D, relay="mx.y[192.0.2.1]:25", delay_ms=1200))
    c.feed(Finished(at(5), "mx/postfix", "H2"))
    assert {(SIZE, 1024): [1, 100], (DELAY, 5000): [1, 1200]} == histograms(c)


def test_histograms_after_a_reinjection_received_first():
    """The re-injection's receipt and delivery come before the hop's line: its size is
    taken back (it is the same message), its delivery's delay stays; the hop has none."""
    c = Correlator("exim", POLICY)
    exim_send(c, "1r-1", 0, size=50, mid="m@a")
    exim_send(c, "1r-2", 1, size=80, mid="m@a", auth=None, sender="alice@alice.test")
    c.feed(Attempt(at(1), "", "1r-2", "r@y", D, relay="mx.y", delay_ms=1000))
    c.feed(Finished(at(1), "", "1r-2"))
    c.feed(Attempt(at(2), "", "1r-1", "r@y", D, relay="127.0.0.1", handoff_id="1r-2", delay_ms=7))
    c.feed(Finished(at(2), "", "1r-1"))
    assert {(SIZE, 1024): [1, 50], (DELAY, 1000): [1, 1000]} == histograms(c)


def test_histograms_skip_unknown_sizes_and_delays_and_other_outcomes():
    c = Correlator("postfix", POLICY)
    postfix_receipt(c, "U1", size=0)  # no size logged
    c.feed(Attempt(at(2), "mx/postfix", "U1", "r1@y", D))  # no delay logged
    c.feed(Attempt(at(2), "mx/postfix", "U1", "r2@y", S, delay_ms=3000))  # deferred
    c.feed(Attempt(at(3), "mx/postfix", "U1", "r2@y", F, delay_ms=4000))  # bounced
    assert {} == histograms(c)


# -- accounts.sender_domain_fallback on a real Exim log --------------------------------------


def _exim_sample_totals(policy: Policy) -> dict[str, list[int]]:
    """The recorded real-Exim scenario log (tests/mta/samples/exim.log), parsed by the
    grammar and correlated under ``policy``: per account sends, successes, defers, fails,
    bytes, rejects, expired."""
    from pathlib import Path

    from logstats.grammar import Clock, make_parser, parse_lines

    lines = (Path(__file__).parent / "mta" / "samples" / "exim.log").read_text().splitlines()
    parsed = parse_lines(make_parser("exim", Clock(UTC, datetime(2030, 1, 1, tzinfo=UTC))), lines)
    c = Correlator("exim", policy)
    for record in parsed.records:
        c.feed(record)
    return totals(c)


def test_exim_sender_domain_fallback_maps_unauthenticated_relays():
    """Exim ``<=`` lines without ``A=`` and without a local ``U=`` (the sample's m8 and m9
    from ``stranger@elsewhere.test`` over plain ``P=esmtp``, as a trusted relay sends) are
    ``-remote-`` unless ``sender_domain_fallback`` is on and the envelope sender's domain
    is in the table; authenticated and local submissions keep their own account even when
    their sender domain maps elsewhere, the MTA's bounces (``<>``) stay ``-system-``, and
    the id-less RCPT rejects stay ``-remote-`` (the fallback is about accepted mail)."""
    domains = {
        "alice.test": "alice",
        "bob.test": "bob",
        "elsewhere.test": "relayed",
        "mx.logstats.test": "mxowner",
    }
    off = _exim_sample_totals(Policy(domains=domains))
    on = _exim_sample_totals(Policy(domains=domains, sender_domain_fallback=True))
    assert "relayed" not in off
    assert [2, 2, 0, 0] == off[REMOTE][:4]  # 2 messages, 2 deliveries
    assert 2 == off[REMOTE][5]  # and the 2 RCPT rejects
    # with the fallback: the two relayed messages and their two local deliveries
    assert [2, 2, 0, 0] == on["relayed"][:4]
    assert 0 == on["relayed"][5]
    assert [0, 0, 0, 0, 0, 2] == on[REMOTE][:6]  # only the RCPT rejects remain
    for account in ("alice", "bob", "lsuser1", SYSTEM):
        assert off[account] == on[account], account
    assert "mxowner" not in on  # lsuser1 submits locally (U=lsuser1): the user wins
    assert 3 == on[SYSTEM][0]  # the three bounces, sender <>
    assert off[REMOTE][4] == on["relayed"][4] > 0  # the same bytes, now the relay's


def tag_dims(batch: Batch) -> dict[str, list[int]]:
    """Per tag: accepted (out + in), delivered, deferred, failed, over a drain's dims."""
    out: dict[str, list[int]] = {}
    for key, d in batch.dims.items():
        if key[3] != "tag":
            continue
        acc = out.setdefault(key[4], [0, 0, 0, 0])
        for i, n in enumerate((d.accepted_out + d.accepted_in, d.delivered, d.deferred, d.failed)):
            acc[i] += n
    return out


def test_tags_follow_a_reinjection_delivered_before_the_handoff_line():
    """The tag is logged on the first pass only (the re-injection skips header checks).
    The re-injected message is received and even delivered before the hop's `queued as`
    line: when its delivery moves to the original account it carries the original's tags,
    so the tag counts one message and one delivery, as the account does."""
    from logstats.model import Tagged

    c = Correlator("postfix", POLICY)
    c.feed(Received(at(0), "mx/postfix", "T1", False, auth_id="alice@alice.test"))
    c.feed(Tagged(at(0), "mx/postfix", "T1", ("billing",)))  # cleanup, before qmgr's from=
    c.feed(Received(at(1), "mx/postfix", "T1", True, sender="alice@alice.test", size=100, nrcpt=1))
    c.feed(Received(at(2), "mx/postfix", "T2", False, client_ip="127.0.0.1"))
    c.feed(Received(at(2), "mx/postfix", "T2", True, sender="alice@alice.test", size=180, nrcpt=1))
    c.feed(Attempt(at(3), "mx/postfix", "T2", "r@y", D, relay="mx.y[192.0.2.1]:25"))
    c.feed(Finished(at(3), "mx/postfix", "T2"))
    c.feed(
        Attempt(
            at(4), "mx/postfix", "T1", "r@y", D, relay="127.0.0.1[127.0.0.1]:10025", handoff_id="T2"
        )
    )
    c.feed(Finished(at(4), "mx/postfix", "T1"))
    batch = c.drain()
    assert {"billing": [1, 1, 0, 0]} == tag_dims(batch)
    sends = {k[1]: (t.sends, t.successes) for k, t in (batch.counters or {}).items() if t.sends}
    assert {"alice": (1, 1)} == sends
