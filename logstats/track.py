"""Track Delivery: the stored per-recipient rows, searched and traced.

One row per outcome of one recipient (delivered, deferred, failed, rejected; the receipt
of a message is a ``send`` row with no recipient), kept for ``store.retention_days``
in the ``events`` table with what ``model.Detail`` holds.  Messages still in the queue
are read from the in-flight state (``pending``) as ``inprogress`` rows.

The API shapes (cPanel ``EmailTrack::search``, WHM API 1 ``emailtrack_search``, Mailgun
events), the CLI (``search``, ``trace``), the web pages and ``report`` all read through
the functions here; none of them writes SQL of its own.

There is no index over ``events`` (see the README, Performance): rows are stored in time
order, so DuckDB's per-block min/max of ``ts`` skips every block outside the window, and a
filter on an address or an id is one scan of the window's blocks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any, NamedTuple

import duckdb

# the outcome types of a row: the counted outcomes, and messages still in the queue
DELIVERED, DEFERRED, FAILED, REJECTED, SEND, INPROGRESS, EXPIRED = (
    "delivered", "deferred", "failed", "rejected", "send", "inprogress", "expired",
)  # fmt: skip
RECIPIENT_TYPES = (DELIVERED, DEFERRED, FAILED, REJECTED, INPROGRESS)

# the stored columns of a row, in order (``events``)
COLUMNS = (
    "ts", "mta", "scope", "queue_id", "account", "sender_domain", "recipient", "outcome",
    "size", "local", "sender", "orig_recipient", "message_id", "client_host", "client_ip",
    "auth", "sent_at", "reason", "router", "transport", "remote_host", "remote_ip", "dsn",
    "tags", "origin", "parent",
)  # fmt: skip


class TrackRow(NamedTuple):
    """One stored outcome (or one message in progress), as searches return it."""

    ts: datetime  # the action time (UTC)
    mta: str
    scope: str
    queue_id: str
    account: str
    sender_domain: str
    recipient: str
    outcome: str  # delivered | deferred | failed | rejected | send | inprogress | expired
    size: int
    local: bool | None
    sender: str | None
    orig_recipient: str | None
    message_id: str | None
    client_host: str | None
    client_ip: str | None
    auth: str | None
    sent_at: datetime | None
    reason: str | None
    router: str | None
    transport: str | None
    remote_host: str | None
    remote_ip: str | None
    dsn: str | None
    tags: str | None
    origin: str | None
    parent: str | None

    @property
    def recipient_domain(self) -> str:
        return self.recipient.rpartition("@")[2].lower() if "@" in self.recipient else ""

    def as_dict(self) -> dict[str, Any]:
        out = self._asdict()
        out["ts"] = self.ts.isoformat()
        out["sent_at"] = self.sent_at.isoformat() if self.sent_at else None
        return out


@dataclass(frozen=True, slots=True)
class TrackQuery:
    """A search: a window (UTC, end exclusive) and filters, all optional but the window.

    Address filters (``sender``, ``recipient``) match case-insensitively; ``*`` and ``?``
    are wildcards, anything else must equal.  ``domain`` matches the sender's or the
    recipient's domain.  ``accounts`` is the caller's scope (None: every account),
    ``account`` a filter within it; ``domain_patterns`` the scope of a key limited to
    sender domains."""

    start: datetime
    end: datetime
    accounts: tuple[str, ...] | None = None
    account: str | None = None
    sender: str | None = None
    recipient: str | None = None
    domain: str | None = None
    sender_domain: str | None = None
    queue_id: str | None = None
    message_id: str | None = None
    tag: str | None = None
    types: frozenset[str] = field(default_factory=lambda: frozenset(RECIPIENT_TYPES))
    domain_patterns: tuple[str, ...] = ()
    newest_first: bool = True
    limit: int | None = 250
    offset: int = 0


def _naive(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(tzinfo=None)


def _like(value: str) -> tuple[str, str]:
    """(operator, operand) for an address filter: equality, or LIKE for wildcards."""
    low = value.lower()
    if "*" in low or "?" in low:
        escaped = low.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return "LIKE ? ESCAPE '\\'", escaped.replace("*", "%").replace("?", "_")
    return "= ?", low


def _where(q: TrackQuery, types: Sequence[str]) -> tuple[str, list[Any]]:
    clauses = ["ts >= ?", "ts < ?"]
    params: list[Any] = [_naive(q.start), _naive(q.end)]
    if q.accounts is not None:
        clauses.append("list_contains(?, account)")
        params.append(list(q.accounts))
    if q.account is not None:
        clauses.append("account = ?")
        params.append(q.account)
    if q.domain_patterns:
        clauses.append("(" + " OR ".join("sender_domain GLOB ?" for _ in q.domain_patterns) + ")")
        params += list(q.domain_patterns)
    for column, value in (("sender", q.sender), ("recipient", q.recipient)):
        if value is not None:
            op, operand = _like(value)
            clauses.append(f"lower({column}) {op}")
            params.append(operand)
    if q.domain is not None:
        low = q.domain.lower()
        clauses.append("(sender_domain = ? OR lower(recipient) LIKE ? ESCAPE '\\')")
        params += [low, "%@" + low.replace("%", "\\%").replace("_", "\\_")]
    if q.sender_domain is not None:
        clauses.append("sender_domain = ?")
        params.append(q.sender_domain.lower())
    if q.queue_id is not None:
        clauses.append("(queue_id = ? OR origin = ?)")
        params += [q.queue_id, q.queue_id]
    if q.message_id is not None:
        clauses.append("trim(message_id, '<>') = ?")
        params.append(q.message_id.strip("<>"))
    if q.tag is not None:
        clauses.append("list_contains(string_split(tags, ','), ?)")
        params.append(q.tag)
    clauses.append("list_contains(?, outcome)")
    params.append(list(types))
    return " AND ".join(clauses), params


def _stored_types(q: TrackQuery) -> list[str]:
    return sorted(t for t in q.types if t != INPROGRESS)


def search(con: duckdb.DuckDBPyConnection, q: TrackQuery) -> list[TrackRow]:
    """The rows matching ``q``, newest first (or oldest first), at most ``q.limit``;
    rows in progress come after the stored ones of the same order."""
    rows: list[TrackRow] = []
    stored = _stored_types(q)
    if stored:
        where, params = _where(q, stored)
        order = "DESC" if q.newest_first else "ASC"
        sql = (
            f"SELECT {', '.join(COLUMNS)} FROM events WHERE {where} "
            f"ORDER BY ts {order}, queue_id {order}, recipient {order}"
        )
        if q.limit is not None:
            sql += f" LIMIT {int(q.limit)} OFFSET {int(q.offset)}"
        rows = [TrackRow(*r) for r in con.execute(sql, params).fetchall()]
    if INPROGRESS in q.types and (q.limit is None or len(rows) < q.limit):
        progress = in_progress(con, q)
        rows += progress[: None if q.limit is None else q.limit - len(rows)]
    return rows


def count(con: duckdb.DuckDBPyConnection, q: TrackQuery) -> dict[str, int]:
    """How many rows match ``q``, per type (types without a match are 0)."""
    out = dict.fromkeys(q.types, 0)
    stored = _stored_types(q)
    if stored:
        where, params = _where(q, stored)
        for outcome, n in con.execute(
            f"SELECT outcome, count(*) FROM events WHERE {where} GROUP BY outcome", params
        ).fetchall():
            out[outcome] = int(n)
    if INPROGRESS in q.types:
        out[INPROGRESS] = len(in_progress(con, q))
    return out


def top(
    con: duckdb.DuckDBPyConnection, q: TrackQuery, what: str, n: int = 10
) -> list[tuple[str, int]]:
    """The ``n`` most frequent values of ``what`` over the rows of ``q``: ``reason``,
    ``sender``, ``sender_domain``, ``recipient_domain``, ``account``, ``remote_host``."""
    expressions = {
        "reason": "coalesce(reason, '')",
        "sender": "coalesce(sender, '')",
        "sender_domain": "sender_domain",
        "recipient_domain": "lower(split_part(recipient, '@', 2))",
        "account": "account",
        "remote_host": "coalesce(remote_host, '')",
    }
    expr = expressions[what]
    stored = _stored_types(q)
    if not stored:
        return []
    where, params = _where(q, stored)
    rows = con.execute(
        f"SELECT {expr} AS v, count(*) AS n FROM events WHERE {where} "
        f"GROUP BY v ORDER BY n DESC, v LIMIT {int(n)}",
        params,
    ).fetchall()
    return [(str(v), int(c)) for v, c in rows]


def newest(con: duckdb.DuckDBPyConnection, q: TrackQuery) -> datetime | None:
    """The time of the newest row matching ``q`` (None: none): where a page's default
    window ends (the data's time, not the wall clock)."""
    stored = _stored_types(q)
    if not stored:
        return None
    where, params = _where(q, stored)
    found = con.execute(f"SELECT max(ts) FROM events WHERE {where}", params).fetchone()
    if found is None or found[0] is None:
        return None
    return found[0].replace(tzinfo=UTC)  # type: ignore[no-any-return]


def hourly(con: duckdb.DuckDBPyConnection, q: TrackQuery) -> list[tuple[datetime, str, int]]:
    """(UTC hour, type, rows) over ``q``: the traffic per hour of a report."""
    stored = _stored_types(q)
    if not stored:
        return []
    where, params = _where(q, stored)
    return [
        (h.replace(tzinfo=UTC), str(o), int(c))
        for h, o, c in con.execute(
            f"SELECT date_trunc('hour', ts) AS h, outcome, count(*) FROM events WHERE {where} "
            "GROUP BY h, outcome ORDER BY h, outcome",
            params,
        ).fetchall()
    ]


def in_progress(con: duckdb.DuckDBPyConnection, q: TrackQuery) -> list[TrackRow]:
    """Messages accepted in the window and still in the queue, one row per recipient not
    yet delivered or failed that was deferred, else one row without a recipient."""
    clauses = ["received", "accepted_at >= ?", "accepted_at < ?"]
    params: list[Any] = [_naive(q.start), _naive(q.end)]
    if q.accounts is not None:
        clauses.append("list_contains(?, account)")
        params.append(list(q.accounts))
    if q.account is not None:
        clauses.append("account = ?")
        params.append(q.account)
    if q.queue_id is not None:
        clauses.append("(queue_id = ? OR root LIKE ?)")
        params += [q.queue_id, "% " + q.queue_id]
    rows: list[TrackRow] = []
    for mta, account, state in con.execute(
        f"SELECT mta, account, state FROM pending WHERE {' AND '.join(clauses)} "
        "ORDER BY accepted_at, queue_id",
        params,
    ).fetchall():
        rows += _pending_rows(mta, account, state, q)
    rows.sort(key=lambda r: (r.ts, r.queue_id, r.recipient), reverse=q.newest_first)
    return rows


def _pending_rows(mta: str, account: str | None, state: str, q: TrackQuery) -> list[TrackRow]:
    try:
        data = json.loads(state)
    except ValueError:
        return []
    sender = data.get("sender")
    domain = (data.get("domain") or (sender or "").rpartition("@")[2]).lower()
    if q.domain_patterns and not any(_glob(domain, p) for p in q.domain_patterns):
        return []
    if q.sender_domain is not None and domain != q.sender_domain.lower():
        return []
    if q.sender is not None and not _matches(sender, q.sender):
        return []
    if q.message_id is not None and (data.get("message_id") or "").strip("<>") != (
        q.message_id.strip("<>")
    ):
        return []
    if q.tag is not None and q.tag not in (data.get("tags") or []):
        return []
    done = data.get("done") or {}
    waiting = [r for r in dict.fromkeys(data.get("deferrals") or []) if r not in done]
    recipients = [r.split("<", 1)[0] for r in waiting] or [""]
    if q.recipient is not None:
        recipients = [r for r in recipients if _matches(r, q.recipient)]
    if q.domain is not None:
        low = q.domain.lower()
        if domain != low:
            recipients = [r for r in recipients if r.lower().endswith("@" + low)]
    accepted = datetime.fromisoformat(data["accepted_at"]) if data.get("accepted_at") else None
    seen = datetime.fromisoformat(data["last_seen"])
    origin = data.get("origin")
    return [
        TrackRow(
            ts=seen.astimezone(UTC),
            mta=mta,
            scope=str(data.get("scope", "")),
            queue_id=str(data.get("queue_id", "")),
            account=account or "",
            sender_domain=domain,
            recipient=rcpt,
            outcome=INPROGRESS,
            size=int(data.get("size") or 0),
            local=None,
            sender=sender,
            orig_recipient=None,
            message_id=data.get("message_id"),
            client_host=data.get("client_host"),
            client_ip=data.get("client_ip"),
            auth=data.get("auth_id") or data.get("local_user"),
            sent_at=accepted.astimezone(UTC) if accepted else None,
            reason="message in the queue" if not rcpt else "deferred, in the queue for retry",
            router=None,
            transport=None,
            remote_host=None,
            remote_ip=None,
            dsn=None,
            tags=",".join(data.get("tags") or []) or None,
            origin=origin.rpartition(" ")[2] if origin else None,
            parent=data.get("parent"),
        )
        for rcpt in recipients
    ]


def _glob(value: str, pattern: str) -> bool:
    return fnmatchcase(value, pattern)


def _matches(value: str | None, wanted: str) -> bool:
    """An address filter on a value in memory, as ``_like`` is in SQL."""
    if value is None:
        return False
    return fnmatchcase(value.lower(), wanted.lower().replace("[", "[[]"))


def trace(
    con: duckdb.DuckDBPyConnection,
    ident: str,
    *,
    accounts: tuple[str, ...] | None = None,
    domain_patterns: tuple[str, ...] = (),
) -> list[TrackRow]:
    """The whole life of one message, oldest first: its receipt, every attempt, the hops
    it continued as (a content filter's re-injection), its bounce and what is still in the
    queue.  ``ident`` is a queue id or a Message-ID (with or without ``<>``); a Message-ID
    finds every queue id that carried it."""
    ident = ident.strip()
    mid = ident.strip("<>")
    far = (datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC))
    ids = {
        r[0]
        for r in con.execute(
            "SELECT DISTINCT queue_id FROM events WHERE queue_id = ? OR origin = ? "
            "OR trim(message_id, '<>') = ?",
            [ident, ident, mid],
        ).fetchall()
    }
    ids |= {
        r[0]
        for r in con.execute(
            "SELECT queue_id FROM pending WHERE received AND (queue_id = ? OR root LIKE ?)",
            [ident, "% " + ident],
        ).fetchall()
    }
    if not ids:
        return []
    roots = sorted(ids)
    rows = [
        TrackRow(*r)
        for r in con.execute(
            f"SELECT {', '.join(COLUMNS)} FROM events WHERE list_contains(?, queue_id) "
            "OR list_contains(?, origin) OR list_contains(?, parent) "
            "ORDER BY ts, CASE outcome WHEN 'send' THEN 0 ELSE 1 END, queue_id, recipient",
            [roots, roots, roots],
        ).fetchall()
    ]
    for qid in roots:
        rows += in_progress(con, TrackQuery(*far, queue_id=qid, newest_first=False, limit=None))
    seen: set[tuple[Any, ...]] = set()
    out = []
    for r in rows:
        key = (r.ts, r.queue_id, r.recipient, r.outcome, r.reason)
        if key in seen:
            continue
        seen.add(key)
        if accounts is not None and r.account not in accounts:
            continue
        if domain_patterns and not any(_glob(r.sender_domain, p) for p in domain_patterns):
            continue
        out.append(r)
    return out
