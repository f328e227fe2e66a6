"""cPanel API 2 ``EmailTrack::search``: request parameters -> a track query, rows -> rows.

cPanel's document ("cPanel API 2 Functions - EmailTrack::search") names the call, the
flags and the envelope (``cpanelresult`` with ``metadata.overflowed``); the behaviour
below follows cPanel's own implementation of the search (Cpanel::DeliveryReporter):

- ``success``, ``defer``, ``failure``, ``inprogress``: 0 unless given as a true value, so
  a bare call answers no rows.  ``failure`` brings both ``failure`` and ``rejected`` rows.
- ``max_results_by_type``: default 250, values over 5000 are 5000, 0 is no limit.  Each
  asked type gives at most that many rows (its newest), and the whole answer too.
- ``overflowed``: 1 when a limit is set and more than 5000 rows matched (cPanel's rule:
  it does not say "more than were returned" for smaller limits).
- ``deliverytype``: ``remote`` or ``local`` keeps only the successful deliveries of that
  kind (cPanel then leaves out failures and deferrals, which have no delivery type);
  ``all`` or empty: every row.
- ``startdate``/``enddate``: Unix times bounding the action time, both inclusive; without
  them every kept row (cPanel has no default window; the store's retention bounds it).
- rows newest first by send time (``sendunixtime``), then action time.
- ``actiontime``: the action time as "YYYY-MM-DD HH:MM:SS" in the configured
  ``timezone`` (cPanel prints server-local time); ``sendunixtime`` and
  ``actionunixtime`` are strings of whole seconds.

Decisions where neither says: ``type`` is ``success`` for every delivery (logstats does
not see cPanel's ``**bypassed**``/``archiver_`` transports, so never ``filtered`` or
``archive``); an expired message is a ``failure``; ``deliveryuser``/``deliverydomain``
are the account owning the recipient's domain (the account map) and the recipient's
domain for local deliveries, null for remote ones and for rows that are not deliveries
(cPanel's NULL); ``deliveredto`` is the delivered address for successes, null otherwise;
``msgid`` is the MTA's queue id (cPanel's msgid is Exim's message id); ``spamscore`` is
"" (not kept); in-progress rows name ``unknown`` where no recipient is known, as cPanel
does, and are not limited to two hours around now (the queue says what is in progress).
A flag, ``max_results_by_type``, ``startdate``/``enddate`` or ``deliverytype`` that is not
one of its values is a failure (``event.result`` 0) naming it, never a server error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

from logstats import track
from logstats.shapes import EPOCH, FAR_FUTURE, host_value

MAX_RESULTS_DEFAULT = 250
MAX_RESULTS_MAXIMUM = 5000
MAX_UNIX = int(FAR_FUTURE.timestamp()) - 1  # 9998-12-31T23:59:59Z: later ones are refused

# the flags, and the stored outcomes each brings (cPanel: one subquery per flag)
FLAGS: dict[str, tuple[str, ...]] = {
    "success": (track.DELIVERED,),
    "defer": (track.DEFERRED,),
    "failure": (track.FAILED, track.EXPIRED, track.REJECTED),
    "inprogress": (track.INPROGRESS,),
}
TYPE_OF = {
    track.DELIVERED: "success",
    track.DEFERRED: "defer",
    track.FAILED: "failure",
    track.EXPIRED: "failure",
    track.REJECTED: "rejected",
    track.INPROGRESS: "inprogress",
}


class SearchError(ValueError):
    """A parameter the search cannot use; the message names it."""


@dataclass(frozen=True, slots=True)
class Search:
    """A parsed call: which flags, the per-type limit (None: none), the window, the kind
    of delivery (None: all)."""

    flags: tuple[str, ...]
    limit: int | None
    start: datetime
    end: datetime
    local: bool | None
    host: str | None = None  # one syslog host (``host=``), None: every host

    def queries(self, accounts: tuple[str, ...] | None) -> list[track.TrackQuery]:
        """One query per asked flag (each limited to ``limit`` rows, newest first)."""
        out = []
        for flag in self.flags:
            if self.local is not None and flag in ("defer", "failure"):
                continue  # only deliveries have a delivery type
            out.append(
                track.TrackQuery(
                    self.start,
                    self.end,
                    accounts=accounts,
                    types=frozenset(FLAGS[flag]),
                    local=self.local if flag == "success" else None,
                    limit=self.limit,
                    host=self.host,
                )
            )
        return out


def _flag(params: Mapping[str, str], name: str) -> bool:
    value = (params.get(name) or "0").strip().lower()
    if value in ("0", "", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise SearchError(f"{name}: {params[name]!r} is not 0 or 1")


def _unix(params: Mapping[str, str], name: str) -> int | None:
    value = (params.get(name) or "").strip()
    if not value:
        return None
    if not (value.isascii() and value.isdigit()) or int(value) > MAX_UNIX:
        raise SearchError(f"{name}: {value!r} is not a Unix time (whole seconds, 0 to {MAX_UNIX})")
    return int(value)


def parse(params: Mapping[str, str]) -> Search:
    """The search a call asks for (SearchError names a parameter it cannot use)."""
    flags = tuple(f for f in FLAGS if _flag(params, f))
    raw = (params.get("max_results_by_type") or "").strip()
    if not raw:
        limit: int | None = MAX_RESULTS_DEFAULT
    elif raw.isascii() and raw.isdigit():
        limit = min(int(raw), MAX_RESULTS_MAXIMUM) or None
    else:
        raise SearchError(f"max_results_by_type: {raw!r} is not a whole number (0: no limit)")
    start, end = _unix(params, "startdate"), _unix(params, "enddate")
    if start is not None and end is not None and start > end:
        raise SearchError("startdate must not be after enddate")
    kind = (params.get("deliverytype") or "all").strip()
    if kind not in ("all", "remote", "local"):
        raise SearchError(f"deliverytype: {kind!r} is not all, remote or local")
    try:
        host = host_value(params)
    except ValueError as exc:
        raise SearchError(str(exc)) from exc
    return Search(
        flags,
        limit,
        EPOCH if start is None else datetime.fromtimestamp(start, UTC),
        FAR_FUTURE if end is None else datetime.fromtimestamp(end, UTC) + timedelta(seconds=1),
        None if kind == "all" else kind == "local",
        host,
    )


def _stamp(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts


def row(r: track.TrackRow, tz: tzinfo, owners: Mapping[str, str]) -> dict[str, Any]:
    """One cPanel row for a track row (fields as cPanel names and types them)."""
    acted = _stamp(r.ts)
    sent = _stamp(r.sent_at) if r.sent_at is not None else acted
    kind = TYPE_OF.get(r.outcome, "failure")
    delivered = kind == "success"
    local = bool(r.local) if delivered else False
    unknown = "unknown" if kind == "inprogress" else ""
    domain = r.recipient_domain
    recipient = r.orig_recipient or r.recipient or unknown
    if kind == "success":
        message = "Accepted"
    elif kind == "inprogress":
        message = "In progress"
    else:
        message = r.reason or ""
    return {
        "type": kind,
        "user": r.account,
        "domain": r.sender_domain,
        "sender": r.sender or "",
        "email": r.sender or "",
        "size": int(r.size or 0),
        "msgid": r.queue_id,
        "senderhost": r.client_host or "",
        "senderip": r.client_ip or "",
        "senderauth": r.auth or "",
        "spamscore": "",
        "sendunixtime": str(int(sent.timestamp())),
        "message": message,
        "recipient": recipient,
        "deliveredto": (r.recipient or None) if delivered else None,
        "deliveryuser": owners.get(domain) if delivered and local else None,
        "deliverydomain": (domain or None) if delivered and local else None,
        "router": r.router or unknown,
        "host": r.remote_host or unknown,
        "ip": r.remote_ip or unknown,
        "transport": r.transport or unknown,
        "actiontime": acted.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S"),
        "actionunixtime": str(int(acted.timestamp())),
        "transport_is_remote": delivered and not local,
    }


def answer(
    search: Search,
    rows: list[track.TrackRow],
    matched: int,
    tz: tzinfo,
    owners: Mapping[str, str],
) -> tuple[list[dict[str, Any]], int]:
    """(rows newest first by send time and cut to the limit, ``overflowed``) for the rows
    of every asked type and how many rows matched in all."""
    out = [row(r, tz, owners) for r in rows]
    out.sort(key=lambda d: (int(d["sendunixtime"]), int(d["actionunixtime"])), reverse=True)
    if search.limit is not None:
        out = out[: search.limit]
    overflowed = int(search.limit is not None and matched > MAX_RESULTS_MAXIMUM)
    return out, overflowed


def envelope(
    data: list[dict[str, Any]], overflowed: int, page: dict[str, int] | None
) -> dict[str, Any]:
    """cPanel API 2's answer for the call."""
    result: dict[str, Any] = {
        "apiversion": 2,
        "data": data,
        "event": {"result": 1},
        "func": "search",
        "metadata": {"overflowed": overflowed},
        "module": "EmailTrack",
    }
    if page is not None:
        result["paginate"] = page
    return {"cpanelresult": result}
