"""The Postfix grammar: annotated samples, time handling, the conformance corpus.

``python -m tests.test_grammar_postfix --update`` (or ``LOGSTATS_UPDATE_GOLDENS=1 pytest``)
rewrites ``tests/golden/corpus_postfix.json`` from the current grammar.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from logstats.grammar import Clock
from logstats.grammar.postfix import RULES, PostfixParser
from logstats.model import Ignored, ParseResult, Received, Unparsed
from tests.annotated import mismatches, samples
from tests.corpus import CORPUS, GOLDEN, check_golden

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "postfix"
SAMPLES = [s for f in sorted(FIXTURES.glob("*.log")) for s in samples(f)]
GOLDEN_NAME = "corpus_postfix.json"


def parser(reference: datetime = datetime(2030, 1, 1, tzinfo=UTC)) -> PostfixParser:
    return PostfixParser(Clock(UTC, reference))


def rule_of(expect: dict[str, object]) -> str:
    """The ``RULES`` entry an annotation exercises."""
    if "unparsed" in expect:
        return f"unparsed:{expect['unparsed']}"
    kind = str(expect["type"])
    if kind == "Attempt":
        kind += f":{expect['outcome']}"
    elif kind == "Ignored":
        kind += f":{expect['kind']}"
    return kind


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: f"line{s.number}")
def test_annotated_sample(sample):
    """Each annotated Postfix line parses into exactly the record written above it."""
    assert [] == mismatches(parser().parse(sample.line), sample.expect)


def test_every_rule_has_samples():
    """Every record type and reason the grammar lists in RULES has an annotated sample
    (fail2ban's check), and no annotation names a rule the grammar does not list."""
    seen = {rule_of(s.expect) for s in SAMPLES}
    assert set() == set(RULES) - seen, "rule has no samples"
    assert set() == seen - set(RULES), "sample of a rule the grammar does not list"


def test_rfc3339_offsets_become_utc():
    """RFC 3339 stamps with an offset, with Z and without fraction are stored in UTC."""
    p = parser()
    line = " mx postfix/qmgr[1]: 0D7037A4: removed"
    a = p.parse("2023-03-14T00:00:31.185246+01:00" + line)
    b = p.parse("2022-04-14T00:36:03.150Z" + line)
    c = p.parse("2021-02-06T10:57:57+01:00" + line)
    assert datetime(2023, 3, 13, 23, 0, 31, 185246, tzinfo=UTC) == a.ts
    assert datetime(2022, 4, 14, 0, 36, 3, 150000, tzinfo=UTC) == b.ts
    assert datetime(2021, 2, 6, 9, 57, 57, tzinfo=UTC) == c.ts


def test_bsd_stamps_in_configured_zone():
    """A BSD stamp is local time in the configured zone; all three day paddings work."""
    p = PostfixParser(Clock(ZoneInfo("Europe/Berlin"), datetime(2024, 12, 1, tzinfo=UTC)))
    line = " mx postfix/qmgr[1]: 0D7037A4: removed"
    stamps = [
        p.parse(s + line).ts for s in ("Jul  4 12:00:00", "Jul 04 12:00:00", "Jul 4 12:00:00")
    ]
    assert [datetime(2024, 7, 4, 10, 0, tzinfo=UTC)] * 3 == stamps


def test_bsd_year_rolls_over_at_new_year():
    """Yearless stamps take the year from the reference; Dec 31 -> Jan 1 moves it forward."""
    p = parser(datetime(2025, 1, 2, tzinfo=UTC))
    dec = p.parse("Dec 31 23:59:59 mx postfix/qmgr[1]: 0D7037A4: removed")
    jan = p.parse("Jan  1 00:00:01 mx postfix/qmgr[1]: 0D7037A5: removed")
    assert (
        datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime(2025, 1, 1, 0, 0, 1, tzinfo=UTC),
    ) == (dec.ts, jan.ts)


@pytest.mark.parametrize("line", ["", "   ", "\t"])
def test_blank_lines_are_ignored(line):
    """Blank lines (between the lines of a test fixture, or a trailing one) are skipped."""
    assert Ignored("blank") == parser().parse(line)


def test_scope_separates_instances():
    """The same queue id on two instances of one host gets two scopes."""
    p = parser()
    a = p.parse("Jan  1 00:00:00 mx postfix/qmgr[1]: 0D7037A4: removed")
    b = p.parse("Jan  1 00:00:00 mx postfix-out/qmgr[1]: 0D7037A4: removed")
    assert ("mx/postfix", "mx/postfix-out") == (a.scope, b.scope)


@pytest.mark.parametrize(
    "line,reason",
    [
        ("Jan  1 00:00:00 mx postfix/qmgr[1]: 0D7037A4: from=<a@b> \x00\x01\x02", "binary"),
        ("Jan  1 00:00:00 mx postfix/smtpd[1]: " + "x" * 70000, "too-long"),
        ("\ufffd\ufffd\ufffd garbage", "no-timestamp"),
        ("Jan  1 00:00:00 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT", "no-rule"),
        (
            "Jan  1 00:00:00 mx postfix/bounce[1]: 0D7037A4: sender non-delivery notification:",
            "no-rule",
        ),
    ],
)
def test_bad_input_is_a_value(line, reason):
    """Garbage, binary, huge and truncated lines come back as Unparsed, never raise."""
    r = parser().parse(line)
    assert isinstance(r, Unparsed)
    assert reason == r.reason


def test_truncated_and_mangled_samples_never_raise():
    """Every prefix of every annotated line, and each with bytes swapped, is a value."""
    p = parser()
    for s in SAMPLES:
        line = s.line
        for cut in range(0, len(line), 3):
            assert p.parse(line[:cut]) is not None
            assert p.parse(line[:cut] + "\ufffd" + line[cut + 1 :]) is not None
            assert p.parse(line[:cut] + ")[<:, " + line[cut:]) is not None


# -- the conformance corpus ---------------------------------------------------------------
# Counter-relevant lines, found independently of the grammar by plain substrings.
_COUNTED = (" status=", ": client=", "message-id=", ": removed", "reject:")
_STAMP = re.compile(r"^(?:[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)")
# Deliberately malformed lines of exporters' tests: they look counted but are no Postfix shape.
_MALFORMED = frozenset(
    ("Jan 1 00:00:00 hostname postfix/smtpd[12345]: NOQUEUE: reject: Unsupported",)
)
_PROGRAMS = {"script": "postfix-script", "trivial_rewrite": "trivial-rewrite"}


def counted(line: str) -> bool:
    return any(s in line for s in _COUNTED) or (" uid=" in line and " from=" in line)


def message_only_program(name: str) -> str:
    """The program a message-only corpus file is about, from its name."""
    m = re.search(r"__postfix-(?:nospam-)?([\w-]+)\.log$", name) or re.search(
        r"_test_(\w+?)_NNNN", name
    )
    program = m.group(1) if m else "unknown"
    return _PROGRAMS.get(program, program)


def corpus_results(path: Path) -> list[tuple[str, ParseResult]]:
    """Parse one corpus file with a fresh parser (message-only files get a header; the
    modoboa fixture's ``%(day)s`` template is filled in as its own tests do)."""
    prefix = ""
    if path.parent.name == "message-only":
        prefix = f"Jan  1 00:00:00 host postfix/{message_only_program(path.name)}[1]: "
    p = parser()
    text = path.read_bytes().decode("utf-8", "replace")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    out = []
    for line in lines:
        full = prefix + (("Jan  1" + line[7:]) if line.startswith("%(day)s") else line)
        out.append((full, p.parse(full)))
    return out


def corpus_paths() -> list[Path]:
    folder = CORPUS / "postfix"
    return sorted(folder.glob("*.log")) + sorted((folder / "message-only").glob("*.log"))


def observe() -> tuple[dict[str, dict[str, int]], list[str]]:
    """Per-file counts of Unparsed by reason, and counter-relevant lines not recognised."""
    observed: dict[str, dict[str, int]] = {}
    missed: list[str] = []
    for path in corpus_paths():
        results = corpus_results(path)
        for line, r in results:
            if (
                counted(line)
                and _STAMP.match(line)
                and isinstance(r, Unparsed)
                and (line not in _MALFORMED)
            ):
                missed.append(f"{path.name}: {line[:160]} -> {r.reason}")
        unknown = Counter(r.reason for _, r in results if isinstance(r, Unparsed))
        if unknown:
            key = path.name if path.parent.name == "postfix" else f"message-only/{path.name}"
            observed[key] = dict(sorted(unknown.items()))
    return observed, missed


@pytest.mark.skipif(not (CORPUS / "postfix").exists(), reason="../shared/corpus is absent")
def test_corpus_postfix():
    """Every corpus line parses without an exception; lines the counters depend on are
    recognised; the unknown remainder per file and reason matches the golden file."""
    observed, missed = observe()
    assert [] == missed
    check_golden(GOLDEN_NAME, observed)


@pytest.mark.skipif(not (CORPUS / "postfix").exists(), reason="../shared/corpus is absent")
def test_corpus_receipts_have_queue_ids():
    """Every smtpd client= / pickup / cleanup / qmgr receipt in the corpus carries its id."""
    for path in corpus_paths():
        for line, r in corpus_results(path):
            if isinstance(r, Received):
                assert r.queue_id in line
            if isinstance(r, Ignored):
                assert r.kind


if __name__ == "__main__" and "--update" in sys.argv:
    found, _ = observe()
    (GOLDEN / GOLDEN_NAME).write_text(json.dumps(found, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN / GOLDEN_NAME}: {len(found)} files with unknown lines")
