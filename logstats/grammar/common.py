"""Tokens and time handling shared by the Exim and Postfix grammars.

The grammars are pyparsing ``Regex`` elements, one coarse element per line shape: the
grammar is the one definition of every line shape.  Each element is named with
``set_name`` after its Python name, so pyparsing's messages read like the grammar.  They are
executed through their compiled patterns (``match``): for an element that keeps whitespace
and yields its match that is what ``parse_string`` computes, without its per-call cost.

Timestamps: a stamp without a year (BSD syslog ``Mar  7 02:09:33``) takes its year from a
reference time (the file's modification time) and from monotonic progress inside the file
(``Dec 31`` followed by ``Jan  1`` moves to the next year).  A stamp without an offset is
local time in the configured zone.  Everything leaves this module in UTC.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo

import pyparsing as pp

from logstats.model import MAX_NUMBER, OUT_OF_RANGE

MONTHS = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
        start=1,
    )
}

# ``key=value`` fields after the fixed part of a line.  Values are quoted strings, ``<...>``
# addresses or runs of non-blanks; a key starts after a blank or a comma (or the start).
# The element reads the tail token by token (a field, another run of non-blanks, or
# blanks and commas), so that a field is looked for only where a token starts; used
# through ``fields()``, which walks the whole tail.
kv_field = pp.Regex(
    r"(?<![^\s,])(?P<key>[A-Za-z][A-Za-z0-9_-]*)="
    r"(?P<value>\"(?:[^\"\\]|\\.)*\"|<[^>]*>|[^\s,]*)"
    r"|[^\s,]+|[\s,]+"
)
kv_field.set_name("kv_field")
_KV = kv_field.re

# ``host[ip]`` or ``host[ip]:port`` (Postfix client/relay), and ``[ip]`` (Exim H=).
bracket_ip = pp.Regex(r"\[(?P<ip>[0-9A-Fa-f.:]+|ip4(?:\.ip4){3}|ip6:[^\]]*)\]")
bracket_ip.set_name("bracket_ip")
_BRACKET_IP = bracket_ip.re


# Headers whose logged value tags a message (Postfix `header_checks` INFO, Exim `logwrite`).
TAG_HEADERS = ("x-tag", "x-mailgun-tag", "x-category", "x-logstats-tag", "x-smtpeter-tag")


def tag_header(text: str) -> tuple[str, ...] | None:
    """``X-Tag: a, b`` -> ("a", "b") when the header is a tag header, else None."""
    name, sep, value = text.partition(":")
    if not sep or name.strip().lower() not in TAG_HEADERS:
        return None
    tags = tuple(t.strip() for t in value.split(",") if t.strip())
    return tags or None


def element(pattern: str, name: str, flags: int = 0) -> pp.Regex:
    """A named line-shape element that yields the ``re.Match`` itself.

    ``as_match`` skips building named ParseResults (4x cheaper); whitespace and tabs are
    kept as they are, since log text is not free-form grammar input.
    """
    el = pp.Regex(pattern, flags=flags, as_match=True)
    el.leave_whitespace()
    el.parse_with_tabs()
    el.set_name(name)
    return el


def match(el: pp.Regex, text: str) -> re.Match[str] | None:
    """Run a line-shape element; ``None`` when the text does not have that shape.

    How the grammar is executed: a line-shape element keeps whitespace and tabs and yields
    its match, so ``el.parse_string(text)`` is exactly ``el.re.match(text)`` (pyparsing's
    own bookkeeping costs several times the regex); tests hold the two equal on the corpus."""
    return el.re.match(text)


def fields(text: str) -> dict[str, str]:
    """All ``key=value`` pairs of ``text``; the first occurrence of a key wins."""
    out: dict[str, str] = {}
    for key, raw in _KV.findall(text):
        if key and key not in out:
            quoted = raw[:1] == '"' and raw[-1:] == '"' and len(raw) > 1
            out[key] = raw[1:-1] if quoted else raw
    return out


def first_ip(text: str) -> str | None:
    m = _BRACKET_IP.search(text)
    return m.group("ip") if m else None


def address(value: str | None) -> str | None:
    """``<a@b>`` -> ``a@b``; ``<>`` -> ``""`` (the null sender)."""
    if value is None:
        return None
    if value[:1] == "<" and value[-1:] == ">":
        return value[1:-1]
    return value


def domain_of(addr: str | None) -> str:
    if not addr or "@" not in addr:
        return ""
    return addr.rsplit("@", 1)[1].lower().rstrip(">")


def to_int(value: str | None) -> int | None:
    """A decimal field; ``OUT_OF_RANGE`` when it is too large to be true (the correlator
    counts that as an anomaly), None when it is not a number (Exim's test suite writes
    ``S=sss``)."""
    if value is None or not value.isascii() or not value.isdigit():
        return None
    if len(value) > 16:
        return OUT_OF_RANGE
    number = int(value)
    return number if number <= MAX_NUMBER else OUT_OF_RANGE


class Clock:
    """Turns one file's timestamps into UTC datetimes.

    ``reference`` is the file's modification time: a log is never written after it, so the
    first yearless stamp gets the latest year that does not put it after the reference.
    Afterwards the year only moves forward, when the month falls back by more than half a
    year (``Dec`` -> ``Jan``).  The last result is cached because consecutive lines
    usually share their second.
    """

    __slots__ = ("_last_key", "_last_month", "_last_value", "_ref", "_tz", "_year")

    def __init__(self, tz: tzinfo, reference: datetime) -> None:
        self._tz = tz
        self._ref = reference.astimezone(tz)
        self._year: int | None = None
        self._last_month = 0
        self._last_key = ""
        self._last_value = datetime(1970, 1, 1, tzinfo=UTC)

    @property
    def tz(self) -> tzinfo:
        return self._tz

    def state(self) -> tuple[int, int]:
        """(year, month) reached so far (kept with a file's checkpoint, for reference)."""
        return (self._year or 0, self._last_month)

    def _year_for(self, month: int, day: int) -> int:
        if self._year is None:
            ref = self._ref
            year = ref.year
            if (month, day) > (ref.month, ref.day + 1):
                year -= 1
            self._year = year
        elif month < self._last_month - 6:
            self._year += 1
        elif month > self._last_month + 6:
            self._year -= 1  # a stray line from before New Year after January lines
        self._last_month = month
        return self._year

    def bsd(self, stamp: str) -> datetime | None:
        """``Mmm dd hh:mm:ss[.ffffff]`` (day space- or zero-padded or not padded)."""
        if stamp == self._last_key:
            return self._last_value
        parts = stamp.split()
        if len(parts) != 3:
            return None
        month = MONTHS.get(parts[0])
        if month is None or not parts[1].isdigit():
            return None
        day = int(parts[1])
        try:
            hms, _, frac = parts[2].partition(".")
            hh, mm, ss = (int(x) for x in hms.split(":"))
            micro = int((frac + "000000")[:6]) if frac else 0
            year = self._year_for(month, day)
            local = datetime(year, month, day, hh, mm, ss, micro, tzinfo=self._tz)
            value = local.astimezone(UTC)
        except (ValueError, OverflowError):
            return None
        self._last_key, self._last_value = stamp, value
        return value

    def iso(self, stamp: str, offset: str | None = None) -> datetime | None:
        """``YYYY-MM-DD hh:mm:ss[.fff]`` or RFC 3339 ``YYYY-MM-DDThh:mm:ss[.f](Z|±hh:mm)``.

        ``offset`` is Exim's separate ``±hhmm`` (log_timezone).
        """
        key = stamp if offset is None else stamp + offset
        if key == self._last_key:
            return self._last_value
        try:
            value = datetime.fromisoformat(stamp)
            if offset is not None:
                sign = -1 if offset[0] == "-" else 1
                delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
                value = value.replace(tzinfo=timezone(sign * delta))
            elif value.tzinfo is None:
                value = value.replace(tzinfo=self._tz)
            value = value.astimezone(UTC)
        except (ValueError, OverflowError):
            return None
        self._year = value.year if self._year is None else self._year
        self._last_key, self._last_value = key, value
        return value


def clean(text: str, limit: int) -> str | None:
    """The reason a line cannot be parsed at all, or None when it may be tried."""
    if len(text) > limit:
        return "too-long"
    if "\x00" in text:
        return "binary"
    head = text[:256]
    if _JUNK.search(head) and len(_JUNK.findall(head)) > max(8, len(head) // 4):
        return "binary"
    return None


_JUNK = re.compile("[\x01-\x08\x0b-\x1f\ufffd]")


_POSTFIX_DELAY = re.compile(r"\d{1,9}(?:\.\d{1,6})?")
MAX_DELAY_MS = 10**12  # about 31 years: a longer delay is no delay a queue ever had
_EXIM_TIME = re.compile(
    r"(?:(?P<w>\d{1,6})w)?(?:(?P<d>\d{1,6})d)?(?:(?P<h>\d{1,6})h)?(?:(?P<m>\d{1,6})m)?"
    r"(?:(?P<s>\d{1,9})(?P<f>\.\d{1,6})?s)?"
)
_EXIM_UNITS = (("w", 604_800_000), ("d", 86_400_000), ("h", 3_600_000), ("m", 60_000))


def seconds_to_ms(value: str | None) -> int | None:
    """Postfix's ``delay=`` (decimal seconds: ``0.05``, ``1.2``, ``310``) in milliseconds;
    None when it is not such a number (or beyond ``MAX_DELAY_MS``)."""
    if value is None or not _POSTFIX_DELAY.fullmatch(value):
        return None
    whole, _, frac = value.partition(".")
    return int(whole) * 1000 + int((frac + "000")[:3]) + (frac[3:4] >= "5")


def exim_time_to_ms(value: str | None) -> int | None:
    """Exim's printed time (``QT=1m2s``, ``QT=3d4h``, with +millisec ``QT=0.123s``) in
    milliseconds; None when it is not one (Exim's test suite writes ``QT=qqs``) or is beyond
    ``MAX_DELAY_MS``."""
    if not value:
        return None
    m = _EXIM_TIME.fullmatch(value)
    if m is None:
        return None
    ms = sum(int(m[k]) * unit for k, unit in _EXIM_UNITS if m[k])
    if m["s"]:
        frac = (m["f"] or ".")[1:]
        ms += int(m["s"]) * 1000 + int((frac + "000")[:3]) + (frac[3:4] >= "5")
    return ms if ms <= MAX_DELAY_MS else None
