"""The systemd side: the sd_notify protocol, the unit file, sysusers and logrotate samples.

The notify tests talk to a real ``AF_UNIX`` datagram socket, as systemd's manager does.
The unit is checked by ``systemd-analyze verify``; the sandbox it asks for cannot be
entered without systemd as PID 1, so ``MemoryDenyWriteExecute=`` and ``SystemCallFilter=``
are reproduced with their kernel mechanisms (``prctl(PR_SET_MDWE)`` and a seccomp filter
built from the unit's own lines) and logstats runs under them.

Missing tools (systemd, python3-seccomp, logrotate) are installed by tests/mta/install.sh
when running as root, else the tests needing them skip with the reason.
"""

from __future__ import annotations

import configparser
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from logstats.notify import Notifier

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "logstats.service"
SYSUSERS = ROOT / "systemd" / "logstats.conf"
LOGROTATE = ROOT / "config" / "logrotate.sample"
INSTALL = ROOT / "tests" / "mta" / "install.sh"
LOGSTATS = Path(sys.executable).with_name("logstats")
SYSTEM_PYTHON = Path("/usr/bin/python3")


# --- helpers -------------------------------------------------------------------------------


@cache
def _installed() -> bool:
    """Run tests/mta/install.sh once (as root); True when it succeeded."""
    if os.geteuid() != 0:
        return False
    proc = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True, check=False)
    return proc.returncode == 0


def need_tool(name: str) -> str:
    """The path of executable ``name``, installing the test packages if needed, or skip."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    if found is None and _installed():
        found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    if found is None:
        pytest.skip(f"{name} missing and not installable (tests/mta/install.sh needs root)")
    return found


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket standing in for systemd's notify socket, and its path."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield sock, path
    sock.close()


def recv(sock: socket.socket) -> str:
    """The next datagram, decoded (fails the test after the socket's timeout)."""
    return sock.recv(4096).decode()


def unit_config(path: Path = UNIT) -> configparser.RawConfigParser:
    """The unit file read like systemd does: case-kept keys, repeats allowed (last wins)."""
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def unit_values(key: str, path: Path = UNIT) -> list[str]:
    """Every value of ``key=`` in the unit, in order (systemd accumulates some keys)."""
    return [
        line.partition("=")[2].strip()
        for line in path.read_text().splitlines()
        if line.partition("=")[0].strip() == key
    ]


def runnable_unit(tmp_path: Path) -> Path:
    """A copy of the unit whose ExecStart= names this venv's logstats (which exists)."""
    text = UNIT.read_text()
    assert "ExecStart=/usr/local/bin/logstats " in text
    copy = tmp_path / "logstats.service"
    copy.write_text(text.replace("ExecStart=/usr/local/bin/logstats ", f"ExecStart={LOGSTATS} "))
    return copy


@cache
def serve_exists() -> bool:
    """Whether this checkout's CLI has the ``serve`` command yet."""
    proc = subprocess.run(
        [str(LOGSTATS), "serve", "--help"], capture_output=True, text=True, check=False
    )
    return proc.returncode == 0


needs_serve = pytest.mark.skipif(not serve_exists(), reason="`logstats serve` not written yet")


# --- the sd_notify protocol ----------------------------------------------------------------


def test_ready_with_status_is_one_datagram(receiver: tuple[socket.socket, str]) -> None:
    """READY=1 and its STATUS= travel together, as one datagram, newline-separated."""
    sock, path = receiver
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert True is notifier.enabled
    notifier.ready("following 2 logs")
    assert "READY=1\nSTATUS=following 2 logs" == recv(sock)
    notifier.ready()
    assert "READY=1" == recv(sock)


def test_every_message_kind(receiver: tuple[socket.socket, str]) -> None:
    """status, watchdog, stopping and extend_timeout send their documented assignments."""
    sock, path = receiver
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    notifier.status("caught up; 1234 lines/s")
    assert "STATUS=caught up; 1234 lines/s" == recv(sock)
    notifier.watchdog()
    assert "WATCHDOG=1" == recv(sock)
    notifier.stopping()
    assert "STOPPING=1" == recv(sock)
    notifier.extend_timeout(2.5)
    assert "EXTEND_TIMEOUT_USEC=2500000" == recv(sock)
    assert True is notifier.send("FDSTORE=0")
    assert "FDSTORE=0" == recv(sock)


def test_reloading_carries_monotonic_usec(receiver: tuple[socket.socket, str]) -> None:
    """RELOADING=1 comes with MONOTONIC_USEC= read from CLOCK_MONOTONIC at the call."""
    sock, path = receiver
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier.from_env({"NOTIFY_SOCKET": path}).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = recv(sock).split("\n")
    assert "RELOADING=1" == first
    key, _, usec = second.partition("=")
    assert "MONOTONIC_USEC" == key
    assert before <= int(usec) <= after


def test_status_stays_on_one_line(receiver: tuple[socket.socket, str]) -> None:
    """A line break in a status would start a new assignment; it becomes a space."""
    sock, path = receiver
    Notifier.from_env({"NOTIFY_SOCKET": path}).status("error:\ncannot read mainlog\r\n")
    assert "STATUS=error: cannot read mainlog" == recv(sock)


def test_abstract_namespace_socket() -> None:
    """NOTIFY_SOCKET=@name addresses the abstract socket "\\0name" (no file involved)."""
    name = f"logstats-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert True is notifier.enabled
        notifier.ready("abstract")
        assert "READY=1\nSTATUS=abstract" == recv(sock)


def test_watchdog_interval_is_half_the_timeout(receiver: tuple[socket.socket, str]) -> None:
    """WATCHDOG_USEC=30000000 (WatchdogSec=30) for this pid: ping every 15 seconds."""
    _, path = receiver
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert 15.0 == Notifier.from_env(env).watchdog_interval()
    del env["WATCHDOG_PID"]  # older managers set no WATCHDOG_PID: the timeout is ours
    assert 15.0 == Notifier.from_env(env).watchdog_interval()


def test_watchdog_meant_for_another_pid_is_ignored(receiver: tuple[socket.socket, str]) -> None:
    """A child that inherited its parent's WATCHDOG_* does not think it is watched."""
    _, path = receiver
    for pid in (str(os.getpid() + 1), "1", "not-a-pid"):
        env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}
        assert None is Notifier.from_env(env).watchdog_interval(), pid


def test_no_watchdog_when_timeout_unusable(receiver: tuple[socket.socket, str]) -> None:
    """No, zero, negative or malformed WATCHDOG_USEC, or no socket at all: no watchdog."""
    _, path = receiver
    for usec in (None, "0", "-5", "", "30s"):
        env = (
            {"NOTIFY_SOCKET": path}
            if usec is None
            else {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": usec}
        )
        assert None is Notifier.from_env(env).watchdog_interval(), usec
    assert None is Notifier.from_env({"WATCHDOG_USEC": "30000000"}).watchdog_interval()


def test_disabled_outside_systemd() -> None:
    """Without a usable NOTIFY_SOCKET every call is a no-op and send() says False."""
    for env in (
        {},
        {"NOTIFY_SOCKET": ""},
        {"NOTIFY_SOCKET": "relative.sock"},
        {"NOTIFY_SOCKET": "vsock:2:1234"},
    ):
        notifier = Notifier.from_env(env)
        assert False is notifier.enabled, env
        notifier.ready("x")
        notifier.status("x")
        notifier.watchdog()
        notifier.reloading()
        notifier.stopping()
        notifier.extend_timeout(1)
        assert False is notifier.send("READY=1"), env


def test_from_env_defaults_to_process_environment(
    receiver: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Notifier.from_env() with no argument reads os.environ."""
    sock, path = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    Notifier.from_env().watchdog()
    assert "WATCHDOG=1" == recv(sock)


def test_broken_sockets_never_raise(tmp_path: Path) -> None:
    """Missing path, a regular file, a dead listener, an over-long path: False, no raise."""
    plain = tmp_path / "plain-file"
    plain.write_text("")
    dead = tmp_path / "dead.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(dead))  # the listener goes away, the socket file stays
    stream = tmp_path / "stream.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(stream))  # wrong socket type: EPROTOTYPE
    listener.listen()
    try:
        for address in (
            str(tmp_path / "missing.sock"),
            str(plain),
            str(dead),
            str(stream),
            str(tmp_path) + "/" + "x" * 200 + ".sock",
            "@logstats-test-nobody-" + uuid.uuid4().hex,
        ):
            notifier = Notifier.from_env({"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "1000"})
            assert False is notifier.send("READY=1"), address
            notifier.ready("still fine")
            notifier.watchdog()
            notifier.reloading()
            notifier.stopping()
    finally:
        listener.close()


def test_full_socket_does_not_hang(tmp_path: Path) -> None:
    """A manager that stops reading costs at most about a second per message, then False."""
    path = str(tmp_path / "full.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
        results = []
        for _ in range(10_000):  # the kernel queues max_dgram_qlen (512) datagrams at most
            start = time.monotonic()
            results.append(notifier.send("WATCHDOG=1"))
            if not results[-1]:
                break
        assert False is results[-1]
        assert time.monotonic() - start < 5
        assert "WATCHDOG=1" == sock.recv(64).decode()


# --- the unit, sysusers and logrotate files ------------------------------------------------

HARDENING = {
    "Type": "notify",
    "ExecStart": "/usr/local/bin/logstats serve --config /etc/logstats/logstats.yaml",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "TimeoutStartSec": "15min",
    "WatchdogSec": "30",
    "Restart": "on-failure",
    "RestartSec": "5",
    "TimeoutStopSec": "30",
    "StateDirectory": "logstats",
    "RuntimeDirectory": "logstats",
    "RuntimeDirectoryPreserve": "no",
    "User": "logstats",
    "Group": "logstats",
    "SupplementaryGroups": "adm",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "SystemCallErrorNumber": "EPERM",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "UMask": "0027",
    "ReadOnlyPaths": "/var/log",
    "Environment": "PYTHONUNBUFFERED=1",
}


def test_unit_has_the_hardening_keys() -> None:
    """[Service] sets every sandboxing and lifecycle key to the documented value."""
    service = unit_config()["Service"]
    for key, value in HARDENING.items():
        assert value == service.get(key), key
    assert ["@system-service", "~@privileged @resources"] == unit_values("SystemCallFilter")
    assert "multi-user.target" == unit_config()["Install"]["WantedBy"]


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the unit without a single warning.

    The copy's ExecStart= names an existing logstats (verify checks the binary exists);
    nothing else differs from systemd/logstats.service.
    """
    analyze = need_tool("systemd-analyze")
    proc = subprocess.run(
        [analyze, "verify", str(runnable_unit(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert (0, "", "") == (proc.returncode, proc.stdout, proc.stderr)


def test_unit_security_exposure_stays_low(tmp_path: Path) -> None:
    """`systemd-analyze security --offline` rates the sandbox "OK" (exposure below 2.0)."""
    analyze = need_tool("systemd-analyze")
    proc = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(runnable_unit(tmp_path))],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert 0 == proc.returncode, proc.stderr
    verdict = proc.stdout.strip().splitlines()[-1]
    assert "Overall exposure level for logstats.service:" in verdict
    assert float(verdict.split(":")[1].split()[0]) < 2.0, verdict


def test_sysusers_creates_the_service_user(tmp_path: Path) -> None:
    """systemd/logstats.conf makes a nologin system user homed in the state directory."""
    sysusers = need_tool("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    proc = subprocess.run(
        [sysusers, f"--root={tmp_path}", str(SYSUSERS)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert 0 == proc.returncode, proc.stderr
    passwd = (tmp_path / "etc" / "passwd").read_text().splitlines()
    [entry] = [line.split(":") for line in passwd if line.startswith("logstats:")]
    _, _, uid, gid, gecos, home, shell = entry
    assert ("logstats mail statistics", "/var/lib/logstats", "/usr/sbin/nologin") == (
        gecos,
        home,
        shell,
    )
    assert int(uid) < 1000
    assert f"logstats:x:{gid}:" in (tmp_path / "etc" / "group").read_text().splitlines()


def test_logrotate_sample_is_valid(tmp_path: Path) -> None:
    """logrotate accepts the sample stanza and would rotate a log with delaycompress."""
    logrotate = need_tool("logrotate")
    log = tmp_path / "mainlog"
    log.write_text("2024-01-01 00:00:00 1rabcd-000000-00 Completed\n")
    text = LOGROTATE.read_text().replace(
        "/var/log/exim4/mainlog /var/log/exim4/rejectlog", str(log)
    )
    conf = tmp_path / "logrotate.conf"
    conf.write_text(text)
    proc = subprocess.run(
        [logrotate, "--force", "-d", "-s", str(tmp_path / "state"), str(conf)],
        capture_output=True,
        text=True,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert 0 == proc.returncode, out
    assert "error" not in out.lower(), out
    assert f"renaming {log} to {log}.1" in out, out
    assert "compressing log with" not in out, out  # delaycompress: .1 stays plain


# --- logstats under the unit's sandbox -----------------------------------------------------

# Runs argv[2:] under MemoryDenyWriteExecute=yes (the kernel's PR_SET_MDWE, the same
# refusal of writable+executable and newly executable memory) and under the seccomp filter
# that the unit's SystemCallFilter=, SystemCallErrorNumber=EPERM, SystemCallArchitectures=
# native and RestrictAddressFamilies= lines (read from the unit argv[1]) describe.
SANDBOX = r"""
import ctypes, errno, os, subprocess, sys
import seccomp

def expand(names, seen):
    calls = set()
    for name in names:
        if not name.startswith("@"):
            calls.add(name)
        elif name not in seen:
            seen.add(name)
            out = subprocess.run(["systemd-analyze", "syscall-filter", name],
                                 capture_output=True, text=True, check=True).stdout
            items = [line.strip() for line in out.splitlines()[1:]]
            calls |= expand([i for i in items if i and not i.startswith("#")], seen)
    return calls

def values(unit, key):
    return [line.partition("=")[2].strip() for line in open(unit).read().splitlines()
            if line.partition("=")[0].strip() == key]

unit, argv = sys.argv[1], sys.argv[2:]
allowed = set()
for value in values(unit, "SystemCallFilter"):
    if value.startswith("~"):
        allowed -= expand(value[1:].split(), set())
    else:
        allowed |= expand(value.split(), set())
families = [getattr(__import__("socket"), f) for f in
            " ".join(values(unit, "RestrictAddressFamilies")).split()]
allowed.discard("socket")
flt = seccomp.SyscallFilter(seccomp.ERRNO(errno.EPERM))
for call in sorted(allowed):
    try:
        flt.add_rule(seccomp.ALLOW, call)
    except RuntimeError:
        pass  # not a system call on this architecture
for family in families:
    flt.add_rule(seccomp.ALLOW, "socket", seccomp.Arg(0, seccomp.EQ, int(family)))
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN (Linux 6.3)
    sys.exit(77)
flt.load()
os.execv(argv[0], argv)
"""


@cache
def sandbox_missing() -> str | None:
    """Why logstats cannot be run under the sandbox here, or None when it can."""
    if sys.platform != "linux":
        return "Linux only"
    if shutil.which("systemd-analyze") is None and not _installed():
        return "systemd-analyze missing (tests/mta/install.sh needs root)"

    def has_seccomp() -> bool:
        probe = [str(SYSTEM_PYTHON), "-c", "import seccomp"]
        return SYSTEM_PYTHON.exists() and subprocess.run(probe, check=False).returncode == 0

    if not has_seccomp() and not (_installed() and has_seccomp()):
        return "python3-seccomp missing for /usr/bin/python3 (tests/mta/install.sh needs root)"
    proc = subprocess.run([str(SYSTEM_PYTHON), "-c", SANDBOX, str(UNIT), "/bin/true"], check=False)
    if proc.returncode == 77:
        return "kernel without PR_SET_MDWE (Linux < 6.3)"
    if proc.returncode != 0:
        return f"sandbox probe exited {proc.returncode}"
    return None


def sandboxed(argv: list[str]) -> list[str]:
    """``argv`` wrapped to run under the unit's MDWE and system call filter."""
    reason = sandbox_missing()
    if reason is not None:
        pytest.skip(reason)
    return [str(SYSTEM_PYTHON), "-c", SANDBOX, str(UNIT), *argv]


def test_sandbox_refuses_writable_executable_memory() -> None:
    """The emulation is real: W+X mmap fails and AF_NETLINK is refused under it."""
    check = (
        "import mmap, socket\n"
        "try:\n"
        "    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
        "    print('wx-allowed')\n"
        "except OSError:\n"
        "    print('wx-refused')\n"
        "try:\n"
        "    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)\n"
        "    print('netlink-allowed')\n"
        "except OSError:\n"
        "    print('netlink-refused')\n"
    )
    proc = subprocess.run(
        sandboxed([sys.executable, "-c", check]), capture_output=True, text=True, check=False
    )
    assert (0, "wx-refused\nnetlink-refused\n") == (proc.returncode, proc.stdout), proc.stderr


def test_backfill_runs_in_the_sandbox(tmp_path: Path) -> None:
    """backfill, with spawned parser processes, works under the unit's MDWE and filter."""
    demo = ROOT / "fixtures" / "demo" / "exim_mainlog"
    big = tmp_path / "mainlog"
    chunk = demo.read_bytes()
    with big.open("wb") as out:  # past the in-process size limit: parsed by worker processes
        for _ in range(9 * 1024 * 1024 // len(chunk) + 1):
            out.write(chunk)
    db = tmp_path / "db.duckdb"
    cfg = tmp_path / "logstats.yaml"
    cfg.write_text("timezone: UTC\ningest: {workers: 2}\n")
    proc = subprocess.run(
        sandboxed([str(LOGSTATS), "backfill", "--config", str(cfg), "--db", str(db), str(big)]),
        capture_output=True,
        text=True,
        check=False,
    )
    assert 0 == proc.returncode, proc.stderr
    assert '"event": "backfill_done"' in proc.stderr
    proc = subprocess.run(
        sandboxed([str(LOGSTATS), "query", "emailtrack", "--db", str(db), "--all"]),
        capture_output=True,
        text=True,
        check=False,
    )
    assert 0 == proc.returncode, proc.stderr
    assert "SUCCESSCOUNT" in proc.stdout


# --- `logstats serve` speaks the protocol --------------------------------------------------


def wait_for(sock: socket.socket, line: str, deadline: float, seen: list[str]) -> None:
    """Receive datagrams until one has the assignment ``line`` (fail at ``deadline``)."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {line!r} before the deadline; got {seen!r}")
        sock.settimeout(left)
        try:
            message = sock.recv(4096).decode()
        except TimeoutError:
            continue
        seen.append(message)
        if line in message.split("\n"):
            return


@needs_serve
@pytest.mark.parametrize("sandbox", [False, True], ids=["plain", "sandboxed"])
def test_serve_notifies_ready_watchdog_and_stopping(
    tmp_path: Path, receiver: tuple[socket.socket, str], sandbox: bool
) -> None:
    """serve says READY=1, pings WATCHDOG=1, and on SIGTERM says STOPPING=1 and exits 0."""
    sock, path = receiver
    mainlog = tmp_path / "mainlog"
    mainlog.write_bytes((ROOT / "fixtures" / "demo" / "exim_mainlog").read_bytes())
    cfg = tmp_path / "logstats.yaml"
    cfg.write_text(
        "timezone: UTC\n"
        f"store: {{path: {tmp_path / 'db.duckdb'}}}\n"
        f"sources: [{{path: {mainlog}, mta: exim}}]\n"
        f"serve: {{socket: {tmp_path / 'logstats.sock'}}}\n"
    )
    argv = [str(LOGSTATS), "serve", "--config", str(cfg)]
    if sandbox:
        argv = sandboxed(argv)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
    env |= {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "PYTHONUNBUFFERED": "1"}
    seen: list[str] = []
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(sock, "READY=1", time.monotonic() + 60, seen)
        wait_for(sock, "WATCHDOG=1", time.monotonic() + 10, seen)
        proc.send_signal(signal.SIGTERM)
        wait_for(sock, "STOPPING=1", time.monotonic() + 30, seen)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert 0 == proc.returncode, stderr


# -- the daily report: logstats-report.service + logstats-report.timer ---------------------

REPORT_UNIT = ROOT / "systemd" / "logstats-report.service"
REPORT_TIMER = ROOT / "systemd" / "logstats-report.timer"


def _report_units(tmp_path: Path) -> tuple[Path, Path]:
    """Copies whose ExecStart= names this venv's logstats (verify checks what exists)."""
    text = REPORT_UNIT.read_text()
    assert "/usr/local/bin/logstats report " in text
    service = tmp_path / REPORT_UNIT.name
    service.write_text(text.replace("/usr/local/bin/logstats ", f"{LOGSTATS} "))
    timer = tmp_path / REPORT_TIMER.name
    timer.write_text(REPORT_TIMER.read_text())
    return service, timer


def test_report_timer_and_service_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` accepts the timer and its service without a warning; the
    timer fires every morning at 06:00 and catches up a missed one."""
    analyze = need_tool("systemd-analyze")
    service, timer = _report_units(tmp_path)
    proc = subprocess.run(
        [analyze, "verify", str(service), str(timer)],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert (0, "", "") == (proc.returncode, proc.stdout, proc.stderr)
    timer_cfg = unit_config(REPORT_TIMER)["Timer"]
    assert ("*-*-* 06:00", "true") == (timer_cfg["OnCalendar"], timer_cfg["Persistent"])
    assert "oneshot" == unit_config(REPORT_UNIT)["Service"]["Type"]
    proc = subprocess.run(
        [analyze, "calendar", timer_cfg["OnCalendar"]],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0 and "Normalized form: *-*-* 06:00:00" in proc.stdout, proc.stdout


def _exec_start_argv(value: str, host: str) -> list[str]:
    """ExecStart= as systemd hands it over: specifiers (%H, %%), $$, and C escapes in
    quotes resolved (the subset the unit uses), then split into words."""
    import shlex

    value = value.replace("%%", "\0").replace("%H", host).replace("\0", "%")
    value = value.replace("$$", "$").replace("\\\\", "\\")
    return shlex.split(value)


def test_report_service_mails_the_report(tmp_path: Path) -> None:
    """The service's command line, run with sendmail replaced by a recorder: one message to
    root with a Subject naming the host and the report as its body; a failing report sends
    nothing and fails the unit."""
    from tests.conftest import run_cli

    demo = ROOT / "fixtures" / "demo"
    db = tmp_path / "r.duckdb"
    cfg = tmp_path / "logstats.yaml"
    cfg.write_text(f"timezone: UTC\nstore:\n  path: {db}\nserve:\n  socket: {tmp_path}/no.sock\n")
    run_cli("backfill", "--config", str(cfg), *map(str, sorted(demo.iterdir())))
    sent = tmp_path / "sent"
    recorder = tmp_path / "sendmail"
    recorder.write_text(f'#!/bin/sh\n[ "$1" = "-t" ] || exit 64\ncat > {sent}\n')
    recorder.chmod(0o755)
    (value,) = unit_values("ExecStart", REPORT_UNIT)
    argv = _exec_start_argv(value, "mx.example")
    assert argv[:2] == ["/bin/sh", "-c"]
    script = (
        argv[2]
        .replace("/usr/local/bin/logstats ", f"{LOGSTATS} ")
        .replace("/etc/logstats/logstats.yaml", f"{cfg} --start 20261124")
        .replace("/usr/sbin/sendmail", str(recorder))
    )
    proc = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    head, _, body = sent.read_text().partition("\n\n")
    assert head.splitlines()[:2] == ["To: root", "Subject: logstats report for mx.example"]
    report = run_cli("report", "--config", str(cfg), "--start", "20261124").stdout
    assert body == report
    sent.unlink()
    broken = script.replace(str(cfg), str(tmp_path / "missing.yaml"))
    proc = subprocess.run(["/bin/sh", "-c", broken], capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and not sent.exists()
