"""``logstats fleet --from DIR [--engine duckdb|spark] query SHAPE ... | search ...``: the
answers of ``logstats query`` and ``logstats search`` over every host's export, rendered by
the same shapes (``logstats.shapes``, ``logstats.query``, ``logstats.trackview``)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from logstats import config as config_mod
from logstats.errors import LogstatsError
from logstats.fleet.engine import FleetEngine, engine
from logstats.track import RECIPIENT_TYPES, TrackQuery


def run(args: argparse.Namespace) -> int:
    if not Path(args.source).is_dir():
        raise LogstatsError(f"{args.source}: no such folder (the export of `logstats export`)")
    cfg = config_mod.load(args.config)
    if args.fleet_command == "serve":
        from logstats.fleet import serve

        serve.block_signals()  # before the engine starts a thread: sigwait takes them
    fleet = engine(args.engine, args.source)
    try:
        if args.fleet_command == "serve":
            import structlog

            return serve.run(fleet, cfg, args, structlog.get_logger())
        if args.fleet_command == "search":
            return _search(fleet, args)
        if args.shape == "emailtrack":
            return _emailtrack(fleet, args, cfg)
        return _vendor(fleet, args)
    finally:
        fleet.close()


def _emailtrack(fleet: FleetEngine, args: argparse.Namespace, cfg: config_mod.Config) -> int:
    from logstats import api
    from logstats.cli import print_emailtrack

    return print_emailtrack(
        args, lambda params: api.emailtrack_of(fleet.account_stats, params, cfg)
    )


def vendor_answer(fleet: FleetEngine, path: str, params: dict[str, list[str]]) -> tuple[int, Any]:
    """(status, body) of a vendor shape's path and parameters over the fleet."""
    from logstats import api
    from logstats.shapes import SHAPES, ApiError, host_value, hosted

    target = api.find(path)
    if target is None or target.name not in SHAPES or target.name == "mailgun.events":
        family = api.family_of(path)
        return api.error_answer(family, 404, f"not answered over the fleet: {path}")[:2]
    shape = SHAPES[target.name]
    now = datetime.now(UTC)
    try:
        q = hosted(shape.parse(params, now, dict(target.path_params)), host_value(params))
        rows = fleet.series(q.request) if q.request is not None else []
        return 200, shape.render(q, rows, now)
    except ApiError as exc:
        return exc.status, exc.body
    except ValueError as exc:  # a grouping the export does not keep
        family = target.name.partition(".")[0]
        return api.error_answer(family, 400, str(exc), xml=path.endswith(".xml"))[:2]


def _vendor(fleet: FleetEngine, args: argparse.Namespace) -> int:
    from logstats.cli import api_request

    path, params = api_request(args)
    status, body = vendor_answer(fleet, path, params)
    print(body if isinstance(body, str) else json.dumps(body, indent=2))
    return 0 if status < 400 else 1


def _search(fleet: FleetEngine, args: argparse.Namespace) -> int:
    import shutil

    from logstats import trackview

    end = args.end
    if end is None:
        newest = fleet.newest()
        end = (newest or datetime(1970, 1, 1, tzinfo=UTC)) + timedelta(microseconds=1)
    start = args.start or end - timedelta(hours=24)
    if start >= end:
        raise LogstatsError("--start must be before --end")
    types = [t for t in (args.type or RECIPIENT_TYPES) if t != "inprogress"]
    q = TrackQuery(
        start=start,
        end=end,
        types=frozenset(types),
        newest_first=not args.oldest_first,
        limit=args.limit,
        **{
            k: getattr(args, k)
            for k in trackview.SEARCH_FILTERS
            if getattr(args, k, None) is not None
        },
    )
    rows = fleet.search(q)
    if args.format == "json":
        for r in rows:
            print(json.dumps(r.as_dict(), ensure_ascii=False))
    elif rows:
        width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
        print(trackview.search_table([r.row for r in rows], width))
    return 0 if rows else 1
