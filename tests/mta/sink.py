"""A tiny threaded SMTP sink bound to 127.0.0.1.

It answers each ``RCPT TO`` by the recipient's local part:

* ``fail...``   -> ``550 5.1.1 no such user``  (permanent failure)
* ``defer...``  -> ``451 4.3.0 try again later`` (always deferred)
* ``later...``  -> 451 until the address is put in :attr:`Sink.now_ok`, then 250
* anything else -> 250

``DATA`` is accepted when at least one recipient was accepted. Every accepted message's
size (bytes after dot-unstuffing, with LF and with CRLF line ends) is recorded
together with its Message-ID header so tests can relate it to what the MTA logged.
"""

from __future__ import annotations

import re
import socket
import socketserver
import threading
from dataclasses import dataclass, field

_ADDR = re.compile(r"<([^>]*)>")
_MSGID = re.compile(rb"^message-id:\s*(<[^>]*>)", re.IGNORECASE | re.MULTILINE)


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


@dataclass
class Sink:
    """SMTP sink server; use :meth:`start` / :meth:`stop`."""

    host: str = "127.0.0.1"
    port: int = 0
    now_ok: set[str] = field(default_factory=set)
    received: list[Received] = field(default_factory=list)
    rcpt_log: list[tuple[str, int]] = field(default_factory=list)
    _server: socketserver.ThreadingTCPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Sink:
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                sink._session(self.rfile, self.wfile)

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._server = Server((self.host, self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def set_ok(self, address: str) -> None:
        with self._lock:
            self.now_ok.add(address.lower())

    def _session(self, rfile, wfile) -> None:  # type: ignore[no-untyped-def]
        def say(line: str) -> None:
            wfile.write(line.encode() + b"\r\n")
            wfile.flush()

        say("220 sink.logstats.test ESMTP logstats test sink")
        sender = ""
        rcpts: list[str] = []
        try:
            while True:
                raw = rfile.readline()
                if not raw:
                    return
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                verb = line[:4].upper()
                if verb in ("EHLO", "HELO"):
                    if verb == "EHLO":
                        say("250-sink.logstats.test")
                        say("250-8BITMIME")
                        say("250 SIZE 52428800")
                    else:
                        say("250 sink.logstats.test")
                elif verb == "MAIL":
                    m = _ADDR.search(line)
                    sender = m.group(1) if m else ""
                    rcpts = []
                    say("250 2.1.0 OK")
                elif verb == "RCPT":
                    m = _ADDR.search(line)
                    addr = m.group(1) if m else ""
                    with self._lock:
                        code = answer_for(addr, self.now_ok)
                        self.rcpt_log.append((addr, code))
                    if code == 250:
                        rcpts.append(addr)
                        say("250 2.1.5 OK")
                    elif code == 451:
                        say(f"451 4.3.0 <{addr}>: try again later")
                    else:
                        say(f"550 5.1.1 <{addr}>: no such user here")
                elif verb == "DATA":
                    if not rcpts:
                        say("554 5.5.1 no valid recipients")
                        continue
                    say("354 go ahead")
                    body = bytearray()
                    lines = 0
                    while True:
                        chunk = rfile.readline()
                        if not chunk:
                            return
                        if chunk in (b".\r\n", b".\n"):
                            break
                        if chunk.startswith(b"."):
                            chunk = chunk[1:]
                        if chunk.endswith(b"\r\n"):
                            chunk = chunk[:-2] + b"\n"
                        lines += chunk.endswith(b"\n")
                        body += chunk
                    mid = _MSGID.search(bytes(body))
                    with self._lock:
                        self.received.append(
                            Received(
                                sender,
                                list(rcpts),
                                len(body),
                                mid.group(1).decode() if mid else None,
                                len(body) + lines,
                            )
                        )
                    say("250 2.0.0 OK queued")
                    rcpts = []
                elif verb == "RSET":
                    sender, rcpts = "", []
                    say("250 2.0.0 OK")
                elif verb == "NOOP":
                    say("250 2.0.0 OK")
                elif verb == "QUIT":
                    say("221 2.0.0 bye")
                    return
                else:
                    say("502 5.5.2 command not implemented")
        except OSError:
            return


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
