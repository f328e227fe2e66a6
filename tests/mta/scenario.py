"""The logical scenario run against every MTA, and the ground truth computed from it.

The truth is computed from this script alone (what is submitted, as whom, to which
recipients, and how the sink answers each attempt: :func:`tests.mta.sink.answer_for` per
RCPT, :data:`tests.mta.sink.DATA_QUIRKS` for the end of the data, e.g. m5's first attempt
ends in a 421 disconnect that defers its recipients), never from an MTA log. The runner
checks the prediction against what the sink recorded it answered
(:attr:`Truth.sink_attempts` against :meth:`tests.mta.sink.Sink.attempts`). The one
exception is message *size* (TOTALSIZE): the script cannot know the exact byte count the
MTA logs (it adds Received:, Date:, ... headers), so :meth:`Truth.with_sizes` takes a
``key -> size`` map the runner reads from the MTA's own receipt record and cross-checks
against the bytes the next hop received (see runner.py).

The same scenario runs with or without a content filter (tests/mta/filter.py). The
filter changes no account's numbers: a message that passes it counts once (one send, for
the account that submitted it), its deliveries after re-injection count for that account,
its size stays the size of its first receipt, and the hand-over to the filter is not a
delivery. It only adds log lines (the hand-over per recipient, the re-injected receipt),
which :attr:`Truth.expected_lines` includes so the runner knows when the MTA is done.

Timeline (phases): phase 0 = submission with the MTA's immediate delivery attempt;
phase k >= 1 = forced queue run k (Exim ``-qff``, Postfix ``postqueue -f``). Before
phase k the sink starts accepting every ``later...`` address whose
``LATER_OK[address] == k``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from .sink import DROPPED, answer_for, data_quirk

HOSTNAME = "mx.logstats.test"
"""The MTAs' own host name (local domain; qualify domain of local submitters)."""
LOCAL_DOMAINS = frozenset({HOSTNAME, "local.test"})
PASSWORD = "s3cret-pw"
QUEUE_RUNS = 2
DOMAINS = {"alice.test": "alice", "bob.test": "bob"}
"""Domain -> account table given to logstats (config ``accounts.domains``)."""

COUNTERS = (
    "SENDCOUNT",
    "SUCCESSCOUNT",
    "DEFERCOUNT",
    "FAILCOUNT",
    "DEFERFAILCOUNT",
    "TOTALSIZE",
    "INPROGRESSCOUNT",
)


@dataclass(frozen=True)
class Submission:
    """One SMTP transaction or local sendmail call of the script."""

    key: str
    account: str
    how: Literal["auth", "local", "anon"]
    login: str | None
    """SASL login name (auth) or Unix user (local)."""
    sender: str
    recipients: tuple[str, ...]
    """All RCPTs in order, including the ones the MTA rejects at RCPT time."""
    rejected: tuple[str, ...] = ()
    subject: str = ""
    tags: tuple[str, ...] = ()
    """Values of the message's ``X-Tag:`` header (none: no header)."""

    @property
    def accepted(self) -> tuple[str, ...]:
        return tuple(r for r in self.recipients if r not in self.rejected)

    @property
    def message_id(self) -> str:
        return f"<{self.key}@scenario.logstats.test>"


SUBMISSIONS: tuple[Submission, ...] = (
    # alice authenticates as alice@alice.test (-> account via the domain table).
    # The sink answers m1's data after a pause (sink.DATA_QUIRKS: slow), m5's first
    # attempt with a 421 and hangs up (drop-once), m6's with a multi-line 250.
    Submission(
        "m1",
        "alice",
        "auth",
        "alice@alice.test",
        "alice@alice.test",
        ("ok-a1@remote.test", "ok-a2@remote.test", "lsuser2@local.test"),
        tags=("newsletter",),
    ),
    Submission(
        "m2",
        "alice",
        "auth",
        "alice@alice.test",
        "alice@alice.test",
        ("fail-a1@remote.test", "ok-a3@remote.test"),
        tags=("billing",),
    ),
    Submission(
        "m3", "alice", "auth", "alice@alice.test", "alice@alice.test", ("defer-a1@remote.test",)
    ),
    # bob authenticates with the bare user name "bob"
    Submission(
        "m4",
        "bob",
        "auth",
        "bob",
        "bob@bob.test",
        ("later-b1@remote.test", "ok-b1@remote.test"),
        tags=("newsletter", "promo"),
    ),
    Submission("m5", "bob", "auth", "bob", "bob@bob.test", ("ok-b2@remote.test",)),
    # lsuser1 submits locally with the MTA's sendmail
    Submission(
        "m6",
        "lsuser1",
        "local",
        "lsuser1",
        f"lsuser1@{HOSTNAME}",
        ("ok-u1@remote.test", "lsuser2@local.test"),
        tags=("billing",),
    ),
    Submission(
        "m7", "lsuser1", "local", "lsuser1", f"lsuser1@{HOSTNAME}", ("fail-u1@remote.test",)
    ),
    # unauthenticated SMTP client: local delivery is allowed, relaying is not
    Submission(
        "m8",
        "-remote-",
        "anon",
        None,
        "stranger@elsewhere.test",
        ("lsuser2@local.test",),
        tags=("newsletter",),
    ),
    Submission(
        "m9",
        "-remote-",
        "anon",
        None,
        "stranger@elsewhere.test",
        ("lsuser2@local.test", "relay-r1@remote.test"),
        rejected=("relay-r1@remote.test",),
    ),
    Submission(
        "m10",
        "-remote-",
        "anon",
        None,
        "stranger@elsewhere.test",
        ("nosuchuser@local.test",),
        rejected=("nosuchuser@local.test",),
    ),
    Submission(
        "m11", "lsuser1", "local", "lsuser1", f"lsuser1@{HOSTNAME}", ("later-u1@remote.test",)
    ),
    Submission(
        "m12",
        "bob",
        "auth",
        "bob",
        "bob@bob.test",
        ("defer-b2@remote.test", "fail-b3@remote.test"),
        tags=("promo",),
    ),
)

LATER_OK: dict[str, int] = {"later-u1@remote.test": 1, "later-b1@remote.test": 2}
"""``later...`` address -> first phase in which the sink answers 250."""


def is_local(address: str) -> bool:
    return address.rsplit("@", 1)[-1].lower() in LOCAL_DOMAINS


def outcome(address: str, phase: int) -> int:
    """RCPT answer to ``address`` in ``phase`` (local recipients: delivered)."""
    if is_local(address):
        return 250  # local users exist (lsuser1, lsuser2); unknown ones are rejected at RCPT
    now_ok = {a for a, k in LATER_OK.items() if k <= phase}
    return answer_for(address, now_ok)


def transaction_outcomes(
    key: str, remote: list[str], phase: int, dropped: set[str]
) -> dict[str, int]:
    """What the sink answers one SMTP transaction carrying ``remote`` (all of a message's
    pending remote recipients: both MTAs send them in one transaction to the one relay).

    Per recipient the RCPT code; when at least one RCPT was accepted and the message's
    data is answered with a 421 (first attempt of a ``drop-once`` message, remembered in
    ``dropped``), every accepted recipient is deferred (:data:`DROPPED`).
    """
    codes = {rcpt: outcome(rcpt, phase) for rcpt in remote}
    accepted = any(c == 250 for c in codes.values())
    if accepted and data_quirk(key) == "drop-once" and key not in dropped:
        dropped.add(key)
        codes = {r: DROPPED if c == 250 else c for r, c in codes.items()}
    return codes


@dataclass
class Message:
    """A message the MTA accepted (scripted, or a bounce the MTA generates)."""

    key: str
    account: str
    sender: str
    pending: list[str]
    delivered: int = 0
    deferrals: int = 0
    bounce_of: str | None = None
    tags: tuple[str, ...] = ()


@dataclass
class Truth:
    """Per-account counters (without sizes) plus what is needed to add sizes."""

    counts: dict[str, Counter[str]]
    messages: dict[str, Message]
    expected_lines: list[Counter[str]]
    """Per phase: cumulative number of delivery-outcome log lines per recipient address
    (with a content filter: the hand-over to the filter included)."""
    rejected_rcpts: int
    sink_attempts: dict[str, list[int]] = field(default_factory=dict)
    """Remote recipient -> the sink's answer at each attempt (250, 451, 550, or
    :data:`tests.mta.sink.DROPPED` for a 421 after the data), in order."""
    filter_passes: dict[str, int] = field(default_factory=dict)
    """Message key -> times it passes the content filter (no filter: empty)."""
    bounces: dict[str, str] = field(default_factory=dict)
    """bounce key -> key of the message it reports on."""
    tags: dict[str, dict[str, int]] = field(default_factory=dict)
    """tag -> {messages, deliveries, deferred, failed}: accepted messages carrying the tag
    (``X-Tag:``, comma-separated values), their recipients delivered, deferral events and
    recipients failed. RCPT-time rejects happen before the headers: never tagged."""
    recipient_domains: dict[str, dict[str, int]] = field(default_factory=dict)
    """recipient domain -> {delivered, deferred, failed, rejected}: outcome events per
    recipient (bounces included); ``failed`` includes the RCPT-time ``rejected``."""
    sender_domains: dict[str, dict[str, int]] = field(default_factory=dict)
    """envelope sender domain ("" for bounces) -> {messages, delivered, deferred, failed,
    rejected}: as for recipient domains, plus the accepted messages."""

    def with_sizes(self, sizes: dict[str, int]) -> dict[str, dict[str, int]]:
        """Final truth ``{account: {COUNTER: int}}``; TOTALSIZE = sum(size x deliveries)."""
        out: dict[str, dict[str, int]] = {}
        for account, counter in self.counts.items():
            row = {name: int(counter.get(name, 0)) for name in COUNTERS}
            row["TOTALSIZE"] = sum(
                sizes[m.key] * m.delivered
                for m in self.messages.values()
                if m.account == account and m.delivered
            )
            row["DEFERFAILCOUNT"] = row["DEFERCOUNT"] + row["FAILCOUNT"]
            out[account] = row
        return dict(sorted(out.items()))


def simulate(
    submissions: tuple[Submission, ...] = SUBMISSIONS,
    queue_runs: int = QUEUE_RUNS,
    *,
    filtered: bool = False,
    filter_bounces: bool = False,
) -> Truth:
    """Play the script and count, per account, what the contract says must be counted.

    Rules: SENDCOUNT +1 per accepted message and +1 per RCPT rejected at SMTP time
    (the latter always ``-remote-`` here: only unauthenticated clients get rejects);
    each attempt per recipient is one success (250), deferral (451, or 421 after the
    data) or failure (550); a message with failures in an attempt makes the MTA send one
    bounce (account ``-system-``) to the sender, delivered in the same phase; a message
    with deferred recipients after the last queue run is in progress.

    ``filtered``: every message first passes a content filter and is re-injected
    (bounces too when ``filter_bounces``: Exim routes its own bounces through the filter,
    Postfix's bounce daemon does not use content_filter). The counters are the same;
    only :attr:`Truth.expected_lines` gets one hand-over line per recipient and
    :attr:`Truth.filter_passes` one pass per message.
    """
    counts: dict[str, Counter[str]] = {}
    messages: dict[str, Message] = {}
    lines: Counter[str] = Counter()
    expected: list[Counter[str]] = []
    bounces: dict[str, str] = {}
    sink_attempts: dict[str, list[int]] = {}
    passes: dict[str, int] = {}
    dropped: set[str] = set()
    rejected = 0

    tags: dict[str, Counter[str]] = {}
    rdomains: dict[str, Counter[str]] = {}
    sdomains: dict[str, Counter[str]] = {}

    def acc(name: str) -> Counter[str]:
        return counts.setdefault(name, Counter())

    def dims(msg: Message | Submission, rcpt: str | None, what: str) -> None:
        """One event (messages/delivered/deferred/failed/rejected) in every dimension."""
        tag_names = msg.tags if what != "rejected" else ()
        for tag in tag_names:
            tags.setdefault(tag, Counter())[TAG_FIELDS.get(what, what)] += 1
        sdom = domain_of(msg.sender)
        kinds = ("failed", "rejected") if what == "rejected" else (what,)
        for kind in kinds:
            sdomains.setdefault(sdom, Counter())[kind] += 1
            if rcpt is not None:
                rdomains.setdefault(domain_of(rcpt), Counter())[kind] += 1

    def accepted(msg: Message, through_filter: bool) -> None:
        """The MTA queued ``msg``; with a filter it is handed over (one line per
        recipient, always 250) and re-injected before any delivery attempt."""
        messages[msg.key] = msg
        acc(msg.account)["SENDCOUNT"] += 1
        dims(msg, None, "messages")
        if through_filter:
            passes[msg.key] = passes.get(msg.key, 0) + 1
            for rcpt in msg.pending:
                lines[rcpt] += 1

    def attempt(msg: Message, phase: int, new: list[Message]) -> None:
        remote = [r for r in msg.pending if not is_local(r)]
        codes = transaction_outcomes(msg.key, remote, phase, dropped)
        for rcpt in remote:
            sink_attempts.setdefault(rcpt.lower(), []).append(codes[rcpt])
        still: list[str] = []
        failed = 0
        for rcpt in msg.pending:
            lines[rcpt] += 1
            code = codes.get(rcpt, 250)
            if code == 250:
                acc(msg.account)["SUCCESSCOUNT"] += 1
                msg.delivered += 1
                dims(msg, rcpt, "delivered")
            elif code in (451, DROPPED):
                acc(msg.account)["DEFERCOUNT"] += 1
                msg.deferrals += 1
                still.append(rcpt)
                dims(msg, rcpt, "deferred")
            else:
                acc(msg.account)["FAILCOUNT"] += 1
                failed += 1
                dims(msg, rcpt, "failed")
        msg.pending = still
        if failed and msg.sender:
            bkey = f"bounce-{msg.key}-{phase}"
            bounces[bkey] = msg.key
            bounce = Message(bkey, "-system-", "", [msg.sender], bounce_of=msg.key)
            accepted(bounce, filtered and filter_bounces)
            new.append(bounce)

    for phase in range(queue_runs + 1):
        todo: list[Message] = []
        if phase == 0:
            for sub in submissions:
                for rcpt in sub.rejected:
                    acc(sub.account if sub.how != "anon" else "-remote-")["SENDCOUNT"] += 1
                    acc(sub.account if sub.how != "anon" else "-remote-")["FAILCOUNT"] += 1
                    dims(sub, rcpt, "rejected")
                    rejected += 1
                if sub.accepted:
                    msg = Message(
                        sub.key, sub.account, sub.sender, list(sub.accepted), tags=sub.tags
                    )
                    accepted(msg, filtered)
                    todo.append(msg)
        else:
            todo = [m for m in messages.values() if m.pending]
        while todo:
            new: list[Message] = []
            for msg in todo:
                attempt(msg, phase, new)
            todo = new
        expected.append(Counter(lines))

    for msg in messages.values():
        if msg.pending:
            acc(msg.account)["INPROGRESSCOUNT"] += 1
    return Truth(
        counts,
        messages,
        expected,
        rejected,
        sink_attempts=sink_attempts,
        filter_passes=passes,
        bounces=bounces,
        tags=_table(tags, TAG_COLUMNS),
        recipient_domains=_table(rdomains, ("delivered", "deferred", "failed", "rejected")),
        sender_domains=_table(
            sdomains, ("messages", "delivered", "deferred", "failed", "rejected")
        ),
    )


TAG_FIELDS = {"delivered": "deliveries"}
TAG_COLUMNS = ("messages", "deliveries", "deferred", "failed")


def domain_of(address: str) -> str:
    return address.rsplit("@", 1)[1].lower() if "@" in address else ""


def _table(rows: dict[str, Counter[str]], columns: tuple[str, ...]) -> dict[str, dict[str, int]]:
    return {key: {c: int(rows[key][c]) for c in columns} for key in sorted(rows)}
