"""A tiny threaded SMTP sink bound to 127.0.0.1 that answers the way real servers do.

Its answers are a fixed policy (the functions below), so the scenario can predict them
(:func:`tests.mta.scenario.simulate`); every answer it actually gave is recorded
(:attr:`Sink.transactions`) and the runner checks that record against the prediction.

``RCPT TO`` is answered by the recipient's local part:

* ``fail...``   -> a multi-line ``550-5.1.1 ...`` / ``550 5.1.1 ...`` (permanent failure)
* ``defer...``  -> ``451 4.3.0 try again later`` (always deferred)
* ``later...``  -> a multi-line 451 until the address is put in :attr:`Sink.now_ok`, then 250
* anything else -> 250

``DATA`` is accepted (``354``) when at least one recipient was accepted. The reply to the
end of the data depends on the message (its ``Message-ID`` key, see :data:`DATA_QUIRKS`):

* normally ``250 2.0.0 Ok: queued as ID``, a fresh Postfix-shaped id per transaction
  (uppercase hex, unique across the run, shared by the transaction's recipients);
* ``slow``: the same after a pause of :data:`SLOW_SECONDS` (well under the MTAs' timeouts);
* ``multiline``: ``250-2.0.0 ...`` continuation lines before the ``queued as`` line;
* ``drop-once``: the first time, a multi-line ``421`` and the sink closes the connection
  in the middle of the session (the MTA defers every recipient of the transaction and
  retries later); afterwards as normal.

The EHLO reply is multi-line (PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES). Every
accepted message's size (bytes after dot-unstuffing, with LF and with CRLF line ends) is
recorded together with its Message-ID header so tests can relate it to what the MTA logged.
"""

from __future__ import annotations

import itertools
import random
import re
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BufferedIOBase
from typing import Literal, Self

ADDR = re.compile(r"<([^>]*)>")
MSGID = re.compile(rb"^message-id:\s*(<[^>]*>)", re.IGNORECASE | re.MULTILINE)
SCENARIO_MSGID = "@scenario.logstats.test>"

Quirk = Literal["slow", "multiline", "drop-once"]
DATA_QUIRKS: dict[str, Quirk] = {"m1": "slow", "m5": "drop-once", "m6": "multiline"}
"""Scenario message key -> how the sink answers the end of its DATA."""
SLOW_SECONDS = 3.0
"""Pause before the end-of-DATA reply of a ``slow`` message (MTA timeouts: minutes)."""

DROPPED = 421
"""Outcome code recorded for recipients whose transaction ended in a 421 disconnect."""

_ID_BASE = random.randrange(0x100000, 0xFFFFFF)
_ID_SEQ = itertools.count(1)
_ID_LOCK = threading.Lock()


def new_queue_id() -> str:
    """A fresh Postfix-shaped queue id (11 uppercase hex digits), unique in this process."""
    with _ID_LOCK:
        return f"{_ID_BASE:06X}{next(_ID_SEQ):05X}"


def answer_for(address: str, now_ok: set[str] | frozenset[str] = frozenset()) -> int:
    """SMTP reply code the sink gives to ``RCPT TO:<address>``."""
    local = address.split("@", 1)[0].lower()
    if local.startswith("fail"):
        return 550
    if local.startswith("defer"):
        return 451
    if local.startswith("later"):
        return 250 if address.lower() in now_ok else 451
    return 250


def rcpt_reply(address: str, code: int) -> list[str]:
    """The reply lines (without CRLF) for ``RCPT TO:<address>`` answered with ``code``."""
    local = address.split("@", 1)[0].lower()
    if code == 250:
        return ["250 2.1.5 Ok"]
    if code == 550:
        return [
            f"550-5.1.1 <{address}>: Recipient address rejected: no such user here.",
            "550-5.1.1 Please check the recipient's address for typos or",
            "550 5.1.1 unnecessary spaces. (logstats test sink)",
        ]
    if local.startswith("later"):
        return [
            f"451-4.3.0 <{address}>: mailbox temporarily unavailable,",
            "451 4.3.0 try again later (logstats test sink)",
        ]
    return [f"451 4.3.0 <{address}>: try again later"]


def data_quirk(key: str | None) -> Quirk | None:
    return DATA_QUIRKS.get(key) if key is not None else None


def scenario_key(message_id: str | None) -> str | None:
    """``<m5@scenario.logstats.test>`` -> ``m5``; anything else -> None."""
    if message_id and message_id.endswith(SCENARIO_MSGID):
        return message_id[1:].split("@", 1)[0]
    return None


def reply_lines(code: int, texts: list[str]) -> list[str]:
    """``code`` with every text line, ``-`` continuation on all but the last."""
    return [f"{code}{'-' if i < len(texts) - 1 else ' '}{t}" for i, t in enumerate(texts)]


@dataclass
class Received:
    """One message the sink accepted."""

    sender: str
    recipients: list[str]
    size: int
    """Bytes with LF line ends (Exim's S= counts this way)."""
    message_id: str | None
    crlf_size: int = 0
    """Bytes with CRLF line ends (Postfix's size= counts this way)."""
    queue_id: str = ""
    """The id the sink answered with (``queued as ID``)."""


@dataclass
class Transaction:
    """One MAIL transaction as the sink saw and answered it."""

    sender: str
    rcpts: list[tuple[str, int]] = field(default_factory=list)
    """Every RCPT with the code answered."""
    data_code: int | None = None
    """Reply to the end of the data (None: no data phase)."""
    data_reply: list[str] = field(default_factory=list)
    message_id: str | None = None
    queue_id: str | None = None

    def outcomes(self) -> list[tuple[str, int]]:
        """Per recipient what the MTA was told: the RCPT code, except that recipients
        accepted at RCPT share the transaction's fate (250 after DATA, 421 dropped,
        451 when the data phase never completed)."""
        out: list[tuple[str, int]] = []
        for addr, rcpt_code in self.rcpts:
            code = rcpt_code
            if rcpt_code == 250:
                code = self.data_code if self.data_code in (250, DROPPED) else 451
            out.append((addr, code))
        return out


def read_data(rfile: BufferedIOBase) -> tuple[bytes, int] | None:
    """The message after ``354`` up to the lone dot, dot-unstuffed with LF line ends,
    and its number of lines; None when the client went away."""
    body = bytearray()
    lines = 0
    while True:
        chunk = rfile.readline()
        if not chunk:
            return None
        if chunk in (b".\r\n", b".\n"):
            return bytes(body), lines
        if chunk.startswith(b"."):
            chunk = chunk[1:]
        if chunk.endswith(b"\r\n"):
            chunk = chunk[:-2] + b"\n"
        lines += chunk.endswith(b"\n")
        body += chunk


class SmtpServer:
    """A threaded line-based SMTP server on 127.0.0.1 (subclasses answer the session)."""

    host = "127.0.0.1"
    banner = "220 sink.logstats.test ESMTP logstats test sink"
    ehlo_lines: tuple[str, ...] = (
        "sink.logstats.test",
        "PIPELINING",
        "SIZE 52428800",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
    )

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self._server: socketserver.ThreadingTCPServer | None = None
        self._lock = threading.Lock()

    def start(self) -> Self:
        owner = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                try:
                    owner.session(self.rfile, self.wfile)
                except OSError:
                    return

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._server = Server((self.host, self.port), Handler)
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def session(self, rfile: BufferedIOBase, wfile: BufferedIOBase) -> None:
        raise NotImplementedError

    @staticmethod
    def writer(wfile: BufferedIOBase) -> Callable[[list[str]], None]:
        def say(lines: list[str]) -> None:
            wfile.write(b"".join(line.encode() + b"\r\n" for line in lines))
            wfile.flush()

        return say


class Sink(SmtpServer):
    """SMTP sink server; use :meth:`start` / :meth:`stop`."""

    def __init__(self, port: int = 0) -> None:
        super().__init__(port)
        self.now_ok: set[str] = set()
        self.received: list[Received] = []
        self.rcpt_log: list[tuple[str, int]] = []
        self.transactions: list[Transaction] = []
        self._dropped: set[str] = set()

    def set_ok(self, address: str) -> None:
        with self._lock:
            self.now_ok.add(address.lower())

    def session(self, rfile: BufferedIOBase, wfile: BufferedIOBase) -> None:
        say = self.writer(wfile)
        say([self.banner])
        tx: Transaction | None = None
        while True:
            raw = rfile.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            verb = line[:4].upper()
            if verb == "EHLO":
                say(reply_lines(250, list(self.ehlo_lines)))
            elif verb == "HELO":
                say(["250 sink.logstats.test"])
            elif verb == "MAIL":
                m = ADDR.search(line)
                tx = Transaction(m.group(1) if m else "")
                with self._lock:
                    self.transactions.append(tx)
                say(["250 2.1.0 Ok"])
            elif verb == "RCPT":
                if tx is None:
                    say(["503 5.5.1 Error: need MAIL command"])
                    continue
                m = ADDR.search(line)
                addr = m.group(1) if m else ""
                with self._lock:
                    code = answer_for(addr, self.now_ok)
                    self.rcpt_log.append((addr, code))
                    tx.rcpts.append((addr, code))
                say(rcpt_reply(addr, code))
            elif verb == "DATA":
                if tx is None or not any(code == 250 for _, code in tx.rcpts):
                    say(["554 5.5.1 Error: no valid recipients"])
                    continue
                say(["354 End data with <CR><LF>.<CR><LF>"])
                got = read_data(rfile)
                if got is None:
                    return
                if not self._end_of_data(tx, *got, say):
                    return
                tx = None
            elif verb == "RSET":
                tx = None
                say(["250 2.0.0 Ok"])
            elif verb == "NOOP":
                say(["250 2.0.0 Ok"])
            elif verb == "QUIT":
                say(["221 2.0.0 Bye"])
                return
            else:
                say(["502 5.5.2 Error: command not recognized"])

    def _end_of_data(
        self, tx: Transaction, body: bytes, lines: int, say: Callable[[list[str]], None]
    ) -> bool:
        """Answer the end of the data; False when the sink hangs up (421)."""
        mid = MSGID.search(body)
        tx.message_id = mid.group(1).decode() if mid else None
        quirk = data_quirk(scenario_key(tx.message_id))
        if quirk == "drop-once":
            with self._lock:
                first = tx.message_id not in self._dropped
                self._dropped.add(str(tx.message_id))
            if first:
                tx.data_code = DROPPED
                tx.data_reply = reply_lines(
                    DROPPED,
                    [
                        "4.3.2 sink.logstats.test Service shutting down,",
                        "4.3.2 closing transmission channel (logstats test sink)",
                    ],
                )
                say(tx.data_reply)
                return False
        if quirk == "slow":
            time.sleep(SLOW_SECONDS)
        queue_id = new_queue_id()
        accepted = [a for a, code in tx.rcpts if code == 250]
        with self._lock:
            self.received.append(
                Received(tx.sender, accepted, len(body), tx.message_id, len(body) + lines, queue_id)
            )
        tx.queue_id = queue_id
        tx.data_code = 250
        if quirk == "multiline":
            tx.data_reply = reply_lines(
                250, [f"2.0.0 Ok: {len(body)} bytes received", f"2.0.0 Ok: queued as {queue_id}"]
            )
        else:
            tx.data_reply = [f"250 2.0.0 Ok: queued as {queue_id}"]
        say(tx.data_reply)
        return True

    def attempts(self) -> dict[str, list[int]]:
        """Recipient address -> outcome codes the sink gave it, one per transaction."""
        out: dict[str, list[int]] = {}
        with self._lock:
            for tx in self.transactions:
                for addr, code in tx.outcomes():
                    out.setdefault(addr.lower(), []).append(code)
        return out


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
