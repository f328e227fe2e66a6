#!/usr/bin/env python3
# Log-line templates are long f-strings; splitting them would hide the line shapes.
# ruff: noqa: E501
"""Deterministic generator of large, realistic Exim mainlog and Postfix syslog files.

    python bench/genlog.py --mta exim|postfix --lines N --out FILE [--seed S] [--rate R]

The log is produced by a small discrete-event simulation of one shared mail host: messages
arrive (a Poisson process with a day/night curve), are received over SMTP submission,
by local pickup or from remote MTAs, are delivered, deferred and retried, fail and bounce,
and finish; connection noise, SMTP-time rejects, authentication failures and (Postfix)
dovecot lines are interleaved.  Many messages are in flight at once, time only moves
forward, and every line is written by exactly one simulation step, so the file stops after
exactly N lines and the ground truth (``FILE.truth.json``) counts exactly what is in it.

Accounts (what the truth is keyed by) are cPanel-style users: each owns one or more of the
host's domains (``FILE.userdomains``, in ``/etc/userdomains`` form, says which) and has a uid
(``local_users`` in the truth).  A message belongs to:

* the owner of the domain of its SMTP AUTH id (Exim ``A=authenticator:user@dom``, Postfix
  ``sasl_username=user@dom``);
* the local user that submitted it (Exim ``U=name P=local``, Postfix ``pickup uid=N``);
* ``-remote-``: mail received from other hosts without authentication;
* ``-system-``: bounces the MTA generated itself (Exim ``<= <> R=parent``, Postfix
  ``bounce: QID: sender non-delivery notification: NEW``).

``FILE.logstats.yaml`` is a logstats configuration that says the same (userdomains, uids,
UTC).

Counters per account (every outcome of a message counts for the message's account):
``sends`` (accepted messages: Exim ``<=``, Postfix the first qmgr ``from=`` line; a
retry's repeated qmgr line is not a send), ``deliveries`` (recipients delivered: ``=>`` /
``->``, ``status=sent``), ``deferrals`` (deferral events: ``==``, ``status=deferred``),
``failures`` (recipients failed for good: ``**``, ``status=bounced``, and each outstanding
recipient of a Postfix ``status=expired`` message, also counted apart as ``expired``),
``bytes_delivered`` (message size per delivered recipient), ``bytes_sent`` (size per
accepted message), ``in_progress`` (accepted, not ``Completed`` / ``removed`` by the end
of the file), ``rejects`` (permanent SMTP-time RCPT rejects; not in sends or failures:
cPanel counts each as one send and one failure) and ``temp_rejects`` (4xx / "temporarily
rejected", which cPanel does not count).  ``peer_expected`` holds what eximstats or
pflogsumm must report on the same file.

The generator is not benchmarked, but it is meant to be quick: about 2-4 s per million
lines.  Only the standard library is used.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import sys
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
START = 1709510400  # 2024-03-04 00:00:00 UTC, a Monday
LIFETIME = 86400.0  # give up on a dead destination after a day (retry rule / queue lifetime)
HOST = "srv1.hostingco.net"
HOST_IP = "192.0.2.10"
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

# indexes into a truth row
SENDS, DELIV, DEFER, FAIL, BYTES_D, BYTES_S, REJ, TEMP_REJ, EXPIRED = range(9)
FIELDS = (
    "sends",
    "deliveries",
    "deferrals",
    "failures",
    "bytes_delivered",
    "bytes_sent",
    "rejects",
    "temp_rejects",
    "expired",
)

Step = Generator[float, None, None]


def b62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(B62[r])
    return "".join(reversed(out))


def fmt_delay(x: float) -> str:
    """Postfix's way of printing delays: two significant digits below 10 s."""
    if x < 0.01:
        return "0"
    if x < 10:
        return f"{x:.2g}"
    return f"{x:.0f}"


def words(text: str) -> list[str]:
    return text.split()


# ----------------------------------------------------------------------------------------
# The world: domains, accounts, remote peers.  Built once from the seed.
# ----------------------------------------------------------------------------------------

WORDS_A = words(
    "blue green red silver golden north south east west sunny rocky happy quick bright "
    "old new little big royal urban rural coastal alpine prairie maple cedar oak pine "
    "river lake harbor valley summit meadow stone iron copper crystal"
)
WORDS_B = words(
    "harbor bakery studio garage dental clinic design media legal consult travel tours "
    "farm florist books coffee print photo fitness yoga music school church club works "
    "labs systems partners group shop market home realty builders plumbing electric"
)
TLDS = ("com", "com", "com", "net", "org", "co.uk", "de", "fr", "nl", "io", "biz", "ca")
FIRST = words(
    "info admin sales office contact support billing hello team jobs noreply news anna "
    "ben carla david emma frank grace henry irene jack karen leo maria nick olga paul "
    "rachel sam tina victor wendy alex chris dana eric fiona george helen ivan julia "
    "kevin laura mike nina oscar peter rosa steve tom ursula vera will"
)
LAST = words("smith jones miller brown wilson moore taylor clark hall young king wright lopez")

PROVIDERS = (
    # domain, weight, mx, ip prefix, 250 reply
    (
        "gmail.com",
        30,
        "gmail-smtp-in.l.google.com",
        "142.250.153.",
        "250 2.0.0 OK  {n} {t}.{u} - gsmtp",
    ),
    (
        "outlook.com",
        7,
        "outlook-com.olc.protection.outlook.com",
        "52.101.68.",
        "250 2.6.0 <{t}@{h}> [InternalId={n}] Queued mail for delivery",
    ),
    (
        "hotmail.com",
        6,
        "hotmail-com.olc.protection.outlook.com",
        "52.101.8.",
        "250 2.6.0 <{t}@{h}> [InternalId={n}] Queued mail for delivery",
    ),
    ("yahoo.com", 6, "mta7.am0.yahoodns.net", "67.195.204.", "250 ok dirdel"),
    ("icloud.com", 4, "mx01.mail.icloud.com", "17.57.156.", "250 2.0.0 Ok: queued as {u}"),
    (
        "gmx.de",
        3,
        "mx00.emig.gmx.net",
        "212.227.15.",
        "250 Requested mail action okay, completed: id={u}",
    ),
    (
        "web.de",
        2,
        "mx-ha03.web.de",
        "212.227.17.",
        "250 Requested mail action okay, completed: id={u}",
    ),
    ("t-online.de", 2, "mx00.t-online.de", "194.25.134.", "250 2.0.0 Message accepted"),
    ("orange.fr", 2, "smtp-in.orange.fr", "80.12.242.", "250 2.0.0 {u} mail accepted for delivery"),
    ("aol.com", 1, "mx-aol.mail.gm0.yahoodns.net", "67.195.228.", "250 ok dirdel"),
)
GENERIC_250 = (
    "250 2.0.0 Ok: queued as {u}",
    "250 OK id={t}",
    "250 2.0.0 {u} Message accepted for delivery",
)


class Rcpt:
    __slots__ = ("addr", "defers", "final", "host", "kind", "mx", "reply", "tries")

    def __init__(self, addr: str, kind: int, host: tuple, defers: int, final: str) -> None:
        self.addr = addr
        self.kind = kind  # 0 remote, 1 virtual mailbox here, 2 local user here
        self.host = host  # (domain, mx, ip, reply template) for remote
        self.defers = defers  # deferrals before the final outcome
        self.final = final  # "D" delivered, "F" failed, "U" unrouteable, "X" dead host
        self.tries = 0
        self.mx = ""
        self.reply = ""


class Msg:
    __slots__ = (
        "account",
        "client",
        "id",
        "ident",
        "kind",
        "legacy",
        "open",
        "parent",
        "rcpts",
        "sender",
        "size",
        "t0",
    )

    def __init__(self) -> None:
        self.open = False
        self.legacy = True
        self.parent = ""


class World:
    """Domains, accounts and remote peers, all drawn from the seed."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        doms: list[str] = []
        seen = set()
        while len(doms) < 420:
            d = f"{rng.choice(WORDS_A)}{rng.choice(('', '-'))}{rng.choice(WORDS_B)}.{rng.choice(TLDS)}"
            if d not in seen:
                seen.add(d)
                doms.append(d)
        self.our_domains = doms
        self.our_set = set(doms)
        dom_w = [1.0 / (i + 1) ** 0.9 for i in range(len(doms))]

        # SASL accounts: a few send thousands of messages, most a handful (Zipf, s ~ 1.05).
        accts: list[str] = []
        aset = set()
        while len(accts) < 3000:
            d = rng.choices(doms, dom_w)[0]
            r = rng.random()
            if r < 0.45:
                lp = rng.choice(FIRST)
            elif r < 0.8:
                lp = f"{rng.choice(FIRST)}.{rng.choice(LAST)}"
            else:
                lp = f"{rng.choice(FIRST)}{rng.randrange(1, 99)}"
            a = f"{lp}@{d}"
            if a not in aset:
                aset.add(a)
                accts.append(a)
        self.sasl = accts
        self.sasl_cum = self._cum([1.0 / (i + 1) ** 1.05 for i in range(len(accts))])
        # mailboxes that receive (inbound) follow a flatter curve
        self.mbox_cum = self._cum([1.0 / (i + 1) ** 0.8 for i in range(len(accts))])
        self.mbox_order = accts[:]
        rng.shuffle(self.mbox_order)

        # cPanel users own the domains (one to several each); the name comes from the
        # first domain (8 letters), uid 1001 on.  Every account is one of these users.
        users: list[tuple[str, int, str]] = [("root", 0, HOST)]
        useen = {"root"}
        owner: dict[str, str] = {}
        for d in doms:
            if len(users) > 1 and rng.random() < 0.55:
                owner[d] = rng.choice(users[1:])[0]
                continue
            name = d.replace("-", "").split(".")[0][:8]
            while name in useen:
                name = name[:7] + rng.choice("abcdefghijklmnopqrstuvwxyz")
            useen.add(name)
            users.append((name, 1000 + len(users), d))
            owner[d] = name
        self.owner = owner
        self.local_users = users
        self.local_cum = self._cum([5.0] + [1.0 / (i + 1) ** 1.1 for i in range(len(users) - 1)])

        # remote domains: big providers plus a long tail of company domains
        tail = []
        tseen = set(doms)
        while len(tail) < 6000:
            d = f"{rng.choice(WORDS_B)}{rng.choice(WORDS_A)}{rng.randrange(1, 999)}.{rng.choice(TLDS)}"
            if d not in tseen:
                tseen.add(d)
                tail.append(d)
        self.remote_hosts: list[tuple[str, str, str, str]] = []
        weights: list[float] = []
        for dom, w, mx, pfx, reply in PROVIDERS:
            self.remote_hosts.append((dom, mx, pfx, reply))
            weights.append(w)
        tail_w = 36.0 / sum(1.0 / (i + 1) ** 0.7 for i in range(len(tail)))
        for i, d in enumerate(tail):
            ip = f"{rng.randrange(5, 223)}.{rng.randrange(256)}.{rng.randrange(256)}."
            mx = rng.choice(("mx", "mail", "mx1", "smtp", "mx01", "in1.smtp")) + "." + d
            self.remote_hosts.append((d, mx, ip, rng.choice(GENERIC_250)))
            weights.append(tail_w / (i + 1) ** 0.7)
        self.remote_cum = self._cum(weights)
        # remote senders (inbound mail): addresses at remote domains, Zipf
        senders = []
        for _ in range(20000):
            h = rng.choices(self.remote_hosts, cum_weights=self.remote_cum)[0]
            lp = (
                rng.choice(FIRST)
                if rng.random() < 0.5
                else f"{rng.choice(FIRST)}.{rng.choice(LAST)}"
            )
            senders.append((f"{lp}@{h[0]}", h))
        self.remote_senders = senders
        self.rsend_cum = self._cum([1.0 / (i + 1) ** 0.9 for i in range(len(senders))])
        self.remote_names = [f"{rng.choice(FIRST)}.{rng.choice(LAST)}" for _ in range(500)]
        self.helos = [
            "User",
            "localhost",
            "WIN-3KQ7U2H1LJ0",
            "ylmf-pc",
            "example.com",
            "[192.168.1.2]",
        ]

    @staticmethod
    def _cum(weights: list[float]) -> list[float]:
        out, s = [], 0.0
        for w in weights:
            s += w
            out.append(s)
        return out

    def pick(self, seq: list, cum: list[float]):
        return seq[self.rng.choices(range(len(seq)), cum_weights=cum)[0]]


# ----------------------------------------------------------------------------------------
# The simulation core, shared by both MTAs
# ----------------------------------------------------------------------------------------


class Sim:
    mta = ""

    def __init__(self, lines: int, seed: int, rate: float, out, id_switch: float = 0.5) -> None:
        self.id_switch = id_switch
        self.rng = random.Random(seed)
        self.world = World(random.Random(seed * 7919 + 1))
        self.target = lines
        self.rate = rate  # mean messages per second
        self.fh = out
        self.buf: list[str] = []
        self.flushed = 0
        self.now = float(START)
        self._stamp_sec = -1
        self._stamp = ""
        self.heap: list[tuple[float, int, Iterator[float]]] = []
        self.seq = 0
        self.truth: dict[str, list[int]] = {}
        self.open: dict[str, Msg] = {}
        self.kinds: dict[str, str] = {}
        self.peer: dict[str, int] = {}
        self.port = 40000
        self.first_ts = ""
        self.last_ts = ""

    # --- time stamps, cached per second -------------------------------------------------
    def stamp(self) -> str:
        sec = int(self.now)
        if sec != self._stamp_sec:
            self._stamp_sec = sec
            self._stamp = self.format_stamp(sec)
        return self._stamp

    def format_stamp(self, sec: int) -> str:
        raise NotImplementedError

    # --- scheduling ---------------------------------------------------------------------
    def spawn(self, gen: Iterator[float], delay: float = 0.0) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (self.now + delay, self.seq, gen))

    def run(self) -> None:
        heap = self.heap
        pop, push = heapq.heappop, heapq.heappush
        self.spawn(self.arrivals())
        self.spawn(self.noise())
        self.spawn(self.periodic(), 60.0)
        target = self.target
        buf = self.buf
        seq = self.seq
        while self.flushed + len(buf) < target:
            t, _, gen = pop(heap)
            self.now = t
            try:
                d = next(gen)
            except StopIteration:
                continue
            seq = self.seq = max(seq, self.seq) + 1
            push(heap, (t + d, seq, gen))
            if len(buf) >= 20000:
                self.fh.write("".join(buf))
                self.flushed += len(buf)
                buf.clear()
        self.fh.write("".join(buf))
        self.flushed += len(buf)
        buf.clear()

    # --- truth ----------------------------------------------------------------------------
    def row(self, account: str, kind: str) -> list[int]:
        r = self.truth.get(account)
        if r is None:
            r = self.truth[account] = [0] * len(FIELDS)
            self.kinds[account] = kind
        return r

    def count_peer(self, key: str, n: int = 1) -> None:
        self.peer[key] = self.peer.get(key, 0) + n

    # --- message plans ----------------------------------------------------------------------
    def next_port(self) -> int:
        self.port += self.rng.randrange(1, 40)
        if self.port > 65000:
            self.port = 32768 + self.port % 1000
        return self.port

    def remote_rcpt(self) -> Rcpt:
        w, rng = self.world, self.rng
        h = w.remote_hosts[rng.choices(range(len(w.remote_hosts)), cum_weights=w.remote_cum)[0]]
        r = rng.random()
        lp = rng.choice(w.remote_names) if r < 0.6 else f"{rng.choice(FIRST)}{rng.randrange(100)}"
        r = rng.random()
        if r < 0.905:
            defers, final = 0, "D"
        elif r < 0.945:
            defers, final = 1, "D"  # greylisting
        elif r < 0.955:
            defers, final = rng.randrange(2, 5), "D"  # temporary trouble for a while
        elif r < 0.975:
            defers, final = 0, "F"  # 550 user unknown and friends
        elif r < 0.979:
            defers, final = 0, "U"  # no such domain
        elif r < 0.983:
            defers, final = rng.randrange(1, 3), "F"
        elif r < 0.987:
            defers, final = 0, "X"  # dead host: deferred until the retry timeout
        else:
            defers, final = 0, "D"
        if final == "U":
            dom = h[0].split(".")[0] + rng.choice((".con", ".cmo", ".comm", ".nett"))
            h = (dom, "", "", "")
        return Rcpt(f"{lp}@{h[0]}", 0, h, defers, final)

    def mailbox_rcpt(self, addr: str | None = None) -> Rcpt:
        w, rng = self.world, self.rng
        if addr is None:
            addr = w.pick(w.mbox_order, w.mbox_cum)
        r = rng.random()
        if r < 0.997:
            defers, final = 0, "D"
        elif r < 0.999:
            defers, final = 1, "D"
        else:
            defers, final = 0, "F"  # over quota
        return Rcpt(addr, 1, (), defers, final)

    def nrcpt(self, heavy: bool) -> int:
        r = self.rng.random()
        if r < 0.75:
            return 1
        if r < 0.94:
            return self.rng.randrange(2, 5)
        if r < 0.99 or not heavy:
            return self.rng.randrange(5, 21)
        return self.rng.randrange(21, 101)

    def size(self) -> int:
        return min(int(self.rng.lognormvariate(9.0, 1.25)) + 600, 30_000_000)

    def new_msg(self, kind: str) -> Msg:
        """kind: auth | local | inbound"""
        w, rng = self.world, self.rng
        m = Msg()
        m.kind = kind
        m.size = self.size()
        m.t0 = self.now
        if kind == "auth":
            acct = w.sasl[rng.choices(range(len(w.sasl)), cum_weights=w.sasl_cum)[0]]
            m.ident = acct
            m.account = w.owner[acct.split("@")[1]]
            m.sender = acct if rng.random() < 0.9 else f"{rng.choice(FIRST)}@{acct.split('@')[1]}"
            rs = []
            for _ in range(self.nrcpt(True)):
                if rng.random() < 0.12:
                    rs.append(self.mailbox_rcpt())
                else:
                    rs.append(self.remote_rcpt())
            m.rcpts = rs
        elif kind == "local":
            name, _uid, dom = w.pick(w.local_users, w.local_cum)
            m.account = m.ident = name
            if name == "root":
                m.sender = f"root@{HOST}"
                m.rcpts = [Rcpt(f"root@{HOST}", 2, (), 0, "D")]
            else:
                m.sender = (
                    f"{name}@{HOST}"
                    if rng.random() < 0.5
                    else f"{rng.choice(('noreply', 'wordpress', 'info', 'orders'))}@{dom}"
                )
                m.rcpts = [
                    self.remote_rcpt()
                    for _ in range(1 if rng.random() < 0.85 else rng.randrange(2, 6))
                ]
        else:
            sender, h = w.pick(w.remote_senders, w.rsend_cum)
            m.account = m.ident = "-remote-"
            m.sender = sender if rng.random() < 0.97 else ""
            m.client = (h[1] if h[1] else f"mail.{h[0]}", h[2] + str(rng.randrange(1, 255)))
            m.rcpts = [
                self.mailbox_rcpt() for _ in range(1 if rng.random() < 0.9 else rng.randrange(2, 4))
            ]
        if len(m.rcpts) > 1:  # an MTA never keeps the same recipient twice in one message
            seen: dict[str, Rcpt] = {}
            for rc in m.rcpts:
                seen.setdefault(rc.addr, rc)
            m.rcpts = list(seen.values())
        return m

    def retry_delay(self, rnd: int) -> float:
        if rnd == 0:
            return self.rng.uniform(300, 1200)
        return min(900 * 2 ** (rnd - 1), 6 * 3600) * self.rng.uniform(0.9, 1.2)

    # --- processes ----------------------------------------------------------------------------
    def arrivals(self) -> Step:
        rng = self.rng
        while True:
            r = rng.random()
            kind = "inbound" if r < 0.55 else "auth" if r < 0.89 else "local"
            self.spawn(self.message(self.new_msg(kind)))
            hour = ((self.now - START) / 3600.0) % 24
            level = 0.35 + 1.3 * math.exp(-(((hour - 13.5) / 4.5) ** 2))
            yield rng.expovariate(self.rate * level)

    def message(self, m: Msg) -> Step:
        raise NotImplementedError

    def noise(self) -> Step:
        raise NotImplementedError

    def periodic(self) -> Step:
        raise NotImplementedError

    def results(self) -> dict:
        in_progress: dict[str, int] = {}
        for m in self.open.values():
            in_progress[m.account] = in_progress.get(m.account, 0) + 1
        accounts = {}
        totals = dict.fromkeys(FIELDS, 0)
        totals["in_progress"] = 0
        for acct in sorted(self.truth):
            r = self.truth[acct]
            d = dict(zip(FIELDS, r, strict=True))
            d["in_progress"] = in_progress.get(acct, 0)
            d["kind"] = self.kinds[acct]
            accounts[acct] = d
            for i, k in enumerate(FIELDS):
                totals[k] += r[i]
            totals["in_progress"] += d["in_progress"]
        return {
            "mta": self.mta,
            "lines": self.flushed,
            "first_ts": self.first_ts,
            "last_ts": self.last_ts,
            "year": 2024,
            "timezone": "UTC",
            "host": HOST,
            "accounts_rule": (
                "owner (userdomains) of the SMTP AUTH id's domain; local submission -> the local "
                "user (uid in local_users); unauthenticated inbound -> '-remote-'; MTA bounces -> "
                "'-system-'. Every outcome of a message counts for the message's account."
            ),
            "counters": (
                "sends: accepted messages; deliveries/failures: per recipient; deferrals: events; "
                "failures include expired (Postfix status=expired, one per outstanding recipient); "
                "bytes_delivered: size per delivered recipient; in_progress: accepted, not "
                "finished at end of file; rejects: permanent SMTP-time RCPT rejects, not in "
                "sends/failures (cPanel: +1 send +1 failure each); temp_rejects: 4xx rejects"
            ),
            "local_users": {n: u for n, u, _ in self.world.local_users},
            "totals": totals,
            "peer_expected": dict(sorted(self.peer.items())),
            "accounts": accounts,
        }


# ----------------------------------------------------------------------------------------
# Exim
# ----------------------------------------------------------------------------------------

TLS_IN = ("TLS1.3:TLS_AES_256_GCM_SHA384:256", "TLS1.2:ECDHE-RSA-AES256-GCM-SHA384:256")
TLS_OUT = "TLS1.3:TLS_AES_256_GCM_SHA384:256"


class EximSim(Sim):
    mta = "exim"

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.pid = 12000
        # the host is upgraded from Exim 4.96 to 4.97 part way: 23-character ids after that
        self.switch_at = int(self.target * self.id_switch)

    def format_stamp(self, sec: int) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(sec))

    def new_id(self) -> tuple[str, bool]:
        self.pid += self.rng.randrange(1, 60)
        if self.pid > 4_194_000:
            self.pid = 300
        sec = int(self.now)
        frac = self.now - sec
        if self.flushed + len(self.buf) < self.switch_at:
            return f"{b62(sec, 6)}-{b62(self.pid, 6)}-{b62(int(frac * 2000) % 3844, 2)}", True
        return (
            f"{b62(sec, 6)}-{b62(self.pid, 11)}-{b62(int(frac * 1_000_000) % 14776336, 4)}",
            False,
        )

    def tid(self, m: Msg) -> str:
        return "legacy" if m.legacy else "new"

    def peer_count(self, m: Msg, key: str) -> None:
        # eximstats 4.96 reads the id as 16 fixed columns: only legacy-id lines count
        if m.legacy:
            self.peer[key] = self.peer.get(key, 0) + 1

    def message(self, m: Msg) -> Step:
        rng, buf = self.rng, self.buf
        m.id, m.legacy = self.new_id()
        port = self.next_port()
        if m.kind == "auth":
            ip = f"{rng.randrange(24, 223)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            helo = rng.choice(
                ("[192.168.1.23]", "laptop", "DESKTOP-7QK2LM1", "iPhone", "mail-client")
            )
            hostpart = f"({helo})"
            buf.append(
                f"{self.stamp()} SMTP connection from {hostpart} [{ip}]:{port} I=[{HOST_IP}]:587 (TCP/IP connection count = {rng.randrange(1, 25)})\n"
            )
            yield rng.uniform(0.3, 3.0)
            auth = rng.choice(("dovecot_plain", "dovecot_plain", "dovecot_login"))
            subj = "" if rng.random() < 0.3 else f' T="{rng.choice(SUBJECTS)}"'
            closing = (
                f"SMTP connection from {hostpart} [{ip}]:{port} I=[{HOST_IP}]:587 closed by QUIT"
            )
            line = (
                f"{self.stamp()} {m.id} <= {m.sender} H={hostpart} [{ip}]:{port} I=[{HOST_IP}]:587 "
                f"P=esmtpsa X={rng.choice(TLS_IN)} CV=no A={auth}:{m.ident} S={m.size} "
                f"id={rng.getrandbits(64):016x}@{m.sender.split('@')[1]}{subj}\n"
            )
        elif m.kind == "inbound":
            mx, ip = m.client
            hostpart = mx if rng.random() < 0.85 else f"({mx})"
            buf.append(
                f"{self.stamp()} SMTP connection from {hostpart} [{ip}]:{port} I=[{HOST_IP}]:25 (TCP/IP connection count = {rng.randrange(1, 25)})\n"
            )
            yield rng.uniform(0.3, 3.0)
            sender = m.sender or "<>"
            proto = "esmtps" if rng.random() < 0.9 else "esmtp"
            tls = f" X={rng.choice(TLS_IN)} CV=no" if proto == "esmtps" else ""
            line = (
                f"{self.stamp()} {m.id} <= {sender} H={hostpart} [{ip}]:{port} I=[{HOST_IP}]:25 "
                f"P={proto}{tls} S={m.size} id={rng.getrandbits(64):016x}@{m.client[0]}\n"
            )
            closing = (
                f"SMTP connection from {hostpart} [{ip}]:{port} I=[{HOST_IP}]:25 closed by QUIT"
            )
        else:
            line = f"{self.stamp()} {m.id} <= {m.sender} U={m.ident} P=local S={m.size}\n"
            closing = ""
        buf.append(line)
        self.row(m.account, m.kind)[SENDS] += 1
        self.row(m.account, m.kind)[BYTES_S] += m.size
        self.peer_count(m, "eximstats_received")
        m.open = True
        self.open[m.id] = m
        yield rng.uniform(0.01, 0.4)
        if closing:
            buf.append(f"{self.stamp()} {closing}\n")
            yield rng.uniform(0.05, 1.5)
        yield from self.deliver(m)

    def deliver(self, m: Msg) -> Step:
        rng, buf = self.rng, self.buf
        row = self.row(m.account, m.kind)
        pending = m.rcpts
        rnd = 0
        delayed = failed_msg = False
        while True:
            failed_now: list[Rcpt] = []
            still: list[Rcpt] = []
            groups: dict[str, list[Rcpt]] = {}
            for rc in pending:
                groups.setdefault(rc.host[0] if rc.kind == 0 else rc.addr, []).append(rc)
            age = self.now - m.t0
            for group in groups.values():
                first = True
                for rc in group:
                    s = self.stamp()
                    if rc.kind == 0:
                        h = rc.host
                        if not rc.mx and h[1]:
                            rc.mx = f"{h[1]} [{h[2]}{rng.randrange(1, 255)}]"
                        if rc.final == "X" and age >= LIFETIME:
                            line = f"{s} {m.id} ** {rc.addr}: retry timeout exceeded\n"
                            outcome = "F"
                        elif rc.final == "X" or rc.tries < rc.defers:
                            rc.tries += 1
                            if rc.final == "X":
                                line = f"{s} {m.id} == {rc.addr} R=dnslookup T=remote_smtp defer (110): Connection timed out\n"
                            elif rc.defers == 1:
                                line = (
                                    f"{s} {m.id} == {rc.addr} R=dnslookup T=remote_smtp defer (-44) H={rc.mx}: "
                                    f"SMTP error from remote mail server after RCPT TO:<{rc.addr}>: "
                                    "451 4.7.1 Greylisted, please try again later\n"
                                )
                            else:
                                line = (
                                    f"{s} {m.id} == {rc.addr} R=dnslookup T=remote_smtp defer (-44) H={rc.mx}: "
                                    f"SMTP error from remote mail server after RCPT TO:<{rc.addr}>: "
                                    f"{rng.choice(TEMP_REPLIES)}\n"
                                )
                            outcome = "d"
                        elif rc.final == "D":
                            reply = h[3].format(
                                n=rng.randrange(10**9, 2 * 10**9),
                                t=f"{rng.getrandbits(40):010x}",
                                u=f"{rng.getrandbits(36):09X}",
                                h=HOST,
                            )
                            flag = "=>" if first else "->"
                            first = False
                            line = f'{s} {m.id} {flag} {rc.addr} R=dnslookup T=remote_smtp H={rc.mx} X={TLS_OUT} CV=yes C="{reply}"\n'
                            outcome = "D"
                        elif rc.final == "U":
                            line = f"{s} {m.id} ** {rc.addr}: Unrouteable address\n"
                            outcome = "F"
                        else:
                            line = (
                                f"{s} {m.id} ** {rc.addr} R=dnslookup T=remote_smtp H={rc.mx} X={TLS_OUT} CV=yes: "
                                f"SMTP error from remote mail server after RCPT TO:<{rc.addr}>: "
                                f"{rng.choice(PERM_REPLIES).format(a=rc.addr)}\n"
                            )
                            outcome = "F"
                    elif rc.kind == 1:
                        if rc.tries < rc.defers:
                            rc.tries += 1
                            line = f"{s} {m.id} == {rc.addr} R=virtual_user T=dovecot_virtual_delivery defer (-1): LMTP error after end of data: 451 4.3.0 <{rc.addr}> Temporary internal failure\n"
                            outcome = "d"
                        elif rc.final == "D":
                            line = f'{s} {m.id} => {rc.addr} R=virtual_user T=dovecot_virtual_delivery C="250 2.0.0 <{rc.addr}> {rng.getrandbits(48):012x} Saved"\n'
                            outcome = "D"
                        else:
                            line = f"{s} {m.id} ** {rc.addr} R=virtual_user T=dovecot_virtual_delivery: LMTP error after end of data: 552 5.2.2 <{rc.addr}> Quota exceeded (mailbox for user is full)\n"
                            outcome = "F"
                    else:
                        user = rc.addr.split("@")[0]
                        line = f"{s} {m.id} => {user} <{rc.addr}> R=localuser T=local_delivery\n"
                        outcome = "D"
                    buf.append(line)
                    if outcome == "D":
                        row[DELIV] += 1
                        row[BYTES_D] += m.size
                        if m.legacy:
                            self.count_peer("eximstats_delivered_addresses")
                            if line.find(" => ", 20) > 0:
                                self.count_peer("eximstats_delivered_messages")
                    elif outcome == "d":
                        row[DEFER] += 1
                        still.append(rc)
                        if not delayed:
                            delayed = True
                            self.peer_count(m, "eximstats_delayed")
                    else:
                        row[FAIL] += 1
                        failed_now.append(rc)
                        if not failed_msg:
                            failed_msg = True
                            self.peer_count(m, "eximstats_failed")
                    yield rng.uniform(0.05, 2.0) if rc.kind == 0 else rng.uniform(0.005, 0.05)
            if failed_now and m.sender and m.kind != "bounce":
                self.spawn(self.bounce(m, failed_now))
                yield rng.uniform(0.02, 0.1)
            if not still:
                buf.append(f"{self.stamp()} {m.id} Completed\n")
                m.open = False
                del self.open[m.id]
                return
            pending = still
            yield self.retry_delay(rnd)
            rnd += 1

    def bounce(self, parent: Msg, failed: list[Rcpt]) -> Step:
        rng = self.rng
        m = Msg()
        m.kind = "bounce"
        m.account = "-system-"
        m.sender = ""
        m.t0 = self.now
        m.size = min(parent.size, 60_000) + 1500 + 120 * len(failed)
        m.id, m.legacy = self.new_id()
        to = parent.sender
        if to.split("@")[1] in self.world.our_set:
            m.rcpts = [Rcpt(to, 1, (), 0, "D")]
        elif to.endswith("@" + HOST):
            m.rcpts = [Rcpt(to, 2, (), 0, "D")]
        else:
            dom = to.split("@")[1]
            h = next((x for x in PROVIDER_HOSTS if x[0] == dom), None) or (
                dom,
                f"mx.{dom}",
                "198.51.100.",
                GENERIC_250[0],
            )
            m.rcpts = [Rcpt(to, 0, h, 0, "D")]
        self.buf.append(
            f"{self.stamp()} {m.id} <= <> R={parent.id} U=mailnull P=local S={m.size}\n"
        )
        self.row(m.account, "system")[SENDS] += 1
        self.row(m.account, "system")[BYTES_S] += m.size
        self.peer_count(m, "eximstats_received")
        m.open = True
        self.open[m.id] = m
        yield rng.uniform(0.05, 0.5)
        yield from self.deliver(m)

    def noise(self) -> Step:
        rng = self.rng
        while True:
            r = rng.random()
            if r < 0.45:
                self.spawn(self.spam_session())
            elif r < 0.7:
                self.spawn(self.auth_fail())
            elif r < 0.85:
                ip = rand_ip(rng)
                self.buf.append(
                    f"{self.stamp()} SMTP connection from [{ip}]:{self.next_port()} I=[{HOST_IP}]:25 (TCP/IP connection count = {rng.randrange(1, 25)})\n"
                )
                yield rng.uniform(0.01, 0.5)
                self.buf.append(
                    f"{self.stamp()} TLS error on connection from [{ip}]:{self.port} I=[{HOST_IP}]:25 (SSL_accept): error:0A000126:SSL routines::unexpected eof while reading\n"
                )
            elif r < 0.97:
                self.buf.append(
                    f"{self.stamp()} no host name found for IP address {rand_ip(rng)}\n"
                )
            else:
                self.spawn(self.auth_reject())
            yield rng.expovariate(self.rate * 0.7)

    def spam_session(self) -> Step:
        rng, w = self.rng, self.world
        ip, port = rand_ip(rng), self.next_port()
        helo = rng.choice(w.helos)
        self.buf.append(
            f"{self.stamp()} SMTP connection from [{ip}]:{port} I=[{HOST_IP}]:25 (TCP/IP connection count = {rng.randrange(1, 25)})\n"
        )
        yield rng.uniform(0.5, 4)
        rcpt = (
            rng.choice(w.sasl)
            if rng.random() < 0.6
            else f"{rng.choice(FIRST)}@{rng.choice(w.our_domains)}"
        )
        sender = f"{rng.choice(FIRST)}{rng.randrange(1000)}@{rng.choice(('mail.ru', 'qq.com', 'spam-domain.biz', 'yandex.com', 'bulk-offers.net'))}"
        reason = rng.choice(EXIM_REJECTS).format(ip=ip, a=rcpt)
        self.buf.append(
            f"{self.stamp()} H=({helo}) [{ip}]:{port} I=[{HOST_IP}]:25 F=<{sender}> rejected RCPT <{rcpt}>: {reason}\n"
        )
        self.row("-remote-", "remote")[REJ] += 1
        self.count_peer("eximstats_rejects_idless")
        yield rng.uniform(0.1, 2)
        self.buf.append(
            f"{self.stamp()} SMTP connection from ({helo}) [{ip}]:{port} I=[{HOST_IP}]:25 closed by QUIT\n"
        )

    def auth_fail(self) -> Step:
        rng, w = self.rng, self.world
        ip, port = rand_ip(rng), self.next_port()
        self.buf.append(
            f"{self.stamp()} SMTP connection from [{ip}]:{port} I=[{HOST_IP}]:587 (TCP/IP connection count = {rng.randrange(1, 25)})\n"
        )
        yield rng.uniform(0.5, 3)
        who = (
            rng.choice(w.sasl)
            if rng.random() < 0.7
            else f"{rng.choice(FIRST)}@{rng.choice(w.our_domains)}"
        )
        self.buf.append(
            f"{self.stamp()} dovecot_login authenticator failed for ({rng.choice(w.helos)}) [{ip}]:{port} I=[{HOST_IP}]:587: 535 Incorrect authentication data (set_id={who})\n"
        )
        yield rng.uniform(0.1, 2)
        self.buf.append(
            f"{self.stamp()} unexpected disconnection while reading SMTP command from [{ip}]:{port} I=[{HOST_IP}]:587 D={rng.uniform(1, 9):.3f}s\n"
        )

    def auth_reject(self) -> Step:
        """An authenticated client refused at RCPT (rate limit): a reject of that account."""
        rng, w = self.rng, self.world
        acct = w.sasl[rng.choices(range(len(w.sasl)), cum_weights=w.sasl_cum)[0]]
        ip, port = rand_ip(rng), self.next_port()
        rc = self.remote_rcpt()
        self.buf.append(
            f"{self.stamp()} H=(laptop) [{ip}]:{port} I=[{HOST_IP}]:587 F=<{acct}> A=dovecot_plain:{acct} "
            f"temporarily rejected RCPT <{rc.addr}>: Sending rate limit exceeded, try again later\n"
        )
        self.row(w.owner[acct.split("@")[1]], "auth")[TEMP_REJ] += 1
        self.count_peer("eximstats_rejects_idless")
        yield 0.0

    def periodic(self) -> Step:
        rng = self.rng
        while True:
            pid = rng.randrange(20000, 4_000_000)
            self.buf.append(f"{self.stamp()} Start queue run: pid={pid}\n")
            yield rng.uniform(0.5, 5)
            self.buf.append(f"{self.stamp()} End queue run: pid={pid}\n")
            yield rng.uniform(1780, 1820)


SUBJECTS = (
    "Re: meeting tomorrow",
    "Invoice 2024-0117",
    "Your order has shipped",
    "Fwd: photos",
    "Quote request",
    "Weekly newsletter",
    "Re: Re: contract draft",
    "Password reset",
    "Hello",
    "Booking confirmation #48213",
)
TEMP_REPLIES = (
    "452 4.2.2 The email account that you tried to reach is over quota",
    "421 4.7.0 Try again later, closing connection",
    "450 4.7.1 Client host rejected: cannot find your reverse hostname",
    "451 4.3.0 Temporary lookup failure",
)
PERM_REPLIES = (
    "550 5.1.1 <{a}>: Recipient address rejected: User unknown in virtual mailbox table",
    "550 5.1.1 The email account that you tried to reach does not exist",
    "550 5.7.1 Message rejected as spam by Content Filtering",
    "552 5.2.2 <{a}>: Mailbox full",
    "550 5.7.26 Unauthenticated email is not accepted from this domain",
)
EXIM_REJECTS = (
    "relay not permitted",
    "Unrouteable address",
    "JunkMail rejected - ({ip}) [{ip}] is in an RBL: https://www.spamhaus.org/query/ip/{ip}",
    "Sender verify failed",
)
PROVIDER_HOSTS = tuple((d, mx, pfx, reply) for d, _w, mx, pfx, reply in PROVIDERS)


def rand_ip(rng: random.Random) -> str:
    return (
        f"{rng.randrange(5, 223)}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
    )


# ----------------------------------------------------------------------------------------
# Postfix
# ----------------------------------------------------------------------------------------


class PostfixSim(Sim):
    mta = "postfix"

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.qcount = 0
        self.pids = {
            "smtpd": [self.rng.randrange(1000, 90000) for _ in range(12)],
            "submission/smtpd": [self.rng.randrange(1000, 90000) for _ in range(6)],
            "smtp": [self.rng.randrange(1000, 90000) for _ in range(20)],
            "cleanup": [self.rng.randrange(1000, 90000) for _ in range(4)],
            "lmtp": [self.rng.randrange(1000, 90000) for _ in range(4)],
            "local": [self.rng.randrange(1000, 90000) for _ in range(2)],
            "bounce": [self.rng.randrange(1000, 90000) for _ in range(2)],
            "pickup": [self.rng.randrange(1000, 90000)],
            "qmgr": [self.rng.randrange(1000, 90000)],
        }
        self.pfx = {
            k: [f"{HOST.split('.', maxsplit=1)[0]} postfix/{k}[{p}]: " for p in v]
            for k, v in self.pids.items()
        }

    def format_stamp(self, sec: int) -> str:
        t = time.gmtime(sec)
        return (
            f"{MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
        )

    def p(self, daemon: str) -> str:
        """Time stamp, host and tag of a line from one of `daemon`'s processes."""
        return f"{self.stamp()} {self.rng.choice(self.pfx[daemon])}"

    def qid(self) -> str:
        self.qcount += 1
        return f"{(self.qcount * 0x9E3779B97F + 0x3A5C1) & 0xFFFFFFFFFF:010X}"

    def message(self, m: Msg) -> Step:
        rng, buf = self.rng, self.buf
        m.id = self.qid()
        if m.kind in ("auth", "inbound"):
            svc = "submission/smtpd" if m.kind == "auth" else "smtpd"
            tag = self.p(svc)[len(self.stamp()) + 1 :]
            if m.kind == "auth":
                client = (
                    f"unknown[{rand_ip(rng)}]"
                    if rng.random() < 0.7
                    else f"{rng.choice(('cpe-', 'host-', 'dyn-'))}{rng.randrange(10**6)}.isp.example[{rand_ip(rng)}]"
                )
            else:
                client = f"{m.client[0]}[{m.client[1]}]"
            buf.append(f"{self.stamp()} {tag}connect from {client}\n")
            yield rng.uniform(0.2, 2.0)
            if m.kind == "auth":
                method = rng.choice(("PLAIN", "PLAIN", "LOGIN"))
                buf.append(
                    f"{self.stamp()} {tag}{m.id}: client={client}, sasl_method={method}, sasl_username={m.ident}\n"
                )
            else:
                buf.append(f"{self.stamp()} {tag}{m.id}: client={client}\n")
            self.count_peer("pflogsumm_received")
            yield rng.uniform(0.05, 0.5)
        else:
            uid = next(u for n, u, _ in self.world.local_users if n == m.account)
            frm = m.account if m.sender == f"{m.account}@{HOST}" else m.sender
            buf.append(f"{self.p('pickup')}{m.id}: uid={uid} from=<{frm}>\n")
            self.count_peer("pflogsumm_received")
            yield rng.uniform(0.01, 0.1)
            tag = ""
        dom = m.sender.split("@")[1] if m.sender else HOST
        buf.append(
            f"{self.p('cleanup')}{m.id}: message-id=<{self.now:.0f}.{rng.getrandbits(48):012x}@{dom}>\n"
        )
        yield rng.uniform(0.01, 0.2)
        buf.append(
            f"{self.p('qmgr')}{m.id}: from=<{m.sender}>, size={m.size}, nrcpt={len(m.rcpts)} (queue active)\n"
        )
        r = self.row(m.account, m.kind)
        r[SENDS] += 1
        r[BYTES_S] += m.size
        m.open = True
        self.open[m.id] = m
        yield rng.uniform(0.01, 0.2)
        if tag:
            n = len(m.rcpts)
            if m.kind == "auth":
                cmds = f"ehlo=2 starttls=1 auth=1 mail=1 rcpt={n} data=1 quit=1 commands={n + 7}"
            else:
                cmds = f"ehlo=2 starttls=1 mail=1 rcpt={n} data=1 quit=1 commands={n + 6}"
            buf.append(f"{self.stamp()} {tag}disconnect from {client} {cmds}\n")
            yield rng.uniform(0.01, 0.5)
        yield from self.deliver(m)

    def deliver(self, m: Msg) -> Step:
        rng, buf = self.rng, self.buf
        row = self.row(m.account, m.kind)
        pending = m.rcpts
        rnd = 0
        deferred_once = False
        while True:
            failed_now: list[Rcpt] = []
            still: list[Rcpt] = []
            for rc in pending:
                delay = 0.0
                a, b = self.now - m.t0, rng.uniform(0, 0.02)
                if rc.kind == 0:
                    h = rc.host
                    if not rc.mx and h[1]:
                        rc.mx = f"{h[1]}[{h[2]}{rng.randrange(1, 255)}]"
                    c, d = rng.uniform(0.05, 0.8), rng.uniform(0.05, 1.5)
                    head = f"{self.p('smtp')}{m.id}: to=<{rc.addr}>, "
                    if rc.final == "X":
                        c = 30.0
                        rc.tries += 1
                        line = f"{head}relay=none, delay={fmt_delay(delay + a + b + c)}, delays={fmt_delay(a)}/{fmt_delay(b)}/30/0, dsn=4.4.1, status=deferred (connect to {rc.mx}:25: Connection timed out)\n"
                        outcome = "d"
                    elif rc.tries < rc.defers:
                        rc.tries += 1
                        text = (
                            "451 4.7.1 Greylisted, please try again later"
                            if rc.defers == 1
                            else rng.choice(TEMP_REPLIES)
                        )
                        line = f"{head}relay={rc.mx}:25, delay={fmt_delay(delay + a + b + c + d)}, delays={fmt_delay(a)}/{fmt_delay(b)}/{fmt_delay(c)}/{fmt_delay(d)}, dsn={text.split()[1]}, status=deferred (host {rc.mx} said: {text} (in reply to RCPT TO command))\n"
                        outcome = "d"
                    elif rc.final == "D":
                        reply = h[3].format(
                            n=rng.randrange(10**9, 2 * 10**9),
                            t=f"{rng.getrandbits(40):010x}",
                            u=f"{rng.getrandbits(36):09X}",
                            h=HOST,
                        )
                        line = f"{head}relay={rc.mx}:25, delay={fmt_delay(delay + a + b + c + d)}, delays={fmt_delay(a)}/{fmt_delay(b)}/{fmt_delay(c)}/{fmt_delay(d)}, dsn=2.0.0, status=sent ({reply})\n"
                        outcome = "D"
                    elif rc.final == "U":
                        line = f"{head}relay=none, delay={fmt_delay(delay + a + b)}, delays={fmt_delay(a)}/{fmt_delay(b)}/0/0, dsn=5.4.4, status=bounced (Host or domain name not found. Name service error for name={rc.host[0]} type=A: Host not found)\n"
                        outcome = "F"
                    else:
                        text = rng.choice(PERM_REPLIES).format(a=rc.addr)
                        line = f"{head}relay={rc.mx}:25, delay={fmt_delay(delay + a + b + c + d)}, delays={fmt_delay(a)}/{fmt_delay(b)}/{fmt_delay(c)}/{fmt_delay(d)}, dsn={text.split()[1]}, status=bounced (host {rc.mx} said: {text} (in reply to RCPT TO command))\n"
                        outcome = "F"
                elif rc.kind == 1:
                    d = rng.uniform(0.005, 0.1)
                    head = f"{self.p('lmtp')}{m.id}: to=<{rc.addr}>, "
                    if rc.kind == 1 and rng.random() < 0.03 and rc.tries == 0:
                        head += f"orig_to=<{rng.choice(('info', 'sales', 'office', 'contact'))}@{rc.addr.split('@')[1]}>, "
                    tail = f"relay={HOST}[private/dovecot-lmtp], delay={fmt_delay(delay + a + b + d)}, delays={fmt_delay(a)}/{fmt_delay(b)}/0/{fmt_delay(d)}, "
                    if rc.tries < rc.defers:
                        rc.tries += 1
                        line = f"{head}{tail}dsn=4.3.0, status=deferred (host {HOST}[private/dovecot-lmtp] said: 451 4.3.0 <{rc.addr}> Temporary internal failure (in reply to end of DATA command))\n"
                        outcome = "d"
                    elif rc.final == "D":
                        line = f"{head}{tail}dsn=2.0.0, status=sent (250 2.0.0 <{rc.addr}> {rng.getrandbits(64):016x} Saved)\n"
                        outcome = "D"
                    else:
                        line = f"{head}{tail}dsn=5.2.2, status=bounced (host {HOST}[private/dovecot-lmtp] said: 552 5.2.2 <{rc.addr}> Quota exceeded (mailbox for user is full) (in reply to end of DATA command))\n"
                        outcome = "F"
                else:
                    d = rng.uniform(0.001, 0.02)
                    line = f"{self.p('local')}{m.id}: to=<{rc.addr}>, orig_to=<{rc.addr.split('@')[0]}>, relay=local, delay={fmt_delay(delay + a + b + d)}, delays={fmt_delay(a)}/{fmt_delay(b)}/0/{fmt_delay(d)}, dsn=2.0.0, status=sent (delivered to mailbox)\n"
                    outcome = "D"
                buf.append(line)
                if outcome == "D":
                    row[DELIV] += 1
                    row[BYTES_D] += m.size
                    self.count_peer("pflogsumm_delivered")
                    self.count_peer("pflogsumm_bytes_delivered", m.size)
                elif outcome == "d":
                    row[DEFER] += 1
                    still.append(rc)
                    self.count_peer("pflogsumm_deferrals")
                    if not deferred_once:
                        deferred_once = True
                        self.count_peer("pflogsumm_deferred")
                else:
                    row[FAIL] += 1
                    failed_now.append(rc)
                    self.count_peer("pflogsumm_bounced")
                yield rng.uniform(0.05, 1.5) if rc.kind == 0 else rng.uniform(0.005, 0.05)
            if failed_now and m.sender:
                self.spawn(self.bounce(m, failed_now))
                yield rng.uniform(0.05, 0.2)
            if not still:
                buf.append(f"{self.p('qmgr')}{m.id}: removed\n")
                m.open = False
                del self.open[m.id]
                return
            pending = still
            yield self.retry_delay(rnd)
            rnd += 1
            if self.now - m.t0 >= LIFETIME:  # maximal_queue_lifetime: all that is left fails
                buf.append(
                    f"{self.p('qmgr')}{m.id}: from=<{m.sender}>, status=expired, returned to sender\n"
                )
                row[FAIL] += len(still)
                row[EXPIRED] += len(still)
                if m.sender:
                    self.spawn(self.bounce(m, still))
                yield rng.uniform(0.1, 0.3)
                buf.append(f"{self.p('qmgr')}{m.id}: removed\n")
                m.open = False
                del self.open[m.id]
                return
            buf.append(
                f"{self.p('qmgr')}{m.id}: from=<{m.sender}>, size={m.size}, nrcpt={len(m.rcpts)} (queue active)\n"
            )
            yield rng.uniform(0.01, 0.3)

    def bounce(self, parent: Msg, failed: list[Rcpt]) -> Step:
        rng = self.rng
        m = Msg()
        m.kind = "bounce"
        m.account = "-system-"
        m.sender = ""
        m.t0 = self.now
        m.size = min(parent.size, 60_000) + 2200 + 150 * len(failed)
        m.id = self.qid()
        to = parent.sender
        dom = to.split("@")[1]
        if dom in self.world.our_set:
            m.rcpts = [Rcpt(to, 1, (), 0, "D")]
        elif dom == HOST:
            m.rcpts = [Rcpt(to, 2, (), 0, "D")]
        else:
            h = next((x for x in PROVIDER_HOSTS if x[0] == dom), None) or (
                dom,
                f"mx.{dom}",
                "198.51.100.",
                GENERIC_250[0],
            )
            m.rcpts = [Rcpt(to, 0, h, 0, "D")]
        self.buf.append(
            f"{self.p('cleanup')}{m.id}: message-id=<{self.now:.0f}.{rng.getrandbits(48):012x}@{HOST}>\n"
        )
        yield rng.uniform(0.001, 0.02)
        self.buf.append(
            f"{self.p('bounce')}{parent.id}: sender non-delivery notification: {m.id}\n"
        )
        yield rng.uniform(0.001, 0.05)
        self.buf.append(f"{self.p('qmgr')}{m.id}: from=<>, size={m.size}, nrcpt=1 (queue active)\n")
        self.row(m.account, "system")[SENDS] += 1
        self.row(m.account, "system")[BYTES_S] += m.size
        m.open = True
        self.open[m.id] = m
        yield rng.uniform(0.01, 0.3)
        yield from self.deliver(m)

    def noise(self) -> Step:
        rng = self.rng
        while True:
            r = rng.random()
            if r < 0.3:
                self.spawn(self.spam_session())
            elif r < 0.45:
                self.spawn(self.auth_fail())
            elif r < 0.95:
                self.spawn(self.imap_session())
            else:
                ip = rand_ip(rng)
                self.buf.append(
                    f"{self.p('smtpd')}warning: hostname {rng.choice(('dsl', 'static', 'ip'))}-{ip.replace('.', '-')}.example.net does not resolve to address {ip}: Name or service not known\n"
                )
            yield rng.expovariate(self.rate * 0.9)

    def spam_session(self) -> Step:
        rng, w = self.rng, self.world
        tag = self.p("smtpd")[len(self.stamp()) + 1 :]
        ip = rand_ip(rng)
        client = f"unknown[{ip}]"
        self.buf.append(f"{self.stamp()} {tag}connect from {client}\n")
        yield rng.uniform(0.3, 3)
        rcpt = (
            rng.choice(w.sasl)
            if rng.random() < 0.6
            else f"{rng.choice(FIRST)}@{rng.choice(w.our_domains)}"
        )
        sender = f"{rng.choice(FIRST)}{rng.randrange(1000)}@{rng.choice(('mail.ru', 'qq.com', 'spam-domain.biz', 'yandex.com', 'bulk-offers.net'))}"
        helo = rng.choice(w.helos)
        r = rng.random()
        if r < 0.5:
            reason = f"554 5.7.1 Service unavailable; Client host [{ip}] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/{ip}"
        elif r < 0.8:
            reason = f"550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in virtual mailbox table"
        else:
            rcpt = f"{rng.choice(FIRST)}@{rng.choice(('gmail.com', 'yahoo.com', 'example.org'))}"
            reason = f"454 4.7.1 <{rcpt}>: Relay access denied"
            self.row("-remote-", "remote")[TEMP_REJ] += 1
            self.row("-remote-", "remote")[REJ] -= 1
        self.buf.append(
            f"{self.stamp()} {tag}NOQUEUE: reject: RCPT from {client}: {reason}; from=<{sender}> to=<{rcpt}> proto=ESMTP helo=<{helo}>\n"
        )
        self.row("-remote-", "remote")[REJ] += 1
        self.count_peer("pflogsumm_rejected")
        yield rng.uniform(0.1, 2)
        self.buf.append(
            f"{self.stamp()} {tag}disconnect from {client} ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4\n"
        )

    def auth_fail(self) -> Step:
        rng = self.rng
        tag = self.p("submission/smtpd")[len(self.stamp()) + 1 :]
        ip = rand_ip(rng)
        client = f"unknown[{ip}]"
        self.buf.append(f"{self.stamp()} {tag}connect from {client}\n")
        yield rng.uniform(0.3, 3)
        self.buf.append(
            f"{self.stamp()} {tag}warning: {client}: SASL LOGIN authentication failed: UGFzc3dvcmQ6\n"
        )
        yield rng.uniform(0.1, 2)
        self.buf.append(f"{self.stamp()} {tag}lost connection after AUTH from {client}\n")
        yield 0.0
        self.buf.append(
            f"{self.stamp()} {tag}disconnect from {client} ehlo=1 auth=0/1 commands=1/2\n"
        )

    def imap_session(self) -> Step:
        rng, w = self.rng, self.world
        user = w.pick(w.mbox_order, w.mbox_cum)
        ip = rand_ip(rng)
        mpid = rng.randrange(1000, 99999)
        sess = f"{rng.getrandbits(64):016x}"
        h = HOST.split(".", maxsplit=1)[0]
        self.buf.append(
            f"{self.stamp()} {h} dovecot: imap-login: Login: user=<{user}>, method=PLAIN, rip={ip}, lip={HOST_IP}, mpid={mpid}, TLS, session=<{sess}>\n"
        )
        yield rng.uniform(5, 900)
        self.buf.append(
            f"{self.stamp()} {h} dovecot: imap({user})<{mpid}><{sess}>: Logged out in={rng.randrange(50, 5000)} "
            f"out={rng.randrange(500, 500000)} deleted=0 expunged=0 trashed=0 hdr_count=0 hdr_bytes=0 body_count=0 body_bytes=0\n"
        )

    def periodic(self) -> Step:
        rng = self.rng
        while True:
            self.buf.append(
                f"{self.stamp()} {HOST.split('.', maxsplit=1)[0]} postfix/anvil[{self.pids['qmgr'][0] + 7}]: statistics: max connection rate {rng.randrange(1, 9)}/60s for (smtp:{rand_ip(rng)}) at {self.stamp()}\n"
            )
            yield rng.uniform(595, 605)


def generate(
    mta: str, lines: int, out: Path, *, seed: int = 1, rate: float = 1.2, id_switch: float = 0.5
) -> dict:
    cls: Callable[..., Sim] = EximSim if mta == "exim" else PostfixSim
    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    with tmp.open("w", encoding="utf-8", buffering=4 << 20) as fh:
        sim = cls(lines, seed, rate, fh, id_switch)
        sim.run()
    with tmp.open("rb") as fh:
        first = fh.readline().decode()
        fh.seek(max(0, tmp.stat().st_size - 4096))
        last = fh.read().decode(errors="replace").splitlines()[-1]
    sim.first_ts = first[:19] if mta == "exim" else first[:15]
    sim.last_ts = last[:19] if mta == "exim" else last[:15]
    truth = sim.results()
    truth["seed"] = seed
    truth["rate"] = rate
    if mta == "exim":
        truth["id_formats"] = (
            f"16-char ids (Exim 4.96) up to line {sim.switch_at}, 23-char ids (4.97+) after"
        )
    Path(str(out) + ".truth.json").write_text(json.dumps(truth, indent=1) + "\n", encoding="utf-8")
    ud = Path(str(out) + ".userdomains")
    ud.write_text(
        "".join(f"{d}: {u}\n" for d, u in sorted(sim.world.owner.items())) + "*: nobody\n",
        encoding="utf-8",
    )
    uids = "".join(f"    {u}: {n}\n" for n, u, _ in sim.world.local_users)
    Path(str(out) + ".logstats.yaml").write_text(
        f"# written by bench/genlog.py for {out.name}\ntimezone: UTC\naccounts:\n"
        f"  userdomains: {ud.name}\n  uids:\n{uids}",
        encoding="utf-8",
    )
    tmp.replace(out)
    truth["generator_seconds"] = round(time.perf_counter() - t0, 2)  # not in the file
    return truth


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mta", choices=("exim", "postfix"), required=True)
    ap.add_argument("--lines", type=int, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--rate", type=float, default=1.2, help="mean messages per second (default 1.2)"
    )
    ap.add_argument(
        "--id-switch",
        type=float,
        default=0.5,
        help="Exim: fraction of the file written with 16-char ids before the 4.97 upgrade "
        "(default 0.5; 1 = classic ids only, 0 = 23-char ids only)",
    )
    a = ap.parse_args(argv)
    truth = generate(a.mta, a.lines, a.out, seed=a.seed, rate=a.rate, id_switch=a.id_switch)
    tot = truth["totals"]
    print(
        f"{a.out}: {truth['lines']} lines, {truth['first_ts']} .. {truth['last_ts']}, "
        f"{len(truth['accounts'])} accounts, sends={tot['sends']} deliveries={tot['deliveries']} "
        f"deferrals={tot['deferrals']} failures={tot['failures']} in_progress={tot['in_progress']} "
        f"({truth['generator_seconds']} s)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
