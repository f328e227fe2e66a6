"""Mailgun's Events API (``GET /v3/{domain}/events``) on the Track Delivery rows.

Event types, as Mailgun defines them, from the stored outcomes: a message receipt
(``send``) is ``accepted``; a delivered recipient ``delivered``; a deferral ``failed`` with
``severity: temporary`` (reason ``generic``); a bounce ``failed`` with ``severity:
permanent`` (reason ``bounce``); a message given up after the retry time ``failed``
permanent with reason ``old``.  Decisions where the document is silent:

- An SMTP-time RCPT reject is not an event: Mailgun never accepted that recipient, and the
  Mailgun stats shape does not count it (README, Counting rules per API).  ``event=rejected``
  is valid and finds nothing.  Rows of ``-system-`` (the MTA's own bounces) are never shown.
- ``subject`` is not stored: asking for it is a 400; ``to`` filters on the envelope
  recipient (the header To is not kept); ``tags`` (and ``tag``) one tag.
- Without ``ascending``: ascending when ``begin`` and ``end`` are both given and begin is
  the earlier, else descending (Mailgun's default, ``begin`` defaulting to now).
- Page tokens (``/events/{token}`` or ``?page=``) hold the query and a keyset cursor
  (ts, queue id, recipient, outcome): new rows never shift a page.  A token carries a
  checksum (a corrupted one is a 400); its query is scoped again on every page, so an
  edited token can ask nothing the key could not ask directly.
- No ``storage``: the messages themselves are not kept.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from logstats import track
from logstats.model import SYSTEM
from logstats.shapes import Params, host_value, values
from logstats.shapes.mailgun import error, parse_time

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FAR = datetime(9000, 1, 1, tzinfo=UTC)
MAX_LIMIT, DEFAULT_LIMIT = 300, 100

# Mailgun's event types; the ones a log can tell are mapped to stored outcomes
_OUTCOMES: dict[str, frozenset[str]] = {
    "accepted": frozenset({track.SEND}),
    "delivered": frozenset({track.DELIVERED}),
    "failed": frozenset({track.DEFERRED, track.FAILED, track.EXPIRED}),
    "rejected": frozenset(),
    "opened": frozenset(),
    "clicked": frozenset(),
    "unsubscribed": frozenset(),
    "complained": frozenset(),
    "stored": frozenset(),
    "list_member_uploaded": frozenset(),
    "list_member_upload_error": frozenset(),
    "list_uploaded": frozenset(),
}
_SEVERITY = {"temporary": frozenset({track.DEFERRED}),
             "permanent": frozenset({track.FAILED, track.EXPIRED})}  # fmt: skip
_FILTERS = ("event", "recipient", "from", "message-id", "severity", "tags", "tag", "to")
_KEPT = (*_FILTERS, "begin", "end", "ascending", "limit", "host")
_DOMAIN = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]{0,251}[a-z0-9])?")
_CODE = re.compile(r"(?<![\d.])([245]\d\d)(?![\d.])")
_ENHANCED = re.compile(r"(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?![\d.])")


@dataclass(frozen=True, slots=True)
class EventsQuery:
    """A validated events call: the rows to read, and how to page them."""

    domain: str
    params: tuple[tuple[str, str], ...]  # the canonical query, as the token keeps it
    track: track.TrackQuery
    back: bool  # a ``previous``/``last`` page: read backwards, answer in the order

    def scoped(self, accounts: tuple[str, ...]) -> EventsQuery:
        return replace(self, track=replace(self.track, accounts=accounts))


def _one(params: Params, name: str) -> str | None:
    given = values(params, name)
    return given[-1].strip() if given else None


def _types(expr: str) -> frozenset[str]:
    """An ``event`` filter: a type, ``a OR b``, or ``NOT a`` / ``NOT (a OR b)``."""
    text = expr.strip()
    negate = text.upper().startswith("NOT ")
    if negate:
        text = text[4:].strip()
        if text.startswith("(") and text.endswith(")"):
            text = text[1:-1]
    out: set[str] = set()
    for word in re.split(r"\s+OR\s+", text, flags=re.IGNORECASE):
        name = word.strip().lower()
        if name not in _OUTCOMES:
            raise error("event", f"event: {word.strip()!r} is not a Mailgun event type")
        out |= _OUTCOMES[name]
    every = frozenset().union(*_OUTCOMES.values())
    return every - out if negate else frozenset(out)


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _instant(text: str) -> datetime:
    """A cursor's time, kept as ISO text (a float epoch would lose microseconds)."""
    return _utc(datetime.fromisoformat(text))


def _encode(data: Any) -> str:
    raw = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
    digest = hashlib.sha256(raw).digest()[:8]
    return base64.urlsafe_b64encode(digest + raw).decode().rstrip("=")


def _decode(token: str) -> Any:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        digest, body = raw[:8], raw[8:]
        if len(token) > 4096 or hashlib.sha256(body).digest()[:8] != digest:
            raise ValueError("checksum")
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError("shape")
        return data
    except (ValueError, TypeError) as exc:
        raise error("page", "page: not a page token of this API") from exc


def parse(params: Params, now: datetime, path: Mapping[str, str] | None = None) -> EventsQuery:
    """The query of a first page, or of the page a token names."""
    domain = (path or {}).get("domain", "").strip().lower()
    if not _DOMAIN.fullmatch(domain):
        raise error("domain", f"domain: {domain[:100]!r} is not a domain name")
    token = (path or {}).get("page") or _one(params, "page")
    cursor: tuple[datetime, str, str, str] | None = None
    back = False
    if token:
        data = _decode(token)
        try:
            given = {str(k): [str(v)] for k, v in data["p"]}
            if str(data["d"]) != domain:
                raise ValueError("domain")
            if data["a"] is not None:
                ts, qid, rcpt, outcome = data["a"]
                cursor = (_instant(str(ts)), str(qid), str(rcpt), str(outcome))
            back = bool(data["b"])
        except (KeyError, ValueError, TypeError, OverflowError, OSError) as exc:
            raise error("page", "page: not a page token of this API") from exc
        params = given
    return _query(domain, params, now, cursor, back)


def _query(
    domain: str,
    params: Params,
    now: datetime,
    cursor: tuple[datetime, str, str, str] | None,
    back: bool,
) -> EventsQuery:
    if _one(params, "subject") is not None:
        raise error("subject", "subject: message subjects are not kept; filter by message-id")
    begin_text, end_text = _one(params, "begin"), _one(params, "end")
    begin = parse_time("begin", begin_text) if begin_text else None
    end = parse_time("end", end_text) if end_text else None
    asc_text = _one(params, "ascending")
    if asc_text is not None and asc_text.lower() not in ("yes", "no"):
        raise error("ascending", f"ascending: {asc_text!r} is not yes or no")
    if asc_text is not None:
        ascending = asc_text.lower() == "yes"
    else:
        ascending = begin is not None and end is not None and begin < end
    if begin is not None and end is not None and (begin < end) != ascending and begin != end:
        raise error("ascending", "ascending: contradicts the order of begin and end")
    start_at = begin if begin is not None else (EPOCH if ascending else now)
    if end is None:
        end = FAR if ascending else EPOCH
    low, high = min(start_at, end), max(start_at, end)
    limit_text = _one(params, "limit")
    limit = DEFAULT_LIMIT
    if limit_text is not None:
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
            raise error("limit", f"limit: {limit_text!r} is not a number from 1 to {MAX_LIMIT}")
        limit = int(limit_text)
    types = frozenset().union(*_OUTCOMES.values())
    event = _one(params, "event")
    if event is not None:
        types &= _types(event)
    severity = _one(params, "severity")
    if severity is not None:
        if severity.lower() not in _SEVERITY:
            raise error("severity", f"severity: {severity!r} is not temporary or permanent")
        types &= _SEVERITY[severity.lower()]
    recipient = _one(params, "recipient") or _one(params, "to")
    tag = _one(params, "tags") or _one(params, "tag")
    for name, text in (("recipient", recipient), ("from", _one(params, "from")), ("tags", tag)):
        if text is not None and (not text or len(text) > 998 or "\0" in text):
            raise error(name, f"{name}: not a valid value")
    try:
        host = host_value(params)
    except ValueError as exc:
        raise error("host", str(exc)) from exc
    q = track.TrackQuery(
        low,
        high if high > low else high.replace(microsecond=999999),
        sender=_one(params, "from") or None,
        recipient=recipient or None,
        sender_domain=domain,
        message_id=_one(params, "message-id") or None,
        tag=tag or None,
        types=types or frozenset({"-none-"}),
        newest_first=not ascending if not back else ascending,
        limit=limit,
        after=cursor,
        exclude_accounts=(SYSTEM,),
        host=host,
    )
    kept = tuple(sorted((k, v[-1] if isinstance(v, list) else str(v))
                        for k, v in dict(params).items() if k in _KEPT and v))  # fmt: skip
    return EventsQuery(domain, kept, q, back)


def _token(query: EventsQuery, cursor: track.TrackRow | None, back: bool) -> str:
    after: list[Any] | None = None
    if cursor is not None:
        after = [_utc(cursor.ts).isoformat(), cursor.queue_id, cursor.recipient, cursor.outcome]
    elif query.track.after is not None and back == query.back:  # an empty page: stay
        kept = query.track.after
        after = [_utc(kept[0]).isoformat(), *kept[1:]]
    return _encode({"d": query.domain, "p": [list(p) for p in query.params], "a": after,
                    "b": back})  # fmt: skip


def _code(text: str | None, pattern: re.Pattern[str]) -> str | None:
    m = pattern.search(text or "")
    return m.group(1) if m else None


def item(row: track.TrackRow) -> dict[str, Any]:
    """One Mailgun event item for one stored row."""
    ts = row.ts.replace(tzinfo=UTC).timestamp()
    ident = hashlib.sha256(
        "\0".join((row.mta, row.queue_id, row.recipient, row.outcome, row.ts.isoformat())).encode()
    ).digest()
    headers: dict[str, str] = {}
    if row.message_id:
        headers["message-id"] = row.message_id.strip("<>")
    out: dict[str, Any] = {
        "id": base64.urlsafe_b64encode(ident[:16]).decode().rstrip("="),
        "timestamp": ts,
        "tags": [t for t in (row.tags or "").split(",") if t],
        "envelope": {
            "sender": row.sender or "",
            "targets": row.recipient,
            "transport": "smtp",
        },
        "message": {"headers": headers, "size": row.size},
        "user-variables": {},
        "flags": {"is-authenticated": bool(row.auth), "is-test-mode": False},
    }
    if row.recipient:
        out["recipient"] = row.recipient
        out["recipient-domain"] = row.recipient.rpartition("@")[2].lower()
    if row.outcome == track.SEND:
        out |= {"event": "accepted", "log-level": "info", "method": "smtp"}
        return out
    severity, reason = {
        track.DELIVERED: (None, None),
        track.DEFERRED: ("temporary", "generic"),
        track.FAILED: ("permanent", "bounce"),
        track.EXPIRED: ("permanent", "old"),
    }[row.outcome]
    code = _code(row.reason, _CODE)
    status: dict[str, Any] = {
        "code": int(code) if code else (250 if row.outcome == track.DELIVERED else 0),
        "message": row.reason or "",
        "description": row.reason or "",
        "mx-host": row.remote_host or "",
        "tls": False,
        "certificate-verified": False,
    }
    enhanced = row.dsn or _code(row.reason, _ENHANCED)
    if enhanced:
        status["enhanced-code"] = enhanced
    out["delivery-status"] = status
    if severity is None:
        out |= {"event": "delivered", "log-level": "info"}
    else:
        level = "warn" if severity == "temporary" else "error"
        out |= {"event": "failed", "log-level": level, "severity": severity, "reason": reason}
    return out


def render(query: EventsQuery, rows: list[track.TrackRow], base: str) -> dict[str, Any]:
    """``{"items": [...], "paging": {first, last, next, previous}}`` with absolute URLs."""
    if query.back:
        rows = rows[::-1]

    def url(token: str) -> str:
        return f"{base}/v3/{quote(query.domain)}/events/{token}?{urlencode({'page': token})}"

    nxt = _token(query, rows[-1] if rows else None, False)
    prev = _token(query, rows[0] if rows else None, True)
    return {
        "items": [item(r) for r in rows],
        "paging": {
            "first": url(_token(query, None, False)),
            "last": url(_token(query, None, True)),
            "next": url(nxt),
            "previous": url(prev),
        },
    }
