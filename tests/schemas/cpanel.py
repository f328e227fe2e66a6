"""cPanel API 2 ``EmailTrack::search`` (``cpanel_jsonapi_func=search``), from cPanel's
document "cPanel API 2 Functions - EmailTrack::search": the ``cpanelresult`` envelope with
``metadata.overflowed``, and one row per event with the fields the document lists.

Types: ``size`` an integer, ``transport_is_remote`` a boolean, the Unix times strings of
whole seconds, ``actiontime`` "YYYY-MM-DD HH:MM:SS"; ``deliveredto``, ``deliveryuser`` and
``deliverydomain`` null where cPanel has no value (rows that are no delivery, remote
deliveries' delivery user and domain).
"""

from __future__ import annotations

STAMP = r"^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-2][0-9]:[0-5][0-9]:[0-5][0-9]$"
UNIX = {"type": "string", "pattern": r"^[0-9]+$"}
TEXT = {"type": "string"}
MAYBE = {"type": ["string", "null"]}
TYPES = ["success", "filtered", "archive", "failure", "rejected", "defer", "inprogress"]

ROW = {
    "type": "object",
    "properties": {
        "transport": TEXT,
        "ip": TEXT,
        "transport_is_remote": {"type": "boolean"},
        "deliveredto": MAYBE,
        "size": {"type": "integer", "minimum": 0},
        "deliveryuser": MAYBE,
        "sendunixtime": UNIX,
        "senderhost": TEXT,
        "domain": TEXT,
        "actionunixtime": UNIX,
        "msgid": TEXT,
        "user": TEXT,
        "recipient": TEXT,
        "actiontime": {"type": "string", "pattern": STAMP},
        "type": {"enum": TYPES},
        "sender": TEXT,
        "email": TEXT,
        "senderip": TEXT,
        "senderauth": TEXT,
        "spamscore": TEXT,
        "message": TEXT,
        "router": TEXT,
        "host": TEXT,
        "deliverydomain": MAYBE,
    },
    "additionalProperties": False,
}
ROW["required"] = list(ROW["properties"])  # type: ignore[index]

PAGINATE = {
    "type": "object",
    "properties": {
        name: {"type": "integer", "minimum": 0}
        for name in (
            "start_result",
            "results_per_page",
            "total_results",
            "total_pages",
            "current_page",
        )
    },
    "additionalProperties": False,
}
PAGINATE["required"] = list(PAGINATE["properties"])  # type: ignore[index]

SEARCH = {
    "type": "object",
    "properties": {
        "cpanelresult": {
            "type": "object",
            "properties": {
                "apiversion": {"const": 2},
                "data": {"type": "array", "items": ROW},
                "event": {
                    "type": "object",
                    "properties": {"result": {"const": 1}},
                    "required": ["result"],
                    "additionalProperties": False,
                },
                "func": {"const": "search"},
                "metadata": {
                    "type": "object",
                    "properties": {"overflowed": {"enum": [0, 1]}},
                    "required": ["overflowed"],
                    "additionalProperties": False,
                },
                "module": {"const": "EmailTrack"},
                "paginate": PAGINATE,
            },
            "required": ["apiversion", "data", "event", "func", "metadata", "module"],
            "additionalProperties": False,
        }
    },
    "required": ["cpanelresult"],
    "additionalProperties": False,
}

# a failed call: HTTP 200 (403 for a scope refusal), event.result 0 with a reason
ERROR = {
    "type": "object",
    "properties": {
        "cpanelresult": {
            "type": "object",
            "properties": {
                "apiversion": {"const": 2},
                "data": {"type": "array", "items": {}},
                "event": {
                    "type": "object",
                    "properties": {"result": {"const": 0}, "reason": TEXT},
                    "required": ["result", "reason"],
                    "additionalProperties": False,
                },
                "error": TEXT,
                "func": {"const": "search"},
                "module": {"const": "EmailTrack"},
            },
            "required": ["apiversion", "event", "error", "func", "module"],
            "additionalProperties": False,
        }
    },
    "required": ["cpanelresult"],
    "additionalProperties": False,
}

# WHM API 1 (``/json-api/<function>?api.version=1``), from "WHM API 1 Functions -
# emailtrack_search" / "- emailtrack_stats": ``data.records`` and ``metadata``
COUNT = {"type": "string", "pattern": r"^[0-9]+$"}
STATS_ROW = {
    "type": "object",
    "properties": dict.fromkeys(
        (
            "SENDCOUNT",
            "SUCCESSCOUNT",
            "DEFERCOUNT",
            "FAILCOUNT",
            "INPROGRESSCOUNT",
            "DEFERFAILCOUNT",
            "TOTALSIZE",
        ),
        COUNT,
    ),
    "additionalProperties": False,
}


def whm(command: str, row: dict[str, object], **metadata: object) -> dict[str, object]:
    """The WHM API 1 answer of ``command`` with records like ``row``."""
    meta: dict[str, object] = {
        "command": {"const": command},
        "reason": {"const": "OK"},
        "result": {"const": 1},
        "version": {"const": 1},
        **metadata,
    }
    return {
        "type": "object",
        "properties": {
            "data": {
                "type": "object",
                "properties": {"records": {"type": "array", "items": row}},
                "required": ["records"],
                "additionalProperties": False,
            },
            "metadata": {
                "type": "object",
                "properties": meta,
                "required": list(meta),
                "additionalProperties": False,
            },
        },
        "required": ["data", "metadata"],
        "additionalProperties": False,
    }


WHM_SEARCH = whm("emailtrack_search", ROW, overflowed={"enum": [0, 1]})
WHM_STATS = whm("emailtrack_stats", STATS_ROW)
WHM_ERROR = {
    "type": "object",
    "properties": {
        "metadata": {
            "type": "object",
            "properties": {
                "command": TEXT,
                "reason": TEXT,
                "result": {"const": 0},
                "version": {"const": 1},
            },
            "required": ["command", "reason", "result", "version"],
            "additionalProperties": False,
        }
    },
    "required": ["metadata"],
    "additionalProperties": False,
}
