"""``/metrics``: the store's numbers (and the daemon's own state) as Prometheus metrics.

Rendered by ``prometheus_client`` on every scrape: a ``Collector`` yields metric families
read from the store through the request's own cursor, and ``generate_latest`` writes the
text (label values escaped as the exposition format wants: a newline or a quote in an
account or tag taken from a log stays inside its label).  Each metric counts one unit,
named in its name: messages, recipients, deferrals, bytes, lines, seconds.

Every counter is all-time and read from the store, so it survives restarts; only the
daemon's own state (lines read since start, lag, in-flight messages, process metrics) is
of the running process.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import duckdb
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from logstats.model import DELAY, HISTOGRAM_BOUNDS, INF_BOUND, SIZE
from logstats.store import anomaly_rows, histogram_rows, metric_rows

CONTENT_TYPE = CONTENT_TYPE_LATEST

# metric -> (name, help, stored units per exposed unit)
HISTOGRAMS: dict[str, tuple[str, str, int]] = {
    DELAY: (
        "logstats_delivery_delay_seconds",
        "Time from a message's receipt to the delivery of one recipient (Postfix delay=, "
        "Exim QT= where log_selector has +queue_time), by MTA.",
        1000,
    ),
    SIZE: (
        "logstats_message_size_bytes",
        "Size of each accepted message, as logged at receipt (Postfix size=, Exim S=), by MTA.",
        1,
    ),
}


def build_version() -> str:
    try:
        return version("logstats")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


class StoreCollector(Collector):
    """The store's all-time numbers, read through ``cursor`` when collected; ``status``
    (the daemon's ``status()``) adds what only the running daemon knows."""

    def __init__(
        self,
        cursor: duckdb.DuckDBPyConnection,
        *,
        per_account: bool = False,
        status: dict[str, Any] | None = None,
    ) -> None:
        self.cursor = cursor
        self.per_account = per_account
        self.status = status

    def collect(self) -> Iterable[Metric]:
        mail, unknown, accounts = metric_rows(self.cursor, self.per_account)
        info = InfoMetricFamily("logstats_build", "The logstats version serving these metrics.")
        info.add_metric([], {"version": build_version()})
        yield info
        yield from _mail(mail, ["mta", "host"], "")
        if accounts is not None:
            yield from _mail([((a,), o, n) for a, o, n in accounts], ["account"], "account_")
        yield from _histograms(histogram_rows(self.cursor))
        unparsed = CounterMetricFamily(
            "logstats_unknown_lines",
            "Log lines no grammar rule recognised, by MTA and reason.",
            labels=["mta", "reason"],
        )
        for mta, reason, n in unknown:
            unparsed.add_metric([mta, reason], n)
        yield unparsed
        anomalies = CounterMetricFamily(
            "logstats_anomalies",
            "Inconsistencies met in the logs or the store and resolved, by MTA and kind.",
            labels=["mta", "kind"],
        )
        for mta, kind, n in anomaly_rows(self.cursor):
            anomalies.add_metric([mta, kind], n)
        yield anomalies
        if self.status is not None:
            yield from _daemon(self.status)


def _mail(
    rows: Sequence[tuple[Sequence[str], str, int]], labels: list[str], prefix: str
) -> Iterator[Metric]:
    """The counters of ``metric_rows`` ((key, outcome, total); key: the values of
    ``labels``, an MTA and syslog host or an account), one metric per unit."""
    by = (
        "by MTA and syslog host (empty where the log names none)"
        if labels[0] == "mta"
        else "by account (api.metrics_per_account)"
    )
    accepted = CounterMetricFamily(
        f"logstats_{prefix}messages_accepted",
        f"Messages accepted by the MTA and attributed (RCPT rejects not included), {by}.",
        labels=labels,
    )
    expired = CounterMetricFamily(
        f"logstats_{prefix}messages_expired",
        f"Messages in flight that logstats stopped waiting for (correlation.ttl), {by}.",
        labels=labels,
    )
    recipients = CounterMetricFamily(
        f"logstats_{prefix}recipients",
        "Recipients with a final outcome: delivered, failed (bounced or expired in the "
        f"queue) or rejected at RCPT time, {by}.",
        labels=[*labels, "outcome"],
    )
    deferrals = CounterMetricFamily(
        f"logstats_{prefix}deferrals",
        f"Delivery attempts deferred (one recipient may be deferred many times), {by}.",
        labels=labels,
    )
    delivered = CounterMetricFamily(
        f"logstats_{prefix}delivered_bytes",
        f"Message size summed over delivered recipients, {by}.",
        labels=labels,
    )
    for key, outcome, n in rows:
        if outcome == "send":
            accepted.add_metric(key, n)
        elif outcome == "expired":
            expired.add_metric(key, n)
        elif outcome in ("delivered", "failed", "rejected"):
            recipients.add_metric([*key, outcome], n)
        elif outcome == "deferred":
            deferrals.add_metric(key, n)
        elif outcome == "bytes_delivered":
            delivered.add_metric(key, n)
    yield from (accepted, recipients, deferrals, delivered, expired)


def _histograms(rows: list[tuple[str, str, int, int, int]]) -> Iterator[Metric]:
    """Cumulative buckets from the stored per-bucket counts (a bound no longer among the
    fixed ones is counted in the next one up)."""
    for metric, (name, text, scale) in HISTOGRAMS.items():
        bounds = HISTOGRAM_BOUNDS[metric]
        family = HistogramMetricFamily(name, text, labels=["mta"])
        per_mta: dict[str, tuple[list[int], list[int]]] = {}
        for mta, m, le, n, total in rows:
            if m != metric:
                continue
            counts, sums = per_mta.setdefault(mta, ([0] * (len(bounds) + 1), [0]))
            i = len(bounds) if le == INF_BOUND else bisect_left(bounds, le)
            counts[i] += n
            sums[0] += total
        for mta, (counts, sums) in sorted(per_mta.items()):
            buckets, running = [], 0
            for bound, n in zip((*bounds, None), counts, strict=True):
                running += n
                le_text = "+Inf" if bound is None else repr(bound / scale)
                buckets.append((le_text, float(running)))
            family.add_metric([mta], buckets, sums[0] / scale)
        yield family


def _daemon(status: dict[str, Any]) -> Iterator[Metric]:
    lines = CounterMetricFamily(
        "logstats_lines_read",
        "Log lines read by this daemon since it started, by source file.",
        labels=["source"],
    )
    for source, n in sorted(status.get("lines_by_source", {}).items()):
        lines.add_metric([source], n)
    yield lines
    lag = GaugeMetricFamily(
        "logstats_lag_seconds", "Seconds between the newest log line read and now."
    )
    if status.get("lag_s") is not None:
        lag.add_metric([], float(status["lag_s"]))
    yield lag
    yield GaugeMetricFamily(
        "logstats_commit_seconds",
        "Duration of the last commit to the store.",
        value=float(status.get("commit_s", 0.0)),
    )
    yield GaugeMetricFamily(
        "logstats_in_flight_messages",
        "Messages accepted and not yet completed, held by the correlator.",
        value=int(status.get("in_flight", 0)),
    )


def render(
    cursor: duckdb.DuckDBPyConnection,
    *,
    per_account: bool = False,
    status: dict[str, Any] | None = None,
) -> str:
    """The exposition text of one scrape.  ``status``: the daemon's ``status()``, which
    adds its own metrics and those of its process (``process_*``, ``python_*``); None
    where there is no daemon (the CLI reading the store itself)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(cursor, per_account=per_account, status=status))
    if status is not None:
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(collector)
    return generate_latest(registry).decode()
