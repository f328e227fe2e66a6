"""SMTPeter ``GET /v1/stats/{tag}``, from ``smtpeter-stats.md`` (complete as it stands)."""

from __future__ import annotations

STAMP = r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-2][0-9]:[0-5][0-9]:[0-5][0-9]"
COUNT = {"type": "integer", "minimum": 0}

STATS = {
    "type": "object",
    "properties": {
        "first": {"type": "string", "pattern": STAMP},
        "last": {"type": "string", "pattern": STAMP},
        "opens": COUNT,
        "clicks": COUNT,
        "messages": COUNT,
        "deliveries": COUNT,
    },
    "required": ["first", "last", "opens", "clicks", "messages", "deliveries"],
    "additionalProperties": False,
}
# The document shows no error; the service answers an HTTP error status with a textual
# explanation, given here as {"error": "..."}.
ERROR = {
    "type": "object",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
    "additionalProperties": False,
}
