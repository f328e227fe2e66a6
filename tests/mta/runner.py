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
from .filter import ContentFilter, Pass
from .postfix import Postfix
from .scenario import LATER_OK, QUEUE_RUNS, SUBMISSIONS, Truth, simulate
from .sink import Sink, Transaction, free_port, scenario_key

DRIVERS: dict[str, type[Exim] | type[Postfix]] = {"exim": Exim, "postfix": Postfix}


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
    filtered: bool = False
    """Every message went through the content filter and was re-injected."""
    hops: list[Pass] = field(default_factory=list)
    """The filter's record of each hand-over (empty without a filter)."""
    sink_transactions: list[Transaction] = field(default_factory=list)
    """Every MAIL transaction the sink answered, in order."""

    @property
    def variant(self) -> str:
        return f"{self.mta}-filter" if self.filtered else self.mta


def next_second() -> None:
    """Sleep past the next whole second.

    Both MTAs stamp lines to the second. Without this, a retry in queue run k+1 can
    write a line byte-identical to the one of run k (same message, recipient, answer
    and second); log readers may rightly treat such lines as one (duplicate input), so
    the scenario keeps every retry in a later second than the previous attempt.
    """
    time.sleep(1.02 - time.time() % 1)  # clock-ok: the real MTAs stamp lines by the real second


DELIVERY_LINE = re.compile(r" status=| (=>|->|\*\*|==) ")
"""A line that carries one recipient's delivery outcome: Postfix ``status=``, Exim's
``=>``/``->``/``**``/``==``."""


def benign_duplicates(lines: list[str]) -> set[str]:
    """Identical lines that carry no delivery outcome: Postfix connect/disconnect, qmgr's
    ``from=`` when a deferred message re-enters the active queue within the second (one
    send however often it is logged), a remote reply text logged once per recipient."""
    return {ln for ln in lines if not DELIVERY_LINE.search(ln)}


def run_scenario(
    mta: str,
    outdir: Path,
    follow: Callable[[Path], Callable[[ScenarioResult], None]] | None = None,
    *,
    filtered: bool = False,
) -> ScenarioResult:
    """Install (if needed), start sink (and filter) and MTA, play the script, stop everything.

    The MTA log is only read to wait for the expected delivery lines (no fixed sleeps)
    and for the receipt sizes; the counters of the truth come from ``simulate()``, and
    what the sink and the filter recorded they answered must be what it predicted.

    ``follow(log_path)``, when given, is called once the MTA runs (e.g. to start
    ``logstats serve`` on its live log) and returns a check that gets the result before
    the MTA is stopped.
    """
    install()
    outdir.mkdir(parents=True, exist_ok=True)
    cls = DRIVERS[mta]
    sim = simulate(filtered=filtered, filter_bounces=cls.filters_bounces)
    sink = Sink(port=free_port()).start()
    filt: ContentFilter | None = None
    if filtered:
        reinject_port = free_port()
        filt = ContentFilter(reinject_port, cls.filter_style).start()
        driver = cls(free_port(), sink.port, filter_port=filt.port, reinject_port=reinject_port)
    else:
        driver = cls(free_port(), sink.port)
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
        check_sink(sink, sim)
        hops = check_filter(filt, sim, driver.receipt_ids()) if filt is not None else []
        sizes = driver.logged_sizes(sim)
        missing = set(sim.messages) - set(sizes)
        if missing:
            raise HarnessError(f"no logged size for {sorted(missing)}")
        # The bytes the MTA sent at its first hand-over of each message: to the filter
        # when there is one (the sink then gets the re-injected copy, a few headers
        # larger), else to the sink.
        first_hop: list[tuple[str | None, int, int]] = (
            [(h.message_id, h.size, h.crlf_size) for h in hops]
            if filtered
            else [(r.message_id, r.size, r.crlf_size) for r in sink.received]
        )
        sink_sizes: dict[str, int] = {}
        for message_id, size, crlf_size in first_hop:
            key = scenario_key(message_id)
            if key is not None:
                sink_sizes.setdefault(key, crlf_size if driver.crlf_sizes else size)
        log = outdir / f"{mta}.log"
        shutil.copyfile(driver.log_path, log)
        result = ScenarioResult(
            mta,
            log,
            sim.with_sizes(sizes),
            sizes,
            sink_sizes,
            sim,
            len(sink.received),
            filtered=filtered,
            hops=hops,
            sink_transactions=list(sink.transactions),
        )
        if check is not None:
            check(result)
        return result
    finally:
        driver.stop()
        sink.stop()
        if filt is not None:
            filt.stop()


def check_sink(sink: Sink, sim: Truth) -> None:
    """The sink answered every recipient's attempts as the script predicted, and every
    accepted transaction got its own ``queued as`` id."""
    got = sink.attempts()
    if got != sim.sink_attempts:
        diff = {
            a: (got.get(a), sim.sink_attempts.get(a))
            for a in sorted(set(got) | set(sim.sink_attempts))
            if got.get(a) != sim.sink_attempts.get(a)
        }
        raise HarnessError(f"sink answers differ from the script (got, predicted): {diff}")
    ids = [r.queue_id for r in sink.received]
    if len(set(ids)) != len(ids):
        raise HarnessError(f"the sink reused a queue id: {ids}")


def check_filter(filt: ContentFilter, sim: Truth, receipts: set[str]) -> list[Pass]:
    """Every message passed the filter as often as the script says, each re-injection
    was accepted with a new queue id, and the MTA logged that id's receipt."""
    if filt.failures:
        raise HarnessError(f"content filter failures: {filt.failures}")
    passes = list(filt.passes)
    by_key: dict[str, int] = {}
    for hop in passes:
        key = scenario_key(hop.message_id)
        if key is None and hop.sender == "":
            key = "bounce"
        if key is not None:
            by_key[key] = by_key.get(key, 0) + 1
    want: dict[str, int] = {}
    for key, n in sim.filter_passes.items():
        name = "bounce" if key in sim.bounces else key
        want[name] = want.get(name, 0) + n
    if by_key != want:
        raise HarnessError(f"filter passes (got {by_key}, script {want})")
    unseen = [h.new_id for h in passes if h.new_id is None or h.new_id not in receipts]
    if unseen:
        raise HarnessError(f"re-injected ids never received by the MTA: {unseen}")
    return passes
