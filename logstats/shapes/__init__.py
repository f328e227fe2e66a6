"""Answer shapes of public mail-statistics APIs: pure parse and render functions.

Each API module gives two pure functions per endpoint (no IO, no clock: ``now`` is an
argument):

``parse(params, now, path=None) -> Query``
    validates the API's own query parameters (``params``: ``parse_qs`` output or a plain
    ``{name: value}`` mapping; ``path``: the route's path parameters, e.g. ``{"domain": ...}``)
    and builds the query, whose ``request`` (a ``SeriesRequest``, or None when the answer
    needs no rows) the caller passes to ``Store.series``.  A parameter the API refuses raises
    ``ApiError`` carrying the HTTP status, the API's own error body and the parameter's name.

``render(query, rows, now) -> body``
    the answer in the API's envelope: a JSON-ready value, or ``str`` for XML (see
    ``query.content_type``).  Only SMTPeter's render can raise ``ApiError`` (an unknown tag).

The parse functions leave ``SeriesRequest.accounts`` as the API's own parameters set it
(SendGrid's ``user``); the caller restricts it further after authentication with
``query.scoped(accounts)``.

``SHAPES`` maps a shape name to its ``Shape`` (parse, render, routes, content type).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, NamedTuple

from logstats.model import SeriesRow

Params = Mapping[str, Sequence[str]] | Mapping[str, str]

JSON = "application/json"
XML = "application/xml"

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)  # end of an all-time window (exclusive)


class ApiError(Exception):
    """A request the API refuses: HTTP ``status``, the API's own error ``body`` (a JSON-ready
    value, or ``str`` for XML), its ``content_type``, and the offending ``param``."""

    def __init__(
        self, status: int, body: Any, *, param: str | None = None, content_type: str = JSON
    ) -> None:
        super().__init__(f"{status} {param or ''}: {body!r}")
        self.status = status
        self.body = body
        self.param = param
        self.content_type = content_type


def values(params: Params, name: str) -> list[str]:
    """Every value given for ``name`` (``parse_qs`` lists or a single string)."""
    value = params.get(name)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def value(params: Params, name: str) -> str | None:
    """The first value given for ``name``, or None."""
    given = values(params, name)
    return given[0] if given else None


HOST_PARAM = "host"  # every shape's answer can be limited to one syslog host
_HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,252}")


def host_value(params: Params) -> str | None:
    """The ``host=`` parameter (one syslog host of a central log, see ``model.host_of``), or
    None (every host).  ``ValueError`` when it is no host name."""
    given = value(params, HOST_PARAM)
    if given is None:
        return None
    if not _HOST_NAME.fullmatch(given.strip()):
        raise ValueError(f"{HOST_PARAM}: {given[:80]!r} is not a host name")
    return given.strip()


def hosted(q: Any, host: str | None) -> Any:
    """A parsed query limited to one syslog host (None: as it is): the ``request`` of a
    stats shape, or the ``track`` query of a Track Delivery shape."""
    if host is None:
        return q
    if getattr(q, "request", None) is not None:
        return replace(q, request=replace(q.request, host=host))
    if getattr(q, "track", None) is not None:
        return replace(q, track=replace(q.track, host=host))
    return q


def path_value(path: Mapping[str, str] | None, name: str) -> str:
    return (path or {}).get(name, "").strip()


def add_rows(rows: Iterable[SeriesRow], *, bucket: datetime | None = None) -> SeriesRow:
    """The sum of ``rows`` as one row (first: the earliest, last: the latest)."""
    total = SeriesRow(bucket=bucket, key=None)
    for r in rows:
        first = min((t for t in (total.first, r.first) if t is not None), default=None)
        last = max((t for t in (total.last, r.last) if t is not None), default=None)
        total = SeriesRow(
            bucket=bucket,
            key=None,
            accepted_outgoing=total.accepted_outgoing + r.accepted_outgoing,
            accepted_incoming=total.accepted_incoming + r.accepted_incoming,
            delivered=total.delivered + r.delivered,
            failed_temporary=total.failed_temporary + r.failed_temporary,
            failed_permanent=total.failed_permanent + r.failed_permanent,
            rejected=total.rejected + r.rejected,
            bytes=total.bytes + r.bytes,
            first=first,
            last=last,
        )
    return total


def has_activity(row: SeriesRow) -> bool:
    """Whether a row holds anything the vendors count: a row can exist with zeros (what was
    counted for it was taken back when a hop was recognised) or hold only RCPT rejects."""
    return bool(row.accepted or row.delivered or row.failed_temporary or row.failed_permanent)


class Shape(NamedTuple):
    """One endpoint (or a family answered alike): its pure functions and where it is routed."""

    parse: Callable[..., Any]  # (params, now, path=None) -> query
    render: Callable[..., Any]  # (query, rows, now) -> body
    routes: tuple[str, ...]  # "METHOD /path/{param}" as the real service spells them
    content_type: str


# The API modules import the helpers above; they are imported here, after them.
from logstats.shapes import mailgun, mailgun_events, sendgrid, smtpeter  # noqa: E402

SHAPES: dict[str, Shape] = {
    "mailgun.events": Shape(
        mailgun_events.parse,
        mailgun_events.render,
        ("GET /v3/{domain}/events", "GET /v3/{domain}/events/{page}"),
        JSON,
    ),
    "mailgun.total": Shape(mailgun.parse_total, mailgun.render, ("GET /v3/stats/total",), JSON),
    "mailgun.domain_total": Shape(
        mailgun.parse_domain_total, mailgun.render, ("GET /v3/{domain}/stats/total",), JSON
    ),
    "mailgun.domains": Shape(
        mailgun.parse_domains, mailgun.render, ("GET /v3/stats/total/domains",), JSON
    ),
    "mailgun.filter": Shape(mailgun.parse_filter, mailgun.render, ("GET /v3/stats/filter",), JSON),
    "mailgun.tag_stats": Shape(
        mailgun.parse_tag_stats, mailgun.render, ("GET /v3/{domain}/tags/{tag}/stats",), JSON
    ),
    "mailgun.providers": Shape(
        mailgun.parse_providers,
        mailgun.render,
        ("GET /v3/{domain}/aggregates/providers",),
        JSON,
    ),
    "mailgun.devices": Shape(
        mailgun.parse_devices, mailgun.render, ("GET /v3/{domain}/aggregates/devices",), JSON
    ),
    "mailgun.countries": Shape(
        mailgun.parse_countries,
        mailgun.render,
        ("GET /v3/{domain}/aggregates/countries",),
        JSON,
    ),
    "sendgrid.json": Shape(
        sendgrid.parse_json,
        sendgrid.render,
        (
            "GET /api/distributor.manage.json",
            "POST /api/distributor.manage.json",
            # the document's first JSON example calls this name
            "POST /api/distributor.manageSubuser.json",
        ),
        JSON,
    ),
    "sendgrid.xml": Shape(
        sendgrid.parse_xml,
        sendgrid.render,
        ("GET /api/distributor.manage.xml", "POST /api/distributor.manage.xml"),
        XML,
    ),
    "smtpeter": Shape(smtpeter.parse, smtpeter.render, ("GET /v1/stats/{tag}",), JSON),
}

__all__ = [
    "EPOCH",
    "FAR_FUTURE",
    "JSON",
    "SHAPES",
    "XML",
    "ApiError",
    "Params",
    "Shape",
    "add_rows",
    "has_activity",
    "host_value",
    "hosted",
    "mailgun",
    "path_value",
    "sendgrid",
    "smtpeter",
    "value",
    "values",
]
