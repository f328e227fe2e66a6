"""logstats against logs written by a REAL Exim and a REAL Postfix.

The scenario (tests/mta/scenario.py) is played against each MTA running on 127.0.0.1
and relaying to an SMTP sink that answers as real servers do (tests/mta/sink.py):
``250 2.0.0 Ok: queued as ID`` with a fresh id per transaction, multi-line replies, a
``421`` disconnect after the data of one message (deferred, delivered at the next queue
run), a slow end-of-data reply. Each MTA runs it twice: relaying straight to the sink
(a smarthost that re-injects nothing), and with every message handed to a content filter
on loopback (tests/mta/filter.py) that re-injects it into the same MTA, as amavisd-new
does. The expected numbers come from the script, not from the log: what was submitted,
as whom, to which recipients, and what the sink answered at each attempt (the runner
checks the sink's own record of its answers against that prediction). They are the same
with and without the filter. The only log-derived input is the per-message size used
for TOTALSIZE (the MTA adds headers the script cannot predict);
``test_logged_sizes_are_the_bytes_the_next_hop_received`` checks those sizes
independently.

logstats runs with the shipped defaults plus the account map (``tests/mta/record.py
logstats_config``): nothing is tuned for this setup.

Needs root (installs packages on first use, see tests/mta/install.sh). Run with
``pytest -m mta``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.mta.fixtures import LogstatsGetter, ScenarioGetter, serve_config
from tests.mta.runner import ScenarioResult
from tests.mta.scenario import COUNTERS, SUBMISSIONS, simulate
from tests.mta.sink import DATA_QUIRKS, DROPPED

pytestmark = pytest.mark.mta

MTAS = ("exim", "postfix")
VARIANTS = [
    pytest.param(mta, filtered, id=f"{mta}-filter" if filtered else mta)
    for mta in MTAS
    for filtered in (False, True)
]


def test_script_truth_follows_the_counting_rules() -> None:
    """The truth is computed from the script: spot-check it against a hand count.

    alice: m1 (3 ok), m2 (1 fail + 1 ok), m3 (deferred at the first attempt and at both
    queue runs, still queued). bob: m4 (later-b1 deferred twice, then delivered; ok-b1),
    m5 (the sink hangs up with a 421 after its data: deferred once, delivered at the
    first queue run), m12 (defer-b2 three times, still queued; fail-b3). -remote-: 2
    accepted messages plus 2 RCPTs rejected at SMTP time (each one send and one
    failure). -system-: one bounce per message with a delivery-time 550 (m2, m7, m12),
    each delivered. With a content filter every account's numbers are the same.
    """
    sim = simulate()
    sizes = {s.key: 0 for s in SUBMISSIONS} | {f"bounce-{k}-0": 0 for k in ("m2", "m7", "m12")}
    truth = sim.with_sizes(sizes)
    assert {k: truth["alice"][k] for k in COUNTERS if k != "TOTALSIZE"} == {
        "SENDCOUNT": 3,
        "SUCCESSCOUNT": 4,
        "DEFERCOUNT": 3,
        "FAILCOUNT": 1,
        "DEFERFAILCOUNT": 4,
        "INPROGRESSCOUNT": 1,
    }
    assert {k: truth["bob"][k] for k in COUNTERS if k != "TOTALSIZE"} == {
        "SENDCOUNT": 3,
        "SUCCESSCOUNT": 3,
        "DEFERCOUNT": 6,
        "FAILCOUNT": 1,
        "DEFERFAILCOUNT": 7,
        "INPROGRESSCOUNT": 1,
    }
    assert DATA_QUIRKS["m5"] == "drop-once"
    assert sim.sink_attempts["ok-b2@remote.test"] == [DROPPED, 250]
    assert truth["-remote-"]["SENDCOUNT"] == 4
    assert truth["-remote-"]["FAILCOUNT"] == 2
    assert truth["-system-"]["SENDCOUNT"] == 3
    assert truth["-system-"]["SUCCESSCOUNT"] == 3
    assert set(truth) == {"alice", "bob", "lsuser1", "-remote-", "-system-"}
    recipients = {s.key: len(s.accepted) for s in SUBMISSIONS} | dict.fromkeys(sim.bounces, 1)
    for filter_bounces in (False, True):
        filtered = simulate(filtered=True, filter_bounces=filter_bounces)
        assert filtered.with_sizes(sizes) == truth
        assert filtered.sink_attempts == sim.sink_attempts
        assert set(filtered.filter_passes) == {s.key for s in SUBMISSIONS if s.accepted} | (
            set(sim.bounces) if filter_bounces else set()
        )
        # one hand-over line per recipient of each message that passes the filter
        extra = filtered.expected_lines[-1] - sim.expected_lines[-1]
        assert sum(extra.values()) == sum(
            recipients[k] * n for k, n in filtered.filter_passes.items()
        )


@pytest.mark.parametrize(("mta", "filtered"), VARIANTS)
def test_logged_sizes_are_the_bytes_the_next_hop_received(
    mta: str, filtered: bool, mta_scenario: ScenarioGetter
) -> None:
    """For every scripted message, the MTA's logged receipt size (Exim ``S=``, Postfix qmgr
    ``size=``; with a filter, of the first receipt) equals the bytes the MTA's first hop
    received (the sink, or the content filter; Exim counts LF line ends, Postfix CRLF):
    the sizes behind TOTALSIZE are not taken on trust."""
    result = mta_scenario(mta, filtered)
    assert result.sink_sizes, "the next hop received no scripted message"
    if filtered:
        assert set(result.sink_sizes) == {s.key for s in SUBMISSIONS if s.accepted}
    assert {k: result.sizes[k] for k in result.sink_sizes} == result.sink_sizes


def _reply_in_log(mta: str, line: str, text: str) -> bool:
    """``text`` (one SMTP reply line, or lines joined by '\\n') is in ``line`` as the MTA
    logs it: Exim escapes a newline as ``\\n`` (``\\\\n`` inside ``C="..."``), Postfix joins
    the lines of a multi-line reply with a space."""
    parts = text.split("\n")
    if mta == "postfix":
        return " ".join(parts) in line
    return "\\n".join(parts) in line or "\\\\n".join(parts) in line


@pytest.mark.parametrize(("mta", "filtered"), VARIANTS)
def test_the_log_shows_what_the_sink_and_filter_answered(
    mta: str, filtered: bool, mta_scenario: ScenarioGetter
) -> None:
    """A check of the harness, not of logstats: the MTA logged each reply the sink gave
    at the end of the data (``queued as ID``, the multi-line one, the 421 that deferred
    m5), and with a filter each hand-over carries the filter's answer with the
    re-injected message's id (``queued as NEWID`` / ``id=NEWID``), which the MTA logged
    as a receipt before the hand-over line."""
    result = mta_scenario(mta, filtered)
    lines = result.log.read_text().splitlines()
    for tx in result.sink_transactions:
        if tx.data_code is None:
            continue
        reply = "\n".join(tx.data_reply)
        hits = [ln for ln in lines if _reply_in_log(mta, ln, reply)]
        assert hits, f"sink reply not in the log: {reply!r}"
        if tx.data_code == DROPPED:
            assert any(re.search(r" == |status=deferred", ln) for ln in hits), hits
        else:
            assert tx.queue_id and all(tx.queue_id in ln for ln in hits)
            assert not any(re.search(r" == |status=deferred", ln) for ln in hits), hits
    assert any(tx.data_code == DROPPED for tx in result.sink_transactions)
    assert any(len(tx.data_reply) > 1 and tx.data_code == 250 for tx in result.sink_transactions)
    assert len(result.hops) == (len(result.simulation.filter_passes) if filtered else 0)
    for hop in result.hops:
        assert hop.new_id is not None
        at = [i for i, ln in enumerate(lines) if hop.reply in ln]
        assert len(at) == len(hop.recipients), (hop, at)
        receipt = [
            i
            for i, ln in enumerate(lines)
            if re.search(rf"\b{re.escape(hop.new_id)}(?:: client=| <= )", ln)
        ]
        assert len(receipt) == 1 and receipt[0] < min(at), (hop, receipt, at)


@pytest.mark.parametrize(("mta", "filtered"), VARIANTS)
def test_logstats_numbers_equal_the_script_truth(
    mta: str, filtered: bool, logstats_on: LogstatsGetter
) -> None:
    """Backfilling the MTA's log and querying ``emailtrack --all`` gives, for every
    account (alice, bob, lsuser1, -remote-, -system-), exactly the counters the script
    implies: sends, successful recipient deliveries, every deferral event, failures
    (delivery 5xx and SMTP-time RCPT rejects), messages still queued, and TOTALSIZE;
    with the content filter exactly the same (the hop is neither a send nor a delivery)."""
    run = logstats_on(mta, filtered)
    expected = run.result.truth
    got = run.all_accounts()
    assert expected == got


@pytest.mark.parametrize(("mta", "filtered"), VARIANTS)
def test_single_account_query_has_the_cpanel_envelope(
    mta: str, filtered: bool, logstats_on: LogstatsGetter
) -> None:
    """``emailtrack --account alice`` answers in cPanel's API2 envelope
    (``cpanelresult`` with apiversion 2, func ``stats``, module ``EmailTrack``, event
    result 1) with one data row whose counters are alice's truth as strings."""
    run = logstats_on(mta, filtered)
    expected_row = {k: str(v) for k, v in run.result.truth["alice"].items()}
    got = run.query("--account", "alice")
    assert isinstance(got, dict)
    assert set(got) == {"cpanelresult"}
    envelope = got["cpanelresult"]
    assert {k: envelope.get(k) for k in ("apiversion", "func", "event", "module")} == {
        "apiversion": 2,
        "func": "stats",
        "event": {"result": 1},
        "module": "EmailTrack",
    }
    assert len(envelope["data"]) == 1
    row = envelope["data"][0]
    assert expected_row == {k: row.get(k) for k in COUNTERS}


@pytest.mark.parametrize(("mta", "filtered"), VARIANTS)
def test_serve_follows_the_live_mta_log_to_the_truth(
    mta: str, filtered: bool, tmp_path: Path
) -> None:
    """``logstats serve`` follows the MTA's own log while the scenario sends mail (started
    as soon as the MTA runs, before any message); once the script is done, its answers
    equal the script's ground truth for every account, with and without the filter."""
    from tests.daemon_harness import Serve, short_dir
    from tests.mta.runner import run_scenario

    with short_dir() as folder:
        served: list[Serve] = []

        def follow(log_path: Path) -> Callable[[ScenarioResult], None]:
            daemon = Serve(serve_config(folder, log_path, mta))
            served.append(daemon)
            daemon.wait_ready()

            def check(result: ScenarioResult) -> None:
                expected = {
                    account: {k: str(v) for k, v in row.items()}
                    for account, row in result.truth.items()
                }
                assert expected == daemon.wait_stats(expected, timeout=30.0)

            return check

        try:
            run_scenario(mta, tmp_path / "live", follow=follow, filtered=filtered)
        finally:
            for daemon in served:
                daemon.close()
