"""logstats' log lines in a real journal, at their own priority.

systemd connects a service's stderr to journald's stream socket and says so in
``$JOURNAL_STREAM`` (the socket's device:inode); a line that starts with ``<N>`` is then
filed at priority N.  The test starts a real ``systemd-journald`` in a private mount
namespace (its sockets and files on tmpfs, nothing of the host's journal touched),
connects ``logstats backfill`` to it exactly that way, and reads the entries back with
``journalctl -o json``.  Needs root, ``unshare`` and systemd (tests/mta/install.sh).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.journald import journal_missing
from tests.logmaker import exim_log

ROOT = Path(__file__).resolve().parents[1]

# Run inside `unshare -m`: journald on tmpfs, then `logstats ARGS` with stderr connected
# to its stdout socket as systemd connects a service (the stream header: identifier,
# unit, default priority 6, level prefixes on, no forwarding), with or without
# $JOURNAL_STREAM; prints the entries as journalctl's JSON lines.
INSIDE = r"""
import json, os, socket, subprocess, sys, time
identifier, with_env, argv = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
for target in ("/run/systemd", "/run/log"):
    os.makedirs(target, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", target], check=True)
os.makedirs("/run/systemd/journal")
journald = subprocess.Popen(["/lib/systemd/systemd-journald"], stderr=subprocess.DEVNULL)
try:
    for _ in range(100):
        if os.path.exists("/run/systemd/journal/stdout"):
            break
        time.sleep(0.1)
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stream.connect("/run/systemd/journal/stdout")
    stream.sendall(f"{identifier}\n\n6\n1\n0\n0\n0\n".encode())
    st = os.fstat(stream.fileno())
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if with_env:
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=stream.fileno(), env=env, check=False)
    stream.close()
    for _ in range(100):
        out = subprocess.run(["journalctl", "-D", "/run/log/journal", "-o", "json",
                              "--no-pager", "-t", identifier],
                             capture_output=True, text=True, check=False).stdout
        if "backfill_done" in out:
            break
        time.sleep(0.1)
    print(json.dumps({"code": proc.returncode, "entries": out.splitlines()}))
finally:
    journald.kill()
    journald.wait()
"""


def in_journal(identifier: str, with_env: bool, argv: list[str]) -> tuple[int, list[dict]]:
    reason = journal_missing()
    if reason is not None:
        pytest.skip(reason)
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", INSIDE,
         identifier, "1" if with_env else "0", *argv],
        capture_output=True, text=True, check=False, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert 0 == proc.returncode, proc.stderr
    result = json.loads(proc.stdout)
    return result["code"], [json.loads(line) for line in result["entries"]]


def test_log_lines_reach_the_journal_at_their_priority(tmp_path: Path) -> None:
    """With $JOURNAL_STREAM naming its stderr, backfill's info lines are priority 6 and
    its one-line errors priority 3, with the prefix taken off; without it (the control),
    the same error lands at the stream's default, 6."""
    log = tmp_path / "mainlog"
    log.write_text("\n".join(exim_log(5).lines) + "\n")
    argv = [sys.executable, "-m", "logstats", "backfill", "--db", str(tmp_path / "a.duckdb"),
            str(log), str(tmp_path / "missing.log")]  # fmt: skip
    code, entries = in_journal("logstats-test", True, argv)
    assert 1 == code
    by_event = {}
    for entry in entries:
        message = entry["MESSAGE"]
        assert not message.startswith("<"), message
        if message.startswith("{"):
            by_event[json.loads(message)["event"]] = entry["PRIORITY"]
    assert {"file_read": "6", "backfill_done": "6"} == by_event
    [error] = [e for e in entries if e["MESSAGE"].startswith("logstats: error: ")]
    assert "missing.log" in error["MESSAGE"] and "3" == error["PRIORITY"]

    argv[5] = str(tmp_path / "b.duckdb")
    code, entries = in_journal("logstats-plain", False, argv)
    [error] = [e for e in entries if "logstats: error: " in e["MESSAGE"]]
    assert "6" == error["PRIORITY"]  # no prefix: journald's default for the stream
