"""The systemd ``sd_notify`` protocol, in the standard library only.

A service started with ``Type=notify`` tells systemd how it is doing by sending
newline-separated ``KEY=VALUE`` assignments as one datagram to the ``AF_UNIX`` socket
named in ``$NOTIFY_SOCKET`` (see ``sd_notify(3)``)::

    READY=1            start-up finished: `systemctl start` returns, dependents start
    STATUS=...         a one-line status shown by `systemctl status`
    WATCHDOG=1         keep-alive, due every $WATCHDOG_USEC microseconds (WatchdogSec=)
    RELOADING=1        re-reading the configuration (followed by READY=1 when done)
    STOPPING=1         shutting down
    EXTEND_TIMEOUT_USEC=N   "still starting/stopping, give me N more microseconds"

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a cheap no-op, so the daemon calls
the ``Notifier`` unconditionally.  Sending never raises: a missing, full or broken socket
must not take the daemon down, so failures only make :meth:`Notifier.send` return
``False``.  Nothing is logged either, so a watchdog ping cannot flood the journal.

Each message goes out on a fresh, short-lived socket (as ``sd_notify`` itself does), so a
``Notifier`` is safe to share between threads and survives ``fork()``.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier"]


class Notifier:
    """Sends ``sd_notify`` messages to systemd, or does nothing when not under systemd.

    Build one with :meth:`from_env`.  ``enabled`` is ``False`` when there is no (usable)
    ``$NOTIFY_SOCKET``; every method is then a no-op.
    """

    __slots__ = ("_address", "_watchdog_usec", "enabled")

    def __init__(self, address: str | None = None, watchdog_usec: int | None = None) -> None:
        """A notifier for the socket ``address`` (``None``: disabled).

        ``address`` is a filesystem path or an abstract socket name whose first character
        is ``"@"`` or ``"\\0"``.  ``watchdog_usec`` is the watchdog timeout in microseconds
        (``WatchdogSec=``), or ``None`` when systemd expects no keep-alive pings.
        """
        if address is not None and address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address or None
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self.enabled: bool = self._address is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Notifier:
        """The notifier systemd set up for this process, from its environment.

        Reads ``NOTIFY_SOCKET`` (a path or ``@abstract`` name), ``WATCHDOG_USEC`` and
        ``WATCHDOG_PID``.  The watchdog applies only when ``WATCHDOG_PID`` is unset or
        equals :func:`os.getpid` (systemd sets it so that children inheriting the
        environment do not think they are watched).  Without a usable ``NOTIFY_SOCKET``
        (unset, empty, relative, or a transport other than ``AF_UNIX`` such as ``vsock:``)
        the result is a disabled no-op notifier.
        """
        address: str | None = environ.get("NOTIFY_SOCKET") or None
        if address is not None and not address.startswith(("/", "@")):
            address = None
        return cls(address, _watchdog_usec(environ))

    def __repr__(self) -> str:
        """``Notifier(address, watchdog_usec)`` for logs and debugging."""
        return f"Notifier({self._address!r}, watchdog_usec={self._watchdog_usec!r})"

    def send(self, message: str) -> bool:
        """Send ``message`` (newline-separated ``KEY=VALUE`` lines) as one datagram.

        Returns ``True`` when the datagram was handed to the socket, ``False`` when the
        notifier is disabled or sending failed (the error is swallowed).
        """
        if self._address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(1.0)  # systemd reads promptly; never hang the daemon on it
                sock.sendto(message.encode("utf-8", "replace"), self._address)
        except (OSError, ValueError):
            return False
        return True

    def ready(self, status: str | None = None) -> None:
        """Start-up (or a reload) is complete: ``READY=1``, with an optional ``STATUS=``."""
        fields = ["READY=1"]
        if status is not None:
            fields.append(_status_field(status))
        self.send("\n".join(fields))

    def status(self, text: str) -> None:
        """Set the one-line status ``systemctl status`` shows (``STATUS=``).

        Line breaks in ``text`` are replaced by spaces: they would end the assignment.
        """
        self.send(_status_field(text))

    def watchdog(self) -> None:
        """Keep-alive ping (``WATCHDOG=1``); send every :meth:`watchdog_interval` seconds."""
        self.send("WATCHDOG=1")

    def reloading(self) -> None:
        """A configuration reload started (``RELOADING=1``); call :meth:`ready` when done.

        Adds ``MONOTONIC_USEC=`` (``CLOCK_MONOTONIC`` now, in microseconds), which systemd
        253 and later require with ``Type=notify-reload`` to match the reload to its request;
        older managers ignore it.
        """
        now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send(f"RELOADING=1\nMONOTONIC_USEC={now_usec}")

    def stopping(self) -> None:
        """Shutdown started (``STOPPING=1``): ``systemctl status`` shows "deactivating"."""
        self.send("STOPPING=1")

    def extend_timeout(self, seconds: float) -> None:
        """Ask for ``seconds`` more before start-up or shutdown times out.

        ``EXTEND_TIMEOUT_USEC=``: useful while draining a large backlog before
        :meth:`ready` (``TimeoutStartSec=``) or flushing on stop (``TimeoutStopSec=``).
        Repeat before the extension runs out.
        """
        self.send(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1_000_000))}")

    def watchdog_interval(self) -> float | None:
        """Seconds between :meth:`watchdog` pings: half the watchdog timeout.

        ``None`` when the notifier is disabled or systemd runs no watchdog for this process.
        """
        if self._address is None or self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1_000_000


def _status_field(text: str) -> str:
    """``STATUS=text`` on one line."""
    return "STATUS=" + " ".join(text.splitlines())


def _watchdog_usec(environ: Mapping[str, str]) -> int | None:
    """``$WATCHDOG_USEC`` when it is a positive integer meant for this process, else None."""
    pid = environ.get("WATCHDOG_PID")
    if pid is not None:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None
