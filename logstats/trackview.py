"""What ``logstats search``, ``trace`` and ``report`` print: Track Delivery rows as text.

Pure functions from :mod:`logstats.track` rows (and the store's counters, for the report)
to small named types and to text; the commands in :mod:`logstats.cli` open the store and
print.  No SQL here: every read goes through ``track`` or ``store``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

from logstats import store, track
from logstats.model import SYSTEM, SeriesRequest, StatsRequest
from logstats.track import TrackQuery, TrackRow

FINAL = frozenset({track.DELIVERED, track.FAILED, track.REJECTED, track.EXPIRED})
REASON_WIDTH = 60  # the reason column off a terminal


def _when(ts: datetime | None) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


# -- search --------------------------------------------------------------------------


def search_table(rows: Sequence[TrackRow], width: int | None = None) -> str:
    """Aligned columns time, type, account, sender, recipient, reason (UTC); the reason is
    cut so a line fits ``width`` characters (at least 20 of it), or to 60 without one."""
    header = ("TIME (UTC)", "TYPE", "ACCOUNT", "SENDER", "RECIPIENT")
    cells = [(_when(r.ts), r.outcome, r.account, r.sender or "", r.recipient) for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(header)]
    room = REASON_WIDTH
    if width is not None:
        room = max(20, width - sum(widths) - 2 * len(widths))
    lines = []
    for cols, reason in [(header, "REASON")] + [
        (c, (r.reason or "").replace("\n", " ")) for c, r in zip(cells, rows, strict=True)
    ]:
        cut = reason if len(reason) <= room else reason[: room - 1] + "…"
        lines.append("  ".join(v.ljust(w) for v, w in zip(cols, widths, strict=True)) + "  " + cut)
    return "\n".join(line.rstrip() for line in lines)


# -- trace ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageLife:
    """One queue id of a traced message: its receipt, attempts, hops, bounces, queue."""

    queue_id: str
    mta: str
    receipt: TrackRow | None
    attempts: tuple[TrackRow, ...]  # delivered, deferred, failed, rejected, expired
    continues: str | None  # the queue id this one continues after a content filter
    continued_as: tuple[str, ...]  # queue ids that continue this one
    bounces: tuple[str, ...]  # queue ids of the bounces about this one
    in_queue: tuple[TrackRow, ...]  # what is still waiting
    complete: bool  # every recipient has a final outcome and nothing is queued

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue_id": self.queue_id,
            "mta": self.mta,
            "receipt": self.receipt.as_dict() if self.receipt else None,
            "attempts": [r.as_dict() for r in self.attempts],
            "continues": self.continues,
            "continued_as": list(self.continued_as),
            "bounces": list(self.bounces),
            "in_queue": [r.as_dict() for r in self.in_queue],
            "complete": self.complete,
        }


def lives(rows: Sequence[TrackRow]) -> list[MessageLife]:
    """``track.trace`` rows grouped by queue id, in the order each id first appears."""
    ids = list(dict.fromkeys(r.queue_id for r in rows))
    out = []
    for qid in ids:
        mine = [r for r in rows if r.queue_id == qid]
        receipt = next((r for r in mine if r.outcome == track.SEND), None)
        attempts = tuple(r for r in mine if r.outcome not in (track.SEND, track.INPROGRESS))
        queued = tuple(r for r in mine if r.outcome == track.INPROGRESS)
        final = {r.recipient.lower() for r in attempts if r.outcome in FINAL}
        tried = {r.recipient.lower() for r in attempts}
        continued = tuple(dict.fromkeys(r.queue_id for r in rows if r.origin == qid))
        origin = next((r.origin for r in mine if r.origin), None)
        out.append(
            MessageLife(
                queue_id=qid,
                mta=mine[0].mta,
                receipt=receipt,
                attempts=attempts,
                continues=origin,
                continued_as=continued,
                bounces=tuple(dict.fromkeys(r.queue_id for r in rows if r.parent == qid)),
                in_queue=queued,
                complete=(not queued and bool(tried) and tried <= final) or bool(continued),
            )
        )
    return out


def trace_text(ident: str, found: Sequence[MessageLife]) -> str:
    """The life of a message as lines for a terminal or a mail."""
    lines = [f"trace of {ident}: {len(found)} queue id{'s' if len(found) != 1 else ''}"]
    for life in found:
        lines.append("")
        head = f"{life.queue_id} ({life.mta})"
        if life.continues:
            head += f", continues {life.continues} after the content filter"
        lines.append(head)
        r = life.receipt
        if r is not None:
            client = r.client_host or ""
            if r.client_ip:
                client += f"[{r.client_ip}]"
            parts = [
                f"from <{r.sender or ''}>",
                f"size {r.size}",
                f"account {r.account}",
                f"client {client or 'local'}",
            ]
            if r.auth:
                parts.append(f"auth {r.auth}")
            parts.append(f"message-id {r.message_id or '-'}")
            lines.append(f"  {_when(r.ts)}  received  " + ", ".join(parts))
        elif not life.continues:
            lines.append("  (its receipt is not stored)")
        for a in life.attempts:
            via = a.remote_host or ""
            if a.remote_ip:
                via += f"[{a.remote_ip}]"
            text = f"  {_when(a.ts)}  {a.outcome:<9} {a.recipient or '-'}"
            if via:
                text += f" via {via}"
            if a.dsn:
                text += f" dsn={a.dsn}"
            if a.reason:
                text += f": {a.reason}"
            lines.append(text)
        for nxt in life.continued_as:
            lines.append(f"  hop: handed to the content filter, continued as {nxt}")
        for b in life.bounces:
            lines.append(f"  bounce: the non-delivery notice is {b}")
        for q in life.in_queue:
            who = q.recipient or "(no recipient tried yet)"
            lines.append(f"  {_when(q.ts)}  in queue  {who}: {q.reason}")
        if life.complete:
            lines.append("  complete: every recipient has a final outcome")
        elif not life.in_queue:
            lines.append("  not complete: no final outcome stored for every recipient")
    return "\n".join(lines)


# -- report --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Totals:
    """The Grand Totals of a report.  ``received + rejected`` is EmailTrack's SENDCOUNT,
    ``bounced + rejected`` its FAILCOUNT; ``delivered``, ``deferred``, ``bytes_delivered``
    and ``in_progress`` are SUCCESSCOUNT, DEFERCOUNT, TOTALSIZE and INPROGRESSCOUNT."""

    received: int  # messages accepted (bounces made here included: ``generated``)
    generated: int  # of received: messages the MTA made itself (bounces, warnings)
    delivered: int  # recipients delivered
    deferred: int  # deferral events
    bounced: int  # recipients failed after acceptance (or expired)
    rejected: int  # recipients rejected at SMTP time
    bytes_delivered: int
    in_progress: int  # messages accepted in the window and still in the queue
    senders: int
    sending_hosts: int
    sending_domains: int
    recipients: int
    recipient_domains: int


@dataclass(frozen=True, slots=True)
class Report:
    start: datetime
    end: datetime
    totals: Totals
    hourly: tuple[tuple[datetime, dict[str, int]], ...]  # hour -> {type: rows}
    tops: dict[str, list[tuple[str, int]]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "totals": {k: getattr(self.totals, k) for k in Totals.__dataclass_fields__},
            "hourly": [{"hour": h.isoformat(), **c} for h, c in self.hourly],
            "top": {
                k: [{"value": v, "count": n} for v, n in rows] for k, rows in self.tops.items()
            },
        }


HOURLY_TYPES = (track.SEND, track.DELIVERED, track.DEFERRED, track.FAILED, track.REJECTED)
TOPS = (  # (name, what, types)
    ("senders", "sender", (track.SEND,)),
    ("sender_domains", "sender_domain", (track.SEND,)),
    ("recipient_domains", "recipient_domain", (track.DELIVERED,)),
    ("deferral_reasons", "reason", (track.DEFERRED,)),
    ("bounce_reasons", "reason", (track.FAILED, track.EXPIRED)),
    ("reject_reasons", "reason", (track.REJECTED,)),
)


FILLED = timedelta(days=7)  # windows up to this long list hours without traffic too


def hour_window(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """The window widened to whole hours: the counters are per hour, so the totals (from the
    counters) and the rows (from ``events``) then cover the same time."""
    start = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    end = end.astimezone(UTC)
    whole = end.replace(minute=0, second=0, microsecond=0)
    return start, whole if whole == end else whole + timedelta(hours=1)


def build_report(
    con: duckdb.DuckDBPyConnection, start: datetime, end: datetime, n: int = 10
) -> Report:
    """The report over [start, end) (widened to whole hours), every account."""
    start, end = hour_window(start, end)
    stats = store.account_stats(con, StatsRequest(start=start, end=end))
    whole = store.series(con, SeriesRequest(start=start, end=end, resolution=None))
    rejected = sum(row.rejected for row in whole)
    sends = sum(s.sendcount for s in stats)
    fails = sum(s.failcount for s in stats)

    def q(*types: str) -> TrackQuery:
        return TrackQuery(start=start, end=end, types=frozenset(types), limit=None)

    receipts, delivered = q(track.SEND), q(track.DELIVERED)
    totals = Totals(
        received=sends - rejected,
        generated=sum(s.sendcount for s in stats if s.account == SYSTEM),
        delivered=sum(s.successcount for s in stats),
        deferred=sum(s.defercount for s in stats),
        bounced=fails - rejected,
        rejected=rejected,
        bytes_delivered=sum(s.totalsize for s in stats),
        in_progress=sum(s.inprogresscount for s in stats),
        senders=track.distinct(con, receipts, "sender"),
        sending_hosts=track.distinct(con, receipts, "client_host"),
        sending_domains=track.distinct(con, receipts, "sender_domain"),
        recipients=track.distinct(con, delivered, "recipient"),
        recipient_domains=track.distinct(con, delivered, "recipient_domain"),
    )
    per_hour: dict[datetime, dict[str, int]] = {}
    hour = start
    while hour < end and end - start <= FILLED:  # a day or a week: every hour, as pflogsumm
        per_hour[hour] = dict.fromkeys(HOURLY_TYPES, 0)
        hour += timedelta(hours=1)
    for h, outcome, rows in track.hourly(con, q(*HOURLY_TYPES)):
        per_hour.setdefault(h, dict.fromkeys(HOURLY_TYPES, 0))[outcome] = rows
    tops = {name: track.top(con, q(*types), what, n) for name, what, types in TOPS}
    return Report(start, end, totals, tuple(sorted(per_hour.items())), tops)


TITLES = {
    "senders": "Senders by message count",
    "sender_domains": "Sender domains by message count",
    "recipient_domains": "Recipient domains by delivered recipients",
    "deferral_reasons": "Deferral reasons",
    "bounce_reasons": "Bounce reasons",
    "reject_reasons": "Reject reasons",
}


def _size(n: int) -> str:
    """pflogsumm's way: bytes, then k or m above 512 k / 512 m."""
    if n >= 512 * 1024 * 1024:
        return f"{n // (1024 * 1024)}m"
    if n >= 512 * 1024:
        return f"{n // 1024}k"
    return str(n)


def report_text(r: Report, host: str = "") -> str:
    """The report as fixed-width text for a mail, in pflogsumm's sections."""
    t = r.totals
    span = f"{_when(r.start)} to {_when(r.end)} UTC"
    out = [f"logstats report{' for ' + host if host else ''}: {span}", "", "Grand Totals"]
    out.append("------------")
    out.append("messages")
    out.append("")
    out += [
        f"{t.received:8d}   received"
        + (f" ({t.generated} made by this MTA: bounces, warnings)" if t.generated else ""),
        f"{t.delivered:8d}   delivered",
        f"{t.deferred:8d}   deferred",
        f"{t.bounced:8d}   bounced",
        f"{t.rejected:8d}   rejected",
        f"{t.in_progress:8d}   still in the queue",
        "",
        f"{_size(t.bytes_delivered):>8}   bytes delivered",
        f"{t.senders:8d}   senders",
        f"{t.sending_hosts:8d}   sending hosts",
        f"{t.sending_domains:8d}   sending domains",
        f"{t.recipients:8d}   recipients",
        f"{t.recipient_domains:8d}   recipient domains",
        "",
        "",
        "Per-Hour Traffic Summary (UTC)",
        "------------------------------",
        "    time          received  delivered   deferred    bounced   rejected",
    ]
    for h, c in r.hourly:
        stamp = h.strftime("%m-%d %H00-") + (h + timedelta(hours=1)).strftime("%H00")
        out.append(
            f"    {stamp}  {c[track.SEND]:8d}   {c[track.DELIVERED]:8d}   "
            f"{c[track.DEFERRED]:8d}   {c[track.FAILED]:8d}   {c[track.REJECTED]:8d}"
        )
    for name, title in TITLES.items():
        out += ["", "", title, "-" * len(title)]
        rows = r.tops.get(name, [])
        if not rows:
            out.append(" none")
        for value, n in rows:
            out.append(f"{n:8d}   {value or ('<>' if name == 'senders' else '(none)')}")
    return "\n".join(out) + "\n"


# -- one answer for the CLI, from the file or from the daemon ---------------------------

COMMANDS = ("search", "trace", "report")
SEARCH_FILTERS = (
    "account", "sender", "recipient", "domain", "queue_id", "message_id", "tag", "host",
)  # fmt: skip


class BadRequest(ValueError):
    """A request that cannot be answered (a window that ends before it starts)."""


def _time(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    ts = datetime.fromisoformat(str(value))
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def row_from_dict(d: dict[str, Any]) -> TrackRow:
    """A row back from ``TrackRow.as_dict()`` (what the daemon sends)."""
    return TrackRow(**{**d, "ts": _time(d["ts"]), "sent_at": _time(d.get("sent_at"))})


def report_from_dict(d: dict[str, Any]) -> Report:
    """A report back from ``Report.as_dict()``."""
    hourly = tuple(
        (_time(h["hour"]) or datetime.min, {k: int(v) for k, v in h.items() if k != "hour"})
        for h in d["hourly"]
    )
    return Report(
        start=_time(d["start"]) or datetime.min,
        end=_time(d["end"]) or datetime.min,
        totals=Totals(**d["totals"]),
        hourly=hourly,
        tops={k: [(v["value"], int(v["count"])) for v in rows] for k, rows in d["top"].items()},
    )


def answer(con: duckdb.DuckDBPyConnection, command: str, request: dict[str, Any]) -> dict[str, Any]:
    """What ``logstats search|trace|report`` print, as JSON: the same function answers from
    the file and in the daemon (``GET /v1/track`` on its socket).  Default windows follow
    the newest stored row, never the clock.  ``BadRequest`` for a window that is empty."""
    if command == "trace":
        return {"rows": [r.as_dict() for r in track.trace(con, str(request["id"]))]}
    newest = track.newest_of_store(con)
    start, end = _time(request.get("start")), _time(request.get("end"))
    if command == "search":
        end = end or (newest or datetime(1970, 1, 1, tzinfo=UTC)) + timedelta(microseconds=1)
        start = start or end - timedelta(hours=24)
        if start >= end:
            raise BadRequest("--start must be before --end")
        types = request.get("types") or list(track.RECIPIENT_TYPES)
        q = TrackQuery(
            start=start,
            end=end,
            types=frozenset(str(t) for t in types),
            newest_first=not request.get("oldest_first"),
            limit=int(request.get("limit") or 250),
            **{k: request[k] for k in SEARCH_FILTERS if request.get(k) is not None},
        )
        return {"rows": [r.as_dict() for r in track.search(con, q)]}
    if command != "report":
        raise BadRequest(f"{command!r}: not one of {', '.join(COMMANDS)}")
    day = _time(request.get("day"))
    if end is not None and start is None:
        raise BadRequest("--end needs --start (or give --day)")
    if day is not None:
        start, end = day, day + timedelta(days=1)
    elif start is not None:
        end = end or (newest or start) + timedelta(microseconds=1)
    else:
        if newest is None:
            raise BadRequest("the store holds no rows yet: nothing to report")
        today = newest.replace(hour=0, minute=0, second=0, microsecond=0)
        start, end = today - timedelta(days=1), today
    if end is None or start >= end:
        raise BadRequest("--start must be before --end")
    return build_report(con, start, end, int(request.get("top") or 10)).as_dict()
