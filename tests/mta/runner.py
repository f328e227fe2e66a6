"""Run the scenario against one real MTA and return its log and the ground truth."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .common import HarnessError, install, tail, wait_lines
from .exim import Exim
from .postfix import Postfix
from .scenario import LATER_OK, QUEUE_RUNS, SUBMISSIONS, Truth, simulate
from .sink import Sink, free_port

DRIVERS = {"exim": Exim, "postfix": Postfix}


@dataclass
class ScenarioResult:
    """What one scenario run produced."""

    mta: str
    log: Path
    """Copy of the MTA's log file after the scenario."""
    truth: dict[str, dict[str, int]]
    """``{account: {COUNTER: int}}`` from the script (TOTALSIZE: see ``sizes``)."""
    sizes: dict[str, int]
    """Scenario message key -> size the MTA logged at receipt (Exim S=, Postfix size=)."""
    sink_sizes: dict[str, int]
    """Scenario message key -> bytes the sink received (remote deliveries only), with the
    line ends the MTA counts (Exim: LF, Postfix: CRLF)."""
    simulation: Truth
    sink_messages: int = 0
    notes: list[str] = field(default_factory=list)


def next_second() -> None:
    """Sleep past the next whole second.

    Both MTAs stamp lines to the second. Without this, a retry in queue run k+1 can
    write a line byte-identical to the one of run k (same message, recipient, answer
    and second); log readers may rightly treat such lines as one (duplicate input), so
    the scenario keeps every retry in a later second than the previous attempt.
    """
    time.sleep(1.02 - time.time() % 1)


def benign_duplicates(lines: list[str]) -> set[str]:
    """Identical lines that carry no delivery event (Postfix connect/disconnect)."""
    return {ln for ln in lines if re.search(r"\b(connect|disconnect) from ", ln)}


def run_scenario(
    mta: str,
    outdir: Path,
    follow: Callable[[Path], Callable[[ScenarioResult], None]] | None = None,
) -> ScenarioResult:
    """Install (if needed), start sink and MTA, play the script, stop everything.

    The MTA log is only read to wait for the expected delivery lines (no fixed sleeps)
    and for the receipt sizes; the counters of the truth come from ``simulate()``.

    ``follow(log_path)``, when given, is called once the MTA runs (e.g. to start
    ``logstats serve`` on its live log) and returns a check that gets the result before
    the MTA is stopped.
    """
    install()
    outdir.mkdir(parents=True, exist_ok=True)
    sim = simulate()
    sink = Sink(port=free_port()).start()
    driver = DRIVERS[mta](port=free_port(), sink_port=sink.port)
    try:
        driver.start()
        check = follow(driver.log_path) if follow is not None else None
        for sub in SUBMISSIONS:
            refused = driver.submit(sub)
            if sorted(refused) != sorted(sub.rejected):
                raise HarnessError(
                    f"{sub.key}: refused {refused}, script expects "
                    f"{sub.rejected}\n{tail(driver.log_path)}"
                )
        wait_lines(driver.outcome_counts, sim.expected_lines[0], driver.log_path)
        for phase in range(1, QUEUE_RUNS + 1):
            for address, first_ok in LATER_OK.items():
                if first_ok == phase:
                    sink.set_ok(address)
            next_second()
            driver.queue_run()
            wait_lines(driver.outcome_counts, sim.expected_lines[phase], driver.log_path)
        driver.finish()
        lines = [ln for ln in driver.log_path.read_text().splitlines() if ln.strip()]
        dups = sorted({ln for ln in lines if lines.count(ln) > 1} - benign_duplicates(lines))
        if dups:
            raise HarnessError("identical delivery lines (same second):\n" + "\n".join(dups))
        sizes = driver.logged_sizes(sim)
        missing = set(sim.messages) - set(sizes)
        if missing:
            raise HarnessError(f"no logged size for {sorted(missing)}")
        sink_sizes: dict[str, int] = {}
        for rec in sink.received:
            if rec.message_id and rec.message_id.endswith("@scenario.logstats.test>"):
                key = rec.message_id[1:].split("@", 1)[0]
                sink_sizes[key] = rec.crlf_size if driver.crlf_sizes else rec.size
        log = outdir / f"{mta}.log"
        shutil.copyfile(driver.log_path, log)
        result = ScenarioResult(
            mta, log, sim.with_sizes(sizes), sizes, sink_sizes, sim, len(sink.received)
        )
        if check is not None:
            check(result)
        return result
    finally:
        driver.stop()
        sink.stop()
