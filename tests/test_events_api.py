"""Mailgun's Events API (``GET /v3/{domain}/events``) against the real daemon on the API
fixtures: the events of each sending domain count what the Mailgun stats of the same window
count, paging walks every row once in both orders, filters and scope hold, and odd values
are a 400 in Mailgun's envelope."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests import test_api
from tests.schemas import mailgun_events as ev_schema
from tests.schemas import validate
from tests.test_api import (
    ADMIN_KEY,
    ALICE_KEY,
    DOMAIN_KEY,
    EVENTS,
    SENDER_DOMAINS,
    TAG_KEY,
    TAGS_KEY,
    Api,
    basic,
    mailgun_sums,
)

api = test_api.api  # the daemon on the API fixtures (one per module)


def window(a: Api) -> dict[str, str]:
    start = datetime.combine(a.first_day - timedelta(days=1), datetime.min.time(), UTC)
    end = datetime.combine(a.last_day + timedelta(days=2), datetime.min.time(), UTC)
    return {"begin": str(int(start.timestamp())), "end": str(int(end.timestamp()))}


def get(a: Api, path: str, params: dict[str, str] | None = None, key: str = ADMIN_KEY) -> Any:
    resp = a.request("GET", path, params, headers=basic(key))
    assert 200 == resp.status, resp.text
    body = resp.json()
    problems = validate(body, ev_schema.ENVELOPE)
    for i, it in enumerate(body["items"]):
        problems += validate(it, ev_schema.item(it["event"]), f"$.items[{i}]")
    assert not problems, problems[:5]
    return body


def walk(a: Api, domain: str, params: dict[str, str]) -> list[dict[str, Any]]:
    """Every item of a query, following ``paging.next`` until a page is empty."""
    body = get(a, f"/v3/{domain}/events", params)
    items: list[dict[str, Any]] = []
    for _ in range(1000):
        if not body["items"]:
            return items
        items += body["items"]
        url = urlsplit(body["paging"]["next"])
        assert url.netloc == f"127.0.0.1:{a.port}"  # the request's own base
        body = get(a, f"{url.path}")
    raise AssertionError("paging does not end")


def tally(items: list[dict[str, Any]]) -> dict[str, int]:
    c = Counter(
        it["event"] if it["event"] != "failed" else f"failed-{it['severity']}" for it in items
    )
    return {
        "accepted": c["accepted"],
        "delivered": c["delivered"],
        "deferred": c["failed-temporary"],
        "failed": c["failed-permanent"],
    }


@pytest.mark.parametrize("domain", SENDER_DOMAINS)
def test_events_count_what_domain_stats_count(api: Api, domain: str) -> None:
    """Per sending domain: accepted / delivered / failed temporary / failed permanent events
    over the window equal ``/v3/{domain}/stats/total`` of the same window, and the truth."""
    items = walk(api, domain, {**window(api), "ascending": "yes", "limit": "50"})
    stats = api.request(
        "GET",
        f"/v3/{domain}/stats/total",
        {"event": EVENTS, **api.mailgun_window()},
        headers=basic(ADMIN_KEY),
    ).json()
    got = mailgun_sums(stats)["*"]
    want = {k: got[k] for k in ("accepted", "delivered", "deferred", "failed")}
    assert want == tally(items)
    truth = api.truth.sender_domains[domain]
    assert truth["delivered"] == tally(items)["delivered"]
    assert {domain} >= {i["envelope"]["sender"].rpartition("@")[2] for i in items} - {""}


def test_paging_walks_every_row_once_in_both_orders(api: Api) -> None:
    domain = "alice.test"
    up = walk(api, domain, {**window(api), "ascending": "yes", "limit": "3"})
    w = window(api)
    down = walk(api, domain, {"begin": w["end"], "end": w["begin"], "limit": "4"})
    ids = [i["id"] for i in up]
    assert len(ids) == len(set(ids)) and len(ids) > 6
    assert ids == [i["id"] for i in down][::-1]
    assert [i["timestamp"] for i in up] == sorted(i["timestamp"] for i in up)


def test_previous_page_is_the_page_before(api: Api) -> None:
    params = {**window(api), "ascending": "yes", "limit": "3"}
    first = get(api, "/v3/alice.test/events", params)
    second = get(api, urlsplit(first["paging"]["next"]).path)
    back = get(
        api,
        "/v3/alice.test/events",
        {"page": urlsplit(second["paging"]["previous"]).path.rpartition("/")[2]},
    )
    assert [i["id"] for i in first["items"]] == [i["id"] for i in back["items"]]


def test_filters(api: Api) -> None:
    base = {**window(api), "ascending": "yes", "limit": "300"}
    every = walk(api, "alice.test", base)
    for event in ("delivered", "accepted", "failed"):
        got = walk(api, "alice.test", {**base, "event": event})
        assert [i["id"] for i in every if i["event"] == event] == [i["id"] for i in got]
    temp = walk(api, "alice.test", {**base, "severity": "temporary"})
    assert [i["id"] for i in every if i.get("severity") == "temporary"] == [i["id"] for i in temp]
    nd = walk(api, "alice.test", {**base, "event": "NOT delivered"})
    assert [i["id"] for i in every if i["event"] != "delivered"] == [i["id"] for i in nd]
    both = walk(api, "alice.test", {**base, "event": "delivered OR failed"})
    assert [i["id"] for i in every if i["event"] != "accepted"] == [i["id"] for i in both]
    rcpt = next(i["recipient"] for i in every if i["event"] == "delivered")
    mine = walk(api, "alice.test", {**base, "recipient": rcpt})
    assert mine and all(i["recipient"] == rcpt for i in mine)
    assert [] == walk(api, "alice.test", {**base, "event": "rejected"})


def test_scope_is_403_in_mailguns_envelope(api: Api) -> None:
    for key, domain in ((ALICE_KEY, "bob.test"), (DOMAIN_KEY, "alice.test")):
        resp = api.request("GET", f"/v3/{domain}/events", headers=basic(key))
        assert 403 == resp.status and set(resp.json()) == {"message"}, resp.text
    mine = walk(api, "bob.test", window(api) | {"ascending": "yes"})
    resp = api.request(
        "GET", "/v3/bob.test/events", {**window(api), "ascending": "yes"}, headers=basic(DOMAIN_KEY)
    )
    assert [i["id"] for i in mine][:100] == [i["id"] for i in resp.json()["items"]]


def test_tag_keys_see_their_tag_only(api: Api) -> None:
    """A key limited to one tag reads that tag's events; asking another tag, or (with a key
    of two tags) naming none, is 403."""
    params = {**window(api), "ascending": "yes", "limit": "300"}
    every = walk(api, "alice.test", params)
    resp = api.request("GET", "/v3/alice.test/events", params, headers=basic(TAG_KEY))
    assert 200 == resp.status, resp.text
    want = [i["id"] for i in every if "billing" in i["tags"]]
    assert want and want == [i["id"] for i in resp.json()["items"]]
    for key, extra in ((TAG_KEY, {"tags": "promo"}), (TAGS_KEY, {})):
        resp = api.request("GET", "/v3/alice.test/events", params | extra, headers=basic(key))
        assert 403 == resp.status and set(resp.json()) == {"message"}, resp.text


def test_hostile_host_header_and_paths_never_500(api: Api) -> None:
    """A forged Host never reaches the paging URLs; odd domains and tokens are 4xx."""
    resp = api.request(
        "GET", "/v3/alice.test/events", headers=basic(ADMIN_KEY) | {"Host": "evil/x?y"}
    )
    assert 200 == resp.status, resp.text
    assert resp.json()["paging"]["next"].startswith("http://localhost/v3/alice.test/events/")
    for path in ("/v3/%00/events", "/v3/alice.test/events/" + "A" * 5000,
                 "/v3/alice.test/events/%FF%FE", "/v3/alice.test/events/..."):  # fmt: skip
        resp = api.request("GET", path, headers=basic(ADMIN_KEY))
        assert 400 <= resp.status < 500, (path, resp.status, resp.text)


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "0"}, {"limit": "301"}, {"limit": "x"}, {"begin": "yesterday"},
        {"end": "1e99"}, {"ascending": "maybe"}, {"event": "bogus"}, {"severity": "soft"},
        {"page": "garbage"}, {"page": "AAAA"}, {"subject": "hi"}, {"begin": "\x00"},
        {"event": "NOT (x OR"}, {"begin": "10", "end": "20", "ascending": "no"},
    ],
)  # fmt: skip
def test_odd_values_are_400(api: Api, params: dict[str, str]) -> None:
    resp = api.request("GET", "/v3/alice.test/events", params, headers=basic(ADMIN_KEY))
    assert 400 == resp.status and set(resp.json()) == {"message"}, resp.text


def test_tampered_token_is_400(api: Api) -> None:
    body = get(api, "/v3/alice.test/events", {**window(api), "ascending": "yes", "limit": "2"})
    token = urlsplit(body["paging"]["next"]).path.rpartition("/")[2]
    bad = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
    resp = api.request("GET", f"/v3/alice.test/events/{bad}", headers=basic(ADMIN_KEY))
    assert 400 == resp.status and set(resp.json()) == {"message"}, resp.text
    other = api.request("GET", f"/v3/bob.test/events/{token}", headers=basic(ADMIN_KEY))
    assert 400 == other.status, other.text


def test_mailgun_sdk_reads_events(api: Api) -> None:
    """The official ``mailgun`` SDK, unpatched, with only ``api_url`` and the key:
    ``events.get(domain=, filters=)`` answers the first page, and ``events.stream`` (which
    follows ``paging.next`` by its query string) yields every event the HTTP walk finds,
    counting what the domain's stats count."""
    client_mod = pytest.importorskip("mailgun.client")
    params = {**window(api), "ascending": "yes", "limit": "5"}
    want = walk(api, "bob.test", params)
    with client_mod.Client(auth=("api", ADMIN_KEY), api_url=api.base_url) as client:
        first = client.events.get(domain="bob.test", filters=params)
        assert 200 == first.status_code, first.text
        assert [i["id"] for i in want[:5]] == [i["id"] for i in first.json()["items"]]
        streamed = list(client.events.stream(domain="bob.test", filters=params))
    assert [i["id"] for i in want] == [i["id"] for i in streamed]
    truth = api.truth.sender_domains["bob.test"]
    assert [truth["messages"], truth["delivered"], truth["deferred"]] == [
        tally(streamed)[k] for k in ("accepted", "delivered", "deferred")
    ]


JS = Path(__file__).parent / "js"


def node_sdk() -> Path:
    """tests/js installed from its lockfile (``npm ci``) when it is not yet."""
    if not (JS / "node_modules" / "mailgun.js" / "package.json").exists():
        subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund"],
            cwd=JS,
            check=True,
            capture_output=True,
            timeout=300,
        )
    return JS / "events.js"


def test_mailgun_js_sdk_walks_events(api: Api) -> None:
    """The official npm ``mailgun.js`` (v12), unchanged but for ``url``: ``events.get``
    walked with the SDK's own page ids (``pages.next.page``, taken after the URL's last
    ``/``) yields every event of the HTTP walk, and bob.test's truth."""
    script = node_sdk()
    w = window(api)
    out = subprocess.run(
        ["node", str(script), api.base_url, ADMIN_KEY, "bob.test", w["begin"], w["end"], "5"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert 0 == out.returncode, out.stderr[-2000:]
    got = json.loads(out.stdout)
    assert {"first", "last", "next", "previous"} <= set(got["pages"])
    want = walk(api, "bob.test", {**w, "ascending": "yes", "limit": "5"})
    assert [i["id"] for i in want] == [i["id"] for i in got["items"]]
    truth = api.truth.sender_domains["bob.test"]
    assert [truth["messages"], truth["delivered"], truth["deferred"]] == [
        tally(got["items"])[k] for k in ("accepted", "delivered", "deferred")
    ]


def test_track_keyset_cursor_walks_ties_once() -> None:
    """``track.search`` with ``after``: rows sharing a second (and a queue id) are walked
    once each in both orders, one row a page; ``exclude_accounts`` drops an account."""
    import duckdb

    from logstats import track

    con = duckdb.connect()
    types = {"ts": "TIMESTAMP", "size": "BIGINT", "local": "BOOLEAN", "sent_at": "TIMESTAMP"}
    con.execute(
        "CREATE TABLE events ("
        + ", ".join(f"{c} {types.get(c, 'VARCHAR')}" for c in track.COLUMNS)
        + ")"
    )
    t0 = datetime(2020, 5, 1, 12, 0, 0, 123457)
    rows = [
        (t0, "q1", "a@x.test", "deferred", "alice"),
        (t0, "q1", "a@x.test", "delivered", "alice"),
        (t0, "q1", "b@x.test", "delivered", "alice"),
        (t0, "q2", "a@x.test", "failed", "alice"),
        (t0 + timedelta(seconds=1), "q0", "c@x.test", "delivered", "alice"),
        (t0, "q3", "d@x.test", "delivered", "-system-"),
    ]
    for ts, qid, rcpt, outcome, account in rows:
        values = dict.fromkeys(track.COLUMNS, None) | {
            "ts": ts, "mta": "exim", "scope": "", "queue_id": qid, "account": account,
            "sender_domain": "x.test", "recipient": rcpt, "outcome": outcome, "size": 1,
        }  # fmt: skip
        con.execute(
            f"INSERT INTO events ({', '.join(track.COLUMNS)}) "
            f"VALUES ({', '.join('?' for _ in track.COLUMNS)})",
            [values[c] for c in track.COLUMNS],
        )
    start, end = datetime(2020, 1, 1, tzinfo=UTC), datetime(2021, 1, 1, tzinfo=UTC)
    for newest_first in (False, True):
        q = track.TrackQuery(
            start,
            end,
            types=frozenset({track.DELIVERED, track.DEFERRED, track.FAILED}),
            limit=1,
            newest_first=newest_first,
            exclude_accounts=("-system-",),
        )
        seen: list[tuple[Any, ...]] = []
        for _ in range(10):
            page = track.search(con, q)
            if not page:
                break
            r = page[0]
            seen.append((r.ts, r.queue_id, r.recipient, r.outcome))
            after = (r.ts.replace(tzinfo=UTC), r.queue_id, r.recipient, r.outcome)
            q = replace(q, after=after)
        want = sorted((ts, q_, r_, o) for ts, q_, r_, o, a in rows if a == "alice")
        assert (want[::-1] if newest_first else want) == seen
