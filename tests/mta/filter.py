"""A content-filter proxy on 127.0.0.1, in the manner of amavisd-new (post-queue).

The MTA hands a message over to it with SMTP (Postfix ``content_filter``, an Exim router
and smtp transport); the filter "scans" it (it prepends an ``X-Virus-Scanned:`` header,
as amavisd does), re-injects it with SMTP into the same MTA on its re-injection port, and
answers the end of the data with the re-injecting MTA's own answer passed through:

* ``style="amavis"`` (Postfix): ``250 2.0.0 from MTA(smtp:[127.0.0.1]:PORT2): 250 2.0.0
  Ok: queued as NEWID``, as amavisd-new answers;
* ``style="verbatim"`` (Exim): the downstream reply as it is, ``250 OK id=NEWID``.

Every hand-over is recorded (:attr:`ContentFilter.passes`): sender, recipients, the bytes
received (the size the MTA logged at the message's first receipt), the reply and NEWID.
"""

from __future__ import annotations

import re
import smtplib
from dataclasses import dataclass, field
from io import BufferedIOBase
from typing import Literal

from .sink import ADDR, MSGID, SmtpServer, read_data, reply_lines, scenario_key

SCAN_HEADER = b"X-Virus-Scanned: logstats test content filter at filter.logstats.test\n"
_NEW_ID = re.compile(r"(?:queued as |\bid=)([0-9A-Za-z-]+)")


@dataclass
class Pass:
    """One message handed to the filter and re-injected."""

    sender: str
    recipients: list[str]
    size: int
    """Bytes received from the MTA, LF line ends (Exim's S= of the first receipt)."""
    crlf_size: int
    """The same with CRLF line ends (Postfix's size=)."""
    message_id: str | None
    reply: str = ""
    """The filter's whole answer to the end of the data, as sent to the MTA."""
    new_id: str | None = None
    """The re-injected message's queue id, from the downstream answer."""
    downstream: str = ""
    """The downstream (re-injecting MTA) answer, ``CODE TEXT``."""

    @property
    def key(self) -> str | None:
        return scenario_key(self.message_id)


@dataclass
class _Envelope:
    sender: str
    recipients: list[str] = field(default_factory=list)


class ContentFilter(SmtpServer):
    """The filter proxy; ``reinject_port`` is the MTA's re-injection listener."""

    banner = "220 filter.logstats.test ESMTP logstats test content filter (amavisd-like)"
    ehlo_lines: tuple[str, ...] = (
        "filter.logstats.test",
        "PIPELINING",
        "SIZE",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
    )

    def __init__(
        self, reinject_port: int, style: Literal["amavis", "verbatim"], port: int = 0
    ) -> None:
        super().__init__(port)
        self.reinject_port = reinject_port
        self.style = style
        self.passes: list[Pass] = []
        self.failures: list[str] = []

    def session(self, rfile: BufferedIOBase, wfile: BufferedIOBase) -> None:
        say = self.writer(wfile)
        say([self.banner])
        env: _Envelope | None = None
        while True:
            raw = rfile.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            verb = line[:4].upper()
            if verb == "EHLO":
                say(reply_lines(250, list(self.ehlo_lines)))
            elif verb == "HELO":
                say(["250 filter.logstats.test"])
            elif verb == "MAIL":
                m = ADDR.search(line)
                env = _Envelope(m.group(1) if m else "")
                say(["250 2.1.0 Ok"])
            elif verb == "RCPT" and env is not None:
                m = ADDR.search(line)
                env.recipients.append(m.group(1) if m else "")
                say(["250 2.1.5 Ok"])
            elif verb == "DATA" and env is not None and env.recipients:
                say(["354 End data with <CR><LF>.<CR><LF>"])
                got = read_data(rfile)
                if got is None:
                    return
                say([self._reinject(env, *got)])
                env = None
            elif verb == "RSET":
                env = None
                say(["250 2.0.0 Ok"])
            elif verb == "NOOP":
                say(["250 2.0.0 Ok"])
            elif verb == "QUIT":
                say(["221 2.0.0 Bye"])
                return
            else:
                say(["503 5.5.1 Error: bad sequence of commands"])

    def _reinject(self, env: _Envelope, body: bytes, lines: int) -> str:
        """Send the scanned message on; return the one-line answer for the MTA."""
        mid = MSGID.search(body)
        rec = Pass(
            env.sender,
            list(env.recipients),
            len(body),
            len(body) + lines,
            mid.group(1).decode() if mid else None,
        )
        scanned = (SCAN_HEADER + body).replace(b"\n", b"\r\n")
        try:
            with smtplib.SMTP(
                "127.0.0.1", self.reinject_port, local_hostname="filter.logstats.test", timeout=60
            ) as smtp:
                smtp.ehlo()
                code, resp = smtp.mail(env.sender)
                if code != 250:
                    raise smtplib.SMTPResponseException(code, resp)
                for rcpt in env.recipients:
                    code, resp = smtp.rcpt(rcpt)
                    if code not in (250, 251):
                        raise smtplib.SMTPResponseException(code, resp)
                code, resp = smtp.data(scanned)
        except (OSError, smtplib.SMTPException) as exc:
            with self._lock:
                self.failures.append(f"{rec.message_id}: {exc!r}")
            return f"451 4.5.0 Error in processing, id={rec.message_id}, re-injection failed"
        text = resp.decode("utf-8", "replace").replace("\n", " ")
        rec.downstream = f"{code} {text}"
        if code != 250:
            with self._lock:
                self.failures.append(f"{rec.message_id}: downstream said {rec.downstream}")
            return f"451 4.5.0 Error in processing, downstream said {rec.downstream}"
        m = _NEW_ID.search(text)
        rec.new_id = m.group(1) if m else None
        if self.style == "amavis":
            rec.reply = (
                f"250 2.0.0 from MTA(smtp:[127.0.0.1]:{self.reinject_port}): {rec.downstream}"
            )
        else:
            rec.reply = rec.downstream
        with self._lock:
            self.passes.append(rec)
        return rec.reply
