"""pyparsing grammar for the Exim main log (and rejectlog / paniclog lines).

Framing, any combination of (``log_selector`` and syslog carriers)::

    [Mmm dd hh:mm:ss host exim[pid]: ] [host exim[pid]: ] YYYY-MM-DD hh:mm:ss[.mmm] [±hhmm]
        [host exim[pid]:] [[pid]] [message-id] text
    YYYY-MM-DDThh:mm:ss[.f](Z|±hh:mm) host exim[pid]: [YYYY-MM-DD hh:mm:ss ...] text

(the last: RFC 3339 syslog, as rsyslog writes it and as a journal entry is turned into a
line; Exim's own stamp, when ``syslog_timestamp`` left it in, is the one taken)

Message ids come in the classic 16-character form (``1avnJx-00039F-Hs``) and the Exim 4.97+
23-character form (``1avnJx-00000000039F-Hsab``), mixed in one file.  One ``Regex`` element
(``exim_line``) matches the framing and splits the text into a flag line (``<=`` ``=>`` ``->``
``==`` ``**`` ``*>`` ``>>`` ``(=``), another line about a message, or a line about no message.
The ``key=value`` fields of the flag lines are split by ``common.kv_field``; id-less lines
that matter (rejects) have an element of their own, tried only after a substring test.
"""

from __future__ import annotations

import re
from datetime import datetime

from logstats.grammar.common import (
    Clock,
    address,
    clean,
    element,
    exim_time_to_ms,
    fields,
    first_ip,
    match,
    tag_header,
    to_int,
)
from logstats.model import (
    Attempt,
    Expired,
    Finished,
    Ignored,
    Outcome,
    ParseResult,
    Received,
    Rejected,
    Tagged,
    Unparsed,
)

# -- named pieces of the framing ------------------------------------------------------------
SYSLOG_HEAD = (
    r"(?:(?:(?P<sys_stamp>[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d)|"
    r"(?P<sys_iso>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[-+]\d\d:?\d\d))) "
    r"(?P<sys_host>\S+) \[?exim\d*\]?(?:\[\d+\])?: )?"
)
JOURNAL_HEAD = r"(?:(?P<j_host>[^\s\[:]+) exim\d*\[\d+\]: )?"
EXIM_STAMP = (
    r"(?:(?P<stamp>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{3})?)(?: (?P<offset>[-+]\d{4}))?"
    r"(?: (?P<i_host>[^\s\[]+) exim\d*\[\d+\]:)? )"
)
PID = r"(?:\[(?P<pid>\d+)\] )?"
MESSAGE_ID = (
    r"(?P<id>[0-9A-Za-z]{6}-(?:[0-9A-Za-z]{11}-[0-9A-Za-z]{4}|[0-9A-Za-z]{6}-[0-9A-Za-z]{2}))"
)
FLAG_LINE = (
    r"(?P<flag><=|=>|->|==|\*\*|\*>|>>|\(=) (?P<addr>\S+)(?: (?P<orig><[^>]*>))?(?P<rest>.*)"
)

exim_line = element(
    rf"^{SYSLOG_HEAD}{JOURNAL_HEAD}{EXIM_STAMP}?{PID}"
    rf"(?:{MESSAGE_ID}(?: {FLAG_LINE}| (?P<note>.*))?$|(?P<text>.*))",
    "exim_line",
    flags=re.DOTALL,
)

# -- id-less (and a few id-carrying) lines the counters depend on -----------------------------
exim_reject = element(
    r"(?P<who>.*?)\b(?P<temp>temporarily )?rejected (?P<stage>RCPT|MAIL|after DATA|"
    r"by local_scan\(\)|connection|EHLO|HELO|DATA|after [A-Z]+)(?: (?P<target>\S+))?"
    r"(?::? ?(?P<reason>.*))?$",
    "exim_reject",
)
exim_completed = element(r"Completed(?: QT=\S+)?$", "exim_completed")
exim_cancelled = element(r"cancelled by (?P<by>.*)$", "exim_cancelled")

_IRRELEVANT_TEXT = (
    ("SMTP connection", "connection"),
    ("SMTP call from", "connection"),
    ("no MAIL in SMTP", "connection"),
    ("SMTP protocol", "smtp-protocol"),
    ("SMTP command timeout", "smtp-protocol"),
    ("SMTP syntax error", "smtp-protocol"),
    ("authenticator failed", "auth-failure"),
    ("Start queue run", "queue-run"),
    ("End queue run", "queue-run"),
    ("exim ", "daemon"),
    ("TLS error", "tls"),
    ("no host name found", "dns"),
    ("no IP address found", "dns"),
    ("sender verify", "verify"),
    ("Warning:", "warning"),
    ("dropped", "connection"),
)

_NOTE_KINDS = (
    ("Frozen", "frozen"),
    ("Message is frozen", "frozen"),
    ("frozen by", "frozen"),
    ("Unfrozen", "frozen"),
    ("removed by", "removed-by-admin"),
    ("SMTP error from remote", "remote-error"),
    ("DKIM", "dkim"),
    ("SA:", "spam-scan"),
    ("H=", "connection"),
    ("Error in system filter", "filter"),
    ("failed to", "config-error"),
    ("error ignored", "bounce-error-ignored"),
    ("Spool file", "spool"),
)


class EximParser:
    """Parses the lines of one Exim log file (carries the file's ``Clock``)."""

    __slots__ = ("_clock", "_max_len")

    def __init__(self, clock: Clock, max_line_length: int = 65536) -> None:
        self._clock = clock
        self._max_len = max_line_length

    def parse(self, line: str) -> ParseResult:
        # common.clean can only object to long lines or lines with control characters,
        # NUL or U+FFFD: skip the call for the (usual) plain printable line
        if len(line) > self._max_len or not line.isprintable() or "\ufffd" in line:
            bad = clean(line, self._max_len)
            if bad:
                return Unparsed(bad, line[:512])
        if line[:1] in (" ", "\t") or not line:
            return Ignored("continuation")
        if line[4:5] == "-" and line[:4].isdigit() and _MAY_COUNT.search(line) is None:
            # prefilter: an Exim-stamped line with no flag and no countable word is noise
            return Ignored(_noise_kind(line))
        m = match(exim_line, line)
        if m is None:
            return Unparsed("no-rule", line)
        stamp, sys_stamp, sys_iso = m.group("stamp", "sys_stamp", "sys_iso")
        if stamp is None and sys_stamp is None and sys_iso is None:
            return _frameless(line)
        qid, flag = m.group("id", "flag")
        if flag is None:
            # lines that carry nothing countable are classified before any time is parsed
            text = m["text"] if qid is None else m["note"]
            kind = _irrelevant(text or "", qid is not None)
            if kind is not None:
                return Ignored(kind)
        if stamp is not None:
            ts = self._clock.iso(stamp, m["offset"])
        elif sys_iso is not None:  # RFC 3339 syslog (rsyslog, the journal), no Exim stamp
            ts = self._clock.iso(sys_iso)
        else:
            ts = self._clock.bsd(sys_stamp)
        if ts is None:
            return Unparsed("bad-timestamp", line)
        scope = m["sys_host"] or m["j_host"] or m["i_host"] or ""
        if qid is None:
            return _idless(m["text"] or "", ts, scope)
        if flag is None:
            return _note(m["note"] or "", ts, scope, qid)
        return _flag_line(flag, m, ts, scope, qid)


_NOISE_KINDS = _IRRELEVANT_TEXT + tuple((f" {prefix}", kind) for prefix, kind in _NOTE_KINDS)


def _frameless(line: str) -> ParseResult:
    if line.startswith(("Envelope-from:", "Envelope-to:", "P Received:", "  ")):
        return Ignored("rejectlog-headers")
    if re.match(r"^[A-Z*]?[ *]?[A-Za-z-]+: ", line) or re.match(r"^\S{0,4} ?[A-Z][\w-]*: ", line):
        return Ignored("rejectlog-headers")
    return Unparsed("no-timestamp", line)


def _irrelevant(text: str, has_id: bool) -> str | None:
    """The reason a line without a flag counts for nothing, or None if it may count."""
    if "rejected" in text:
        return None
    if has_id:
        if text.startswith(("Completed", "cancelled by")) or text[:3] in _FLAGS:
            return None
        if text[:2] in ("X-", "x-") and tag_header(text):
            return None
        for prefix, kind in _NOTE_KINDS:
            if text.startswith(prefix):
                return kind
        return "message-note"
    if _FLAG_WITHOUT_ID.match(text):
        return None
    for prefix, kind in _IRRELEVANT_TEXT:
        if prefix in text:
            return kind
    return "no-message"


# Everything a counted line contains at least one of; the rest is classified by substring.
_MAY_COUNT = re.compile(
    r" (?:<=|=>|->|==|\*\*|\*>|>>|\(=) |Completed|rejected|cancelled by| [Xx]-[A-Za-z-]+: "
)


def _noise_kind(line: str) -> str:
    for prefix, kind in _NOISE_KINDS:
        if prefix in line:
            return kind
    return "no-message"


_FLAGS = frozenset(("<= ", "=> ", "-> ", "== ", "** ", "*> ", ">> ", "(= "))


def _flag_line(flag: str, g: re.Match[str], ts: datetime, scope: str, qid: str) -> ParseResult:
    addr = g["addr"]
    rest = g["rest"] or ""
    if flag in ("<=", "(="):
        rest = _without_helo(rest)
        f = fields(rest)
        protocol = f.get("P")
        auth = f.get("A")
        auth_id = None
        if auth and ":" in auth:
            auth_id = auth.split(":")[1] or None
        local_user = f.get("U") if protocol and protocol.startswith("local") else None
        rcpts = rest.partition(" for ")[2].split() if " for " in rest else []
        return Received(
            ts=ts,
            scope=scope,
            queue_id=qid,
            complete=True,
            sender=address(addr) if addr != "<>" else "",
            size=to_int(f.get("S")),
            nrcpt=len(rcpts) or None,
            auth_id=auth_id,
            local_user=local_user,
            protocol=protocol,
            client_ip=first_ip(rest) if "H=" in rest else None,
            parent_id=f.get("R"),
            message_id=f.get("id"),
            client_host=_host_name(f.get("H")),
        )
    if flag == "*>":
        return Ignored("suppressed-delivery")
    recipient = addr.rstrip(":")
    orig = address(g["orig"])
    if flag in ("=>", "->", ">>"):
        outcome = Outcome.DELIVERED
    elif flag == "==":
        outcome = Outcome.DEFERRED
    else:
        outcome = Outcome.FAILED
    return Attempt(
        ts=ts,
        scope=scope,
        queue_id=qid,
        recipient=recipient,
        outcome=outcome,
        orig_recipient=orig,
        relay=_word_after(rest, " H="),
        transport=_word_after(rest, " T="),
        handoff_id=_queued_as(rest) if outcome is Outcome.DELIVERED else None,
        interface=_interface(rest),
        cut_through=flag == ">>",
        reply=_confirmation(rest) if outcome is Outcome.DELIVERED else _error_text(rest),
        delay_ms=_queue_time(rest) if outcome is Outcome.DELIVERED else None,
        router=_word_after(rest, "R=") if rest.startswith("R=") else _word_after(rest, " R="),
        remote_ip=_remote_ip(rest),
    )


def _host_name(value: str | None) -> str | None:
    """``H=name`` of a receipt; ``H=[ip]`` names no host."""
    return value if value and value[:1] != "[" else None


def _confirmation(rest: str) -> str | None:
    """The remote's answer to the delivery, ``C="..."`` (+smtp_confirmation)."""
    at = rest.find(' C="')
    if at < 0:
        return None
    end = rest.rfind('"')
    return rest[at + 4 : end] if end > at + 4 else None


def _remote_ip(rest: str) -> str | None:
    """The address of ``H=name [ip]`` (the remote host of a delivery)."""
    at = 0 if rest.startswith("H=") else rest.find(" H=")
    return first_ip(rest[at:]) if at >= 0 else None


def _error_text(rest: str) -> str | None:
    """The text after the fields of a deferral or failure: ``: retry time not reached``,
    ``: SMTP error from remote mail server after RCPT TO:<a@b>: 550 ...``."""
    return rest.partition(": ")[2] or None


def _queue_time(rest: str) -> int | None:
    """``QT=`` (log_selector +queue_time: from receipt to this delivery) in ms.  Exim logs
    it after the remote's quoted confirmation ``C="..."``, which is the remote's text: the
    field is looked for after it.  ``DT=`` (+deliver_time) is the time of this delivery
    attempt alone, not a delay, and is not used."""
    start = rest.find(' C="')
    if start >= 0:
        start = rest.rfind('"') + 1
    at = rest.find(" QT=", max(start, 0))
    if at < 0:
        return None
    return exim_time_to_ms(rest[at + 4 :].partition(" ")[0])


def _interface(rest: str) -> str | None:
    """The local address of ``I=[ip]:port`` (+outgoing_interface / +incoming_interface)."""
    at = rest.find(" I=[")
    if at < 0:
        return None
    end = rest.find("]", at)
    return rest[at + 4 : end] if end > 0 else None


_NEXT_ID = re.compile(
    r"queued as (?P<q>[0-9A-Za-z][0-9A-Za-z._-]*[0-9A-Za-z])"
    r"|\bid=(?P<e>[0-9A-Za-z]{6}-(?:[0-9A-Za-z]{11}-[0-9A-Za-z]{4}|[0-9A-Za-z]{6}-[0-9A-Za-z]{2}))"
)


def _queued_as(rest: str) -> str | None:
    """The next hop's queue id from the confirmation: ``C="250 ... queued as X"`` (Postfix
    and most MTAs) or ``C="250 OK id=X"`` (Exim).  A filter that passes its next hop's
    answer on (amavis: ``250 ... from MTA(...): 250 ... queued as X``) names the last hop's
    id last, so the last one wins."""
    at = rest.find(' C="')
    if at < 0:
        return None
    found = None
    for m in _NEXT_ID.finditer(rest, at + 4):
        found = m.group("q") or m.group("e")
    return found


# ``H=host (helo) [ip]`` / ``H=(helo) [ip]``: the HELO is the client's text, so it is cut
# out before fields are read (a HELO of "x S=0" must not set the size)
_HELO = re.compile(
    r"(?P<pre> H=(?:[^\s(]+ )?)\((?P<helo>.*?)\) (?=\[[0-9A-Fa-f:.]+\](?::\d+)?(?: |$))"
)


def _without_helo(text: str) -> str:
    if " H=" not in text or "(" not in text:
        return text
    return _HELO.sub(r"\g<pre>", text, count=1)


def _word_after(text: str, key: str) -> str | None:
    """The value of one ``key=value`` field (deliveries need only T= and H=)."""
    at = text.find(key)
    if at < 0:
        return None
    start = at + len(key)
    end = text.find(" ", start)
    return text[start:] if end < 0 else text[start:end]


def _note(note: str, ts: datetime, scope: str, qid: str) -> ParseResult:
    if note[:3] in _FLAGS:
        return Unparsed("bad-flag-line", note)
    if note.startswith("Completed"):
        if note != "Completed" and match(exim_completed, note) is None:
            return Unparsed("no-rule", note)
        return Finished(ts, scope, qid)
    if match(exim_cancelled, note) is not None:
        return Expired(ts, scope, qid)
    tags = tag_header(note)
    if tags:
        return Tagged(ts, scope, qid, tags)
    if "rejected" in note:
        return _reject(note, ts, scope, qid)
    for prefix, kind in _NOTE_KINDS:
        if note.startswith(prefix):
            return Ignored(kind)
    return Ignored("message-note")


_FLAG_WITHOUT_ID = re.compile(r"^\S+ (?:<=|=>|->|==|\*\*|\*>|>>) ")


def _idless(text: str, ts: datetime, scope: str) -> ParseResult:
    if _FLAG_WITHOUT_ID.match(text):
        return Unparsed("bad-message-id", text)
    if "rejected" in text:
        return _reject(text, ts, scope, None)
    for prefix, kind in _IRRELEVANT_TEXT:
        if prefix in text:
            return Ignored(kind)
    return Ignored("no-message")


def _reject(text: str, ts: datetime, scope: str, qid: str | None) -> ParseResult:
    m = match(exim_reject, text)
    if m is None:
        return Ignored("reject-other")
    g = m.groupdict()
    stage = g["stage"]
    if stage in ("connection", "EHLO", "HELO"):
        return Ignored("reject-connection")
    who = _without_helo(g.get("who") or "")
    f = fields(who)
    auth = f.get("A")
    target = g.get("target")
    if stage == "RCPT":
        recipient = address(target.rstrip(":")) if target else None
        sender = address(f.get("F"))
    elif stage == "MAIL":
        recipient = None
        sender = address(target.rstrip(":")) if target else address(f.get("F"))
    else:
        recipient = None
        sender = address(f.get("F"))
    return Rejected(
        ts=ts,
        scope=scope,
        queue_id=qid,
        stage=stage.replace("after ", "").replace("by local_scan()", "local_scan"),
        sender=sender,
        recipient=recipient,
        auth_id=auth.split(":")[1] or None if auth and ":" in auth else None,
        local_user=f.get("U") if "H" not in f else None,  # no H=: a local submission
        client_ip=first_ip(who),
        temporary=bool(g.get("temp")),
        reason=g.get("reason"),
    )
