"""Pure functions from stored numbers to the answer shapes of well-known APIs.

No database, no IO: ``cli`` and ``api`` fetch ``AccountStats`` from the store and pass
them here.  The shapes follow the documents in the project's API seeds exactly.
"""

from __future__ import annotations

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


def emailtrack_table(stats: list[AccountStats]) -> str:
    """All accounts as an aligned text table (the CLI's default for ``--all``)."""
    header = ("ACCOUNT", *EMAILTRACK_FIELDS)
    rows = [header] + [(s.account, *emailtrack_row(s).values()) for s in stats]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
