"""Moves the wall clock of every Python process of a test run (LOGSTATS_TEST_SHIFT_DAYS).

``make test`` runs the backfill, daemon and API tests a second time with the clock 400
days ahead, to prove that no test builds log lines, windows or expectations from the wall
clock.  tests/conftest.py puts this folder on PYTHONPATH for that run, so the daemons and
CLIs the tests start travel too.  Only the wall clock moves (time.time, datetime.now):
monotonic clocks, sleeps and timeouts are untouched.
"""

import os

_days = os.environ.get("LOGSTATS_TEST_SHIFT_DAYS")
if _days:
    from datetime import UTC, datetime, timedelta

    import time_machine

    _start = datetime.now(UTC)  # clock-ok: the travel starts from the real time
    time_machine.travel(_start + timedelta(days=float(_days)), tick=True).start()
