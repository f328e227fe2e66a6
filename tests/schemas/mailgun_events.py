"""Mailgun events answers, from Mailgun's Events API reference (``GET /v3/{domain}/events``:
``{"items": [...], "paging": {first, last, next, previous}}``, each paging entry a URL) and
its event structure (``event``, ``id``, ``timestamp`` as float epoch, ``log-level``,
``recipient``, ``envelope`` {sender, targets, transport}, ``message`` {headers, size},
``delivery-status`` {code, message, description, mx-host} on delivered/failed, ``severity``
temporary|permanent and ``reason`` on failed)."""

from __future__ import annotations

from typing import Any

EVENT_TYPES = ["accepted", "rejected", "delivered", "failed", "opened", "clicked",
               "unsubscribed", "complained", "stored"]  # fmt: skip
URL = {"type": "string", "pattern": r"^https?://[^/]+/v3/[^/]+/events/([A-Za-z0-9_-]+)\?page=\1"}

STATUS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "code": {"type": "integer"},
        "message": {"type": "string"},
        "description": {"type": "string"},
        "mx-host": {"type": "string"},
        "enhanced-code": {"type": "string"},
        "attempt-no": {"type": "integer"},
    },
    "required": ["code", "message", "description"],
}

ITEM: dict[str, Any] = {
    "type": "object",
    "properties": {
        "event": {"enum": EVENT_TYPES},
        "id": {"type": "string", "minLength": 1},
        "timestamp": {"type": "number"},
        "log-level": {"enum": ["info", "warn", "error"]},
        "recipient": {"type": "string"},
        "recipient-domain": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "envelope": {
            "type": "object",
            "properties": {
                "sender": {"type": "string"},
                "targets": {"type": "string"},
                "transport": {"type": "string"},
            },
            "required": ["sender", "targets", "transport"],
        },
        "message": {
            "type": "object",
            "properties": {
                "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                "size": {"type": "integer", "minimum": 0},
            },
            "required": ["headers", "size"],
        },
        "delivery-status": STATUS,
        "severity": {"enum": ["temporary", "permanent"]},
        "reason": {"type": "string"},
    },
    "required": ["event", "id", "timestamp", "log-level", "envelope", "message", "tags"],
}

# what each type adds to the required fields
REQUIRED_BY_EVENT = {
    "accepted": [],
    "delivered": ["delivery-status", "recipient", "recipient-domain"],
    "failed": ["delivery-status", "recipient", "recipient-domain", "severity", "reason"],
}


def item(event: str) -> dict[str, Any]:
    """The schema of one item of ``event``'s type."""
    return ITEM | {"required": [*ITEM["required"], *REQUIRED_BY_EVENT[event]]}


ENVELOPE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "items": {"type": "array", "items": ITEM},
        "paging": {
            "type": "object",
            "properties": dict.fromkeys(("first", "last", "next", "previous"), URL),
            "required": ["first", "last", "next", "previous"],
        },
    },
    "required": ["items", "paging"],
}
