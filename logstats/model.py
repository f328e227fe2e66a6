"""Values passed between the stages of the pipeline.

Per-line values (records, events) are ``NamedTuple``s: they are created hundreds of
thousands of times a second and a tuple is several times cheaper to build than a frozen
dataclass.

source (RawLine) -> grammar (Record | Unparsed) -> correlate (Event) -> store -> query

Only the standard library is imported here; every stage depends on this module and it
depends on none of them.  All datetimes are timezone-aware UTC.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import NamedTuple


class Mta(StrEnum):
    EXIM = "exim"
    POSTFIX = "postfix"


class Outcome(StrEnum):
    """What happened to one recipient (or one message, for SEND / INPROGRESS)."""

    SEND = "send"  # a message accepted and attributed (SENDCOUNT)
    DELIVERED = "delivered"  # one recipient delivered (SUCCESSCOUNT, TOTALSIZE)
    DEFERRED = "deferred"  # one deferral event (DEFERCOUNT)
    FAILED = "failed"  # one recipient failed permanently (FAILCOUNT)
    REJECTED = "rejected"  # an SMTP-time reject: a send and a failure (cPanel)
    EXPIRED = "expired"  # in-flight state dropped by logstats' own TTL (not an MTA outcome)


# Pseudo-accounts (cPanel uses "-remote-" for mail it cannot tie to an account).
REMOTE = "-remote-"
SYSTEM = "-system-"  # messages the MTA generated itself (bounces, delay warnings)
UNKNOWN = "-unknown-"  # outcomes whose receipt line was never seen


# ---------------------------------------------------------------------------
# grammar -> correlate
# ---------------------------------------------------------------------------


class Received(NamedTuple):
    """A message entered the queue, or (Postfix) one piece of what is known about it.

    Exim logs everything on one ``<=`` line (``complete=True``).  Postfix spreads it over
    smtpd ``client=``, pickup ``uid= from=``, cleanup ``message-id=`` and qmgr
    ``from= size= nrcpt=``; only the first qmgr line completes the receipt.
    """

    ts: datetime
    scope: str  # MTA instance: Postfix syslog host + syslog name, Exim host or ""
    queue_id: str
    complete: bool
    sender: str | None = None  # envelope sender, "" for the null sender <>
    size: int | None = None
    nrcpt: int | None = None
    auth_id: str | None = None  # Exim A=authenticator:ID, Postfix sasl_username
    local_user: str | None = None  # Exim U= on P=local*
    uid: int | None = None  # Postfix pickup uid
    protocol: str | None = None  # Exim P=
    client_ip: str | None = None
    parent_id: str | None = None  # Exim R= (a bounce of that message)
    message_id: str | None = None
    client_host: str | None = None  # the sending host's name (Exim H=, Postfix client=NAME[ip])


class Attempt(NamedTuple):
    """One delivery attempt for one recipient."""

    ts: datetime
    scope: str
    queue_id: str
    recipient: str
    outcome: Outcome  # DELIVERED | DEFERRED | FAILED
    orig_recipient: str | None = None
    relay: str | None = None  # Postfix relay=, Exim H= host
    transport: str | None = None  # Exim T=, Postfix service (smtp, lmtp, local, ...)
    dsn: str | None = None
    handoff_id: str | None = None  # Postfix "queued as NEWID" on a sent line
    cut_through: bool = False  # Exim ">>", logged before the "<=" line
    reply: str | None = None  # remote text, diagnostics only
    interface: str | None = None  # the local IP the delivery left from (Exim I=)
    delay_ms: int | None = None  # receipt to this delivery (Postfix delay=, Exim QT=), in ms
    router: str | None = None  # Exim R=
    remote_ip: str | None = None  # the remote host's address (Exim H=name [ip], Postfix relay=)


class Expired(NamedTuple):
    """Postfix qmgr ``status=expired``: every outstanding recipient fails."""

    ts: datetime
    scope: str
    queue_id: str


class Finished(NamedTuple):
    """The message left the queue: Exim ``Completed``, Postfix qmgr ``removed``."""

    ts: datetime
    scope: str
    queue_id: str


class Notice(NamedTuple):
    """The MTA generated a new message about an existing one.

    Postfix ``bounce: QID: sender non-delivery notification: NEWID``.
    """

    ts: datetime
    scope: str
    queue_id: str
    new_id: str


class Tagged(NamedTuple):
    """A tag header the MTA logged for a message (Postfix header_checks INFO, Exim logwrite)."""

    ts: datetime
    scope: str
    queue_id: str
    tags: tuple[str, ...]


class Rejected(NamedTuple):
    """An SMTP-time (or cleanup/milter) reject: no delivery will ever be attempted."""

    ts: datetime
    scope: str
    queue_id: str | None  # None for Exim id-less rejects and Postfix NOQUEUE
    stage: str  # RCPT, MAIL, DATA, END-OF-MESSAGE, CONNECT, header, body, ...
    sender: str | None = None
    recipient: str | None = None
    auth_id: str | None = None
    local_user: str | None = None
    client_ip: str | None = None
    temporary: bool = False  # 4xx: the client will try again
    reason: str | None = None


class Ignored(NamedTuple):
    """A line that was recognised and knowingly carries nothing the counters use."""

    kind: str  # e.g. "connect", "verify-probe", "suppressed-delivery", "other-daemon"


# A number field too large to be true (beyond ``MAX_NUMBER``): the grammar gives this
# value, the correlator counts an anomaly and treats the field as absent.
OUT_OF_RANGE = -1
MAX_NUMBER = 1 << 50  # 1 PiB as a size; far beyond any uid or recipient count


class Unparsed(NamedTuple):
    """A line the grammar does not know: a value, counted by reason, never an exception."""

    reason: str  # "no-rule", "bad-timestamp", "binary", "too-long", "not-mta", ...
    text: str


Record = Received | Attempt | Expired | Finished | Notice | Rejected | Tagged
ParseResult = Record | Ignored | Unparsed


# ---------------------------------------------------------------------------
# correlate -> store
# ---------------------------------------------------------------------------


class Detail(NamedTuple):
    """What Track Delivery shows of one outcome besides what it counts: who sent it, from
    where, and why it ended as it did.  Stored with the event row (``events`` columns of
    the same names); every field may be unknown."""

    sender: str | None = None  # envelope sender ("" for the null sender <>)
    orig_recipient: str | None = None  # the address before a rewrite or alias
    message_id: str | None = None
    client_host: str | None = None  # the sending host: name and IP
    client_ip: str | None = None
    auth: str | None = None  # the authenticated id (SMTP AUTH) or local user
    sent_at: float | None = None  # when the (original) message was accepted, epoch seconds
    reason: str | None = None  # the SMTP reply or the MTA's own text
    router: str | None = None
    transport: str | None = None
    remote_host: str | None = None  # the host it was delivered (or tried) to
    remote_ip: str | None = None
    dsn: str | None = None  # the enhanced status code, e.g. 5.1.1
    tags: str | None = None  # the message's tags, comma-separated
    origin: str | None = None  # the queue id this message continues (after a filter hop)
    parent: str | None = None  # the queue id of the message this one bounces


class Event(NamedTuple):
    """One countable fact, attributed to an account."""

    ts: datetime
    mta: str
    scope: str
    queue_id: str
    account: str
    sender_domain: str
    outcome: Outcome
    recipient: str = ""
    size: int = 0  # message size; bytes count only on DELIVERED
    local: bool = False  # a delivery on this host (mailbox, pipe, file), not to a remote MTA
    detail: Detail | None = None


# Histograms (``/metrics``): fixed upper bounds, in the integer unit they are stored in.
# Observations are stored as integers so that sums are exact on every path (the order in
# which counts from worker processes are added changes no bit of them).
DELAY = "delivery_delay"  # receipt to delivery of one recipient, in milliseconds
SIZE = "message_size"  # the size of one accepted message, in bytes
HISTOGRAM_BOUNDS: dict[str, tuple[int, ...]] = {
    # 0.1 s .. 5 days (Postfix's maximal_queue_lifetime; Exim's usual retry horizon)
    DELAY: (
        100, 1_000, 5_000, 15_000, 60_000, 300_000, 900_000, 3_600_000, 14_400_000,
        86_400_000, 432_000_000,
    ),
    # 1 KiB .. 64 MiB in powers of 4 (message_size_limit: Postfix 10 MB, Exim 50 MiB)
    SIZE: tuple(1024 * 4**k for k in range(9)),
}  # fmt: skip
INF_BOUND = (1 << 63) - 1  # the upper bound of the +Inf bucket, as stored
# one histogram bucket's delta: (metric, upper bound) -> [observations, their sum]
HistKey = tuple[str, int]


def bucket_bound(metric: str, value: int) -> int:
    """The upper bound of the bucket an observation falls in (``value <= bound``)."""
    bounds = HISTOGRAM_BOUNDS[metric]
    i = bisect_left(bounds, value)
    return bounds[i] if i < len(bounds) else INF_BOUND


# hourly counters: (epoch hour, account, sender domain, host)
CounterKey = tuple[int, str, str, str]
# hourly per-dimension counters: (epoch hour, account, sender domain, dimension, value, host)
DimKey = tuple[int, str, str, str, str, str]


def host_of(scope: str) -> str:
    """The syslog host of a record's scope (Postfix ``host/syslog_name``, Exim ``host``): a
    dimension of every counter, ``""`` where the log names no host (a plain Exim mainlog)."""
    return scope.partition("/")[0]


@dataclass(slots=True)
class Tally:
    """Counter deltas of one hour, account and sender domain (the ``counters`` row)."""

    sends: int = 0  # messages accepted and attributed
    successes: int = 0  # recipients delivered
    defers: int = 0  # deferral events
    fails: int = 0  # recipients failed permanently
    bytes: int = 0  # message size over deliveries
    rejects: int = 0  # SMTP-time RCPT rejects (each a send and a failure for cPanel)
    expired: int = 0  # in-flight messages dropped by logstats' own TTL
    local_successes: int = 0  # of successes: delivered on this host
    local_bytes: int = 0

    def values(self) -> tuple[int, ...]:
        """In the order of the store's ``counters`` columns."""
        return (
            self.sends, self.successes, self.defers, self.fails, self.bytes, self.rejects,
            self.expired, self.local_successes, self.local_bytes,
        )  # fmt: skip

    def add(self, values: Sequence[int]) -> None:
        """Add counts given in the order of ``values()``."""
        self.sends += values[0]
        self.successes += values[1]
        self.defers += values[2]
        self.fails += values[3]
        self.bytes += values[4]
        self.rejects += values[5]
        self.expired += values[6]
        self.local_successes += values[7]
        self.local_bytes += values[8]

    @property
    def events(self) -> int:
        """Countable outcomes (sends, deliveries, deferrals, failures, rejects)."""
        return self.sends + self.successes + self.defers + self.fails + self.rejects


@dataclass(slots=True)
class DimTally:
    """Counter deltas of one hour, account, sender domain and dimension value (``dims``)."""

    accepted_out: int = 0  # messages sent by accounts
    accepted_in: int = 0  # messages from outside (-remote-), RCPT rejects included
    delivered: int = 0
    deferred: int = 0
    failed: int = 0  # failed, expired or rejected recipients
    rejected: int = 0  # of failed: SMTP-time RCPT rejects
    bytes: int = 0
    first_at: int = 0  # epoch seconds of the first and last activity
    last_at: int = 0

    def add(self, values: Sequence[int]) -> None:
        """Add counts (and widen the first and last times) given in the order of
        ``counts()``, then first, last."""
        self.accepted_out += values[0]
        self.accepted_in += values[1]
        self.delivered += values[2]
        self.deferred += values[3]
        self.failed += values[4]
        self.rejected += values[5]
        self.bytes += values[6]
        self.first_at = min(self.first_at, values[7])
        self.last_at = max(self.last_at, values[8])

    def counts(self) -> tuple[int, ...]:
        """The counts, in the order of the store's ``dims`` columns."""
        return (
            self.accepted_out, self.accepted_in, self.delivered, self.deferred, self.failed,
            self.rejected, self.bytes,
        )  # fmt: skip


@dataclass(slots=True)
class Message:
    """A message in flight (or a partial Postfix receipt), persisted between runs."""

    scope: str
    queue_id: str
    first_seen: datetime
    last_seen: datetime
    received: bool = False  # the receipt is complete and the send was counted
    account: str | None = None
    sender: str | None = None
    size: int = 0
    nrcpt: int = 0
    auth_id: str | None = None
    local_user: str | None = None
    uid: int | None = None
    client_ip: str | None = None
    accepted_at: datetime | None = None  # when the (original) message was accepted
    origin: str | None = None  # queue id this message continues (filter / relay hop)
    message_id: str | None = None  # the Message-ID header, links a filter's re-injection
    tags: list[str] = field(default_factory=list)  # from logged headers and config rules
    interface: str | None = None  # the local IP it was received on / sent from
    system: bool = False  # generated by the MTA (bounce)
    domain: str | None = None  # the sender's domain, once known (a cache)
    client_host: str | None = None  # the sending host's name
    parent: str | None = None  # queue id of the message this one bounces
    done: dict[str, str] = field(default_factory=dict)  # recipient -> final outcome
    deferrals: list[str] = field(default_factory=list)  # recipients deferred at least once
    orphans: list[Attempt] = field(default_factory=list)  # attempts seen before the receipt
    # what was counted for this message, kept while a later hand-off may still claim it (a
    # re-injection candidate) or while a hand-off waits for its NEWID: each entry is one
    # counted outcome (see correlate._apply), so it can be taken back exactly
    ledger: list[list[object]] = field(default_factory=list)
    tracked: bool = False  # keeps a ledger (a possible re-injection)
    finished: bool = False  # left the queue; kept only for the hand-off window


@dataclass(frozen=True, slots=True)
class Position:
    """Where reading of one file stands; stored verbatim as its checkpoint."""

    head_hash: str  # hash of the first complete line: identity across rename/compress
    path: str
    inode: int
    byte_offset: int  # just past the last complete line handed on (uncompressed bytes)
    lines: int  # complete lines consumed so far
    mtime: float = 0.0
    done: bool = False  # a compressed or otherwise finished file
    year: int = 0  # the year reached by the file's yearless stamps (0: none yet)
    month: int = 0


@dataclass(frozen=True, slots=True)
class StatsRequest:
    """A time window (UTC, end exclusive) and optional account filter."""

    start: datetime
    end: datetime
    account: str | None = None
    host: str | None = None  # the syslog host (``host_of``); None: every host


@dataclass(frozen=True, slots=True)
class AccountStats:
    """The EmailTrack::stats numbers for one account and window."""

    account: str
    sendcount: int = 0
    successcount: int = 0
    defercount: int = 0
    failcount: int = 0
    totalsize: int = 0
    inprogresscount: int = 0
    local_successcount: int = 0
    local_totalsize: int = 0


# ---------------------------------------------------------------------------
# store -> query (the vendor shapes: Mailgun, SendGrid, SMTPeter, Prometheus)
# ---------------------------------------------------------------------------


class Resolution(StrEnum):
    HOUR = "hour"
    DAY = "day"
    MONTH = "month"


class Dimension(StrEnum):
    """What a series can be grouped or filtered by."""

    ACCOUNT = "account"
    SENDER_DOMAIN = "domain"  # the envelope sender's domain (Mailgun's "domain")
    RECIPIENT_DOMAIN = "recipient_domain"
    PROVIDER = "provider"  # a named group of recipient domains / MX hosts (config)
    IP = "ip"  # the sending IP, where the log has it
    TAG = "tag"  # from a logged header or a config rule (SendGrid "category")


@dataclass(frozen=True, slots=True)
class SeriesRequest:
    """A window (UTC, end exclusive), filters, and an optional grouping.  The rows answer
    what the vendor shapes count: never ``-system-`` (the MTA's own bounces)."""

    start: datetime
    end: datetime
    resolution: Resolution | None = Resolution.DAY  # None: one total over the window
    accounts: tuple[str, ...] | None = None  # None: every account
    filters: tuple[tuple[Dimension, str], ...] = ()  # e.g. ((Dimension.TAG, "newsletter"),)
    group: Dimension | None = None
    # sender domains matching one of these patterns (``*``, ``?``, ``[...]``; lower case):
    # a key's domain scope; empty: any
    domain_patterns: tuple[str, ...] = ()
    host: str | None = None  # the syslog host (``host_of``); None: every host


@dataclass(frozen=True, slots=True)
class SeriesRow:
    """Counts for one time bucket (and one group value)."""

    bucket: datetime | None  # start of the hour/day/month in UTC; None for a window total
    key: str | None  # the group's value; None when not grouped
    accepted_outgoing: int = 0  # messages accepted from accounts (authenticated, local)
    accepted_incoming: int = 0  # messages accepted from outside (-remote-)
    delivered: int = 0  # recipients delivered
    failed_temporary: int = 0  # deferral events
    failed_permanent: int = 0  # accepted recipients failed or expired (no RCPT reject)
    rejected: int = 0  # SMTP-time RCPT rejects: never accepted, in none of the above
    bytes: int = 0  # message size over deliveries
    first: datetime | None = None  # first activity in the bucket
    last: datetime | None = None  # last activity in the bucket

    @property
    def accepted(self) -> int:
        return self.accepted_outgoing + self.accepted_incoming
