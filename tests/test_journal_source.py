"""The systemd journal as a source (``sources: [{journal: ...}]``), against a real journald.

Each test runs in a private mount namespace with its own ``systemd-journald``
(tests/journald.py).  Postfix and Exim lines of the test generators and the recorded
samples are logged into it the way the MTAs log: syslog datagrams on /dev/log, from a
process in a ``postfix@-.service`` cgroup where a unit is wanted (journald then sets the
trusted ``_SYSTEMD_UNIT`` itself).  journald stamps them with the real clock, so nothing
here depends on a date: the truth is the same entries as journalctl itself prints them
(``-o short-iso-precise --utc``), backfilled from a plain file into another store, which
must hold exactly what the journal source's store holds (``store_contents``); and, for the
recorded samples, their scripted per-account truth.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from logstats.config import JournalSpec
from logstats.journal import (
    JournalReader,
    _Pieces,
    entry_line,
    matches,
    seqnum_of,
    source_id,
    stamp,
)
from logstats.metrics import render
from tests.daemon_harness import (
    SAMPLES,
    Serve,
    cli,
    domains_of,
    genlog,
    query_all,
    store_contents,
    summed,
    write_config,
)
from tests.journald import Journald, run_inside

UNIT = "postfix@-.service"


def inside(function: str, tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    run_inside(__name__, function, tmp_path)


# -- helpers (run inside the namespace) ------------------------------------------------------
def lines_of(path: Path) -> list[str]:
    return path.read_text().splitlines()


def identifiers(lines: list[str], prefix: str) -> list[str]:
    """The syslog identifiers of ``lines`` that start with ``prefix`` (postfix/smtp ...)."""
    found = set()
    for line in lines:
        m = re.match(r"^\w{3} +\d+ [\d:]+ \S+ ([^\s\[:]+)", line)
        if m and m.group(1).startswith(prefix):
            found.add(m.group(1))
    return sorted(found)


def journal_source(**journal: Any) -> dict[str, Any]:
    return {"journal": journal, "mta": journal.pop("mta")}


def config(folder: Path, sources: list[dict[str, Any]], **sections: Any) -> Path:
    cfg = write_config(folder, [], **sections)
    data = yaml.safe_load(cfg.read_text())
    data["sources"] = sources
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    return cfg


def backfill(cfg: Path, *args: str) -> list[dict[str, Any]]:
    """``logstats backfill`` (exit 0 wanted); its log events."""
    proc = cli("backfill", "--config", str(cfg), *args)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(x) for x in proc.stderr.splitlines() if x.startswith("{")]


def file_truth(folder: Path, cfg: Path, texts: dict[str, str], name: str) -> Path:
    """The same entries, as journalctl prints them, backfilled from plain files."""
    db = folder / f"{name}.duckdb"
    paths = []
    for mta, text in texts.items():
        path = folder / f"{name}.{mta}.log"
        path.write_text(text)
        paths.append(path)
    for path, mta in zip(paths, texts, strict=True):
        proc = cli("backfill", "--config", str(cfg), "--db", str(db), "--mta", mta, str(path))
        assert proc.returncode == 0, proc.stderr
    return db


def same_store(mine: Path | str, truth: Path, *, extra_unparsed: dict[str, int] | None = None,
               anomalies: dict[str, int] | None = None) -> None:  # fmt: skip
    """``mine`` holds what ``truth`` holds, but for the journal's own unknown lines and
    anomalies (entries without MESSAGE, gaps), which are checked exactly."""
    got, want = store_contents(mine), store_contents(truth)
    got_unparsed = {(m, r): n for m, r, n in got.pop("unparsed")}
    want_unparsed = {(m, r): n for m, r, n in want.pop("unparsed")}
    for (m, r), n in (extra_unparsed or {}).items():
        assert got_unparsed.pop((m, r), 0) == n, (m, r)
    assert want_unparsed == got_unparsed
    got_anomalies = {(m, k): n for m, k, n in got.pop("anomalies")}
    want_anomalies = {(m, k): n for m, k, n in want.pop("anomalies")}
    for kind, n in (anomalies or {}).items():
        assert got_anomalies.pop(("postfix", kind), 0) == n, kind
    assert want_anomalies == got_anomalies
    assert want["counters"], "the truth holds nothing: nothing was compared"
    for part, rows in want.items():
        only_truth = [r for r in rows if r not in got[part]][:3]
        only_mine = [r for r in got[part] if r not in rows][:3]
        assert rows == got[part], (part, only_truth, only_mine)


def cursor_row(db: Path | str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT source, mta, cursor, entries FROM journal_cursors").fetchall()
    finally:
        con.close()


def postfix_matches(idents: list[str]) -> list[str]:
    return [f"SYSLOG_IDENTIFIER={i}" for i in idents]


# -- entries as lines, matches, configuration (no journald needed) ---------------------------
def test_an_entry_is_the_line_a_syslog_daemon_writes() -> None:
    """RFC 3339 in UTC with microseconds, the host, identifier[pid]: MESSAGE; the program's
    own time when journald recorded it; a byte-array MESSAGE decoded; one line per entry."""
    t = 1_764_700_000_123_456  # 2025-12-02T18:26:40.123456Z
    entry = {"MESSAGE": "B1C2: removed", "_HOSTNAME": "mx", "SYSLOG_IDENTIFIER": "postfix/qmgr",
             "SYSLOG_PID": "12", "_PID": "99"}  # fmt: skip
    assert "2025-12-02T18:26:40.123456+00:00 mx postfix/qmgr[12]: B1C2: removed" == entry_line(
        entry, t
    )
    later = {**entry, "_SOURCE_REALTIME_TIMESTAMP": str(t - 5)}
    assert entry_line(later, t).startswith("2025-12-02T18:26:40.123451+00:00 ")  # type: ignore[union-attr]
    raw = {"MESSAGE": list(b"caf\xe9\nx"), "_HOSTNAME": "mx", "_COMM": "smtpd", "_PID": "3"}
    assert "2025-12-02T18:26:40.123456+00:00 mx smtpd[3]: caf\ufffd x" == entry_line(raw, t)
    assert entry_line({"_HOSTNAME": "mx"}, t) is None
    stamp_line = entry_line({"MESSAGE": "x", "SYSLOG_IDENTIFIER": "exim"}, 0)
    assert "1970-01-01T00:00:00.000000+00:00 localhost exim: x" == stamp_line


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_FIELDS = ("__CURSOR", "__REALTIME_TIMESTAMP", "MESSAGE", "_HOSTNAME", "SYSLOG_IDENTIFIER",
           "SYSLOG_PID", "_PID", "_COMM", "_SOURCE_REALTIME_TIMESTAMP")  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        _JSON,
        st.fixed_dictionaries({}, optional=dict.fromkeys(_FIELDS, _JSON)),
        st.fixed_dictionaries(
            {
                "__CURSOR": st.just("s=ab;i=1f;b=cd;m=1;t=2;x=3"),
                "__REALTIME_TIMESTAMP": st.integers(-(10**20), 10**20).map(str),
            },
            optional={f: _JSON | st.integers(-(10**25), 10**25).map(str) for f in _FIELDS[2:]},
        ),
    )
)
@example({"__CURSOR": "s=ab;i=1f", "__REALTIME_TIMESTAMP": float("inf")})  # 1e400 in JSON
@example({"__CURSOR": "s=ab;i=1f", "__REALTIME_TIMESTAMP": float("nan")})
def test_no_journalctl_line_raises(entry: Any) -> None:
    """Whatever JSON a line of journalctl holds (other types, huge or negative times, byte
    arrays, nested values), reading it raises nothing: it is an entry (with a line, or
    without MESSAGE) or it is left out."""
    reader = JournalReader(JournalSpec(identifiers=("x",)), "postfix", lambda source: None)
    out = _Pieces(reader.source, reader.path, None, 10)
    raw = json.dumps(entry).encode()
    taken = reader._take(out, raw)
    out.flush()
    assert taken == (out.taken == 1)
    for piece in out.pieces:
        assert piece.body.count(b"\n") <= 1


def test_matches_and_identity() -> None:
    spec = JournalSpec(units=("postfix@-.service",), identifiers=("postfix/smtp", "postfix/qmgr"))
    assert ["_SYSTEMD_UNIT=postfix@-.service", "+", "SYSLOG_IDENTIFIER=postfix/smtp",
            "SYSLOG_IDENTIFIER=postfix/qmgr"] == matches(spec)  # fmt: skip
    reordered = JournalSpec(units=spec.units, identifiers=("postfix/qmgr", "postfix/smtp"))
    assert source_id(spec) == source_id(reordered)
    assert source_id(spec) != source_id(JournalSpec(spec.units, spec.identifiers, "/srv/j"))
    assert ("ab12", 0x1F) == seqnum_of("s=ab12;i=1f;b=00;m=1;t=2;x=3")
    assert seqnum_of("garbage") is None


def test_check_config_prints_the_journal_keys(tmp_path: Path) -> None:
    cfg = config(tmp_path, [journal_source(units=[UNIT], identifiers=["postfix/smtp"],
                                           directory="journal", mta="postfix")])  # fmt: skip
    proc = cli("check-config", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    [line] = [x for x in proc.stdout.splitlines() if x.startswith("sources = ")]
    journal = {"units": [UNIT], "identifiers": ["postfix/smtp"],
               "directory": str(tmp_path / "journal")}  # fmt: skip
    assert [{"journal": journal, "mta": "postfix"}] == json.loads(line.split(" = ", 1)[1])
    [derived] = [x for x in proc.stdout.splitlines() if x.startswith("# sources[0]")]
    assert "journalctl" in derived and "(not there yet)" in derived


@pytest.mark.parametrize(
    "first,second,clash",
    [
        ({"units": ["postfix@*.service"]}, {"units": [UNIT]},
         f"unit {UNIT} in [1] and unit postfix@*.service in [0]"),
        ({"identifiers": ["postfix/smtp"]}, {"identifiers": ["postfix/qmgr", "postfix/smtp"]},
         "identifier postfix/smtp in [1] and identifier postfix/smtp in [0]"),
        ({"units": [UNIT]}, {"units": [UNIT], "directory": "other"}, None),  # another journal
        # journalctl -D of journald's own folder reads the local journal
        ({"units": [UNIT]}, {"units": [UNIT], "directory": "/var/log/journal"},
         f"unit {UNIT} in [1] and unit {UNIT} in [0]"),
        # journal-remote's files of other machines are another journal
        ({"units": [UNIT]}, {"units": [UNIT], "directory": "/var/log/journal/remote"}, None),
        ({"units": [UNIT]}, {"identifiers": [UNIT]}, None),  # a unit is no identifier
    ],
)  # fmt: skip
def test_two_journal_sources_that_take_the_same_entries_are_refused(
    tmp_path: Path, first: dict[str, Any], second: dict[str, Any], clash: str | None
) -> None:
    """Entries two journal sources both take would be counted twice: check-config names
    the key and both sources, and exits 1; sources of different journals may overlap."""
    cfg = config(tmp_path, [journal_source(**first, mta="postfix"),
                            journal_source(**second, mta="postfix")])  # fmt: skip
    proc = cli("check-config", "--config", str(cfg))
    if clash is None:
        assert proc.returncode == 0, proc.stderr
        return
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert f"{cfg}: sources: expected each journal entry in one source, got {clash}" in proc.stderr


def test_a_journal_that_cannot_be_read_is_one_line(tmp_path: Path) -> None:
    """journalctl fails (no such directory): backfill says so in one line and exits 1; the
    file paths beside it are read."""
    if shutil.which("journalctl") is None:
        pytest.skip("journalctl missing")
    log = tmp_path / "mainlog"
    log.write_text((SAMPLES / "exim.log").read_text())
    cfg = config(tmp_path, [journal_source(identifiers=["postfix/smtp"], directory="nowhere",
                                           mta="postfix")])  # fmt: skip
    proc = cli("backfill", "--config", str(cfg), "--journal", str(log))
    assert 1 == proc.returncode
    errors = [x for x in proc.stderr.splitlines() if x.startswith("logstats: error: ")]
    assert 1 == len(errors) and "nowhere" in errors[0] and "journalctl failed" in errors[0]
    assert "Traceback" not in proc.stderr
    assert summed(json.loads((SAMPLES / "exim.truth.json").read_text())["truth"]) == query_all(cfg)


# -- (a) backfill of a journal = backfill of the same lines from a file ------------------------
def test_backfill_of_the_journal_equals_backfill_of_its_lines(tmp_path: Path) -> None:
    inside("_backfill_equals_file", tmp_path)


def _backfill_equals_file(work: Path) -> None:
    pf, ex = lines_of(SAMPLES / "postfix.log"), lines_of(SAMPLES / "exim.log")
    pf_idents = identifiers(pf, "postfix")
    with Journald(work) as jd:
        jd.syslog(pf)
        # Exim logging to syslog (syslog_timestamp true): its own stamp is in the message
        jd.syslog([f"Nov 24 06:00:00 mx exim[99]: {line}" for line in ex])
        jd.syslog(["Nov 24 06:00:00 mx dovecot[7]: imap-login: Login: user=<a@alice.test>"])
        jd.native({"SYSLOG_IDENTIFIER": "postfix/smtp", "NOTE": "an entry without MESSAGE"})
        jd.native({"SYSLOG_IDENTIFIER": "postfix/smtpd", "SYSLOG_PID": "5",
                   "MESSAGE": b"connect from caf\xe9.example[192.0.2.9]"})  # fmt: skip
        sources = [
            journal_source(identifiers=pf_idents, mta="postfix"),
            journal_source(identifiers=["exim"], directory=jd.directory, mta="exim"),
        ]
        cfg = config(work, sources)
        events = backfill(cfg, "--journal")
        reads = {e["mta"]: e for e in events if e["event"] == "journal_read"}
        assert {"postfix", "exim"} == set(reads)
        assert len(pf) + 1 == reads["postfix"]["lines"]  # the byte-array MESSAGE is a line
        assert len(ex) == reads["exim"]["lines"]
        texts = {"postfix": jd.text(postfix_matches(pf_idents)),
                 "exim": jd.text(["SYSLOG_IDENTIFIER=exim"])}  # fmt: skip
        # journalctl's text and logstats' lines are the same lines
        assert "caf\ufffd.example" in texts["postfix"]
        truth = file_truth(work, cfg, texts, "truth")
        db = work / "db.duckdb"
        same_store(db, truth, extra_unparsed={("postfix", "no-message"): 1})
        expected = summed(
            json.loads((SAMPLES / "postfix.truth.json").read_text())["truth"],
            json.loads((SAMPLES / "exim.truth.json").read_text())["truth"],
        )
        assert expected == query_all(cfg)
        cursors = cursor_row(db)
        assert [len(pf) + 2, len(ex)] == sorted((r[3] for r in cursors), reverse=True)

        # again: nothing new; then only what is new
        events = backfill(cfg, "--journal")
        skipped = [e for e in events if e["event"] == "journal_skipped"]
        assert 2 == len(skipped) and all(e["lines"] == 0 for e in skipped)
        same_store(db, truth, extra_unparsed={("postfix", "no-message"): 1})
        more = lines_of(SAMPLES / "postfix.log")[:40]
        more = [x.replace("mx postfix", "mx2 postfix") for x in more]  # another scope
        jd.syslog(more)
        events = backfill(cfg, "--journal")
        [read] = [e for e in events if e["event"] == "journal_read"]
        assert 40 == read["lines"]
        texts["postfix"] = jd.text(postfix_matches(pf_idents))
        truth = file_truth(work, cfg, texts, "truth2")
        same_store(db, truth, extra_unparsed={("postfix", "no-message"): 1})


# -- (b) the daemon, SIGKILLed while entries arrive: exactly once ------------------------------
def test_serve_follows_the_journal_exactly_once_under_sigkill(tmp_path: Path) -> None:
    inside("_sigkill_rounds", tmp_path)


def _committed(daemons: list[Serve]) -> int:
    return sum(int(e.get("lines", 0)) for d in daemons for e in d.events
               if e.get("event") == "batch_committed")  # fmt: skip


def _sigkill_rounds(work: Path) -> None:
    """12,000 genlog Postfix lines arrive in 6 rounds; in each the daemon is SIGKILLed right
    after a commit in the middle of reading the round's entries, at a random moment, or
    during its start-up, and restarted."""
    rng = random.Random(5)
    genlog("postfix", 12000, work / "gen.log", seed=4)
    lines = lines_of(work / "gen.log")
    idents = identifiers(lines, "postfix")
    wanted = sum(1 for x in lines if identifiers([x], "postfix"))
    sections: dict[str, Any] = {
        "accounts": {"domains": domains_of(work / "gen.log.userdomains")},
        "ingest": {"batch_lines": 500},  # several commits per round: kills between them
    }
    kinds = ["commit", "commit", "random", "startup", "commit", "random"]
    rounds = len(kinds)
    with Journald(work) as jd:
        cfg = config(work, [journal_source(identifiers=idents, mta="postfix")], **sections)
        daemons: list[Serve] = []
        try:
            d = Serve(cfg)
            daemons.append(d)
            d.wait_ready()
            step = len(lines) // rounds
            for i, kind in enumerate(kinds):
                seen = len(d.events)
                jd.syslog(lines[i * step : (i + 1) * step if i < rounds - 1 else len(lines)])
                if kind == "commit":
                    d.wait_event("batch_committed", timeout=30, after=seen)
                elif kind == "random":
                    time.sleep(rng.uniform(0.0, 0.5))
                else:
                    d.kill()
                    d = Serve(cfg)
                    daemons.append(d)
                    time.sleep(rng.uniform(0.05, 0.5))  # a moment of start-up, not a sync
                d.kill()
                d = Serve(cfg)
                daemons.append(d)
                d.wait_ready()
            deadline = time.monotonic() + 120
            while _committed(daemons) < wanted:
                assert time.monotonic() < deadline, (_committed(daemons), wanted)
                time.sleep(0.1)
            assert 0 == d.terminate()
        finally:
            for x in daemons:
                x.close()
        # every line committed once over the kills (a line read twice would be counted in
        # a second commit), and the store is the file backfill's
        assert wanted == _committed(daemons)
        text = jd.text(postfix_matches(idents))
        file_db = file_truth(work, cfg, {"postfix": text}, "truth")
        same_store(work / "db.duckdb", file_db)


# -- (c) journal file rotation between runs and during follow ----------------------------------
def test_rotation_between_runs_and_while_following(tmp_path: Path) -> None:
    inside("_rotation", tmp_path)


def _rotation(work: Path) -> None:
    genlog("postfix", 3000, work / "gen.log", seed=6)
    lines = lines_of(work / "gen.log")
    idents = identifiers(lines, "postfix")
    fifth = len(lines) // 5
    parts = [lines[i * fifth : (i + 1) * fifth if i < 4 else len(lines)] for i in range(5)]
    sections = {"accounts": {"domains": domains_of(work / "gen.log.userdomains")}}
    with Journald(work) as jd:
        cfg = config(work, [journal_source(identifiers=idents, mta="postfix")], **sections)
        jd.syslog(parts[0])
        backfill(cfg, "--journal")
        jd.rotate()  # the stored cursor's entry is in an archived file now
        jd.syslog(parts[1])
        jd.rotate()
        events = backfill(cfg, "--journal")
        assert not [e for e in events if e["event"] == "journal_gap"]
        with Serve(cfg) as d:
            d.wait_ready()
            jd.syslog(parts[2])
            jd.rotate()  # while it follows
            jd.syslog(parts[3])
            jd.rotate()
            jd.rotate()
            jd.syslog(parts[4])
            text = jd.text(postfix_matches(idents))
            want = text.count("\n")
            deadline = time.monotonic() + 60
            while d.health().get("lines", 0) < want - len(parts[0]) - len(parts[1]):
                assert time.monotonic() < deadline, d.health()
                time.sleep(0.1)
            assert 0 == d.terminate()
            assert "journal_gap" not in d.names()
        assert len(list(Path(jd.directory).rglob("*@*.journal"))) >= 4  # archived files
        truth = file_truth(work, cfg, {"postfix": text}, "truth")
        same_store(work / "db.duckdb", truth)


# -- (d) vacuum past the stored cursor: reported, counted, read on -----------------------------
def test_vacuum_past_the_cursor_is_a_gap_reported_and_counted(tmp_path: Path) -> None:
    inside("_vacuum", tmp_path)


def _vacuum(work: Path) -> None:
    pf = lines_of(SAMPLES / "postfix.log")
    idents = identifiers(pf, "postfix")
    a, b = pf[:60], pf[60:]
    with Journald(work) as jd:
        cfg = config(work, [journal_source(identifiers=idents, mta="postfix")])
        jd.syslog(a)
        backfill(cfg, "--journal")
        text_a = jd.text(postfix_matches(idents))
        [stored] = cursor_row(work / "db.duckdb")
        last_a = jd.entries(postfix_matches(idents))[-1]
        assert last_a["__CURSOR"] == stored[2]
        jd.rotate()
        jd.syslog(b)
        jd.rotate()
        jd.syslog(["Nov 24 06:10:00 mx postfix/anvil[1]: statistics: max connection rate 1/60s"])
        jd.vacuum_files(2)  # the active file and the newest archived one (b's) are kept
        left = jd.entries(postfix_matches(idents))
        assert last_a["__CURSOR"] not in {e["__CURSOR"] for e in left}, "nothing was vacuumed"
        assert len(b) == len(left), "b's entries are not all left"
        events = backfill(cfg, "--journal")
        gaps = [e for e in events if e["event"] == "journal_gap"]
        assert 1 == len(gaps), events
        [gap] = gaps
        assert stamp(int(str(last_a["__REALTIME_TIMESTAMP"]))) == gap["stored_at"]
        assert stamp(int(str(left[0]["__REALTIME_TIMESTAMP"]))) == gap["first_at"]
        assert gap["source"] == stored[0]
        # reading went on from the oldest entry there is: all of what is left was read
        [read] = [e for e in events if e["event"] == "journal_read"]
        assert len(left) == read["lines"]
        assert {"journal-gap": 1} == read["anomalies"]
        text = text_a + jd.text(postfix_matches(idents))
        truth = file_truth(work, cfg, {"postfix": text}, "truth")
        same_store(work / "db.duckdb", truth, anomalies={"journal-gap": 1})
        jd.syslog(["Nov 24 06:20:00 mx postfix/smtpd[2]: connect from x.example[192.0.2.1]"])
        events = backfill(cfg, "--journal")  # no second gap: the cursor is a live entry again
        assert not [e for e in events if e["event"] == "journal_gap"]
        assert [1] == [e["lines"] for e in events if e["event"] == "journal_read"]
        con = duckdb.connect(str(work / "db.duckdb"), read_only=True)
        try:
            metrics = render(con)
        finally:
            con.close()
        assert 'logstats_anomalies_total{kind="journal-gap",mta="postfix"} 1.0' in metrics


# -- (e) a unit-restricted journal source beside a file source ---------------------------------
def test_unit_source_beside_a_file_source(tmp_path: Path) -> None:
    inside("_unit_beside_file", tmp_path)


def _unit_beside_file(work: Path) -> None:
    genlog("postfix", 2500, work / "gen.log", seed=3)
    genlog("exim", 2500, work / "exim.log", seed=3)
    lines = lines_of(work / "gen.log")
    postfix = [x for x in lines if identifiers([x], "postfix")]
    others = [x for x in lines if not identifiers([x], "postfix")]  # dovecot
    assert others, "genlog wrote no other program's lines"
    sample = lines_of(SAMPLES / "postfix.log")
    sections = {"accounts": {"domains": domains_of(work / "gen.log.userdomains")}}
    with Journald(work) as jd:
        mainlog = work / "mainlog"
        mainlog.write_bytes((work / "exim.log").read_bytes())
        sources = [
            journal_source(units=[UNIT], mta="postfix"),
            {"path": str(mainlog), "mta": "exim"},
        ]
        cfg = config(work, sources, **sections)
        jd.syslog(postfix[: len(postfix) // 2], unit=UNIT)
        jd.syslog(others)  # another program's entries, outside the unit
        jd.syslog(sample)  # Postfix's identifiers, outside the unit: not this source's
        jd.syslog(postfix[len(postfix) // 2 :], unit=UNIT)
        in_unit = jd.entries([f"_SYSTEMD_UNIT={UNIT}"])
        if not in_unit:
            pytest.skip("journald did not set _SYSTEMD_UNIT from the writer's cgroup here")
        assert len(postfix) == len(in_unit)
        with Serve(cfg) as d:
            d.wait_ready()
            want = len(postfix) + len(lines_of(mainlog))
            deadline = time.monotonic() + 60
            while d.health().get("lines", 0) < want:
                assert time.monotonic() < deadline, d.health()
                time.sleep(0.1)
            assert 0 == d.terminate()
        assert want == sum(int(e.get("lines", 0)) for e in d.events
                           if e.get("event") == "batch_committed")  # fmt: skip
        truth = file_truth(work, cfg, {"postfix": jd.text([f"_SYSTEMD_UNIT={UNIT}"])}, "truth")
        proc = cli("backfill", "--config", str(cfg), "--db", str(truth), str(mainlog))
        assert proc.returncode == 0, proc.stderr
        same_store(work / "db.duckdb", truth)


# -- (f) units given as patterns: every instance, also one that begins to log later -------------
def test_a_unit_pattern_takes_every_instance(tmp_path: Path) -> None:
    inside("_unit_pattern", tmp_path)


def _unit_pattern(work: Path) -> None:
    genlog("postfix", 3000, work / "gen.log", seed=5)
    lines = lines_of(work / "gen.log")
    postfix = [x for x in lines if identifiers([x], "postfix")]
    third = len(postfix) // 3
    sections = {"accounts": {"domains": domains_of(work / "gen.log.userdomains")}}
    units = ["postfix@-.service", "postfix@out.service", "postfix@late.service"]
    with Journald(work) as jd:
        cfg = config(work, [journal_source(units=["postfix@*.service"], mta="postfix")],
                     **sections)  # fmt: skip
        # before any instance logged: nothing to read, and no error
        events = backfill(cfg, "--journal")
        assert not [e for e in events if e["event"] in ("source_error", "journal_read")], events
        jd.syslog(postfix[:third], unit=units[0])
        jd.syslog(lines_of(SAMPLES / "postfix.log"), unit="postfix-other.service")  # no match
        jd.syslog(postfix[third : 2 * third], unit=units[1])
        if not jd.entries([f"_SYSTEMD_UNIT={units[0]}"]):
            pytest.skip("journald did not set _SYSTEMD_UNIT from the writer's cgroup here")
        [read] = [e for e in backfill(cfg, "--journal") if e["event"] == "journal_read"]
        assert 2 * third == read["lines"]
        # an instance that begins to log later is read from its first entry
        jd.syslog(postfix[2 * third :], unit=units[2])
        [read] = [e for e in backfill(cfg, "--journal") if e["event"] == "journal_read"]
        assert len(postfix) - 2 * third == read["lines"]
        text = jd.text([f"_SYSTEMD_UNIT={u}" for u in units])
        assert len(postfix) == len(text.splitlines())
        truth = file_truth(work, cfg, {"postfix": text}, "truth")
        same_store(work / "db.duckdb", truth)


# -- bounded steps: a poll reads at most max_entries, the next goes on from there ------------
def test_polls_of_bounded_steps_hand_on_every_entry_once(tmp_path: Path) -> None:
    inside("_bounded_steps", tmp_path)


def _bounded_steps(work: Path) -> None:
    genlog("postfix", 3000, work / "gen.log", seed=9)
    postfix = [x for x in lines_of(work / "gen.log") if identifiers([x], "postfix")]
    with Journald(work) as jd:
        jd.syslog(postfix)
        jd.native({"SYSLOG_IDENTIFIER": "postfix/smtp", "NOTE": "an entry without MESSAGE"})
        jd.sync()
        spec = JournalSpec(identifiers=tuple(identifiers(postfix, "postfix")))

        def read(reader: JournalReader) -> tuple[list[str], list[Any], int]:
            lines: list[str] = []
            cursors = []
            polls = 0
            while True:
                pieces = reader.poll()
                polls += 1
                for piece in pieces:
                    lines += piece.body.decode().splitlines()
                    cursors.append(piece.cursor)
                if not reader.more:
                    return lines, cursors, polls
                assert polls < 100, "the reads do not move on"

        stepped = JournalReader(spec, "postfix", lambda source: None, max_entries=250,
                                piece_entries=64)  # fmt: skip
        whole = JournalReader(spec, "postfix", lambda source: None)
        got, got_cursors, polls = read(stepped)
        want, want_cursors, _ = read(whole)
        assert polls > 10
        assert len(postfix) == len(want)
        assert want == got  # every entry once, in the journal's order
        assert want_cursors[-1] == got_cursors[-1]  # the same last entry, and entries counted
        entries = [c.entries for c in got_cursors]
        assert entries == sorted(set(entries)) and entries[-1] == len(postfix) + 1
        assert not stepped.notes and not whole.notes
