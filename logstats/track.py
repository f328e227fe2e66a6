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
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any, NamedTuple

import duckdb

# the outcome types of a row: the counted outcomes, and messages still in the queue
DELIVERED, DEFERRED, FAILED, REJECTED, SEND, INPROGRESS, EXPIRED = (
    "delivered", "deferred", "failed", "rejected", "send", "inprogress", "expired",
)  # fmt: skip
RECIPIENT_TYPES = (DELIVERED, DEFERRED, FAILED, REJECTED, INPROGRESS)
# every outcome a stored row has (model.Outcome)
STORED_TYPES = (SEND, DELIVERED, DEFERRED, FAILED, REJECTED, EXPIRED)

# the stored columns of a row, in order (``events``)
COLUMNS = (
    "ts", "mta", "scope", "queue_id", "account", "sender_domain", "recipient", "outcome",
    "size", "local", "sender", "orig_recipient", "message_id", "client_host", "client_ip",
    "auth", "sent_at", "reason", "router", "transport", "remote_host", "remote_ip", "dsn",
    "tags", "origin", "parent",
)  # fmt: skip


class TrackRow(NamedTuple):
    """One stored outcome (or one message in progress), as searches return it."""

    ts: datetime  # the action time, UTC as a naive datetime (as DuckDB hands it back)
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
    local: bool | None = None  # True: local deliveries only, False: remote ones only
    types: frozenset[str] = field(default_factory=lambda: frozenset(RECIPIENT_TYPES))
    domain_patterns: tuple[str, ...] = ()
    newest_first: bool = True
    limit: int | None = 250
    offset: int = 0
    # keyset paging: only rows after this (ts, queue_id, recipient, outcome) in the order
    after: tuple[datetime, str, str, str] | None = None
    exclude_accounts: tuple[str, ...] = ()  # e.g. ``-system-`` for the vendor shapes
    host: str | None = None  # the syslog host (``model.host_of`` of the scope); None: any


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
    if q.host is not None:
        clauses.append("split_part(scope, '/', 1) = ?")  # model.host_of, as for pending
        params.append(q.host)
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
    if q.message_id is not None:  # stored without <> (the grammars take what is inside)
        clauses.append("message_id = ?")
        params.append(q.message_id.strip().strip("<>"))
    if q.tag is not None:
        clauses.append("list_contains(string_split(tags, ','), ?)")
        params.append(q.tag)
    if q.local is not None:
        clauses.append("local IS NOT DISTINCT FROM ?")
        params.append(q.local)
    if q.exclude_accounts:
        clauses.append("NOT list_contains(?, account)")
        params.append(list(q.exclude_accounts))
    if q.after is not None:
        op = "<" if q.newest_first else ">"
        clauses.append(f"(ts, queue_id, recipient, outcome) {op} (?, ?, ?, ?)")
        params += [_naive(q.after[0]), *q.after[1:]]
    clause, values = _outcomes(types)
    clauses.append(clause)
    params += values
    return " AND ".join(clauses), params


def _outcomes(types: Sequence[str]) -> tuple[str, list[Any]]:
    """The filter on ``outcome`` as plain comparisons with constants: one type is ``=``,
    several are ``<>`` each type left out.  DuckDB evaluates those in the scan next to an
    address filter; an IN list or ``list_contains`` there made a search ~6x slower
    (bench/search.py)."""
    wanted = sorted(set(types))
    if len(wanted) == 1:
        return "outcome = ?", wanted
    unwanted = [t for t in STORED_TYPES if t not in wanted]
    unknown = [t for t in wanted if t not in STORED_TYPES]
    if unknown:  # not a stored outcome: keep the general form
        return "list_contains(?, outcome)", [wanted]
    if not unwanted:
        return "true", []
    return " AND ".join("outcome <> ?" for _ in unwanted), unwanted


def _stored_types(q: TrackQuery) -> list[str]:
    return sorted(t for t in q.types if t != INPROGRESS)


FIRST_SPAN = timedelta(days=1)  # a limited search reads the window's newest day first


def spans(q: TrackQuery) -> list[tuple[datetime, datetime]]:
    """The window cut into spans read one after the other, from the end it is ordered from:
    one day, then each span four times the one before.  Rows are stored in time order, so
    a span is a contiguous run of blocks; a search whose limit the newest day fills (a busy
    account or domain) reads only that day."""
    out: list[tuple[datetime, datetime]] = []
    span = FIRST_SPAN
    lo, hi = q.start, q.end
    while lo < hi:
        if hi - lo <= span:  # the rest in one (no datetime past the window's ends)
            out.append((lo, hi))
            break
        if q.newest_first:
            out.append((hi - span, hi))
            hi -= span
        else:
            out.append((lo, lo + span))
            lo += span
        span *= 4
    return out


def _stored_search(con: duckdb.DuckDBPyConnection, q: TrackQuery, stored: list[str]) -> list[Any]:
    where, params = _where(q, stored)
    order = "DESC" if q.newest_first else "ASC"
    sql = (
        f"SELECT {', '.join(COLUMNS)} FROM events WHERE {where} "
        f"ORDER BY ts {order}, queue_id {order}, recipient {order}, outcome {order}"
    )
    if q.limit is not None:
        sql += f" LIMIT {int(q.limit)} OFFSET {int(q.offset)}"
    return con.execute(sql, params).fetchall()


def search(con: duckdb.DuckDBPyConnection, q: TrackQuery) -> list[TrackRow]:
    """The rows matching ``q``, newest first (or oldest first), at most ``q.limit``;
    rows in progress come after the stored ones of the same order.  With a limit, the
    window is read span by span (``spans``) until the limit is reached: the same rows as
    one query over the window, as the spans split it only between timestamps."""
    rows: list[TrackRow] = []
    stored = _stored_types(q)
    if stored and q.limit is None:
        rows = [TrackRow(*r) for r in _stored_search(con, q, stored)]
    elif stored and q.limit is not None:
        need = q.limit + q.offset
        found: list[Any] = []
        for lo, hi in spans(q):
            part = replace(q, start=lo, end=hi, limit=need - len(found), offset=0)
            found += _stored_search(con, part, stored)
            if len(found) >= need:
                break
        rows = [TrackRow(*r) for r in found[q.offset : need]]
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
    ``sender``, ``sender_domain``, ``recipient_domain``, ``account``, ``remote_host``,
    ``host`` (the syslog host)."""
    expressions = {
        "reason": "coalesce(reason, '')",
        "sender": "coalesce(sender, '')",
        "sender_domain": "sender_domain",
        "recipient_domain": "lower(split_part(recipient, '@', 2))",
        "account": "account",
        "remote_host": "coalesce(remote_host, '')",
        "host": "split_part(scope, '/', 1)",  # model.host_of, as the host filter
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
    if q.host is not None:
        clauses.append("split_part(scope, '/', 1) = ?")
        params.append(q.host)
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
            ts=_naive(seen),
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
            sent_at=_naive(accepted) if accepted else None,
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
    # one equality per query: DuckDB then filters in the scan (an OR of columns it cannot)
    ids = {
        r[0]
        for r in con.execute(
            "SELECT queue_id FROM events WHERE queue_id = ? UNION "
            "SELECT queue_id FROM events WHERE origin = ? UNION "
            "SELECT queue_id FROM events WHERE message_id = ?",
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
    for _ in range(4):  # the re-injection of a bounce of the message: three links away
        known = sorted(ids)
        links = [
            f"SELECT queue_id FROM events WHERE {column} = ?"
            for column in ("origin", "parent")
            for _ in known
        ]
        more = {r[0] for r in con.execute(" UNION ".join(links), known * 2).fetchall()}
        if more <= ids:
            break
        ids |= more
    roots = sorted(ids)
    parts = [
        f"SELECT {', '.join(COLUMNS)} FROM events WHERE {column} = ?"
        for column in ("queue_id", "origin", "parent")
        for _ in roots
    ]
    rows = [
        TrackRow(*r)
        for r in con.execute(
            " UNION ALL ".join(parts),
            roots * 3,
        ).fetchall()
    ]
    for qid in roots:
        rows += in_progress(con, TrackQuery(*far, queue_id=qid, newest_first=False, limit=None))
    # in time order; within one second a message before the queue ids it led to (its
    # re-injection, its bounce: whose receipt may have been logged before the line naming
    # its parent, so it is known by its other rows), a receipt before the attempts
    depth = _depths(rows)
    rows.sort(
        key=lambda r: (r.ts, depth[r.queue_id], r.outcome != SEND, r.queue_id, r.recipient)
    )
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


def _depths(rows: list[TrackRow]) -> dict[str, int]:
    """How many links (``origin``, ``parent``) each queue id is from a message of its own."""
    up: dict[str, str] = {}
    for r in rows:
        link = r.origin or r.parent
        if link and link != r.queue_id:
            up.setdefault(r.queue_id, link)
    depth: dict[str, int] = {}
    for start in {r.queue_id for r in rows}:
        qid, n = start, 0
        while qid in up and n < 8:  # a loop of links (damaged rows) ends
            qid, n = up[qid], n + 1
        depth[start] = n
    return depth


def distinct(con: duckdb.DuckDBPyConnection, q: TrackQuery, what: str) -> int:
    """How many different values of ``what`` the rows of ``q`` have (empty values are not
    counted): ``sender``, ``sender_domain``, ``recipient``, ``recipient_domain``,
    ``client_host`` (a receipt's client host, else its IP)."""
    expressions = {
        "sender": "nullif(lower(sender), '')",
        "sender_domain": "nullif(sender_domain, '')",
        "recipient": "nullif(lower(recipient), '')",
        "recipient_domain": "nullif(lower(split_part(recipient, '@', 2)), '')",
        "client_host": "nullif(coalesce(nullif(client_host, ''), client_ip), '')",
    }
    expr = expressions[what]
    stored = _stored_types(q)
    if not stored:
        return 0
    where, params = _where(q, stored)
    row = con.execute(f"SELECT count(DISTINCT {expr}) FROM events WHERE {where}", params).fetchone()
    return int(row[0]) if row else 0


def newest_of_store(con: duckdb.DuckDBPyConnection) -> datetime | None:
    """The time of the newest stored row (or message still in the queue), None when there is
    none: where the CLI's default windows end, so they follow the data, not the clock."""
    row = con.execute(
        "SELECT greatest((SELECT max(ts) FROM events), "
        "(SELECT max(accepted_at) FROM pending WHERE received))"
    ).fetchone()
    if row is None or row[0] is None:
        return None
    ts: datetime = row[0]
    return ts.replace(tzinfo=UTC)
