"""The HTTP transport of ``logstats serve``: uvicorn (h11) on the Unix socket and on TCP.

One asyncio loop, in a thread of the daemon, serves both listeners; a small raw ASGI app
hands each request to ``api.Router`` and runs it in a bounded thread pool (DuckDB reads
block), never on the loop.  What a caller can do to the server is bounded:

- the route, the method, the body's size and a key given in the headers or the query
  string are checked before the body is read (``Router.admit``): an unauthenticated or
  oversized POST is answered (401, 413) without reading it, and the connection is closed;
- a body is at most ``Limits.max_body`` bytes (64 KiB: a form of parameters), more is 413;
  a malformed ``Content-Length`` is 400 at once (h11); a GET or HEAD with a body is 400
  and closed before the body is read, whoever sends it;
- the request line and headers must arrive within ``header_timeout`` seconds, a body within
  ``body_timeout`` (408), an idle kept-alive connection is closed after ``keep_alive``, a
  client that does not read its answer after ``write_timeout``;
- at most ``max_connections`` connections are open on each listener; one more is answered
  503 and closed (the bound follows the open-file limit: two descriptors per connection);
- a route runs and its answer is encoded in the pool: one large answer never stalls the
  loop; a failure is answered with a generic text and its detail logged (one line, at
  most one a minute per kind).

On the Unix socket the caller is known by its peer credentials (``SO_PEERCRED``): the
protocol reads the peer's uid when the connection is made and puts it into each request's
``scope["state"]``; the user's name is looked up in the pool (NSS may ask LDAP or sssd),
cached for a minute, for at most ``_USERS_MAX`` uids.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import logging
import os
import pwd
import resource
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qs

import duckdb
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from logstats.api import MAX_BODY, Answer, Reply, Router, error_answer, family_of
from logstats.errors import LogstatsError

PEER = "logstats.peer"  # scope["state"] key: the Unix socket peer's uid (None on TCP)
Log = Any  # a structlog bound logger
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Limits:
    max_body: int = MAX_BODY  # bytes of a request body
    max_header_bytes: int = 16 * 1024  # request line and headers
    header_timeout: float = 10.0  # seconds for the request line and headers
    body_timeout: float = 10.0  # seconds for the body
    keep_alive: float = 5.0  # seconds an idle kept-alive connection stays open
    write_timeout: float = 30.0  # seconds a client may leave its answer unread
    max_connections: int = 1000  # open connections per listener (beyond: 503 and closed)
    threads: int = 4  # threads answering queries (DuckDB reads)
    shutdown_timeout: float = 5.0  # seconds answers in progress get at shutdown


_BUSY_BODY = b'{"ok": false, "error": "too many connections", "status": 503}'
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


def _peer_uid(sock: Any) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return int(uid)


_USERS_MAX = 4096  # uids whose names are cached
_USERS_TTL = 60.0  # seconds a cached name is used
_users: dict[int, tuple[float, str]] = {}
_users_lock = threading.Lock()


def user_name(uid: int) -> str:
    """The user name of ``uid`` (``uid:N`` when it has none); may block on NSS, so it is
    called in the pool, and cached."""
    now = time.monotonic()
    with _users_lock:
        cached = _users.get(uid)
    if cached is not None and now - cached[0] < _USERS_TTL:
        return cached[1]
    try:
        name = pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        name = f"uid:{uid}"
    with _users_lock:
        if len(_users) >= _USERS_MAX:
            _users.clear()
        _users[uid] = (now, name)
    return name


def protocol_class(limits: Limits) -> type[H11Protocol]:
    open_now: dict[str, int] = {}  # open connections per listener kind (one event loop)

    class Protocol(H11Protocol):
        """uvicorn's h11 protocol with the peer's user, a header deadline, a write deadline
        and a bound on connections (each listener its own: a flood on TCP leaves the local
        socket usable)."""

        _listener: str | None = None
        _header_timer: asyncio.TimerHandle | None = None
        _write_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            peer = None
            sock = transport.get_extra_info("socket")
            try:
                if sock is not None and sock.family == socket.AF_UNIX:
                    peer = _peer_uid(sock)
                elif sock is not None:
                    # an answer's header and body are two writes: without this the body
                    # waits ~40 ms for the client's delayed ACK (asyncio sets it only on
                    # sockets made with proto IPPROTO_TCP)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                transport.close()
                return
            self.app_state = {**self.app_state, PEER: peer}
            self._listener = "unix" if peer is not None else "tcp"
            open_now[self._listener] = open_now.get(self._listener, 0) + 1
            if open_now[self._listener] > limits.max_connections:
                transport.write(_BUSY)
                transport.close()
                return
            self._watch()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._listener is not None:
                open_now[self._listener] -= 1
                self._listener = None
            self._cancel()
            if self._write_timer is not None:
                self._write_timer.cancel()
                self._write_timer = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._watch()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch()

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._write_timer is None:
                self._write_timer = self.loop.call_later(limits.write_timeout, self._abort)

        def resume_writing(self) -> None:
            super().resume_writing()
            if self._write_timer is not None:
                self._write_timer.cancel()
                self._write_timer = None

        def _abort(self) -> None:
            self._write_timer = None
            self.transport.abort()

        def _busy(self) -> bool:
            """A request's headers have arrived and its answer is not complete."""
            return self.cycle is not None and not self.cycle.response_complete

        def _watch(self) -> None:
            """While no request is in progress, the next one's headers have a deadline
            (an idle kept-alive connection is closed by uvicorn's keep-alive timer)."""
            if self._busy() or self.transport.is_closing():
                self._cancel()
            elif self._header_timer is None and self.timeout_keep_alive_task is None:
                self._header_timer = self.loop.call_later(limits.header_timeout, self._expire)

        def _cancel(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expire(self) -> None:
            self._header_timer = None
            if not self._busy() and not self.transport.is_closing():
                self.transport.close()

    return Protocol


SCHEME = ":scheme"  # a pseudo-header (no HTTP header name has a colon): the request's scheme


class _Headers(dict[str, str]):
    """Request headers by lower-case name (repeated ones joined with ", ")."""

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)


class _TooLarge(Exception):
    pass


Encoded = tuple[int, bytes, str, tuple[tuple[str, str], ...]]
# (HTTP status, body bytes, content type, more headers: a web page's cookie, Location...)


_SLICE = 512  # list items per json.dumps call


def _dumps(value: Any, out: list[str]) -> None:
    """``json.dumps(value)`` in pieces: json's C encoder holds the GIL for a whole call, so
    a long list is encoded a slice at a time and the event loop's thread gets its turns."""
    if isinstance(value, list) and len(value) > _SLICE:
        out.append("[")
        for i in range(0, len(value), _SLICE):
            if i:
                out.append(", ")
            out.append(json.dumps(value[i : i + _SLICE])[1:-1])
        out.append("]")
    elif isinstance(value, dict) and all(isinstance(k, str) for k in value):
        out.append("{")
        for n, (key, item) in enumerate(value.items()):
            if n:
                out.append(", ")
            out.append(json.dumps(key))
            out.append(": ")
            _dumps(item, out)
        out.append("}")
    else:
        out.append(json.dumps(value))


def encode(answer: Answer) -> Encoded:
    status, body, content_type = answer
    if isinstance(body, Reply):
        return status, body.data, content_type, body.headers
    if isinstance(body, str):
        return status, body.encode(), content_type, ()
    out: list[str] = []
    _dumps(body, out)
    return status, "".join(out).encode(), content_type, ()


class _Warnings:
    """Log lines of one kind at most once a minute (each with how many were left out)."""

    def __init__(self, log: Log | None) -> None:
        self.log = log
        self.last: dict[str, float] = {}
        self.skipped: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, level: str, event: str, kind: str, **fields: Any) -> None:
        now = time.monotonic()
        with self.lock:
            if self.log is None or now - self.last.get(kind, -1e9) < 60.0:
                self.skipped[kind] = self.skipped.get(kind, 0) + 1
                return
            self.last[kind] = now
            skipped = self.skipped.pop(kind, 0)
        getattr(self.log, level)(event, **fields, **({"skipped": skipped} if skipped else {}))


class App:
    """The raw ASGI application: admission, the body, the thread pool, the answer."""

    def __init__(
        self,
        router: Router,
        limits: Limits,
        pool: concurrent.futures.ThreadPoolExecutor,
        log: Log | None = None,
    ) -> None:
        self.router = router
        self.limits = limits
        self.pool = pool
        self.log = log
        self.warn = _Warnings(log)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        method = scope["method"]
        path = scope["path"]
        headers = _Headers()
        for raw_name, raw_value in scope["headers"]:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        headers[SCHEME] = str(scope.get("scheme") or "http")  # for absolute URLs in answers
        params = parse_qs(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        uid = (scope.get("state") or {}).get(PEER)
        try:  # h11 has refused a Content-Length that is not one number (400)
            length = int((headers.get("content-length") or "0").split(",")[0])
        except ValueError:
            length = 0
        has_body = length > 0 or "chunked" in (headers.get("transfer-encoding") or "").lower()
        if has_body and method in ("GET", "HEAD"):  # no route takes a body with these
            await self._refuse(send, path, 400, f"{method} takes no request body")
            return
        loop = asyncio.get_running_loop()
        peer = None if uid is None else await loop.run_in_executor(self.pool, user_name, uid)
        refusal = self.router.admit(method, path, params, headers, peer, length)
        if refusal is not None:
            await self._answer(send, path, encode(refusal), close=has_body)
            return
        if has_body:
            try:
                body = await self._body(receive)
            except _TooLarge:
                too_large = f"the request body is larger than {self.limits.max_body} bytes"
                await self._refuse(send, path, 413, too_large)
                return
            except TimeoutError:
                await self._refuse(send, path, 408, "the request body did not arrive in time")
                return
            if body is None:
                return  # the client went away
            for name, given in parse_qs(
                body.decode("utf-8", "replace"), keep_blank_values=True
            ).items():
                params.setdefault(name, []).extend(given)
        encoded = await loop.run_in_executor(
            self.pool, self._route, method, path, params, headers, peer
        )
        await self._answer(send, path, encoded)

    async def _body(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.limits.body_timeout
        while True:
            message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limits.max_body:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _route(
        self,
        method: str,
        path: str,
        params: dict[str, list[str]],
        headers: _Headers,
        peer: str | None,
    ) -> Encoded:
        """Route and encode, in the pool; a failure's detail goes to the log, not to the
        caller."""
        try:
            return encode(self.router.route(method, path, params, headers, peer))
        except duckdb.Error as exc:
            self.warn("warning", "api_store_error", "store", path=path, error=repr(exc))
            message = "the store is busy or unavailable, try again"
            return encode(error_answer(family_of(path), 503, message))
        except Exception as exc:  # a bug: answer, and say where in one log line
            self.router.errors += 1
            tb = exc.__traceback__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb else "?"
            # the same failure at the same place has the same id: the log line (at most
            # one a minute each) is found by it
            ident = hashlib.sha256(f"{type(exc).__name__} {where}".encode()).hexdigest()[:12]
            self.warn(
                "error", "api_internal_error", ident,
                id=ident, path=path, error=repr(exc), where=where,
            )  # fmt: skip
            message = f"internal error, logged as {ident}"
            return encode(error_answer(family_of(path), 500, message))

    async def _refuse(self, send: Send, path: str, status: int, message: str) -> None:
        """Answer an error in the vendor's envelope for ``path`` and close the connection
        (what the client sent after the refusal is not read)."""
        answer = error_answer(family_of(path), status, message, xml=path.endswith(".xml"))
        await self._answer(send, path, encode(answer), close=True)

    async def _answer(self, send: Send, path: str, answer: Encoded, close: bool = False) -> None:
        status, data, content_type, more = answer
        headers = [
            (b"content-type", content_type.encode()),
            (b"content-length", str(len(data)).encode()),
            *((name.encode(), value.encode("latin-1")) for name, value in more),
        ]
        if status == 401 and not path.startswith("/ui"):  # a browser would ask for basic auth
            headers.append((b"www-authenticate", b'Basic realm="logstats"'))
        if status == 405:
            headers.append((b"allow", ", ".join(self.router.allowed(path)).encode()))
        if close:  # a body left unread: the connection cannot carry another request
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})  # HEAD: uvicorn sends none


class _LogBridge(logging.Handler):
    """uvicorn's and asyncio's warnings as one log line each (at most one a minute per
    message), never a traceback."""

    def __init__(self, log: Log | None) -> None:
        super().__init__(logging.WARNING)
        self.log = log
        self.last: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().splitlines()[0] if record.getMessage() else ""
        now = time.monotonic()
        if self.log is None or now - self.last.get(message, -1e9) < 60.0:
            return
        self.last[message] = now
        error = record.exc_info[1] if record.exc_info else None
        self.log.warning(
            "http_" + ("error" if record.levelno >= logging.ERROR else "warning"),
            message=message,
            error=repr(error) if error is not None else None,
        )


def _raise_file_limit(wanted: int) -> int:
    """Raise the soft limit of open files toward ``wanted``; the limit in effect."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


def unix_listener(path: str, backlog: int = 1024) -> socket.socket:
    """A listening socket at ``path``, mode 0666: any local user may connect, and is known
    by its peer credentials (a stale socket file is replaced).  Folders made here for it
    are 0755 whatever the umask (the store's is 027 or stricter)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    folder = os.path.abspath(os.path.dirname(path) or ".")
    missing: list[str] = []
    while not os.path.isdir(folder) and folder not in missing:
        missing.append(folder)
        folder = os.path.dirname(folder)
    for made in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(made)
            os.chmod(made, 0o755)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, 0o666)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def tcp_listener(address: str, backlog: int = 1024) -> socket.socket:
    """A listening socket on ``HOST:PORT`` (``[::1]:PORT`` for IPv6)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, int(port)), family=family, backlog=backlog)


class ApiService:
    """The API on the daemon's listeners, served by uvicorn in one thread."""

    def __init__(
        self,
        router: Router,
        socket_path: str | None,
        tcp: str | None = None,
        limits: Limits | None = None,
        log: Log | None = None,
    ) -> None:
        limits = limits or Limits()
        files = _raise_file_limit(2 * limits.max_connections + 256)
        if files - 128 < 2 * limits.max_connections:  # two descriptors per connection, at most
            # (the bound in effect is logged in serve_ready: ``max_connections``)
            limits = replace(limits, max_connections=max((files - 128) // 2, 16))
        self.router = router
        self.limits = limits
        self.log = log
        self.socket_path = socket_path
        self.sockets: list[socket.socket] = []
        try:
            if socket_path is not None:
                try:
                    self.sockets.append(unix_listener(socket_path))
                except OSError as exc:
                    raise LogstatsError(
                        f"serve.socket {socket_path}: cannot listen: {exc.strerror or exc}"
                    ) from exc
            if tcp:
                try:
                    self.sockets.append(tcp_listener(tcp))
                except (OSError, ValueError) as exc:
                    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
                    raise LogstatsError(f"api.tcp {tcp}: cannot listen: {why}") from exc
        except LogstatsError:
            self._close_sockets()
            if self.sockets and socket_path is not None:  # the socket file is ours
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(socket_path)
            raise
        self.pool = concurrent.futures.ThreadPoolExecutor(limits.threads, "api-query")
        config = uvicorn.Config(
            App(router, limits, self.pool, log),
            http=protocol_class(limits),
            ws="none",
            lifespan="off",
            interface="asgi3",
            log_config=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            timeout_keep_alive=max(int(limits.keep_alive), 1),
            timeout_graceful_shutdown=max(int(limits.shutdown_timeout), 1),
            limit_concurrency=None,  # connections are bounded in Protocol, one task each
            h11_max_incomplete_event_size=limits.max_header_bytes,
        )
        self.server = uvicorn.Server(config)
        self.bridge = _LogBridge(log)
        for name in ("uvicorn", "asyncio"):
            logger = logging.getLogger(name)
            logger.handlers = [self.bridge]
            logger.propagate = False
        self.thread = threading.Thread(target=self._run, name="api", daemon=True)

    def start(self) -> ApiService:
        self.thread.start()
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.set_exception_handler(self._loop_error)
        try:
            loop.run_until_complete(self.server.serve(sockets=self.sockets))
        except Exception as exc:  # the server stopped by itself: say so, once
            if self.log is not None:
                self.log.error("http_server_stopped", error=repr(exc))
        finally:
            loop.close()

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        self.bridge.emit(
            logging.LogRecord(
                "asyncio", logging.WARNING, "", 0, str(context.get("message")), None,
                (type(error), error, None) if error is not None else None,
            )
        )  # fmt: skip

    def stop(self) -> None:
        """Stop listening, let answers in progress finish, remove the socket file."""
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(self.limits.shutdown_timeout + 5.0)
        self._close_sockets()
        self.pool.shutdown(wait=True, cancel_futures=True)  # before the store is closed
        if self.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)

    def _close_sockets(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()

    @property
    def tcp_port(self) -> int | None:
        for sock in self.sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                return int(sock.getsockname()[1])
        return None
