"""Join the lines of one message by queue id and attribute each outcome to an account.

The sender, size and identity are on the receipt line(s); outcomes come later with the same
queue id.  Queue ids are unique only per MTA instance, so messages are keyed by
``(scope, queue_id)``.  The state of every message still in flight is a ``Message`` that
the store persists together with the counters, so a later run continues where this one
stopped.

Rules (the counting contract, cPanel's EmailTrack semantics):

* a message is counted as sent once, when its receipt is complete (Exim ``<=``, Postfix's
  first qmgr ``from=``); a message that continues another one (a content-filter
  re-injection or a ``queued as`` hand-off to a configured filter hop) is not a new send;
* every delivered recipient is one success (Exim ``=>``/``->``/``>>``, Postfix
  ``status=sent`` except hand-offs to a filter hop), counted once per recipient;
* every deferral is one defer event; every failed recipient one failure; an expired or
  cancelled message fails each recipient still outstanding;
* a permanent SMTP-time RCPT reject is one send and one failure (of ``-remote-`` unless the
  line, or the queue id it carries, identifies an account);
* outcomes seen before their receipt (Exim ``>>`` cut-through) wait for it; if it never
  comes within ``orphan_ttl`` they are counted for ``-unknown-``.

This module is pure: no IO, no clock, no logging.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

from logstats.model import (
    REMOTE,
    SYSTEM,
    UNKNOWN,
    Attempt,
    Event,
    Expired,
    Finished,
    Message,
    Notice,
    Outcome,
    Received,
    Record,
    Rejected,
    Tagged,
)

Key = tuple[str, str]  # (scope, queue_id)
HANDOFF_SCOPE = "*"  # placeholder messages announced by a "queued as" hand-off


@dataclass(frozen=True, slots=True)
class Policy:
    """How messages are attributed to accounts and which hops are not deliveries."""

    domains: Mapping[str, str] = field(default_factory=dict)  # domain -> account
    uid_name: Callable[[int], str | None] = lambda uid: None
    sender_domain_fallback: bool = False
    filter_relays: tuple[str, ...] = ("127.0.0.1", "[::1]", "::1", "localhost")
    ttl: timedelta = timedelta(days=7)
    orphan_ttl: timedelta = timedelta(hours=1)
    # provider name -> recipient-domain or MX-host patterns (fnmatch, lower case)
    providers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # (tag, "sender" | "recipient", fnmatch pattern on the address, lower case)
    tag_rules: tuple[tuple[str, str, str], ...] = ()

    def provider_for(self, domain: str, relay: str | None) -> str | None:
        """The provider a recipient domain (or the MX host it was delivered to) belongs to."""
        host = (relay or "").split("[", 1)[0].lower()
        for name, patterns in self.providers.items():
            for pattern in patterns:
                if fnmatchcase(domain, pattern) or (host and fnmatchcase(host, pattern)):
                    return name
        return None

    def tags_for(self, kind: str, address: str) -> list[str]:
        addr = address.lower()
        return [
            tag for tag, k, pattern in self.tag_rules if k == kind and fnmatchcase(addr, pattern)
        ]

    def account_for_id(self, ident: str) -> str:
        """An authenticated or local identity -> account (an address maps by its domain)."""
        if "@" in ident:
            domain = ident.rsplit("@", 1)[1].lower()
            return self.domains.get(domain, domain)
        return ident

    def is_filter_hop(self, relay: str | None) -> bool:
        if not relay:
            return False
        host = relay.split("[", 1)[1].split("]", 1)[0] if "[" in relay else relay
        name = relay.split("[", 1)[0]
        for hop in self.filter_relays:
            if hop in (relay, host, name, f"[{host}]") or relay.startswith(hop + ":"):
                return True
        return False


_COLUMN = {
    Outcome.SEND: 0,
    Outcome.DELIVERED: 1,
    Outcome.DEFERRED: 2,
    Outcome.FAILED: 3,
    Outcome.REJECTED: 5,
    Outcome.EXPIRED: 6,
}
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


def _domain(addr: str | None) -> str:
    if not addr or "@" not in addr:
        return ""
    return addr.rsplit("@", 1)[1].lower()


@dataclass(frozen=True, slots=True)
class Drained:
    """What a batch hands to the store."""

    counters: dict[tuple[int, str, str], list[int]]
    dims: dict[tuple[int, str, str, str, str], list[int]]
    events: list[Event]
    upsert: list[Message]
    dropped: set[Key]


class Correlator:
    """State machine over records of one MTA; produces ``Event``s."""

    def __init__(
        self, mta: str, policy: Policy, messages: Mapping[Key, Message] | None = None
    ) -> None:
        self.mta = mta
        self.policy = policy
        self.messages: dict[Key, Message] = dict(messages or {})
        self.events: list[Event] = []
        self.dirty: set[Key] = set()
        self.dropped: set[Key] = set()
        self.expired_messages = 0
        self.last_ts: datetime | None = None
        # hourly counter deltas since the last drain: (epoch hour, account, sender domain)
        # -> sends, successes, defers, fails, bytes, rejects, expired, local successes, bytes
        self.counters: dict[tuple[int, str, str], list[int]] = {}
        self.events_since: datetime | None = None  # keep Event rows only from here on
        # (epoch hour, account, sender domain, dimension, value) -> accepted out, accepted in,
        # delivered, deferred, failed, rejected, bytes, first epoch, last epoch
        self.dims: dict[tuple[int, str, str, str, str], list[int]] = {}
        self._hour_ts: datetime | None = None
        self._hour = 0
        self._handoffs = sum(1 for k in self.messages if k[0] == HANDOFF_SCOPE)
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
    def feed(self, record: Record) -> None:
        self.last_ts = record.ts
        self._handlers[type(record)](record)

    def drain(self) -> Drained:
        """Counters and events since the last drain, messages to persist, keys to delete."""
        counters, self.counters = self.counters, {}
        dims, self.dims = self.dims, {}
        events, self.events = self.events, []
        upsert = [self.messages[k] for k in self.dirty if k in self.messages]
        dropped = self.dropped - self.dirty.intersection(self.messages)
        self.dirty, self.dropped = set(), set()
        return Drained(counters, dims, events, upsert, dropped)

    def expire(self, now: datetime) -> int:
        """Forget messages idle for longer than the TTL; count their waiting outcomes."""
        count = 0
        for key, msg in list(self.messages.items()):
            if msg.orphans and now - msg.last_seen > self.policy.orphan_ttl:
                self._flush_orphans(msg, UNKNOWN)
                self._touch(key)
            if now - msg.last_seen > self.policy.ttl:
                if msg.received:
                    self._emit(msg, Outcome.EXPIRED, now, "")
                    count += 1
                self._drop(key)
        self.expired_messages += count
        return count

    # -- record handlers ---------------------------------------------------------------------
    def _get(self, key: Key, ts: datetime) -> Message:
        msg = self.messages.get(key)
        if msg is None:
            msg = Message(scope=key[0], queue_id=key[1], first_seen=ts, last_seen=ts)
            handoff = self.messages.pop((HANDOFF_SCOPE, key[1]), None) if self._handoffs else None
            if handoff is not None:
                self._handoffs -= 1
                if handoff.message_id and self.messages.pop(
                    (HANDOFF_SCOPE, "<" + handoff.message_id), None
                ):
                    self._handoffs -= 1
                    self.dropped.add((HANDOFF_SCOPE, "<" + handoff.message_id))
                self.dropped.add((HANDOFF_SCOPE, key[1]))
                msg.origin = handoff.origin
                msg.account = handoff.account
                msg.sender = handoff.sender
                msg.system = handoff.system
                msg.accepted_at = handoff.accepted_at
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

    def _received(self, r: Received) -> None:
        msg = self._get((r.scope, r.queue_id), r.ts)
        if r.sender is not None and (
            msg.sender is None or ("@" not in msg.sender and "@" in r.sender)
        ):
            msg.sender = r.sender  # pickup's unqualified from=<user>, then qmgr's address
            msg.domain = None
        if r.size is not None and (msg.size == 0 or r.complete):
            msg.size = r.size
        if r.nrcpt is not None:
            msg.nrcpt = r.nrcpt
        if r.auth_id and not msg.auth_id:
            msg.auth_id = r.auth_id
        if r.local_user and not msg.local_user:
            msg.local_user = r.local_user
        if r.uid is not None:
            msg.uid = r.uid
        if r.client_ip and not msg.client_ip:
            msg.client_ip = r.client_ip
        if r.message_id and not msg.message_id:
            msg.message_id = r.message_id
        if r.parent_id or (r.local_user == "mailnull" and r.sender == ""):
            msg.system = True
        if not r.complete or msg.received:
            return
        msg.received = True
        if msg.origin is None and msg.message_id and self._handoffs:
            self._link_by_message_id(msg)
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

    def _link_by_message_id(self, msg: Message) -> None:
        """A message re-injected by a filter on this host continues the original one."""
        if not self.policy.is_filter_hop(msg.client_ip):
            return
        key = (HANDOFF_SCOPE, "<" + str(msg.message_id))
        hop = self.messages.pop(key, None)
        if hop is None:
            return
        self._handoffs -= 1
        self.dropped.add(key)
        msg.origin, msg.account, msg.system = hop.origin, hop.account, hop.system
        msg.accepted_at = hop.accepted_at
        other = (HANDOFF_SCOPE, hop.queue_id)  # the same hop, announced by queue id
        if self.messages.pop(other, None) is not None:
            self._handoffs -= 1
            self.dropped.add(other)

    def _resolve(self, msg: Message) -> str:
        p = self.policy
        if msg.system or (
            msg.sender == ""
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
            return p.uid_name(msg.uid) or f"uid:{msg.uid}"
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
            self._emit(msg, Outcome.DEFERRED, a.ts, _address(a), account, relay=a.relay)
            return
        if rcpt in msg.done:
            return  # a replayed line, or a duplicate the MTA logged twice
        msg.done[rcpt] = a.outcome.value
        if (
            a.outcome is Outcome.DELIVERED
            and a.handoff_id
            and (self.policy.is_filter_hop(a.relay) or (a.reply or "").startswith("forwarded as"))
        ):
            hop = Message(
                scope=HANDOFF_SCOPE,
                queue_id=a.handoff_id,
                first_seen=a.ts,
                last_seen=a.ts,
                origin=f"{msg.scope} {msg.queue_id}",
                account=account,
                sender=msg.sender,
                system=msg.system,
                accepted_at=msg.accepted_at,
                message_id=msg.message_id,
            )
            self.messages[(HANDOFF_SCOPE, a.handoff_id)] = hop
            self._handoffs += 1
            self.dirty.add((HANDOFF_SCOPE, a.handoff_id))
            if msg.message_id:  # a filter that re-injects under its own id (Exim + amavis)
                mid = (HANDOFF_SCOPE, "<" + msg.message_id)
                self.messages[mid] = hop
                self._handoffs += 1
                self.dirty.add(mid)
            return
        if a.interface and not msg.interface:
            msg.interface = a.interface
        self._emit(msg, a.outcome, a.ts, _address(a), account, local=_is_local(a), relay=a.relay)

    def _flush_orphans(self, msg: Message, account: str | None) -> None:
        orphans, msg.orphans = msg.orphans, []
        for a in orphans:
            self._count_attempt(msg, a, account or UNKNOWN)

    def _finished(self, f: Finished) -> None:
        key = (f.scope, f.queue_id)
        msg = self.messages.get(key)
        if msg is None:
            return
        if msg.orphans:
            self._flush_orphans(msg, msg.account if msg.received else UNKNOWN)
        self._drop(key)

    def _expired(self, e: Expired) -> None:
        msg = self.messages.get((e.scope, e.queue_id))
        if msg is None or not msg.received:
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
            self._emit(msg, Outcome.FAILED, e.ts, rcpt.split("<", 1)[0])
        self._touch((e.scope, e.queue_id))

    def _notice(self, n: Notice) -> None:
        msg = self._get((n.scope, n.new_id), n.ts)
        msg.system = True
        if msg.received and msg.account != SYSTEM:
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
        self._count(r.ts, account, domain, Outcome.REJECTED, 0, False)
        tags = msg.tags if msg is not None else []
        self._count_dims(
            r.ts, account, domain, Outcome.REJECTED, 0, tags, None, r.recipient or "", None
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
    ) -> None:
        account = account or msg.account or UNKNOWN
        domain = msg.domain
        if domain is None:
            domain = msg.domain = _domain(msg.sender)
        self._count(ts, account, domain, outcome, msg.size, local)
        if outcome is not Outcome.EXPIRED:
            self._count_dims(
                ts, account, domain, outcome, msg.size, msg.tags, msg.interface, recipient, relay
            )
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
                )
            )

    def _count_dims(
        self,
        ts: datetime,
        account: str,
        domain: str,
        outcome: Outcome,
        size: int,
        tags: list[str],
        interface: str | None,
        recipient: str,
        relay: str | None,
    ) -> None:
        """Add one outcome to the per-dimension counters (tag, IP, recipient domain, provider)."""
        values: list[tuple[str, str]] = [("tag", t) for t in tags]
        if recipient:
            rdomain = _domain(recipient)
            values += [
                ("tag", t) for t in self.policy.tags_for("recipient", recipient) if t not in tags
            ]
            if rdomain:
                values.append(("recipient_domain", rdomain))
                provider = self.policy.provider_for(rdomain, relay)
                if provider:
                    values.append(("provider", provider))
        if interface:
            values.append(("ip", interface))
        if not values:
            return
        if ts is not self._hour_ts:
            self._hour_ts, self._hour = ts, int(ts.timestamp()) // 3600
        epoch = int(ts.timestamp())
        incoming = account == REMOTE
        for kind, value in values:
            key = (self._hour, account, domain, kind, value)
            row = self.dims.get(key)
            if row is None:
                row = self.dims[key] = [0, 0, 0, 0, 0, 0, 0, epoch, epoch]
            if outcome is Outcome.SEND or outcome is Outcome.REJECTED:
                row[1 if incoming else 0] += 1
            if outcome is Outcome.DELIVERED:
                row[2] += 1
                row[6] += size
            elif outcome is Outcome.DEFERRED:
                row[3] += 1
            elif outcome is Outcome.FAILED or outcome is Outcome.REJECTED:
                row[4] += 1
                if outcome is Outcome.REJECTED:
                    row[5] += 1
            row[7] = min(row[7], epoch)
            row[8] = max(row[8], epoch)

    def _count(
        self, ts: datetime, account: str, domain: str, outcome: Outcome, size: int, local: bool
    ) -> None:
        """Add one outcome to the hourly counters of this batch."""
        if ts is not self._hour_ts:
            self._hour_ts, self._hour = ts, int(ts.timestamp()) // 3600
        key = (self._hour, account, domain)
        row = self.counters.get(key)
        if row is None:
            row = self.counters[key] = [0] * 9
        row[_COLUMN[outcome]] += 1
        if outcome is Outcome.DELIVERED:
            row[4] += size
            if local:
                row[7] += 1
                row[8] += size
