"""cPanel API 2 ``EmailTrack::search`` over real HTTP, against a running ``logstats serve``.

The daemon is tests/test_api.py's (both recorded real-MTA samples, its keys); the
expected rows come from the scenario script (tests/mta/scenario.py: every submission's
recipients and the sink's answer at each attempt), once per MTA; every answer is checked
against tests/schemas/cpanel.py, written from cPanel's document.  The real PyPI client
``cpanel-api`` (0.3.0, dev extra) makes the same call with ``cpanel USER:TOKEN`` auth.
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from logstats import track
from logstats.model import REMOTE
from logstats.shapes import cpanel_api2, emailtrack_search
from tests.daemon_harness import DOMAINS
from tests.mta.scenario import SUBMISSIONS, simulate
from tests.mta.sink import DROPPED
from tests.schemas import cpanel as schema
from tests.schemas import validate
from tests.test_api import ADMIN_KEY, ALICE_KEY, Api, api, cpanel, whm

__all__ = ["api"]  # the module fixture, shared with tests/test_api.py

MTAS = 2  # the daemon follows the Exim and the Postfix sample
ALL = {"success": "1", "defer": "1", "failure": "1", "max_results_by_type": "0"}
KIND = {250: "success", 451: "defer", DROPPED: "defer", 550: "failure"}
LOCAL = ("local.test", "mx.logstats.test")


def params(user: str, **extra: str) -> dict[str, str]:
    return {
        "cpanel_jsonapi_module": "EmailTrack",
        "cpanel_jsonapi_func": "search",
        "cpanel_jsonapi_apiversion": "2",
        "cpanel_jsonapi_user": user,
        **extra,
    }


def search(api: Api, user: str, key: str = ADMIN_KEY, **extra: str) -> dict[str, Any]:
    """A successful search: HTTP 200, the document's envelope, event.result 1."""
    headers = whm(key) if key == ADMIN_KEY else cpanel(user, key)
    resp = api.request("GET", "/json-api/cpanel", params(user, **extra), headers=headers)
    assert 200 == resp.status, resp.text
    body = resp.json()
    assert [] == validate(body, schema.SEARCH), body
    return dict(body["cpanelresult"])


def refused(
    api: Api, user: str, key: str = ADMIN_KEY, status: int = 200, *, as_: str = "", **extra: str
) -> str:
    """A failed search (``as_``: the user named with the key, default ``user``): cPanel's
    envelope with event.result 0; its reason."""
    headers = whm(key) if key == ADMIN_KEY else cpanel(as_ or user, key)
    resp = api.request("GET", "/json-api/cpanel", params(user, **extra), headers=headers)
    assert status == resp.status, resp.text
    body = resp.json()
    assert [] == validate(body, schema.ERROR), body
    return str(body["cpanelresult"]["event"]["reason"])


def expected(owner: str) -> Counter[tuple[str, str, str]]:
    """(sender, recipient, type) of every event of ``owner``'s submissions, per the script:
    RCPT rejects rejected, local recipients one success, remote ones one row per sink
    answer; once per MTA.  The recorded samples predate the sink's ``drop-once`` quirk
    (their logs show m5 delivered at the first attempt), so its 421 attempt is left out;
    the test checks the sums against the samples' own truth files."""
    sim = simulate()
    out: Counter[tuple[str, str, str]] = Counter()
    for sub in SUBMISSIONS:
        if (sub.account if sub.how != "anon" else REMOTE) != owner:
            continue
        for rcpt in sub.rejected:
            out[(sub.sender, rcpt, "rejected")] += MTAS
        if not sub.accepted:
            continue
        for rcpt in sub.accepted:
            local = rcpt.rsplit("@", 1)[1] in LOCAL
            codes = [250] if local else sim.sink_attempts[rcpt.lower()]
            for code in (c for c in codes if c != DROPPED):
                out[(sub.sender, rcpt, KIND[code])] += MTAS
    return out


OWNERS = sorted({s.account if s.how != "anon" else REMOTE for s in SUBMISSIONS})


@pytest.mark.parametrize("owner", OWNERS)
def test_every_recipient_of_every_message_with_its_type_and_reason(api: Api, owner: str) -> None:
    """All flags, no limit: the account's rows are exactly the script's events (sender,
    recipient, type), newest first by send time, each the account's; a remote answer's
    reason carries the sink's code; local deliveries name the recipient's domain and the
    account owning it (the account map), remote ones are ``transport_is_remote``."""
    rows = search(api, owner, **ALL)["data"]
    want = expected(owner)
    assert want == Counter((r["sender"], r["recipient"], r["type"]) for r in rows)
    per_type = Counter[str]()
    for (_, _, kind), n in want.items():
        per_type[kind] += n
    assert (
        api.truth.count(owner, "SUCCESSCOUNT"),
        api.truth.count(owner, "DEFERCOUNT"),
        api.truth.count(owner, "FAILCOUNT"),
    ) == (per_type["success"], per_type["defer"], per_type["failure"] + per_type["rejected"])
    assert all(r["user"] == owner for r in rows)
    stamps = [int(r["sendunixtime"]) for r in rows]
    assert stamps == sorted(stamps, reverse=True)
    sim = simulate()
    for r in rows:
        domain = r["recipient"].rsplit("@", 1)[1]
        if r["type"] in ("defer", "failure") and domain not in LOCAL:
            codes = {c for c in sim.sink_attempts[r["recipient"].lower()] if c != 250}
            assert any(str(c) in r["message"] for c in codes), r
        if r["type"] == "success":
            assert (domain not in LOCAL) == r["transport_is_remote"], r
            assert r["deliveredto"], r
            if not r["transport_is_remote"]:
                assert (DOMAINS.get(domain), domain) == (r["deliveryuser"], r["deliverydomain"])
        else:
            assert (False, None) == (r["transport_is_remote"], r["deliveredto"]), r
        when = datetime.fromtimestamp(int(r["actionunixtime"]), ZoneInfo("UTC"))  # config's
        assert when.strftime("%Y-%m-%d %H:%M:%S") == r["actiontime"]


def test_flags_choose_the_types_and_a_bare_call_answers_none(api: Api) -> None:
    """The four flags default to 0 (the document): a bare call answers no rows; each flag
    brings exactly its types, and together they are the union."""
    bare = search(api, "alice")
    assert ([], {"overflowed": 0}) == (bare["data"], bare["metadata"])
    whole = Counter(r["type"] for r in search(api, "alice", **ALL)["data"])
    assert {"success", "defer", "failure"} <= set(whole)
    for flag, types in (
        ("success", {"success"}),
        ("defer", {"defer"}),
        ("failure", {"failure", "rejected"}),
    ):
        got = Counter(
            r["type"] for r in search(api, "alice", max_results_by_type="0", **{flag: "1"})["data"]
        )
        assert got == Counter({t: n for t, n in whole.items() if t in types}), flag


def test_max_results_by_type_limits_each_type_and_the_answer(api: Api) -> None:
    """``max_results_by_type=N``: the newest N of each type, and at most N rows in all
    (cPanel limits the union too); the default is 250, 0 no limit; overflowed stays 0
    below cPanel's 5000 matches."""
    full = search(api, "bob", **ALL)["data"]
    assert len(full) > 2
    for n in (1, 2):
        got = search(api, "bob", **{**ALL, "max_results_by_type": str(n)})
        assert len(got["data"]) == n and 0 == got["metadata"]["overflowed"]
        assert [r["sendunixtime"] for r in got["data"]] == [r["sendunixtime"] for r in full[:n]]
    default = search(api, "bob", success="1", defer="1", failure="1")["data"]
    assert len(default) == min(250, len(full))


def test_overflowed_when_more_than_5000_matched() -> None:
    """cPanel's rule, on the pure shape: overflowed is 1 when a limit is set and more than
    5000 rows matched; never without a limit."""
    s = emailtrack_search.parse({"success": "1"})
    assert (250, 1) == (s.limit, emailtrack_search.answer(s, [], 5001, UTC, {})[1])
    assert 0 == emailtrack_search.answer(s, [], 5000, UTC, {})[1]
    assert 5000 == emailtrack_search.parse({"max_results_by_type": "99999"}).limit
    unlimited = emailtrack_search.parse({"max_results_by_type": "0"})
    assert (None, 0) == (unlimited.limit, emailtrack_search.answer(unlimited, [], 9999, UTC, {})[1])


def test_actiontime_is_in_the_configured_zone() -> None:
    """``actiontime`` is the action time in the configured zone (cPanel: server-local)."""
    ts = datetime(2026, 7, 1, 12, 0, 0)
    r = track.TrackRow(
        ts, "exim", "", "1abc", "alice", "alice.test", "x@remote.test", "delivered", 10,
        False, "alice@alice.test", None, None, None, None, None, None, "250 OK", None,
        None, None, None, None, None, None, None,
    )  # fmt: skip
    row = emailtrack_search.row(r, ZoneInfo("Europe/Amsterdam"), {})
    assert ("2026-07-01 14:00:00", str(int(ts.replace(tzinfo=UTC).timestamp()))) == (
        row["actiontime"], row["actionunixtime"]
    )  # fmt: skip


def test_startdate_enddate_split_the_answer(api: Api) -> None:
    """startdate/enddate (Unix times, inclusive) bound the action time: the rows up to a
    moment and those after it are the whole answer."""
    full = search(api, "alice", **ALL)["data"]
    times = sorted({int(r["actionunixtime"]) for r in full})
    assert len(times) > 1
    mid = times[len(times) // 2]
    early = search(api, "alice", **ALL, enddate=str(mid))["data"]
    late = search(api, "alice", **ALL, startdate=str(mid + 1))["data"]
    assert early and late
    assert all(int(r["actionunixtime"]) <= mid for r in early)
    assert all(int(r["actionunixtime"]) > mid for r in late)
    assert sorted(map(json.dumps, full)) == sorted(map(json.dumps, early + late))


def test_api2_filter_sort_paginate(api: Api) -> None:
    """API 2's output options over the search: a ``contains`` filter keeps the rows whose
    column contains the term (numbered filters all apply), ``api2_sort`` orders by a
    column (numeric, reverse), ``api2_paginate`` cuts a 1-based page and says so."""
    full = search(api, "alice", **ALL)["data"]
    got = search(
        api, "alice", **ALL, api2_filter="1", api2_filter_type="contains",
        api2_filter_column="recipient", api2_filter_term="REMOTE.test",
    )["data"]  # fmt: skip
    assert got == [r for r in full if "remote.test" in r["recipient"].lower()] and got != full
    two = search(
        api, "alice", **ALL, api2_filter="1",
        api2_filter_column_0="type", api2_filter_term_0="success", api2_filter_type_0="==",
        api2_filter_column_1="recipient", api2_filter_term_1="ok-", api2_filter_type_1="begins",
    )["data"]  # fmt: skip
    assert two == [r for r in full if r["type"] == "success" and r["recipient"].startswith("ok-")]
    assert two
    by_size = search(
        api, "alice", **ALL, api2_sort="1", api2_sort_column="actionunixtime",
        api2_sort_method="numeric", api2_sort_reverse="0",
    )["data"]  # fmt: skip
    assert by_size == sorted(full, key=lambda r: int(r["actionunixtime"]))
    paged = search(
        api, "alice", **ALL, api2_paginate="1", api2_paginate_start="3", api2_paginate_size="2"
    )
    assert paged["data"] == full[2:4]
    assert {"start_result": 3, "results_per_page": 2, "total_results": len(full)}.items() <= paged[
        "paginate"
    ].items()


def test_an_account_key_sees_its_own_rows_only(api: Api) -> None:
    """``cpanel alice:KEY`` searches alice (her rows only) and is refused bob: 403 in
    cPanel's envelope."""
    own = search(api, "alice", ALICE_KEY, **ALL)["data"]
    assert own and {"alice"} == {r["user"] for r in own}
    assert own == search(api, "alice", **ALL)["data"]
    assert "bob" in refused(api, "bob", ALICE_KEY, 403, as_="alice", **ALL)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("success", "maybe"),
        ("defer", "-1"),
        ("max_results_by_type", "-1"),
        ("max_results_by_type", "ten"),
        ("max_results_by_type", "1e3"),
        ("startdate", "-5"),
        ("startdate", "yesterday"),
        ("enddate", "9" * 40),
        ("deliverytype", "sideways"),
        ("api2_paginate_size", "0"),
        ("api2_paginate_start", "9" * 30),
        ("api2_sort_method", "random"),
        ("api2_filter_type", "like"),
    ],
)
def test_hostile_values_are_cpanel_failures(api: Api, name: str, value: str) -> None:
    """A value the search cannot use is ``event.result`` 0 naming the parameter (HTTP 200,
    as cPanel answers failures), never a server error."""
    extra = {**ALL, name: value}
    if name.startswith("api2_paginate"):
        extra["api2_paginate"] = "1"
    if name.startswith("api2_sort"):
        extra.update(api2_sort="1", api2_sort_column="size")
    if name.startswith("api2_filter"):
        extra.update(api2_filter="1", api2_filter_column="user", api2_filter_term="a")
    assert name in refused(api, "alice", **extra)


def test_the_cpanel_api_client_reads_the_search(api: Api) -> None:
    """PyPI ``cpanel-api`` (unpatched): ``CPanelApi(..., auth_type="utoken").cpanel2.
    EmailTrack.search(...)`` POSTs the call and gets the same answer as a GET."""
    from cpanel_api import CPanelApi

    client = CPanelApi("127.0.0.1", "alice", ALICE_KEY, api.port, auth_type="utoken", ssl=False)
    got = client.cpanel2.EmailTrack.search(**ALL)
    assert [] == validate(got, schema.SEARCH)
    assert got["cpanelresult"]["data"] == search(api, "alice", **ALL)["data"]


def test_api2_options_parse_without_a_daemon() -> None:
    """``regex`` filters compile or are refused; a comparison term must be a number."""
    with pytest.raises(cpanel_api2.Api2Error, match="api2_filter_term"):
        cpanel_api2.parse(
            {
                "api2_filter": "1",
                "api2_filter_column": "x",
                "api2_filter_type": "regex",
                "api2_filter_term": "(",
            }
        )
    with pytest.raises(cpanel_api2.Api2Error, match="api2_filter_term"):
        cpanel_api2.parse(
            {
                "api2_filter": "1",
                "api2_filter_column": "x",
                "api2_filter_type": "gt",
                "api2_filter_term": "abc",
            }
        )
    opts = cpanel_api2.parse(
        {
            "api2_filter": "1",
            "api2_filter_column": "size",
            "api2_filter_type": "gt",
            "api2_filter_term": "5",
        }
    )
    assert cpanel_api2.apply([{"size": 4}, {"size": 6}], opts) == ([{"size": 6}], None)


@pytest.mark.parametrize("kind", ["local", "remote"])
def test_deliverytype_keeps_that_kind_of_delivery(api: Api, kind: str) -> None:
    """``deliverytype=local|remote`` (TrackQuery.local): only the successful deliveries of
    that kind (cPanel leaves failures and deferrals out: they have no delivery type)."""
    full = search(api, "alice", **ALL)["data"]
    got = search(api, "alice", **ALL, deliverytype=kind)["data"]
    remote = kind == "remote"
    want = [r for r in full if r["type"] == "success" and r["transport_is_remote"] == remote]
    assert want and got == want
    assert search(api, "alice", **ALL, deliverytype="all")["data"] == full


# --- WHM API 1: emailtrack_search and emailtrack_stats ---------------------------------------


def whm_call(
    api: Api, command: str, key: str = ADMIN_KEY, prefix: str = "", **extra: str
) -> tuple[int, dict[str, Any]]:
    """A WHM API 1 call with ``whm USER:KEY`` (root for the admin key, alice for hers)."""
    user = "root" if key == ADMIN_KEY else "alice"
    headers = {"Authorization": f"whm {user}:{key}"}
    resp = api.request(
        "GET", f"{prefix}/json-api/{command}", {"api.version": "1", **extra}, headers=headers
    )
    return resp.status, resp.json()


def test_whm_emailtrack_search_admin_sees_every_account_a_scoped_key_its_own(api: Api) -> None:
    """An admin key's ``emailtrack_search`` holds every account's rows (the API 2 answers
    of all of them together, as multisets); alice's key only hers; the session URL form
    answers the same."""
    status, body = whm_call(api, "emailtrack_search", **ALL)
    assert 200 == status and [] == validate(body, schema.WHM_SEARCH), body
    records = body["data"]["records"]
    users = {r["user"] for r in records}
    assert set(OWNERS) <= users
    union = [r for user in sorted(users) for r in search(api, user, **ALL)["data"]]
    assert Counter(map(json.dumps, union)) == Counter(map(json.dumps, records))
    status, mine = whm_call(api, "emailtrack_search", ALICE_KEY, **ALL)
    assert 200 == status
    assert mine["data"]["records"] == search(api, "alice", **ALL)["data"]
    _, session = whm_call(api, "emailtrack_search", prefix="/cpsess0123456789", **ALL)
    assert session == body


def test_whm_output_options_filter_sort_chunk(api: Api) -> None:
    """``api.filter`` (lettered, all apply), ``api.sort`` (numeric, reverse) and
    ``api.chunk`` (1-based start) over the records."""
    _, body = whm_call(api, "emailtrack_search", **ALL)
    records = body["data"]["records"]
    _, got = whm_call(
        api, "emailtrack_search", **ALL, **{
            "api.filter.enable": "1",
            "api.filter.a.field": "user", "api.filter.a.arg0": "bob", "api.filter.a.type": "eq",
            "api.filter.b.field": "size", "api.filter.b.arg0": "0", "api.filter.b.type": "gt",
            "api.sort.enable": "1", "api.sort.a.field": "size",
            "api.sort.a.method": "numeric", "api.sort.a.reverse": "1",
            "api.chunk.enable": "1", "api.chunk.size": "3", "api.chunk.start": "2",
        },
    )  # fmt: skip
    want = sorted(
        (r for r in records if r["user"] == "bob" and r["size"] > 0),
        key=lambda r: r["size"],
        reverse=True,
    )[1:4]
    assert want and [r["size"] for r in got["data"]["records"]] == [r["size"] for r in want]


def test_whm_emailtrack_stats_sums_the_callers_accounts(api: Api) -> None:
    """``emailtrack_stats``: one record, the EmailTrack counters summed over the accounts
    the key sees (the admin: every account; alice's key: alice), equal to the truth."""
    status, body = whm_call(api, "emailtrack_stats")
    assert 200 == status and [] == validate(body, schema.WHM_STATS), body
    (row,) = body["data"]["records"]
    for name in ("SENDCOUNT", "SUCCESSCOUNT", "DEFERCOUNT", "FAILCOUNT"):
        assert api.truth.total(name) == int(row[name]), name
    _, mine = whm_call(api, "emailtrack_stats", ALICE_KEY)
    (own,) = mine["data"]["records"]
    assert {k: str(api.truth.count("alice", k)) for k in ("SENDCOUNT", "FAILCOUNT")}.items() <= (
        own.items()
    )


@pytest.mark.parametrize(
    ("command", "extra"),
    [
        ("emailtrack_search", {"api.version": "2"}),
        ("emailtrack_search", {"max_results_by_type": "-3"}),
        ("emailtrack_search", {"api.chunk.enable": "1", "api.chunk.size": "x"}),
        (
            "emailtrack_search",
            {"api.sort.enable": "1", "api.sort.a.field": "size", "api.sort.a.method": "sideways"},
        ),
        (
            "emailtrack_search",
            {
                "api.filter.enable": "1",
                "api.filter.a.field": "size",
                "api.filter.a.type": "gt",
                "api.filter.a.arg0": "many",
            },
        ),
        ("emailtrack_stats", {"starttime": "-1"}),
        ("emailtrack_stats", {"endtime": "9" * 40}),
        ("emailtrack_stats", {"deliverytype": "nowhere"}),
    ],
)
def test_whm_hostile_values_are_result_0(api: Api, command: str, extra: dict[str, str]) -> None:
    """A value WHM API 1 cannot use: HTTP 200, ``metadata.result`` 0 with the reason."""
    status, body = whm_call(api, command, **{**ALL, **extra})
    assert 200 == status and [] == validate(body, schema.WHM_ERROR), body
    assert command == body["metadata"]["command"]
