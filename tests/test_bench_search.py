"""bench/search.py at tiny sizes, and the span-by-span search it measures: the same rows
as one ORDER BY ... LIMIT query over the whole window, on its multi-day generated store."""

from __future__ import annotations

import importlib.util
import itertools
import json
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from logstats import track
from logstats.store import Store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_search", ROOT / "bench" / "search.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_search"] = module
    spec.loader.exec_module(module)
    module.DATA = tmp_path_factory.mktemp("data")
    return module


def test_tiny_run(bench, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    assert bench.main(["--days", "6", "--per-day", "4000", "--accounts", "50", "--runs", "3"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    result = json.loads(out[-1])
    assert result["rows"] == 6 * 4000 * 3 // 2  # a receipt and two recipients per message
    assert len(result["cases"]) == 14
    assert all(c["p99_ms"] >= c["p50_ms"] > 0 for c in result["cases"].values())


@pytest.mark.parametrize("newest_first", [True, False])
def test_spans_give_the_rows_of_one_query(bench, newest_first: bool) -> None:  # type: ignore[no-untyped-def]
    """Over six days, limited searches read span by span return exactly what one query over
    the window returns (offsets, limits across span edges, rare and frequent matches)."""
    db = next(Path(bench.DATA).glob("search-*.duckdb"))
    end = bench.END
    with Store(db, read_only=True) as store:
        con = store.con
        (account,) = con.execute(
            "SELECT account FROM events GROUP BY account ORDER BY count(*) DESC LIMIT 1"
        ).fetchone()
        (rare,) = con.execute(
            "SELECT recipient FROM events WHERE outcome = 'delivered' AND ts < ? LIMIT 1",
            [(end - timedelta(days=5)).replace(tzinfo=None)],
        ).fetchone()
        start = end - timedelta(days=6)
        for filters, limit, offset in (
            ({"account": account}, 250, 0),
            ({"account": account}, 2000, 1500),  # more than the first day holds
            ({"recipient": rare}, 250, 0),  # only in the oldest span
            ({}, 7000, 100),
            ({"domain": "dom0.test"}, 50, 10),
        ):
            q = track.TrackQuery(
                start=start,
                end=end,
                newest_first=newest_first,
                limit=limit,
                offset=offset,
                **filters,
            )
            assert len(track.spans(q)) == 3
            one = [
                track.TrackRow(*r)
                for r in track._stored_search(con, q, track._stored_types(q))
            ]
            assert one, filters
            assert track.search(con, q) == one, filters


def test_spans_of_the_widest_window_stay_within_it() -> None:
    """A search without a window (cPanel's search without startdate/enddate) spans the
    whole datetime range: the spans cover it exactly, in order, without leaving it."""
    from datetime import UTC, datetime

    from logstats import track

    lo, hi = datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC)
    for newest_first in (True, False):
        got = track.spans(track.TrackQuery(lo, hi, newest_first=newest_first))
        ordered = sorted(got)
        assert ordered == (got[::-1] if newest_first else got)
        assert (lo, hi) == (ordered[0][0], ordered[-1][1])
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ordered))
