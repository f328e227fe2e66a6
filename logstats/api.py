"""Routing, authentication and scoping of the HTTP API (the transport is logstats/server.py).

DuckDB lets one process hold the database read-write, so while ``logstats serve`` runs,
queries go through it: each request reads through its own cursor of the daemon's
connection (DuckDB's MVCC gives it the last committed batch).

Routes:
  GET /healthz                         {"ok": true} (an admin caller: the daemon's status)
  GET /metrics                         Prometheus text (admins only: an unlimited key as
                                       Bearer or basic auth, or an ``api.admins`` user on
                                       the socket)
  GET /v1/emailtrack?account=A&...     cPanel EmailTrack::stats (``all=1``: every account)
  GET /json-api/cpanel?cpanel_jsonapi_module=EmailTrack&cpanel_jsonapi_func=stats
      &cpanel_jsonapi_apiversion=2&cpanel_jsonapi_user=USER   (the WHM-style call; also
      under ``/cpsess<digits>/``, the session form of cPanel's own URLs);
      ``cpanel_jsonapi_func=search``: EmailTrack::search (logstats/shapes/emailtrack_search.py)
  GET /json-api/emailtrack_search?api.version=1&...   WHM API 1 (also under /cpsess<digits>/;
  GET /json-api/emailtrack_stats?api.version=1&...    logstats/shapes/whm_api1.py): an admin
      key every account, a key limited to accounts those; emailtrack_stats is one record,
      EmailTrack's counters summed over them (``starttime``/``endtime`` Unix times)
  the vendor shapes' routes (logstats/shapes/__init__.py ``SHAPES``)
  /ui/...  (and / -> /ui/)             the web UI (logstats/web: its pages, its JSON, its
                                       login and session cookie; the scope rule below)
POST is accepted on the cPanel and SendGrid routes with the same parameters as a form
body; HEAD wherever GET is.  ``Router.admit`` decides what can be decided before a body
is read (the route, the method, the body's size, a key given in the headers or the query
string); ``Router.route`` answers.

Scope rule: a key may see the accounts, sender domains and tags in its lists (an empty
list: no limit there).  A request that names an account, a sender domain or a tag the
key may not see is refused with 403 in that API's own error envelope, whatever is stored
under that name: the answer depends on the key alone, so it tells nothing about the data.
A sender domain belongs to the account the domain table maps it to (``accounts.domains``,
``accounts.userdomains``): a key limited to accounts is refused a domain mapped to another
account, and a key limited to domains is refused an account none of its domains maps to.
Otherwise a name narrows the answer within the key's scope.  A key's domains are
``fnmatch`` patterns (asked domains compared lower-cased); SendGrid's categories are
asked tags.  A call naming no domain is answered within the key's domains; one naming no
tag within the key's one tag, or refused (403, "name one") when the key has several.

A key's user: the user named with the key (``Authorization: cpanel USER:KEY`` or ``whm
USER:KEY``, SendGrid's ``api_user``) must be the key's ``name`` or one of its
``accounts`` when the key is limited to accounts; otherwise the call is refused (401).
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hmac
import http.client
import json
import re
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import duckdb

from logstats import query, timeparse, track
from logstats.config import Config
from logstats.errors import ConfigError, LogstatsError
from logstats.model import AccountStats, Dimension, SeriesRequest, SeriesRow, StatsRequest
from logstats.shapes import (
    EPOCH,
    FAR_FUTURE,
    JSON,
    SHAPES,
    XML,
    ApiError,
    cpanel_api2,
    emailtrack_search,
    host_value,
    hosted,
    whm_api1,
)
from logstats.shapes.cpanel_api2 import Api2Error
from logstats.shapes.emailtrack_search import SearchError
from logstats.store import account_stats, series

MAX_BODY = 64 * 1024  # bytes of a request body (a form of parameters); more: 413
MAX_DAYS = 36_600  # ``days=`` of EmailTrack: at most 100 years
_LATEST = datetime(9000, 1, 1, tzinfo=UTC)  # later stamps are refused (no 500 near year 9999)
_CPSESS = re.compile(r"^/cpsess\d{1,32}(?=/)")
Answer = tuple[int, Any, str]  # (HTTP status, body: JSON-ready value, str or Reply, type)


@dataclass(frozen=True, slots=True)
class Reply:
    """A body sent as it is, with more headers (the web UI's pages, cookies, redirects)."""

    data: bytes
    headers: tuple[tuple[str, str], ...] = ()


class BadRequest(ValueError):
    """A parameter the API cannot use; the message names it."""


def parse_time(name: str, value: str) -> datetime:
    """``start``/``end`` as logstats.timeparse reads them (the CLI's rule), 1970 to 8999."""
    try:
        ts = timeparse.parse_time(value)
        if not EPOCH <= ts < _LATEST:
            raise ValueError(f"{value!r} is outside 1970 to 8999")
    except (ValueError, OverflowError, OSError) as exc:
        raise BadRequest(f"{name}: {exc} ({timeparse.FORMS}, from 1970 to 8999)") from exc
    return ts


def window(params: dict[str, str]) -> tuple[datetime, datetime]:
    if "days" in params:
        days = params["days"]
        if not (days.isascii() and days.isdigit()) or not 0 < int(days) <= MAX_DAYS:
            raise BadRequest(f"days: {days!r} is not a whole number from 1 to {MAX_DAYS}")
        now = datetime.now(UTC)
        return now - timedelta(days=int(days)), now
    start = parse_time("start", params["start"]) if params.get("start") else EPOCH
    end = parse_time("end", params["end"]) if params.get("end") else FAR_FUTURE
    if start >= end:
        raise BadRequest("start must be before end")
    return start, end


def _whm_window(params: Mapping[str, str]) -> dict[str, str]:
    """WHM's ``starttime``/``endtime`` (Unix times) as EmailTrack's ``start``/``end``."""
    out: dict[str, str] = {}
    for name, ours in (("starttime", "start"), ("endtime", "end")):
        value = (params.get(name) or "").strip()
        if value:
            if not (value.isascii() and value.isdigit()):
                raise BadRequest(f"{name}: {value!r} is not a Unix time")
            out[ours] = value
    return out


def _summed(
    per_account: Mapping[str, Mapping[str, str]], accounts: tuple[str, ...] | None
) -> dict[str, str]:
    """One EmailTrack row (counts as strings) summed over ``accounts`` (None: all)."""
    total: dict[str, int] = {}
    for account, row in per_account.items():
        if accounts is None or account in accounts:
            for name, value in row.items():
                total[name] = total.get(name, 0) + int(value)
    names = next(iter(per_account.values()), {}) if per_account else {}
    return {name: str(total.get(name, 0)) for name in names}


def emailtrack(
    con: duckdb.DuckDBPyConnection, params: dict[str, str], config: Config | None = None
) -> dict[str, Any]:
    """The EmailTrack answer for query parameters (shared by the CLI and HTTP). With
    ``config``, an account that does not exist (logstats.accounts) is cPanel's failure."""
    return emailtrack_of(lambda req: account_stats(con, req), params, config)


def emailtrack_of(
    stats: Callable[[StatsRequest], list[AccountStats]],
    params: dict[str, str],
    config: Config | None = None,
) -> dict[str, Any]:
    """``emailtrack`` with the numbers from ``stats`` (a store's, or a fleet's)."""
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
    try:
        host = host_value(params)
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    rows = stats(StatsRequest(start, end, None if everyone else account, host))
    if config is not None and account is not None and not everyone:
        from logstats import accounts

        if account not in accounts.mapped(config):
            ever = stats(StatsRequest(EPOCH, FAR_FUTURE, account))
            counted = any(any(v != "0" for v in query.emailtrack_row(s).values()) for s in ever)
            if not accounts.exists(config, account, counted):
                raise BadRequest(accounts.reason(account))
    return query.emailtrack_answer(
        rows,
        account=None if everyone else account,
        deliverytype=deliverytype,
        nosize=params.get("nosize") in ("1", "true"),
        nosuccess=params.get("nosuccess") in ("1", "true"),
    )


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks, and what they may see (None: no limit in that dimension); ``users``: the
    user names that may be given with its key (empty: any)."""

    name: str
    accounts: tuple[str, ...] | None = None
    domains: tuple[str, ...] | None = None
    tags: tuple[str, ...] | None = None
    users: frozenset[str] = frozenset()

    @property
    def unlimited(self) -> bool:
        return self.accounts is None and self.domains is None and self.tags is None


ADMIN = Caller("admin")


class Denied(Exception):
    """Authentication failed (401) or the caller may not see this (403)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _last(params: Mapping[str, list[str]], name: str) -> str | None:
    given = params.get(name)
    return given[-1] if given else None


def _single(params: Mapping[str, list[str]]) -> dict[str, str]:
    return {k: v[-1] for k, v in params.items()}


def _header(headers: Any, name: str) -> str:
    value = headers.get(name.lower()) or headers.get(name) or ""
    return str(value)


def _route_pattern(route: str) -> tuple[str, re.Pattern[str]]:
    method, _, path = route.partition(" ")
    regex = re.sub(r"\\{(\w+)\\}", r"(?P<\1>[^/]+)", re.escape(path))
    return method, re.compile(f"^{regex}$")


_ROUTES = [
    (name, *_route_pattern(route)) for name, shape in SHAPES.items() for route in shape.routes
]
_FIXED = {
    "/healthz": ("health", "healthz", ("GET", "HEAD")),
    "/metrics": ("metrics", "metrics", ("GET", "HEAD")),
    "/v1/emailtrack": ("cpanel", "emailtrack", ("GET", "HEAD", "POST")),
    "/json-api/cpanel": ("cpanel", "json-api", ("GET", "HEAD", "POST")),
    "/v1/track": ("track", "track", ("GET",)),
    "/json-api/emailtrack_search": ("whm", "emailtrack_search", ("GET", "HEAD", "POST")),
    "/json-api/emailtrack_stats": ("whm", "emailtrack_stats", ("GET", "HEAD", "POST")),
}


@dataclass(frozen=True, slots=True)
class Target:
    """What a path names: the API ``family``, the endpoint ``name`` (a ``SHAPES`` key, or
    healthz, metrics, emailtrack, json-api), the methods it answers and the path's
    parameters."""

    family: str
    name: str
    methods: tuple[str, ...]
    path_params: Mapping[str, str]


def find(path: str) -> Target | None:
    if path in {"/", "/ui"} or path.startswith("/ui/"):
        from logstats import web

        return web.target(path)
    m = _CPSESS.match(path)
    if m and path[m.end() :] in _FIXED and path[m.end() :].startswith("/json-api/"):
        path = path[m.end() :]  # cPanel's own URLs carry the session: /cpsess0123456789/...
    fixed = _FIXED.get(path)
    if fixed is not None:
        return Target(*fixed, {})
    found: dict[str, tuple[str, dict[str, str]]] = {}
    for name, method, pattern in _ROUTES:
        match = pattern.match(path)
        if match is not None:
            found.setdefault(method, (name, match.groupdict()))
    if not found:
        return None
    methods = tuple(found)
    name, path_params = found.get("GET") or next(iter(found.values()))
    if "GET" in methods:
        methods = (*methods, "HEAD")
    return Target(name.partition(".")[0], name, methods, path_params)


def family_of(path: str) -> str:
    """The API a path belongs to by its prefix (for answers to paths no route names)."""
    if _CPSESS.match(path) or path.startswith(("/json-api/", "/v1/emailtrack")):
        return "cpanel"
    if path.startswith("/v3/"):
        return "mailgun"
    if path.startswith("/api/"):
        return "sendgrid"
    if path.startswith("/v1/"):
        return "smtpeter"
    if path in {"/", "/ui"} or path.startswith("/ui/"):
        return "web"
    return "logstats"


def error_answer(family: str, status: int, message: str, *, xml: bool = False) -> Answer:
    """An error in the envelope of ``family``'s API."""
    if family == "cpanel":
        return status, query.emailtrack_error(message), JSON
    if family == "whm":
        return status, whm_api1.error("", message), JSON
    if family == "mailgun":
        return status, {"message": message}, JSON
    if family == "sendgrid":
        from logstats.shapes import sendgrid

        fmt = sendgrid.Format.XML if xml else sendgrid.Format.JSON
        return status, sendgrid.error_body(fmt, message), XML if xml else JSON
    if family == "smtpeter":
        return status, {"error": message}, JSON
    return status, {"ok": False, "error": message, "status": status}, JSON


def _credentials(
    family: str, params: Mapping[str, list[str]], headers: Any
) -> tuple[str | None, str | None]:
    """(the key, the user named with it) as each API carries them; Denied (401) when the
    Authorization header is malformed."""
    secret: str | None = None
    user: str | None = None
    scheme, _, credential = _header(headers, "Authorization").strip().partition(" ")
    scheme, credential = scheme.lower(), credential.strip()
    if scheme == "basic":
        try:
            decoded = base64.b64decode(credential, validate=True).decode()
        except (ValueError, UnicodeDecodeError) as exc:
            raise Denied(401, "malformed Authorization header") from exc
        name, _, password = decoded.partition(":")
        secret = password or name
    elif scheme in ("bearer", "token"):
        secret = credential
    elif scheme in ("cpanel", "whm"):
        user, _, secret = credential.partition(":")
    if family == "sendgrid":
        secret = secret or _last(params, "api_key")
        user = _last(params, "api_user") or user
    elif family == "smtpeter":
        secret = secret or _last(params, "access_token")
    return secret or None, user or None


class Router:
    """Routing, authentication and scoping, for the daemon's listeners and the CLI."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection | None,
        status: Callable[[], dict[str, Any]],
        config: Config,
        metrics: Callable[[duckdb.DuckDBPyConnection], str],
    ) -> None:
        self.con = con
        self.status = status
        self.config = config  # replaced on reload
        self.metrics = metrics
        self.lock = threading.Lock()
        self.errors = 0  # requests that failed with an internal error
        self._table: tuple[Config, Mapping[str, str]] | None = None
        self._ui: Any = None  # logstats.web.WebUI, made at the first web request

    def _web(self) -> Any:
        with self.lock:
            if self._ui is None:
                from logstats.web import WebUI

                self._ui = WebUI(self)
            return self._ui

    def allowed(self, path: str) -> tuple[str, ...]:
        """The methods ``path`` answers (for ``Allow``); () when no route names it."""
        target = find(path)
        return target.methods if target is not None else ()

    def admit(
        self,
        method: str,
        path: str,
        params: Mapping[str, list[str]],
        headers: Any,
        peer: str | None,
        length: int,
    ) -> Answer | None:
        """Before the body is read: a refusal (404, 405, 413, 401), or None to go on.

        ``params`` are the query string's; ``length`` the announced body size.  A key in the
        headers or the query string is checked here; without one, a TCP caller is refused
        unless the API carries its key in the form body (SendGrid's POST ``api_key``)."""
        target = find(path)
        if target is None or method not in target.methods:
            return self._unrouted(method, path, target)
        xml = path.endswith(".xml")
        if length > MAX_BODY:
            return error_answer(
                target.family, 413, f"the request body is larger than {MAX_BODY} bytes", xml=xml
            )
        if target.family in ("health", "web"):  # the web UI checks its session cookie itself
            return None
        if target.family == "metrics":
            try:
                self._metrics_caller(params, headers, peer)
            except Denied as exc:
                return _plain(exc)
            return None
        try:
            secret, _ = _credentials(target.family, params, headers)
            if secret is not None:
                self._caller(target.family, params, headers, peer)
            elif peer is None and not (target.family == "sendgrid" and method == "POST"):
                raise Denied(401, "an API key is required")
        except Denied as exc:
            return error_answer(target.family, exc.status, str(exc), xml=xml)
        return None

    def route(
        self,
        method: str,
        path: str,
        params: dict[str, list[str]],
        headers: Any,
        peer: str | None,
    ) -> Answer:
        target = find(path)
        if target is None or method not in target.methods:
            return self._unrouted(method, path, target)
        refused = self.refuse(target, path, params)
        if refused is not None:
            return refused
        if target.family == "health":
            return self._health(params, headers, peer)
        if target.family == "metrics":
            from logstats.metrics import CONTENT_TYPE

            try:
                self._metrics_caller(params, headers, peer)
            except Denied as exc:
                return _plain(exc)
            with self._cursor() as cur:
                return 200, self.metrics(cur), CONTENT_TYPE
        if target.family == "cpanel":
            return self._emailtrack(target.name, _single(params), headers, peer)
        if target.family == "track":
            return self._track(_single(params), headers, peer)
        if target.name == "mailgun.events":
            return self._events(dict(target.path_params), params, headers, peer)
        if target.family == "whm":
            return self._whm(target.name, _single(params), headers, peer)
        if target.family == "web":
            answer: Answer = self._web().route(method, target.name, params, headers)
            return answer
        return self._vendor(target.name, dict(target.path_params), params, headers, peer)

    def refuse(self, target: Target, path: str, params: Mapping[str, list[str]]) -> Answer | None:
        """A route this router does not answer (a fleet's: logstats.fleet.serve), or None."""
        return None

    def _unrouted(self, method: str, path: str, target: Target | None) -> Answer:
        if target is None:
            return error_answer(family_of(path), 404, f"no such endpoint: {path}")
        return error_answer(
            target.family,
            405,
            f"{method} is not allowed on {path} (allowed: {', '.join(target.methods)})",
            xml=path.endswith(".xml"),
        )

    # -- the numbers (a store's; a fleet's in logstats.fleet.serve) ---------------------------
    def stats(self, req: StatsRequest) -> list[AccountStats]:
        with self._cursor() as cur:
            return account_stats(cur, req)

    def series(self, req: SeriesRequest) -> list[SeriesRow]:
        with self._cursor() as cur:
            return series(cur, req)

    @contextlib.contextmanager
    def _cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if self.con is None:  # a fleet's router: every route that reads a store is refused
            raise LogstatsError("no store behind this router")
        with self.lock:
            cursor = self.con.cursor()
        try:
            yield cursor
        finally:
            cursor.close()

    def _domains(self) -> Mapping[str, str]:
        """The domain -> account table of the running configuration (read once per config)."""
        cached = self._table
        if cached is None or cached[0] is not self.config:
            try:
                table: Mapping[str, str] = self.config.domain_map()
            except ConfigError:
                table = {}
            cached = (self.config, table)
            self._table = cached
        return cached[1]

    # -- authentication ----------------------------------------------------------------------
    def _key(self, secret: str) -> Caller:
        for key in self.config.api_keys:
            if hmac.compare_digest(key.key.encode(), secret.encode()):
                users = frozenset(u for u in (key.name, *key.accounts) if u)
                return Caller(
                    key.name or "key",
                    key.accounts or None,
                    key.domains or None,
                    key.tags or None,
                    users if key.accounts else frozenset(),
                )
        raise Denied(401, "invalid API key")

    def _peer(self, peer: str | None) -> Caller:
        if peer is None:
            raise Denied(401, "an API key is required")
        if peer in self.config.admins:
            return ADMIN
        return Caller(peer, accounts=(peer,))

    def _caller(
        self, family: str, params: Mapping[str, list[str]], headers: Any, peer: str | None
    ) -> Caller:
        """Each API's own authentication; on the Unix socket, the peer's user otherwise."""
        secret, user = _credentials(family, params, headers)
        if secret is None:
            return self._peer(peer)
        caller = self._key(secret)
        if user is not None and caller.users and user not in caller.users:
            raise Denied(401, f"user {user!r} does not go with this API key")
        return caller

    def _metrics_caller(
        self, params: Mapping[str, list[str]], headers: Any, peer: str | None
    ) -> Caller:
        """``/metrics`` is for admins: a key with no account, domain or tag limit (Bearer or
        basic auth, as Prometheus' ``authorization``/``basic_auth`` send it), or on the
        Unix socket a user in ``api.admins``; 401 without a key on TCP, 403 otherwise."""
        caller = self._caller("metrics", params, headers, peer)
        if not caller.unlimited:
            raise Denied(403, "/metrics: an admin key (no account, domain or tag limit) only")
        return caller

    # -- endpoints ---------------------------------------------------------------------------
    def _health(self, params: Mapping[str, list[str]], headers: Any, peer: str | None) -> Answer:
        """Anyone: ``{"ok": true}``; an admin: the daemon's status; a local user on the
        socket also the database's path (``logstats query`` asks whether this daemon serves
        the database it was given)."""
        try:
            secret, _ = _credentials("health", params, headers)
            if secret is None and peer is None:
                return 200, {"ok": True}, JSON
            caller = self._caller("health", params, headers, peer)
        except Denied as exc:
            return error_answer("logstats", exc.status, str(exc))
        if caller.unlimited:
            return 200, {"ok": True, **self.status()}, JSON
        if peer is not None:
            return 200, {"ok": True, "db": self.status().get("db")}, JSON
        return 200, {"ok": True}, JSON

    def _emailtrack(
        self, name: str, params: dict[str, str], headers: Any, peer: str | None
    ) -> Answer:
        module = (params.get("cpanel_jsonapi_module") or "").strip()
        func = (params.get("cpanel_jsonapi_func") or "").strip()
        try:
            caller = self._caller("cpanel", {}, headers, peer)
            if name == "json-api":
                if not module:
                    raise BadRequest("cpanel_jsonapi_module: missing (EmailTrack)")
                if not func:
                    raise BadRequest("cpanel_jsonapi_func: missing (stats)")
                if module != "EmailTrack" or func not in ("stats", "search"):
                    raise BadRequest(
                        f"module {module!r}, function {func!r}: not available here "
                        "(this server answers EmailTrack::stats and EmailTrack::search)"
                    )
                if not params.get("cpanel_jsonapi_user"):
                    raise BadRequest("cpanel_jsonapi_user: missing")
                params = {**params, "account": params["cpanel_jsonapi_user"]}
            if caller.domains is not None or caller.tags is not None:
                # EmailTrack counts a whole account: a key limited to domains or tags may not
                raise Denied(403, "this key is limited to domains or tags: EmailTrack not allowed")
            if caller.accounts is not None:
                if params.get("all") in ("1", "true"):
                    raise Denied(403, "all accounts: not allowed for this key")
                if params.get("account") not in caller.accounts:
                    raise Denied(403, f"account {params.get('account')!r}: not allowed")
            if func == "search":
                return 200, self._search(params, params["account"]), JSON
            return 200, emailtrack_of(self.stats, params, self.config), JSON
        except (BadRequest, Denied, SearchError, Api2Error) as exc:
            # cPanel answers failures with HTTP 200 and event.result 0
            status = exc.status if isinstance(exc, Denied) else 200
            _, body, content_type = error_answer("cpanel", status, str(exc))
            if name == "json-api" and module and func:
                body["cpanelresult"].update(module=module, func=func)  # as the call named them
            return status, body, content_type

    def _track(self, params: dict[str, str], headers: Any, peer: str | None) -> Answer:
        """``GET /v1/track?command=search|trace|report&request=JSON``: what the CLI's
        ``search``, ``trace`` and ``report`` print (``trackview.answer``), for admins (a key
        without limits, or a user in ``api.admins`` on the socket) only: the rows hold every
        account's addresses, and the CLI reads the file as its owner would."""
        from logstats import trackview

        try:
            caller = self._caller("logstats", {}, headers, peer)
            if not caller.unlimited:
                raise Denied(403, "/v1/track: an admin (api.admins, or a key without limits) only")
            command = params.get("command", "")
            try:
                request = json.loads(params.get("request") or "{}")
            except ValueError as exc:
                raise BadRequest(f"request: not JSON ({exc})") from exc
            if command not in trackview.COMMANDS or not isinstance(request, dict):
                raise BadRequest(f"command: one of {', '.join(trackview.COMMANDS)}")
            with self._cursor() as cur:
                return 200, trackview.answer(cur, command, request), JSON
        except Denied as exc:
            return error_answer("logstats", exc.status, str(exc))
        except (BadRequest, trackview.BadRequest, KeyError, TypeError, ValueError) as exc:
            return error_answer("logstats", 400, str(exc))

    def _search(self, params: dict[str, str], account: str) -> dict[str, Any]:
        """cPanel API 2 ``EmailTrack::search`` for one account (logstats/shapes/
        emailtrack_search.py), then API 2's filter, sort and paginate options."""
        search = emailtrack_search.parse(params)
        options = cpanel_api2.parse(params)
        data, overflowed = self._search_rows(search, (account,))
        data, page = cpanel_api2.apply(data, options)
        return emailtrack_search.envelope(data, overflowed, page)

    def _search_rows(
        self, search: emailtrack_search.Search, accounts: tuple[str, ...] | None
    ) -> tuple[list[dict[str, Any]], int]:
        """EmailTrack::search's rows and ``overflowed`` for ``accounts`` (None: all): one
        query per asked flag, as cPanel API 2 and WHM API 1 both answer it."""
        rows: list[track.TrackRow] = []
        matched = 0
        with self._cursor() as cur:
            for q in search.queries(accounts):
                rows += track.search(cur, q)
                matched += sum(track.count(cur, q).values())
        return emailtrack_search.answer(search, rows, matched, self.config.tz(), self._domains())

    def _whm(self, command: str, params: dict[str, str], headers: Any, peer: str | None) -> Answer:
        """WHM API 1 ``emailtrack_search`` and ``emailtrack_stats`` (root or reseller: an
        admin key sees every account, a key limited to accounts those accounts).  Failures
        are ``metadata.result`` 0 with the reason (HTTP 200; 401/403 for the key)."""
        try:
            caller = self._caller("whm", {}, headers, peer)
            if caller.domains is not None or caller.tags is not None:
                raise Denied(403, "this key is limited to domains or tags: WHM API 1 not allowed")
            version = (params.get("api.version") or "1").strip()
            if version != "1":
                raise BadRequest(f"api.version: {version!r} is not 1")
            options = whm_api1.parse(params)
            if command == "emailtrack_search":
                search = emailtrack_search.parse(params)
                data, overflowed = self._search_rows(search, caller.accounts)
                records = whm_api1.apply(data, options)
                return 200, whm_api1.envelope(command, records, overflowed=overflowed), JSON
            stats_params = {"all": "1", **_whm_window(params)}
            for name in ("deliverytype", "nosize", "nosuccess"):
                if params.get(name):
                    stats_params[name] = params[name]
            per_account = emailtrack_of(self.stats, stats_params)
            records = [_summed(per_account, caller.accounts)]
            return 200, whm_api1.envelope(command, whm_api1.apply(records, options)), JSON
        except (BadRequest, SearchError, Api2Error) as exc:
            return 200, whm_api1.error(command, str(exc)), JSON
        except Denied as exc:
            return exc.status, whm_api1.error(command, str(exc)), JSON

    def _vendor(
        self,
        name: str,
        path_params: dict[str, str],
        params: dict[str, list[str]],
        headers: Any,
        peer: str | None,
    ) -> Answer:
        shape = SHAPES[name]
        family = name.partition(".")[0]
        xml = shape.content_type == XML
        now = datetime.now(UTC)
        try:
            caller = self._caller(family, params, headers, peer)
            q = shape.parse(params, now, path_params)
            q = self._scope(hosted(q, host_value(params)), caller)
            rows = []
            if q.request is not None:
                rows = self.series(q.request)
            body = shape.render(q, rows, now)
            return 200, body, getattr(q, "content_type", shape.content_type)
        except ApiError as exc:
            return exc.status, exc.body, exc.content_type
        except Denied as exc:
            return error_answer(family, exc.status, str(exc), xml=xml)
        except ValueError as exc:  # a grouping the store does not keep
            return error_answer(family, 400, str(exc), xml=xml)

    def _events(
        self,
        path_params: dict[str, str],
        params: dict[str, list[str]],
        headers: Any,
        peer: str | None,
    ) -> Answer:
        """Mailgun's events of one sending domain, one page (``shapes.mailgun_events``)."""
        from logstats import track
        from logstats.shapes import mailgun_events

        try:
            caller = self._caller("mailgun", params, headers, peer)
            q = mailgun_events.parse(params, datetime.now(UTC), path_params)
            q = self._scope_domain(q, caller)
            with self._cursor() as cur:
                rows = track.search(cur, q.track)
            return 200, mailgun_events.render(q, rows, _base(headers)), JSON
        except ApiError as exc:
            return exc.status, exc.body, exc.content_type
        except Denied as exc:
            return error_answer("mailgun", exc.status, str(exc))

    def _scope_domain(self, q: Any, caller: Caller) -> Any:
        """The scope rule for a call naming one sending domain in its path (Mailgun events):
        a domain (or an asked tag) outside the key's scope is 403; a key limited to accounts
        reads only their rows, a key limited to one tag only that tag's."""
        if caller.unlimited:
            return q
        domain = q.domain
        if caller.accounts is not None:
            owner = self._domains().get(domain)
            if owner is not None and owner not in caller.accounts:
                raise Denied(403, f"domain {domain!r}: this key may not see it")
            q = q.scoped(caller.accounts)
        domains = _lower(caller.domains)
        if domains is not None and not _matches(domain, domains):
            raise Denied(403, f"domain {domain!r}: this key may not see it")
        if caller.tags is not None:
            tag = q.track.tag
            if tag is not None and tag not in caller.tags:
                raise Denied(403, f"tag {tag!r}: this key may not see it")
            if tag is None:
                if len(caller.tags) != 1:
                    raise Denied(
                        403, f"this key is limited to tags {', '.join(caller.tags)}: name one"
                    )
                q = replace(q, track=replace(q.track, tag=caller.tags[0]))
        return q

    def _scope(self, q: Any, caller: Caller) -> Any:
        """Restrict a parsed query to what the caller may see, or refuse (403) a name
        outside it (the module docstring's scope rule).

        Asked names: the request's account list and filters, and the tags a shape asks
        for by grouping (``asked_tags``: SendGrid's ``category[]``).  Sender domains are
        compared lower-cased, against the key's ``domains`` as ``fnmatch`` patterns.  When
        no domain is asked, a key's one plain domain becomes the filter, several domains
        or a pattern the request's ``domain_patterns`` (the answer within all the matching
        ones).  When no tag is asked, a key's one tag becomes the filter; several are 403
        "name one" (a message with two tags would be counted twice in a total)."""
        request = q.request
        if request is None or caller.unlimited:
            return q
        table = self._domains()
        asked_accounts = request.accounts or ()
        asked_domains = [v.lower() for d, v in request.filters if d is Dimension.SENDER_DOMAIN]
        asked_tags = [v for d, v in request.filters if d is Dimension.TAG]
        grouped_tags = tuple(getattr(q, "asked_tags", ()))  # narrowed by the shape itself
        if caller.accounts is not None:
            for account in asked_accounts:
                if account not in caller.accounts:
                    raise Denied(403, f"account {account!r}: this key may not see it")
            for domain in asked_domains:
                owner = table.get(domain)
                if owner is not None and owner not in caller.accounts:
                    raise Denied(403, f"domain {domain!r}: this key may not see it")
            q = q.scoped(asked_accounts or caller.accounts)
            request = q.request
        domains = _lower(caller.domains)
        if domains is not None:
            for domain in asked_domains:
                if not _matches(domain, domains):
                    raise Denied(403, f"domain {domain!r}: this key may not see it")
            owners = _owners(table, domains)
            if owners is not None:
                for account in asked_accounts:
                    if account not in owners:
                        raise Denied(403, f"account {account!r}: this key may not see it")
            if not asked_domains and (len(domains) != 1 or _WILDCARDS & set(domains[0])):
                # several domains or a pattern: the answer within all the matching ones
                q = replace(q, request=replace(request, domain_patterns=domains))
                request = q.request
            elif not asked_domains:
                q, request = _narrow(q, request, Dimension.SENDER_DOMAIN, domains)
        if caller.tags is not None:
            for tag in (*asked_tags, *grouped_tags):
                if tag not in caller.tags:
                    raise Denied(403, f"tag {tag!r}: this key may not see it")
            if not asked_tags and not grouped_tags:
                q, request = _narrow(q, request, Dimension.TAG, caller.tags)
        return q


_WILDCARDS = frozenset("*?[")
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}(:\d{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:\d{1,5})?")


def _base(headers: Any) -> str:
    """The request's own base URL (scheme and Host), for absolute URLs in an answer; a
    missing or malformed Host (the Unix socket) is ``localhost``."""
    scheme = _header(headers, ":scheme")
    host = _header(headers, "Host").strip()
    if scheme not in ("http", "https"):
        scheme = "http"
    return f"{scheme}://{host if _HOST.fullmatch(host) else 'localhost'}"


def _plain(exc: Denied) -> Answer:
    return exc.status, f"{exc}\n", "text/plain; charset=utf-8"


def _lower(names: tuple[str, ...] | None) -> tuple[str, ...] | None:
    return None if names is None else tuple(n.lower() for n in names)


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _owners(table: Mapping[str, str], patterns: tuple[str, ...]) -> set[str] | None:
    """The accounts the domain table gives a domain matching ``patterns``; None when some
    pattern matches no domain of the table (its mail's account is not known, so an asked
    account is then only narrowed by the domain filter, not refused)."""
    owners: set[str] = set()
    for pattern in patterns:
        found = {a for d, a in table.items() if fnmatch.fnmatchcase(d, pattern)}
        if not found:
            return None
        owners |= found
    return owners


def _narrow(
    q: Any, request: SeriesRequest, dimension: Dimension, limit: tuple[str, ...]
) -> tuple[Any, SeriesRequest]:
    """No name asked in a limited dimension: the key's one name is the filter."""
    if len(limit) != 1:
        raise Denied(403, f"this key is limited to {dimension.value}s {', '.join(limit)}: name one")
    q = replace(q, request=replace(request, filters=(*request.filters, (dimension, limit[0]))))
    return q, q.request


class LocalRouter(Router):
    """The API answered in-process from a read-only store (the CLI, no daemon running).
    Whoever can open the database file sees everything in it: the caller is an admin."""

    def __init__(self, con: duckdb.DuckDBPyConnection, config: Config) -> None:
        super().__init__(
            con,
            dict,
            replace(config, admins=(*config.admins, LOCAL)),
            lambda cur: prometheus_local(cur, config),
        )

    def route(
        self, method: str, path: str, params: dict[str, list[str]], headers: Any, peer: str | None
    ) -> Answer:
        return super().route(method, path, params, headers, LOCAL)


LOCAL = "\0local-file-reader"  # not a Unix user name: only LocalRouter uses it


def prometheus_local(cursor: duckdb.DuckDBPyConnection, config: Config) -> str:
    from logstats.metrics import render

    return render(cursor, per_account=config.metrics_per_account)


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
