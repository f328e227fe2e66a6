"""Join the lines of one message by queue id and attribute each outcome to an account.

The sender, size and identity are on the receipt line(s); outcomes come later with the same
queue id.  Queue ids are unique only per MTA instance, so messages are keyed by
``(scope, queue_id)``.  The state of every message still in flight is a ``Message`` that
the store persists together with the counters, so a later run continues where this one
stopped.

Rules (the counting contract, cPanel's EmailTrack semantics):

* a message is counted as sent once, when its receipt is complete (Exim ``<=``, Postfix's
  first qmgr ``from=``); a message that continues another one (a content-filter
  re-injection, a local forward) is not a new send;
* every delivered recipient is one success (Exim ``=>``/``->``/``>>``, Postfix
  ``status=sent``), counted once per recipient;
* every deferral is one defer event; every failed recipient one failure; an expired or
  cancelled message fails each recipient still outstanding;
* a permanent SMTP-time RCPT reject is one send and one failure (of ``-remote-`` unless the
  line, or the queue id it carries, identifies an account);
* outcomes seen before their receipt (Exim ``>>`` cut-through) wait for it; if it never
  comes within ``orphan_ttl`` they are counted for ``-unknown-``.

Hops are recognised by what happens next, not by where the relay is.  A delivery whose
reply names the next queue id (``queued as NEWID``, Exim's ``id=NEWID``, Postfix
``forwarded as NEWID``) is a delivery, unless NEWID is seen entering the queue in the same
scope, with the same Message-ID where both are logged, within ``handoff_window``.  Then
the two are one message: the hop is taken back as a delivery and NEWID counts for the
original account, with the original size, as no new send.  Either order is handled:

* NEWID's receipt first (the usual order: the next hop logs its receipt before it answers):
  messages that may be re-injections (received from loopback or ``filter_relays``, or from
  no client at all) keep a ledger of what was counted for them, and stay known for the
  window after they leave the queue, so that their send can be taken back and their
  outcomes moved to the original account;
* the hand-off first: the delivery is counted, and a placeholder waits for NEWID with the
  ledger of that delivery.

Counters are deltas, so every commit holds the best reading of what has been read so far.

No record raises out of this module: an inconsistency (a hand-off id claimed by two
messages, a second receipt for one queue id, a number out of range, a clock jump) is
counted in ``anomalies`` by kind and resolved in the way that loses least.

This module is pure: no IO, no clock, no logging.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

from logstats.model import (
    DELAY,
    REMOTE,
    SIZE,
    SYSTEM,
    UNKNOWN,
    Attempt,
    CounterKey,
    Detail,
    DimKey,
    DimTally,
    Event,
    Expired,
    Finished,
    HistKey,
    Message,
    Notice,
    Outcome,
    Received,
    Record,
    Rejected,
    Tagged,
    Tally,
    bucket_bound,
    host_of,
)

Key = tuple[str, str]  # (scope, queue_id)
_CACHE_LIMIT = 100_000  # entries of a Policy cache before it starts over
HANDOFF_SCOPE = "*"  # placeholders of hand-offs waiting for NEWID: ("*" + scope, NEWID)
CLOCK_JUMP = timedelta(days=1)  # a record this far ahead of the log clock must be confirmed


@dataclass(frozen=True, slots=True)
class Policy:
    """How messages are attributed to accounts and which hops are not deliveries."""

    domains: Mapping[str, str] = field(default_factory=dict)  # domain -> account
    uid_name: Callable[[int], str | None] = lambda uid: None
    sender_domain_fallback: bool = False
    # where a content filter may re-inject from, besides loopback (a hint: hops are
    # recognised by NEWID entering the queue, wherever it comes from)
    filter_relays: tuple[str, ...] = ("127.0.0.1", "[::1]", "::1", "localhost")
    ttl: timedelta = timedelta(days=7)
    orphan_ttl: timedelta = timedelta(hours=1)
    handoff_window: timedelta = timedelta(minutes=10)
    # provider name -> recipient-domain or MX-host patterns (fnmatch, lower case)
    providers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # (tag, "sender" | "recipient", fnmatch pattern on the address, lower case)
    tag_rules: tuple[tuple[str, str, str], ...] = ()

    # answers already worked out (a Policy is rebuilt on reload, so these never go stale)
    _providers: dict[tuple[str, str], str | None] = field(
        default_factory=dict, compare=False, repr=False
    )
    _uids: dict[int, str | None] = field(default_factory=dict, compare=False, repr=False)

    _provider_re: list[tuple[re.Pattern[str], tuple[str, ...]]] = field(
        default_factory=list, compare=False, repr=False
    )

    def provider_for(self, domain: str, relay: str | None) -> str | None:
        """The provider a recipient domain (or the MX host it was delivered to) belongs to:
        the first provider (in configuration order) with a pattern (fnmatch, case
        sensitive) that matches either."""
        host = (relay or "").split("[", 1)[0].lower()
        key = (domain, host)
        cache = self._providers
        if key in cache:
            return cache[key]
        if not self._provider_re:
            # every provider's patterns in one expression, a group per provider: the
            # first alternative that matches names the first provider that matches
            names = tuple(self.providers)
            groups = (
                f"(?P<p{i}>{'|'.join(fnmatch.translate(p) for p in self.providers[n])})"
                for i, n in enumerate(names)
                if self.providers[n]
            )
            self._provider_re.append((re.compile("|".join(groups) or "(?!)"), names))
        regex, names = self._provider_re[0]
        found = None
        for text in (domain, host) if host else (domain,):
            m = regex.match(text)
            if m is not None and m.lastgroup is not None:
                index = int(m.lastgroup[1:])
                if found is None or index < found:
                    found = index
        name = None if found is None else names[found]
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[key] = name
        return name

    def account_for_uid(self, uid: int) -> str | None:
        """A local submitter's uid -> its user name (looked up once per uid)."""
        cache = self._uids
        if uid not in cache:
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[uid] = self.uid_name(uid)
        return cache[uid]

    def tags_for(self, kind: str, address: str) -> list[str]:
        addr = address.lower()
        return [
            tag for tag, k, pattern in self.tag_rules if k == kind and fnmatchcase(addr, pattern)
        ]

    @property
    def recipient_rules(self) -> bool:
        return any(k == "recipient" for _, k, _ in self.tag_rules)

    def account_for_id(self, ident: str) -> str:
        """An authenticated or local identity -> account (an address maps by its domain)."""
        if "@" in ident:
            domain = ident.rsplit("@", 1)[1].lower()
            return self.domains.get(domain, domain)
        return ident

    def may_reinject(self, client_ip: str | None) -> bool:
        """Whether a message received from this client may be a filter's re-injection."""
        if not client_ip:
            return True  # no client: a local forward or a pickup the MTA made itself
        ip = client_ip.lower()
        if ip.startswith("127.") or ip in ("::1", "ipv6:::1", "::ffff:127.0.0.1"):
            return True
        return ip in self.filter_relays or f"[{ip}]" in self.filter_relays


_LOCAL_AGENTS = frozenset(("local", "virtual", "pipe", "lmtp", "maildrop", "dovecot"))


def _is_local(a: Attempt) -> bool:
    """A delivery on this host: no remote host (Exim), or a local delivery agent (Postfix)."""
    relay = a.relay
    if relay is None or relay in ("local", "virtual", "none") or "[private/" in relay:
        return True
    return a.transport in _LOCAL_AGENTS


def _address(a: Attempt) -> str:
    """The recipient as an address: Exim local deliveries log the local part first
    (``=> lsuser2 <lsuser2@local.test>``)."""
    if "@" not in a.recipient and a.orig_recipient and "@" in a.orig_recipient:
        return a.orig_recipient
    return a.recipient


_MTA_SENDERS = frozenset(("double-bounce", "mailer-daemon"))


def _mta_sender(sender: str | None) -> bool:
    """An envelope sender only the MTA uses for what it writes itself: the null sender
    ``<>`` (bounces, delay warnings), Postfix's ``double-bounce@`` (postmaster
    notifications), ``MAILER-DAEMON@``.  Mail with such a sender that no client, uid or
    local user submitted is the MTA's own (``-system-``), also when the Postfix
    ``notification:`` line that names it comes after its qmgr line."""
    if sender is None:
        return False
    return sender == "" or sender.split("@", 1)[0].lower() in _MTA_SENDERS


def _domain(addr: str | None) -> str:
    if not addr or "@" not in addr:
        return ""
    return addr.rsplit("@", 1)[1].lower()


@dataclass(frozen=True, slots=True)
class Drained:
    """What a batch hands to the store."""

    counters: dict[CounterKey, Tally]
    dims: dict[DimKey, DimTally]
    events: list[Event]
    upsert: list[Message]
    dropped: set[Key]
    retracted: list[Event] = field(default_factory=list)  # event rows taken back
    anomalies: Counter[str] = field(default_factory=Counter)
    anomaly_samples: dict[str, str] = field(default_factory=dict)
    # histogram deltas: (metric, upper bound) -> [observations, their sum]
    histograms: dict[HistKey, list[int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Counts:
    """Counters as plain rows: what a correlator in another process counted."""

    counters: list[tuple[Any, ...]]  # (hour, account, domain, host, *Tally.values())
    # (hour, account, domain, kind, value, host, *counts, first, last)
    dims: list[tuple[Any, ...]]
    events: list[Event]
    anomalies: dict[str, int]
    anomaly_samples: dict[str, str]
    histograms: list[tuple[str, int, int, int]] = field(default_factory=list)  # metric, le, n, sum


def may_be_hop(
    policy: Policy,
    client_ip: str | None,
    uid: int | None,
    local_user: str | None,
    auth_id: str | None,
) -> bool:
    """A message that may be a hop's next part: received from loopback (or a configured
    filter relay), or made by the MTA with no submitter (a Postfix local forward).  Local
    submissions (Exim ``U=``, Postfix pickup ``uid=``) never are."""
    if client_ip:
        return policy.may_reinject(client_ip)
    return uid is None and local_user is None and not auth_id


def self_contained(records: list[Record], policy: Policy) -> set[Key]:
    """The messages of a run of records that a fresh correlator counts exactly as the
    long-running one would, given that the long-running one has nothing in flight under
    their keys (``Correlator.knows``): each is received and leaves the queue within the
    run (its finish is its last record), is no hop's candidate (``may_be_hop``), names no
    next hop, and no other record names it (a hand-off, a bounce notice, a reject)."""
    state: dict[Key, list[Any]] = {}  # key -> [received, finished last, client, uid, user, auth]
    excluded: set[Key] = set()
    for r in records:
        if isinstance(r, Rejected):
            if r.queue_id:
                excluded.add((r.scope, r.queue_id))
            continue
        key = (r.scope, r.queue_id)
        if isinstance(r, Notice):
            excluded.add(key)
            excluded.add((r.scope, r.new_id))
            continue
        s = state.get(key)
        if s is None:
            s = state[key] = [False, False, None, None, None, None]
        elif s[1]:
            excluded.add(key)  # a record after its finish: a queue id used again
        s[1] = isinstance(r, Finished)
        if isinstance(r, Received):
            if s[0]:
                continue  # after the receipt: what decides whether it may be a hop is known
            if r.client_ip and not s[2]:
                s[2] = r.client_ip
            if r.uid is not None and r.uid >= 0:
                s[3] = r.uid
            if r.local_user and not s[4]:
                s[4] = r.local_user
            if r.auth_id and not s[5]:
                s[5] = r.auth_id
            if r.complete:
                s[0] = True
                if may_be_hop(policy, s[2], s[3], s[4], s[5]):
                    excluded.add(key)
        elif isinstance(r, Attempt) and r.handoff_id and r.handoff_id != r.queue_id:
            excluded.add(key)
            excluded.add((r.scope, r.handoff_id))
    return {k for k, s in state.items() if s[0] and s[1] and k not in excluded}


# a ledger entry: [outcome, epoch, account, sender domain, size, local, tags, interface,
# recipient, relay, scope, queue id (of the event row)]
_L_OUTCOME, _L_ACCOUNT, _L_DOMAIN, _L_SIZE, _L_TAGS, _L_DETAIL = 0, 2, 3, 4, 6, 13


class Correlator:
    """State machine over records of one MTA; produces ``Event``s."""

    def __init__(
        self, mta: str, policy: Policy, messages: Mapping[Key, Message] | None = None
    ) -> None:
        self.mta = mta
        self._policy = policy
        self._recipient_rules = policy.recipient_rules
        self.messages: dict[Key, Message] = dict(messages or {})
        self.events: list[Event] = []
        self.retracted: list[Event] = []
        self.dirty: set[Key] = set()
        self.dropped: set[Key] = set()
        self.expired_messages = 0
        self.last_ts: datetime | None = None  # the log's clock: newest confirmed record time
        self._jump: datetime | None = None  # a record far ahead of the clock, unconfirmed
        # hourly counter deltas since the last drain
        self.counters: dict[CounterKey, Tally] = {}
        self.events_since: datetime | None = None  # keep Event rows only from here on
        # hourly per-dimension deltas (tag, ip, recipient domain, provider)
        self.dims: dict[DimKey, DimTally] = {}
        # histogram deltas (delivery delay, message size): (metric, bound) -> [count, sum]
        self.histograms: dict[HistKey, list[int]] = {}
        self.anomalies: Counter[str] = Counter()
        self.anomaly_samples: dict[str, str] = {}
        self._hour_ts: datetime | None = None  # the last record time seen by _clock_of
        self._hour = 0
        self._epoch = 0
        self._handlers: dict[type, Callable[[Any], None]] = {
            Received: self._received,
            Attempt: self._attempt,
            Finished: self._finished,
            Expired: self._expired,
            Notice: self._notice,
            Rejected: self._rejected,
            Tagged: self._tagged,
        }

    # -- public API --------------------------------------------------------------------------
    @property
    def policy(self) -> Policy:
        return self._policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        """A new policy (a reloaded configuration) applies to what is counted from now on."""
        self._policy = policy
        self._recipient_rules = policy.recipient_rules

    def feed(self, record: Record) -> None:
        """Take one record; an inconsistent one is counted as an anomaly, never raised."""
        try:
            self._advance_clock(record.ts)
            self._handlers[type(record)](record)
        except Exception as exc:  # a safety net: no record stops the pipeline
            self.anomaly("record-error", f"{type(exc).__name__}: {exc}: {record!r}")

    def anomaly(self, kind: str, sample: str) -> None:
        self.anomalies[kind] += 1
        self.anomaly_samples.setdefault(kind, sample[:500])

    def drain(self) -> Drained:
        """Counters and events since the last drain, messages to persist, keys to delete."""
        counters, self.counters = self.counters, {}
        dims, self.dims = self.dims, {}
        events, self.events = self.events, []
        retracted, self.retracted = self.retracted, []
        anomalies, self.anomalies = self.anomalies, Counter()
        samples, self.anomaly_samples = self.anomaly_samples, {}
        histograms, self.histograms = self.histograms, {}
        upsert = [self.messages[k] for k in self.dirty if k in self.messages]
        dropped = self.dropped - self.dirty.intersection(self.messages)
        self.dirty, self.dropped = set(), set()
        return Drained(
            counters, dims, events, upsert, dropped, retracted, anomalies, samples, histograms
        )

    def merge(self, counts: Counts) -> None:
        """Add what another correlator counted for self-contained messages (see
        ``self_contained``): the same counters as if their records had been fed here."""
        counters = self.counters
        for hour, account, domain, host, *values in counts.counters:
            key = (hour, account, domain, host)
            t = counters.get(key)
            if t is None:
                counters[key] = Tally(*values)
            else:
                t.add(values)
        dims = self.dims
        for hour, account, domain, kind, value, host, *counted in counts.dims:
            dkey = (hour, account, domain, kind, value, host)
            d = dims.get(dkey)
            if d is None:
                dims[dkey] = DimTally(*counted)
            else:
                d.add(counted)
        histograms = self.histograms
        for metric, bound, n, total in counts.histograms:
            h = histograms.get((metric, bound))
            if h is None:
                histograms[(metric, bound)] = [n, total]
            else:
                h[0] += n
                h[1] += total
        since = self.events_since
        self.events += [e for e in counts.events if since is None or e.ts >= since]
        self.anomalies.update(counts.anomalies)
        for kind, sample in counts.anomaly_samples.items():
            self.anomaly_samples.setdefault(kind, sample)

    def observe(self, first: datetime, newest: datetime) -> bool:
        """Let the log's clock see records counted elsewhere, whose times run from ``first``
        without a jump up to ``newest``; False (nothing changed) when they would not have
        moved it smoothly (a jump from where it stands): then they must be fed here."""
        last = self.last_ts
        if last is not None and first > last + CLOCK_JUMP:
            return False
        if last is None or newest > last:
            self.last_ts = newest
        self._jump = None
        return True

    def knows(self, key: Key) -> bool:
        """Whether a message (or a hand-off waiting for it) is in flight under ``key``."""
        return key in self.messages or (HANDOFF_SCOPE + key[0], key[1]) in self.messages

    def counts(self) -> Counts:
        """Drain the counters as plain rows (cheap to send between processes)."""
        d = self.drain()
        return Counts(
            counters=[(*k, *t.values()) for k, t in d.counters.items()],
            dims=[(*k, *t.counts(), t.first_at, t.last_at) for k, t in d.dims.items()],
            events=d.events,
            anomalies=dict(d.anomalies),
            anomaly_samples=d.anomaly_samples,
            histograms=[(m, b, n, total) for (m, b), (n, total) in d.histograms.items()],
        )

    def expire(self, now: datetime) -> int:
        """Forget messages idle for longer than the TTL; count their waiting outcomes.

        Finished messages and hand-off placeholders are kept only for the hand-off window."""
        count = 0
        window = self.policy.handoff_window
        for key, msg in list(self.messages.items()):
            idle = now - msg.last_seen
            # what the window decides is decided by the records' times (see _handoff), so
            # forgetting here, whenever it runs, changes no count
            if key[0][:1] == HANDOFF_SCOPE:
                if now - msg.first_seen > window:
                    self._drop(key)
                continue
            if msg.finished:
                if idle > window:
                    self._drop(key)
                continue
            if msg.orphans and idle > self.policy.orphan_ttl:
                self._flush_orphans(msg, UNKNOWN)
                self._touch(key)
            if msg.tracked and msg.accepted_at and now - msg.accepted_at > window:
                msg.tracked, msg.ledger = False, []  # no hand-off can claim it any more
                self._touch(key)
            if idle > self.policy.ttl:
                if msg.received:
                    self._emit(msg, Outcome.EXPIRED, now, "", reason=_EXPIRED_REASON)
                    count += 1
                self._drop(key)
        self.expired_messages += count
        return count

    # -- the log's clock ---------------------------------------------------------------------
    def _advance_clock(self, ts: datetime) -> None:
        """``last_ts`` follows the records, but one record far ahead of the rest (a junk
        stamp) does not move it: a jump of more than a day is taken when a second record
        confirms it (a log with a quiet week still moves on)."""
        last = self.last_ts
        if last is None or ts <= last + CLOCK_JUMP:
            if last is None or ts > last:
                self.last_ts = ts
            self._jump = None
            return
        jump = self._jump
        if jump is not None and abs(ts - jump) <= CLOCK_JUMP:
            self.last_ts, self._jump = max(ts, jump), None
            return
        if jump is not None:
            self.anomaly("clock-jump", f"{jump.isoformat()} after {last.isoformat()}")
        self._jump = ts

    # -- record handlers ---------------------------------------------------------------------
    def _get(self, key: Key, ts: datetime) -> Message:
        msg = self.messages.get(key)
        if msg is None or msg.finished:
            # new, or a queue id reused after the message it named left the queue
            msg = Message(scope=key[0], queue_id=key[1], first_seen=ts, last_seen=ts)
            self.messages[key] = msg
        msg.last_seen = ts
        self.dirty.add(key)
        return msg

    def _touch(self, key: Key) -> None:
        self.dirty.add(key)

    def _drop(self, key: Key) -> None:
        self.messages.pop(key, None)
        self.dirty.discard(key)
        self.dropped.add(key)

    def _number(self, value: int | None, what: str, r: Record) -> int | None:
        if value is not None and value < 0:
            self.anomaly("number-out-of-range", f"{what}: {r!r}")
            return None
        return value

    def _received(self, r: Received) -> None:
        key = (r.scope, r.queue_id)
        msg = self._get(key, r.ts)
        if r.complete and msg.received and self.mta == "exim":
            # Exim logs one "<=" per message: a second one is a replayed line, or an id
            # that collides (two hosts logging without a host field); keep the first
            self.anomaly("duplicate-receipt", repr(r))
            return
        size = self._number(r.size, "size", r)
        nrcpt = self._number(r.nrcpt, "nrcpt", r)
        uid = self._number(r.uid, "uid", r)
        if r.sender is not None and (
            msg.sender is None or ("@" not in msg.sender and "@" in r.sender)
        ):
            msg.sender = r.sender  # pickup's unqualified from=<user>, then qmgr's address
            if msg.origin is None:
                msg.domain = None
        if size is not None and msg.origin is None and (msg.size == 0 or r.complete):
            msg.size = size
        if nrcpt is not None:
            msg.nrcpt = nrcpt
        if r.auth_id and not msg.auth_id:
            msg.auth_id = r.auth_id
        if r.local_user and not msg.local_user:
            msg.local_user = r.local_user
        if uid is not None:
            msg.uid = uid
        if r.client_ip and not msg.client_ip:
            msg.client_ip = r.client_ip
        if r.message_id and not msg.message_id:
            msg.message_id = r.message_id
        if r.client_host and not msg.client_host:
            msg.client_host = r.client_host
        if r.parent_id and not msg.parent:
            msg.parent = r.parent_id
        if r.parent_id or (r.local_user == "mailnull" and r.sender == ""):
            msg.system = True
        if not r.complete or msg.received:
            return
        msg.received = True
        msg.tracked = self._may_reinject(msg)
        if msg.origin is None:
            self._claim_placeholder(msg, key)
        if msg.accepted_at is None:
            msg.accepted_at = r.ts
        if msg.account is None:
            msg.account = self._resolve(msg)
        if self.policy.tag_rules and msg.sender:
            for tag in self.policy.tags_for("sender", msg.sender):
                if tag not in msg.tags:
                    msg.tags.append(tag)
        if msg.origin is None:
            self._emit(msg, Outcome.SEND, r.ts, "")
        if msg.orphans:
            self._flush_orphans(msg, msg.account)

    def _may_reinject(self, msg: Message) -> bool:
        return may_be_hop(self.policy, msg.client_ip, msg.uid, msg.local_user, msg.auth_id)

    def _claim_placeholder(self, msg: Message, key: Key) -> None:
        """The hand-off was logged before this receipt: this message continues that one."""
        hkey = (HANDOFF_SCOPE + key[0], key[1])
        hop = self.messages.get(hkey)
        if hop is None:
            return
        self._drop(hkey)
        if not hop.origin or msg.first_seen - hop.first_seen > self.policy.handoff_window:
            return  # claimed by two messages (both stay deliveries), or too late to be a hop
        if hop.message_id and msg.message_id and hop.message_id != msg.message_id:
            self.anomaly(
                "handoff-message-id-mismatch",
                f"{hop.origin} handed off as {key[1]} <{hop.message_id}>, "
                f"received <{msg.message_id}>",
            )
            return
        for entry in hop.ledger:
            self._apply(entry, -1)  # the hop was not a delivery after all
        self._continue(msg, hop)

    def _continue(self, msg: Message, origin: Message) -> None:
        """``msg`` is the same message as ``origin`` after a hop (or the hop's placeholder)."""
        msg.origin = origin.origin or f"{origin.scope} {origin.queue_id}"
        msg.account = origin.account
        msg.system = origin.system
        msg.accepted_at = origin.accepted_at
        msg.size = origin.size
        msg.domain = origin.domain if origin.domain is not None else _domain(origin.sender)
        msg.parent = msg.parent or origin.parent
        for tag in origin.tags:
            if tag not in msg.tags:
                msg.tags.append(tag)

    def _resolve(self, msg: Message) -> str:
        p = self.policy
        if msg.system or (
            _mta_sender(msg.sender)
            and not msg.client_ip
            and msg.uid is None
            and not msg.auth_id
            and not msg.local_user
        ):
            return SYSTEM
        if msg.local_user:
            return p.account_for_id(msg.local_user)
        if msg.auth_id:
            return p.account_for_id(msg.auth_id)
        if msg.uid is not None:
            return p.account_for_uid(msg.uid) or f"uid:{msg.uid}"
        if p.sender_domain_fallback:
            mapped = p.domains.get(_domain(msg.sender))
            if mapped:
                return mapped
        return REMOTE

    def _attempt(self, a: Attempt) -> None:
        key = (a.scope, a.queue_id)
        msg = self._get(key, a.ts)
        if not msg.received:
            msg.orphans.append(a)
            return
        self._count_attempt(msg, a, msg.account or UNKNOWN)

    def _count_attempt(self, msg: Message, a: Attempt, account: str) -> None:
        rcpt = a.recipient if a.orig_recipient is None else f"{a.recipient}<{a.orig_recipient}"
        if a.outcome is Outcome.DEFERRED:
            # every deferral line is an event (two in one second are two attempts); a file
            # read again is kept from counting twice by its checkpoint, not here
            if rcpt not in msg.deferrals:
                msg.deferrals.append(rcpt)
            self._emit(msg, Outcome.DEFERRED, a.ts, _address(a), account, relay=a.relay, attempt=a)
            return
        if rcpt in msg.done:
            return  # a replayed line, or a duplicate the MTA logged twice
        msg.done[rcpt] = a.outcome.value
        if a.interface and not msg.interface:
            msg.interface = a.interface
        if (
            a.outcome is Outcome.DELIVERED
            and a.handoff_id
            and a.handoff_id != msg.queue_id
            and self._handoff(msg, a, account)
        ):
            return
        self._emit(
            msg, a.outcome, a.ts, _address(a), account,
            local=_is_local(a), relay=a.relay, delay=a.delay_ms, attempt=a,
        )  # fmt: skip

    def _handoff(self, msg: Message, a: Attempt, account: str) -> bool:
        """A delivery that names the next queue id.  True when handled here (a hop, not
        counted; or a delivery counted provisionally); False: count it as usual."""
        new_id = str(a.handoff_id)
        key = (msg.scope, new_id)
        nxt = self.messages.get(key)
        if nxt is not None and nxt.received:
            # NEWID's receipt came first (the usual order)
            mine = f"{msg.scope} {msg.queue_id}"
            if nxt.origin == mine or (nxt.origin is not None and nxt.origin == msg.origin):
                return True  # another recipient of the same hop
            if nxt.origin is not None or not nxt.tracked:
                self.anomaly("handoff-claimed-twice", f"{mine} -> {new_id}, already {nxt.origin}")
                return False
            if msg.message_id and nxt.message_id and msg.message_id != nxt.message_id:
                return False  # an id of another host's queue that happens to be ours too
            if nxt.accepted_at and msg.accepted_at and nxt.accepted_at < msg.accepted_at:
                return False  # received before this message was: not its re-injection
            if not nxt.accepted_at or a.ts - nxt.accepted_at > self.policy.handoff_window:
                return False  # received too long before the hand-off to be its next hop
            self._relink(nxt, key, msg)
            return True
        # the hand-off first: a delivery until NEWID appears
        hkey = (HANDOFF_SCOPE + msg.scope, new_id)
        hop = self.messages.get(hkey)
        origin = msg.origin or f"{msg.scope} {msg.queue_id}"
        if hop is None:
            hop = Message(
                scope=hkey[0],
                queue_id=new_id,
                first_seen=a.ts,
                last_seen=a.ts,
                origin=origin,
                account=account,
                sender=msg.sender,
                size=msg.size,
                system=msg.system,
                accepted_at=msg.accepted_at,
                message_id=msg.message_id,
                domain=msg.domain if msg.domain is not None else _domain(msg.sender),
                tags=list(msg.tags),
            )
            self.messages[hkey] = hop
        elif hop.origin and hop.origin != origin:
            self.anomaly("handoff-claimed-twice", f"{origin} -> {new_id}, already {hop.origin}")
            hop.origin = ""  # ambiguous: neither claim links
        hop.last_seen = a.ts
        self.dirty.add(hkey)
        self._emit(
            msg, a.outcome, a.ts, _address(a), account,
            local=_is_local(a), relay=a.relay, ledger=hop.ledger, delay=a.delay_ms, attempt=a,
        )  # fmt: skip
        return True  # counted, provisionally

    def _relink(self, nxt: Message, key: Key, origin: Message) -> None:
        """NEWID was received (and maybe delivered) before the hand-off: take back its send
        and move what was counted for it to the original account."""
        entries, nxt.ledger = nxt.ledger, []
        self._continue(nxt, origin)
        for entry in entries:
            self._apply(entry, -1)
            if entry[_L_OUTCOME] != Outcome.SEND.value:
                moved = list(entry)
                moved[_L_ACCOUNT] = nxt.account
                moved[_L_DOMAIN] = nxt.domain
                moved[_L_SIZE] = nxt.size
                moved[_L_TAGS] = list(nxt.tags)  # the original's tags (logged on its pass)
                kept: Any = moved[_L_DETAIL] if len(moved) > _L_DETAIL else None
                if kept:
                    moved[_L_DETAIL] = list(
                        Detail(*kept)._replace(
                            origin=_queue_id_of(nxt.origin),
                            sent_at=nxt.accepted_at.timestamp() if nxt.accepted_at else None,
                        )
                    )
                self._apply(moved, 1, nxt.ledger)
        self._touch(key)

    def _apply(self, entry: list[Any], sign: int, ledger: list[list[Any]] | None = None) -> None:
        """Count (or, with ``sign`` -1, take back) one ledger entry exactly."""
        outcome = Outcome(entry[0])
        ts = datetime.fromtimestamp(entry[1], UTC)
        account, domain, size, local = entry[2], entry[3], int(entry[4]), bool(entry[5])
        tags, interface, recipient, relay = list(entry[6]), entry[7], entry[8], entry[9]
        delay = entry[12] if len(entry) > 12 else None  # not in entries of older versions
        kept = entry[_L_DETAIL] if len(entry) > _L_DETAIL else None
        detail = Detail(*kept)._replace(tags=",".join(tags) or None) if kept else None
        host = host_of(entry[10])
        self._count(ts, account, domain, host, outcome, size, local, sign)
        self._observe(outcome, size, delay, sign)
        if outcome is not Outcome.EXPIRED:
            self._count_dims(
                ts, account, domain, host, outcome, size, tags, interface, recipient, relay, sign
            )
        if ledger is not None:
            ledger.append(list(entry))
        if self.events_since is None or ts >= self.events_since:
            event = Event(
                ts, self.mta, entry[10], entry[11], account, domain, outcome, recipient, size,
                local, detail,
            )  # fmt: skip
            (self.events if sign > 0 else self.retracted).append(event)

    def _flush_orphans(self, msg: Message, account: str | None) -> None:
        orphans, msg.orphans = msg.orphans, []
        for a in orphans:
            self._count_attempt(msg, a, account or UNKNOWN)

    def _finished(self, f: Finished) -> None:
        key = (f.scope, f.queue_id)
        msg = self.messages.get(key)
        if msg is None or msg.finished:
            return
        if msg.orphans:
            self._flush_orphans(msg, msg.account if msg.received else UNKNOWN)
        if (
            msg.tracked
            and msg.received
            and msg.accepted_at
            and f.ts - msg.accepted_at <= self.policy.handoff_window
        ):
            # a later hand-off may still name it (its receipt was logged before the hop's
            # delivery line): keep it, out of the in-flight count, for the window
            msg.finished = True
            msg.last_seen = f.ts
            self._touch(key)
            return
        self._drop(key)

    def _expired(self, e: Expired) -> None:
        msg = self.messages.get((e.scope, e.queue_id))
        if msg is None or not msg.received or msg.finished:
            return
        open_rcpts = set(msg.deferrals) - set(msg.done)
        if msg.nrcpt:
            outstanding = max(msg.nrcpt - len(msg.done), 0)
        else:
            outstanding = max(len(open_rcpts), 1)
        names = sorted(open_rcpts)
        for i in range(outstanding):
            rcpt = names[i] if i < len(names) else f"#expired{i}"
            msg.done[rcpt] = Outcome.FAILED.value
            self._emit(msg, Outcome.FAILED, e.ts, rcpt.split("<", 1)[0], reason=_QUEUE_EXPIRED)
        self._touch((e.scope, e.queue_id))

    def _notice(self, n: Notice) -> None:
        msg = self._get((n.scope, n.new_id), n.ts)
        msg.system = True
        if not msg.parent:
            msg.parent = n.queue_id
        if msg.received and msg.account != SYSTEM and msg.origin is None:
            msg.account = SYSTEM

    def _tagged(self, t: Tagged) -> None:
        msg = self._get((t.scope, t.queue_id), t.ts)
        for tag in t.tags:
            if tag not in msg.tags:
                msg.tags.append(tag)

    def _rejected(self, r: Rejected) -> None:
        if r.temporary or r.stage != "RCPT":
            return
        account = REMOTE
        msg = self.messages.get((r.scope, r.queue_id)) if r.queue_id else None
        if r.local_user:
            account = self.policy.account_for_id(r.local_user)
        elif r.auth_id:
            account = self.policy.account_for_id(r.auth_id)
        elif msg is not None and (msg.auth_id or msg.uid is not None or msg.local_user):
            account = self._resolve(msg)
        domain = _domain(r.sender)
        host = host_of(r.scope)
        self._count(r.ts, account, domain, host, Outcome.REJECTED, 0, False)
        tags = msg.tags if msg is not None else []
        self._count_dims(
            r.ts, account, domain, host, Outcome.REJECTED, 0, tags, None, r.recipient or "", None
        )
        if self.events_since is None or r.ts >= self.events_since:
            self.events.append(
                Event(
                    r.ts,
                    self.mta,
                    r.scope,
                    r.queue_id or "",
                    account,
                    domain,
                    Outcome.REJECTED,
                    r.recipient or "",
                    detail=Detail(
                        sender=r.sender,
                        client_ip=r.client_ip,
                        auth=r.auth_id or r.local_user,
                        reason=r.reason,
                        tags=",".join(tags) or None,
                        message_id=msg.message_id if msg is not None else None,
                        client_host=msg.client_host if msg is not None else None,
                    ),
                )
            )

    def _emit(
        self,
        msg: Message,
        outcome: Outcome,
        ts: datetime,
        recipient: str,
        account: str | None = None,
        *,
        local: bool = False,
        relay: str | None = None,
        ledger: list[list[Any]] | None = None,
        delay: int | None = None,
        attempt: Attempt | None = None,
        reason: str | None = None,
    ) -> None:
        account = account or msg.account or UNKNOWN
        domain = msg.domain
        if domain is None:
            domain = msg.domain = _domain(msg.sender)
        host = host_of(msg.scope)
        self._count(ts, account, domain, host, outcome, msg.size, local)
        self._observe(outcome, msg.size, delay)
        if outcome is not Outcome.EXPIRED:
            self._count_dims(
                ts, account, domain, host, outcome, msg.size, msg.tags, msg.interface, recipient,
                relay,
            )  # fmt: skip
        detail = _detail(msg, attempt, reason)
        if detail.orig_recipient is not None and detail.orig_recipient == recipient:
            detail = detail._replace(orig_recipient=None)
        if ledger is not None or msg.tracked:
            entry: list[Any] = [
                outcome.value,
                ts.timestamp(),
                account,
                domain,
                msg.size,
                local,
                list(msg.tags),
                msg.interface,
                recipient,
                relay,
                msg.scope,
                msg.queue_id,
                delay,
                list(detail),
            ]
            if msg.tracked:
                msg.ledger.append(entry)
            if ledger is not None:
                ledger.append(list(entry))
        if self.events_since is None or ts >= self.events_since:
            self.events.append(
                Event(
                    ts,
                    self.mta,
                    msg.scope,
                    msg.queue_id,
                    account,
                    domain,
                    outcome,
                    recipient,
                    msg.size,
                    local,
                    detail,
                )
            )

    def _clock_of(self, ts: datetime) -> tuple[int, int]:
        """(epoch hour, epoch second) of ``ts``; consecutive outcomes share their time."""
        if ts is not self._hour_ts:
            epoch = int(ts.timestamp())
            self._hour_ts, self._hour, self._epoch = ts, epoch // 3600, epoch
        return self._hour, self._epoch

    def _count_dims(
        self,
        ts: datetime,
        account: str,
        domain: str,
        host: str,
        outcome: Outcome,
        size: int,
        tags: list[str],
        interface: str | None,
        recipient: str,
        relay: str | None,
        sign: int = 1,
    ) -> None:
        """Add one outcome to the per-dimension counters (tag, IP, recipient domain, provider)."""
        values: list[tuple[str, str]] = [("tag", t) for t in tags]
        if recipient:
            if self._recipient_rules:
                values += [
                    ("tag", t)
                    for t in self.policy.tags_for("recipient", recipient)
                    if t not in tags
                ]
            rdomain = _domain(recipient)
            if rdomain:
                values.append(("recipient_domain", rdomain))
                provider = self.policy.provider_for(rdomain, relay)
                if provider:
                    values.append(("provider", provider))
        if interface:
            values.append(("ip", interface))
        if not values:
            return
        hour, epoch = self._clock_of(ts)
        incoming = account == REMOTE
        dims = self.dims
        for kind, value in values:
            key = (hour, account, domain, kind, value, host)
            row = dims.get(key)
            if row is None:
                row = dims[key] = DimTally(first_at=epoch, last_at=epoch)
            if outcome is Outcome.DELIVERED:
                row.delivered += sign
                row.bytes += sign * size
            elif outcome is Outcome.DEFERRED:
                row.deferred += sign
            elif outcome is Outcome.FAILED:
                row.failed += sign
            elif outcome is Outcome.SEND:
                if incoming:
                    row.accepted_in += sign
                else:
                    row.accepted_out += sign
            elif outcome is Outcome.REJECTED:
                if incoming:
                    row.accepted_in += sign
                else:
                    row.accepted_out += sign
                row.failed += sign
                row.rejected += sign
            if sign > 0:
                row.first_at = min(row.first_at, epoch)
                row.last_at = max(row.last_at, epoch)

    def _observe(self, outcome: Outcome, size: int, delay: int | None, sign: int = 1) -> None:
        """Add one outcome to the histograms: an accepted message's size (when the log gave
        one), a delivered recipient's delay (when the log gave one).  Counted with the
        counters, so that a count taken back (a hop that was no delivery) is taken back
        here too."""
        if outcome is Outcome.SEND:
            metric, value = SIZE, size
            if value <= 0:
                return
        elif outcome is Outcome.DELIVERED and delay is not None:
            metric, value = DELAY, delay
        else:
            return
        key = (metric, bucket_bound(metric, value))
        h = self.histograms.get(key)
        if h is None:
            h = self.histograms[key] = [0, 0]
        h[0] += sign
        h[1] += sign * value

    def _count(
        self,
        ts: datetime,
        account: str,
        domain: str,
        host: str,
        outcome: Outcome,
        size: int,
        local: bool,
        sign: int = 1,
    ) -> None:
        """Add one outcome to the hourly counters of this batch (per syslog host)."""
        key = (self._clock_of(ts)[0], account, domain, host)
        row = self.counters.get(key)
        if row is None:
            row = self.counters[key] = Tally()
        if outcome is Outcome.DELIVERED:
            row.successes += sign
            row.bytes += sign * size
            if local:
                row.local_successes += sign
                row.local_bytes += sign * size
        elif outcome is Outcome.DEFERRED:
            row.defers += sign
        elif outcome is Outcome.FAILED:
            row.fails += sign
        elif outcome is Outcome.SEND:
            row.sends += sign
        elif outcome is Outcome.REJECTED:
            row.rejects += sign
        elif outcome is Outcome.EXPIRED:
            row.expired += sign


_EXPIRED_REASON = "no outcome logged within correlation.ttl: expired by logstats"


def _queue_id_of(origin: str | None) -> str | None:
    """The queue id of a message's ``origin`` ("scope queue_id")."""
    return origin.rpartition(" ")[2] or None if origin else None


def _detail(msg: Message, a: Attempt | None, reason: str | None) -> Detail:
    """What Track Delivery keeps of one outcome of ``msg`` (``a``: the attempt behind it)."""
    base = Detail(
        sender=msg.sender,
        message_id=msg.message_id,
        client_host=msg.client_host,
        client_ip=msg.client_ip,
        auth=msg.auth_id or msg.local_user,
        sent_at=msg.accepted_at.timestamp() if msg.accepted_at is not None else None,
        reason=reason,
        tags=",".join(msg.tags) or None,
        origin=_queue_id_of(msg.origin),
        parent=msg.parent,
    )
    if a is None:
        return base
    host = None if _is_local(a) or not a.relay else a.relay.partition("[")[0]
    return base._replace(
        orig_recipient=a.orig_recipient,
        reason=reason or a.reply,
        router=a.router,
        transport=a.transport,
        remote_host=host or None,
        remote_ip=a.remote_ip,
        dsn=a.dsn or _dsn_in(a.reply),
    )


_DSN = re.compile(r"(?<![\d.])([245]\.\d{1,3}\.\d{1,3})(?![\d.])")


def _dsn_in(reply: str | None) -> str | None:
    """The enhanced status code in a reply text (``550 5.1.1 <a@b>: no such user``)."""
    if not reply:
        return None
    m = _DSN.search(reply)
    return m.group(1) if m else None
_QUEUE_EXPIRED = "expired in the queue, returned to sender"  # Postfix qmgr status=expired
