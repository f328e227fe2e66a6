"""logstats against logs written by a REAL Exim and a REAL Postfix.

The scenario (tests/mta/scenario.py) is played against each MTA running on 127.0.0.1
and relaying to an SMTP sink that answers 250/451/550 by recipient. The expected
numbers come from the script, not from the log: what was submitted, as whom, to which
recipients, and what the sink answered at each attempt. The only log-derived input is
the per-message size used for TOTALSIZE (the MTA adds headers the script cannot
predict); ``test_logged_sizes_are_the_bytes_the_sink_received`` checks those sizes
independently against the bytes the sink received.

Needs root (installs packages on first use, see tests/mta/install.sh). Run with
``pytest -m mta``.
"""

from __future__ import annotations

import pytest

from tests.mta.scenario import COUNTERS, SUBMISSIONS, simulate

pytestmark = pytest.mark.mta

MTAS = ("exim", "postfix")


def test_script_truth_follows_the_counting_rules() -> None:
    """The truth is computed from the script: spot-check it against a hand count.

    alice: m1 (3 ok), m2 (1 fail + 1 ok), m3 (deferred at the first attempt and at both
    queue runs, still queued). -remote-: 2 accepted messages plus 2 RCPTs rejected at
    SMTP time (each one send and one failure). -system-: one bounce per message with a
    delivery-time 550 (m2, m7, m12), each delivered.
    """
    truth = simulate().with_sizes(
        {s.key: 0 for s in SUBMISSIONS} | {f"bounce-{k}-0": 0 for k in ("m2", "m7", "m12")}
    )
    assert {k: truth["alice"][k] for k in COUNTERS if k != "TOTALSIZE"} == {
        "SENDCOUNT": 3,
        "SUCCESSCOUNT": 4,
        "DEFERCOUNT": 3,
        "FAILCOUNT": 1,
        "DEFERFAILCOUNT": 4,
        "INPROGRESSCOUNT": 1,
    }
    assert truth["-remote-"]["SENDCOUNT"] == 4
    assert truth["-remote-"]["FAILCOUNT"] == 2
    assert truth["-system-"]["SENDCOUNT"] == 3
    assert truth["-system-"]["SUCCESSCOUNT"] == 3
    assert set(truth) == {"alice", "bob", "lsuser1", "-remote-", "-system-"}


@pytest.mark.parametrize("mta", MTAS)
def test_logged_sizes_are_the_bytes_the_sink_received(mta, mta_scenario) -> None:
    """For every scripted message the sink received, the MTA's logged receipt size
    (Exim ``S=``, Postfix qmgr ``size=``) equals the bytes the sink got (Exim counts LF
    line ends, Postfix CRLF): the sizes behind TOTALSIZE are not taken on trust."""
    result = mta_scenario(mta)
    assert result.sink_sizes, "the sink received no scripted message"
    assert {k: result.sizes[k] for k in result.sink_sizes} == result.sink_sizes


@pytest.mark.parametrize("mta", MTAS)
def test_logstats_numbers_equal_the_script_truth(mta, logstats_on) -> None:
    """Backfilling the MTA's log and querying ``emailtrack --all`` gives, for every
    account (alice, bob, lsuser1, -remote-, -system-), exactly the counters the script
    implies: sends, successful recipient deliveries, every deferral event, failures
    (delivery 5xx and SMTP-time RCPT rejects), messages still queued, and TOTALSIZE."""
    run = logstats_on(mta)
    expected = run.result.truth
    got = run.all_accounts()
    assert expected == got


@pytest.mark.parametrize("mta", MTAS)
def test_single_account_query_has_the_cpanel_envelope(mta, logstats_on) -> None:
    """``emailtrack --account alice`` answers in cPanel's API2 envelope
    (``cpanelresult`` with apiversion 2, func ``stats``, module ``EmailTrack``, event
    result 1) with one data row whose counters are alice's truth as strings."""
    run = logstats_on(mta)
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


@pytest.mark.parametrize("mta", MTAS)
def test_serve_follows_the_live_mta_log_to_the_truth(mta, tmp_path) -> None:
    """``logstats serve`` follows the MTA's own log while the scenario sends mail (started
    as soon as the MTA runs, before any message); once the script is done, its answers
    equal the script's ground truth for every account."""
    from tests.daemon_harness import Serve, short_dir, write_config
    from tests.mta.runner import run_scenario

    with short_dir() as folder:
        served: list[Serve] = []

        def follow(log_path):
            cfg = write_config(folder, [(log_path, mta)])
            daemon = Serve(cfg)
            served.append(daemon)
            daemon.wait_ready()

            def check(result) -> None:
                expected = {
                    account: {k: str(v) for k, v in row.items()}
                    for account, row in result.truth.items()
                }
                assert expected == daemon.wait_stats(expected, timeout=30.0)

            return check

        try:
            run_scenario(mta, tmp_path / "live", follow=follow)
        finally:
            for daemon in served:
                daemon.close()
