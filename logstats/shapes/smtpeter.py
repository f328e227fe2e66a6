"""SMTPeter REST API ``GET /v1/stats/{tag}``, from ``smtpeter-stats.md``.

``{"first": "YYYY-MM-DD HH:MM:SS", "last": ..., "opens": N, "clicks": N, "messages": N,
"deliveries": N}``: all-time totals for one tag.  ``first``/``last`` are the first and last
activity (here: a message accepted, a delivery, a deferral or a failure) in UTC; messages =
messages accepted with the tag ("the number of messages that have been sent using the
given tag"), deliveries = recipients delivered; a recipient refused at RCPT time is neither,
and messages the MTA generated itself (bounces) are not counted; opens and clicks are
SMTPeter's own tracking, not in MTA logs: 0.

A tag with no activity at all is unknown to the service: SMTPeter answers errors with the
HTTP status and a textual explanation, so this answers 404 ``{"error": "..."}`` rather than
zeros with ``first``/``last`` null, which no client of the real service ever received.
``access_token`` is the caller's business.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, ClassVar

from logstats.model import Dimension, SeriesRequest, SeriesRow
from logstats.shapes import (
    EPOCH,
    FAR_FUTURE,
    JSON,
    ApiError,
    Params,
    add_rows,
    has_activity,
    path_value,
)

MAX_TAG = 1000


@dataclass(frozen=True, slots=True)
class SmtpeterQuery:
    tag: str
    request: SeriesRequest
    content_type: ClassVar[str] = JSON

    def scoped(self, accounts: Iterable[str]) -> SmtpeterQuery:
        """The same call restricted to ``accounts`` (the access token's)."""
        return replace(self, request=replace(self.request, accounts=tuple(accounts)))


def error(status: int, param: str, message: str) -> ApiError:
    return ApiError(status, {"error": message}, param=param)


def stamp(t: datetime) -> str:
    """``2016-01-01 12:00:00`` in UTC."""
    t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S")


def parse(params: Params, now: datetime, path: Mapping[str, str] | None = None) -> SmtpeterQuery:
    """``GET /v1/stats/{tag}``: the tag comes from the path."""
    tag = path_value(path, "tag")
    if not tag:
        raise error(400, "tag", "tag: missing; call /v1/stats/[tag]")
    if len(tag) > MAX_TAG:
        raise error(400, "tag", f"tag: longer than {MAX_TAG} characters")
    request = SeriesRequest(EPOCH, FAR_FUTURE, None, filters=((Dimension.TAG, tag),))
    return SmtpeterQuery(tag, request)


def render(query: SmtpeterQuery, rows: list[SeriesRow], now: datetime) -> dict[str, Any]:
    """The stats object; raises ``ApiError`` 404 for a tag without any activity."""
    total = add_rows(r for r in rows if r.key in (None, query.tag))
    if not has_activity(total):
        raise error(404, "tag", f"tag: no statistics for tag {query.tag!r}")
    first = total.first or total.last
    last = total.last or total.first
    return {
        "first": stamp(first) if first else None,
        "last": stamp(last) if last else None,
        "opens": 0,
        "clicks": 0,
        "messages": total.accepted,
        "deliveries": total.delivered,
    }
