"""The Mailgun, SendGrid and SMTPeter answer shapes: envelopes checked against schemas
written from the seed documents, numbers over hand-built rows, and parameter validation."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logstats.model import Dimension, Resolution, SeriesRequest, SeriesRow
from logstats.shapes import EPOCH, FAR_FUTURE, SHAPES, ApiError, mailgun, sendgrid, smtpeter
from tests.schemas import mailgun as mg_schema
from tests.schemas import mailgun_events as ev_schema
from tests.schemas import sendgrid as sg_schema
from tests.schemas import smtpeter as sp_schema
from tests.schemas import validate, validate_xml

NOW = datetime(2024, 5, 10, 13, 45, 12, tzinfo=UTC)
D = lambda day, hour=0: datetime(2024, 5, day, hour, tzinfo=UTC)  # noqa: E731
ALL_EVENTS = list(mailgun.EVENTS)


def row(bucket: datetime | None, key: str | None = None, **counts: Any) -> SeriesRow:
    return SeriesRow(bucket=bucket, key=key, **counts)


def api_error(shape: str, params: dict[str, Any], path: dict[str, str] | None = None) -> ApiError:
    with pytest.raises(ApiError) as info:
        SHAPES[shape].parse(params, NOW, path)
    return info.value


def answer(shape: str, params: dict[str, Any], rows: list[SeriesRow], path=None) -> Any:
    s = SHAPES[shape]
    return s.render(s.parse(params, NOW, path), rows, NOW)


# -- Mailgun ---------------------------------------------------------------------------------


MG_ROWS = [
    row(
        D(8),
        accepted_outgoing=5,
        accepted_incoming=2,
        delivered=6,
        failed_temporary=3,
        failed_permanent=2,
        rejected=1,
    ),
    row(D(10), accepted_outgoing=1, delivered=1),
]


def test_mailgun_total_fills_every_day_of_the_default_week():
    """No start/end: the seven days before now, every day bucket listed, empty ones zero."""
    body = answer("mailgun.total", {"event": ["accepted", "delivered"]}, MG_ROWS)
    assert [] == validate(body, mg_schema.envelope(["accepted", "delivered"]))
    assert [f"{d:%a}, {d:%d} May 2024 00:00:00 UTC" for d in map(D, range(3, 11))] == [
        s["time"] for s in body["stats"]
    ]
    assert "Fri, 03 May 2024 00:00:00 UTC" == body["start"]
    assert "Fri, 10 May 2024 13:45:12 UTC" == body["end"]
    assert "day" == body["resolution"]
    by_time = {s["time"]: s for s in body["stats"]}
    assert {"incoming": 2, "outgoing": 5, "total": 7} == by_time["Wed, 08 May 2024 00:00:00 UTC"][
        "accepted"
    ]
    assert {"smtp": 1, "http": 0, "total": 1} == by_time["Fri, 10 May 2024 00:00:00 UTC"][
        "delivered"
    ]
    assert {"incoming": 0, "outgoing": 0, "total": 0} == by_time["Thu, 09 May 2024 00:00:00 UTC"][
        "accepted"
    ]


def test_mailgun_request_spans_exactly_the_buckets():
    """The store is asked for whole buckets from the one holding start to the one holding end."""
    q = mailgun.parse_total({"event": ["failed"]}, NOW)
    assert SeriesRequest(D(3), D(11), Resolution.DAY) == q.request


def test_mailgun_failed_maps_deferrals_and_permanent_failures():
    """failed.temporary.total = deferrals; permanent.bounce and total = permanent failures
    (the store's rows hold no RCPT rejects there); the Mailgun-only reasons are 0."""
    body = answer("mailgun.total", {"event": "failed", "start": "1715126400"}, MG_ROWS)
    assert [] == validate(body, mg_schema.envelope(["failed"]))
    assert {
        "temporary": {"espblock": 0, "total": 3},
        "permanent": {
            "suppress-bounce": 0,
            "suppress-unsubscribe": 0,
            "suppress-complaint": 0,
            "bounce": 2,
            "delayed-bounce": 0,
            "total": 2,
        },
    } == body["stats"][0]["failed"]


def test_mailgun_items_carry_only_the_events_asked_for():
    """Each stats item has time and exactly the events asked for; tracking events are 0."""
    body = answer("mailgun.total", {"event": ["opened", "stored", "opened"]}, MG_ROWS)
    assert [] == validate(body, mg_schema.envelope(["opened", "stored"]))
    assert {"time", "opened", "stored"} == set(body["stats"][0])
    assert {"total": 0} == body["stats"][0]["opened"]


def test_mailgun_all_events_fit_the_schema():
    """Every event at once, hourly: the items carry all eight blocks.  24 hours back from
    13:45 touch 25 hour buckets (13:00 the day before to 13:00)."""
    params = {"event": ALL_EVENTS, "resolution": "hour", "duration": "24h"}
    body = answer("mailgun.total", params, MG_ROWS)
    assert [] == validate(body, mg_schema.envelope(ALL_EVENTS))
    assert 25 == len(body["stats"])
    assert "Thu, 09 May 2024 13:00:00 UTC" == body["stats"][0]["time"]
    assert "hour" == body["resolution"]


def test_mailgun_rfc2822_dates_in_every_documented_zone():
    """UTC, GMT, +0000 and a Unix epoch name the same instant."""
    for start in (
        "Wed, 08 May 2024 00:00:00 UTC",
        "Wed, 08 May 2024 00:00:00 GMT",
        "Wed, 08 May 2024 00:00:00 +0000",
        "Wed, 08 May 2024 02:00:00 +0200",
        "1715126400",
    ):
        q = mailgun.parse_total({"event": ["accepted"], "start": [start]}, NOW)
        assert D(8) == q.buckets[0], start


def test_mailgun_duration_counts_back_from_end_and_sets_the_resolution():
    """duration overrides start: start = end minus the period exactly; without resolution
    the duration's unit is the resolution (m = month); the answer lists every bucket from
    the one holding that start to the one holding end."""
    q = mailgun.parse_total(
        {"event": ["accepted"], "duration": ["2m"], "start": ["1"], "end": ["1715299200"]}, NOW
    )
    assert Resolution.MONTH == q.resolution
    # end 10 May 00:00: two months back is 10 March, so March, April and May
    assert (datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 4, 1, tzinfo=UTC), D(1)) == q.buckets
    assert (
        SeriesRequest(
            datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC), Resolution.MONTH
        )
        == q.request
    )
    q = mailgun.parse_total({"event": ["accepted"], "duration": ["3h"], "resolution": ["day"]}, NOW)
    assert Resolution.DAY == q.resolution
    assert (D(10),) == q.buckets
    q = mailgun.parse_total({"event": "accepted", "duration": "14h", "resolution": "day"}, NOW)
    assert (D(9), D(10)) == q.buckets
    q = mailgun.parse_total({"event": ["accepted"], "duration": ["2d"]}, NOW)
    assert Resolution.DAY == q.resolution
    assert (D(8), D(9), D(10)) == q.buckets
    # the end of a month: one month before 31 March is the last day of February
    q = mailgun.parse_total(
        {"event": ["accepted"], "duration": ["1m"], "resolution": ["day"],
         "end": ["Sun, 31 Mar 2024 12:00:00 UTC"]},
        NOW,
    )  # fmt: skip
    assert datetime(2024, 2, 29, tzinfo=UTC) == q.buckets[0]
    assert datetime(2024, 3, 31, tzinfo=UTC) == q.buckets[-1]


def test_mailgun_one_month_without_resolution_holds_mail_of_last_week():
    """duration=1m alone, a day after the turn of the month: mail of 7 days ago is in the
    previous month's bucket, which the answer lists (not one bucket from the 1st)."""
    now = datetime(2024, 6, 2, 9, 30, tzinfo=UTC)
    week_ago = datetime(2024, 5, 26, tzinfo=UTC)
    rows = [row(week_ago, accepted_outgoing=3, delivered=5), row(D(1), delivered=0)]
    s = SHAPES["mailgun.total"]
    q = s.parse({"event": ["accepted", "delivered"], "duration": ["1m"]}, now)
    assert q.request is not None and q.request.start <= week_ago < q.request.end
    body = s.render(q, [r for r in rows if q.request.start <= r.bucket < q.request.end], now)
    assert "month" == body["resolution"]
    assert ["Wed, 01 May 2024 00:00:00 UTC", "Sat, 01 Jun 2024 00:00:00 UTC"] == [
        i["time"] for i in body["stats"]
    ]
    assert [3, 0] == [i["accepted"]["outgoing"] for i in body["stats"]]
    assert [5, 0] == [i["delivered"]["total"] for i in body["stats"]]
    assert "Sun, 02 Jun 2024 09:30:00 UTC" == body["end"]


def test_mailgun_month_buckets_sum_the_rows_inside():
    """Monthly resolution: rows of the store's month bucket land in that month's item."""
    params = {"event": "delivered", "resolution": "month", "start": "Mon, 01 Apr 2024 00:00:00 UTC"}
    rows = [row(D(1), delivered=4), row(datetime(2024, 4, 1, tzinfo=UTC), delivered=2)]
    body = answer("mailgun.total", params, rows)
    assert [2, 4] == [s["delivered"]["total"] for s in body["stats"]]
    assert "Mon, 01 Apr 2024 00:00:00 UTC" == body["start"]


def test_mailgun_domain_total_filters_on_the_sending_domain():
    """/v3/{domain}/stats/total asks the store for that sender domain only."""
    q = mailgun.parse_domain_total({"event": "accepted"}, NOW, {"domain": "Alice.TEST"})
    assert q.request is not None
    assert ((Dimension.SENDER_DOMAIN, "alice.test"),) == q.request.filters
    body = mailgun.render(q, MG_ROWS, NOW)
    assert [] == validate(body, mg_schema.envelope(["accepted"]))
    assert "Totals for entire domain" == body["description"]


def test_mailgun_domains_lists_one_bucket_per_domain_sorted_and_paged():
    """/v3/stats/total/domains: the bucket holding timestamp, per domain, skip and limit."""
    params = {
        "event": ["accepted"],
        "timestamp": ["Wed, 08 May 2024 10:00:00 UTC"],
        "limit": ["2"],
        "skip": ["1"],
    }
    q = mailgun.parse_domains(params, NOW)
    assert SeriesRequest(D(8), D(9), None, group=Dimension.SENDER_DOMAIN) == q.request
    rows = [
        row(None, k, accepted_outgoing=n)
        for k, n in (("c.test", 3), ("a.test", 1), ("b.test", 2), ("d.test", 4))
    ]
    body = mailgun.render(q, rows, NOW)
    assert [] == validate(body, mg_schema.envelope(["accepted"], key="domain"))
    assert [("b.test", 2), ("c.test", 3)] == [
        (s["domain"], s["accepted"]["total"]) for s in body["stats"]
    ]
    assert {"Wed, 08 May 2024 00:00:00 UTC"} == {s["time"] for s in body["stats"]}


@pytest.mark.parametrize(
    ("group", "dimension"),
    [
        ("domain", Dimension.SENDER_DOMAIN),
        ("ip", Dimension.IP),
        ("provider", Dimension.PROVIDER),
        ("tag", Dimension.TAG),
    ],
)
def test_mailgun_filter_groups_by_key(group, dimension):
    """group=domain|ip|provider|tag: one item per value over the window, named by the group."""
    params = {"event": ["accepted", "failed"], "group": [group], "filter": ["domain:a.test"]}
    q = mailgun.parse_filter(params, NOW)
    assert q.request is not None
    assert (dimension, ((Dimension.SENDER_DOMAIN, "a.test"),), None) == (
        q.request.group,
        q.request.filters,
        q.request.resolution,
    )
    rows = [
        row(None, "y", accepted_outgoing=1),
        row(None, "x", accepted_incoming=2),
        row(None, "y", failed_permanent=1),
    ]
    body = mailgun.render(q, rows, NOW)
    assert [] == validate(body, mg_schema.envelope(["accepted", "failed"], key=group))
    assert [("x", 2, 0), ("y", 1, 1)] == [
        (s[group], s["accepted"]["total"], s["failed"]["permanent"]["total"]) for s in body["stats"]
    ]


def test_mailgun_filter_group_total_is_one_item():
    """group=total: one item summing the window, at its start."""
    q = mailgun.parse_filter({"event": ["accepted"], "group": ["total"]}, NOW)
    assert q.request is not None and q.request.resolution is None
    body = mailgun.render(q, [row(None, None, accepted_outgoing=6)], NOW)
    assert [] == validate(body, mg_schema.envelope(["accepted"]))
    assert [("Fri, 03 May 2024 00:00:00 UTC", 6)] == [
        (s["time"], s["accepted"]["total"]) for s in body["stats"]
    ]


@pytest.mark.parametrize(
    ("group", "n", "resolution"), [("time", 8, "day"), ("day", 8, "day"), ("month", 1, "month")]
)
def test_mailgun_filter_time_groups_are_series(group, n, resolution):
    """group=time follows resolution; day and month force theirs."""
    params = {"event": ["delivered"], "group": [group], "filter": ["tag:news"]}
    body = answer("mailgun.filter", params, MG_ROWS)
    assert [] == validate(body, mg_schema.envelope(["delivered"]))
    assert (n, resolution, "news") == (len(body["stats"]), body["resolution"], body["tag"])
    assert 7 == sum(s["delivered"]["total"] for s in body["stats"])


def test_mailgun_filter_by_country_answers_nothing():
    """Countries are not in MTA logs: group=country is empty, a country filter all zeros."""
    q = mailgun.parse_filter({"event": ["accepted"], "group": ["country"]}, NOW)
    assert None is q.request
    assert [] == mailgun.render(q, [], NOW)["stats"]
    body = answer("mailgun.filter", {"event": ["accepted"], "filter": ["country:us"]}, [])
    assert [] == validate(body, mg_schema.envelope(["accepted"]))
    assert {0} == {s["accepted"]["total"] for s in body["stats"]}


def test_mailgun_aggregates_providers_counts_accepted_and_delivered():
    """{"providers": {name: {accepted, delivered, and Mailgun's tracking counts at 0}}}."""
    q = mailgun.parse_providers({}, NOW, {"domain": "a.test"})
    assert (
        SeriesRequest(
            EPOCH,
            FAR_FUTURE,
            None,
            filters=((Dimension.SENDER_DOMAIN, "a.test"),),
            group=Dimension.PROVIDER,
        )
        == q.request
    )
    rows = [
        row(None, "gmail.com", accepted_outgoing=3, delivered=2),
        row(None, "yahoo.com", accepted_outgoing=1),
    ]
    body = mailgun.render(q, rows, NOW)
    assert [] == validate(body, mg_schema.PROVIDERS)
    assert {
        "accepted": 3,
        "clicked": 0,
        "complained": 0,
        "delivered": 2,
        "opened": 0,
        "unique_clicked": 0,
        "unique_opened": 0,
        "unsubscribed": 0,
    } == body["providers"]["gmail.com"]


@pytest.mark.parametrize(
    ("shape", "schema"),
    [("mailgun.devices", mg_schema.DEVICES), ("mailgun.countries", mg_schema.COUNTRIES)],
)
def test_mailgun_aggregates_devices_and_countries_are_empty(shape, schema):
    """Devices and countries come from opens and clicks, which MTA logs lack: empty maps."""
    q = SHAPES[shape].parse({}, NOW, {"domain": "a.test"})
    assert None is q.request
    body = SHAPES[shape].render(q, [], NOW)
    assert [] == validate(body, schema)
    assert [{}] == list(body.values())


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({}, "event"),
        ({"event": [""]}, "event"),
        ({"event": ["accepted", "bounced"]}, "event"),
        ({"event": "accepted", "start": "yesterday"}, "start"),
        ({"event": "accepted", "start": "Tue, 31 Feb 2012 00:00:00 UTC"}, "start"),
        ({"event": "accepted", "end": "2024-05-01"}, "end"),
        ({"event": "accepted", "start": "1715299200", "end": "1715126400"}, "start"),
        ({"event": "accepted", "resolution": "week"}, "resolution"),
        ({"event": "accepted", "duration": "7w"}, "duration"),
        ({"event": "accepted", "duration": "0d"}, "duration"),
        ({"event": "accepted", "duration": "d"}, "duration"),
        ({"event": "accepted", "duration": "999999999m"}, "duration"),
        ({"event": "accepted", "start": "0", "resolution": "hour"}, "resolution"),
        ({"event": "accepted", "start": "99999999999999"}, "start"),
    ],
)
def test_mailgun_bad_parameters_answer_400_naming_them(params, param):
    """Each documented constraint: 400, {"message": ...} naming the parameter."""
    err = api_error("mailgun.total", params)
    assert (400, param) == (err.status, err.param)
    assert [] == validate(err.body, mg_schema.ERROR)
    assert param in err.body["message"]


@pytest.mark.parametrize(
    ("shape", "params", "param"),
    [
        ("mailgun.filter", {"event": "accepted", "group": "week"}, "group"),
        ("mailgun.filter", {"event": "accepted", "filter": "domain"}, "filter"),
        ("mailgun.filter", {"event": "accepted", "filter": "colour:red"}, "filter"),
        ("mailgun.filter", {"event": "accepted", "filter": "tag:"}, "filter"),
        ("mailgun.domains", {"event": "accepted"}, "timestamp"),
        ("mailgun.domains", {"event": "accepted", "timestamp": "soon"}, "timestamp"),
        ("mailgun.domains", {"event": "accepted", "timestamp": "1", "limit": "0"}, "limit"),
        ("mailgun.domains", {"event": "accepted", "timestamp": "1", "skip": "-1"}, "skip"),
        ("mailgun.domains", {"timestamp": "1"}, "event"),
    ],
)
def test_mailgun_endpoint_parameters_answer_400(shape, params, param):
    """filter/group of /v3/stats/filter and timestamp/limit/skip of the domains total."""
    err = api_error(shape, params)
    assert (400, param) == (err.status, err.param)
    assert param in err.body["message"]


def test_mailgun_missing_path_domain_is_404():
    """A domain endpoint without a domain: 404 in Mailgun's envelope."""
    err = api_error("mailgun.domain_total", {"event": "accepted"}, {})
    assert (404, "domain") == (err.status, err.param)
    assert [] == validate(err.body, mg_schema.ERROR)


def test_mailgun_scoped_restricts_accounts():
    """The caller narrows a query to the authenticated accounts."""
    q = mailgun.parse_total({"event": "accepted"}, NOW).scoped(["alice"])
    assert q.request is not None
    assert ("alice",) == q.request.accounts


# -- SendGrid --------------------------------------------------------------------------------

SG = {"method": "stats", "user": "alice"}
SG_ROWS = [
    row(D(9), accepted_outgoing=4, accepted_incoming=1, delivered=3, failed_permanent=2),
    row(D(10), accepted_outgoing=2),
]


def test_sendgrid_days_lists_every_day_including_today():
    """days=3: today and the two days before, empty days zero; requests = accepted,
    bounces = permanent failures."""
    body = answer("sendgrid.json", SG | {"days": "3"}, SG_ROWS)
    assert [] == validate(body, sg_schema.DAYS)
    assert [
        {
            "date": "2024-05-08",
            "requests": 0,
            "bounces": 0,
            "clicks": 0,
            "opens": 0,
            "spamreports": 0,
        },
        {
            "date": "2024-05-09",
            "requests": 5,
            "bounces": 2,
            "clicks": 0,
            "opens": 0,
            "spamreports": 0,
        },
        {
            "date": "2024-05-10",
            "requests": 2,
            "bounces": 0,
            "clicks": 0,
            "opens": 0,
            "spamreports": 0,
        },
    ] == body
    json.dumps(body)


def test_sendgrid_request_is_the_users_whole_days():
    """user is the account; the window is whole UTC days, end exclusive."""
    q = sendgrid.parse_json(SG | {"start_date": "2024-05-01", "end_date": "2024-05-03"}, NOW)
    assert SeriesRequest(D(1), D(4), Resolution.DAY, ("alice",)) == q.request
    assert 3 == len(sendgrid.render(q, [], NOW))


def test_sendgrid_no_window_is_today():
    """Neither days nor dates: today only."""
    assert ["2024-05-10"] == [d["date"] for d in answer("sendgrid.json", SG, SG_ROWS)]


def test_sendgrid_xml_days_is_well_formed_with_the_documents_elements():
    """<stats><day><date/><requests/>...</day></stats>."""
    body = answer("sendgrid.xml", SG | {"days": "2"}, SG_ROWS)
    assert [] == validate_xml(body, sg_schema.DAYS_XML)
    assert ["5", "2"] == [e.text for e in ET.fromstring(body).iter("requests")]
    assert body.startswith("<stats><day><date>2024-05-09</date><requests>5</requests>")


def test_sendgrid_aggregate_is_all_time_totals():
    """aggregate=1: one object (or <stats>) of totals over all time."""
    q = sendgrid.parse_json(SG | {"aggregate": "1"}, NOW)
    assert SeriesRequest(EPOCH, FAR_FUTURE, None, ("alice",)) == q.request
    body = sendgrid.render(q, [row(None, accepted_outgoing=9, failed_permanent=1)], NOW)
    assert [] == validate(body, sg_schema.AGGREGATE)
    assert {"requests": 9, "bounces": 1, "clicks": 0, "opens": 0, "spamreports": 0} == body
    xml = answer("sendgrid.xml", SG | {"aggregate": "1"}, [row(None, accepted_outgoing=9)])
    assert [] == validate_xml(xml, sg_schema.AGGREGATE_XML)
    assert (
        "<stats><requests>9</requests><bounces>0</bounces><clicks>0</clicks><opens>0</opens>"
        "<spamreports>0</spamreports></stats>"
    ) == xml


def test_sendgrid_list_names_the_categories_used():
    """list=true: [{"category": NAME}] / <categories>, sorted, only categories with activity."""
    q = sendgrid.parse_json(SG | {"list": "true"}, NOW)
    assert Dimension.TAG == q.request.group
    rows = [
        row(None, "b", accepted_outgoing=1),
        row(None, "a&<", delivered=1),
        row(None, None, accepted_outgoing=5),
        row(None, "idle"),
    ]
    body = sendgrid.render(q, rows, NOW)
    assert [] == validate(body, sg_schema.LIST)
    assert [{"category": "a&<"}, {"category": "b"}] == body
    xml = answer("sendgrid.xml", SG | {"list": "true"}, rows)
    assert [] == validate_xml(xml, sg_schema.LIST_XML)
    assert ["a&<", "b"] == [e.text for e in ET.fromstring(xml)]


def test_sendgrid_category_stats_per_day_per_existing_category():
    """category (repeated, or category[]): per-day rows for each asked category that has
    statistics; an unknown category gives nothing."""
    params = SG | {
        "start_date": "2024-05-08",
        "end_date": "2024-05-09",
        "category": ["news"],
        "category[]": ["nope", "alerts"],
    }
    rows = [
        row(D(8), "news", accepted_outgoing=2),
        row(D(9), "alerts", failed_permanent=1),
        row(D(9), "other", accepted_outgoing=7),
    ]
    body = answer("sendgrid.json", params, rows)
    assert [] == validate(body, sg_schema.CATEGORY)
    assert [
        ("2024-05-08", "news", 2, 0),
        ("2024-05-08", "alerts", 0, 0),
        ("2024-05-09", "news", 0, 0),
        ("2024-05-09", "alerts", 0, 1),
    ] == [(d["date"], d["category"], d["requests"], d["bounces"]) for d in body]
    assert ["date", "category", *sg_schema.FIELDS] == list(body[0])
    xml = answer("sendgrid.xml", params, rows)
    assert [] == validate_xml(xml, sg_schema.CATEGORY_XML)
    assert [] == answer("sendgrid.json", SG | {"category": "nope"}, rows)


def test_sendgrid_xml_escapes_and_cleans_category_names():
    """Names with markup or control characters still give well-formed XML."""
    rows = [row(None, "x\x01</category>", accepted_outgoing=1)]
    xml = answer("sendgrid.xml", SG | {"list": "true"}, rows)
    assert [] == validate_xml(xml, sg_schema.LIST_XML)


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"user": "alice"}, "method"),
        ({"method": "bounces", "user": "alice"}, "method"),
        ({"method": "stats"}, "user"),
        (SG | {"days": "0"}, "days"),
        (SG | {"days": "-2"}, "days"),
        (SG | {"days": "two"}, "days"),
        (SG | {"days": "2", "start_date": "2024-05-01"}, "days"),
        (SG | {"start_date": "2024-5-1", "end_date": "2024-05-03"}, "start_date"),
        (SG | {"start_date": "2024-05-01", "end_date": "2024-02-30"}, "end_date"),
        (SG | {"start_date": "2024-05-03", "end_date": "2024-05-01"}, "start_date"),
        (SG | {"end_date": "2024-05-01"}, "start_date"),
        (SG | {"aggregate": "yes"}, "aggregate"),
        (SG | {"list": "maybe"}, "list"),
        (SG | {"list": "true", "aggregate": "1"}, "list"),
        (SG | {"aggregate": "1", "category": "a"}, "aggregate"),
        (SG | {"category": ""}, "category"),
    ],
)
def test_sendgrid_bad_parameters_answer_the_v2_error_envelope(params, param):
    """Each documented constraint: 400 with {"message": "error", "errors": [...]} naming the
    parameter, and the same in XML."""
    err = api_error("sendgrid.json", params)
    assert (400, param, "application/json") == (err.status, err.param, err.content_type)
    assert [] == validate(err.body, sg_schema.ERROR)
    assert param in err.body["errors"][0]
    err = api_error("sendgrid.xml", params)
    assert (400, param, "application/xml") == (err.status, err.param, err.content_type)
    assert [] == validate_xml(err.body, sg_schema.ERROR_XML)


def test_sendgrid_same_start_and_end_date_is_one_day():
    """start_date = end_date is a one-day window, not an error."""
    body = answer(
        "sendgrid.json", SG | {"start_date": "2024-05-09", "end_date": "2024-05-09"}, SG_ROWS
    )
    assert ["2024-05-09"] == [d["date"] for d in body]


# -- SMTPeter --------------------------------------------------------------------------------


def test_smtpeter_all_time_totals_for_the_tag():
    """{"first", "last", "opens", "clicks", "messages", "deliveries"} over all time."""
    q = smtpeter.parse({}, NOW, {"tag": "abc"})
    assert SeriesRequest(EPOCH, FAR_FUTURE, None, filters=((Dimension.TAG, "abc"),)) == q.request
    rows = [
        row(
            None,
            None,
            accepted_outgoing=10,
            accepted_incoming=5,
            delivered=15,
            first=datetime(2016, 1, 1, 12, tzinfo=UTC),
            last=datetime(2016, 1, 1, 15, tzinfo=UTC),
        ),
        row(None, None, failed_temporary=1, last=datetime(2016, 1, 1, 16, tzinfo=UTC)),
    ]
    body = smtpeter.render(q, rows, NOW)
    assert [] == validate(body, sp_schema.STATS)
    assert {
        "first": "2016-01-01 12:00:00",
        "last": "2016-01-01 16:00:00",
        "opens": 0,
        "clicks": 0,
        "messages": 15,
        "deliveries": 15,
    } == body


def test_smtpeter_unknown_tag_is_a_404_error_object():
    """A tag without any activity is unknown: 404 {"error": ...}, not nulls."""
    q = smtpeter.parse({"access_token": "t"}, NOW, {"tag": "nope"})
    with pytest.raises(ApiError) as info:
        smtpeter.render(q, [], NOW)
    assert (404, "tag") == (info.value.status, info.value.param)
    assert [] == validate(info.value.body, sp_schema.ERROR)


def test_smtpeter_missing_tag_is_400():
    """/v1/stats/ without a tag names the tag."""
    err = api_error("smtpeter", {}, {})
    assert (400, "tag") == (err.status, err.param)
    assert [] == validate(err.body, sp_schema.ERROR)


# -- every shape -----------------------------------------------------------------------------


def test_registry_names_every_shape_with_routes():
    """SHAPES holds a (parse, render) pair, routes and content type for each endpoint."""
    assert {
        "mailgun.events",
        "mailgun.total",
        "mailgun.domain_total",
        "mailgun.domains",
        "mailgun.filter",
        "mailgun.providers",
        "mailgun.devices",
        "mailgun.countries",
        "mailgun.tag_stats",
        "sendgrid.json",
        "sendgrid.xml",
        "smtpeter",
    } == set(SHAPES)
    assert all(s.routes and callable(s.parse) and callable(s.render) for s in SHAPES.values())


_NAMES = [
    "event",
    "start",
    "end",
    "resolution",
    "duration",
    "filter",
    "group",
    "timestamp",
    "limit",
    "skip",
    "method",
    "user",
    "days",
    "start_date",
    "end_date",
    "aggregate",
    "list",
    "category",
    "category[]",
    "access_token",
]
_VALUES = st.one_of(
    st.sampled_from(
        [
            *mailgun.EVENTS,
            *mailgun.GROUPS,
            "hour",
            "day",
            "month",
            "stats",
            "1",
            "true",
            "0",
            "",
            "7d",
            "3h",
            "2m",
            "24h",
            "0d",
            "-1",
            "alice",
            "domain:a.test",
            "tag:x",
            "country:us",
            "ip:",
            "1715126400",
            "0",
            "Tue, 14 Feb 2012 00:00:00 UTC",
            "Fri, 01 Apr 2012 00:00:00 +0000",
            "2024-05-01",
            "2024-02-30",
            "9999-12-31",
            "0001-01-01",
            "Mon, 31 Dec 9999 23:59:59 GMT",
            "99999999999",
            "1e9",
        ]
    ),
    st.text(max_size=30),
    st.integers(-(10**12), 10**12).map(str),
)
_PARAMS = st.dictionaries(
    st.one_of(st.sampled_from(_NAMES), st.text(max_size=8)),
    st.one_of(_VALUES, st.lists(_VALUES, max_size=3)),
    max_size=8,
)
_PATH = st.fixed_dictionaries(
    {}, optional={"domain": st.text(max_size=12), "tag": st.text(max_size=12)}
)
_SCHEMAS: dict[str, Any] = {
    "mailgun.providers": mg_schema.PROVIDERS,
    "mailgun.devices": mg_schema.DEVICES,
    "mailgun.countries": mg_schema.COUNTRIES,
    "mailgun.events": ev_schema.ENVELOPE,
}


@settings(max_examples=300, deadline=None)
@given(
    shape=st.sampled_from(sorted(SHAPES)),
    params=_PARAMS,
    path=_PATH,
    now=st.datetimes(datetime(1971, 1, 1), datetime(2100, 1, 1), timezones=st.just(UTC)),
)
def test_parse_raises_only_the_apis_own_error(shape, params, path, now):
    """Random parameters: a query or the API's error, never another exception; a query
    renders (over no rows) to a valid answer."""
    s = SHAPES[shape]
    try:
        q = s.parse(params, now, path)
    except ApiError as err:
        assert 400 <= err.status < 500
        assert err.param
        return
    try:
        # the events answer's third argument is the request's base URL, not the time
        body = s.render(q, [], "http://localhost" if shape == "mailgun.events" else now)
    except ApiError as err:
        assert ("smtpeter", 404) == (shape, err.status)
        return
    if shape.startswith("sendgrid"):
        kind = q.kind.name
        schema = getattr(sg_schema, kind if shape.endswith("json") else f"{kind}_XML")
        problems = validate(body, schema) if shape.endswith("json") else validate_xml(body, schema)
    elif shape in _SCHEMAS:
        problems = validate(body, _SCHEMAS[shape])
    else:
        key = q.group if q.group in mailgun.KEY_GROUPS else None
        problems = validate(
            body,
            mg_schema.envelope(list(q.events), "domain" if shape == "mailgun.domains" else key),
        )
        assert q.buckets[0] <= q.end
    assert [] == problems


@settings(max_examples=100, deadline=None)
@given(day=st.dates(date(1971, 1, 1), date(2100, 1, 1)), days=st.integers(1, 400))
def test_sendgrid_days_window_always_ends_today(day, days):
    """days=N lists N days, the last one today."""
    now = datetime.combine(day, datetime.min.time(), UTC) + timedelta(hours=23)
    body = sendgrid.render(sendgrid.parse_json(SG | {"days": str(days)}, now), [], now)
    assert (days, day.isoformat()) == (len(body), body[-1]["date"])
