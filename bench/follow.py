#!/usr/bin/env python3
"""Follow-mode benchmark: ``logstats serve`` under a steady stream of log lines.

    python bench/follow.py [--seconds N] [--rates 10,100,1000] [--mta exim] [--out FILE]

For each rate, a fresh daemon follows an empty file while lines of a realistic
bench/genlog.py log are appended at that steady rate for N seconds (default 30):

* first half: appends only.  The daemon's CPU (utime+stime from /proc/PID/stat over wall
  time, % of one core) is the cost of following at that rate, with no queries.
* second half: appends, plus a marker message every 2 s (a fresh ``<=`` line for the
  account ``bench-marker``, stamped now).  Its follow latency is the time from the write to
  the first ``/v1/emailtrack`` answer over the daemon's socket (what ``logstats query``
  asks) that counts it; the socket is polled every 10 ms while a marker is outstanding.
  The CPU of this half (with that polling) is reported too.
* RSS (from /proc/PID/stat) is sampled every 0.5 s over the whole run: min and max, and
  the value after the first 2 s, to show it stays flat.

Prints a Markdown table and the command; ``--out`` writes the figures as JSON.  The
generated log is cached under bench/.data/.  Goal reference: latency < 1 s at p99,
< 2 % of one core at 100 lines/s, memory flat.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.daemon_harness import (  # noqa: E402
    Serve,
    domains_of,
    proc_cpu_rss,
    short_dir,
    write_config,
)

DATA = ROOT / "bench" / ".data"
MARKER_DOMAIN = "marker.bench.test"
MARKER_ACCOUNT = "bench-marker"
TICK = 0.02  # the writer appends every 20 ms


def source_log(mta: str, lines: int, seed: int) -> Path:
    """A cached genlog log of at least ``lines`` lines."""
    DATA.mkdir(parents=True, exist_ok=True)
    path = DATA / f"follow-{mta}-{lines}-s{seed}.log"
    gen = ROOT / "bench" / "genlog.py"
    if not path.exists() or path.stat().st_mtime < gen.stat().st_mtime:
        subprocess.run(
            [sys.executable, str(gen), "--mta", mta, "--lines", str(lines), "--out", str(path),
             "--seed", str(seed)],
            check=True, capture_output=True,
        )  # fmt: skip
    return path


class Appender:
    """Appends source lines at a steady rate; markers go in between under the same lock."""

    def __init__(self, target: Path, lines: list[bytes], rate: float) -> None:
        self.target = target
        self.lines = lines
        self.rate = rate
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.written = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        t0 = time.monotonic()
        with open(self.target, "ab", buffering=0) as f:
            while not self.stop.is_set():
                due = min(int((time.monotonic() - t0) * self.rate), len(self.lines))
                if due > self.written:
                    with self.lock:
                        f.write(b"".join(self.lines[self.written : due]))
                    self.written = due
                self.stop.wait(TICK)

    def marker(self, n: int) -> None:
        ts = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        qid = f"1bench-{n:06d}-00"[:16]
        line = (
            f"{ts} {qid} <= u@{MARKER_DOMAIN} H=(bench) [127.0.0.1] P=esmtpa "
            f"A=plain:u@{MARKER_DOMAIN} S=100 id=marker{n}@bench\n"
        )
        with self.lock, open(self.target, "ab", buffering=0) as f:
            f.write(line.encode())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


def marker_count(d: Serve) -> int:
    from logstats import api

    _status, body = api.get(d.socket_path, "/v1/emailtrack", {"account": MARKER_ACCOUNT})
    data = body.get("cpanelresult", {}).get("data") or [{}]
    return int(data[0].get("SENDCOUNT", 0) or 0)


def run_rate(
    rate: int, seconds: float, mta: str, src: Path, batch_seconds: float
) -> dict[str, Any]:
    body = src.read_bytes().splitlines(keepends=True)
    needed = int(rate * seconds) + 10
    if len(body) < needed:
        raise SystemExit(f"{src} has {len(body)} lines, {needed} needed")
    domains = {**domains_of(Path(f"{src}.userdomains")), MARKER_DOMAIN: MARKER_ACCOUNT}
    uids = json.loads(Path(f"{src}.truth.json").read_text())["local_users"]
    with short_dir("lsbench-") as work:
        log = work / "mainlog"
        # the first line gives the file its identity; the daemon starts on it
        log.write_bytes(body[0])
        state = work / "state"  # as in production, the store is not in the logs' folder
        state.mkdir()
        cfg = write_config(
            work,
            [(log, mta)],
            db=state / "db.duckdb",
            accounts={"domains": domains, "uids": {int(u): n for n, u in uids.items()}},
            correlation={"ttl": "3650d", "orphan_ttl": "3650d"},  # genlog's logs are from 2024
            serve={
                "socket": str(state / "ls.sock"),
                "batch_seconds": batch_seconds,
                "poll_seconds": 1.0,
            },
        )
        with Serve(cfg) as d:
            d.wait_ready()
            app = Appender(log, body[1:needed], rate)
            rss: list[tuple[float, int]] = []
            sampling = threading.Event()

            def sample() -> None:
                t0 = time.monotonic()
                while not sampling.is_set():
                    rss.append((time.monotonic() - t0, proc_cpu_rss(d.pid)[1]))
                    sampling.wait(0.5)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            app.thread.start()
            half = seconds / 2
            cpu0, _ = proc_cpu_rss(d.pid)
            w0 = time.monotonic()
            time.sleep(half)  # the measured interval itself
            cpu1, _ = proc_cpu_rss(d.pid)
            w1 = time.monotonic()
            latencies: list[float] = []
            n = 0
            while time.monotonic() - w1 < half:
                n += 1
                before = marker_count(d)
                t = time.monotonic()
                app.marker(n)
                while marker_count(d) <= before:
                    if time.monotonic() - t > 10:
                        raise SystemExit(f"marker {n} not visible after 10 s at {rate} lines/s")
                    time.sleep(0.01)
                latencies.append(time.monotonic() - t)
                time.sleep(max(0.0, 2.0 - (time.monotonic() - t)))
            cpu2, _ = proc_cpu_rss(d.pid)
            w2 = time.monotonic()
            app.stop.set()
            app.thread.join(5)
            sampling.set()
            sampler.join(5)
            lines_written = app.written + n
            code = d.terminate()
    after_warmup = [r for t, r in rss if t >= 2.0] or [r for _, r in rss]
    return {
        "rate": rate,
        "batch_seconds": batch_seconds,
        "seconds": seconds,
        "lines_appended": lines_written,
        "markers": len(latencies),
        "latency_median_s": statistics.median(latencies),
        "latency_p99_s": percentile(latencies, 0.99),
        "latency_max_s": max(latencies),
        "latencies_s": [round(x, 4) for x in latencies],
        "cpu_pct_ingest": 100 * (cpu1 - cpu0) / (w1 - w0),
        "cpu_pct_with_queries": 100 * (cpu2 - cpu1) / (w2 - w1),
        "rss_min_mib": min(r for _, r in rss) / 2**20,
        "rss_max_mib": max(r for _, r in rss) / 2**20,
        "rss_first_after_warmup_mib": after_warmup[0] / 2**20,
        "rss_last_mib": rss[-1][1] / 2**20,
        "exit_code": code,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="per rate (default 30)")
    ap.add_argument("--rates", default="10,100,1000", help="lines/s (default 10,100,1000)")
    ap.add_argument("--mta", choices=("exim",), default="exim")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--batch-seconds",
        type=float,
        default=0.25,
        help="serve.batch_seconds of the daemon (default 0.25, logstats' default)",
    )
    ap.add_argument("--out", type=Path, help="write the figures as JSON")
    a = ap.parse_args(argv)
    rates = [int(r) for r in a.rates.split(",") if r.strip()]
    src = source_log(a.mta, int(max(rates) * a.seconds * 1.05) + 1000, a.seed)
    random.seed(a.seed)
    results: list[dict[str, Any]] = []
    for rate in rates:
        print(f"rate {rate} lines/s for {a.seconds:g} s ...", file=sys.stderr)
        results.append(run_rate(rate, a.seconds, a.mta, src, a.batch_seconds))
    command = "python bench/follow.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"`{command.strip()}` on {platform.node()} ({os.cpu_count()} cores, "
          f"Python {platform.python_version()}), log: {src.name}, "
          f"serve.batch_seconds {a.batch_seconds:g}\n")  # fmt: skip
    print(
        "| lines/s | appended | markers | latency median | p99 | max "
        "| CPU % (follow only) | CPU % (+10 ms polling) | RSS min–max MiB | RSS after 2 s → end |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['rate']} | {r['lines_appended']:,} | {r['markers']} "
            f"| {r['latency_median_s'] * 1000:.0f} ms | {r['latency_p99_s'] * 1000:.0f} ms "
            f"| {r['latency_max_s'] * 1000:.0f} ms | {r['cpu_pct_ingest']:.2f} "
            f"| {r['cpu_pct_with_queries']:.1f} | {r['rss_min_mib']:.1f}–{r['rss_max_mib']:.1f} "
            f"| {r['rss_first_after_warmup_mib']:.1f} → {r['rss_last_mib']:.1f} |"
        )
    if a.out:
        a.out.write_text(json.dumps({"command": command, "results": results}, indent=2))
    return 0 if all(r["exit_code"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
