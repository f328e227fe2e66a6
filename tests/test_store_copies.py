"""The copies of counters and dims clustered for answers across accounts (migration 0005):
every answer read through them equals the answer of the tables themselves, whatever mix of
compacted rows and rows written since the last compaction the store holds."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import logstats.store as store_mod
from logstats.model import Dimension, DimTally, Resolution, SeriesRequest, Tally
from logstats.store import MIGRATIONS, Batch, Store, metric_rows, series

H0 = int(datetime(2024, 3, 1, tzinfo=UTC).timestamp()) // 3600  # first hour of the data
HOURS = 24 * 75  # into May: three months
ACCOUNTS = ("alice", "bob", "carol", "dave", "-remote-")
DOMAINS = {
    "alice": ("alice.test", "shared.test"),
    "bob": ("bob.test", "shared.test"),
    "carol": ("carol.test",),
    "dave": ("dave.test", "mail.dave.test"),
    "-remote-": ("sender.example",),
}
TAGS = ("newsletter", "invoice", "alice-own")
KINDS = {
    "tag": TAGS,
    "ip": ("192.0.2.1", "192.0.2.2"),
    "provider": ("gmail", "other"),
    "recipient_domain": ("gmail.com", "example.org"),
}
HOSTS = ("", "mx1", "mx2")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FAR = datetime(9999, 1, 1, tzinfo=UTC)


def random_batch(rng: random.Random, hours: range, n: int = 40) -> Batch:
    """Counter and dimension deltas for ``n`` random keys in ``hours`` (epoch hours)."""
    counters: dict[tuple[int, str, str, str], Tally] = {}
    dims: dict[tuple[int, str, str, str, str, str], DimTally] = {}
    for _ in range(n):
        hour = rng.choice(hours)
        account = rng.choice(ACCOUNTS)
        domain = rng.choice(DOMAINS[account])
        host = rng.choice(HOSTS)
        counters[(hour, account, domain, host)] = Tally(*(rng.randrange(1, 50) for _ in range(9)))
        kind = rng.choice(tuple(KINDS))
        value = rng.choice(KINDS[kind])
        first = hour * 3600 + rng.randrange(0, 1800)
        dims[(hour, account, domain, kind, value, host)] = DimTally(
            *(rng.randrange(0, 20) for _ in range(7)),
            first,
            first + rng.randrange(0, 1800),
        )
    return Batch(mta=rng.choice(("exim", "postfix")), counters=counters, dims=dims)


def requests() -> list[SeriesRequest]:
    """Requests the copies answer (no account restriction, a domain or a value filter)."""
    start = datetime.fromtimestamp(H0 * 3600, UTC) + timedelta(days=20)
    windows = [
        (EPOCH, FAR, (Resolution.DAY, None)),
        (start, start + timedelta(days=30), (Resolution.HOUR, Resolution.MONTH)),
    ]
    out = []
    for lo, hi, resolutions in windows:
        for res in resolutions:
            for domain in ("alice.test", "shared.test", "sender.example", "nowhere.test"):
                out.append(SeriesRequest(lo, hi, res, filters=((Dimension.SENDER_DOMAIN, domain),)))
                for host in HOSTS:  # one syslog host of a central log
                    out.append(
                        SeriesRequest(
                            lo, hi, res, filters=((Dimension.SENDER_DOMAIN, domain),), host=host
                        )
                    )
            out.append(
                SeriesRequest(
                    lo,
                    hi,
                    res,
                    filters=((Dimension.SENDER_DOMAIN, "shared.test"),),
                    group=Dimension.ACCOUNT,
                )
            )
            for dim, value in (
                (Dimension.TAG, "newsletter"),
                (Dimension.TAG, "alice-own"),
                (Dimension.TAG, "unknown"),
                (Dimension.IP, "192.0.2.2"),
                (Dimension.PROVIDER, "gmail"),
                (Dimension.RECIPIENT_DOMAIN, "example.org"),
            ):
                out.append(SeriesRequest(lo, hi, res, filters=((dim, value),)))
                out.append(SeriesRequest(lo, hi, res, filters=((dim, value),), host="mx2"))
            out.append(
                SeriesRequest(
                    lo,
                    hi,
                    res,
                    filters=((Dimension.SENDER_DOMAIN, "shared.test"), (Dimension.TAG, "invoice")),
                )
            )
            out.append(
                SeriesRequest(
                    lo, hi, res, filters=((Dimension.TAG, "invoice"),), group=Dimension.TAG
                )
            )
    return out


def plain(store: Store, req: SeriesRequest, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The answer of the tables themselves (the copies not used)."""
    with monkeypatch.context() as m:
        m.setattr(store_mod, "_across", lambda req, table: False)
        return list(series(store.con, req))


def assert_same_answers(
    store: Store, monkeypatch: pytest.MonkeyPatch, *, through_copies: bool = True
) -> None:
    used: list[int | None] = []
    real = store_mod._uncopied_from

    def spy(con, table):  # type: ignore[no-untyped-def]
        used.append(real(con, table))
        return used[-1]

    monkeypatch.setattr(store_mod, "_uncopied_from", spy)
    for req in requests():
        want = plain(store, req, monkeypatch)
        assert list(series(store.con, req)) == want, req
        # the same through a cursor (as the API reads), inside a read-only transaction
        cur = store.con.cursor()
        try:
            assert list(series(cur, req)) == want, req
        finally:
            cur.close()
    got = metric_rows(store.con, True)
    monkeypatch.setattr(store_mod, "_uncopied_from", lambda con, table: None)
    assert got == metric_rows(store.con, True)  # the totals of counters themselves
    monkeypatch.setattr(store_mod, "_uncopied_from", real)
    assert used, "no request went through the copies"
    if through_copies:
        assert all(u is not None for u in used), "the copies' marks did not hold"


def assert_copies_hold_their_tables(store: Store) -> None:
    """Right after compact(): each copy sums to its table, key by key."""
    con = store.con
    for table, (copy, _) in store_mod.COPIES.items():
        cols = store_mod.COUNTER_COLUMNS if table == "counters" else store_mod.DIM_COLUMNS
        keys = "bucket, mta, host, account, sender_domain" + (
            ", kind, value" if table == "dims" else ""
        )
        sums = ", ".join(f"sum({c})" for c in cols)
        q = f"SELECT {keys}, {sums} FROM {{}} GROUP BY ALL ORDER BY ALL"
        assert con.execute(q.format(table)).fetchall() == con.execute(q.format(copy)).fetchall()
        if table == "counters":
            totals = f"SELECT mta, host, account, {sums} FROM {{}} GROUP BY ALL ORDER BY ALL"
            assert con.execute(totals.format(table)).fetchall() == (
                con.execute(totals.format("counter_totals")).fetchall()
            )
        n, end = con.execute(
            "SELECT rows_copied, rowid_end FROM copy_marks WHERE tbl = ?", [table]
        ).fetchone()  # type: ignore[misc]
        assert n == con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
        assert (
            0 == con.execute(f"SELECT count(*) FROM {table} WHERE rowid >= ?", [end]).fetchone()[0]
        )  # type: ignore[index]


def test_answers_equal_before_any_compaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(1)
    with Store(tmp_path / "a.duckdb") as store:
        for _ in range(10):
            store.commit(random_batch(rng, range(H0, H0 + HOURS)))
        assert_same_answers(store, monkeypatch)  # all rows are since the (empty) copy


def test_answers_equal_with_compacted_rows_and_rows_since(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(2)
    path = tmp_path / "b.duckdb"
    with Store(path) as store:
        for _ in range(15):
            store.commit(random_batch(rng, range(H0, H0 + HOURS)))
        store.compact()
        assert_copies_hold_their_tables(store)
        assert_same_answers(store, monkeypatch)
        # rows since: in new hours, in the newest month, and late ones in old buckets
        for hours in (range(H0 + HOURS - 48, H0 + HOURS), range(H0, H0 + 24 * 10)):
            for _ in range(4):
                store.commit(random_batch(rng, hours, n=15))
        assert_same_answers(store, monkeypatch)
        # an hourly compaction from the last two days: the late rows in old buckets stay
        # unfolded in the table, the copy takes them as they are
        since = datetime.fromtimestamp((H0 + HOURS - 48) * 3600, UTC)
        store.compact(since)
        assert_copies_hold_their_tables(store)
        assert_same_answers(store, monkeypatch)
        for _ in range(3):
            store.commit(random_batch(rng, range(H0, H0 + HOURS), n=20))
        store.compact(datetime.fromtimestamp((H0 + 24 * 40) * 3600, UTC))  # "a month again"
        assert_copies_hold_their_tables(store)
        store.commit(random_batch(rng, range(H0, H0 + HOURS), n=20))
        store.con.execute("CHECKPOINT")
        assert_same_answers(store, monkeypatch)
    with Store(path) as store:  # reopened: the marks still hold
        assert_same_answers(store, monkeypatch)
    with Store(path, read_only=True) as store:
        assert_same_answers(store, monkeypatch)


def test_marks_that_do_not_hold_fall_back_to_the_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row deleted outside compact() breaks the count the marks keep: the tables answer,
    and the next compact() copies them afresh."""
    rng = random.Random(3)
    with Store(tmp_path / "c.duckdb") as store:
        for _ in range(8):
            store.commit(random_batch(rng, range(H0, H0 + HOURS)))
        store.compact()
        store.commit(random_batch(rng, range(H0, H0 + HOURS)))
        for table in ("counters", "dims"):
            store.con.execute(f"DELETE FROM {table} WHERE rowid = (SELECT min(rowid) FROM {table})")
        assert store_mod._uncopied_from(store.con, "counters") is None
        assert_same_answers(store, monkeypatch, through_copies=False)
        store.compact(datetime.fromtimestamp((H0 + HOURS - 24) * 3600, UTC))
        assert_copies_hold_their_tables(store)
        assert_same_answers(store, monkeypatch)


def test_migration_copies_an_existing_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(4)
    path = tmp_path / "d.duckdb"
    before = tuple(m for m in MIGRATIONS if m[0] < "0005")
    with monkeypatch.context() as m:
        m.setattr(store_mod, "MIGRATIONS", before)
        with Store(path) as store:
            for _ in range(6):
                store.commit(random_batch(rng, range(H0, H0 + HOURS)))
    with Store(path) as store:
        assert "0005_cross_account_copies" in store.migrations()
        assert_same_answers(store, monkeypatch)
        store.compact()
        assert_copies_hold_their_tables(store)


def test_scoped_requests_read_the_tables(tmp_path: Path) -> None:
    """A key scoped to accounts (or an account filter) is served by the tables clustered by
    account; only answers across accounts read the copies."""
    req = SeriesRequest(EPOCH, FAR, None, filters=((Dimension.SENDER_DOMAIN, "alice.test"),))
    assert store_mod._across(req, "counters")
    assert not store_mod._across(
        SeriesRequest(EPOCH, FAR, None, ("alice",), req.filters), "counters"
    )
    assert not store_mod._across(SeriesRequest(EPOCH, FAR, None), "counters")
    tag = SeriesRequest(EPOCH, FAR, None, filters=((Dimension.TAG, "x"),))
    assert store_mod._across(tag, "dims")
    assert not store_mod._across(SeriesRequest(EPOCH, FAR, None, group=Dimension.TAG), "dims")
