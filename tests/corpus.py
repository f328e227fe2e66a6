"""Run a grammar over the shared conformance corpus and count what stays unknown."""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from logstats.grammar import Clock, make_parser
from logstats.model import ParseResult, Unparsed

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("LOGSTATS_UPDATE_GOLDENS") == "1"


def corpus_files(mta: str) -> list[Path]:
    folder = CORPUS / mta
    return sorted(p for p in folder.glob("*.log") if p.is_file())


def parse_file(mta: str, path: Path, prefix: str = "") -> list[tuple[str, ParseResult]]:
    parser = make_parser(mta, Clock(UTC, datetime(2030, 1, 1, tzinfo=UTC)))
    text = path.read_bytes().decode("utf-8", "replace")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [(line, parser.parse(prefix + line)) for line in lines]


def unknown_by_reason(results: list[tuple[str, ParseResult]]) -> dict[str, int]:
    counts = Counter(r.reason for _, r in results if isinstance(r, Unparsed))
    return dict(sorted(counts.items()))


def check_golden(name: str, observed: dict[str, dict[str, int]]) -> None:
    """Compare with (or, with LOGSTATS_UPDATE_GOLDENS=1, rewrite) tests/golden/NAME."""
    path = GOLDEN / name
    if UPDATE or not path.exists():
        path.write_text(json.dumps(observed, indent=1, sort_keys=True) + "\n")
    expected = json.loads(path.read_text())
    assert expected == observed
