"""Smoke test of bench/query.py with tiny sizes: builds, times in-process and over HTTP."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import duckdb
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_query", ROOT / "bench" / "query.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_query", module)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "DATA", tmp_path / "data")
    return module


def test_tiny_run(bench, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "q.json"
    argv = ["--accounts", "30", "--days", "3", "--runs", "3", "--subjects", "3"]
    assert bench.main([*argv, "--variants", "account-in", "--out", str(out)]) == 0
    report = capsys.readouterr().out
    assert "| shape | window |" in report and "python bench/query.py --accounts 30" in report
    data = json.loads(out.read_text())
    store = data["store"]
    assert store["accounts"] == 30 and store["counter_rows"] > 0 and store["dims_rows"] > 0
    # compact() folded the second deltas
    assert store["counter_rows"] < store["counter_rows_before_compact"]
    shapes = {c["shape"] for c in data["cases"]}
    assert {"cpanel.emailtrack", "mailgun.domain_total", "sendgrid.json"} <= shapes
    for case in data["cases"]:
        for how in ("in-process", "http", "http-newconn", "variant:account-in"):
            assert case[how]["runs"] == 3 and case[how]["p99_ms"] >= case[how]["median_ms"] > 0

    # the same answer in-process as the store holds
    db = next((tmp_path / "data").glob("query-a30-d3-s1.duckdb"))
    con = duckdb.connect(str(db), read_only=True)
    try:
        s = bench.subjects(con, 2, 1)[0]
        case = next(
            c
            for c in bench.cases(bench.datetime.fromisoformat(store["end"]))
            if c.shape == "cpanel.emailtrack" and c.window == "7d"
        )
        end = bench.datetime.fromisoformat(store["end"])
        body = bench.in_process_once(con, case, s, end, bench.series)
        want = con.execute(
            "SELECT sum(sends + rejects) FROM counters WHERE account = ? AND bucket >= ?",
            [s.account, (end - bench.timedelta(days=7)).replace(tzinfo=None)],
        ).fetchone()[0]
        assert body["cpanelresult"]["data"][0]["SENDCOUNT"] == str(want or 0)
    finally:
        con.close()

    # a second run uses the cached store
    assert bench.main([*argv, "--no-http"]) == 0
    assert "[cached]" in capsys.readouterr().out
