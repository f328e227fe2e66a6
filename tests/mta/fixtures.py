"""pytest plugin for the real-MTA tests (load it from tests/conftest.py with
``pytest_plugins = ["tests.mta.fixtures"]``, or ``pytest -p tests.mta.fixtures``).

Session fixtures run each MTA's scenario at most once per session and run logstats on
its log at most once; teardown (stopping the MTA and sink) happens inside
:func:`tests.mta.runner.run_scenario`, also on failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest
import yaml

from .record import logstats_config
from .runner import ScenarioResult, run_scenario

MTAS = ("exim", "postfix")


def logstats_command() -> list[str]:
    """The logstats CLI next to the running interpreter, else ``python -m logstats``."""
    script = Path(sys.executable).with_name("logstats")
    return [str(script)] if script.exists() else [sys.executable, "-m", "logstats"]


def run_logstats(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*logstats_command(), *args], capture_output=True, text=True, check=False, timeout=300
    )


def serve_config(folder: Path, log: Path, mta: str) -> Path:
    """A config for ``logstats serve`` following ``log``: :func:`logstats_config` plus
    only where the daemon keeps its store, answers, and what it follows (every other
    setting, batching and polling included, is the shipped default)."""
    data = {
        **logstats_config(),
        "store": {"path": str(folder / "db.duckdb")},
        "sources": [{"path": str(log), "mta": mta}],
        "serve": {"socket": str(folder / "ls.sock")},
    }
    cfg = folder / "logstats.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    return cfg


class LogstatsRun:
    """logstats backfilled with one scenario log into a fresh DuckDB."""

    def __init__(self, result: ScenarioResult, workdir: Path) -> None:
        self.result = result
        self.config = workdir / "logstats.yaml"
        self.config.write_text(yaml.safe_dump(logstats_config()))
        self.db = workdir / "stats.duckdb"
        self.backfill = run_logstats(
            "backfill",
            "--config",
            str(self.config),
            "--db",
            str(self.db),
            "--mta",
            result.mta,
            str(result.log),
        )

    def check_backfill(self) -> None:
        assert self.backfill.returncode == 0, (
            f"logstats backfill failed ({self.backfill.returncode}):\n"
            f"{self.backfill.stdout}\n{self.backfill.stderr}"
        )

    def query(self, *extra: str) -> object:
        """Run ``logstats query emailtrack`` and return its JSON output."""
        self.check_backfill()
        res = run_logstats(
            "query", "emailtrack", "--config", str(self.config), "--db", str(self.db), *extra
        )
        assert res.returncode == 0, (
            f"logstats query failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
        )
        return json.loads(res.stdout)

    def all_accounts(self) -> dict[str, dict[str, int]]:
        """``--all --format json`` with the string values turned into ints."""
        data = self.query("--all", "--format", "json")
        assert isinstance(data, dict), data
        return {acct: {k: int(v) for k, v in row.items()} for acct, row in data.items()}


def pytest_configure(config: pytest.Config) -> None:
    for line in (
        "mta: starts a real Exim or Postfix (installs Debian packages when missing)",
        "peer: runs pflogsumm or eximstats as an oracle",
    ):
        config.addinivalue_line("markers", line)


class ScenarioGetter(Protocol):
    def __call__(self, mta: str, filtered: bool = False) -> ScenarioResult: ...


class LogstatsGetter(Protocol):
    def __call__(self, mta: str, filtered: bool = False) -> LogstatsRun: ...


@pytest.fixture(scope="session")
def mta_scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScenarioGetter]:
    """``mta_scenario("exim" | "postfix", filtered=False)`` -> the scenario result (run
    once per MTA and variant; ``filtered``: every message through the content filter)."""
    if os.geteuid() != 0:
        pytest.skip("the real-MTA harness installs packages and starts MTAs: needs root")
    cache: dict[tuple[str, bool], ScenarioResult] = {}

    def get(mta: str, filtered: bool = False) -> ScenarioResult:
        if (mta, filtered) not in cache:
            name = f"mta-{mta}{'-filter' if filtered else ''}"
            cache[mta, filtered] = run_scenario(
                mta, tmp_path_factory.mktemp(name), filtered=filtered
            )
        return cache[mta, filtered]

    yield get


@pytest.fixture(scope="session")
def logstats_on(
    mta_scenario: ScenarioGetter, tmp_path_factory: pytest.TempPathFactory
) -> LogstatsGetter:
    """``logstats_on("exim" | "postfix", filtered=False)`` -> logstats backfilled with
    that MTA's log of that variant."""
    cache: dict[tuple[str, bool], LogstatsRun] = {}

    def get(mta: str, filtered: bool = False) -> LogstatsRun:
        if (mta, filtered) not in cache:
            name = f"logstats-{mta}{'-filter' if filtered else ''}"
            cache[mta, filtered] = LogstatsRun(
                mta_scenario(mta, filtered), tmp_path_factory.mktemp(name)
            )
        return cache[mta, filtered]

    return get
