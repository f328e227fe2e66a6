"""pyparsing grammar for Postfix logs (syslog, rsyslog RFC 3339 and postlogd ``maillog_file``).

Framing::

    (Mmm dd hh:mm:ss | YYYY-MM-DDThh:mm:ss[.f](Z|±hh:mm)) host
        [/]syslog_name[/service]/program[[pid]][:] [[ID n fac.level]] [QUEUEID: ]text

``syslog_name`` is ``postfix`` or ``postfix-<instance>``; the service is any master.cf name;
the program is the last path component.  One ``Regex`` element (``postfix_line``) matches the
framing, the queue id and the text (or another daemon's line, or syslogd's ``last message
repeated``); it also splits the delivery agents' ``to=<r>, [orig_to=<o>,] relay=R, ...
status=WORD (reply)`` lines, the most frequent line that counts, so that they cost no second
element.  Other texts are told apart by cheap prefix tests: the ``key=value`` lists (qmgr
``from=``, pickup ``uid=``, smtpd ``sasl_username=``) are split by ``common.fields``; rejects
and bounce notices have an element of their own, tried only after the prefix test.
Everything else Postfix says is either a known family (``Ignored(kind)``, see ``RULES``) or
``Unparsed("no-rule")``, so that unknown shapes stay visible.

Speed: each line evaluates ``postfix_line`` and, for rejects and bounce notices only, one
more element; elements are executed through their compiled patterns (``common.match``).

Queue ids are only unique per Postfix instance, so a record's ``scope`` is
``host/syslog_name``.
"""

from __future__ import annotations

import re
from datetime import datetime

from logstats.grammar.common import (
    Clock,
    address,
    clean,
    element,
    fields,
    first_ip,
    match,
    seconds_to_ms,
    tag_header,
    to_int,
)
from logstats.model import (
    Attempt,
    Expired,
    Finished,
    Ignored,
    Notice,
    Outcome,
    ParseResult,
    Received,
    Rejected,
    Tagged,
    Unparsed,
)

# -- named pieces of the framing ------------------------------------------------------------
BSD_STAMP = r"(?P<bsd>[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d(?:\.\d+)?)"
ISO_STAMP = r"(?P<iso>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[-+]\d\d:?\d\d)?)"
HOST = r"(?P<host>\S+)"
# [/]postfix[-instance][/service]/program[pid][:]  -- a leading "/" means no syslog name
POSTFIX_TAG = (
    r"(?:(?P<name>postfix(?:-[^\s/\[:]+)?)(?:/(?P<service>[^\s\[:]+))?)?"
    r"/(?P<program>[\w.-]+)(?:\[(?P<pid>\d+)\])?:? "
)
SOLARIS_ID = r"(?:\[ID \d+ [\w.]+\] )?"
# short hex ids, long ids (6+4 base-52 time digits, "z", inode), NOQUEUE
QUEUE_ID = r"(?:(?P<qid>[0-9A-F]{5,24}|[0-9A-Za-z]{10}z[0-9A-Za-z]{1,10}|NOQUEUE): ?(?=\S))?"
# delivery agents: [to=]<r>, [orig_to=<o>,] relay=R, ... [dsn=D,] status=WORD [(reply)]
DELIVERY = (
    r"(?:to=)?(?P<to><[^>]*>|[^\s,<]+), (?:orig_to=(?P<orig_to><[^>]*>|[^\s,]*), )?"
    r"relay=(?P<relay>[^\s,]*), .*?(?:dsn=(?P<dsn>[^\s,]*), )?"
    r"status=(?P<status>[\w-]+)(?: \((?P<reply>.*)\))?.*"
)
REPEATED = r"(?P<repeated>(?:last )?message repeated \d+ times?\b.*)"
OTHER_DAEMON = r"(?P<daemon>[^\s\[:]+)(?:\[\d+\])?:(?: .*)?"

# The one element every line goes through.  The delivery shape (the most frequent line that
# matters) is split here too, so that it costs no second element.
postfix_line = element(
    rf"(?:{BSD_STAMP}|{ISO_STAMP}) {HOST} "
    rf"(?:{POSTFIX_TAG}{SOLARIS_ID}{QUEUE_ID}(?P<text>{DELIVERY}|.*)|{REPEATED}|{OTHER_DAEMON})",
    "postfix_line",
)
_GROUPS = ("bsd", "iso", "host", "name", "program", "qid", "text", "status")
_LINE = postfix_line.re.match  # how the element is executed: see common.match

# only tried when ``postfix_line`` fails: tells a bad frame from a line with no stamp at all
syslog_stamp = element(rf"(?:{BSD_STAMP}|{ISO_STAMP}) ", "syslog_stamp")

# -- elements for the shapes that need more than key=value ------------------------------------
# smtpd/postscreen/milter: ACTION: STAGE [from host[ip][:port]]: reply; from=<s> to=<r> ...
postfix_reject = element(
    r"(?P<action>[\w-]+): (?P<stage>[A-Z][A-Z-]*)"
    r"(?: from (?P<client>[^\s\[]*)\[(?P<ip>[^\]]*)\](?::\d+)?)?: ?"
    r"(?P<reason>.*?)(?:; (?P<env>(?:from|to|proto|helo)=.*))?$",
    "postfix_reject",
)

# cleanup header/body checks: ACTION: header|body TEXT from CLIENT; from=<s> [to=<r>] ...[: reply]
postfix_check_reject = element(
    r"(?P<action>[\w-]+): (?P<stage>header|body) (?P<what>.*) "
    r"from (?P<client>[^\s\[;]*)(?:\[(?P<ip>[^\]]*)\](?::\d+)?)?; "
    r"(?P<env>from=<[^>]*>(?: to=<[^>]*>)?(?: proto=\S+)?(?: helo=<[^>]*>)?)"
    r"(?:: (?P<reason>.*))?$",
    "postfix_check_reject",
)

# bounce: QID: sender non-delivery notification: NEWID
postfix_notice = element(
    r"(?:sender|postmaster) (?:non-delivery|delivery status|delay|success) notification: "
    r"(?P<new_id>[0-9A-Za-z]+)$",
    "postfix_notice",
)


# -- tables ---------------------------------------------------------------------------------
_STATUS = {
    "sent": Outcome.DELIVERED,
    "deferred": Outcome.DEFERRED,
    "bounced": Outcome.FAILED,
    "expired": Outcome.FAILED,
    "force-expired": Outcome.FAILED,
}
_PROBE_STATUS = frozenset(("deliverable", "undeliverable", "undeliverable-but-not-cached"))

# ``ACTION: ...`` after a queue id or NOQUEUE (access(5), header_checks(5), milters, proxies)
_REJECT_ACTIONS = frozenset(("reject", "milter-reject", "proxy-reject"))
_ACTION_KINDS = {
    "reject_warning": "reject-warning",
    "hold": "hold-action",
    "milter-hold": "hold-action",
    "discard": "discard-action",
    "milter-discard": "discard-action",
    "filter": "filter-action",
    "redirect": "redirect-action",
    "milter-redirect": "redirect-action",
    "milter-header-redirect": "redirect-action",
    "replace": "header-action",
    "prepend": "header-action",
    "info": "header-action",
    "strip": "header-action",
    "bcc": "header-action",
    "proxy-accept": "proxy-accept",
}

# text prefixes any Postfix program may log, in the order they are tried
_TEXT_KINDS = (
    ("warning:", "warning"),
    ("error:", "error"),
    ("fatal:", "error"),
    ("panic:", "error"),
    ("connect from ", "connection"),
    ("disconnect from ", "connection"),
    ("lost connection ", "connection"),
    ("timeout after ", "connection"),
    ("too many errors after ", "connection"),
    ("improper command pipelining ", "connection"),
    ("connect to ", "connection"),
    ("conversation with ", "connection"),
    ("client=", "connection"),  # NOQUEUE: client= (before-queue proxy)
    ("Anonymous TLS connection", "tls"),
    ("Trusted TLS connection", "tls"),
    ("Untrusted TLS connection", "tls"),
    ("Verified TLS connection", "tls"),
    ("setting up TLS connection", "tls"),
    ("SSL_accept error", "tls"),
    ("SSL_connect error", "tls"),
    ("TLS handshake failed", "tls"),
    ("certificate verification failed", "tls"),
    ("server certificate verification failed", "tls"),
    ("Used TLS for ", "tls"),
    ("host ", "remote-reply"),  # QID: host X said: ... / refused to talk to me
    ("SASL authentication failed", "auth"),
    ("bare <LF> received", "smtp-protocol"),
    ("discarding EHLO keywords", "smtp-protocol"),
    ("enabling PIX workarounds", "smtp-protocol"),
    ("table ", "config"),  # table hash:... has changed -- restarting
    ("placed on hold", "queue-admin"),
    ("released from hold", "queue-admin"),
    ("requeued", "queue-admin"),
    ("skipped, still being delivered", "queue-admin"),
)

# _TEXT_KINDS indexed by their first five characters (every prefix has at least five)
_TEXT_INDEX: dict[str, tuple[tuple[str, str], ...]] = {}
for _prefix, _kind in _TEXT_KINDS:
    _TEXT_INDEX[_prefix[:5]] = (*_TEXT_INDEX.get(_prefix[:5], ()), (_prefix, _kind))

# programs whose other lines belong to a known family: (kind, text prefixes or () for any)
_PROGRAM_KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "anvil": ("anvil", ("statistics:",)),
    "scache": ("scache", ("statistics:",)),
    "dnsblog": ("postscreen", ("addr ",)),
    "master": ("master", ("daemon started", "reload", "terminating on signal", "daemon stop")),
    "postfix-script": ("master", ()),
    "tlsproxy": ("tls", ("CONNECT from", "DISCONNECT")),
    "tlsmgr": ("tls", ()),
    "verify": ("verify", ("cache ",)),
    "postsuper": (
        "queue-admin",
        ("Deleted:", "Placed on hold:", "Released from hold:", "Requeued:"),
    ),
}

# every record type and Ignored/Unparsed reason this grammar produces (fixtures sample each)
RULES: tuple[str, ...] = tuple(
    sorted(
        {
            "Received",
            "Attempt:delivered",
            "Attempt:deferred",
            "Attempt:failed",
            "Expired",
            "Finished",
            "Notice",
            "Rejected",
            "Ignored:verify-probe",
            "Ignored:other-daemon",
            "Ignored:repeated",
            "Ignored:postscreen",
            "unparsed:no-rule",
            "unparsed:no-timestamp",
            "unparsed:bad-timestamp",
        }
        | {f"Ignored:{kind}" for kind in _ACTION_KINDS.values()}
        | {f"Ignored:{kind}" for _, kind in _TEXT_KINDS}
        | {f"Ignored:{kind}" for kind, _ in _PROGRAM_KINDS.values()}
    )
)


class PostfixParser:
    """Parses the lines of one Postfix log file (carries the file's ``Clock``)."""

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
        if not line or line.isspace():
            return Ignored("blank")  # not in RULES: a blank line cannot be annotated
        m = _LINE(line)
        if m is None:
            return _frameless(line)
        bsd, iso, host, name, program, qid, text, status = m.group(*_GROUPS)
        if program is None:  # not Postfix: the stamp is not even looked at
            if m.group("repeated") is not None:
                return Ignored("repeated")
            if m.group("daemon").startswith("postfix"):
                return Unparsed("no-rule", line)  # a broken Postfix tag
            return Ignored("other-daemon")
        ts = self._clock.bsd(bsd) if bsd is not None else self._clock.iso(iso)
        if ts is None:
            return Unparsed("bad-timestamp", line)
        scope = host + "/" + (name or "postfix")
        if status is not None:
            return _delivery(m, program, qid, status, ts=ts, scope=scope, line=line)
        return _message(program, qid, text, ts=ts, scope=scope, line=line)


def _frameless(line: str) -> Unparsed:
    if match(syslog_stamp, line) is None:
        return Unparsed("no-timestamp", line)
    return Unparsed("no-rule", line)


def _message(
    program: str, qid: str | None, text: str, *, ts: datetime, scope: str, line: str
) -> ParseResult:
    if qid is not None and qid != "NOQUEUE":
        head = text[:4]
        if head == "from":
            return _qmgr(qid, text, ts, scope, line)
        if head[:3] == "to=" or ", status=" in text:
            return Unparsed("no-rule", line)  # a delivery line postfix_line could not split
        if head == "clie" and text.startswith("client="):
            client, _, more = text[7:].partition(", ")
            auth = fields(more).get("sasl_username") if "sasl_username=" in more else None
            host = client.partition("[")[0]
            return Received(
                ts, scope, qid, complete=False, auth_id=auth, client_ip=first_ip(client),
                client_host=host if host and host != "unknown" else None,
            )  # fmt: skip
        if text == "removed":
            return Finished(ts, scope, qid)
        if head == "uid=":
            f = fields(text)
            return Received(
                ts,
                scope,
                qid,
                complete=False,
                uid=to_int(f.get("uid")),
                sender=address(f.get("from")),
            )
        if text.startswith(("message-id=", "resent-message-id=")):
            # the whole rest is the value: broken ids carry blanks and commas
            mid = address(text.partition("=")[2]) or None
            return Received(ts, scope, qid, complete=False, message_id=mid)
        if " notification: " in text:
            notice = match(postfix_notice, text)
            if notice is None:
                return Unparsed("no-rule", line)
            return Notice(ts, scope, qid, notice.group("new_id"))
    action, sep, rest = text.partition(": ")
    if sep and (action in _REJECT_ACTIONS or action in _ACTION_KINDS or action == "warning"):
        if action in _REJECT_ACTIONS:
            return _reject(None if qid == "NOQUEUE" else qid, rest, text, ts, scope)
        if action == "info" and rest.startswith("header ") and qid and qid != "NOQUEUE":
            tags = tag_header(rest[7:].partition(" from ")[0])
            if tags:
                return Tagged(ts, scope, qid, tags)
        if action != "warning":
            return Ignored(_ACTION_KINDS[action])
        if rest.startswith(("header ", "body ")):
            return Ignored("header-action")
    for prefix, kind in _TEXT_INDEX.get(text[:5], ()):
        if text.startswith(prefix):
            return Ignored(kind)
    if program == "postscreen":
        word = text.partition(" ")[0]
        if (word.isupper() and len(word) > 1) or text.startswith("cache "):
            return Ignored("postscreen")
        return Unparsed("no-rule", line)
    family = _PROGRAM_KINDS.get(program)
    if family is not None and (not family[1] or text.startswith(family[1])):
        return Ignored(family[0])
    return Unparsed("no-rule", line)


def _delivery(
    m: re.Match[str],
    program: str,
    qid: str | None,
    status: str,
    *,
    ts: datetime,
    scope: str,
    line: str,
) -> ParseResult:
    if status in _PROBE_STATUS:
        return Ignored("verify-probe")
    outcome = _STATUS.get(status)
    if outcome is None or qid is None or qid == "NOQUEUE":
        return Unparsed("no-rule", line)
    to, orig_to, relay, dsn, reply = m.group("to", "orig_to", "relay", "dsn", "reply")
    handoff = None
    if reply and outcome is Outcome.DELIVERED:
        at = reply.rfind("queued as ")
        if at < 0 and reply.startswith("forwarded as "):
            at = 3  # "forwarded as NEWID": a local alias re-injected the message as NEWID
        if at >= 0:
            token = reply[at + 10 :].partition(" ")[0].rstrip(").;,")
            handoff = token if token.isalnum() else None
    return Attempt(
        ts=ts,
        scope=scope,
        queue_id=qid,
        recipient=to[1:-1] if to[:1] == "<" else to,
        outcome=outcome,
        orig_recipient=address(orig_to),
        relay=relay,
        transport=program,
        dsn=dsn,
        handoff_id=handoff,
        reply=reply,
        delay_ms=_delay(m.string, m.end("relay"), m.start("status")),
        remote_ip=first_ip(relay) if relay else None,
    )


def _delay(line: str, start: int, end: int) -> int | None:
    """``delay=`` between ``relay=`` and ``status=`` of a delivery line, in ms."""
    at = line.find(", delay=", start, end)
    if at < 0:
        return None
    stop = line.find(",", at + 8, end)
    return seconds_to_ms(line[at + 8 : stop if stop >= 0 else end].strip())


def _qmgr(qid: str, text: str, ts: datetime, scope: str, line: str) -> ParseResult:
    f = fields(text)
    status = f.get("status")
    if status is None:
        if "size" not in f:
            return Unparsed("no-rule", line)
        return Received(
            ts,
            scope,
            qid,
            complete=True,
            sender=address(f.get("from")),
            size=to_int(f.get("size")),
            nrcpt=to_int(f.get("nrcpt")),
        )
    if status in ("expired", "force-expired"):
        return Expired(ts, scope, qid)
    return Unparsed("no-rule", line)


def _reject(qid: str | None, rest: str, text: str, ts: datetime, scope: str) -> ParseResult:
    element = postfix_check_reject if rest.startswith(("header ", "body ")) else postfix_reject
    g = match(element, text)
    if g is None:
        return Unparsed("no-rule", text)
    env = g.group("env")
    f = fields(env) if env else {}
    reason = g.group("reason") or None
    ip = g.group("ip")
    return Rejected(
        ts=ts,
        scope=scope,
        queue_id=qid,
        stage=g.group("stage"),
        sender=address(f.get("from")),
        recipient=address(f.get("to")),
        client_ip=ip if ip and ip != "unknown" else None,
        temporary=reason is not None and reason.startswith("4"),
        reason=reason,
    )
