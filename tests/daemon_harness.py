"""Helpers for the ``logstats serve`` integration tests (tests/test_daemon.py).

``Serve`` runs the daemon as an operator (or systemd) does: ``logstats serve --config CFG``
in its own process, with ``NOTIFY_SOCKET`` pointing at a datagram socket bound here, so
tests wait for ``READY=1`` instead of sleeping.  Its stderr (JSON log lines) is read by a
thread; ``wait_event`` blocks on it with a deadline.  Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import yaml

from logstats import api

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "tests" / "mta" / "samples"
GENLOG = ROOT / "bench" / "genlog.py"
FIELDS = (
    "TOTALSIZE",
    "SUCCESSCOUNT",
    "SENDCOUNT",
    "DEFERCOUNT",
    "FAILCOUNT",
    "INPROGRESSCOUNT",
    "DEFERFAILCOUNT",
)
DOMAINS = {"alice.test": "alice", "bob.test": "bob"}
NOBODY = 65534

Stats = dict[str, dict[str, str]]


# --- places and configs ----------------------------------------------------------------------


@contextlib.contextmanager
def short_dir(prefix: str = "lsd-") -> Iterator[Path]:
    """A fresh folder with a short path (AF_UNIX socket paths are limited to 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_config(
    folder: Path,
    sources: Sequence[tuple[Path, str]],
    *,
    db: Path | None = None,
    domains: dict[str, str] | None = None,
    name: str = "logstats.yaml",
    **sections: Any,
) -> Path:
    """A YAML config following ``sources`` [(path, mta)]; ``sections`` are merged in."""
    data: dict[str, Any] = {
        "timezone": "UTC",
        # the samples are recorded on fixed dates, and store.retention_days counts back from
        # the wall clock: keep their Track Delivery rows on any date the suite runs
        "store": {"path": str(db or folder / "db.duckdb"), "retention_days": 36500},
        "accounts": {"domains": dict(DOMAINS if domains is None else domains)},
        "sources": [{"path": str(p), "mta": m} for p, m in sources],
        "serve": {
            "socket": str(folder / "ls.sock"),
            "batch_seconds": 0.1,
            "poll_seconds": 0.5,
        },
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    cfg = folder / name
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    return cfg


def config_socket(cfg: Path) -> str:
    return str(yaml.safe_load(cfg.read_text())["serve"]["socket"])


def config_db(cfg: Path) -> str:
    return str(yaml.safe_load(cfg.read_text())["store"]["path"])


# --- truth -----------------------------------------------------------------------------------


def sample(mta: str) -> tuple[bytes, dict[str, dict[str, int]]]:
    """A real MTA log of tests/mta/samples and its scripted truth (ints)."""
    body = (SAMPLES / f"{mta}.log").read_bytes()
    truth = json.loads((SAMPLES / f"{mta}.truth.json").read_text())["truth"]
    return body, truth


def summed(*truths: dict[str, dict[str, int]]) -> Stats:
    """Per-account sums of int truths, as the strings EmailTrack answers with."""
    out: dict[str, dict[str, int]] = {}
    for truth in truths:
        for account, row in truth.items():
            acc = out.setdefault(account, dict.fromkeys(FIELDS, 0))
            for f in FIELDS:
                acc[f] += int(row.get(f, 0))
    return {a: {f: str(v[f]) for f in FIELDS} for a, v in out.items()}


def genlog(mta: str, lines: int, out: Path, seed: int = 1) -> dict[str, Any]:
    """A bench/genlog.py log (and its sidecars); returns its truth file."""
    subprocess.run(
        [sys.executable, str(GENLOG), "--mta", mta, "--lines", str(lines), "--out", str(out),
         "--seed", str(seed)],
        check=True, capture_output=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    return dict(json.loads(Path(f"{out}.truth.json").read_text()))


def genlog_expected(truth: dict[str, Any]) -> Stats:
    """genlog's truth in EmailTrack terms (cPanel: a reject is one send and one failure)."""
    out: Stats = {}
    for account, t in truth["accounts"].items():
        row = {
            "TOTALSIZE": t["bytes_delivered"],
            "SUCCESSCOUNT": t["deliveries"],
            "SENDCOUNT": t["sends"] + t["rejects"],
            "DEFERCOUNT": t["deferrals"],
            "FAILCOUNT": t["failures"] + t["rejects"],
            "INPROGRESSCOUNT": t["in_progress"],
        }
        row["DEFERFAILCOUNT"] = row["DEFERCOUNT"] + row["FAILCOUNT"]
        if any(row.values()):
            out[account] = {f: str(row[f]) for f in FIELDS}
    return out


def domains_of(userdomains: Path) -> dict[str, str]:
    table = {}
    for line in userdomains.read_text().splitlines():
        dom, _, user = line.partition(":")
        if user.strip() and dom.strip() != "*":
            table[dom.strip()] = user.strip()
    return table


SAMPLES_END = datetime(2026, 11, 24, 6, 10, tzinfo=UTC)  # after tests/mta/samples/*.log


class Messages:
    """Fresh Exim messages, one authenticated send, one delivery, Completed each.

    They are stamped from ``start`` on, one second apart: just after the recorded samples
    (2026-11-24 06:00), never from the wall clock, so expectations hold on any date."""

    def __init__(self, seed: int = 0, start: datetime = SAMPLES_END) -> None:
        self.rng = random.Random(seed)
        self.n = 0
        self.start = start

    def qid(self) -> str:
        alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

        def part(k: int) -> str:
            return "".join(self.rng.choice(alphabet) for _ in range(k))

        return f"{part(6)}-{part(6)}-{part(2)}"

    def send(self, user: str, domain: str, size: int = 1000, *, deliver: bool = True) -> bytes:
        self.n += 1
        ts = (self.start + timedelta(seconds=self.n)).strftime("%Y-%m-%d %H:%M:%S")
        q = self.qid()
        lines = [
            f"{ts} {q} <= {user}@{domain} H=(c.test) [127.0.0.1] P=esmtpa "
            f"A=plain_server:{user}@{domain} S={size} id=n{self.n}@{domain}"
        ]
        if deliver:
            lines.append(
                f"{ts} {q} => r{self.n}@dest.example R=dnslookup T=remote_smtp "
                f'H=mx.dest.example [192.0.2.9] C="250 OK"'
            )
            lines.append(f"{ts} {q} Completed")
        return "".join(line + "\n" for line in lines).encode()


# --- the daemon ------------------------------------------------------------------------------


class DaemonExited(AssertionError):
    pass


class Serve:
    """One ``logstats serve`` process, its notify socket and its parsed log (stderr)."""

    def __init__(
        self,
        cfg: Path,
        *,
        prefix: Sequence[str] = (),
        notify_dir: Path | None = None,
        env: dict[str, str] | None = None,
        argv: Sequence[str] | None = None,
    ) -> None:
        self.cfg = cfg
        self.socket_path = config_socket(cfg)
        folder = notify_dir or cfg.parent
        self.notify_path = str(folder / f"notify-{os.getpid()}-{id(self)}.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.notify_path)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        os.chmod(self.notify_path, 0o777)  # an unprivileged daemon must be able to send
        self.datagrams: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.stderr: list[str] = []
        self.cond = threading.Condition()
        command = argv or [sys.executable, "-m", "logstats", "serve", "--config", str(cfg)]
        self.proc = subprocess.Popen(
            [*prefix, *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env={
                **os.environ,
                "PYTHONFAULTHANDLER": "1",  # a daemon that hangs shows where (_stacks)
                **(env or {}),
                "NOTIFY_SOCKET": self.notify_path,
            },
        )
        self.pid = self.proc.pid
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
            threading.Thread(target=self._read_notify, daemon=True),
        ]
        for t in self._threads:
            t.start()

    # readers
    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            text = raw.decode("utf-8", "replace").rstrip("\n")
            with self.cond:
                self.raw.append(text)
                try:
                    event = json.loads(text)
                except ValueError:
                    event = {"event": "<not json>", "text": text}
                self.events.append(event if isinstance(event, dict) else {"event": "<?>"})
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def _read_stderr(self) -> None:
        """The daemon's log: JSON lines on stderr (anything else is kept as text)."""
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            text = raw.decode("utf-8", "replace").rstrip("\n")
            with self.cond:
                self.stderr.append(text)
                try:
                    event = json.loads(text)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    self.events.append(event)
                    self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def _read_notify(self) -> None:
        self.notify.settimeout(0.2)
        while True:
            try:
                data = self.notify.recv(65536)
            except TimeoutError:
                if self.proc.poll() is not None and self.notify.fileno() < 0:
                    return
                continue
            except OSError:
                return
            with self.cond:
                self.datagrams.append(data.decode("utf-8", "replace"))
                self.cond.notify_all()

    # waiting
    def _wait(self, test: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                got = test()
                if got:
                    return got
                if self.proc.poll() is not None:
                    # give the readers a moment to drain what the process wrote last
                    self.cond.wait(0.2)
                    got = test()
                    if got:
                        return got
                    raise DaemonExited(
                        f"daemon exited ({self.proc.returncode}) while waiting for {what}\n"
                        f"stdout: {self.raw[-10:]}\nstderr: {self.stderr[-20:]}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"timed out after {timeout}s waiting for {what}\n"
                        f"stdout: {self.raw[-10:]}\nstderr: {self.stderr[-20:]}"
                    )
                self.cond.wait(min(left, 0.2))

    def wait_ready(self, timeout: float = 30.0, after: int = 0) -> None:
        """Until the daemon sent READY=1 (state restored, sources open)."""
        self._wait(
            lambda: any("READY=1" in d.split("\n") for d in self.datagrams[after:]),
            timeout,
            "READY=1",
        )

    def wait_event(
        self,
        name: str,
        timeout: float = 15.0,
        after: int = 0,
        where: Callable[[dict[str, Any]], bool] = lambda e: True,
    ) -> dict[str, Any]:
        """The first log event ``name`` (from index ``after``) matching ``where``."""

        def find() -> dict[str, Any] | None:
            for e in self.events[after:]:
                if e.get("event") == name and where(e):
                    return e
            return None

        return dict(self._wait(find, timeout, f"event {name}"))

    def names(self) -> list[str]:
        with self.cond:
            return [str(e.get("event")) for e in self.events]

    # talking to it
    def health(self) -> dict[str, Any]:
        status, body = api.get(self.socket_path, "/healthz", {}, timeout=5.0)
        assert status == 200, body
        return dict(body)

    def stats(self) -> Stats:
        """``emailtrack --all`` through the daemon's socket (what `logstats query` asks)."""
        status, body = api.get(self.socket_path, "/v1/emailtrack", {"all": "1"}, timeout=5.0)
        assert status == 200, body
        return dict(body)

    def wait_lines(self, n: int, timeout: float = 15.0) -> None:
        """Until this process has taken ``n`` lines (``/healthz`` ``lines``)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.health()["lines"]
            if got >= n:
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"daemon took {got} lines, not {n}; {self.stderr[-5:]}")
            time.sleep(0.01)  # polling with a deadline

    def wait_stats(self, expected: Stats, timeout: float = 20.0) -> Stats:
        """Poll the query until it equals ``expected``; the last answer either way."""
        deadline = time.monotonic() + timeout
        got: Stats = {}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                got = self.stats()
            except OSError:
                got = {}
            if got == expected:
                return got
            time.sleep(0.02)  # polling with a deadline
        return got

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM and the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float = 20.0) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the daemon did not exit within {timeout}s; where its threads were:\n"
                + self._stacks()
            ) from None
        finally:
            if self.proc.poll() is None:
                self.kill()
        for t in self._threads[:2]:
            t.join(5)
        return rc

    def _stacks(self) -> str:
        """SIGABRT: faulthandler (PYTHONFAULTHANDLER, set for every daemon started here)
        writes every thread's stack to stderr; the end of stderr, with them."""
        seen = len(self.stderr)
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        for t in self._threads[:2]:
            t.join(2)
        return "\n".join(self.stderr[max(seen - 20, 0) :])

    def kill(self) -> None:
        """SIGKILL (no chance to commit) and reap."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for t in self._threads[:2]:
            t.join(5)

    def close(self) -> None:
        self.kill()
        self.notify.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.notify_path)

    def __enter__(self) -> Serve:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the CLI and the store -------------------------------------------------------------------


def cli(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "logstats", *args],
        capture_output=True, text=True, check=False, cwd=ROOT, timeout=timeout,
    )  # fmt: skip


def query_all(cfg: Path, db: Path | None = None) -> Stats:
    """``logstats query emailtrack --all --format json`` (socket if the daemon runs, else DB)."""
    extra = ["--db", str(db)] if db else []
    proc = cli("query", "emailtrack", "--config", str(cfg), *extra, "--all", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def backfill(cfg: Path, db: Path, *paths: Path, mta: str | None = None) -> Stats:
    """A clean ``logstats backfill`` of ``paths`` into ``db``; its --all answer."""
    extra = ["--mta", mta] if mta else []
    proc = cli("backfill", "--config", str(cfg), "--db", str(db), *extra, *map(str, paths))
    assert proc.returncode == 0, proc.stderr
    return query_all(cfg, db)


def store_summary(db: Path | str) -> dict[str, Any]:
    """What two stores must agree on: hourly counters, in-flight messages, unknown lines,
    the /metrics histograms."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        sums = ", ".join(
            f"sum({c})::BIGINT"
            for c in ("sends", "successes", "defers", "fails", "bytes", "rejects", "expired",
                      "local_successes", "local_bytes")
        )  # fmt: skip
        counters = con.execute(
            f"SELECT bucket, mta, account, sender_domain, {sums} FROM counters "
            "GROUP BY ALL HAVING " + " OR ".join(f"sum({c}) <> 0" for c in ("sends", "successes",
            "defers", "fails", "bytes", "rejects", "expired")) + " ORDER BY ALL"
        ).fetchall()  # fmt: skip
        pending = con.execute(
            "SELECT mta, scope, queue_id, account, received FROM pending ORDER BY ALL"
        ).fetchall()
        unparsed = con.execute("SELECT mta, reason, lines FROM unparsed ORDER BY ALL").fetchall()
        histograms = con.execute(
            "SELECT mta, metric, le, count, sum FROM histograms "
            "WHERE count <> 0 OR sum <> 0 ORDER BY ALL"
        ).fetchall()
    finally:
        con.close()
    return {
        "counters": counters,
        "pending": pending,
        "unparsed": unparsed,
        "histograms": histograms,
    }


def store_contents(db: Path | str) -> dict[str, Any]:
    """Everything two stores that read the same lines must hold alike: the counters and
    the dimension counters folded by key (rows with nothing in them left out), the event
    rows, the messages in flight with their whole state, unknown lines, anomalies and the
    /metrics histograms."""
    counts = ("sends", "successes", "defers", "fails", "bytes", "rejects", "expired",
              "local_successes", "local_bytes")  # fmt: skip
    dim_counts = ("accepted_out", "accepted_in", "delivered", "deferred", "failed", "rejected",
                  "bytes")  # fmt: skip

    def folded(table: str, key: str, cols: tuple[str, ...], extra: str = "") -> str:
        sums = ", ".join(f"sum({c})::BIGINT" for c in cols)
        nonzero = " OR ".join(f"sum({c}) <> 0" for c in cols)
        return (
            f"SELECT {key}, {sums}{extra} FROM {table} GROUP BY ALL HAVING {nonzero} ORDER BY ALL"
        )

    con = duckdb.connect(str(db), read_only=True)
    try:
        return {
            "counters": con.execute(
                folded("counters", "bucket, mta, account, sender_domain", counts)
            ).fetchall(),
            "dims": con.execute(
                folded(
                    "dims",
                    "bucket, mta, account, sender_domain, kind, value",
                    dim_counts,
                    ", min(first_at), max(last_at)",
                )
            ).fetchall(),
            "events": con.execute("SELECT * FROM events ORDER BY ALL").fetchall(),
            "pending": con.execute("SELECT * FROM pending ORDER BY ALL").fetchall(),
            "unparsed": con.execute(
                "SELECT mta, reason, lines FROM unparsed ORDER BY ALL"
            ).fetchall(),
            "anomalies": con.execute(
                "SELECT mta, kind, count FROM anomalies ORDER BY ALL"
            ).fetchall(),
            # the /metrics histograms, bucket by bucket (empty buckets left out)
            "histograms": con.execute(
                "SELECT mta, metric, le, count, sum FROM histograms "
                "WHERE count <> 0 OR sum <> 0 ORDER BY ALL"
            ).fetchall(),
        }
    finally:
        con.close()


def unparsed(db: Path | str) -> dict[str, int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute("SELECT reason, sum(lines)::BIGINT FROM unparsed GROUP BY 1").fetchall()
    finally:
        con.close()
    return {r[0]: int(r[1]) for r in rows}


# --- writing logs ----------------------------------------------------------------------------


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def chunks(data: bytes, rng: random.Random, low: int = 1, high: int = 400) -> Iterator[bytes]:
    """``data`` cut at random byte positions (so lines are split across writes)."""
    i = 0
    while i < len(data):
        n = rng.randint(low, high)
        yield data[i : i + n]
        i += n


def split_at_lines(data: bytes, *fractions: float) -> list[bytes]:
    """``data`` cut into parts at line boundaries near the given fractions."""
    lines = data.splitlines(keepends=True)
    cuts = [0, *(round(len(lines) * f) for f in fractions), len(lines)]
    return [b"".join(lines[a:b]) for a, b in itertools.pairwise(cuts)]


def as_nobody() -> list[str] | None:
    """A prefix running a command as uid/gid 65534, or None when impossible."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        return None
    return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


def proc_cpu_rss(pid: int) -> tuple[float, int]:
    """(utime + stime in seconds, RSS in bytes) of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss
