"""Small random Exim logs with their ground truth, for property tests.

The truth is computed from the script of what happened (which account sent what to whom
and how each attempt ended), not from the log text.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@dataclass
class Script:
    lines: list[str] = field(default_factory=list)
    truth: dict[str, dict[str, int]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(int))
    )


def _id(rng: random.Random, long: bool) -> str:
    def part(n: int) -> str:
        return "".join(rng.choice(ALPHABET) for _ in range(n))

    return f"{part(6)}-{part(11)}-{part(4)}" if long else f"{part(6)}-{part(6)}-{part(2)}"


def exim_log(seed: int, messages: int = 40) -> Script:
    """Interleaved messages from local users, authenticated users and remote senders."""
    rng = random.Random(seed)
    s = Script()
    t = datetime(2024, 12, 31, 22, 0, 0)
    events: list[tuple[datetime, int, str]] = []
    order = 0

    def at(ts: datetime, line: str) -> None:
        nonlocal order
        order += 1
        events.append((ts, order, f"{ts:%Y-%m-%d %H:%M:%S} {line}"))

    for _ in range(messages):
        t += timedelta(seconds=rng.randint(1, 400))
        qid = _id(rng, rng.random() < 0.5)
        kind = rng.choice(["auth", "local", "remote", "reject"])
        size = rng.randint(300, 90000)
        if kind == "reject":
            at(
                t,
                f"H=(x) [192.0.2.{rng.randint(1, 250)}] F=<s@spam.test> rejected RCPT "
                f"<n{rng.randint(1, 9)}@remote.test>: relay not permitted",
            )
            s.truth["-remote-"]["SENDCOUNT"] += 1
            s.truth["-remote-"]["FAILCOUNT"] += 1
            continue
        if kind == "auth":
            account = rng.choice(["alice", "bob"])
            at(
                t,
                f"{qid} <= {account}@{account}.test H=(c) [10.0.0.1]:5000 P=esmtpa "
                f"A=plain:{account}@{account}.test S={size}",
            )
        elif kind == "local":
            account = rng.choice(["lsuser1", "lsuser2"])
            at(t, f"{qid} <= {account}@host.test U={account} P=local S={size}")
        else:
            account = "-remote-"
            at(t, f"{qid} <= x@example.org H=mx.example.org [198.51.100.7] P=esmtp S={size}")
        truth = s.truth[account]
        truth["SENDCOUNT"] += 1
        d = t
        queued = False
        for r in range(rng.randint(1, 3)):
            rcpt = f"r{r}@dest{rng.randint(1, 3)}.test"
            fate = rng.choice(["ok", "ok", "local", "fail", "defer", "deferok"])
            d += timedelta(seconds=rng.randint(0, 30))
            if fate in ("defer", "deferok"):
                for _ in range(rng.randint(1, 3)):
                    at(
                        d,
                        f"{qid} == {rcpt} R=dnslookup T=remote_smtp defer (-44): SMTP error "
                        f"from remote mail server after RCPT TO:<{rcpt}>: 451 try later",
                    )
                    truth["DEFERCOUNT"] += 1
                    d += timedelta(minutes=rng.randint(5, 90))
                if fate == "defer":
                    queued = True
                    continue
            if fate == "fail":
                at(
                    d,
                    f"{qid} ** {rcpt} R=dnslookup T=remote_smtp H=mx.dest.test [192.0.2.9]: "
                    f"SMTP error from remote mail server after RCPT TO:<{rcpt}>: 550 no",
                )
                truth["FAILCOUNT"] += 1
                continue
            if fate == "local":
                user = rcpt.split("@", maxsplit=1)[0]
                at(d, f"{qid} => {user} <{rcpt}> R=localuser T=local_delivery")
            else:
                flag = "=>" if r == 0 else "->"
                at(
                    d,
                    f"{qid} {flag} {rcpt} R=dnslookup T=remote_smtp H=mx.dest.test "
                    f'[192.0.2.9] C="250 OK"',
                )
            truth["SUCCESSCOUNT"] += 1
            truth["TOTALSIZE"] += size
        if queued:
            truth["INPROGRESSCOUNT"] += 1
        else:
            at(d + timedelta(seconds=1), f"{qid} Completed")
    for _, _, line in sorted(events):
        s.lines.append(line)
    for t_ in s.truth.values():
        t_["DEFERFAILCOUNT"] = t_["DEFERCOUNT"] + t_["FAILCOUNT"]
    return s


FIELDS = (
    "TOTALSIZE",
    "SUCCESSCOUNT",
    "SENDCOUNT",
    "DEFERCOUNT",
    "FAILCOUNT",
    "INPROGRESSCOUNT",
    "DEFERFAILCOUNT",
)


def as_strings(truth: dict[str, dict[str, int]]) -> dict[str, dict[str, str]]:
    return {a: {f: str(v.get(f, 0)) for f in FIELDS} for a, v in truth.items()}
