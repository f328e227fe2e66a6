#!/usr/bin/env python3
"""The systemd journal as a source: `logstats backfill --journal` against a backfill of the
same lines from a file, and journalctl's own cost, in one run.

    python bench/journal.py [--lines N] [--repeats R] [--seed S] [--out results.json]

Needs root, ``unshare`` and systemd-journald (tests/mta/install.sh): the script runs itself
again in a private mount namespace and starts a real, private journald there as the tests
do (tests/journald.py: tmpfs over /run/systemd and /run/log, nothing of the machine's
journal touched).  A genlog Postfix log of N lines (default 300,000) is logged into it as
Postfix logs (syslog datagrams on /dev/log; the time this takes is reported, not counted),
then these run as separate processes, alternately (the order rotated every round), each on
a fresh store:

* journal: ``logstats backfill --journal`` with a journal source of the Postfix identifiers;
* file: ``logstats backfill --mta postfix FILE``, FILE being journalctl's own text of the
  same entries (``-o short-iso-precise --utc``), so both read exactly the same lines;
* floor: ``journalctl -o json --output-fields=...`` of the same matches into /dev/null,
  what reading the journal costs before logstats does anything.

Reported: medians of wall time, lines/s, journal/file and floor/journal.  The two stores
must hold the same counters, and the account numbers genlog's truth (exit 1 otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

INSIDE = "LOGSTATS_BENCH_JOURNAL_INSIDE"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def timed(argv: list[str], **kw: Any) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, cwd=ROOT, **kw)
    return time.perf_counter() - t0


def emailtrack(cfg: Path, db: Path) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "logstats", "query", "emailtrack", "--config", str(cfg), "--db",
         str(db), "--all", "--format", "json", "--start", "19700101"],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    return dict(json.loads(out.stdout))


def inside(a: argparse.Namespace, command: str) -> int:
    import yaml

    from logstats.journal import FIELDS
    from tests.daemon_harness import genlog, genlog_expected, store_contents
    from tests.journald import Journald

    work = Path(tempfile.mkdtemp(prefix="bench-journal-"))
    os.chmod(work, 0o755)
    try:
        source = work / "gen.log"
        truth = genlog("postfix", a.lines, source, seed=a.seed)
        lines = source.read_text().splitlines()
        idents = sorted({x.split()[4].split("[")[0] for x in lines if " postfix/" in x})
        postfix = [x for x in lines if x.split()[4].split("[")[0] in idents]
        settings = yaml.safe_load(Path(f"{source}.logstats.yaml").read_text())
        settings["sources"] = [{"journal": {"identifiers": idents}, "mta": "postfix"}]
        settings.setdefault("correlation", {}).update(ttl="3650d", orphan_ttl="3650d")
        cfg = work / "logstats.yaml"
        cfg.write_text(yaml.safe_dump(settings, sort_keys=False))
        matches = [f"SYSLOG_IDENTIFIER={i}" for i in idents]
        with Journald(work) as jd:
            t0 = time.perf_counter()
            for i in range(0, len(postfix), 50_000):
                jd.syslog(postfix[i : i + 50_000])
            load_s = time.perf_counter() - t0
            log(f"logged {len(postfix):,} entries in {load_s:.1f} s")
            text = work / "journal.log"
            with text.open("wb") as f:
                subprocess.run(
                    ["journalctl", "-D", jd.directory, "--no-pager", "-q", "-a", "--utc", "-o",
                     "short-iso-precise", *matches],
                    check=True, stdout=f,
                )  # fmt: skip
            n = sum(1 for _ in text.open("rb"))
            assert n == len(postfix), (n, len(postfix))
            kinds = {
                "journal": lambda db: [sys.executable, "-m", "logstats", "backfill", "--journal",
                                       "--config", str(cfg), "--db", str(db), "--no-progress"],
                "file": lambda db: [sys.executable, "-m", "logstats", "backfill", "--config",
                                    str(cfg), "--db", str(db), "--no-progress", "--mta", "postfix",
                                    str(text)],
                "floor": lambda db: ["journalctl", "-D", jd.directory, "-o", "json",
                                     f"--output-fields={FIELDS}", "--no-pager", "-q", *matches],
            }  # fmt: skip
            times: dict[str, list[float]] = {k: [] for k in kinds}
            equal = True
            for r in range(a.repeats):
                order = list(kinds)[r % 3 :] + list(kinds)[: r % 3]
                dbs: dict[str, Path] = {}
                for kind in order:
                    db = work / f"{kind}-{r}.duckdb"
                    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
                    times[kind].append(timed(kinds[kind](db), **quiet))
                    log(f"  round {r + 1}: {kind:8s} {times[kind][-1]:7.2f} s")
                    dbs[kind] = db
                mine, file_store = store_contents(dbs["journal"]), store_contents(dbs["file"])
                equal = equal and all(
                    mine[t] == file_store[t] for t in ("counters", "dims", "pending")
                )
            numbers = emailtrack(cfg, dbs["journal"])
            truthful = numbers == genlog_expected(truth)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    figures = {
        "command": command,
        "lines": len(postfix),
        "load_s": load_s,
        "seconds": med,
        "lines_per_s": {k: len(postfix) / v for k, v in med.items()},
        "journal_over_file": med["file"] / med["journal"],
        "floor_share_of_journal": med["floor"] / med["journal"],
        "stores_equal": equal,
        "truth_equal": truthful,
        "runs": times,
    }
    print(f"`{command}` on {platform.node()} ({os.cpu_count()} cores, Python "
          f"{platform.python_version()}), {len(postfix):,} Postfix entries\n")  # fmt: skip
    print("| source | seconds (median) | lines/s |\n|---|---:|---:|")
    for kind, label in (("journal", "logstats backfill --journal"),
                        ("file", "logstats backfill FILE (the same lines)"),
                        ("floor", "journalctl -o json > /dev/null")):  # fmt: skip
        print(f"| {label} | {med[kind]:.2f} | {len(postfix) / med[kind]:,.0f} |")
    print(f"\njournal speed / file speed: {figures['journal_over_file']:.2f}; journalctl's share "
          f"of the journal backfill's time: {figures['floor_share_of_journal']:.2f}")  # fmt: skip
    print(f"stores equal: {'yes' if equal else 'NO'}; numbers equal genlog's truth: "
          f"{'yes' if truthful else 'NO'}")  # fmt: skip
    if a.out:
        Path(a.out).write_text(json.dumps(figures, indent=2))
    return 0 if equal and truthful else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=300_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", help="write the figures as JSON here too")
    args = argv if argv is not None else sys.argv[1:]
    a = ap.parse_args(args)
    command = "python bench/journal.py " + shlex.join(args)
    if os.environ.get(INSIDE):
        return inside(a, command)
    from tests.journald import journal_missing

    missing = journal_missing()
    if missing is not None:
        print(f"bench/journal.py: skipped: {missing}", file=sys.stderr)
        return 0
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, __file__, *args],
        env={**os.environ, INSIDE: "1"}, check=False,
    ).returncode  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
