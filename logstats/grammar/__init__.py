"""One pyparsing grammar per MTA; ``make_parser`` picks it, ``detect_mta`` guesses it."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Protocol

from logstats.grammar.common import Clock
from logstats.model import Ignored, Mta, ParseResult, Record, Unparsed

__all__ = ["ChunkParse", "Clock", "LineParser", "detect_mta", "make_parser", "parse_lines"]


class LineParser(Protocol):
    def parse(self, line: str) -> ParseResult: ...


_POSTFIX_TAG = re.compile(r"\bpostfix[-\w.]*(?:/[-\w.]+)*/[a-z]+\[\d+\]")
_EXIM_LINE = re.compile(r"(?:^|\bexim\d*\[\d+\]: )\d{4}-\d\d-\d\d \d\d:\d\d:\d\d|\bexim\d*\[\d+\]:")


def make_parser(mta: str, clock: Clock, max_line_length: int = 65536) -> LineParser:
    if mta == Mta.EXIM:
        from logstats.grammar.exim import EximParser

        return EximParser(clock, max_line_length)
    if mta == Mta.POSTFIX:
        from logstats.grammar.postfix import PostfixParser

        return PostfixParser(clock, max_line_length)
    raise ValueError(f"unknown MTA {mta!r}")


@dataclass(slots=True)
class ChunkParse:
    """What the grammar made of a run of lines: records in order, the rest counted."""

    records: list[Record] = field(default_factory=list)
    ignored: int = 0
    unparsed: Counter[str] = field(default_factory=Counter)
    samples: dict[str, str] = field(default_factory=dict)
    lines: int = 0
    clock: tuple[int, int] = (0, 0)  # (year, month) the clock of yearless stamps reached


def parse_lines(parser: LineParser, lines: list[str]) -> ChunkParse:
    out = ChunkParse(lines=len(lines))
    records = out.records
    unparsed = out.unparsed
    parse = parser.parse
    ignored = 0
    for line in lines:
        try:
            result = parse(line)
        except Exception as exc:  # a safety net: no line stops the pipeline
            result = Unparsed("parser-error", f"{type(exc).__name__}: {exc}: {line[:400]}")
        if type(result) is Ignored:
            ignored += 1
        elif type(result) is Unparsed:
            unparsed[result.reason] += 1
            out.samples.setdefault(result.reason, result.text[:500])
        else:
            records.append(result)  # type: ignore[arg-type]
    out.ignored = ignored
    return out


def parse_chunk(
    mta: str, tz: tzinfo, reference: float, max_line_length: int, body: bytes
) -> ChunkParse:
    """Decode and parse one raw chunk (here or in a worker process: no shared state).

    The chunk gets a clock of its own, so a yearless stamp takes the latest year that does
    not put it after the file's modification time when it was read (``reference``), and
    moves on with the months within the chunk (``Dec 31`` then ``Jan  1``).
    """
    from logstats.sources import split_lines

    lines, too_long = split_lines(body, max_line_length)
    clock = Clock(tz, datetime.fromtimestamp(reference, UTC))
    out = parse_lines(make_parser(mta, clock, max_line_length), lines)
    out.clock = clock.state()
    if too_long:
        out.unparsed["too-long"] += too_long
        out.lines += too_long
    return out


def detect_mta(lines: list[str]) -> str | None:
    """The MTA whose lines dominate a file's first lines, or None."""
    postfix = sum(1 for line in lines if _POSTFIX_TAG.search(line))
    exim = sum(1 for line in lines if _EXIM_LINE.search(line))
    if postfix == exim == 0:
        return None
    return Mta.POSTFIX.value if postfix >= exim else Mta.EXIM.value
