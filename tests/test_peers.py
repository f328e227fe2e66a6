"""Peer oracles: pflogsumm (Postfix) and eximstats (Exim) on the real-MTA logs.

Each peer's grand totals are compared twice: with what the scenario script implies
(so a disagreement there is a harness or peer matter, not a logstats one) and with the
sum over accounts of logstats' ``emailtrack --all`` numbers. Where a peer counts
something else by definition, the test names the difference and asserts the exact
relation. Run with ``pytest -m peer`` (also selected by ``-m mta``: it needs the MTAs).
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from tests.mta.scenario import SUBMISSIONS

pytestmark = [pytest.mark.peer, pytest.mark.mta]

PFLOGSUMM = "/usr/sbin/pflogsumm"
EXIMSTATS = "/usr/sbin/eximstats"
UNITS = {"": 1, "k": 1024, "m": 1024 * 1024}


def _peer(cmd: list[str]) -> str:
    res = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    assert res.returncode == 0, f"{cmd}: {res.stdout}\n{res.stderr}"
    return res.stdout


def pflogsumm_totals(log: Path) -> dict[str, int]:
    """The "Grand Totals" block of pflogsumm as ``{label: int}`` (k/m suffixes scaled)."""
    text = _peer([PFLOGSUMM, "-e", str(log)])
    block = text.split("Grand Totals", 1)[1].split("\n\n\n", 1)[0]
    totals: dict[str, int] = {}
    for m in re.finditer(
        r"^\s*(\d+)([km]?)\s+([a-z][a-z /-]*?)\s*(?:\((\d+)\s+deferrals\)|"
        r"\(\d+%\))?\s*$",
        block,
        re.MULTILINE,
    ):
        totals[m.group(3)] = int(m.group(1)) * UNITS[m.group(2)]
        if m.group(4):
            totals["deferrals"] = int(m.group(4))
    return totals


def eximstats_totals(log: Path) -> dict[str, int]:
    """The "Grand total summary" of ``eximstats -nvr`` (bytes, no rounding)."""
    text = _peer([EXIMSTATS, "-nvr", "-nr", "-nt", "-t0", "-h0", "-q0", str(log)])
    block = text.split("Grand total summary", 1)[1].split("\n\n", 1)[0]
    out: dict[str, int] = {}
    if m := re.search(
        r"^\s*Received\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+[\d.]+%\s+(\d+)\s+"
        r"[\d.]+%",
        block,
        re.MULTILINE,
    ):
        out |= {
            "received_volume": int(m.group(1)),
            "received_messages": int(m.group(2)),
            "delayed_messages": int(m.group(4)),
            "failed_messages": int(m.group(5)),
        }
    if m := re.search(r"^\s*Delivered\s+(\d+)\s+(\d+)\s+(\d+)", block, re.MULTILINE):
        out |= {
            "delivered_volume": int(m.group(1)),
            "delivered_messages": int(m.group(2)),
            "delivered_addresses": int(m.group(3)),
        }
    m = re.search(r"^\s*Rejects\s+(\d+)", block, re.MULTILINE)
    out["rejects"] = int(m.group(1)) if m else 0
    assert {"received_messages", "delivered_addresses"} <= set(out), text
    return out


def _sums(accounts: dict[str, dict[str, int]]) -> Counter[str]:
    total: Counter[str] = Counter()
    for row in accounts.values():
        total.update(row)
    return total


def _script_facts(sim) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Totals the script implies that are not per-account counters."""
    messages = sim.messages.values()
    return {
        "scripted_accepted": sum(1 for s in SUBMISSIONS if s.accepted),
        "bounces": len(sim.bounces),
        "rejected": sim.rejected_rcpts,
        "delivery_failures": sum(c["FAILCOUNT"] for c in sim.counts.values()) - sim.rejected_rcpts,
        "messages_deferred": sum(1 for m in messages if m.deferrals),
        "messages_failed": len(set(sim.bounces.values())),
    }


# -- pflogsumm ---------------------------------------------------------------------


def pflogsumm_expected(sums: Counter[str], system_sends: int) -> dict[str, int]:
    """pflogsumm's totals expressed in logstats' counters summed over accounts.

    * ``received`` counts smtpd ``client=`` and pickup ``uid=`` lines: messages the
      server received, without bounces made by Postfix's bounce daemon (-system-) and
      without rejected RCPTs (SENDCOUNT counts those): received = SEND - rejected -
      -system- SEND.
    * ``delivered`` counts ``status=sent`` lines, one per recipient: = SUCCESS.
    * ``deferrals`` counts ``status=deferred`` lines: = DEFER.
    * ``bounced`` counts ``status=bounced`` lines (delivery-time 5xx); ``rejected``
      counts SMTP-time rejects: bounced + rejected = FAIL.
    * ``bytes delivered`` sums the message size per ``status=sent`` recipient: = TOTALSIZE.
    """
    return {
        "received + rejected": sums["SENDCOUNT"] - system_sends,
        "delivered": sums["SUCCESSCOUNT"],
        "deferrals": sums["DEFERCOUNT"],
        "bounced + rejected": sums["FAILCOUNT"],
        "bytes delivered": sums["TOTALSIZE"],
    }


def _pflogsumm_view(p: dict[str, int]) -> dict[str, int]:
    return {
        "received + rejected": p["received"] + p["rejected"],
        "delivered": p["delivered"],
        "deferrals": p["deferrals"],
        "bounced + rejected": p["bounced"] + p["rejected"],
        "bytes delivered": p["bytes delivered"],
    }


def test_pflogsumm_agrees_with_the_script(mta_scenario) -> None:
    """pflogsumm's totals on the Postfix log equal what the script implies, including
    the ones logstats does not report: ``received`` = scripted accepted messages,
    ``rejected`` = RCPTs rejected at SMTP time, ``bounced`` = delivery-time failures,
    ``deferred`` = messages with at least one deferral (not deferral events), and
    ``bytes received`` = sum of receipt sizes of the scripted messages (bounces are not
    "received" by pflogsumm)."""
    result = mta_scenario("postfix")
    p = pflogsumm_totals(result.log)
    facts = _script_facts(result.simulation)
    truth_sums = _sums(result.truth)
    assert _pflogsumm_view(p) == pflogsumm_expected(
        truth_sums, result.truth["-system-"]["SENDCOUNT"]
    )
    assert p["received"] == facts["scripted_accepted"]
    assert p["rejected"] == facts["rejected"]
    assert p["bounced"] == facts["delivery_failures"]
    assert p["deferred"] == facts["messages_deferred"]
    assert p["bytes received"] == sum(result.sizes[s.key] for s in SUBMISSIONS if s.accepted)


def test_pflogsumm_agrees_with_logstats(logstats_on) -> None:
    """The same relations as above hold for logstats' per-account numbers summed over
    accounts (see :func:`pflogsumm_expected` for what differs by definition)."""
    run = logstats_on("postfix")
    p = pflogsumm_totals(run.result.log)
    accounts = run.all_accounts()
    system_sends = accounts.get("-system-", {}).get("SENDCOUNT", 0)
    assert _pflogsumm_view(p) == pflogsumm_expected(_sums(accounts), system_sends)


# -- eximstats ---------------------------------------------------------------------


def batched_delivery_bytes(log: Path) -> int:
    """Sum of message sizes over ``->`` lines (extra recipients delivered in the same
    SMTP transaction as a preceding ``=>``), read from the log itself."""
    size: dict[str, int] = {}
    total = 0
    for line in log.read_text().splitlines():
        if m := re.match(r"^\S+ \S+ (\S+) <= .*?\bS=(\d+)", line):
            size[m.group(1)] = int(m.group(2))
        elif m := re.match(r"^\S+ \S+ (\S+) -> ", line):
            total += size[m.group(1)]
    return total


def eximstats_expected(sums: Counter[str], rejects: int, batched_bytes: int) -> dict[str, int]:
    """eximstats' totals expressed in logstats' counters summed over accounts.

    * Received messages count ``<=`` lines, bounces (-system-) included, rejects not:
      received + Rejects = SEND.
    * Delivered Addresses count ``=>`` and ``->`` lines: = SUCCESS.
    * Delivered Volume adds the size once per ``=>`` line only (a ``->`` recipient
      rides in the same transaction): = TOTALSIZE - sizes of the ``->`` lines.
    * Failed = messages with at least one ``**`` line; in this scenario each failing
      message has exactly one failed recipient, so Failed + Rejects = FAIL.
    """
    return {
        "received + rejects": sums["SENDCOUNT"],
        "delivered addresses": sums["SUCCESSCOUNT"],
        "delivered volume": sums["TOTALSIZE"] - batched_bytes,
        "failed + rejects": sums["FAILCOUNT"],
        "rejects": rejects,
    }


def _eximstats_view(e: dict[str, int]) -> dict[str, int]:
    return {
        "received + rejects": e["received_messages"] + e["rejects"],
        "delivered addresses": e["delivered_addresses"],
        "delivered volume": e["delivered_volume"],
        "failed + rejects": e["failed_messages"] + e["rejects"],
        "rejects": e["rejects"],
    }


def test_eximstats_agrees_with_the_script(mta_scenario) -> None:
    """eximstats' totals on the Exim log equal what the script implies: Received =
    accepted messages including Exim's bounces, Rejects = SMTP-time RCPT rejects,
    Delayed = messages with at least one deferral, Failed = messages with a delivery
    failure, Received Volume = sum of all receipt sizes (bounces included)."""
    result = mta_scenario("exim")
    e = eximstats_totals(result.log)
    facts = _script_facts(result.simulation)
    assert _eximstats_view(e) == eximstats_expected(
        _sums(result.truth), facts["rejected"], batched_delivery_bytes(result.log)
    )
    assert e["received_messages"] == facts["scripted_accepted"] + facts["bounces"]
    assert e["delayed_messages"] == facts["messages_deferred"]
    assert e["failed_messages"] == facts["messages_failed"]
    assert e["received_volume"] == sum(result.sizes.values())


def test_eximstats_agrees_with_logstats(logstats_on) -> None:
    """The same relations hold for logstats' numbers summed over accounts (see
    :func:`eximstats_expected`); the reject count is eximstats' own (logstats folds
    rejects into SEND and FAIL of -remote-)."""
    run = logstats_on("exim")
    e = eximstats_totals(run.result.log)
    assert _eximstats_view(e) == eximstats_expected(
        _sums(run.all_accounts()), e["rejects"], batched_delivery_bytes(run.result.log)
    )
