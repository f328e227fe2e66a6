"""The web UI of ``logstats serve``: a dashboard and Track Delivery, under ``/ui/``.

Plain HTML pages with a little JavaScript (``static/``) and uPlot for the charts, copied
into ``static/vendor/`` at build time (web/vendor.py: ``npm ci``), so the pages load
nothing from any other host (every answer carries a ``Content-Security-Policy`` of
``'self'``).  The pages read JSON from ``/ui/api/...``, answered here through the
store's and ``logstats.track``'s functions, in the caller's scope.

Login: the form at ``/ui/login`` takes an API key of the config (``api.keys``), compared
with ``hmac.compare_digest`` as the API compares it.  A good key gets a session cookie:
``<expiry>.<key fingerprint>.<HMAC-SHA256>``, signed with a random secret made when the
daemon starts (a restart logs everyone out), HttpOnly, SameSite=Strict, Path=/ui, valid
for ``SESSION_SECONDS``.  The cookie names the key by a SHA-256 fingerprint, never the
key itself; a key removed from the config (reload) ends its sessions.  Every request
maps the cookie back to the key and so to the same ``Caller`` the API gives that key:
the API's one scope rule (``Router._scope``) decides what it may see; a name outside it
is 403.  Without a session, a page answers the login form, a JSON endpoint 401.

CSRF: a POST (login, logout) must come from this origin: its ``Origin`` (or, without
one, ``Referer``) must be ``http(s)://`` + its ``Host``; ``Sec-Fetch-Site: cross-site``
is refused too.  The cookie is SameSite=Strict, and nothing but login and logout
changes state.

Windows: ``start``/``end`` (ISO 8601 or epoch seconds, end exclusive) or ``days`` (1 to
366) back from the default end: the hour after the newest row the caller may see (the
data's time, not the wall clock: a dashboard of old logs shows them).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from logstats import track
from logstats.api import BadRequest, Denied, Reply, Target, parse_time
from logstats.model import AccountStats, Dimension, Resolution, SeriesRequest, StatsRequest
from logstats.shapes import host_value
from logstats.store import account_stats, series

if TYPE_CHECKING:
    from logstats.api import Answer, Caller, Router

COOKIE = "logstats_session"
SESSION_SECONDS = 12 * 3600  # a session's lifetime
MAX_DAYS = 366  # ``days=`` at most
MAX_ROWS = 1000  # ``limit=`` of a search at most
HTML = "text/html; charset=utf-8"
JSON = "application/json"
_SECURITY = (
    (
        "content-security-policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "same-origin"),
    ("cache-control", "no-store"),
)
_PAGES = {"/ui/": "dashboard", "/ui/track": "track", "/ui/login": "login", "/ui/logout": "logout"}
_API = ("whoami", "overview", "series", "top", "search", "trace", "progress")
_STATIC = re.compile(r"^/ui/static/((?:vendor/)?[A-Za-z0-9_.-]+\.(?:js|css|html))$")
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
_COUNTED = (track.DELIVERED, track.DEFERRED, track.FAILED, track.REJECTED, track.EXPIRED)
_TOPS = {  # ``what`` of /ui/api/top -> the track.top column
    "reason": "reason",
    "sender": "sender",
    "recipient_domain": "recipient_domain",
    "sender_domain": "sender_domain",
    "remote_host": "remote_host",
    "account": "account",
    "host": "host",
}


def target(path: str) -> Target | None:
    """What a path under ``/ui`` names (``/`` and ``/ui`` lead to ``/ui/``)."""
    if path in ("/", "/ui"):
        return Target("web", "home", ("GET", "HEAD"), {})
    page = _PAGES.get(path)
    if page == "login":
        return Target("web", page, ("GET", "HEAD", "POST"), {})
    if page == "logout":
        return Target("web", page, ("POST",), {})
    if page is not None:
        return Target("web", page, ("GET", "HEAD"), {})
    if path.startswith("/ui/api/") and path[len("/ui/api/") :] in _API:
        return Target("web", "api:" + path[len("/ui/api/") :], ("GET", "HEAD"), {})
    m = _STATIC.match(path)
    if m is not None:
        return Target("web", "static:" + m.group(1), ("GET", "HEAD"), {})
    return None


class Sessions:
    """Signed session tokens naming an API key by its fingerprint."""

    def __init__(self, seconds: int = SESSION_SECONDS) -> None:
        self.secret = secrets.token_bytes(32)  # per daemon: a restart ends every session
        self.seconds = seconds

    @staticmethod
    def fingerprint(key: str) -> str:
        return hashlib.sha256(b"logstats-ui\0" + key.encode()).hexdigest()[:32]

    def _mac(self, body: str) -> str:
        return hmac.new(self.secret, body.encode(), hashlib.sha256).hexdigest()

    def issue(self, key: str, now: float) -> str:
        body = f"{int(now) + self.seconds}.{self.fingerprint(key)}"
        return f"{body}.{self._mac(body)}"

    def key_of(self, token: str, keys: tuple[str, ...], now: float) -> str | None:
        """The key a valid, unexpired token names (None otherwise)."""
        expiry, _, rest = token.partition(".")
        fp, _, mac = rest.partition(".")
        if not (expiry.isascii() and expiry.isdigit()) or not fp or not mac:
            return None
        if not hmac.compare_digest(self._mac(f"{expiry}.{fp}").encode(), mac.encode()):
            return None
        if int(expiry) <= now:
            return None
        for key in keys:
            if hmac.compare_digest(self.fingerprint(key).encode(), fp.encode()):
                return key
        return None


@dataclass(frozen=True, slots=True)
class _Asked:
    """A UI request as the API's scope rule takes it (``Router._scope``)."""

    request: SeriesRequest

    def scoped(self, accounts: Any) -> _Asked:
        return replace(self, request=replace(self.request, accounts=tuple(accounts)))


@dataclass(frozen=True, slots=True)
class View:
    """What one UI request asks, once scoped: the window, the series request (accounts,
    filters, domain patterns) and the same scope as a Track Delivery query."""

    request: SeriesRequest
    track: track.TrackQuery


def _cookie(headers: Any) -> str | None:
    for part in str(headers.get("cookie") or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value:
            return value
    return None


def same_origin(headers: Any) -> bool:
    """A state-changing request comes from this origin (the module docstring's CSRF rule)."""
    host = str(headers.get("host") or "")
    if not host or str(headers.get("sec-fetch-site") or "") == "cross-site":
        return False
    origin = str(headers.get("origin") or "")
    if not origin or origin == "null":
        referer = str(headers.get("referer") or "")
        if not referer:
            return False
        parts = urlsplit(referer)
        origin = f"{parts.scheme}://{parts.netloc}"
    return origin in (f"http://{host}", f"https://{host}")


def _one(params: Mapping[str, list[str]], name: str) -> str | None:
    given = params.get(name)
    value = given[-1].strip() if given else ""
    return value or None


def _json(status: int, body: Any) -> Answer:
    data = json.dumps(body).encode()
    return status, Reply(data, _SECURITY), JSON


def _error(status: int, message: str) -> Answer:
    return _json(status, {"ok": False, "error": message, "status": status})


def _redirect(location: str, *more: tuple[str, str]) -> Answer:
    return 303, Reply(b"", (("location", location), *more, *_SECURITY)), HTML


def _static(name: str) -> bytes | None:
    try:
        return resources.files("logstats.web").joinpath("static", name).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def _page(name: str, status: int = 200) -> Answer:
    data = _static(name + ".html") or b""
    return status, Reply(data, _SECURITY), HTML


def _denied_page(message: str) -> Answer:
    text = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>logstats: not '
        'allowed</title><link rel="stylesheet" href="/ui/static/style.css"></head><body>'
        f'<main><h1>Not allowed</h1><p class="error">{_escape(message)}</p>'
        '<p><a href="/ui/">Dashboard</a></p></main></body></html>'
    )
    return 403, Reply(text.encode(), _SECURITY), HTML


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _time(name: str, value: str) -> datetime:
    if value.isascii() and value.isdigit():
        if len(value) > 11:
            raise BadRequest(f"{name}: {value!r} is not a time")
        return datetime.fromtimestamp(int(value), UTC)
    return parse_time(name, value)


def _hour_after(ts: datetime) -> datetime:
    return ts.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)


def _grid(start: datetime, end: datetime, resolution: Resolution) -> list[datetime]:
    """The hours or days (UTC) of a window; none for months (the store's buckets only)."""
    if resolution is Resolution.MONTH:
        return []
    step = timedelta(hours=1) if resolution is Resolution.HOUR else timedelta(days=1)
    t = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if resolution is Resolution.DAY:
        t = t.replace(hour=0)
    out = []
    while t < end:
        out.append(t)
        t += step
    return out


def _row(r: track.TrackRow) -> dict[str, Any]:
    out = r.as_dict()
    out["type"] = out.pop("outcome")
    return out


def _totals_from_series(rows: list[Any]) -> dict[str, int]:
    """Totals of ``store.series`` rows in EmailTrack's terms (sent: accepted and rejected
    recipients' messages; failed: permanent failures and rejects)."""
    sent = sum(r.accepted_outgoing + r.accepted_incoming + r.rejected for r in rows)
    return {
        "sent": sent,
        "delivered": sum(r.delivered for r in rows),
        "deferred": sum(r.failed_temporary for r in rows),
        "failed": sum(r.failed_permanent + r.rejected for r in rows),
    }


class WebUI:
    """The web pages and their JSON endpoints, answered for one ``Router``."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.sessions = Sessions()

    # -- sessions ----------------------------------------------------------------------
    def caller(self, headers: Any) -> Caller | None:
        token = _cookie(headers)
        if token is None:
            return None
        keys = tuple(k.key for k in self.router.config.api_keys)
        key = self.sessions.key_of(token, keys, time.time())
        if key is None:
            return None
        try:
            return self.router._key(key)
        except Denied:
            return None

    def _login(self, params: Mapping[str, list[str]], headers: Any) -> Answer:
        if not same_origin(headers):
            return _error(403, "login: the form must be posted from this site")
        secret = _one(params, "key") or ""
        try:
            self.router._key(secret)
        except Denied:
            return _redirect("/ui/login?failed=1")
        token = self.sessions.issue(secret, time.time())
        cookie = (
            f"{COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict; "
            f"Max-Age={self.sessions.seconds}"
        )
        wanted = _one(params, "next") or "/ui/"
        if not wanted.startswith("/ui/") or wanted.startswith("/ui//") or "\\" in wanted:
            wanted = "/ui/"
        return _redirect(wanted, ("set-cookie", cookie))

    # -- routing -----------------------------------------------------------------------
    def route(self, method: str, name: str, params: dict[str, list[str]], headers: Any) -> Answer:
        if name == "home":
            return _redirect("/ui/")
        if name.startswith("static:"):
            file = name.partition(":")[2]
            data = _static(file)
            if data is None:
                return _error(404, f"no such file: {file}")
            kind = _TYPES.get(file[file.rfind(".") :], HTML)
            return 200, Reply(data, (*_SECURITY[:3], ("cache-control", "max-age=3600"))), kind
        if name == "login":
            if method == "POST":
                return self._login(params, headers)
            return _page("login")
        if name == "logout":
            if not same_origin(headers):
                return _error(403, "logout: the form must be posted from this site")
            gone = f"{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"
            return _redirect("/ui/login", ("set-cookie", gone))
        caller = self.caller(headers)
        if name.startswith("api:"):
            if caller is None:
                return _error(401, "log in first (/ui/login)")
            try:
                with self.router._cursor() as cur:
                    return _json(200, getattr(self, "_" + name[4:])(cur, params, caller))
            except Denied as exc:
                return _error(exc.status, str(exc))
            except (BadRequest, ValueError) as exc:
                return _error(400, str(exc))
        if caller is None:
            return _page("login")
        try:  # a page naming an account or a domain outside the scope is refused at once
            with self.router._cursor() as cur:
                self.view(cur, params, caller)
        except Denied as exc:
            return _denied_page(str(exc))
        except (BadRequest, ValueError):
            pass  # the page shows the endpoint's 400
        return _page(name)

    # -- scope and window --------------------------------------------------------------
    def view(self, cur: Any, params: Mapping[str, list[str]], caller: Caller) -> View:
        """The scoped request of ``params`` (Denied 403 for a name outside the scope)."""
        account = _one(params, "account")
        domain = _one(params, "sender_domain")
        try:
            host = host_value({k: v for k, v in params.items() if k == "host"})
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        filters: tuple[tuple[Dimension, str], ...] = ()
        if domain is not None:
            filters = ((Dimension.SENDER_DOMAIN, domain.lower()),)
        far = SeriesRequest(
            datetime(1970, 1, 1, tzinfo=UTC),
            datetime(9000, 1, 1, tzinfo=UTC),
            None,
            (account,) if account else None,
            filters,
            host=host,
        )
        scoped = self.router._scope(_Asked(far), caller).request
        sender_domain = next((v for d, v in scoped.filters if d is Dimension.SENDER_DOMAIN), None)
        tag = next((v for d, v in scoped.filters if d is Dimension.TAG), None)
        scope = track.TrackQuery(
            scoped.start,
            scoped.end,
            accounts=scoped.accounts,
            sender_domain=sender_domain,
            tag=tag,
            domain_patterns=scoped.domain_patterns,
            host=scoped.host,
        )
        start, end = self._window(cur, params, scoped, scope)
        return View(
            replace(scoped, start=start, end=end),
            replace(scope, start=start, end=end),
        )

    def _window(
        self,
        cur: Any,
        params: Mapping[str, list[str]],
        scoped: SeriesRequest,
        scope: track.TrackQuery,
    ) -> tuple[datetime, datetime]:
        """The asked window; its default end is the hour after the newest row in the scope
        (the Track Delivery rows', or where none is kept, the counters')."""
        start_s, end_s, days_s = (_one(params, n) for n in ("start", "end", "days"))
        if end_s is not None:
            end = _time("end", end_s)
        else:
            newest = track.newest(cur, replace(scope, types=frozenset(_COUNTED)))
            if newest is None:  # no row kept (older than the retention): the counters'
                total = series(cur, replace(scoped, resolution=None))
                newest = max((r.last for r in total if r.last is not None), default=None)
            end = _hour_after(newest or datetime.now(UTC))
        if start_s is not None:
            start = _time("start", start_s)
        else:
            days = days_s or "7"
            if not (days.isascii() and days.isdigit()) or not 0 < int(days) <= MAX_DAYS:
                raise BadRequest(f"days: {days!r} is not a whole number from 1 to {MAX_DAYS}")
            start = end - timedelta(days=int(days))
        if start >= end:
            raise BadRequest("start must be before end")
        return start, end

    # -- endpoints ---------------------------------------------------------------------
    def _whoami(self, cur: Any, params: Mapping[str, list[str]], caller: Caller) -> Any:
        v = self.view(cur, {}, caller)
        return {
            "name": caller.name,
            "admin": caller.unlimited,
            "accounts": list(caller.accounts) if caller.accounts is not None else None,
            "domains": list(caller.domains) if caller.domains is not None else None,
            "choices": [a for a, _ in track.top(cur, v.track, "account", 200)],
            "hosts": sorted(h for h, _ in track.top(cur, v.track, "host", 200) if h),
            "window": {"start": v.request.start.isoformat(), "end": v.request.end.isoformat()},
        }

    def _series(self, cur: Any, params: Mapping[str, list[str]], caller: Caller) -> Any:
        v = self.view(cur, params, caller)
        span = v.request.end - v.request.start
        resolution = Resolution.HOUR if span <= timedelta(days=8) else Resolution.DAY
        if span > timedelta(days=MAX_DAYS):
            resolution = Resolution.MONTH
        rows = series(cur, replace(v.request, resolution=resolution))
        buckets: dict[datetime, dict[str, int]] = {
            t: {"sent": 0, "delivered": 0, "deferred": 0, "failed": 0}
            for t in _grid(v.request.start, v.request.end, resolution)
        }  # every bucket of the window, so that the chart spans it
        for r in rows:
            if r.bucket is None:
                continue
            b = buckets.setdefault(
                r.bucket, {"sent": 0, "delivered": 0, "deferred": 0, "failed": 0}
            )
            for k, n in _totals_from_series([r]).items():
                b[k] += n
        times = sorted(buckets)
        return {
            "resolution": resolution.value,
            "t": [int(t.timestamp()) for t in times],
            **{
                k: [buckets[t][k] for t in times]
                for k in ("sent", "delivered", "deferred", "failed")
            },
            "window": {"start": v.request.start.isoformat(), "end": v.request.end.isoformat()},
        }

    def _totals(self, cur: Any, v: View) -> tuple[dict[str, int], str]:
        """The window's totals: EmailTrack's own numbers (``store.account_stats``) when the
        view is one whole account, else the series' (a domain or a key's domains)."""
        req = v.request
        whole = not req.filters and not req.domain_patterns
        if whole and req.accounts is not None and len(req.accounts) == 1:
            account = req.accounts[0]
            found = account_stats(cur, StatsRequest(req.start, req.end, account, host=req.host))
            s = next((x for x in found if x.account == account), AccountStats(account))
            return {
                "sent": s.sendcount,
                "delivered": s.successcount,
                "deferred": s.defercount,
                "failed": s.failcount,
                "inprogress": s.inprogresscount,
            }, "emailtrack"
        rows = series(cur, replace(req, resolution=None))
        totals = _totals_from_series(rows)
        totals["inprogress"] = len({r.queue_id for r in track.in_progress(cur, v.track)})
        return totals, "series"

    def _overview(self, cur: Any, params: Mapping[str, list[str]], caller: Caller) -> Any:
        v = self.view(cur, params, caller)
        totals, source = self._totals(cur, v)
        failed = replace(v.track, types=frozenset({track.FAILED, track.REJECTED}))
        deferred = replace(v.track, types=frozenset({track.DEFERRED}))
        counted = replace(v.track, types=frozenset(_COUNTED))
        providers = series(cur, replace(v.request, resolution=None, group=Dimension.PROVIDER))
        return {
            "window": {"start": v.request.start.isoformat(), "end": v.request.end.isoformat()},
            "account": v.request.accounts[0]
            if v.request.accounts and len(v.request.accounts) == 1
            else None,
            "totals": totals,
            "totals_source": source,
            "top_failures": track.top(cur, failed, "reason", 10),
            "top_deferrals": track.top(cur, deferred, "reason", 10),
            "top_senders": track.top(
                cur, replace(v.track, types=frozenset({track.SEND})), "sender", 10
            ),
            "providers": [
                [r.key or "", r.delivered, r.failed_temporary, r.failed_permanent]
                for r in sorted(
                    providers,
                    key=lambda r: (
                        -(r.delivered + r.failed_temporary + r.failed_permanent),
                        r.key or "",
                    ),
                )[:10]
            ],
            "recipient_domains": track.top(cur, counted, "recipient_domain", 10),
            "in_progress": [_row(r) for r in track.in_progress(cur, v.track)[:50]],
        }

    def _top(self, cur: Any, params: Mapping[str, list[str]], caller: Caller) -> Any:
        v = self.view(cur, params, caller)
        what = _one(params, "what") or "reason"
        if what not in _TOPS:
            raise BadRequest(f"what: {what!r} is not one of {', '.join(_TOPS)}")
        q = replace(v.track, types=self._types(params, _COUNTED))
        return {"what": what, "top": track.top(cur, q, _TOPS[what], 20)}

    @staticmethod
    def _types(params: Mapping[str, list[str]], default: tuple[str, ...]) -> frozenset[str]:
        given = [t.strip() for v in params.get("types", []) for t in v.split(",") if t.strip()]
        known = (*track.RECIPIENT_TYPES, track.SEND, track.EXPIRED)
        for t in given:
            if t not in known:
                raise BadRequest(f"types: {t!r} is not one of {', '.join(known)}")
        return frozenset(given or default)

    def _search(self, cur: Any, params: Mapping[str, list[str]], caller: Caller) -> Any:
        v = self.view(cur, params, caller)
        limit_s = _one(params, "limit") or "100"
        offset_s = _one(params, "offset") or "0"
        for name, value in (("limit", limit_s), ("offset", offset_s)):
            if not (value.isascii() and value.isdigit()) or len(value) > 9:
                raise BadRequest(f"{name}: {value!r} is not a whole number")
        limit = min(max(int(limit_s), 1), MAX_ROWS)
        q = replace(
            v.track,
            sender=_one(params, "sender"),
            recipient=_one(params, "recipient"),
            domain=_one(params, "domain"),
            queue_id=_one(params, "queue_id"),
            message_id=_one(params, "message_id"),
            types=self._types(params, (*track.RECIPIENT_TYPES, track.EXPIRED)),
            limit=limit,
            offset=int(offset_s),
        )
        rows = track.search(cur, q)
        return {
            "window": {"start": q.start.isoformat(), "end": q.end.isoformat()},
            "counts": track.count(cur, replace(q, limit=None, offset=0)),
            "rows": [_row(r) for r in rows],
            "limit": limit,
            "offset": q.offset,
        }

    def _trace(self, cur: Any, params: Mapping[str, list[str]], caller: Caller) -> Any:
        ident = _one(params, "id")
        if ident is None:
            raise BadRequest("id: missing (a queue id or a Message-ID)")
        v = self.view(cur, {}, caller)
        patterns = v.track.domain_patterns
        if not patterns and v.track.sender_domain is not None:  # a key's one domain
            patterns = (v.track.sender_domain.replace("[", "[[]"),)
        rows = track.trace(cur, ident, accounts=v.track.accounts, domain_patterns=patterns)
        if v.track.tag is not None:
            rows = [r for r in rows if v.track.tag in (r.tags or "").split(",")]
        if not rows:  # none stored, or none in the caller's scope: the same answer
            raise Denied(404, f"no message {ident!r} in what this login may see")
        return {"id": ident, "rows": [_row(r) for r in rows]}

    def _progress(self, cur: Any, params: Mapping[str, list[str]], caller: Caller) -> Any:
        v = self.view(cur, params, caller)
        return {"rows": [_row(r) for r in track.in_progress(cur, v.track)[:MAX_ROWS]]}
