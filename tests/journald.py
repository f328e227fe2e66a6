"""A real, private ``systemd-journald`` for tests, and services that log to it.

``run_inside(module, function, folder)`` runs ``module.function(folder)`` in a new mount
namespace (``unshare -m``, private propagation), where ``Journald`` mounts tmpfs over
/run/systemd and /run/log, lays its own journald.conf over the machine's (volatile
storage, no rate limit, no kernel messages) and starts ``/lib/systemd/systemd-journald``:
its sockets are at the usual paths, so journalctl (``--rotate``, ``--sync``) and every
client talk to it and nothing of the host's journal is touched.  What the function raises
fails the test (its traceback is the test's message).

Services log as real ones do: ``syslog`` sends RFC 3164 datagrams to /dev/log's socket,
as Postfix's and Exim's syslog(3) calls do (journald takes the identifier and pid from
them and stamps the entry with its own clock); ``native`` sends the native protocol
(any fields, binary values too).  A writer put ``in_unit`` runs in a cgroup named after a
systemd unit, from which journald itself sets the trusted ``_SYSTEMD_UNIT`` field.
Needs root, ``unshare`` and systemd (tests/mta/install.sh).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
import traceback
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
JOURNALD = Path("/lib/systemd/systemd-journald")
DIRECTORY = "/run/log/journal"  # where journald keeps a volatile journal
SYSLOG_SOCKET = "/run/systemd/journal/dev-log"
NATIVE_SOCKET = "/run/systemd/journal/socket"
# the cgroup hierarchies journald may read a sender's unit from (name=systemd, and the
# unified one of a hybrid set-up)
CGROUP_ROOTS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))
CONF = """[Journal]
Storage=volatile
RateLimitIntervalSec=0
RateLimitBurst=0
ReadKMsg=no
ForwardToSyslog=no
ForwardToWall=no
ForwardToConsole=no
RuntimeMaxUse=256M
"""
_SYSLOG_LINE = re.compile(r"^\w{3} +\d+ \d\d:\d\d:\d\d (\S+) ([^\s\[:]+)(?:\[(\d+)\])?: (.*)$")


def journal_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (a private mount namespace for journald)"
    for tool in ("unshare", "journalctl", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} missing"
    if not JOURNALD.exists():
        return f"{JOURNALD} missing (Debian package systemd; tests/mta/install.sh)"
    if subprocess.run(["unshare", "-m", "true"], check=False).returncode != 0:
        return "unshare -m is not permitted here"
    return None


def run_inside(module: str, function: str, folder: Path, timeout: float = 600) -> None:
    """``module.function(folder)`` in a private mount namespace; its failure is ours."""
    reason = journal_missing()
    if reason is not None:
        pytest.skip(reason)
    code = (
        "import sys, tests.journald as j; "
        f"j._main({module!r}, {function!r}, sys.argv[1])"
    )  # fmt: skip
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", code, str(folder)],
        capture_output=True, text=True, check=False, cwd=ROOT, timeout=timeout,
    )  # fmt: skip
    if proc.returncode == 77:
        pytest.skip(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, f"{function} failed:\n{proc.stdout[-4000:]}{proc.stderr[-8000:]}"


def _main(module: str, function: str, folder: str) -> None:
    import importlib

    try:
        getattr(importlib.import_module(module), function)(Path(folder))
    except pytest.skip.Exception as exc:
        print(exc.msg)
        sys.exit(77)
    except BaseException:
        traceback.print_exc()
        sys.exit(1)
    sys.exit(0)


class Journald:
    """journald on tmpfs in this (private) mount namespace."""

    def __init__(self, folder: Path) -> None:
        for target in ("/run/systemd", "/run/log"):
            os.makedirs(target, exist_ok=True)
            subprocess.run(["mount", "-t", "tmpfs", "tmpfs", target], check=True)
        os.makedirs("/run/systemd/journal")
        conf = folder / "journald.conf"
        conf.write_text(CONF)
        if os.path.exists("/etc/systemd/journald.conf"):
            subprocess.run(["mount", "--bind", str(conf), "/etc/systemd/journald.conf"], check=True)
        self.proc = subprocess.Popen([str(JOURNALD)], stderr=subprocess.DEVNULL)
        for _ in range(200):
            if os.path.exists(NATIVE_SOCKET) and os.path.exists(SYSLOG_SOCKET):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("journald did not open its sockets")
        self.directory = DIRECTORY

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> Journald:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------
    def syslog(self, lines: Iterable[str], unit: str | None = None) -> int:
        """Log syslog-format lines (``Mmm dd hh:mm:ss host ident[pid]: text``) as their
        programs would, through /dev/log (from a process in ``unit``'s cgroup when given);
        returns how many were sent.  Returns once journald has stored them."""
        payload = json.dumps(list(lines))
        code = (
            "import json, socket, sys, os\n"
            "unit, lines = sys.argv[1], json.loads(sys.stdin.read())\n"
            "if unit:\n"
            "    for h in sys.argv[2:]:\n"
            "        open(os.path.join(h, 'cgroup.procs'), 'w').write(str(os.getpid()))\n"
            "s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
            f"s.connect({SYSLOG_SOCKET!r})\n"
            "for line in lines:\n"
            "    s.send(line.encode())\n"
            "import subprocess\n"
            "subprocess.run(['journalctl', '--sync'], check=True)\n"
        )
        datagrams = [_datagram(line) for line in json.loads(payload)]
        with _cgroup(unit) as groups:
            subprocess.run(
                [sys.executable, "-c", code, unit or "", *map(str, groups)],
                input=json.dumps(datagrams), text=True, check=True, timeout=300,
            )  # fmt: skip
        self.sync()
        return len(datagrams)

    def native(self, fields: dict[str, str | bytes]) -> None:
        """One entry through the native protocol (values may be bytes, not UTF-8)."""
        out = b""
        for key, value in fields.items():
            data = value.encode() if isinstance(value, str) else value
            if b"\n" in data or not isinstance(value, str):
                out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
            else:
                out += key.encode() + b"=" + data + b"\n"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(out, NATIVE_SOCKET)
        self.sync()

    def sync(self) -> None:
        subprocess.run(["journalctl", "--sync"], check=True, timeout=60)

    def rotate(self) -> None:
        subprocess.run(["journalctl", "--rotate"], check=True, timeout=60, capture_output=True)

    def vacuum_files(self, n: int) -> str:
        proc = subprocess.run(
            ["journalctl", "-D", self.directory, f"--vacuum-files={n}"],
            check=True, timeout=60, capture_output=True, text=True,
        )  # fmt: skip
        return proc.stderr + proc.stdout

    def files(self) -> list[Path]:
        return sorted(Path(self.directory).rglob("*.journal"))

    # -- reading (journalctl's own text: the independent view of the same entries) ----------
    def text(self, matches: list[str]) -> str:
        """The entries matching, as journalctl prints them (RFC 3339, UTC, microseconds)."""
        proc = subprocess.run(
            ["journalctl", "-D", self.directory, "--no-pager", "-q", "-a", "--utc",
             "-o", "short-iso-precise", *matches],
            check=True, timeout=120, capture_output=True,
        )  # fmt: skip
        return proc.stdout.decode("utf-8", "replace")

    def entries(self, matches: list[str]) -> list[dict[str, object]]:
        proc = subprocess.run(
            ["journalctl", "-D", self.directory, "--no-pager", "-q", "-o", "json", *matches],
            check=True, timeout=120, capture_output=True, text=True,
        )  # fmt: skip
        return [json.loads(line) for line in proc.stdout.splitlines()]


def _datagram(line: str) -> str:
    """A syslog line as its program sends it to /dev/log: ``<22>`` (mail.info), the stamp,
    ``ident[pid]: text`` (syslog(3) leaves the host out)."""
    m = _SYSLOG_LINE.match(line)
    assert m is not None, line
    stamp = line[:15]
    _host, ident, pid, text = m.groups()
    tag = f"{ident}[{pid}]" if pid else ident
    return f"<22>{stamp} {tag}: {text}"


@contextlib.contextmanager
def _cgroup(unit: str | None) -> Iterator[list[Path]]:
    """A cgroup named after ``unit`` (in a slice of its own), removed afterwards."""
    if unit is None:
        yield []
        return
    roots = [r for r in CGROUP_ROOTS if (r / "cgroup.procs").exists()]
    if not roots:
        pytest.skip("no writable cgroup hierarchy to run a writer in a unit's cgroup")
    groups = [r / f"logstatstest{os.getpid()}.slice" / unit for r in roots]
    for group in groups:
        group.mkdir(parents=True, exist_ok=True)
    try:
        yield groups
    finally:
        for path in [p for g in groups for p in (g, g.parent)]:
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)  # its process is still being reaped
