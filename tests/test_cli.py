"""The command line: help texts exist and are documented; errors are one line."""

from __future__ import annotations

import gzip

import pytest

from logstats.cli import build_parser
from tests.conftest import ROOT, all_stats, run_cli, scenario_config
from tests.logmaker import exim_log

COMMANDS = [
    "backfill",
    "query emailtrack",
    "query mailgun",
    "query sendgrid",
    "query smtpeter",
    "parse",
    "serve",
    "check-config",
    "search",
    "trace",
    "report",
    "example",
    "export",
    "fleet",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_commands_have_help_and_are_documented(command):
    """Every subcommand answers --help and is named in the README."""
    proc = run_cli(*command.split(), "--help")
    assert "usage: logstats" in proc.stdout
    assert f"logstats {command}" in (ROOT / "README.md").read_text()


def test_parser_lists_the_documented_commands():
    """The documented commands are exactly the parser's."""
    sub = build_parser()._subparsers._group_actions[0]
    assert {
        "backfill", "query", "search", "trace", "report", "parse", "serve", "check-config",
        "example", "export", "fleet",
    } == set(sub.choices)  # fmt: skip


def test_parse_report(tmp_path):
    """`logstats parse` reports lines, parsed, irrelevant and unknown, with samples."""
    log = tmp_path / "mainlog"
    lines = [
        *exim_log(5).lines,
        "garbage without a stamp",
        "2024-01-01 00:00:00 Start queue run: pid=1",
    ]
    log.write_text("\n".join(lines) + "\n")
    out = run_cli("parse", str(log)).stdout
    assert f"{len(lines)} lines, {len(lines) - 2} parsed, 1 irrelevant, 1 unknown" in out
    assert "[no-timestamp] garbage without a stamp" in out


def test_missing_file_and_missing_db(tmp_path):
    """A missing log or database is one clear line, exit 1."""
    proc = run_cli(
        "backfill", "--db", str(tmp_path / "x.duckdb"), str(tmp_path / "nope.log"), check=False
    )
    assert (1, "logstats: error: ") == (proc.returncode, proc.stderr[:17])
    proc = run_cli(
        "query", "emailtrack", "--db", str(tmp_path / "none.duckdb"), "--all", check=False
    )
    assert 1 == proc.returncode
    assert "does not exist" in proc.stderr


def test_query_failure_is_a_cpanel_envelope(tmp_path):
    """For one account, a failure is answered as cpanelresult with result 0 and a reason."""
    import json

    proc = run_cli(
        "query",
        "emailtrack",
        "--db",
        str(tmp_path / "none.duckdb"),
        "--account",
        "alice",
        check=False,
    )
    body = json.loads(proc.stdout)["cpanelresult"]
    assert 0 == body["event"]["result"]
    assert "does not exist" in body["event"]["reason"]


def test_binary_junk_and_huge_lines_are_counted_not_fatal(tmp_path):
    """Binary junk and a 10 MB line in a log are counted; the good lines still count."""
    script = exim_log(11)
    log = tmp_path / "junk.log.gz"
    with gzip.open(log, "wb") as f:
        f.write(b"\x00\x01\x02\xff\xfe binary junk\n")
        f.write(b"x" * 10_000_000 + b"\n")
        f.write(("\n".join(script.lines) + "\n").encode())
    db = tmp_path / "j.duckdb"
    cfg = scenario_config(tmp_path)
    proc = run_cli("backfill", "--mta", "exim", "--config", str(cfg), "--db", str(db), str(log))
    assert '"too-long": 1' in proc.stderr
    assert '"binary": 1' in proc.stderr or '"no-timestamp": 1' in proc.stderr
    from tests.conftest import all_stats
    from tests.logmaker import as_strings

    assert as_strings(script.truth) == all_stats(db)


def test_ctrl_c_leaves_a_store_the_next_run_completes(tmp_path):
    """SIGINT during a backfill exits 130 after the batch in hand; running the same
    command again gives exactly what one uninterrupted run gives."""
    import signal
    import subprocess
    import sys

    log = tmp_path / "big.log"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "genlog.py"),
            "--mta",
            "exim",
            "--lines",
            "300000",
            "--out",
            str(log),
        ],
        check=True,
        capture_output=True,
    )
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"accounts: {{userdomains: {log}.userdomains}}\ntimezone: UTC\n"
        "ingest: {batch_lines: 20000}\n"
    )
    args = ["backfill", "--config", str(cfg)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "logstats", *args, "--db", str(tmp_path / "a.duckdb"), str(log)],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    while not (tmp_path / "a.duckdb").exists() and proc.poll() is None:
        pass  # the store exists: the run is under way
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert 130 == proc.returncode, err
    assert "Traceback" not in err
    run_cli(*args, "--db", str(tmp_path / "a.duckdb"), str(log))
    run_cli(*args, "--db", str(tmp_path / "b.duckdb"), str(log))
    assert all_stats(tmp_path / "b.duckdb") == all_stats(tmp_path / "a.duckdb")


def test_vendor_shapes_from_the_cli(tmp_path):
    """`logstats query mailgun|sendgrid|smtpeter PATH NAME=VALUE` answers as the HTTP API
    does, from the file when no daemon runs; a bad parameter is the API's error, exit 1."""
    import json

    db = tmp_path / "v.duckdb"
    config = str(ROOT / "config" / "logstats.yaml")
    demo = ROOT / "fixtures" / "demo"
    run_cli("backfill", "--config", config, "--db", str(db), *map(str, sorted(demo.iterdir())))
    base = ["--config", config, "--db", str(db)]
    mg = json.loads(
        run_cli(
            "query",
            "mailgun",
            *base,
            "/v3/stats/total",
            "event=delivered",
            "start=0",
            "resolution=month",
        ).stdout
    )
    expected = json.loads(run_cli("query", "emailtrack", *base, "--all", "--format", "json").stdout)
    # the MTA's own bounces (-system-) are in no vendor's numbers
    assert int(expected["-system-"]["SUCCESSCOUNT"]) > 0
    delivered = sum(int(row["SUCCESSCOUNT"]) for a, row in expected.items() if a != "-system-")
    assert delivered == sum(item["delivered"]["total"] for item in mg["stats"])
    sg = run_cli(
        "query",
        "sendgrid",
        *base,
        "/api/distributor.manage.xml",
        "method=stats",
        "user=alice",
        "aggregate=1",
    ).stdout
    assert f"<requests>{expected['alice']['SENDCOUNT']}</requests>" in sg
    bad = run_cli("query", "mailgun", *base, "/v3/stats/total", "event=bogus", check=False)
    assert 1 == bad.returncode
    assert "event" in json.loads(bad.stdout)["message"]


def test_version_and_vendor_names_in_the_help():
    """`logstats --version` prints the version and exits 0; the help spells the vendors'
    names as they do."""
    import logstats

    proc = run_cli("--version")
    assert f"logstats {logstats.__version__}" == proc.stdout.strip()
    text = run_cli("query", "--help").stdout
    assert "SendGrid stats" in text and "SMTPeter stats" in text and "Mailgun stats" in text
    assert "Sendgrid" not in text and "Smtpeter" not in text


def test_a_file_read_again_is_reported_as_already_read(tmp_path):
    """Backfilling a file a second time reads nothing and says so (not `reason=null`)."""
    import json

    log = tmp_path / "mainlog"
    log.write_text("\n".join(exim_log(5).lines) + "\n")
    db = str(tmp_path / "a.duckdb")
    run_cli("backfill", "--db", db, str(log))
    proc = run_cli("backfill", "--db", db, str(log))
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    skipped = [e for e in events if e.get("event") == "file_skipped"]
    assert skipped and 0 == skipped[0]["lines"]
    assert skipped[0]["reason"].startswith("already read")


def _actions(parser, name="logstats"):
    """(command, action) for every action of ``parser`` and of its subcommands."""
    import argparse

    for action in parser._actions:
        yield name, action
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _actions(sub, f"{name} {sub_name}")


def test_every_command_and_argument_has_help():
    """Walking the argparse tree: every argument, option and subcommand has a help text
    (what `--help` and the man page show), and every command a description."""
    import argparse

    missing = []
    for name, action in _actions(build_parser()):
        if not action.help or action.help == argparse.SUPPRESS:
            missing.append(f"{name}: {action.dest}")
        if isinstance(action, argparse._SubParsersAction):
            helped = {a.dest for a in action._choices_actions if a.help}
            missing += [f"{name} {c}: no help" for c in action.choices if c not in helped]
            bare = [c for c, p in action.choices.items() if not p.description]
            missing += [f"{name} {c}: no description" for c in bare]
    assert [] == missing


def test_every_subcommand_answers_help():
    """`logstats X --help` works for every command of the tree (nested ones included)."""
    names = {name for name, _ in _actions(build_parser())} - {"logstats"}
    assert {f"logstats {c}" for c in COMMANDS} <= names | {"logstats query"}
    for name in sorted(names):
        proc = run_cli(*name.split()[1:], "--help")
        assert proc.stdout.startswith(f"usage: {name}"), name


def test_times_take_dates_before_unix_seconds():
    """--start/--end: 8 digits forming a date are that day (UTC), 14 digits a moment,
    other digits Unix seconds, else ISO 8601; a bad time is a usage error naming the forms."""
    from datetime import UTC, datetime

    from logstats.timeparse import parse_time

    assert datetime(2026, 11, 24, tzinfo=UTC) == parse_time("20261124")
    assert datetime(2026, 11, 24, 10, 30, 5, tzinfo=UTC) == parse_time("20261124103005")
    assert datetime.fromtimestamp(20261332, UTC) == parse_time("20261332")  # no 13th month
    assert datetime.fromtimestamp(1764000000, UTC) == parse_time("1764000000")
    assert datetime(2026, 11, 24, 9, tzinfo=UTC) == parse_time("2026-11-24T10:00:00+01:00")
    assert datetime(2026, 11, 24, tzinfo=UTC) == parse_time("2026-11-24")
    for bad in ("yesterday", "99999999999999999999", "2026-13-01"):
        with pytest.raises(ValueError, match=r"out of range|is not a time"):
            parse_time(bad)
    args = build_parser().parse_args(
        ["query", "emailtrack", "--all", "--start", "20261124", "--end", "20261125120000"]
    )
    assert (datetime(2026, 11, 24, tzinfo=UTC), datetime(2026, 11, 25, 12, tzinfo=UTC)) == (
        args.start,
        args.end,
    )
    proc = run_cli("query", "emailtrack", "--all", "--start", "soon", check=False)
    assert 2 == proc.returncode
    assert "YYYYMMDD" in proc.stderr and "Traceback" not in proc.stderr


def test_a_date_as_start_counts_from_that_day(tmp_path):
    """`--start 20250101` is 2025-01-01 (as `--start 2025-01-01`), not Unix second
    20250101 (1970-08-23, which would count everything)."""
    log = tmp_path / "mainlog"
    log.write_text("\n".join(exim_log(3).lines) + "\n")  # 2024-12-31 22:00 past midnight
    db = tmp_path / "d.duckdb"
    run_cli("backfill", "--config", str(scenario_config(tmp_path)), "--db", str(db), str(log))
    everything = all_stats(db)
    from_date = all_stats(db, "--start", "20250101")
    assert from_date == all_stats(db, "--start", "2025-01-01")
    assert from_date != everything
    assert all_stats(db, "--start", "20250101", "--end", "20250102") == from_date


def test_an_account_that_does_not_exist_is_a_failure(tmp_path):
    """An account neither in the account map nor ever counted: cPanel's failure envelope
    with a reason, exit 1. One in the map with no mail, or one with counts only: zeros or
    its numbers, result 1."""
    import json

    log = tmp_path / "mainlog"
    log.write_text("\n".join(exim_log(5).lines) + "\n")
    db = tmp_path / "d.duckdb"
    cfg = scenario_config(tmp_path)
    run_cli("backfill", "--config", str(cfg), "--db", str(db), str(log))
    cfg.write_text(cfg.read_text().replace("bob.test: bob}", "bob.test: bob, carol.test: carol}"))
    base = ["query", "emailtrack", "--config", str(cfg), "--db", str(db)]

    proc = run_cli(*base, "--account", "nobody", check=False)
    assert 1 == proc.returncode
    body = json.loads(proc.stdout)["cpanelresult"]
    assert (0, []) == (body["event"]["result"], body["data"])
    assert "'nobody' does not exist" in body["event"]["reason"]

    carol = json.loads(run_cli(*base, "--account", "carol").stdout)["cpanelresult"]
    assert 1 == carol["event"]["result"]
    assert {"0"} == set(carol["data"][0].values())

    counted = all_stats(db)
    unmapped = sorted(set(counted) - {"alice", "bob"})  # local users, -remote-
    assert unmapped
    for account in unmapped:
        got = json.loads(run_cli(*base, f"--account={account}").stdout)["cpanelresult"]
        assert [counted[account]] == got["data"], account
    # an existing account with nothing in the window is zeros, not a failure
    quiet = json.loads(
        run_cli(*base, f"--account={unmapped[0]}", "--start", "20300101").stdout
    )["cpanelresult"]
    assert (1, {"0"}) == (quiet["event"]["result"], set(quiet["data"][0].values()))
    table = run_cli(*base, "--account", "nobody", "--format", "table", check=False)
    assert (1, "") == (table.returncode, table.stdout)
    assert "does not exist" in table.stderr


def test_format_table_with_one_account(tmp_path):
    """`--account NAME --format table` prints the table of --all for that one account."""
    log = tmp_path / "mainlog"
    log.write_text("\n".join(exim_log(5).lines) + "\n")
    db = tmp_path / "d.duckdb"
    cfg = scenario_config(tmp_path)
    run_cli("backfill", "--config", str(cfg), "--db", str(db), str(log))
    everyone = run_cli("query", "emailtrack", "--db", str(db), "--all").stdout.splitlines()
    one = run_cli(
        "query", "emailtrack", "--db", str(db), "--account", "alice", "--format", "table"
    ).stdout.split()
    header = everyone[0].split()
    [alice] = [line.split() for line in everyone[1:] if line.split()[0] == "alice"]
    assert header + alice == one


ANSI = r"\x1b\[[0-9;?]*[A-Za-z]"


def _on_a_terminal(args, columns=150):
    """``logstats ARGS`` with stdin, stdout and stderr on a pseudo-terminal of ``columns``
    columns: (exit status, everything it wrote, ANSI sequences removed)."""
    import fcntl
    import os
    import pty
    import re
    import struct
    import subprocess
    import sys
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "COLUMNS")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "logstats", *args],
        stdin=slave, stdout=slave, stderr=slave, cwd=ROOT, env={**env, "TERM": "xterm"},
    )  # fmt: skip
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every writer closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    code = proc.wait(timeout=120)
    return code, re.sub(ANSI, "", b"".join(chunks).decode("utf-8", "replace"))


def _big_exim_log(path, messages=4000):
    lines = exim_log(21, messages=messages).lines
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def test_progress_on_a_terminal_ends_at_100_percent_with_the_logged_numbers(tmp_path):
    """On a terminal, backfill draws a bar per file: percentage of its bytes, ETA, lines and
    lines/s; its last draw is 100 % with every line of the file and the very lines/s that
    the `file_read` line logs. The console log line leaves out empty values."""
    import re

    log = tmp_path / "mainlog"
    total = _big_exim_log(log)
    size = log.stat().st_size
    db = tmp_path / "p.duckdb"
    code, out = _on_a_terminal(["backfill", "--db", str(db), str(log)])
    assert 0 == code, out
    draws = [s for s in re.split(r"[\r\n]+", out) if s.startswith("mainlog: ") and "%|" in s]
    assert draws, out
    last = draws[-1]
    [logged] = [s for s in out.splitlines() if "file_read" in s]
    rate = int(re.search(r"lines_per_s=(\d+)", logged).group(1))
    assert f"lines={total}" in logged
    assert last.startswith("mainlog: 100%|"), last
    assert f" {total:,} lines, {rate:,} lines/s" in last, (last, logged)
    shown = re.search(r"\| ([\d.]+[kMG]?B)/([\d.]+[kMG]?B),", last)
    assert shown is not None and shown.group(1) == shown.group(2), last
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d\]$", last.rstrip()), last  # elapsed<ETA
    assert size > 1 << 20  # a file the size the bar counts in MB
    assert "=None" not in logged and "={}" not in logged, logged  # reason=None, anomalies={}
    # read again: nothing to read, no bar; said so on the console
    code, out = _on_a_terminal(["backfill", "--db", str(db), str(log)])
    assert 0 == code
    assert "%|" not in out
    assert "file_skipped" in out and "already read" in out


def test_no_progress_bar_unless_asked_off_a_terminal(tmp_path):
    """--no-progress draws nothing on a terminal; on a pipe there is no bar (JSON log lines
    only) unless --progress asks for it."""
    log = tmp_path / "mainlog"
    _big_exim_log(log, messages=300)
    code, out = _on_a_terminal(["backfill", "--no-progress", "--db", str(tmp_path / "a"), str(log)])
    assert 0 == code
    assert "%|" not in out and "file_read" in out
    piped = run_cli("backfill", "--db", str(tmp_path / "b"), str(log))
    assert "" == piped.stdout
    lines = piped.stderr.splitlines()
    assert lines and all(line.startswith("{") for line in lines), piped.stderr
    forced = run_cli("backfill", "--progress", "--db", str(tmp_path / "c"), str(log))
    assert "mainlog: 100%|" in forced.stderr


def test_on_the_journal_lines_carry_their_priority(tmp_path, monkeypatch):
    """When stderr is the journal ($JOURNAL_STREAM names its device:inode, as systemd sets
    it), every line starts with its sd-daemon priority: <6> info, <4> warning, <3> error
    (the one-line errors too). Another stream named there: plain JSON lines."""
    import json
    import os
    import subprocess
    import sys

    log = tmp_path / "mainlog"
    log.write_text("\n".join(exim_log(5).lines) + "\n")
    err = tmp_path / "stderr"

    def backfill(journal_of):
        with err.open("wb") as f:
            st = os.fstat((journal_of or f).fileno())
            proc = subprocess.run(
                [sys.executable, "-m", "logstats", "backfill", "--db", str(tmp_path / "j"),
                 str(log), str(tmp_path / "missing.log")],
                stdout=subprocess.PIPE, stderr=f, cwd=ROOT, check=False,
                env={**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"},
            )  # fmt: skip
        assert 1 == proc.returncode and b"" == proc.stdout
        return err.read_text().splitlines()

    lines = backfill(None)
    assert all(line[:3] in ("<3>", "<4>", "<6>") for line in lines), lines
    [read] = [line for line in lines if '"file_read"' in line]
    assert read.startswith("<6>{") and "file_read" == json.loads(read[3:])["event"]
    [error] = [line for line in lines if "missing.log" in line]
    assert error.startswith("<3>logstats: error: ")
    with (tmp_path / "other").open("wb") as other:
        plain = backfill(other)
    assert plain and not any(line.startswith("<") for line in plain), plain

    from logstats import cli

    stream = (tmp_path / "inproc").open("w")
    st = os.fstat(stream.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    cli.configure_logging(stream)
    import structlog

    logger = structlog.get_logger()
    logger.debug("d")
    logger.info("i")
    logger.warning("w")
    logger.error("e")
    stream.close()
    cli.configure_logging()
    got = [(line[:3], json.loads(line[3:])["event"]) for line in (tmp_path / "inproc").open()]
    assert [("<7>", "d"), ("<6>", "i"), ("<4>", "w"), ("<3>", "e")] == got


def test_serve_logs_to_stderr_and_writes_nothing_to_stdout(tmp_path):
    """serve logs as every command does: on stderr (serve_ready there); stdout stays empty.
    Through the running daemon, an account that does not exist is the same failure as
    from the file, and a mapped account without mail is zeros."""
    import json

    from tests.daemon_harness import Serve, short_dir, write_config

    with short_dir() as work:
        log = work / "mainlog"
        log.write_text("\n".join(exim_log(5).lines) + "\n")
        domains = {"alice.test": "alice", "bob.test": "bob", "carol.test": "carol"}
        cfg = write_config(work, [(log, "exim")], domains=domains)
        d = Serve(cfg)
        try:
            d.wait_ready()
            d.wait_event("serve_ready", timeout=30)
            d.wait_event("batch_committed", timeout=30)
            base = ["query", "emailtrack", "--config", str(cfg)]  # the store is the daemon's
            nobody = run_cli(*base, "--account", "nobody", check=False)
            assert 1 == nobody.returncode, nobody.stderr
            event = json.loads(nobody.stdout)["cpanelresult"]["event"]
            assert 0 == event["result"] and "does not exist" in event["reason"]
            carol = json.loads(run_cli(*base, "--account", "carol").stdout)["cpanelresult"]
            assert (1, {"0"}) == (carol["event"]["result"], set(carol["data"][0].values()))
        finally:
            d.close()
        assert [] == d.raw
        assert any('"serve_ready"' in line for line in d.stderr)


@pytest.mark.parametrize("kind", ["gz", "xz", "bz2"])
def test_progress_of_compressed_files(tmp_path, kind):
    """A compressed file's bar counts its content: gzip (the size in its trailer) and xz
    (the sizes in its index) have a percentage that ends at 100 % with the plain file's
    size; bzip2 records no size: bytes read, lines and lines/s, no percentage."""
    import bz2
    import lzma
    import re

    plain = tmp_path / "mainlog"
    total = _big_exim_log(plain, messages=1500)
    log = tmp_path / f"mainlog.1.{kind}"
    opener = {"gz": gzip.open, "xz": lzma.open, "bz2": bz2.open}[kind]
    with opener(log, "wb") as f:
        f.write(plain.read_bytes())
    code, out = _on_a_terminal(["backfill", "--db", str(tmp_path / "c.duckdb"), str(log)])
    assert 0 == code, out
    draws = [s for s in re.split(r"[\r\n]+", out) if s.startswith(f"{log.name}: ")]
    assert draws, out
    last = draws[-1]
    assert f" {total:,} lines, " in last, last
    from tqdm import tqdm

    size = tqdm.format_sizeof(plain.stat().st_size, divisor=1000) + "B"
    if kind == "bz2":
        assert "%|" not in out
        assert last.startswith(f"{log.name}: {size}, "), last
    else:
        assert last.startswith(f"{log.name}: 100%|"), last
        assert f"| {size}/{size}, " in last, last
