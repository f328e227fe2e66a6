#!/usr/bin/env python3
"""Benchmark logstats backfill against the classic report scripts on generated logs.

    python bench/run.py [--lines N] [--quick] [--repeats R] [--out results.json]

For each MTA a log of N lines is generated (cached under bench/.data/), then these run as
separate processes, alternately (one of each, R times, the order rotated every round):

* ``logstats backfill --config FILE.logstats.yaml --db <fresh db> --mta MTA FILE``
* the peer: ``pflogsumm FILE`` (Postfix) or ``eximstats FILE`` (Exim)
* ``wc -l FILE``, the floor: the cost of reading the file at all

Wall time is whole-process (fork to reap), the median of the R runs is reported, with
peak RSS from ``os.wait4``'s rusage of that very child (``ru_maxrss``: the largest single
process of the child's tree) and, sampled every 20 ms from /proc, the largest sum of RSS
over the child's process tree.  Then: the memory-growth check (logstats and the peer on a
log a quarter as long: peak RSS ratio), query latency (``logstats query emailtrack`` as a
process, and in-process through ``logstats.store.Store``), and correctness checks of both
logstats and the peers against the generator's ``FILE.truth.json``.

The Exim log switches from 16-character (4.96) to 23-character (4.97+) message ids half
way, as a host that was upgraded would.  eximstats 4.96 (Debian 12) reads the id as 16
fixed columns and silently skips the 23-character half, so Exim is also measured on a log
with classic ids only ("exim-16"), where eximstats does all the work.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
DATA = BENCH / ".data"
GENLOG = BENCH / "genlog.py"


# ----------------------------------------------------------------------------------------
# tools
# ----------------------------------------------------------------------------------------


def logstats_cmd() -> list[str]:
    """The logstats CLI: the venv's entry point, else ``python -m logstats``."""
    exe = ROOT / ".venv" / "bin" / "logstats"
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", "logstats"]


def logstats_python() -> str:
    py = ROOT / ".venv" / "bin" / "python"
    return str(py) if py.exists() else sys.executable


def logstats_available() -> bool:
    try:
        r = subprocess.run(
            [*logstats_cmd(), "backfill", "--help"], capture_output=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def perl_script(name: str, *candidates: str) -> list[str] | None:
    """A peer script, run with perl (it may have been extracted from a .deb, not installed)."""
    for c in (shutil.which(name), *candidates):
        if c and Path(c).exists():
            return ["perl", c]
    return None


def peer_cmd(mta: str) -> tuple[str, list[str] | None]:
    if mta == "postfix":
        return "pflogsumm", perl_script("pflogsumm", "/usr/sbin/pflogsumm")
    return "eximstats", perl_script("eximstats", "/usr/sbin/eximstats", "/usr/local/bin/eximstats")


# ----------------------------------------------------------------------------------------
# measuring one process
# ----------------------------------------------------------------------------------------


# GNU time forks the tool from a ~2 MiB process and reports that child's wait4 ru_maxrss.
# Forking straight from this Python process would not do: Linux keeps the high-water RSS of
# the pre-exec copy of the parent (~25 MiB here) in the child's ru_maxrss.
GNU_TIME = "/usr/bin/time" if Path("/usr/bin/time").exists() else None


def _tree_rss_kib(pid: int, *, include_self: bool = True) -> int:
    """Sum of VmRSS over pid (optionally) and its descendants (0 if gone)."""
    total, todo, seen = 0, [pid], set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            if include_self or p != pid:
                for line in Path(f"/proc/{p}/status").read_text(errors="replace").splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return total


def measure(cmd: list[str], stdout: Path | None = None) -> dict:
    """Run cmd; wall seconds, exit status, ru_maxrss (MiB) of that child, sampled tree RSS."""
    with tempfile.TemporaryFile() as err, tempfile.NamedTemporaryFile("r") as tf:
        return _measure(cmd, stdout, err, tf.name)


def _measure(cmd: list[str], stdout: Path | None, err, time_out: str) -> dict:
    out = stdout.open("wb") if stdout else subprocess.DEVNULL
    full = [GNU_TIME, "-f", "%M", "-o", time_out, "--", *cmd] if GNU_TIME else cmd
    t0 = time.perf_counter()
    p = subprocess.Popen(full, stdout=out, stderr=err, cwd=ROOT)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], _tree_rss_kib(p.pid, include_self=not GNU_TIME))

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    maxrss_kib = ru.ru_maxrss
    if GNU_TIME:
        try:
            maxrss_kib = int(Path(time_out).read_text().split()[-1])
        except (OSError, ValueError, IndexError):
            maxrss_kib = -1
    done.set()
    th.join()
    p.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4, tell Popen
    if stdout:
        out.close()
    err.seek(0)
    errtext = err.read().decode(errors="replace")
    if p.returncode != 0:
        print(f"!! exit {p.returncode}: {shlex.join(cmd)}\n{errtext[-2000:]}", file=sys.stderr)
    return {
        "seconds": wall,
        "exit": p.returncode,
        "maxrss_mib": maxrss_kib / 1024.0,
        "maxrss_source": "GNU time (wait4 of the tool)" if GNU_TIME else "wait4 (+fork copy)",
        "tree_rss_mib": peak[0] / 1024.0,
        "user_s": ru.ru_utime,
        "sys_s": ru.ru_stime,
    }


# ----------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------


def dataset(mta: str, lines: int, seed: int, id_switch: float = 0.5) -> Path:
    tag = "" if mta == "postfix" or id_switch == 0.5 else f"-ids{id_switch:g}"
    path = DATA / f"{mta}{tag}-{lines}-s{seed}.log"
    truth = Path(str(path) + ".truth.json")
    if not path.exists() or not truth.exists() or path.stat().st_mtime < GENLOG.stat().st_mtime:
        DATA.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable, str(GENLOG), "--mta", mta, "--lines", str(lines),
            "--out", str(path), "--seed", str(seed), "--id-switch", str(id_switch),
        ]  # fmt: skip
        print(f"$ {shlex.join(cmd)}", file=sys.stderr)
        subprocess.run(cmd, check=True)
    return path


def warm(path: Path) -> None:
    """Read the file once so every tool finds it in the page cache."""
    with path.open("rb") as fh:
        while fh.read(8 << 20):
            pass


# ----------------------------------------------------------------------------------------
# correctness against the generator's truth
# ----------------------------------------------------------------------------------------


def _num(text: str) -> int:
    m = re.match(r"(\d+)([kmg]?)", text.strip())
    if not m:
        return -1
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2)]


def check_pflogsumm(report: str, expected: dict) -> dict:
    got = {}
    for key, label in (
        ("pflogsumm_received", "received"),
        ("pflogsumm_delivered", "delivered"),
        ("pflogsumm_bounced", "bounced"),
    ):
        m = re.search(rf"^\s*(\d+[kmg]?)\s+{label}$", report, re.M)
        got[key] = _num(m.group(1)) if m else None
    m = re.search(r"^\s*(\d+[kmg]?)\s+deferred\s+\((\d+[kmg]?)\s+deferrals\)", report, re.M)
    if m:
        got["pflogsumm_deferred"], got["pflogsumm_deferrals"] = _num(m.group(1)), _num(m.group(2))
    m = re.search(r"^\s*(\d+[kmg]?)\s+rejected", report, re.M)
    got["pflogsumm_rejected"] = _num(m.group(1)) if m else None
    return _compare(got, expected)


def check_eximstats(report: str, expected: dict) -> dict:
    got: dict[str, int | None] = {}
    m = re.search(
        r"^\s*Received\s+\S+\s+(\d+)\s+(\d+)\s+(\d+)\s+[\d.]+%\s+(\d+)\s+[\d.]+%", report, re.M
    )
    if m:
        got["eximstats_received"] = int(m.group(1))
        got["eximstats_delayed"] = int(m.group(3))
        got["eximstats_failed"] = int(m.group(4))
    m = re.search(r"^\s*Delivered\s+\S+\s+(\d+)\s+(\d+)", report, re.M)
    if m:
        got["eximstats_delivered_messages"] = int(m.group(1))
        got["eximstats_delivered_addresses"] = int(m.group(2))
    return _compare(got, expected)


def _compare(got: dict, expected: dict) -> dict:
    rows = {}
    for k, v in got.items():
        want = expected.get(k)
        # pflogsumm prints counts >= 1M as "1234k": compare at that precision
        if v is not None and want is not None and v % 1024 == 0 and v >= 1024 * 1000:
            ok = abs(v - want) < 1024
        else:
            ok = v == want
        rows[k] = {"got": v, "want": want, "ok": ok}
    return {"ok": all(r["ok"] for r in rows.values()) and bool(rows), "fields": rows}


def check_logstats(db: Path, cfg: Path, truth: dict) -> dict:
    r = subprocess.run(
        [*logstats_cmd(), "query", "emailtrack", "--config", str(cfg), "--db", str(db),
         "--all", "--format", "json"],
        capture_output=True, text=True, check=False, cwd=ROOT,
    )  # fmt: skip
    if r.returncode != 0:
        return {"ok": False, "error": r.stderr[-1000:]}
    got = json.loads(r.stdout)
    mism = []
    for acct, t in truth["accounts"].items():
        g = got.get(acct, {})
        # cPanel semantics: a permanent SMTP-time reject is one send and one failure
        want = {
            "SENDCOUNT": t["sends"] + t["rejects"],
            "SUCCESSCOUNT": t["deliveries"],
            "DEFERCOUNT": t["deferrals"],
            "FAILCOUNT": t["failures"] + t["rejects"],
            "TOTALSIZE": t["bytes_delivered"],
            "INPROGRESSCOUNT": t["in_progress"],
        }
        for k, v in want.items():
            if int(g.get(k, 0)) != v:
                mism.append({"account": acct, "field": k, "got": g.get(k), "want": v})
    extra = sorted(set(got) - set(truth["accounts"]))
    return {
        "ok": not mism and not extra,
        "accounts": len(truth["accounts"]),
        "mismatches": len(mism),
        "first_mismatches": mism[:10],
        "unexpected_accounts": extra[:10],
    }


# ----------------------------------------------------------------------------------------
# query latency
# ----------------------------------------------------------------------------------------

# In-process hook: the store API as it stands (logstats.store.Store.account_stats and
# logstats.query.emailtrack_stats).  If that API moves, adjust here; the runner reports
# "unavailable" instead of failing.
INPROC = r"""
import json, sys, time
from datetime import datetime, UTC
db, account, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    from logstats.model import StatsRequest
    from logstats.query import emailtrack_stats
    from logstats.store import Store
except ImportError as exc:
    print(json.dumps({"unavailable": f"import: {exc}"})); sys.exit(0)
req = StatsRequest(datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC), account)
def once(store):
    rows = store.account_stats(req)
    return json.dumps(emailtrack_stats(rows[0])) if rows else ""
hot, cold = [], []
with Store(db, read_only=True) as store:
    once(store)
    for _ in range(runs):
        t = time.perf_counter(); once(store); hot.append(time.perf_counter() - t)
for _ in range(max(runs // 4, 5)):
    t = time.perf_counter()
    with Store(db, read_only=True) as store:
        once(store)
    cold.append(time.perf_counter() - t)
print(json.dumps({"hot": hot, "open_and_query": cold}))
"""


def pctl(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def latency(xs: list[float]) -> dict:
    return {
        "runs": len(xs),
        "median_ms": statistics.median(xs) * 1000,
        "p99_ms": pctl(xs, 0.99) * 1000,
        "max_ms": max(xs) * 1000,
    }


def query_latency(db: Path, cfg: Path, account: str, proc_runs: int, runs: int) -> dict:
    cmd = [*logstats_cmd(), "query", "emailtrack", "--config", str(cfg), "--db", str(db),
           "--account", account]  # fmt: skip
    measure(cmd)  # warm
    proc = [measure(cmd)["seconds"] for _ in range(proc_runs)]
    res: dict = {"account": account, "command": shlex.join(cmd), "process": latency(proc)}
    r = subprocess.run(
        [logstats_python(), "-c", INPROC, str(db), account, str(runs)],
        capture_output=True, text=True, check=False, cwd=ROOT,
    )  # fmt: skip
    try:
        data = json.loads(r.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        data = {"unavailable": (r.stderr or r.stdout)[-500:]}
    if "unavailable" in data:
        res["in_process"] = data
    else:
        res["in_process"] = latency(data["hot"])
        res["in_process_open_each_time"] = latency(data["open_and_query"])
    return res


# ----------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------


def run_suite(a: argparse.Namespace) -> dict:
    have_logstats = not a.no_logstats and logstats_available()
    if not have_logstats:
        print("!! logstats backfill not available: peers only", file=sys.stderr)
    suites = []
    for mta in a.mta:
        if mta == "exim":
            suites.append(("exim", "exim", 0.5))
            if not a.no_exim16:
                suites.append(("exim-16", "exim", 1.0))
        else:
            suites.append(("postfix", "postfix", 0.5))
    results: dict = {"runs": [], "summary": [], "memory": [], "checks": {}, "query": {}}
    tmp = Path(tempfile.mkdtemp(prefix="logstats-bench-"))
    try:
        for label, mta, ids in suites:
            path = dataset(mta, a.lines, a.seed, ids)
            truth = json.loads(Path(str(path) + ".truth.json").read_text())
            cfg = Path(str(path) + ".logstats.yaml")
            warm(path)
            peer_name, peer = peer_cmd(mta)
            tools: list[tuple[str, list[str] | None]] = [("wc -l", ["wc", "-l", str(path)])]
            tools.append((peer_name, [*peer, str(path)] if peer else None))
            if have_logstats:
                tools.append(("logstats", None))
            samples: dict[str, list[dict]] = {t: [] for t, _ in tools}
            cmds: dict[str, str] = {}
            last_db = None
            for rnd in range(a.repeats):
                k = rnd % len(tools)
                for name, base in tools[k:] + tools[:k]:
                    out, cmd = None, base
                    if name == "logstats":
                        last_db = tmp / f"{label}-{rnd}.duckdb"
                        cmd = [*logstats_cmd(), "backfill", "--config", str(cfg),
                               "--db", str(last_db), "--mta", mta, str(path)]  # fmt: skip
                        out = tmp / f"{label}-logstats-{rnd}.out"
                    elif cmd is None:
                        continue
                    elif name != "wc -l":
                        out = tmp / f"{label}-{name}-{rnd}.out"
                    cmds[name] = shlex.join(cmd)
                    m = measure(cmd, out)
                    m.update(tool=name, suite=label, round=rnd)
                    results["runs"].append(m)
                    samples[name].append(m)
                    print(
                        f"  {label:8} {name:10} round {rnd}: {m['seconds']:7.2f} s "
                        f"{m['maxrss_mib']:7.1f} MiB",
                        file=sys.stderr,
                    )
                    if name == "logstats" and rnd < a.repeats - 1:
                        _rm_db(last_db)
            # correctness
            checks: dict = {}
            peer_out = tmp / f"{label}-{peer_name}-0.out"
            if peer_out.exists():
                rep = peer_out.read_text(errors="replace")
                fn = check_pflogsumm if mta == "postfix" else check_eximstats
                checks[peer_name] = fn(rep, truth["peer_expected"])
            if have_logstats and last_db is not None:
                checks["logstats"] = check_logstats(last_db, cfg, truth)
            results["checks"][label] = checks
            # summary rows
            peer_lps = None
            rows = []
            for name, _ in tools:
                ok = [s for s in samples[name] if s["exit"] == 0]
                if not ok:
                    continue
                sec = statistics.median(s["seconds"] for s in ok)
                row = {
                    "tool": name,
                    "suite": label,
                    "mta": mta,
                    "lines": truth["lines"],
                    "seconds": sec,
                    "lines_per_s": truth["lines"] / sec,
                    "maxrss_mib": statistics.median(s["maxrss_mib"] for s in ok),
                    "tree_rss_mib": statistics.median(s["tree_rss_mib"] for s in ok),
                    "runs": len(ok),
                    "command": cmds.get(name, ""),
                }
                if name == peer_name:
                    peer_lps = row["lines_per_s"]
                rows.append(row)
            for row in rows:
                row["ratio_to_peer"] = row["lines_per_s"] / peer_lps if peer_lps else None
            results["summary"].extend(rows)
            # memory growth: the same tools on a log a quarter as long
            if not a.no_memory and label != "exim-16":
                small = dataset(mta, max(a.lines // 4, 1000), a.seed, ids)
                warm(small)
                for name, base in tools[1:]:
                    cmd = base
                    if name == "logstats":
                        db = tmp / f"{label}-small.duckdb"
                        cmd = [*logstats_cmd(), "backfill", "--config",
                               str(Path(str(small) + ".logstats.yaml")), "--db", str(db),
                               "--mta", mta, str(small)]  # fmt: skip
                    elif cmd is None:
                        continue
                    else:
                        cmd = [*base[:-1], str(small)]
                    m = measure(cmd)
                    big = next(r for r in rows if r["tool"] == name)
                    results["memory"].append(
                        {
                            "tool": name,
                            "suite": label,
                            "lines_small": a.lines // 4,
                            "lines_big": a.lines,
                            "maxrss_small_mib": m["maxrss_mib"],
                            "maxrss_big_mib": big["maxrss_mib"],
                            "ratio": big["maxrss_mib"] / m["maxrss_mib"],
                        }
                    )
            # query latency on the last backfilled store
            if have_logstats and last_db is not None and not a.no_query:
                acct = max(
                    (k for k, v in truth["accounts"].items() if v["kind"] == "auth"),
                    key=lambda k: truth["accounts"][k]["sends"],
                )
                results["query"][label] = query_latency(
                    last_db, cfg, acct, a.query_proc_runs, a.query_runs
                )
            if last_db is not None:
                _rm_db(last_db)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def _rm_db(db: Path) -> None:
    for p in (db, Path(str(db) + ".wal")):
        p.unlink(missing_ok=True)


def report(results: dict, command: str) -> str:
    out = [f"Command: `{command}`", ""]
    out.append(
        "| tool | MTA (log) | lines | seconds | lines/s | ratio to peer | peak RSS MiB "
        "| tree RSS MiB |"
    )
    out.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results["summary"]:
        ratio = f"{r['ratio_to_peer']:.2f}" if r["ratio_to_peer"] is not None else "-"
        out.append(
            f"| {r['tool']} | {r['suite']} | {r['lines']:,} | {r['seconds']:.2f} "
            f"| {r['lines_per_s']:,.0f} | {ratio} | {r['maxrss_mib']:.1f} "
            f"| {r['tree_rss_mib']:.1f} |"
        )
    if results["memory"]:
        out += ["", "Memory growth (peak RSS at N vs N/4; 1.0 = flat):", ""]
        out.append("| tool | MTA | RSS at N/4 MiB | RSS at N MiB | ratio |")
        out.append("|---|---|---:|---:|---:|")
        for m in results["memory"]:
            out.append(
                f"| {m['tool']} | {m['suite']} | {m['maxrss_small_mib']:.1f} "
                f"| {m['maxrss_big_mib']:.1f} | {m['ratio']:.2f} |"
            )
    if results["query"]:
        out += ["", "Query latency, `logstats query emailtrack --account X` (ms):", ""]
        out.append("| MTA | account | how | runs | median | p99 |")
        out.append("|---|---|---|---:|---:|---:|")
        for label, q in results["query"].items():
            for how in ("process", "in_process", "in_process_open_each_time"):
                v = q.get(how)
                if v is None:
                    continue
                if "unavailable" in v:
                    out.append(f"| {label} | {q['account']} | {how} | - | unavailable | - |")
                    continue
                out.append(
                    f"| {label} | {q['account']} | {how} | {v['runs']} "
                    f"| {v['median_ms']:.2f} | {v['p99_ms']:.2f} |"
                )
    out += ["", "Correctness against the generator's truth:", ""]
    for label, checks in results["checks"].items():
        for tool, c in checks.items():
            if c.get("ok"):
                out.append(f"- {label} / {tool}: OK")
            elif "fields" in c:
                bad = {k: (v["got"], v["want"]) for k, v in c["fields"].items() if not v["ok"]}
                out.append(f"- {label} / {tool}: MISMATCH (got, want) {bad}")
            else:
                out.append(
                    f"- {label} / {tool}: MISMATCH {c.get('mismatches', '')} "
                    f"{c.get('first_mismatches', c.get('error', ''))}"
                )
    out += ["", "Commands:", ""]
    for r in results["summary"]:
        out.append(f"- {r['suite']} / {r['tool']}: `{r['command']}`")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, help="lines per log (default 1,000,000; --quick 100,000)")
    ap.add_argument("--quick", action="store_true", help="100k lines, fewer query runs")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mta", default="exim,postfix", help="comma-separated (default both)")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--no-logstats", action="store_true", help="peers and wc only")
    ap.add_argument("--no-memory", action="store_true", help="skip the N/4 memory check")
    ap.add_argument("--no-query", action="store_true", help="skip query latency")
    ap.add_argument("--no-exim16", action="store_true", help="skip the 16-char-id Exim log")
    ap.add_argument("--query-runs", type=int, help="in-process query runs (default 200)")
    ap.add_argument("--query-proc-runs", type=int, help="query process runs (default 30)")
    a = ap.parse_args(argv)
    a.lines = a.lines or (100_000 if a.quick else 1_000_000)
    a.query_runs = a.query_runs or (50 if a.quick else 200)
    a.query_proc_runs = a.query_proc_runs or (10 if a.quick else 30)
    a.mta = [m.strip() for m in a.mta.split(",") if m.strip()]
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    t0 = time.time()
    results = run_suite(a)
    results["command"] = command
    results["settings"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}
    results["machine"] = {"nproc": os.cpu_count(), "uname": " ".join(os.uname())}
    results["elapsed_s"] = round(time.time() - t0, 1)
    print(report(results, command))
    if a.out:
        a.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
