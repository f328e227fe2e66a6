"""HTTP answers from the daemon, on a Unix socket (and, optionally, a TCP address).

DuckDB lets one process hold the database read-write, so while ``logstats serve`` runs,
queries go through it: each request reads through its own cursor of the daemon's
connection (DuckDB's MVCC gives it the last committed batch).

Routes:
  GET /healthz                         {"ok": true, ...daemon status}
  GET /v1/emailtrack?account=A&...     cPanel EmailTrack::stats (``all=1``: every account)
  GET /json-api/cpanel?cpanel_jsonapi_module=EmailTrack&cpanel_jsonapi_func=stats
      &cpanel_jsonapi_apiversion=2&cpanel_jsonapi_user=USER   (the WHM-style call)
POST is accepted with the same parameters as a form body.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import duckdb

from logstats import query
from logstats.model import StatsRequest
from logstats.store import account_stats

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)


class BadRequest(ValueError):
    """A parameter the API cannot use; the message names it."""


def parse_time(name: str, value: str) -> datetime:
    text = value.strip()
    if text.isdigit():
        return datetime.fromtimestamp(int(text), UTC)
    try:
        ts = datetime.fromisoformat(text)
    except ValueError as exc:
        raise BadRequest(f"{name}: {value!r} is not an ISO 8601 date or Unix time") from exc
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def window(params: dict[str, str]) -> tuple[datetime, datetime]:
    if "days" in params:
        days = params["days"]
        if not days.isdigit() or int(days) <= 0:
            raise BadRequest(f"days: {days!r} is not a positive whole number")
        now = datetime.now(UTC)
        return now - timedelta(days=int(days)), now
    start = parse_time("start", params["start"]) if params.get("start") else EPOCH
    end = parse_time("end", params["end"]) if params.get("end") else FAR_FUTURE
    if start >= end:
        raise BadRequest("start must be before end")
    return start, end


def emailtrack(con: duckdb.DuckDBPyConnection, params: dict[str, str]) -> dict[str, Any]:
    """The EmailTrack answer for query parameters (shared by the CLI and HTTP)."""
    deliverytype = params.get("deliverytype") or None
    if deliverytype not in (None, "remote", "local", "remote_or_faildefer"):
        raise BadRequest(
            f"deliverytype: {deliverytype!r} is not remote, local or remote_or_faildefer"
        )
    account = params.get("account") or None
    everyone = params.get("all") in ("1", "true")
    if account is None and not everyone:
        raise BadRequest("account: missing (or all=1)")
    start, end = window(params)
    rows = account_stats(con, StatsRequest(start, end, None if everyone else account))
    return query.emailtrack_answer(
        rows,
        account=None if everyone else account,
        deliverytype=deliverytype,
        nosize=params.get("nosize") in ("1", "true"),
        nosuccess=params.get("nosuccess") in ("1", "true"),
    )


class _Handler(BaseHTTPRequestHandler):
    server: ApiServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return  # the daemon logs batches, not requests

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        self._answer(url.path, _single(parse_qs(url.query)))

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        params = _single(parse_qs(url.query))
        params.update(_single(parse_qs(body)))
        self._answer(url.path, params)

    def _answer(self, path: str, params: dict[str, str]) -> None:
        try:
            status, body = self.server.route(path, params)
        except BadRequest as exc:
            if path.startswith("/json-api/cpanel") or path == "/v1/emailtrack":
                # cPanel answers failures with HTTP 200 and event.result 0
                status, body = 200, query.emailtrack_error(str(exc))
            else:
                status, body = 400, {"ok": False, "error": str(exc), "status": 400}
        except duckdb.Error as exc:
            status, body = 503, {"ok": False, "error": f"store: {exc}", "status": 503}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _single(params: dict[str, list[str]]) -> dict[str, str]:
    return {k: v[-1] for k, v in params.items()}


class ApiServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Threaded HTTP on a Unix socket; each request reads through its own cursor."""

    daemon_threads = True

    def __init__(
        self,
        path: str,
        con: duckdb.DuckDBPyConnection,
        status: Callable[[], dict[str, Any]],
        mode: int = 0o660,
    ) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.con = con
        self.status = status
        self.lock = threading.Lock()
        super().__init__(path, _Handler)
        os.chmod(path, mode)

    def route(self, path: str, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if path == "/healthz":
            return 200, {"ok": True, **self.status()}
        with self.lock:
            cursor = self.con.cursor()
        try:
            if path == "/v1/emailtrack":
                return 200, emailtrack(cursor, params)
            if path == "/json-api/cpanel":
                return 200, self._cpanel(cursor, params)
        finally:
            cursor.close()
        return 404, {"ok": False, "error": f"no such endpoint: {path}", "status": 404}

    @staticmethod
    def _cpanel(cursor: duckdb.DuckDBPyConnection, params: dict[str, str]) -> dict[str, Any]:
        module = params.get("cpanel_jsonapi_module")
        func = params.get("cpanel_jsonapi_func")
        if (module, func) != ("EmailTrack", "stats"):
            raise BadRequest(f"cpanel_jsonapi_module/func: {module}::{func} is not served here")
        user = params.get("cpanel_jsonapi_user")
        if not user:
            raise BadRequest("cpanel_jsonapi_user: missing")
        return emailtrack(cursor, {**params, "account": user})

    def shutdown_and_remove(self) -> None:
        self.shutdown()
        self.server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.server_address)  # type: ignore[arg-type]


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def get(path: str, route: str, params: dict[str, str], timeout: float = 10.0) -> tuple[int, Any]:
    """GET from the daemon's socket; raises OSError when nothing listens there."""
    conn = _UnixConnection(path, timeout)
    try:
        conn.request("GET", f"{route}?{urlencode(params)}")
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()
