"""Mailgun stats API (v3, the deprecated ``/stats`` family), from ``mailgun-stats.md``.

Endpoints: ``/v3/stats/total``, ``/v3/{domain}/stats/total``, ``/v3/stats/total/domains``,
``/v3/stats/filter``, ``/v3/{domain}/aggregates/providers|devices|countries`` and the tag
statistics both Mailgun SDKs call (``client.tags_stats`` in ``mailgun``, ``domainTags.
statistic`` in ``mailgun.js``): ``/v3/{domain}/tags/{tag}/stats``, the domain's series
for one tag with ``tag`` and ``description`` in the envelope.

Windows.  Mailgun counts in UTC hour/day/month buckets (calendar-aligned: an hour, a day
from 00:00, a month from the 1st).  The answer lists every bucket from the one holding
``start`` to the one holding ``end`` (both included), empty ones with zeros, each with its
whole count; the ``SeriesRequest`` spans exactly those buckets.  ``start`` in the envelope
is the first bucket, ``end`` the end asked for.  Defaults as documented: ``end`` now,
``start`` 7 days before ``end``, ``resolution`` day.  ``duration`` (``[0-9]+[hdm]``, h
hours, d days, m months) "is calculated from the 'end' date and overwrites the 'start'
date": start = end minus that period exactly (``1m`` on 2 Dec 10:00 starts on 2 Nov 10:00,
so November's bucket is listed too).  A duration has its "resolution encoded" (Mailgun's
Duration: "24h - a period of 24 hours with hourly resolution", "2m - ... with monthly
resolution"): without ``resolution`` the answer uses the duration's unit.

Counts from MTA logs (what Mailgun counts is what it accepted for delivery):
accepted.outgoing / incoming = messages accepted from accounts / from outside
(``-remote-``); a recipient refused at RCPT time was never accepted and is in no Mailgun
event; delivered.smtp = deliveries (http 0); failed.temporary.total = deferrals (espblock
0); failed.permanent.bounce = accepted recipients that failed permanently or expired (the
``suppress-*`` reasons are Mailgun's own suppression lists, and ``delayed-bounce`` (a DSN
after acceptance) cannot be told apart in the logs, so both stay 0).  Messages the MTA
generated itself (bounces, account ``-system-``) are no Mailgun event: not accepted, not
delivered, and no domain in ``/v3/stats/total/domains`` (which lists no domain ``""``
either: mail from the null sender has no sending domain).  opened, clicked, unsubscribed,
complained and stored are tracked by Mailgun itself, not by an MTA: 0.  In
``aggregates/providers`` (providers are recipient domains and MX hosts) ``delivered`` counts
recipients; ``accepted`` is 0 there: a message is accepted before any of its recipients'
providers is known, and a refused RCPT was never accepted.
"""

from __future__ import annotations

import calendar
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, ClassVar

from logstats.model import Dimension, Resolution, SeriesRequest, SeriesRow
from logstats.shapes import (
    EPOCH,
    FAR_FUTURE,
    JSON,
    ApiError,
    Params,
    add_rows,
    has_activity,
    path_value,
    value,
    values,
)

EVENTS = (
    "accepted",
    "delivered",
    "failed",
    "opened",
    "clicked",
    "unsubscribed",
    "complained",
    "stored",
)
GROUPS = ("total", "time", "day", "month", "domain", "ip", "provider", "tag", "country")
KEY_GROUPS = {
    "domain": Dimension.SENDER_DOMAIN,
    "ip": Dimension.IP,
    "provider": Dimension.PROVIDER,
    "tag": Dimension.TAG,
}
FILTER_KEYS = (*KEY_GROUPS, "country")
NO_DATA = "country"  # a Mailgun dimension an MTA log does not carry: accepted, answers nothing
PROVIDER_COUNTS = (
    "accepted",
    "clicked",
    "complained",
    "delivered",
    "opened",
    "unique_clicked",
    "unique_opened",
    "unsubscribed",
)
MAX_BUCKETS = 20_000  # a logstats limit: hourly over ~2 years, daily over ~54 years
MAX_DURATION = 1_000_000
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
UNKNOWN_KEY = "unknown"  # a provider, IP or domain the logs do not name

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_EPOCH_RE = re.compile(r"\d{1,12}(?:\.\d{1,9})?")
_DURATION_RE = re.compile(r"(\d{1,9})([hdm])")
_UNIT_RESOLUTION = {"h": Resolution.HOUR, "d": Resolution.DAY, "m": Resolution.MONTH}


class Endpoint(StrEnum):
    TOTAL = "total"  # /v3/stats/total
    DOMAIN_TOTAL = "domain_total"  # /v3/{domain}/stats/total
    DOMAINS = "domains"  # /v3/stats/total/domains
    FILTER = "filter"  # /v3/stats/filter
    PROVIDERS = "providers"  # /v3/{domain}/aggregates/providers
    DEVICES = "devices"  # /v3/{domain}/aggregates/devices
    COUNTRIES = "countries"  # /v3/{domain}/aggregates/countries
    TAG_STATS = "tag_stats"  # /v3/{domain}/tags/{tag}/stats


DESCRIPTIONS = {
    Endpoint.TOTAL: "Totals for entire account",
    Endpoint.DOMAIN_TOTAL: "Totals for entire domain",
    Endpoint.DOMAINS: "Totals for account domains for a single time resolution",
    Endpoint.FILTER: "Filtered/grouped totals for entire account",
    Endpoint.TAG_STATS: "",  # a tag's own description: MTA logs carry none
}


@dataclass(frozen=True, slots=True)
class MailgunQuery:
    """A validated Mailgun stats call: what to fetch (``request``) and how to answer."""

    endpoint: Endpoint
    request: SeriesRequest | None  # None: the answer needs no rows
    events: tuple[str, ...] = ()
    resolution: Resolution = Resolution.DAY
    buckets: tuple[datetime, ...] = ()  # every bucket the answer lists, in order
    end: datetime = EPOCH  # the end asked for (the envelope's "end")
    group: str | None = None  # /v3/stats/filter's group
    tag: str | None = None  # a tag filter, echoed as the envelope's "tag"
    domain: str | None = None  # the path's domain
    limit: int = DEFAULT_LIMIT
    skip: int = 0
    content_type: ClassVar[str] = JSON

    def scoped(self, accounts: Iterable[str]) -> MailgunQuery:
        """The same call restricted to ``accounts`` (the authenticated caller's)."""
        if self.request is None:
            return self
        return replace(self, request=replace(self.request, accounts=tuple(accounts)))


def error(param: str, message: str, status: int = 400) -> ApiError:
    """Mailgun's error envelope: ``{"message": ...}``."""
    return ApiError(status, {"message": message}, param=param)


# -- time ------------------------------------------------------------------------------------


def rfc2822(t: datetime) -> str:
    """``Tue, 14 Feb 2012 00:00:00 UTC`` (locale-independent)."""
    t = _utc(t)
    return (
        f"{_DAYS[t.weekday()]}, {t.day:02d} {_MONTHS[t.month - 1]} {t.year:04d} "
        f"{t.hour:02d}:{t.minute:02d}:{t.second:02d} UTC"
    )


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def parse_time(name: str, text: str) -> datetime:
    """An RFC 2822 date (``UTC``, ``GMT``, ``+0000``...) or a Unix epoch, as UTC."""
    text = text.strip()
    try:
        if _EPOCH_RE.fullmatch(text):
            ts = datetime.fromtimestamp(float(text), UTC)
        else:
            ts = _utc(parsedate_to_datetime(text))
    except (TypeError, ValueError, OverflowError, OSError, IndexError) as exc:
        raise error(name, f"{name}: {text!r} is not an RFC 2822 date or a Unix epoch") from exc
    if not 1 < ts.year < 9000:
        raise error(name, f"{name}: {text!r} is out of range")
    return ts.replace(microsecond=0)


def floor(t: datetime, resolution: Resolution) -> datetime:
    t = _utc(t).replace(minute=0, second=0, microsecond=0)
    if resolution is Resolution.HOUR:
        return t
    t = t.replace(hour=0)
    return t if resolution is Resolution.DAY else t.replace(day=1)


def following(t: datetime, resolution: Resolution) -> datetime:
    """The start of the bucket after the one starting at ``t``."""
    if resolution is Resolution.HOUR:
        return t + timedelta(hours=1)
    if resolution is Resolution.DAY:
        return t + timedelta(days=1)
    return t.replace(year=t.year + 1, month=1) if t.month == 12 else t.replace(month=t.month + 1)


def _count(first: datetime, last: datetime, resolution: Resolution) -> int:
    if resolution is Resolution.MONTH:
        return (last.year - first.year) * 12 + last.month - first.month + 1
    step = 3600 if resolution is Resolution.HOUR else 86400
    return int((last - first).total_seconds()) // step + 1


def _months_before(t: datetime, months: int) -> datetime:
    index = t.year * 12 + t.month - 1 - months
    year, month = divmod(index, 12)
    if year < 2:
        raise ValueError("before year 2")
    day = min(t.day, calendar.monthrange(year, month + 1)[1])
    return t.replace(year=year, month=month + 1, day=day)


def _resolution(params: Params) -> Resolution | None:
    given = (value(params, "resolution") or "").strip()
    if not given:
        return None
    try:
        return Resolution(given.lower())
    except ValueError:
        raise error("resolution", f"resolution: {given!r} is not one of hour, day, month") from None


@dataclass(frozen=True, slots=True)
class _Window:
    buckets: tuple[datetime, ...]
    end: datetime
    resolution: Resolution

    @property
    def start(self) -> datetime:
        return self.buckets[0]

    @property
    def stop(self) -> datetime:
        """The exclusive end of the last bucket."""
        return following(self.buckets[-1], self.resolution)


def _buckets(start: datetime, end: datetime, resolution: Resolution) -> tuple[datetime, ...]:
    first, last = floor(start, resolution), floor(end, resolution)
    n = _count(first, last, resolution)
    if n > MAX_BUCKETS:
        raise error(
            "resolution",
            f"resolution: the window holds {n} {resolution} buckets; at most {MAX_BUCKETS} "
            "are answered (use a coarser resolution or a shorter window)",
        )
    out = [first]
    for _ in range(n - 1):
        out.append(following(out[-1], resolution))
    return tuple(out)


def _window(params: Params, now: datetime, forced: Resolution | None = None) -> _Window:
    """start/end/duration/resolution as Mailgun reads them."""
    resolution = forced or _resolution(params)
    end_text = (value(params, "end") or "").strip()
    end = parse_time("end", end_text) if end_text else _utc(now).replace(microsecond=0)
    duration = (value(params, "duration") or "").strip()
    if duration:
        m = _DURATION_RE.fullmatch(duration)
        if m is None or not 0 < int(m.group(1)) <= MAX_DURATION:
            raise error(
                "duration",
                f"duration: {duration!r} is not a period like 24h, 7d or 2m (h hours, d days, "
                "m months)",
            )
        n, unit = int(m.group(1)), m.group(2)
        if resolution is None:
            resolution = _UNIT_RESOLUTION[unit]
        # the period counts back from end exactly, whatever the resolution
        try:
            if unit == "m":
                start = _months_before(end, n)
            else:
                start = end - (timedelta(hours=n) if unit == "h" else timedelta(days=n))
        except (OverflowError, ValueError):
            raise error("duration", f"duration: {duration!r} reaches before year 2") from None
    else:
        start_text = (value(params, "start") or "").strip()
        if start_text:
            start = parse_time("start", start_text)
        else:
            start = end - timedelta(days=7)
    if resolution is None:
        resolution = Resolution.DAY
    if start > end:
        raise error("start", f"start: {rfc2822(start)} is after end {rfc2822(end)}")
    if start.year < 2:
        raise error("start", "start: out of range")
    return _Window(_buckets(start, end, resolution), end, resolution)


# -- parameters ------------------------------------------------------------------------------


def _events(params: Params) -> tuple[str, ...]:
    given = [e.strip() for e in values(params, "event") if e.strip()]
    if not given:
        raise error("event", f"event: missing; one or more of {', '.join(EVENTS)}")
    for e in given:
        if e not in EVENTS:
            raise error("event", f"event: {e!r} is not one of {', '.join(EVENTS)}")
    return tuple(e for e in EVENTS if e in given)


def _domain(path: Mapping[str, str] | None) -> str:
    domain = path_value(path, "domain")
    if not domain:
        raise error("domain", "domain: missing from the path", status=404)
    return domain.lower()


def _int(params: Params, name: str, default: int, low: int, high: int) -> int:
    text = (value(params, name) or "").strip()
    if not text:
        return default
    if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
        raise error(name, f"{name}: {text!r} is not a whole number from {low} to {high}")
    return int(text)


def parse_total(
    params: Params, now: datetime, path: Mapping[str, str] | None = None
) -> MailgunQuery:
    """``GET /v3/stats/total``: every bucket of the window for the whole account."""
    events = _events(params)
    w = _window(params, now)
    request = SeriesRequest(w.start, w.stop, w.resolution)
    return MailgunQuery(Endpoint.TOTAL, request, events, w.resolution, w.buckets, w.end)


def parse_domain_total(
    params: Params, now: datetime, path: Mapping[str, str] | None = None
) -> MailgunQuery:
    """``GET /v3/{domain}/stats/total``: as the account total, for one sending domain."""
    domain = _domain(path)
    events = _events(params)
    w = _window(params, now)
    request = SeriesRequest(
        w.start, w.stop, w.resolution, filters=((Dimension.SENDER_DOMAIN, domain),)
    )
    return MailgunQuery(
        Endpoint.DOMAIN_TOTAL, request, events, w.resolution, w.buckets, w.end, domain=domain
    )


def parse_domains(
    params: Params, now: datetime, path: Mapping[str, str] | None = None
) -> MailgunQuery:
    """``GET /v3/stats/total/domains``: one bucket (the one holding ``timestamp``), per
    domain, sorted by name, paged by ``skip`` and ``limit``."""
    events = _events(params)
    resolution = _resolution(params) or Resolution.DAY
    text = (value(params, "timestamp") or "").strip()
    if not text:
        raise error("timestamp", "timestamp: missing; an RFC 2822 date or a Unix epoch")
    bucket = floor(parse_time("timestamp", text), resolution)
    limit = _int(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    skip = _int(params, "skip", 0, 0, 10**9)
    request = SeriesRequest(
        bucket, following(bucket, resolution), None, group=Dimension.SENDER_DOMAIN
    )
    end = following(bucket, resolution)
    return MailgunQuery(
        Endpoint.DOMAINS, request, events, resolution, (bucket,), end, limit=limit, skip=skip
    )


def parse_filter(
    params: Params, now: datetime, path: Mapping[str, str] | None = None
) -> MailgunQuery:
    """``GET /v3/stats/filter``: ``filter=key:value`` (domain, ip, provider, tag, country)
    and ``group`` (default ``time``)."""
    events = _events(params)
    group = (value(params, "group") or "").strip().lower() or "time"
    if group not in GROUPS:
        raise error("group", f"group: {group!r} is not one of {', '.join(GROUPS)}")
    filters: list[tuple[Dimension, str]] = []
    tag = None
    no_data = group == NO_DATA
    for f in values(params, "filter"):
        key, sep, val = f.partition(":")
        key, val = key.strip().lower(), val.strip()
        if not sep or not val or key not in FILTER_KEYS:
            raise error(
                "filter",
                f"filter: {f!r} is not key:value with key one of {', '.join(FILTER_KEYS)}",
            )
        if key == NO_DATA:
            no_data = True
            continue
        if key == "tag":
            tag = val
        filters.append((KEY_GROUPS[key], val.lower() if key == "domain" else val))
    forced = {"day": Resolution.DAY, "month": Resolution.MONTH}.get(group)
    w = _window(params, now, forced)
    request: SeriesRequest | None
    if no_data:
        request = None
    elif group in KEY_GROUPS:
        request = SeriesRequest(
            w.start, w.stop, None, filters=tuple(filters), group=KEY_GROUPS[group]
        )
    else:
        resolution = None if group == "total" else w.resolution
        request = SeriesRequest(w.start, w.stop, resolution, filters=tuple(filters))
    return MailgunQuery(
        Endpoint.FILTER, request, events, w.resolution, w.buckets, w.end, group=group, tag=tag
    )


def parse_tag_stats(
    params: Params, now: datetime, path: Mapping[str, str] | None = None
) -> MailgunQuery:
    """``GET /v3/{domain}/tags/{tag}/stats``: as the domain total, for one tag."""
    domain = _domain(path)
    tag = path_value(path, "tag")
    if not tag:
        raise error("tag", "tag: missing from the path", status=404)
    events = _events(params)
    w = _window(params, now)
    filters = ((Dimension.SENDER_DOMAIN, domain), (Dimension.TAG, tag))
    request = SeriesRequest(w.start, w.stop, w.resolution, filters=filters)
    return MailgunQuery(
        Endpoint.TAG_STATS, request, events, w.resolution, w.buckets, w.end, tag=tag, domain=domain
    )


def parse_providers(
    params: Params, now: datetime, path: Mapping[str, str] | None = None
) -> MailgunQuery:
    """``GET /v3/{domain}/aggregates/providers``: all-time counts per recipient provider."""
    domain = _domain(path)
    request = SeriesRequest(
        EPOCH,
        FAR_FUTURE,
        None,
        filters=((Dimension.SENDER_DOMAIN, domain),),
        group=Dimension.PROVIDER,
    )
    return MailgunQuery(Endpoint.PROVIDERS, request, domain=domain)


def parse_devices(
    params: Params, now: datetime, path: Mapping[str, str] | None = None
) -> MailgunQuery:
    """``GET /v3/{domain}/aggregates/devices``: devices open and click; MTA logs know none."""
    return MailgunQuery(Endpoint.DEVICES, None, domain=_domain(path))


def parse_countries(
    params: Params, now: datetime, path: Mapping[str, str] | None = None
) -> MailgunQuery:
    """``GET /v3/{domain}/aggregates/countries``: countries of opens and clicks: none."""
    return MailgunQuery(Endpoint.COUNTRIES, None, domain=_domain(path))


# -- answers ---------------------------------------------------------------------------------


def event_stats(event: str, r: SeriesRow) -> dict[str, Any]:
    """One event's block of a ``stats`` item."""
    if event == "accepted":
        return {
            "incoming": r.accepted_incoming,
            "outgoing": r.accepted_outgoing,
            "total": r.accepted,
        }
    if event == "delivered":
        return {"smtp": r.delivered, "http": 0, "total": r.delivered}
    if event == "failed":
        return {
            "temporary": {"espblock": 0, "total": r.failed_temporary},
            "permanent": {
                "suppress-bounce": 0,
                "suppress-unsubscribe": 0,
                "suppress-complaint": 0,
                "bounce": r.failed_permanent,
                "delayed-bounce": 0,
                "total": r.failed_permanent,
            },
        }
    return {"total": 0}


def stats_item(
    query: MailgunQuery, time: datetime, r: SeriesRow, key: tuple[str, str] | None = None
) -> dict[str, Any]:
    item: dict[str, Any] = {"time": rfc2822(time)}
    if key is not None:
        item[key[0]] = key[1]
    for event in query.events:
        item[event] = event_stats(event, r)
    return item


def _by_key(rows: Iterable[SeriesRow]) -> dict[str, list[SeriesRow]]:
    grouped: dict[str, list[SeriesRow]] = defaultdict(list)
    for r in rows:
        grouped[UNKNOWN_KEY if r.key is None else r.key].append(r)
    return grouped


def _series(query: MailgunQuery, rows: Iterable[SeriesRow]) -> list[dict[str, Any]]:
    by_bucket: dict[datetime, list[SeriesRow]] = defaultdict(list)
    for r in rows:
        if r.bucket is not None:
            by_bucket[floor(r.bucket, query.resolution)].append(r)
    return [stats_item(query, b, add_rows(by_bucket.get(b, ()))) for b in query.buckets]


def _stats(query: MailgunQuery, rows: list[SeriesRow]) -> list[dict[str, Any]]:
    start = query.buckets[0]
    if query.endpoint is Endpoint.DOMAINS:
        # a domain of the account: named, with something Mailgun counts (a domain whose
        # only rows are RCPT rejects has none)
        named = (r for r in rows if r.key and has_activity(r))
        grouped = sorted(_by_key(named).items())[query.skip : query.skip + query.limit]
        return [stats_item(query, start, add_rows(rs), ("domain", k)) for k, rs in grouped]
    if query.group == NO_DATA:
        return []
    if query.group == "total":
        return [stats_item(query, start, add_rows(rows))]
    if query.group in KEY_GROUPS:
        # no "" tag (untagged mail) nor "" domain (the null sender), and no value whose
        # rows hold nothing Mailgun counts (only RCPT rejects, or a hop taken back)
        keyed = query.group in ("tag", "domain")
        named = (r for r in rows if has_activity(r) and (r.key or not keyed))
        grouped = sorted(_by_key(named).items())
        return [stats_item(query, start, add_rows(rs), (query.group, k)) for k, rs in grouped]
    return _series(query, rows)


def render(query: MailgunQuery, rows: list[SeriesRow], now: datetime) -> dict[str, Any]:
    """The answer body for ``query`` over the store's ``rows``."""
    if query.endpoint is Endpoint.PROVIDERS:
        providers = {}
        for key, rs in sorted(_by_key(rows).items()):
            total = add_rows(rs)
            counts = dict.fromkeys(PROVIDER_COUNTS, 0)
            counts["accepted"] = total.accepted
            counts["delivered"] = total.delivered
            providers[key] = counts
        return {"providers": providers}
    if query.endpoint is Endpoint.DEVICES:
        return {"devices": {}}
    if query.endpoint is Endpoint.COUNTRIES:
        return {"countries": {}}
    body: dict[str, Any] = {
        "description": DESCRIPTIONS[query.endpoint],
        "start": rfc2822(query.buckets[0]),
        "end": rfc2822(query.end),
        "resolution": str(query.resolution),
        "stats": _stats(query, rows),
    }
    if query.tag is not None:
        body["tag"] = query.tag
    return body
