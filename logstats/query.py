"""Pure functions from stored numbers to the answer shapes of well-known APIs.

No database, no IO: ``cli`` and ``api`` fetch ``AccountStats`` from the store and pass
them here.  The shapes follow the documents in the project's API seeds exactly.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from logstats.model import AccountStats

EMAILTRACK_FIELDS = (
    "TOTALSIZE",
    "SUCCESSCOUNT",
    "SENDCOUNT",
    "DEFERCOUNT",
    "FAILCOUNT",
    "INPROGRESSCOUNT",
    "DEFERFAILCOUNT",
)


def emailtrack_row(
    s: AccountStats, *, nosize: bool = False, nosuccess: bool = False
) -> dict[str, str]:
    """One ``data`` row of cPanel API2 ``EmailTrack::stats``; counts are JSON strings, as
    the real service answers."""
    row = {
        "TOTALSIZE": str(s.totalsize),
        "SUCCESSCOUNT": str(s.successcount),
        "SENDCOUNT": str(s.sendcount),
        "DEFERCOUNT": str(s.defercount),
        "FAILCOUNT": str(s.failcount),
        "INPROGRESSCOUNT": str(s.inprogresscount),
        "DEFERFAILCOUNT": str(s.defercount + s.failcount),
    }
    if nosize:
        del row["TOTALSIZE"]
    if nosuccess:
        del row["SUCCESSCOUNT"]
    return row


def emailtrack_stats(
    stats: AccountStats, *, nosize: bool = False, nosuccess: bool = False
) -> dict[str, Any]:
    """The ``cpanelresult`` envelope of ``EmailTrack::stats`` for one account."""
    return {
        "cpanelresult": {
            "apiversion": 2,
            "func": "stats",
            "data": [emailtrack_row(stats, nosize=nosize, nosuccess=nosuccess)],
            "event": {"result": 1},
            "module": "EmailTrack",
        }
    }


def emailtrack_error(reason: str) -> dict[str, Any]:
    """A failed ``EmailTrack::stats`` call: ``event.result`` 0 and the reason."""
    return {
        "cpanelresult": {
            "apiversion": 2,
            "func": "stats",
            "data": [],
            "event": {"result": 0, "reason": reason},
            "error": reason,
            "module": "EmailTrack",
        }
    }


def emailtrack_table(rows: dict[str, dict[str, str]]) -> str:
    """``{account: row}`` as an aligned text table (the CLI's default for ``--all``)."""
    fields = next(iter(rows.values())).keys() if rows else EMAILTRACK_FIELDS
    header = ("ACCOUNT", *fields)
    table = [header] + [(account, *row.values()) for account, row in rows.items()]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = []
    for r in table:
        cells = [r[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def apply_deliverytype(stats: list[AccountStats], deliverytype: str | None) -> list[AccountStats]:
    """cPanel's deliverytype filter on SUCCESSCOUNT and TOTALSIZE.

    ``local``: deliveries on this host only; ``remote``: deliveries to other hosts only;
    ``remote_or_faildefer``: remote deliveries, and deferrals and failures as they are.
    """
    if deliverytype in ("remote", "remote_or_faildefer"):
        return [
            replace(
                s,
                successcount=s.successcount - s.local_successcount,
                totalsize=s.totalsize - s.local_totalsize,
            )
            for s in stats
        ]
    if deliverytype == "local":
        return [
            replace(s, successcount=s.local_successcount, totalsize=s.local_totalsize)
            for s in stats
        ]
    return stats


def emailtrack_answer(
    stats: list[AccountStats],
    *,
    account: str | None,
    deliverytype: str | None = None,
    nosize: bool = False,
    nosuccess: bool = False,
) -> dict[str, Any]:
    """One account's ``cpanelresult``, or (``account`` None) ``{account: row}`` for all."""
    stats = apply_deliverytype(stats, deliverytype)
    if account is None:
        return {s.account: emailtrack_row(s, nosize=nosize, nosuccess=nosuccess) for s in stats}
    one = next((s for s in stats if s.account == account), AccountStats(account=account))
    return emailtrack_stats(one, nosize=nosize, nosuccess=nosuccess)
