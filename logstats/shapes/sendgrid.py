"""SendGrid v2 Web API reseller customer statistics (``distributor.manage.json|xml``,
``method=stats``), from ``sendgrid-reseller-customer-stats.md``.

The document's examples are damaged (see the seeds' NOTES.md): answers here are valid JSON
and well-formed XML with the document's field and element names:

- per day: ``[{"date", "requests", "bounces", "clicks", "opens", "spamreports"}, ...]`` /
  ``<stats><day><date/>...</day></stats>``, one entry for every day of the window;
- ``aggregate=1``: one object of all-time totals / ``<stats><requests/>...</stats>``;
- ``list=true``: ``[{"category": NAME}, ...]`` / ``<categories><category/>...</categories>``;
- ``category=`` (repeatable, or ``category[]=``): per-day rows with ``"category"`` after
  ``"date"``, for every day of the window and every asked category that has statistics in
  it; a category without any gives no rows ("an empty result set").  One answer holds at
  most ``MAX_ROWS`` (36,600) rows: days x categories beyond that is refused (400).

The document shows no error.  Errors use the SendGrid v2 Web API's own envelope:
``{"message": "error", "errors": ["..."]}`` (HTTP 400) and, in XML,
``<result><message>error</message><errors><error>...</error></errors></result>``.

Counts: requests = messages accepted for the customer ("the number of emails you
requested to send"); bounces = accepted recipients that failed permanently ("emails that
bounced instead of being delivered").  A recipient refused at RCPT time was never a request,
so it is in neither; nor is a message the MTA generated itself (a bounce, ``-system-``).
clicks, opens and spamreports are SendGrid's tracking, not in MTA logs: 0.  ``user`` (the
customer) is the logstats account.  Days are UTC days; "today" is ``now``'s UTC date.

Categories are tags (a logged ``X-Tag:`` header, or a ``tags:`` rule): a message may have
none, one or several.  As in SendGrid, a message is counted under each of its categories,
so over the same days the sum over ``category[]`` equals the customer's totals exactly
when each of its messages has exactly one category: untagged mail is in no category, a
message with two is in both.  ``aggregate=1`` is all-time, the category rows are per day
of the window asked.  Tags from ``recipient`` rules belong to a recipient, not to the
message: they count that recipient's outcomes, never a request.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from typing import Any
from xml.sax.saxutils import escape

from logstats.model import Dimension, Resolution, SeriesRequest, SeriesRow
from logstats.shapes import (
    EPOCH,
    FAR_FUTURE,
    JSON,
    XML,
    ApiError,
    Params,
    add_rows,
    has_activity,
    value,
    values,
)

FIELDS = ("requests", "bounces", "clicks", "opens", "spamreports")
MAX_DAYS = 36_600  # a logstats limit (100 years) on one per-day answer
MAX_ROWS = MAX_DAYS  # a logstats limit on one answer's rows: days x max(1, categories)
_TRUE = ("1", "true")
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_FALSE = ("", "0", "false")
_LATEST = date(9000, 1, 1)  # later days are refused (a window's end must stay a datetime)


class Format(StrEnum):
    JSON = "json"
    XML = "xml"


class Kind(StrEnum):
    DAYS = "days"  # per-day statistics
    AGGREGATE = "aggregate"  # all-time totals
    LIST = "list"  # category list
    CATEGORY = "category"  # per-day statistics per category


@dataclass(frozen=True, slots=True)
class SendGridQuery:
    """A validated ``method=stats`` call."""

    fmt: Format
    kind: Kind
    request: SeriesRequest
    user: str
    days: tuple[date, ...] = ()  # the window's days (DAYS, CATEGORY)
    categories: tuple[str, ...] = ()

    @property
    def content_type(self) -> str:
        return XML if self.fmt is Format.XML else JSON

    @property
    def asked_tags(self) -> tuple[str, ...]:
        """The tags this call names: its categories (the answer is grouped by tag and keeps
        only these, so a key's scope checks them as it checks a tag filter)."""
        return self.categories

    def scoped(self, accounts: Iterable[str]) -> SendGridQuery:
        """The same call for ``accounts`` (``user`` already names the customer's account)."""
        return replace(self, request=replace(self.request, accounts=tuple(accounts)))


def error_body(fmt: Format, message: str) -> Any:
    if fmt is Format.XML:
        return (
            "<result><message>error</message><errors><error>"
            f"{_text(message)}</error></errors></result>"
        )
    return {"message": "error", "errors": [message]}


def error(fmt: Format, param: str, message: str) -> ApiError:
    content_type = XML if fmt is Format.XML else JSON
    return ApiError(400, error_body(fmt, message), param=param, content_type=content_type)


def _flag(fmt: Format, params: Params, name: str, on: str) -> bool:
    given = (value(params, name) or "").strip().lower()
    if given in _FALSE:
        return False
    if given in _TRUE:
        return True
    raise error(fmt, name, f"{name}: {given!r} is invalid; it must be set to {on}")


def _date(fmt: Format, name: str, text: str) -> date:
    try:
        if not _DATE_RE.fullmatch(text):
            raise ValueError(text)
        day = date.fromisoformat(text)
    except ValueError:
        raise error(fmt, name, f"{name}: {text!r} is not a date in YYYY-mm-dd format") from None
    if day >= _LATEST:
        raise error(fmt, name, f"{name}: {text!r} is after {_LATEST.year - 1}")
    return day


def _window(fmt: Format, params: Params, today: date) -> tuple[date, date]:
    days = (value(params, "days") or "").strip()
    start_text = (value(params, "start_date") or "").strip()
    end_text = (value(params, "end_date") or "").strip()
    if days:
        if start_text or end_text:
            raise error(fmt, "days", "days: use either days or start_date and end_date, not both")
        if not days.isascii() or not days.isdigit() or int(days) <= 0:
            raise error(fmt, "days", f"days: {days!r} must be an integer greater than 0")
        if int(days) > MAX_DAYS:
            raise error(fmt, "days", f"days: {days!r} is more than {MAX_DAYS}")
        return today - timedelta(days=int(days) - 1), today
    if not start_text and not end_text:
        return today, today
    if not start_text:
        raise error(fmt, "start_date", "start_date: missing; it is required with end_date")
    start = _date(fmt, "start_date", start_text)
    end = _date(fmt, "end_date", end_text) if end_text else today
    if start > end:
        raise error(
            fmt,
            "start_date",
            f"start_date: {start.isoformat()} must be before end_date {end.isoformat()}",
        )
    if (end - start).days + 1 > MAX_DAYS:
        raise error(fmt, "start_date", f"start_date: the window is more than {MAX_DAYS} days")
    return start, end


def _midnight(d: date) -> datetime:
    return datetime.combine(d, time(), UTC)


def parse(
    params: Params, now: datetime, path: Mapping[str, str] | None = None, *, fmt: Format
) -> SendGridQuery:
    """``distributor.manage.{json,xml}`` with ``method=stats``."""
    method = (value(params, "method") or "").strip()
    if not method:
        raise error(fmt, "method", "method: missing; it must be set to stats")
    if method != "stats":
        raise error(fmt, "method", f"method: {method!r} is invalid; it must be set to stats")
    user = (value(params, "user") or "").strip()
    if not user:
        raise error(fmt, "user", "user: missing; the customer to retrieve statistics for")
    aggregate = _flag(fmt, params, "aggregate", "1")
    listing = _flag(fmt, params, "list", "true")
    categories: list[str] = []
    for c in values(params, "category") + values(params, "category[]"):
        if not c.strip():
            raise error(fmt, "category", "category: empty category name")
        if c not in categories:
            categories.append(c)
    if aggregate and listing:
        raise error(fmt, "list", "list: use either list or aggregate, not both")
    if categories and (aggregate or listing):
        param = "aggregate" if aggregate else "list"
        raise error(fmt, param, f"{param}: cannot be combined with category")
    start, end = _window(fmt, params, now.astimezone(UTC).date())
    accounts = (user,)
    if listing:
        request = SeriesRequest(EPOCH, FAR_FUTURE, None, accounts, group=Dimension.TAG)
        return SendGridQuery(fmt, Kind.LIST, request, user)
    if aggregate:
        request = SeriesRequest(EPOCH, FAR_FUTURE, None, accounts)
        return SendGridQuery(fmt, Kind.AGGREGATE, request, user)
    days = tuple(start + timedelta(days=i) for i in range((end - start).days + 1))
    window = (_midnight(start), _midnight(end) + timedelta(days=1))
    if len(days) * max(1, len(categories)) > MAX_ROWS:
        raise error(
            fmt,
            "category",
            f"category: {len(days)} days x {len(categories)} categories is more than "
            f"{MAX_ROWS} rows (ask for fewer days or fewer categories)",
        )
    if categories:
        request = SeriesRequest(*window, Resolution.DAY, accounts, group=Dimension.TAG)
        return SendGridQuery(fmt, Kind.CATEGORY, request, user, days, tuple(categories))
    request = SeriesRequest(*window, Resolution.DAY, accounts)
    return SendGridQuery(fmt, Kind.DAYS, request, user, days)


def parse_json(
    params: Params, now: datetime, path: Mapping[str, str] | None = None
) -> SendGridQuery:
    """``distributor.manage.json``."""
    return parse(params, now, path, fmt=Format.JSON)


def parse_xml(
    params: Params, now: datetime, path: Mapping[str, str] | None = None
) -> SendGridQuery:
    """``distributor.manage.xml``."""
    return parse(params, now, path, fmt=Format.XML)


# -- answers ---------------------------------------------------------------------------------


def counts(r: SeriesRow) -> dict[str, int]:
    return {
        "requests": r.accepted,
        "bounces": r.failed_permanent,
        "clicks": 0,
        "opens": 0,
        "spamreports": 0,
    }


def _day(r: SeriesRow) -> date | None:
    if r.bucket is None:
        return None
    b = r.bucket if r.bucket.tzinfo is None else r.bucket.astimezone(UTC)
    return b.date()


def _items(query: SendGridQuery, rows: list[SeriesRow]) -> Any:
    """The JSON answer; the XML one is made from it."""
    if query.kind is Kind.LIST:
        names = sorted({r.key for r in rows if r.key and has_activity(r)})
        return [{"category": n} for n in names]
    if query.kind is Kind.AGGREGATE:
        return counts(add_rows(rows))
    if query.kind is Kind.DAYS:
        by_day: dict[date | None, list[SeriesRow]] = defaultdict(list)
        for r in rows:
            by_day[_day(r)].append(r)
        return [{"date": d.isoformat(), **counts(add_rows(by_day.get(d, ())))} for d in query.days]
    by_cat: dict[tuple[str | None, date | None], list[SeriesRow]] = defaultdict(list)
    seen = set()
    for r in rows:
        if r.key in query.categories:
            by_cat[r.key, _day(r)].append(r)
            if has_activity(r):
                seen.add(r.key)
    return [
        {"date": d.isoformat(), "category": c, **counts(add_rows(by_cat.get((c, d), ())))}
        for d in query.days
        for c in query.categories
        if c in seen
    ]


_XML_BAD = {c: "\ufffd" for c in range(32) if c not in (9, 10, 13)}


def _text(s: str) -> str:
    """Element text: escaped, and without the characters XML 1.0 cannot carry."""
    cleaned = s.translate(_XML_BAD)
    cleaned = "".join(
        "\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF or ord(ch) in (0xFFFE, 0xFFFF) else ch
        for ch in cleaned
    )
    return escape(cleaned)


def _elements(item: dict[str, Any]) -> str:
    return "".join(f"<{k}>{_text(str(v))}</{k}>" for k, v in item.items())


def to_xml(query: SendGridQuery, items: Any) -> str:
    if query.kind is Kind.LIST:
        return f"<categories>{''.join(_elements(i) for i in items)}</categories>"
    if query.kind is Kind.AGGREGATE:
        return f"<stats>{_elements(items)}</stats>"
    return f"<stats>{''.join(f'<day>{_elements(i)}</day>' for i in items)}</stats>"


def render(query: SendGridQuery, rows: list[SeriesRow], now: datetime) -> Any:
    """The JSON-ready answer, or the XML text for ``distributor.manage.xml``."""
    items = _items(query, rows)
    return to_xml(query, items) if query.fmt is Format.XML else items
