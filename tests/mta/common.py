"""Pieces shared by the Exim and Postfix drivers."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from .scenario import PASSWORD, Submission

INSTALL_SH = Path(__file__).with_name("install.sh")
RUN_BASE = Path("/run/logstats-test")
"""Fixed runtime base: Exim's trusted_configs and Postfix's alternate_config_directories
(written by install.sh) name paths below it, so both drivers keep state here."""


class HarnessError(RuntimeError):
    """The MTA did not do what the scenario needs (with its log tail for diagnosis)."""


def install() -> None:
    """Run install.sh (idempotent; quick when everything is already installed)."""
    subprocess.run(["bash", str(INSTALL_SH)], check=True)


def message_bytes(sub: Submission) -> bytes:
    """The message text the script submits (the MTA adds Received:, Date:, ...)."""
    body = "\n".join(
        f"Line {i} of scenario message {sub.key}: the quick brown fox jumps over the lazy dog."
        for i in range(1 + 3 * int(sub.key.lstrip("m")))
    )
    tag = f"X-Tag: {', '.join(sub.tags)}\n" if sub.tags else ""
    text = (
        f"From: {sub.sender}\n"
        f"To: {', '.join(sub.recipients)}\n"
        f"Subject: logstats scenario {sub.key} {sub.subject}\n"
        f"Message-ID: {sub.message_id}\n"
        f"{tag}"
        "\n"
        f"{body}\n"
    )
    return text.encode()


def smtp_submit(port: int, sub: Submission) -> dict[str, tuple[int, bytes]]:
    """Submit over SMTP to 127.0.0.1:port (AUTH PLAIN when ``sub.how == 'auth'``).

    Returns the recipients refused at RCPT time (all refused -> also returned).
    """
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.logstats.test", timeout=30) as smtp:
        smtp.ehlo()
        if sub.how == "auth":
            assert sub.login is not None
            smtp.user, smtp.password = sub.login, PASSWORD
            smtp.auth("PLAIN", smtp.auth_plain)
        try:
            return smtp.sendmail(
                sub.sender, list(sub.recipients), message_bytes(sub).replace(b"\n", b"\r\n")
            )
        except smtplib.SMTPRecipientsRefused as exc:
            return dict(exc.recipients)


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(100).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.1)
    raise HarnessError(f"nothing answers SMTP on 127.0.0.1:{port}")


def wait_lines(
    count: Callable[[], Counter[str]],
    want: Counter[str],
    log: Path,
    timeout: float = 60.0,
    settle: float = 0.5,
) -> None:
    """Poll the MTA log until every address has at least ``want[address]`` outcome
    lines, then wait ``settle`` seconds and check that no address has more."""
    deadline = time.monotonic() + timeout
    have: Counter[str] = Counter()
    while time.monotonic() < deadline:
        have = count()
        if all(have[a] >= n for a, n in want.items()):
            time.sleep(settle)
            have = count()
            extra = {a: (n, want[a]) for a, n in have.items() if n > want[a]}
            if extra:
                raise HarnessError(f"unexpected extra delivery lines {extra}\n{tail(log)}")
            return
        time.sleep(0.1)
    missing = {a: (have[a], n) for a, n in want.items() if have[a] < n}
    raise HarnessError(f"timed out waiting for (have, want) {missing}\n{tail(log)}")


def kill_stale(pid_file: Path, needle: str, timeout: float = 10.0) -> None:
    """Stop a daemon left behind by an interrupted earlier run.

    Only the process named in ``pid_file`` is signalled, and only when its command line
    contains ``needle`` (guards against a recycled pid).
    """
    try:
        pid = int(pid_file.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return
    if needle.encode() not in cmdline:
        return
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"<no log: {exc}>"
