"""Reader for annotated sample logs: ``# expect: {json}`` above each input line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logstats.model import ParseResult, Unparsed


@dataclass(frozen=True)
class Sample:
    path: str
    number: int
    line: str
    expect: dict[str, Any]


def samples(path: Path) -> list[Sample]:
    out: list[Sample] = []
    expect: dict[str, Any] | None = None
    for number, raw in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if raw.startswith("# expect:"):
            expect = json.loads(raw.removeprefix("# expect:"))
        elif raw.startswith("#") or not raw:
            continue
        elif expect is not None:
            out.append(Sample(str(path), number, raw, expect))
            expect = None
    return out


def mismatches(result: ParseResult, expect: dict[str, Any]) -> list[str]:
    """Differences between a parse result and its annotation (expected value first)."""
    if "unparsed" in expect:
        if not isinstance(result, Unparsed) or result.reason != expect["unparsed"]:
            return [f"expected unparsed {expect['unparsed']!r}, got {result!r}"]
        return []
    problems = []
    if type(result).__name__ != expect["type"]:
        return [f"expected {expect['type']}, got {result!r}"]
    for key, want in expect.items():
        if key == "type":
            continue
        got = getattr(result, key)
        if key == "ts":
            got = got.isoformat()
        elif hasattr(got, "value"):
            got = got.value
        if got != want:
            problems.append(f"{key}: expected {want!r}, got {got!r}")
    return problems
