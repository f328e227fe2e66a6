"""One pyparsing grammar per MTA; ``make_parser`` picks it, ``detect_mta`` guesses it."""

from __future__ import annotations

import re
from typing import Protocol

from logstats.grammar.common import Clock
from logstats.model import Mta, ParseResult

__all__ = ["Clock", "LineParser", "detect_mta", "make_parser"]


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


def detect_mta(lines: list[str]) -> str | None:
    """The MTA whose lines dominate a file's first lines, or None."""
    postfix = sum(1 for line in lines if _POSTFIX_TAG.search(line))
    exim = sum(1 for line in lines if _EXIM_LINE.search(line))
    if postfix == exim == 0:
        return None
    return Mta.POSTFIX.value if postfix >= exim else Mta.EXIM.value
