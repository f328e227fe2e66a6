"""The Exim grammar: annotated samples, time handling, the conformance corpus."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from logstats.grammar import Clock
from logstats.grammar.exim import EximParser
from logstats.model import Attempt, Ignored, Received, Rejected, Unparsed
from tests.annotated import mismatches, samples
from tests.corpus import CORPUS, check_golden, corpus_files, parse_file, unknown_by_reason

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "exim"
SAMPLES = [s for f in sorted(FIXTURES.glob("*.log")) for s in samples(f)]
# Every record type and reason the grammar can produce for a counted line needs a sample.
RULES = {
    "Received",
    "Attempt:delivered",
    "Attempt:deferred",
    "Attempt:failed",
    "Finished",
    "Expired",
    "Rejected",
    "Ignored:suppressed-delivery",
    "unparsed",
}


def parser() -> EximParser:
    return EximParser(Clock(UTC, datetime(2030, 1, 1, tzinfo=UTC)))


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: f"line{s.number}")
def test_annotated_sample(sample):
    """Each annotated Exim line parses into exactly the record written above it."""
    assert [] == mismatches(parser().parse(sample.line), sample.expect)


def test_every_rule_has_samples():
    """A rule of the grammar without an annotated sample fails (fail2ban's check)."""
    seen = set()
    for s in SAMPLES:
        kind = "unparsed" if "unparsed" in s.expect else s.expect["type"]
        if kind == "Attempt":
            kind += ":" + s.expect["outcome"]
        if kind == "Ignored":
            kind += ":" + s.expect["kind"]
        seen.add(kind)
    assert set() == RULES - seen, "rule has no samples"


def test_both_id_forms_in_one_file():
    """Old 16-character and Exim 4.97+ 23-character ids are both message ids."""
    p = parser()
    old = p.parse("2024-01-01 00:00:00 1avnJx-00039F-Hs Completed")
    new = p.parse("2024-01-01 00:00:01 1avnJx-0000000039F-Hsab Completed")
    assert ("1avnJx-00039F-Hs", "1avnJx-0000000039F-Hsab") == (old.queue_id, new.queue_id)


def test_local_time_in_configured_zone():
    """A stamp without offset is local time in the configured zone, stored in UTC."""
    p = EximParser(Clock(ZoneInfo("Europe/Berlin"), datetime(2030, 1, 1, tzinfo=UTC)))
    r = p.parse("2024-07-01 12:00:00 1avnJx-00039F-Hs Completed")
    assert datetime(2024, 7, 1, 10, 0, tzinfo=UTC) == r.ts


def test_syslog_year_from_reference_and_new_year():
    """Yearless syslog stamps take the year from the file's mtime and roll over at New Year."""
    p = EximParser(Clock(UTC, datetime(2025, 1, 2, tzinfo=UTC)))
    dec = p.parse("Dec 31 23:59:59 mx exim[1]: 2024-12-31 23:59:59 1avnJx-00039F-Hs Completed")
    syslog_only = EximParser(Clock(UTC, datetime(2025, 1, 2, tzinfo=UTC)))
    a = syslog_only.parse("Dec 31 23:59:59 mx exim[1]: 1avnJx-00039F-Hs Completed")
    b = syslog_only.parse("Jan  1 00:00:01 mx exim[1]: 1avnJy-00039F-Hs Completed")
    assert datetime(2024, 12, 31, 23, 59, 59, tzinfo=UTC) == dec.ts
    assert (2024, 2025) == (a.ts.year, b.ts.year)


def test_rfc3339_syslog_stamp_with_a_host():
    """RFC 3339 syslog framing (rsyslog's, and a journal entry's line): the outer stamp is
    the time when Exim left its own out (syslog_timestamp = false); Exim's own wins else."""
    p = parser()
    bare = p.parse("2024-07-01T12:00:00.123456+02:00 mx exim[7]: 1avnJx-00039F-Hs Completed")
    own = p.parse(
        "2024-07-01T12:00:05.000001+00:00 mx exim[7]: 2024-07-01 11:59:59 1avnJx-00039F-Hs "
        "=> a@remote.test R=dnslookup T=remote_smtp H=mx.remote.test [192.0.2.1]"
    )
    assert isinstance(own, Attempt)
    assert datetime(2024, 7, 1, 10, 0, 0, 123456, tzinfo=UTC) == bare.ts
    assert datetime(2024, 7, 1, 11, 59, 59, tzinfo=UTC) == own.ts
    assert ("mx", "mx") == (bare.scope, own.scope)


@pytest.mark.parametrize(
    "line,reason",
    [
        ("2020-06-19 04:51:49 1jmFYj-00039V-QX <= a@b S=1 \x00\x01\x02", "binary"),
        ("2020-06-19 04:51:49 " + "x" * 70000, "too-long"),
        ("", None),
        ("\ufffd\ufffd\ufffd garbage", "no-timestamp"),
    ],
)
def test_bad_input_is_a_value(line, reason):
    """Garbage, binary and huge lines come back as Unparsed with a reason, never raise."""
    r = parser().parse(line)
    if reason is None:
        assert isinstance(r, Ignored | Unparsed)
    else:
        assert isinstance(r, Unparsed)
        assert reason == r.reason


# -- the conformance corpus ---------------------------------------------------------------
_COUNTED = re.compile(
    r"\d\d:\d\d:\d\d(?:\.\d+)?(?: [-+]\d{4})?(?: \[\d+\])? [0-9A-Za-z]{6}-[0-9A-Za-z-]{9,16} "
    r"(?:<=|=>|->|==|\*\*|>>|Completed)"
)


@pytest.mark.skipif(not CORPUS.exists(), reason="../shared/corpus is not present")
def test_corpus_exim():
    """Every corpus line parses without an exception; lines the counters depend on are
    recognised; the unknown remainder per file and reason matches the golden file."""
    observed: dict[str, dict[str, int]] = {}
    missed: list[str] = []
    for path in corpus_files("exim"):
        results = parse_file("exim", path)
        for line, r in results:
            if (
                _COUNTED.search(line)
                and not isinstance(r, Received | Attempt | Rejected)
                and ("Completed" not in line or type(r).__name__ != "Finished")
            ):
                missed.append(f"{path.name}: {line[:160]} -> {r!r}"[:300])
            if " rejected RCPT " in line and not isinstance(r, Rejected):
                missed.append(f"{path.name}: {line[:160]} -> {r!r}"[:300])
        unknown = unknown_by_reason(results)
        if unknown:
            observed[path.name] = unknown
    assert [] == missed
    check_golden("corpus_exim.json", observed)


# -- fields come from their own place in the line, never from client text ----------------------
def test_helo_cannot_set_size_or_client_ip():
    """An EHLO argument is the client's text: ` S=0` or `[127.0.0.1]` in it sets nothing."""
    line = (
        "2026-11-24 06:00:10 1xVjZa-0004Dj-36 <= alice@alice.test H=mx.c.test "
        "(evil S=0 A=plain:bob [127.0.0.1]) [192.0.2.8]:4711 P=esmtpa "
        "A=plain_server:alice@alice.test S=669 id=m1@x.test"
    )
    r = parser().parse(line)
    assert isinstance(r, Received)
    assert (669, "192.0.2.8", "alice@alice.test") == (r.size, r.client_ip, r.auth_id)
    bare = "2026-11-24 06:00:10 1xVjZa-0004Dj-36 <= a@b.test H=(x S=0) [192.0.2.9] P=esmtp S=12"
    r = parser().parse(bare)
    assert isinstance(r, Received)
    assert (12, "192.0.2.9") == (r.size, r.client_ip)


def test_numbers_beyond_64_bits_are_out_of_range_not_a_crash():
    """S=99999999999999999999 is flagged (the correlator counts an anomaly), never stored."""
    from logstats.model import OUT_OF_RANGE

    r = parser().parse(
        "2026-11-24 06:00:10 1xVjZa-0004Dj-36 <= a@b.test H=h [192.0.2.9] P=esmtp "
        "S=99999999999999999999"
    )
    assert isinstance(r, Received)
    assert OUT_OF_RANGE == r.size


@pytest.mark.parametrize(
    "confirmation,expected",
    [
        ('C="250 2.0.0 Ok: queued as S00012"', "S00012"),
        ('C="250 OK id=1xVjZa-0004Dj-36"', "1xVjZa-0004Dj-36"),
        ('C="250 OK id=1xVjZa-0000004Dj36-Ab12"', "1xVjZa-0000004Dj36-Ab12"),
        (
            'C="250 2.0.0 from MTA(smtp:[127.0.0.1]:10025): 250 2.0.0 Ok: queued as 4PbC4x"',
            "4PbC4x",
        ),
        ('C="250 2.0.0 Ok, id=12345-01, from MTA: 250 OK id=1xVjZa-0004Dj-36"', "1xVjZa-0004Dj-36"),
        ('C="250 2.0.0 OK queued"', None),
    ],
)
def test_next_hop_id_from_the_confirmation(confirmation, expected):
    line = (
        "2026-11-24 06:00:11 1xVjZa-0004Dj-35 => r@remote.test R=smart T=remote_smtp "
        f"H=127.0.0.1 [127.0.0.1] {confirmation}"
    )
    r = parser().parse(line)
    assert isinstance(r, Attempt)
    assert expected == r.handoff_id


def test_crlf_line_ends_parse_like_lf():
    """A log written with CRLF line ends gives exactly the records of the LF one."""
    from logstats.grammar import parse_lines
    from logstats.sources import split_lines

    body = (FIXTURES.parents[1] / "tests" / "mta" / "samples" / "exim.log").read_bytes()
    lf = parse_lines(parser(), split_lines(body, 65536)[0])
    crlf = parse_lines(parser(), split_lines(body.replace(b"\n", b"\r\n"), 65536)[0])
    assert lf.records == crlf.records
    assert (lf.unparsed, lf.ignored) == (crlf.unparsed, crlf.ignored)
    assert any(type(r).__name__ == "Finished" for r in crlf.records)


def test_fields_read_token_by_token_as_by_every_position() -> None:
    """``fields`` (the tail read token by token) finds exactly the fields a search for a
    key at every position after a blank or comma finds, on the corpus, the generated logs'
    shapes and random junk of the characters that matter."""
    import random
    import re

    from logstats.grammar.common import fields

    every_position = re.compile(
        r"(?:^|(?<=[\s,]))(?P<key>[A-Za-z][A-Za-z0-9_-]*)="
        r"(?P<value>\"(?:[^\"\\]|\\.)*\"|<[^>]*>|[^\s,]*)"
    )

    def reference(text: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for m in every_position.finditer(text):
            key, value = m.group("key", "value")
            if key not in out:
                if value[:1] == '"' and value[-1:] == '"' and len(value) > 1:
                    value = value[1:-1]
                out[key] = value
        return out

    texts = [s.line for s in SAMPLES]
    for mta in ("exim", "postfix"):
        for path in corpus_files(mta):
            texts += path.read_text(encoding="utf-8", errors="replace").splitlines()
    rnd = random.Random(7)
    alphabet = 'ab=,<> "\\\t1xX-_.'
    texts += [
        "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 40))) for _ in range(50000)
    ]
    for text in texts:
        for tail in (text, text[19:], text[37:]):
            assert fields(tail) == reference(tail), repr(tail)
