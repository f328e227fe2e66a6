"""SendGrid reseller customer statistics, from ``sendgrid-reseller-customer-stats.md``.

The document's examples are damaged (NOTES.md); these schemas carry its field and element
names in valid JSON and well-formed XML.  Errors: the v2 Web API envelope (the document
shows none).
"""

from __future__ import annotations

from typing import Any

DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
INT = r"0|[1-9][0-9]*"
FIELDS = ["requests", "bounces", "clicks", "opens", "spamreports"]
COUNT = {"type": "integer", "minimum": 0}


def _object(props: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": list(props),
        "additionalProperties": False,
    }


TOTALS = _object(dict.fromkeys(FIELDS, COUNT))
DAY = _object({"date": {"type": "string", "pattern": DATE}} | dict.fromkeys(FIELDS, COUNT))
CATEGORY_DAY = _object(
    {"date": {"type": "string", "pattern": DATE}, "category": {"type": "string"}}
    | dict.fromkeys(FIELDS, COUNT)
)

DAYS = {"type": "array", "items": DAY}
AGGREGATE = TOTALS
LIST = {"type": "array", "items": _object({"category": {"type": "string"}})}
CATEGORY = {"type": "array", "items": CATEGORY_DAY}
ERROR = _object(
    {"message": {"const": "error"}, "errors": {"type": "array", "items": {"type": "string"}}}
)


def _leaf(tag: str, text: str = ".*") -> dict[str, Any]:
    return {"tag": tag, "text": text}


_COUNTS_XML = [_leaf(f, INT) for f in FIELDS]
DAYS_XML = {"tag": "stats", "each": {"tag": "day", "children": [_leaf("date", DATE), *_COUNTS_XML]}}
AGGREGATE_XML = {"tag": "stats", "children": _COUNTS_XML}
LIST_XML = {"tag": "categories", "each": _leaf("category", "(?s).+")}
CATEGORY_XML = {
    "tag": "stats",
    "each": {
        "tag": "day",
        "children": [_leaf("date", DATE), _leaf("category", "(?s).+"), *_COUNTS_XML],
    },
}
ERROR_XML = {
    "tag": "result",
    "children": [_leaf("message", "error"), {"tag": "errors", "each": _leaf("error", "(?s).+")}],
}
