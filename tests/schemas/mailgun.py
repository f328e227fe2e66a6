"""Mailgun stats answers, from ``mailgun-stats.md`` and the seeds' NOTES.md.

The document's response schema: ``description``, ``start``, ``end``, ``resolution`` (strings,
required), ``stats`` (array, required), ``tag`` (string, optional).  NOTES.md gives the
collapsed ``stats`` items: ``time`` (RFC 2822) and, for each event asked for, its block of
integers.  Aggregates: ``{"providers"|"devices"|"countries": {name: {count: integer}}}``.
"""

from __future__ import annotations

from typing import Any

RFC2822 = (
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-3][0-9] "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"[0-2][0-9]:[0-5][0-9]:[0-5][0-9] UTC"
)
COUNT = {"type": "integer", "minimum": 0}
DATE = {"type": "string", "pattern": RFC2822}


def counts(*names: str, **nested: dict[str, Any]) -> dict[str, Any]:
    """An object of exactly these integer counts (and nested objects)."""
    props: dict[str, Any] = dict.fromkeys(names, COUNT) | nested
    return {
        "type": "object",
        "properties": props,
        "required": list(props),
        "additionalProperties": False,
    }


EVENT = {
    "accepted": counts("incoming", "outgoing", "total"),
    "delivered": counts("smtp", "http", "total"),
    "failed": counts(
        temporary=counts("espblock", "total"),
        permanent=counts(
            "suppress-bounce",
            "suppress-unsubscribe",
            "suppress-complaint",
            "bounce",
            "delayed-bounce",
            "total",
        ),
    ),
    "stored": counts("total"),
    "opened": counts("total"),
    "clicked": counts("total"),
    "unsubscribed": counts("total"),
    "complained": counts("total"),
}


def stats_item(events: list[str], key: str | None = None) -> dict[str, Any]:
    """A ``stats`` item: ``time``, the group's key when grouped, and exactly ``events``."""
    props: dict[str, Any] = {"time": DATE} | {e: EVENT[e] for e in events}
    if key is not None:
        props[key] = {"type": "string"}
    return {
        "type": "object",
        "properties": props,
        "required": list(props),
        "additionalProperties": False,
    }


def envelope(events: list[str], key: str | None = None) -> dict[str, Any]:
    """``/v3/stats/total``, ``/v3/{domain}/stats/total``, ``/v3/stats/total/domains`` and
    ``/v3/stats/filter``."""
    return {
        "type": "object",
        "properties": {
            "description": {"type": "string"},
            "start": DATE,
            "end": DATE,
            "resolution": {"enum": ["hour", "day", "month"]},
            "stats": {"type": "array", "items": stats_item(events, key)},
            "tag": {"type": "string"},
        },
        "required": ["description", "start", "end", "resolution", "stats"],
        "additionalProperties": False,
    }


def aggregates(name: str, per_item: dict[str, Any] | None = None) -> dict[str, Any]:
    """``/v3/{domain}/aggregates/{name}``: ``{name: {key: {count: integer}}}``."""
    return {
        "type": "object",
        "properties": {
            name: {
                "type": "object",
                "additionalProperties": per_item
                or {
                    "type": "object",
                    "additionalProperties": COUNT,
                },
            }
        },
        "required": [name],
        "additionalProperties": False,
    }


PROVIDERS = aggregates(
    "providers",
    counts(
        "accepted",
        "clicked",
        "complained",
        "delivered",
        "opened",
        "unique_clicked",
        "unique_opened",
        "unsubscribed",
    ),
)
DEVICES = aggregates("devices")
COUNTRIES = aggregates("countries")

ERROR = {
    "type": "object",
    "properties": {"message": {"type": "string"}},
    "required": ["message"],
    "additionalProperties": False,
}
