#!/usr/bin/env python3
"""Backlog catch-up: ``logstats serve`` started on a long log vs ``logstats backfill`` of it.

    python bench/catchup.py [--lines 1000000] [--mta exim,postfix] [--repeats 3] [--out F]

For each MTA, the bench/run.py log of N lines (cached under bench/.data/) is read, in
alternating runs, by:

* ``logstats backfill`` into a fresh database (whole-process wall time);
* ``logstats serve`` following the same file with a fresh database: wall time from the
  start of the process until its ``/healthz`` counts every line, plus the SIGTERM that
  commits the last batch and the exit.

Both use the generated config (the account map) and nothing else.  Medians of the runs
and the daemon/backfill speed ratio are printed as a Markdown table, with the command;
the two databases' counters are compared (they must be equal).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from run import dataset, logstats_cmd, warm  # noqa: E402

from tests.daemon_harness import Serve, store_contents  # noqa: E402


def config_for(log: Path, work: Path, follow: bool) -> Path:
    """The generated config, with a fresh database (and, to follow, the source and socket)."""
    data = yaml.safe_load(Path(f"{log}.logstats.yaml").read_text())
    ud = data.get("accounts", {}).get("userdomains")
    if ud:
        data["accounts"]["userdomains"] = str(log.parent / ud)
    data["store"] = {"path": str(work / "db.duckdb")}
    if follow:
        data["sources"] = [{"path": str(log), "mta": "exim" if "exim" in log.name else "postfix"}]
        data["serve"] = {"socket": str(work / "ls.sock")}
    cfg = work / "logstats.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    return cfg


def run_backfill(log: Path, mta: str, work: Path) -> float:
    cfg = config_for(log, work, follow=False)
    t0 = time.perf_counter()
    subprocess.run(
        [*logstats_cmd(), "backfill", "--config", str(cfg), "--mta", mta, str(log)],
        check=True, capture_output=True, cwd=ROOT,
    )  # fmt: skip
    return time.perf_counter() - t0


def run_daemon(log: Path, lines: int, work: Path) -> float:
    cfg = config_for(log, work, follow=True)
    t0 = time.perf_counter()
    with Serve(cfg) as d:
        d.wait_ready(timeout=600)
        d.wait_lines(lines, timeout=600)
        if d.terminate() != 0:
            raise SystemExit(f"logstats serve failed: {d.stderr[-5:]}")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--mta", default="exim,postfix")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, help="write the figures as JSON")
    a = ap.parse_args(argv)
    command = "python bench/catchup.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    results: dict[str, Any] = {}
    for mta in a.mta.split(","):
        log = dataset(mta, a.lines, a.seed)
        warm(log)
        times: dict[str, list[float]] = {"backfill": [], "serve": []}
        equal = True
        for i in range(a.repeats):
            order = ("backfill", "serve") if i % 2 == 0 else ("serve", "backfill")
            dbs = {}
            for kind in order:
                work = Path(tempfile.mkdtemp(prefix=f"catchup-{kind}-"))
                if kind == "backfill":
                    times[kind].append(run_backfill(log, mta, work))
                else:
                    times[kind].append(run_daemon(log, a.lines, work))
                dbs[kind] = work
            b, s = (store_contents(dbs[k] / "db.duckdb") for k in ("backfill", "serve"))
            equal = equal and all(b[t] == s[t] for t in ("counters", "dims", "pending", "unparsed"))
            for work in dbs.values():
                shutil.rmtree(work, ignore_errors=True)
        med = {k: statistics.median(v) for k, v in times.items()}
        results[mta] = {
            "lines": a.lines,
            "seconds": times,
            "median_s": med,
            "lines_per_s": {k: a.lines / v for k, v in med.items()},
            "serve_vs_backfill_speed": med["backfill"] / med["serve"],
            "stores_equal": equal,
        }
        print(f"{mta}: {json.dumps(results[mta]['median_s'])}", file=sys.stderr)
    print(f"`{command}`\n")
    print("| log | backfill lines/s | serve catch-up lines/s | serve / backfill | stores equal |")
    print("|---|---:|---:|---:|---|")
    for mta, r in results.items():
        lps = r["lines_per_s"]
        print(
            f"| {mta} | {lps['backfill'] / 1000:.1f}k | {lps['serve'] / 1000:.1f}k | "
            f"{r['serve_vs_backfill_speed']:.2f} | {'yes' if r['stores_equal'] else 'NO'} |"
        )
    if a.out:
        a.out.write_text(json.dumps(results, indent=2))
    return 0 if all(r["stores_equal"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
