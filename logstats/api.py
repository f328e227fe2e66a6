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

import base64
import contextlib
import hmac
import http.client
import json
import os
import pwd
import re
import socket
import socketserver
import struct
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import duckdb

from logstats import query
from logstats.config import Config
from logstats.model import Dimension, StatsRequest
from logstats.shapes import EPOCH, FAR_FUTURE, JSON, SHAPES, ApiError
from logstats.store import account_stats, series


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


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks, and what they may see (None: no limit in that dimension)."""

    name: str
    accounts: tuple[str, ...] | None = None
    domains: tuple[str, ...] | None = None
    tags: tuple[str, ...] | None = None


ADMIN = Caller("admin")


class Denied(Exception):
    """Authentication failed (401) or the caller may not see this (403)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    server: ApiServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        if self.connection.family in (socket.AF_INET, socket.AF_INET6):
            # headers and body go out in two writes: without this a small answer waits
            # ~40 ms for the client's delayed ACK on a kept-open connection
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        return  # the daemon logs batches, not requests

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        self._answer("GET", url.path, parse_qs(url.query, keep_blank_values=True))

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        params = parse_qs(url.query, keep_blank_values=True)
        for name, given in parse_qs(body, keep_blank_values=True).items():
            params.setdefault(name, []).extend(given)
        self._answer("POST", url.path, params)

    def _peer_user(self) -> str | None:
        """The Unix user at the other end of the socket (SO_PEERCRED), None over TCP."""
        sock = self.connection
        if sock.family != socket.AF_UNIX:
            return None
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        _, uid, _ = struct.unpack("3i", creds)
        try:
            return pwd.getpwuid(uid).pw_name
        except KeyError:
            return f"uid:{uid}"

    def _answer(self, method: str, path: str, params: dict[str, list[str]]) -> None:
        content_type = "application/json"
        try:
            status, body, content_type = self.server.route(
                method, path, params, self.headers, self._peer_user()
            )
        except duckdb.Error as exc:
            status, body = 503, {"ok": False, "error": f"store: {exc}", "status": 503}
        except Exception as exc:  # a bug: answer, and let the daemon log it
            self.server.errors += 1
            traceback.print_exc()
            status, body = 500, {"ok": False, "error": f"internal error: {exc}", "status": 500}
        if isinstance(body, str):
            data = body.encode()
        else:
            data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="logstats"')
        self.end_headers()
        self.wfile.write(data)


def _last(params: dict[str, list[str]], name: str) -> str | None:
    given = params.get(name)
    return given[-1] if given else None


def _single(params: dict[str, list[str]]) -> dict[str, str]:
    return {k: v[-1] for k, v in params.items()}


def _route_pattern(route: str) -> tuple[str, re.Pattern[str]]:
    method, _, path = route.partition(" ")
    regex = re.sub(r"\\{(\w+)\\}", r"(?P<\1>[^/]+)", re.escape(path))
    return method, re.compile(f"^{regex}$")


_ROUTES = [
    (name, *_route_pattern(route)) for name, shape in SHAPES.items() for route in shape.routes
]


class Router:
    """Routing, authentication and scoping, shared by the Unix and TCP servers."""

    con: duckdb.DuckDBPyConnection
    errors: int = 0  # requests that failed with an internal error
    status: Callable[[], dict[str, Any]]
    lock: threading.Lock
    config: Config
    metrics: Callable[[duckdb.DuckDBPyConnection], str]

    def route(
        self,
        method: str,
        path: str,
        params: dict[str, list[str]],
        headers: Any,
        peer: str | None,
    ) -> tuple[int, Any, str]:
        if path == "/healthz":
            return 200, {"ok": True, **self.status()}, JSON
        if path == "/metrics":
            from logstats.metrics import CONTENT_TYPE

            with self._cursor() as cur:
                return 200, self.metrics(cur), CONTENT_TYPE
        if path in ("/v1/emailtrack", "/json-api/cpanel"):
            return self._emailtrack(path, _single(params), headers, peer)
        for name, route_method, pattern in _ROUTES:
            m = pattern.match(path)
            if m and route_method == method:
                return self._vendor(name, m.groupdict(), params, headers, peer)
        if any(p.match(path) for _, _, p in _ROUTES):
            return 405, {"message": f"{method} is not allowed on {path}"}, JSON
        return 404, {"ok": False, "error": f"no such endpoint: {path}", "status": 404}, JSON

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self.lock:
            cursor = self.con.cursor()
        try:
            yield cursor
        finally:
            cursor.close()

    # -- authentication ----------------------------------------------------------------------
    def _key(self, secret: str | None) -> Caller | None:
        if not secret:
            return None
        for key in self.config.api_keys:
            if hmac.compare_digest(key.key, secret):
                return Caller(
                    key.name or "key", key.accounts or None, key.domains or None, key.tags or None
                )
        raise Denied(401, "invalid API key")

    def _peer(self, peer: str | None) -> Caller:
        if peer is None:
            raise Denied(401, "an API key is required")
        if peer in self.config.admins:
            return ADMIN
        return Caller(peer, accounts=(peer,))

    def _caller(
        self, family: str, params: dict[str, list[str]], headers: Any, peer: str | None
    ) -> Caller:
        """Each API's own authentication; on the Unix socket, the peer's user otherwise."""
        secret: str | None = None
        auth = headers.get("Authorization") or ""
        scheme, _, credential = auth.partition(" ")
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(credential).decode().partition(":")
            except (ValueError, UnicodeDecodeError) as exc:
                raise Denied(401, "malformed Authorization header") from exc
            secret = password or user
        elif scheme.lower() in ("bearer", "token"):
            secret = credential
        elif scheme.lower() in ("cpanel", "whm"):
            secret = credential.partition(":")[2]
        if family == "sendgrid":
            secret = secret or _last(params, "api_key")
        elif family == "smtpeter":
            secret = secret or _last(params, "access_token")
        caller = self._key(secret)
        return caller if caller is not None else self._peer(peer)

    # -- endpoints ---------------------------------------------------------------------------
    def _emailtrack(
        self, path: str, params: dict[str, str], headers: Any, peer: str | None
    ) -> tuple[int, Any, str]:
        try:
            caller = self._caller("cpanel", {}, headers, peer)
            if path == "/json-api/cpanel":
                module = params.get("cpanel_jsonapi_module")
                func = params.get("cpanel_jsonapi_func")
                if (module, func) != ("EmailTrack", "stats"):
                    raise BadRequest(
                        f"cpanel_jsonapi_module/func: {module}::{func} is not served here"
                    )
                if not params.get("cpanel_jsonapi_user"):
                    raise BadRequest("cpanel_jsonapi_user: missing")
                params = {**params, "account": params["cpanel_jsonapi_user"]}
            if caller.domains is not None or caller.tags is not None:
                # EmailTrack counts a whole account: a key limited to domains or tags may not
                raise Denied(403, "this key is limited to domains or tags: EmailTrack not allowed")
            if caller.accounts is not None:
                if params.get("all") in ("1", "true"):
                    raise Denied(403, "all accounts: not allowed for this caller")
                if params.get("account") not in caller.accounts:
                    raise Denied(403, f"account {params.get('account')!r}: not allowed")
            with self._cursor() as cur:
                return 200, emailtrack(cur, params), JSON
        except (BadRequest, Denied) as exc:
            # cPanel answers failures with HTTP 200 and event.result 0
            status = exc.status if isinstance(exc, Denied) else 200
            return status, query.emailtrack_error(str(exc)), JSON

    def _vendor(
        self,
        name: str,
        path_params: dict[str, str],
        params: dict[str, list[str]],
        headers: Any,
        peer: str | None,
    ) -> tuple[int, Any, str]:
        shape = SHAPES[name]
        family = name.partition(".")[0]
        now = datetime.now(UTC)
        try:
            caller = self._caller(family, params, headers, peer)
            q = shape.parse(params, now, path_params)
            q = _scope(q, caller, path_params)
            rows = []
            if q.request is not None:
                with self._cursor() as cur:
                    rows = series(cur, q.request)
            body = shape.render(q, rows, now)
            return 200, body, getattr(q, "content_type", shape.content_type)
        except ApiError as exc:
            return exc.status, exc.body, exc.content_type
        except Denied as exc:
            return exc.status, _vendor_error(family, name, str(exc)), shape.content_type
        except ValueError as exc:  # a grouping the store does not keep
            return 400, _vendor_error(family, name, str(exc)), shape.content_type


def _vendor_error(family: str, name: str, message: str) -> Any:
    if family == "mailgun":
        return {"message": message}
    if family == "sendgrid":
        from logstats.shapes import sendgrid

        fmt = sendgrid.Format.XML if name.endswith("xml") else sendgrid.Format.JSON
        return sendgrid.error_body(fmt, message)
    return {"error": message}


def _scope(q: Any, caller: Caller, path_params: dict[str, str]) -> Any:
    """Restrict a parsed query to what the caller may see, or refuse (403)."""
    request = q.request
    if request is None:
        return q
    if caller.accounts is not None:
        asked = request.accounts
        allowed = (
            caller.accounts if asked is None else tuple(a for a in asked if a in caller.accounts)
        )
        if not allowed:
            raise Denied(403, "this key may not see that account")
        q = q.scoped(allowed)
        request = q.request
    for dimension, limit in (
        (Dimension.SENDER_DOMAIN, caller.domains),
        (Dimension.TAG, caller.tags),
    ):
        if limit is None:
            continue
        asked_values = [v for d, v in request.filters if d is dimension]
        if asked_values and not all(v in limit for v in asked_values):
            raise Denied(403, f"this key may not see that {dimension.value}")
        if not asked_values:
            if len(limit) != 1:
                raise Denied(403, f"this key is limited to {', '.join(limit)}: name one")
            q = replace(
                q, request=replace(request, filters=(*request.filters, (dimension, limit[0])))
            )
            request = q.request
    return q


class LocalRouter(Router):
    """The API answered in-process from a read-only store (the CLI, no daemon running).
    Whoever can open the database file sees everything in it: the caller is an admin."""

    def __init__(self, con: duckdb.DuckDBPyConnection, config: Config) -> None:
        self.con = con
        self.config = replace(config, admins=(*config.admins, LOCAL))
        self.lock = threading.Lock()
        self.status = dict
        self.metrics = lambda cur: prometheus_local(cur, config)

    def route(
        self, method: str, path: str, params: dict[str, list[str]], headers: Any, peer: str | None
    ) -> tuple[int, Any, str]:
        return super().route(method, path, params, headers, LOCAL)


LOCAL = "\0local-file-reader"  # not a Unix user name: only LocalRouter uses it


def prometheus_local(cursor: duckdb.DuckDBPyConnection, config: Config) -> str:
    from logstats.metrics import render

    return render(cursor, per_account=config.metrics_per_account)


class ApiServer(Router, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Threaded HTTP on a Unix socket; each request reads through its own cursor."""

    daemon_threads = True

    def __init__(
        self,
        path: str,
        con: duckdb.DuckDBPyConnection,
        status: Callable[[], dict[str, Any]],
        config: Config | None = None,
        metrics: Callable[[duckdb.DuckDBPyConnection], str] | None = None,
        mode: int = 0o660,
    ) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.con = con
        self.status = status
        self.config = config or Config()
        self.metrics = metrics or (lambda cur: "")
        self.lock = threading.Lock()
        socketserver.UnixStreamServer.__init__(self, path, _Handler)
        os.chmod(path, mode)

    def shutdown_and_remove(self) -> None:
        self.shutdown()
        self.server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.server_address)  # type: ignore[arg-type]


class TcpApiServer(Router, ThreadingHTTPServer):
    """The same API on a TCP address (``api.tcp``); callers must present a key."""

    daemon_threads = True

    def __init__(
        self,
        address: str,
        con: duckdb.DuckDBPyConnection,
        status: Callable[[], dict[str, Any]],
        config: Config,
        metrics: Callable[[duckdb.DuckDBPyConnection], str],
    ) -> None:
        host, _, port = address.rpartition(":")
        self.con = con
        self.status = status
        self.config = config
        self.metrics = metrics
        self.lock = threading.Lock()
        ThreadingHTTPServer.__init__(self, (host.strip("[]"), int(port)), _Handler)

    def shutdown_and_remove(self) -> None:
        self.shutdown()
        self.server_close()


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


def get(path: str, route: str, params: Any, timeout: float = 10.0) -> tuple[int, Any]:
    """GET from the daemon's socket; raises OSError when nothing listens there."""
    conn = _UnixConnection(path, timeout)
    try:
        conn.request("GET", f"{route}?{urlencode(params, doseq=True)}")
        response = conn.getresponse()
        data = response.read().decode("utf-8", "replace")
        kind = response.getheader("Content-Type") or ""
        return response.status, json.loads(data) if "json" in kind else data
    finally:
        conn.close()
