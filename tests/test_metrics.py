"""``/metrics`` as Prometheus tools read it.

- A running ``logstats serve`` (following copies of the real MTAs' logs of
  tests/mta/samples) answers ``/metrics`` with prometheus_client's content type, and
  ``promtool check metrics`` (Debian package prometheus, installed by tests/mta/install.sh)
  reports nothing: no error and no lint warning.  The answer carries the process metrics,
  ``logstats_build_info`` and the histograms, and the histograms and counters are the same
  after a restart (they are read from the store).
- The delivery-delay histogram against an independent count: ``awk`` over the Postfix
  sample's delivery lines (``status=sent``, their ``delay=``), and over a small Exim log
  with ``QT=``: each bucket holds the lines whose delay is at most its bound.  The size
  histogram likewise against the receipts' ``size=``.
- A label value with a newline, a quote and a backslash (an account name taken from a
  log) is escaped: the text parses back to the same value, and promtool accepts it.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from logstats import metrics
from logstats.config import Config
from logstats.ingest import Ingestor
from logstats.model import DELAY, HISTOGRAM_BOUNDS, SIZE, Tally
from logstats.store import Batch, Store
from tests.daemon_harness import SAMPLES, Serve, short_dir, write_config

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing (Debian package prometheus: tests/mta/install.sh)"
)
NOW = datetime(2026, 11, 26, tzinfo=UTC)  # after the samples were recorded


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def buckets(fams: dict[str, Any], name: str, mta: str) -> dict[float, float]:
    """``{le: cumulative count}`` of one histogram's series (``+Inf`` as inf)."""
    return {
        float(s.labels["le"]): s.value
        for s in fams[name].samples
        if s.name == f"{name}_bucket" and s.labels["mta"] == mta
    }


def unix_get(path: str, route: str) -> tuple[int, str, str]:
    """GET over the daemon's Unix socket: (status, Content-Type, body)."""
    conn = http.client.HTTPConnection("localhost", timeout=20)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(20)
    sock.connect(path)
    conn.sock = sock
    try:
        conn.request("GET", route)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read().decode()
    finally:
        conn.close()


def backfill(db: Path, paths: list[Path]) -> None:
    config = Config(timezone="UTC", domains={"alice.test": "alice", "bob.test": "bob"})
    with Store(db) as store:
        ing = Ingestor(store, config, now=lambda: NOW)
        try:
            for path in paths:
                for info, mta in ing.plan([str(path)]):
                    ing.ingest(info, mta)
        finally:
            ing.close()


def rendered(db: Path, *, per_account: bool = False) -> str:
    with Store(db, read_only=True) as store:
        return metrics.render(store.con.cursor(), per_account=per_account)


# --- a live daemon ---------------------------------------------------------------------------


def copy_sample(mta: str, to: Path) -> Path:
    """A copy of a sample; yearless Postfix stamps take their year from the file's mtime:
    it is pinned after the recording, whenever this runs."""
    shutil.copyfile(SAMPLES / f"{mta}.log", to)
    os.utime(to, (NOW.timestamp(), NOW.timestamp()))
    return to


@pytest.fixture
def samples_dir() -> Iterator[Path]:
    with short_dir("lsmet-") as folder:
        copy_sample("exim", folder / "exim_mainlog")
        copy_sample("postfix", folder / "maillog")
        yield folder


@needs_promtool
def test_live_metrics_pass_promtool_and_survive_a_restart(samples_dir: Path) -> None:
    cfg = write_config(
        samples_dir,
        [(samples_dir / "exim_mainlog", "exim"), (samples_dir / "maillog", "postfix")],
        api={"metrics_per_account": True},
    )
    scrapes = []
    for _ in range(2):  # the second daemon reads nothing new: the store answers
        with Serve(cfg) as serve:
            serve.wait_ready(timeout=60)
            status, kind, text = unix_get(serve.socket_path, "/metrics")
            assert 0 == serve.terminate()
        assert 200 == status, text
        assert CONTENT_TYPE_LATEST == kind
        check = promtool_check(text)
        assert 0 == check.returncode and "" == check.stdout + check.stderr, check
        scrapes.append(families(text))
    first, second = scrapes
    for name in ("process_resident_memory_bytes", "process_start_time_seconds", "python_info"):
        assert name in first, name
    assert [{"version": metrics.build_version()}] == [
        s.labels for s in first["logstats_build_info"].samples
    ]
    assert "logstats_mail" not in first  # one unit per metric: no mixed family any more
    for name in (
        "logstats_delivery_delay_seconds",
        "logstats_message_size_bytes",
        "logstats_messages_accepted",
        "logstats_recipients",
        "logstats_deferrals",
        "logstats_delivered_bytes",
        "logstats_account_recipients",
    ):
        assert first[name].samples, name
        assert first[name].samples == second[name].samples, name
    # the same messages, whichever way they are counted: sizes observed = messages accepted
    for mta in ("exim", "postfix"):
        accepted = next(
            s.value for s in first["logstats_messages_accepted"].samples if s.labels["mta"] == mta
        )
        assert accepted == buckets(first, "logstats_message_size_bytes", mta)[float("inf")]


# --- the histograms against independent counts -----------------------------------------------


AWK_DELAYS = r"""
/ status=sent / { if (match($0, /, delay=[0-9.]+,/)) print substr($0, RSTART + 8, RLENGTH - 9) }
"""
# qmgr logs from= size= each time a message enters the active queue: its first line counts
AWK_SIZES = r"""
/postfix\/qmgr.* from=.* size=[0-9]+, nrcpt=/ && !seen[$6]++ {
    if (match($0, / size=[0-9]+,/)) print substr($0, RSTART + 6, RLENGTH - 7)
}
"""


def awk(program: str, path: Path) -> list[float]:
    out = subprocess.run(
        ["awk", program, str(path)], capture_output=True, text=True, check=True, timeout=30
    )
    return [float(v) for v in out.stdout.split()]


def assert_buckets_count(got: dict[float, float], values: list[float], scale: float) -> None:
    """Each bucket ``le`` holds the values at most ``le`` (cumulative)."""
    bounds = [b / scale for b in HISTOGRAM_BOUNDS[DELAY if scale == 1000 else SIZE]]
    assert [*bounds, float("inf")] == sorted(got)
    for le, count in got.items():
        assert sum(1 for v in values if v <= le) == count, le


def test_postfix_delay_and_size_buckets_equal_awk_counts(tmp_path: Path) -> None:
    log = copy_sample("postfix", tmp_path / "maillog")
    backfill(tmp_path / "db.duckdb", [log])
    fams = families(rendered(tmp_path / "db.duckdb"))
    delays = awk(AWK_DELAYS, log)
    assert len(delays) > 10 and max(delays) > 1  # spread over more than one bucket
    assert_buckets_count(buckets(fams, "logstats_delivery_delay_seconds", "postfix"), delays, 1000)
    delay_sum = next(
        s.value for s in fams["logstats_delivery_delay_seconds"].samples if s.name.endswith("_sum")
    )
    assert round(sum(delays), 3) == pytest.approx(delay_sum)
    sizes = awk(AWK_SIZES, log)
    assert len(sizes) > 10
    assert_buckets_count(buckets(fams, "logstats_message_size_bytes", "postfix"), sizes, 1)


def exim_log(start: datetime, qts: list[str]) -> str:
    """One message per QT= value: received, delivered (QT= after the remote's confirmation,
    whose text names a QT= of its own that must not be read), completed."""
    lines = []
    for i, qt in enumerate(qts):
        ts = (start + timedelta(minutes=i)).strftime("%Y-%m-%d %H:%M:%S")
        q = f"1tQT{i:02d}-00000{i % 10}-AB"
        lines += [
            f"{ts} {q} <= a@alice.test H=(c) [192.0.2.1] P=esmtpa A=plain:a@alice.test "
            f"S={1000 * (i + 1)} id=m{i}@alice.test",
            f"{ts} {q} => r{i}@dest.example R=dnslookup T=remote_smtp H=mx.dest.example "
            f'[192.0.2.9] C="250 OK QT=999s" QT={qt} DT=0s',
            f"{ts} {q} Completed QT={qt}",
        ]
    return "".join(line + "\n" for line in lines)


def test_exim_queue_time_buckets_equal_awk_counts(tmp_path: Path) -> None:
    qts = ["0s", "1s", "4s", "59s", "1m1s", "5m", "1h2m3s", "2d", "6d", "0.250s"]
    log = tmp_path / "mainlog"
    log.write_text(exim_log(datetime(2026, 3, 2, 10, tzinfo=UTC), qts))
    backfill(tmp_path / "db.duckdb", [log])
    fams = families(rendered(tmp_path / "db.duckdb"))
    # an independent reading of Exim's time format: the last QT= of each => line
    program = r"""
    / => / {
        n = split($0, f, " QT="); t = f[n]; sub(/ .*/, "", t); s = 0
        while (match(t, /^[0-9.]+[wdhms]/)) {
            v = substr(t, 1, RLENGTH - 1); u = substr(t, RLENGTH, 1)
            s += v * (u == "w" ? 604800 : u == "d" ? 86400 : u == "h" ? 3600 : u == "m" ? 60 : 1)
            t = substr(t, RLENGTH + 1)
        }
        print s
    }
    """
    delays = awk(program, log)
    assert len(qts) == len(delays) and 999 not in delays
    assert_buckets_count(buckets(fams, "logstats_delivery_delay_seconds", "exim"), delays, 1000)


# --- escaping --------------------------------------------------------------------------------


@needs_promtool
def test_label_values_from_logs_are_escaped(tmp_path: Path) -> None:
    evil = 'ev"il\\acct\nlogstats_fake_total 1'
    hour = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp()) // 3600
    with Store(tmp_path / "db.duckdb") as store:
        store.commit(
            Batch(
                mta="exim",
                counters={(hour, evil, "x.test", ""): Tally(sends=3, successes=2, bytes=20)},
                anomalies={"odd\nkind": 1},
            )
        )
    text = rendered(tmp_path / "db.duckdb", per_account=True)
    assert "\nlogstats_fake_total 1" not in text
    fams = families(text)
    assert "logstats_fake" not in fams
    assert [({"account": evil}, 3.0)] == [
        (s.labels, s.value) for s in fams["logstats_account_messages_accepted"].samples
    ]
    assert [{"mta": "exim", "kind": "odd\nkind"}] == [
        s.labels for s in fams["logstats_anomalies"].samples
    ]
    check = promtool_check(text)
    assert 0 == check.returncode, check
