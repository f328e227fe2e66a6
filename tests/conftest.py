"""Shared fixtures: run the CLI in-process or as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

if os.environ.get("LOGSTATS_TEST_SHIFT_DAYS"):
    # the clock-shifted run (see tests/clockshift): this process and every Python process
    # it starts see the wall clock moved ahead
    _shift = str(ROOT / "tests" / "clockshift")
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (_shift, os.environ.get("PYTHONPATH", "")) if p
    )
    from datetime import UTC, datetime, timedelta

    import time_machine

    _days = float(os.environ["LOGSTATS_TEST_SHIFT_DAYS"])
    time_machine.travel(datetime.now(UTC) + timedelta(days=_days), tick=True).start()  # clock-ok

# Real Exim and Postfix scenario fixtures (tests/mta): session-scoped, started once.
pytest_plugins = ["tests.mta.fixtures"]


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``logstats ARGS`` in a fresh process, as an operator runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "logstats", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"logstats {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def scenario_config(folder: Path) -> Path:
    """A config mapping the scripted logs' domains to their accounts."""
    cfg = folder / "logstats.yaml"
    cfg.write_text("timezone: UTC\naccounts:\n  domains: {alice.test: alice, bob.test: bob}\n")
    return cfg


def all_stats(db: Path, *extra: str) -> dict[str, dict[str, str]]:
    out = run_cli("query", "emailtrack", "--db", str(db), "--all", "--format", "json", *extra)
    return json.loads(out.stdout)


@pytest.fixture
def cli():
    return run_cli
