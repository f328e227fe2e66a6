"""No sequence of lines stops the pipeline, and a bad line harms only its own message.

Real lines (the recorded real-MTA logs, lines of the shared corpus) are mutated the ways
logs go wrong: duplicated or reordered lines, reused queue ids, ids that collide across
hosts, one hand-off id claimed by two messages, truncated lines, numbers beyond 64 bits,
CR line ends, junk.  The grammar, the correlator and the store must raise nothing, every
drained batch must be storable as it is, and every message the mutations did not touch
must count exactly what it counts in the unmutated log (per message: every event with
its account, outcome, recipient and size).
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logstats.correlate import Correlator, Policy
from logstats.grammar import Clock, make_parser, parse_lines
from logstats.pipeline import batch_of
from logstats.sources import split_lines
from logstats.store import Store
from tests.corpus import CORPUS, corpus_files

SAMPLES = Path(__file__).resolve().parent / "mta" / "samples"
REFERENCE = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)  # after the samples were recorded
POLICY = Policy(domains={"alice.test": "alice", "bob.test": "bob"})
# Exim ids (both forms) and Postfix short and long ids: any token of these shapes in a line
# is a message that line may touch
_IDS = re.compile(
    r"\b[0-9A-Za-z]{6}-(?:[0-9A-Za-z]{11}-[0-9A-Za-z]{4}|[0-9A-Za-z]{6}-[0-9A-Za-z]{2})\b"
    r"|\b[0-9A-F]{6,12}\b|\b[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]{12,}\b"
)


def _lines(mta: str) -> list[str]:
    return (SAMPLES / f"{mta}.log").read_text().splitlines()


def _junk() -> list[str]:
    lines: list[str] = []
    if CORPUS.exists():
        for mta in ("exim", "postfix"):
            for path in corpus_files(mta)[:6]:
                lines += path.read_bytes().decode("utf-8", "replace").splitlines()[:40]
    lines += ["", " ", "\x00\x01\x02", "\ufffd" * 10, "x" * 5000, "Nov 24 06:00:18 mx"]
    return lines


BASE = {mta: _lines(mta) for mta in ("exim", "postfix")}
JUNK = _junk()


def run(mta: str, lines: list[str], store: Store | None = None) -> dict[tuple[str, str], Counter]:
    """Events per message, through grammar and correlator (and, if given, the store),
    with a drain every 17 lines as the daemon's batches would."""
    parser = make_parser(mta, Clock(UTC, REFERENCE))
    body = "".join(line + "\n" for line in lines).encode("utf-8", "surrogateescape")
    texts, _ = split_lines(body, 4096)
    correlator = Correlator(mta, POLICY)
    per_message: dict[tuple[str, str], Counter] = {}
    for start in range(0, len(texts), 17):
        parsed = parse_lines(parser, texts[start : start + 17])
        for record in parsed.records:
            correlator.feed(record)
        drained = correlator.drain()
        for e in drained.events:
            key = (e.scope, e.queue_id)
            per_message.setdefault(key, Counter())[
                (e.account, e.outcome.value, e.recipient, e.size, e.local)
            ] += 1
        for e in drained.retracted:
            per_message.setdefault((e.scope, e.queue_id), Counter())[
                (e.account, e.outcome.value, e.recipient, e.size, e.local)
            ] -= 1
        if store is not None:
            batch = batch_of(mta, drained, [], dict(parsed.unparsed), parsed.samples)
            assert [] == store.commit(batch)  # every row as the pipeline makes it is storable
    return {k: +v for k, v in per_message.items()}


MUTATIONS = ("dup", "swap", "reuse", "host", "claim", "truncate", "bignum", "crlf", "junk")


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, list[str], set[str]]:
    mta = draw(st.sampled_from(["exim", "postfix"]))
    lines = list(BASE[mta])
    touched: set[str] = set()

    def touch(text: str) -> None:
        ids = _IDS.findall(text)
        touched.update(ids or [""])  # a line without a queue id: id-less rejects

    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(MUTATIONS))
        i = draw(st.integers(0, len(lines) - 1))
        line = lines[i]
        if kind == "dup":
            touch(line)
            lines.insert(draw(st.integers(i, len(lines))), line)
        elif kind == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            touch(line)
            touch(lines[j])
            lines[i], lines[j] = lines[j], line
        elif kind == "reuse":
            ids = _IDS.findall(line)
            others = _IDS.findall(lines[draw(st.integers(0, len(lines) - 1))])
            if ids and others:
                touch(line)
                touched.add(others[0])
                lines[i] = line.replace(ids[0], others[0])
        elif kind == "host":
            touch(line)
            lines[i] = line.replace(" mx ", " mx2 ", 1) if mta == "postfix" else line
        elif kind == "claim":
            ids = _IDS.findall(line)
            target = _IDS.findall(lines[draw(st.integers(0, len(lines) - 1))])
            if ids and target and (" => " in line or "status=sent" in line):
                touch(line)
                touched.add(target[0])
                if mta == "exim":
                    lines.insert(i + 1, line + f' C="250 OK id={target[0]}"')
                else:
                    lines.insert(
                        i + 1, re.sub(r"\(250 [^)]*\)", f"(250 Ok: queued as {target[0]})", line)
                    )
        elif kind == "truncate":
            touch(line)
            lines[i] = line[: draw(st.integers(0, max(len(line) - 1, 0)))]
        elif kind == "bignum":
            touch(line)
            lines[i] = re.sub(r"\b(S|size|uid|nrcpt)=\d+", r"\1=99999999999999999999", line)
        elif kind == "crlf":
            lines[i] = line + "\r"  # the same line: touches nothing
        else:
            junk = draw(st.sampled_from(JUNK))
            touch(junk)
            lines.insert(i, junk)
    return mta, lines, touched


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(case=mutated())
def test_mutated_real_lines_stop_nothing_and_harm_only_their_messages(case):
    mta, lines, touched = case
    clean = run(mta, BASE[mta])
    with Store(":memory:") as store:
        got = run(mta, lines, store)
    for key, events in clean.items():
        if key[1] in touched:
            continue
        assert events == got.get(key, Counter()), key


def test_the_recorded_logs_have_messages_to_compare():
    """The property above compares something: both logs have many counted messages."""
    for mta in ("exim", "postfix"):
        assert len(run(mta, BASE[mta])) >= 10
