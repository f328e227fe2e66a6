"""Points in time as the command line and the HTTP API take them.

One rule for every ``start``/``end``:

- 8 digits that form a valid date, ``YYYYMMDD``: that day, 00:00 UTC (``20261124``);
- 14 digits that form a valid date and time, ``YYYYMMDDhhmmss``: that moment in UTC;
- any other run of digits: Unix seconds (``1764000000``);
- otherwise ISO 8601 (``2026-11-24``, ``2026-11-24T10:00:00+01:00``, ``...Z``); without an
  offset, UTC.

A plausible date wins over Unix seconds: ``20261124`` as seconds would be 1970-08-23.
"""

from __future__ import annotations

from datetime import UTC, datetime

FORMS = "YYYYMMDD, YYYYMMDDhhmmss, ISO 8601 or Unix seconds"

# datetime's range, as Unix seconds (year 1 to 9999)
_MIN_SECONDS = -62135596800
_MAX_SECONDS = 253402300799


def parse_time(value: str) -> datetime:
    """``value`` as an aware UTC (or offset-carrying) datetime; ValueError says why not."""
    text = value.strip()
    if text.isascii() and text.isdigit():
        for digits, form in ((8, "%Y%m%d"), (14, "%Y%m%d%H%M%S")):
            if len(text) == digits:
                try:
                    return datetime.strptime(text, form).replace(tzinfo=UTC)
                except ValueError:
                    break  # not a date: Unix seconds
        seconds = int(text)
        if not _MIN_SECONDS <= seconds <= _MAX_SECONDS:
            raise ValueError(f"{value!r} is out of range (Unix seconds up to {_MAX_SECONDS})")
        return datetime.fromtimestamp(seconds, UTC)
    try:
        ts = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{value!r} is not a time ({FORMS})") from None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
