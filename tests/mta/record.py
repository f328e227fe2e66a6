"""Regenerate tests/mta/samples/{exim,postfix}.log and .truth.json from the real MTAs.

Run as root from the repository root::

    .venv/bin/python -m tests.mta.record            # both MTAs
    .venv/bin/python -m tests.mta.record postfix    # one

The ``.truth.json`` holds ``truth`` (per-account counters from the script), ``sizes``
(message key -> size the MTA logged at receipt, the one input of TOTALSIZE not from the
script), ``sink_sizes`` (bytes the sink received, an independent check of those sizes),
``tags`` / ``recipient_domains`` / ``sender_domains`` (per-dimension numbers from the
script, see :class:`tests.mta.scenario.Truth`) and ``config`` (the logstats config the
tests use for this log).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from .runner import DRIVERS, ScenarioResult, run_scenario
from .scenario import DOMAINS

SAMPLES = Path(__file__).with_name("samples")


def logstats_config() -> dict[str, object]:
    """The logstats configuration for the scenario's logs (as a YAML-able dict): the
    shipped defaults plus the account map, nothing tuned (no correlation settings, no
    time zone: the MTAs stamp in the machine's zone, which is logstats' default)."""
    return {"accounts": {"domains": dict(DOMAINS)}}


def truth_document(result: ScenarioResult) -> dict[str, object]:
    return {
        "mta": result.mta,
        "truth": result.truth,
        "sizes": result.sizes,
        "sink_sizes": result.sink_sizes,
        "tags": result.simulation.tags,
        "recipient_domains": result.simulation.recipient_domains,
        "sender_domains": result.simulation.sender_domains,
        "config": logstats_config(),
        "note": "truth counters come from tests/mta/scenario.py; TOTALSIZE = sum over "
        "successful deliveries of sizes[key] (the MTA's receipt size). tags: per X-Tag value "
        "{messages accepted, deliveries, deferred (events), failed}; recipient_domains and "
        "sender_domains: outcome events per recipient (bounces included), failed includes "
        "the RCPT-time rejected.",
    }


def main(argv: list[str]) -> int:
    SAMPLES.mkdir(exist_ok=True)
    for mta in argv or sorted(DRIVERS):
        with tempfile.TemporaryDirectory() as tmp:
            result = run_scenario(mta, Path(tmp))
            (SAMPLES / f"{mta}.log").write_bytes(result.log.read_bytes())
        (SAMPLES / f"{mta}.truth.json").write_text(
            json.dumps(truth_document(result), indent=2, sort_keys=True) + "\n"
        )
        print(f"wrote {SAMPLES / mta}.log and .truth.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
