"""The HTTP transport over real sockets: what a hostile or careless caller can do to it.

Two real servers:

- ``daemon``: ``logstats serve`` as its own process (Unix socket and ``api.tcp``, default
  limits), following the recorded Exim sample: the 400 MB POST (answered before the body
  is read, the daemon's RSS flat), malformed ``Content-Length``, 1,500 idle connections
  (no thread each, no traceback in the log, the connection bound answered 503), and
  ``/healthz`` without a key;
- ``server``: ``logstats.server.ApiService`` in this process on a store of its own, with
  short limits (``LIMITS``) so that the timeouts can be watched in well under a second:
  idle, trickled headers, trickled body, kept-alive idle, the connection bound, HEAD, 405
  with ``Allow``, each vendor's 404, and a fuzz of every route with hostile values.

Both are plain HTTP/1.1 over ``socket``/``http.client``: nothing is mocked.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pytest

from logstats import config as config_mod
from logstats.api import MAX_BODY, Router
from logstats.server import ApiService, Limits
from logstats.store import Store
from tests.daemon_harness import SAMPLES, Serve, short_dir, write_config
from tests.mta.sink import free_port

ADMIN_KEY = "admin-key-0123456789"
ALICE_KEY = "alice-key-0123456789"
KEYS = [
    {"key": ADMIN_KEY, "name": "admin"},
    {"key": ALICE_KEY, "name": "alice", "accounts": ["alice"]},
]
LIMITS = Limits(
    header_timeout=0.6,
    body_timeout=0.6,
    keep_alive=1.0,
    write_timeout=0.6,
    max_connections=24,
    shutdown_timeout=1,
)
BIG = 16 << 20  # bytes of the test server's /metrics: more than any socket buffer holds


def auth(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"api:{key}".encode()).decode()}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    port: int,
    method: str,
    path: str,
    params: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
) -> Reply:
    query = f"?{urlencode(params, doseq=True)}" if params else ""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path + query, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def read_all(sock: socket.socket, limit: float = 5.0) -> bytes:
    """What the server sends until it closes (or ``limit`` seconds pass)."""
    deadline = time.monotonic() + limit
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def read_response(sock: socket.socket) -> bytes:
    """One whole answer (headers and a Content-Length body) from a kept-alive connection."""
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    assert m is not None, head
    while len(body) < int(m.group(1)):
        chunk = sock.recv(65536)
        assert chunk, data
        body += chunk
    assert len(body) == int(m.group(1))  # nothing beyond: the next read is the next answer
    return head + b"\r\n\r\n" + body


def status_of(raw: bytes) -> int:
    m = re.match(rb"HTTP/1\.[01] (\d{3})", raw)
    assert m is not None, raw[:200]
    return int(m.group(1))


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed ``sock`` (None: still open after ``seconds``)."""
    started = time.monotonic()
    deadline = started + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return None
        except ConnectionResetError:
            return time.monotonic() - started
        if not chunk:
            return time.monotonic() - started
    return None


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads: line")


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS: line")


@contextlib.contextmanager
def more_files(n: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = n if hard == resource.RLIM_INFINITY else min(n, hard)
    if wanted <= soft:
        yield
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --- the daemon ------------------------------------------------------------------------------


@dataclass
class Daemon:
    serve: Serve
    port: int

    @property
    def pid(self) -> int:
        return self.serve.pid

    def log_text(self) -> str:
        return "\n".join([*self.serve.raw, *self.serve.stderr])


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    with short_dir("lshttp-") as folder:
        log = folder / "exim_mainlog"
        shutil.copyfile(SAMPLES / "exim.log", log)
        port = free_port()
        cfg = write_config(folder, [(log, "exim")], api={"tcp": f"127.0.0.1:{port}", "keys": KEYS})
        with Serve(cfg) as serve:
            serve.wait_ready(timeout=60)
            d = Daemon(serve, port)
            for _ in range(8):  # every query thread started: later counts compare like with like
                assert 200 == request(port, "GET", "/healthz", headers=auth(ADMIN_KEY)).status
            yield d
            assert serve.proc.poll() is None, serve.stderr[-20:]


def test_unauthenticated_huge_post_is_refused_before_its_body(daemon: Daemon) -> None:
    """A POST announcing 400 MB without a key is answered (413) as soon as its headers
    are in, the connection is closed after far fewer than 400 MB, and the daemon's RSS
    does not grow; a small POST without a key is answered 401 before any of its body is
    sent."""
    before = rss_of(daemon.pid)
    sock = connect(daemon.port)
    head = (
        "POST /json-api/cpanel HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        "Content-Length: 400000000\r\n\r\n"
    )
    started = time.monotonic()
    sock.sendall(head.encode())
    first = sock.recv(65536)
    assert 413 == status_of(first), first
    assert time.monotonic() - started < 2.0
    sent = 0
    chunk = b"a" * 65536
    with contextlib.suppress(OSError):  # the server closes: EPIPE / ECONNRESET
        while sent < 400_000_000:
            sock.sendall(chunk)
            sent += len(chunk)
    sock.close()
    assert sent < 64 * 1024 * 1024, sent  # closed long before the announced size
    assert rss_of(daemon.pid) - before < 32 * 1024 * 1024

    small = connect(daemon.port)
    small.sendall(b"POST /json-api/cpanel HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n")
    raw = read_all(small, 3.0)  # no body sent at all: the answer comes anyway
    small.close()
    assert 401 == status_of(raw), raw
    assert b'"cpanelresult"' in raw  # in cPanel's envelope


@pytest.mark.parametrize("length", ["-1", "abc", "1e9", "5, 6"])
def test_malformed_content_length_is_400_at_once(daemon: Daemon, length: str) -> None:
    """``Content-Length: -1`` (or not a number) is answered 400 and closed at once, with
    no thread held for it."""
    before = threads_of(daemon.pid)
    sock = connect(daemon.port)
    started = time.monotonic()
    sock.sendall(
        f"POST /json-api/cpanel HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()
    )
    raw = read_all(sock, 3.0)
    sock.close()
    assert 400 == status_of(raw), raw
    assert time.monotonic() - started < 1.0
    assert threads_of(daemon.pid) <= before


def test_1500_idle_connections(daemon: Daemon) -> None:
    """1,500 connections opened and left idle: no thread each (the count stays flat), the
    ones beyond the bound (1,000) are answered 503 and closed, the daemon still answers
    while they are open, and closing them all writes no traceback and no error into the
    daemon's log."""
    threads = threads_of(daemon.pid)
    log_before = len(daemon.log_text())
    socks: list[socket.socket] = []
    with more_files(4096):
        try:
            for _ in range(1500):
                socks.append(connect(daemon.port))
            time.sleep(0.5)
            assert threads_of(daemon.pid) <= threads + 1
            busy = 0
            for s in socks[-100:]:
                s.settimeout(2.0)
                with contextlib.suppress(TimeoutError, ConnectionResetError):
                    if s.recv(100).startswith(b"HTTP/1.1 503"):
                        busy += 1
            assert busy > 0
            # the Unix socket is another listener of the same server: it answers meanwhile
            status = daemon.serve.health()
            assert status["ok"]
        finally:
            for s in socks:
                s.close()
    time.sleep(1.0)
    assert threads_of(daemon.pid) <= threads + 1
    assert 200 == request(daemon.port, "GET", "/healthz").status
    new = daemon.log_text()[log_before:]
    assert "Traceback" not in new
    assert [] == [ln for ln in new.splitlines() if '"level": "error"' in ln]


def test_healthz_without_a_key_tells_nothing(daemon: Daemon) -> None:
    """``/healthz`` over TCP without a key answers exactly ``{"ok": true}`` (no database
    path, no log paths); with the admin key the daemon's status; with a key limited to an
    account, ``{"ok": true}`` again; over the socket, root (an admin) gets the status."""
    anonymous = request(daemon.port, "GET", "/healthz")
    assert 200 == anonymous.status
    assert {"ok": True} == anonymous.json()
    full = request(daemon.port, "GET", "/healthz", headers=auth(ADMIN_KEY)).json()
    assert {"ok", "db", "sources", "lines"} <= set(full)
    assert {"ok": True} == request(daemon.port, "GET", "/healthz", headers=auth(ALICE_KEY)).json()
    assert "db" in daemon.serve.health()
    bad = request(daemon.port, "GET", "/healthz", headers=auth("not-a-key"))
    assert 401 == bad.status


def test_metrics_is_for_admins_only(daemon: Daemon) -> None:
    """``/metrics`` over TCP: no key is 401 and a key limited to an account 403 (neither
    shows a log path), the admin key as Prometheus sends it (``authorization`` Bearer or
    ``basic_auth``) gets the metrics; HEAD alike."""
    for headers in ({}, {"Authorization": "Bearer not-a-key"}, auth("not-a-key")):
        reply = request(daemon.port, "GET", "/metrics", headers=headers)
        assert 401 == reply.status, reply
        assert b"lines_read" not in reply.body
        assert b"exim_mainlog" not in reply.body
    for headers in ({"Authorization": f"Bearer {ALICE_KEY}"}, auth(ALICE_KEY)):
        reply = request(daemon.port, "GET", "/metrics", headers=headers)
        assert 403 == reply.status, reply
        assert b"exim_mainlog" not in reply.body
    assert 401 == request(daemon.port, "HEAD", "/metrics").status
    for headers in ({"Authorization": f"Bearer {ADMIN_KEY}"}, auth(ADMIN_KEY)):
        reply = request(daemon.port, "GET", "/metrics", headers=headers)
        assert 200 == reply.status, reply
        assert b"logstats_lines_read" in reply.body
        assert b"exim_mainlog" in reply.body


def test_metrics_on_the_socket_is_for_admin_users(daemon: Daemon) -> None:
    """Over the Unix socket root (``api.admins``) gets ``/metrics``; a plain user
    (``nobody``) gets 403, and the log paths stay hidden from it."""
    from logstats import api

    status, text = api.get(daemon.serve.socket_path, "/metrics", {})
    if os.geteuid() == 0:
        assert 200 == status
        assert "logstats_lines_read" in text
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to act as another Unix user")
    script = (
        "import sys; from logstats import api; "
        "s, b = api.get(sys.argv[1], '/metrics', {}); print(s); print(b)"
    )
    proc = subprocess.run(
        [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
         sys.executable, "-c", script, daemon.serve.socket_path],
        capture_output=True, text=True, timeout=60, check=False, cwd="/",
    )  # fmt: skip
    assert 0 == proc.returncode, proc.stderr
    assert "403" == proc.stdout.splitlines()[0]
    assert "exim_mainlog" not in proc.stdout
    assert "lines_read" not in proc.stdout


def test_a_plain_user_queries_the_daemon(daemon: Daemon) -> None:
    """A Unix user who is neither an admin nor in any group of the daemon's (``nobody``)
    runs ``logstats query`` against the running daemon: the socket lets it in (0666),
    ``/healthz`` tells it the database the daemon serves (so the CLI asks the daemon, not
    the locked file), its own account is looked up (``nobody`` has never sent mail and is
    in no account map: cPanel's failure for an account that does not exist) and another
    account is refused (cPanel's failure, exit 1)."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to act as another Unix user")
    nobody = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    cfg = str(daemon.serve.cfg)
    command = [sys.executable, "-m", "logstats", "query", "emailtrack", "--config", cfg]
    own = subprocess.run(
        [*nobody, *command, "--account", "nobody"],
        capture_output=True, text=True, timeout=60, check=False, cwd="/",
    )  # fmt: skip
    assert 1 == own.returncode, own.stderr
    mine = json.loads(own.stdout)["cpanelresult"]["event"]
    assert 0 == mine["result"]
    assert "'nobody' does not exist" in mine["reason"]
    other = subprocess.run(
        [*nobody, *command, "--account", "alice"],
        capture_output=True, text=True, timeout=60, check=False, cwd="/",
    )  # fmt: skip
    assert 1 == other.returncode, other.stderr
    env = json.loads(other.stdout)["cpanelresult"]
    assert 0 == env["event"]["result"]
    assert "not allowed" in env["event"]["reason"]


def test_a_tcp_address_in_use_is_one_line(daemon: Daemon) -> None:
    """A second daemon told to listen on the first one's TCP port exits 1 with one line
    naming ``api.tcp`` (after which nothing of it is left listening)."""
    with short_dir("lshttp2-") as folder:
        log = folder / "exim_mainlog"
        log.write_text("")
        cfg = write_config(folder, [(log, "exim")], api={"tcp": f"127.0.0.1:{daemon.port}"})
        proc = subprocess.run(
            [sys.executable, "-m", "logstats", "serve", "--config", str(cfg)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert 1 == proc.returncode
        lines = proc.stderr.strip().splitlines()
        assert 1 == len(lines), proc.stderr
        assert f"api.tcp 127.0.0.1:{daemon.port}: cannot listen" in lines[0]
        assert not (folder / "ls.sock").exists()
    assert 200 == request(daemon.port, "GET", "/healthz").status


# --- the in-process server -------------------------------------------------------------------


@dataclass
class Server:
    service: ApiService
    port: int
    socket: str


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with short_dir("lshttps-") as folder:
        cfg_path = write_config(
            folder, [(folder / "none.log", "exim")], api={"keys": KEYS, "admins": ["root"]}
        )
        cfg = config_mod.load(str(cfg_path))
        store = Store(cfg.db)
        router = Router(
            store.con, lambda: {"db": cfg.db, "sources": []}, cfg, lambda cur: "x" * BIG
        )
        service = ApiService(router, cfg.socket, "127.0.0.1:0", LIMITS).start()
        try:
            port = service.tcp_port
            assert port is not None
            yield Server(service, port, cfg.socket)
        finally:
            service.stop()
            store.close()
        assert not os.path.exists(cfg.socket)  # removed at stop


def test_idle_connection_is_closed(server: Server) -> None:
    """A connection that sends nothing is closed after the header timeout."""
    sock = connect(server.port)
    took = closed_within(sock, 5.0)
    sock.close()
    assert took is not None
    assert LIMITS.header_timeout - 0.1 <= took < LIMITS.header_timeout + 1.5


def test_trickled_headers_are_cut_off(server: Server) -> None:
    """Headers sent a line every 0.2 s (each keeps the connection busy) are cut off at the
    header deadline: the connection closes, with no answer."""
    sock = connect(server.port)
    sock.sendall(b"GET /healthz HTTP/1.1\r\n")
    started = time.monotonic()
    closed = False
    for i in range(40):
        try:
            sock.sendall(f"X-Slow-{i}: y\r\n".encode())
        except OSError:
            closed = True
            break
        sock.settimeout(0.2)
        try:
            if sock.recv(100) == b"":
                closed = True
                break
        except TimeoutError:
            continue
        except ConnectionResetError:
            closed = True
            break
    sock.close()
    assert closed
    assert time.monotonic() - started < LIMITS.header_timeout + 1.5


def test_trickled_body_gets_408(server: Server) -> None:
    """A body that does not arrive within the body timeout is answered 408 (cPanel's
    envelope) and the connection closed."""
    sock = connect(server.port)
    sock.sendall(
        b"POST /json-api/cpanel HTTP/1.1\r\nHost: x\r\nAuthorization: whm root:"
        + ADMIN_KEY.encode()
        + b"\r\nContent-Length: 100\r\n\r\ncpanel_jsonapi_"
    )
    started = time.monotonic()
    raw = read_all(sock, 5.0)
    sock.close()
    assert 408 == status_of(raw), raw
    assert b'"cpanelresult"' in raw
    assert time.monotonic() - started < LIMITS.body_timeout + 1.5


def test_kept_alive_connection_is_closed_when_idle(server: Server) -> None:
    """After an answer, a kept-alive connection that sends nothing more is closed after
    the keep-alive timeout; one that goes on is answered again on the same connection."""
    sock = connect(server.port)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert 200 == status_of(read_response(sock))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert 200 == status_of(read_response(sock))
    took = closed_within(sock, 5.0)
    sock.close()
    assert took is not None
    assert took < LIMITS.keep_alive + 1.5


def test_a_client_that_does_not_read_is_cut_off(server: Server) -> None:
    """A client that asks for a large answer and does not read it holds its connection
    only until the write timeout: then the server drops it (the answer stays short)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + ADMIN_KEY.encode()
        + b"\r\n\r\n"
    )
    time.sleep(LIMITS.write_timeout + 1.5)
    got = 0
    reset = False
    sock.settimeout(5)
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            reset = True
            break
        if not chunk:
            break
        got += len(chunk)
    sock.close()
    assert reset or got < BIG
    assert got < BIG


def test_connections_beyond_the_bound_get_503(server: Server) -> None:
    """With ``max_connections`` open, one more is answered 503 and closed; once they
    close, a new connection is answered again."""
    socks = [connect(server.port) for _ in range(LIMITS.max_connections)]
    try:
        time.sleep(0.1)
        extra = connect(server.port)
        raw = read_all(extra, 2.0)
        extra.close()
        assert 503 == status_of(raw), raw
    finally:
        for s in socks:
            s.close()
    time.sleep(0.2)
    assert 200 == request(server.port, "GET", "/healthz").status


def test_chunked_body_over_the_limit_is_413(server: Server) -> None:
    """A chunked body (no Content-Length) is counted as it comes: beyond the limit, 413
    (SendGrid's envelope on its route, where the key may be in the body)."""
    sock = connect(server.port)
    sock.sendall(
        b"POST /api/distributor.manage.json HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"a" * 8192
    with contextlib.suppress(OSError):
        for _ in range(MAX_BODY // len(chunk) + 4):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    raw = read_all(sock, 3.0)
    sock.close()
    assert 413 == status_of(raw), raw
    assert b'"errors"' in raw


def test_post_within_the_limit_is_read(server: Server) -> None:
    """A form body under the limit is read: a SendGrid POST with its key in the body."""
    form = urlencode(
        {"api_user": "admin", "api_key": ADMIN_KEY, "method": "stats", "user": "alice"}
    ).encode()
    reply = request(
        server.port,
        "POST",
        "/api/distributor.manage.json",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        body=form,
    )
    assert 200 == reply.status, reply.body
    assert isinstance(reply.json(), list)


def test_head_is_get_without_a_body(server: Server) -> None:
    """HEAD answers GET's status and headers (Content-Length included) and no body."""
    params = {"event": "accepted"}
    get = request(server.port, "GET", "/v3/stats/total", params, auth(ADMIN_KEY))
    head = request(server.port, "HEAD", "/v3/stats/total", params, auth(ADMIN_KEY))
    assert 200 == get.status == head.status
    assert b"" == head.body
    assert get.headers["content-length"] == head.headers["content-length"]
    assert get.headers["content-type"] == head.headers["content-type"]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("key", [None, ADMIN_KEY, "not-a-key"])
def test_get_with_a_body_is_refused_before_it_is_read(
    server: Server, method: str, key: str | None
) -> None:
    """A GET or HEAD announcing a body (no route takes one) is answered 400 with
    ``connection: close`` as soon as its headers are in, with or without a key, valid or
    not: none of the body is sent and the answer comes anyway."""
    for path in ("/v3/stats/total", "/healthz", "/metrics", "/api/distributor.manage.json"):
        sock = connect(server.port)
        head = f"{method} {path}?event=accepted HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n"
        if key is not None:
            head += f"Authorization: Bearer {key}\r\n"
        started = time.monotonic()
        sock.sendall((head + "\r\n").encode())
        raw = read_all(sock, 3.0)
        sock.close()
        assert 400 == status_of(raw), raw
        assert time.monotonic() - started < 1.0
        assert b"\r\nconnection: close\r\n" in raw.lower()
        if method == "GET":
            assert b"takes no request body" in raw
    chunked = connect(server.port)
    chunked.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    raw = read_all(chunked, 3.0)
    chunked.close()
    assert 400 == status_of(raw), raw


@pytest.mark.parametrize(
    ("method", "path", "allow", "key"),
    [
        ("POST", "/v3/stats/total", "GET, HEAD", "message"),
        ("DELETE", "/healthz", "GET, HEAD", "error"),
        ("PUT", "/json-api/cpanel", "GET, HEAD, POST", "cpanelresult"),
        ("DELETE", "/api/distributor.manage.json", "GET, POST, HEAD", "errors"),
        ("POST", "/v1/stats/newsletter", "GET, HEAD", "error"),
    ],
)
def test_wrong_method_is_405_with_allow(
    server: Server, method: str, path: str, allow: str, key: str
) -> None:
    """A method a route does not answer: 405, ``Allow`` listing the ones it does, in that
    API's envelope."""
    reply = request(server.port, method, path, headers=auth(ADMIN_KEY))
    assert 405 == reply.status, reply.body
    assert allow == reply.headers["allow"]
    assert key in reply.json()


@pytest.mark.parametrize(
    ("path", "check"),
    [
        ("/v3/no/such/thing", lambda b: set(b) == {"message"}),
        ("/api/nothing.json", lambda b: b["message"] == "error" and b["errors"]),
        ("/v1/nothing", lambda b: set(b) == {"error"}),
        ("/json-api/nothing", lambda b: b["cpanelresult"]["event"]["result"] == 0),
        ("/cpsess123/json-api/other", lambda b: b["cpanelresult"]["event"]["result"] == 0),
        ("/elsewhere", lambda b: b["ok"] is False),
    ],
)
def test_unknown_paths_get_each_vendors_404(server: Server, path: str, check: Any) -> None:
    """A path no route names is 404 in the envelope of the API its prefix belongs to."""
    reply = request(server.port, "GET", path, headers=auth(ADMIN_KEY))
    assert 404 == reply.status, reply.body
    assert check(reply.json()), reply.body


def test_cpsess_url_form(server: Server) -> None:
    """cPanel's own URL form ``/cpsess<digits>/json-api/cpanel`` answers as
    ``/json-api/cpanel``; another module or function is named in the failure's reason and
    envelope."""
    params = {
        "cpanel_jsonapi_user": "alice",
        "cpanel_jsonapi_apiversion": "2",
        "cpanel_jsonapi_module": "EmailTrack",
        "cpanel_jsonapi_func": "stats",
    }
    whm = {"Authorization": f"whm root:{ADMIN_KEY}"}
    session = request(server.port, "GET", "/cpsess0123456789/json-api/cpanel", params, whm)
    plain = request(server.port, "GET", "/json-api/cpanel", params, whm)
    assert 200 == session.status == plain.status
    assert plain.json() == session.json()
    assert 1 == session.json()["cpanelresult"]["event"]["result"]
    other = {**params, "cpanel_jsonapi_module": "Email", "cpanel_jsonapi_func": "listpops"}
    reply = request(server.port, "GET", "/cpsess0123456789/json-api/cpanel", other, whm).json()
    env = reply["cpanelresult"]
    assert (0, "Email", "listpops") == (env["event"]["result"], env["module"], env["func"])
    assert "'Email'" in env["event"]["reason"]
    assert "'listpops'" in env["event"]["reason"]


def test_unix_socket_peer_is_known_and_the_socket_is_0666(server: Server) -> None:
    """The socket file is 0666 (callers are told apart by their peer credentials, not by
    the file's group); this process (root, an admin) gets the full status over it."""
    from logstats import api

    assert 0o666 == os.stat(server.socket).st_mode & 0o777
    status, body = api.get(server.socket, "/healthz", {})
    assert 200 == status
    if os.geteuid() == 0:
        assert "db" in body
        assert "sources" in body


# --- no 500 for hostile parameters -----------------------------------------------------------

ODD = [
    "99999999999",
    "99999999999999999999",
    "253402300800",
    "-1",
    "-99999999999",
    "0",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "1e308",
    "1.5",
    "0.000001",
    "9999-12-31",
    "9999-12-31T23:59:59",
    "0001-01-01",
    "0000-00-00",
    "2024-02-30",
    "Tue, 31 Dec 9999 23:59:59 UTC",
    "Mon, 01 Jan 0001 00:00:00 UTC",
    "\u00b2",
    "\u0661\u0662",
    "\x00",
    " ",
    "x" * 3000,
    "99999999999d",
    "999999999m",
    "1000001h",
    "9999999h",
]
FUZZ: list[tuple[str, dict[str, str], list[str]]] = [
    (
        "/json-api/cpanel",
        {"cpanel_jsonapi_module": "EmailTrack", "cpanel_jsonapi_func": "stats",
         "cpanel_jsonapi_user": "alice"},
        ["start", "end", "days", "deliverytype", "cpanel_jsonapi_user"],
    ),
    ("/v1/emailtrack", {"account": "alice"}, ["start", "end", "days", "all", "account"]),
    ("/v3/stats/total", {"event": "accepted"},
     ["start", "end", "duration", "resolution", "event"]),
    ("/v3/alice.test/stats/total", {"event": "accepted"}, ["start", "end", "duration"]),
    ("/v3/alice.test/tags/promo/stats", {"event": "accepted"}, ["start", "end", "duration"]),
    ("/v3/stats/total/domains", {"event": "accepted", "timestamp": "1700000000"},
     ["timestamp", "limit", "skip", "resolution"]),
    ("/v3/stats/filter", {"event": "accepted"},
     ["start", "end", "duration", "group", "filter"]),
    ("/api/distributor.manage.json", {"method": "stats", "user": "alice"},
     ["days", "start_date", "end_date", "aggregate", "list", "category", "user"]),
    ("/api/distributor.manage.xml", {"method": "stats", "user": "alice"},
     ["days", "start_date", "end_date"]),
]  # fmt: skip


def envelope_ok(path: str, reply: Reply) -> bool:
    if path.endswith(".xml"):
        return reply.body.startswith((b"<result>", b"<stats>", b"<categories>"))
    body = reply.json()
    if path.startswith(("/json-api", "/v1/emailtrack")):
        return "cpanelresult" in body or (reply.status == 200 and isinstance(body, dict))
    if path.startswith("/v3/"):
        return "message" in body or "stats" in body
    if path.startswith("/api/"):
        return isinstance(body, list) or "errors" in body or "requests" in body
    return True


@pytest.mark.parametrize(("path", "base", "names"), FUZZ, ids=[f[0] for f in FUZZ])
def test_hostile_values_never_give_500(
    server: Server, path: str, base: dict[str, str], names: list[str]
) -> None:
    """Every parameter of every route, set to huge, negative, NaN, infinite, far-away,
    impossible or non-ASCII values, is answered in that API's envelope, with a 2xx or a
    4xx, never a 5xx; and so are the path parameters."""
    extra = {"api_user": "admin", "api_key": ADMIN_KEY} if path.startswith("/api/") else {}
    headers = auth(ADMIN_KEY) if path.startswith("/v3/") else {}
    if path.startswith(("/json-api", "/v1/emailtrack")):
        headers = {"Authorization": f"whm root:{ADMIN_KEY}"}
    pair = ["start_date", "end_date"] if path.startswith("/api/") else ["start", "end"]
    if path.startswith("/v3/stats/total/domains"):
        pair = ["timestamp", "resolution"]
    failures = []
    for value in ODD:
        for given in [*({name: value} for name in names), dict.fromkeys(pair, value)]:
            reply = request(server.port, "GET", path, {**base, **extra, **given}, headers)
            if reply.status >= 500 or not envelope_ok(path, reply):
                failures.append((given, reply.status, reply.body[:200]))
    for low, high in [("9999-12-30", "9999-12-31"), ("0001-01-01", "0001-01-02"),
                      ("8999-12-30", "8999-12-31"), ("253402300700", "253402300799")]:  # fmt: skip
        reply = request(server.port, "GET", path, {**base, **extra, pair[0]: low, pair[1]: high},
                        headers)  # fmt: skip
        if reply.status >= 500 or not envelope_ok(path, reply):
            failures.append(((low, high), reply.status, reply.body[:200]))
    assert [] == failures


@pytest.mark.parametrize(
    "template",
    ["/v3/{}/stats/total", "/v3/{}/tags/promo/stats", "/v3/alice.test/tags/{}/stats",
     "/v1/stats/{}", "/v3/{}/aggregates/providers"],
)  # fmt: skip
def test_hostile_path_values_never_give_500(server: Server, template: str) -> None:
    """Path parameters (a domain, a tag) with NUL bytes, huge or non-ASCII values."""
    failures = []
    for value in ["%00", "%FF%FE", "x" * 3000, quote("\u00b2"), "..", "%2e%2e", "nan"]:
        path = template.format(value)
        params = {"event": "accepted", "access_token": ADMIN_KEY}
        reply = request(server.port, "GET", path, params, auth(ADMIN_KEY))
        if reply.status >= 500:
            failures.append((value[:20], reply.status, reply.body[:200]))
    assert [] == failures


def test_concurrent_requests_are_answered(server: Server) -> None:
    """Requests from many threads at once are all answered (the query pool is bounded,
    the loop is not blocked by a query)."""
    results: list[int] = []

    def ask() -> None:
        results.append(
            request(server.port, "GET", "/v3/stats/total", {"event": "accepted"},
                    auth(ADMIN_KEY)).status
        )  # fmt: skip

    threads = [threading.Thread(target=ask) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [200] * 16 == results


def test_kept_alive_answers_do_not_wait_for_delayed_acks(server: Server) -> None:
    """On one kept-alive TCP connection, answers come in a few milliseconds, not the
    ~40 ms a body written after its header waits for the client's delayed ACK without
    TCP_NODELAY (the median of 30 is far below that)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    took = []
    try:
        for _ in range(30):
            started = time.perf_counter()
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            resp.read()
            took.append(time.perf_counter() - started)
    finally:
        conn.close()
    took.sort()
    assert took[len(took) // 2] < 0.025, took


# --- encoding in the pool, generic failures, the peer's name -----------------------------------


class _Recorder:
    """A log that keeps its lines (the server's ``log`` argument)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append(("warning", event, fields))

    def error(self, event: str, **fields: Any) -> None:
        self.lines.append(("error", event, fields))


class _TestRouter(Router):
    """The real router, with two paths of its own: a huge JSON answer and a bug."""

    def route(self, method: str, path: str, params: Any, headers: Any, peer: Any) -> Any:
        if path == "/v1/stats/huge":
            return 200, {"rows": [{"n": i, "f": i / 7} for i in range(600_000)]}, "application/json"
        if path == "/v1/stats/bug":
            raise RuntimeError("secret detail /var/lib/logstats/db.duckdb")
        return super().route(method, path, params, headers, peer)


@pytest.fixture
def odd_server() -> Iterator[tuple[Server, Store, _Recorder]]:
    with short_dir("lshttpo-") as folder:
        cfg_path = write_config(folder, [(folder / "none.log", "exim")], api={"keys": KEYS})
        cfg = config_mod.load(str(cfg_path))
        store = Store(cfg.db)
        router = _TestRouter(store.con, lambda: {"db": cfg.db}, cfg, lambda cur: "")
        log = _Recorder()
        service = ApiService(router, cfg.socket, "127.0.0.1:0", LIMITS, log=log).start()
        try:
            port = service.tcp_port
            assert port is not None
            yield Server(service, port, cfg.socket), store, log
        finally:
            service.stop()
            store.close()


def test_a_large_answer_is_encoded_off_the_event_loop(
    odd_server: tuple[Server, Store, _Recorder],
) -> None:
    """While one answer of some 20 MB of JSON is encoded, other connections are answered
    at once (the encoding runs in the query pool, not on the event loop)."""
    server = odd_server[0]
    big: list[Reply] = []
    started = time.perf_counter()
    thread = threading.Thread(
        target=lambda: big.append(
            request(server.port, "GET", "/v1/stats/huge", {"access_token": ADMIN_KEY})
        )
    )
    thread.start()
    time.sleep(0.05)
    took = []
    while thread.is_alive() and len(took) < 40:
        t0 = time.perf_counter()
        assert 200 == request(server.port, "GET", "/healthz").status
        took.append(time.perf_counter() - t0)
    thread.join(60)
    whole = time.perf_counter() - started
    assert 200 == big[0].status
    assert 600_000 == len(big[0].json()["rows"])
    assert took, "the large answer came too fast to watch"
    assert max(took) < max(0.25, whole / 2), (took, whole)


def test_failures_are_answered_with_a_generic_text_and_logged(
    odd_server: tuple[Server, Store, _Recorder],
) -> None:
    """A bug is answered 500 with ``internal error, logged as ID`` (the exception's text
    stays in the log line that carries the same ID), a store that cannot be read 503 with
    "try again" (its error in the log); the same failure again is answered alike and not
    logged again within the minute."""
    server, store, log = odd_server
    for _ in range(3):
        reply = request(server.port, "GET", "/v1/stats/bug", {"access_token": ADMIN_KEY})
        assert 500 == reply.status
        assert b"secret" not in reply.body
        m = re.fullmatch(r"internal error, logged as ([0-9a-f]{12})", reply.json()["error"])
        assert m is not None, reply.body
    bugs = [fields for _, event, fields in log.lines if event == "api_internal_error"]
    assert 1 == len(bugs)
    assert m.group(1) == bugs[0]["id"]
    assert "secret detail" in bugs[0]["error"]
    store.con.close()  # the store goes away under the server
    for _ in range(2):
        reply = request(
            server.port, "GET", "/v3/stats/total", {"event": "accepted"}, auth(ADMIN_KEY)
        )
        assert 503 == reply.status
        assert {"message": "the store is busy or unavailable, try again"} == reply.json()
    stores = [fields for _, event, fields in log.lines if event == "api_store_error"]
    assert 1 == len(stores)
    assert "closed" in stores[0]["error"].lower()


def test_peer_names_are_cached_with_a_bound() -> None:
    """The peer's user name: known uids by name, others as ``uid:N``; the cache keeps at
    most ``_USERS_MAX`` uids."""
    from logstats import server as server_mod

    assert "root" == server_mod.user_name(0)
    assert "uid:4000000000" == server_mod.user_name(4_000_000_000)
    for uid in range(3_000_000_000, 3_000_000_000 + server_mod._USERS_MAX + 50):
        server_mod.user_name(uid)
    assert len(server_mod._users) <= server_mod._USERS_MAX


def _max_open_files(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no Max open files line")


@pytest.mark.parametrize("umask", ["022", "077"])
def test_the_socket_folder_made_by_the_daemon_is_0755(umask: str) -> None:
    """``serve.socket`` in folders that do not exist yet: the daemon makes them 0755 under
    umask 022 and 077 alike (the store's umask is 027 or stricter), so that any local user
    can reach the 0666 socket; ``serve_ready`` names the connection bound in effect, which
    follows the open-file limit (here 600: two descriptors per connection plus a margin)."""
    with short_dir("lshttpd-") as folder:
        log = folder / "exim_mainlog"
        log.write_text("")
        sock_path = folder / "run" / "sub" / "ls.sock"
        cfg = write_config(
            folder, [(log, "exim")], serve={"socket": str(sock_path), "batch_seconds": 0.1}
        )
        prefix = ["sh", "-c", f'umask {umask}; ulimit -n 600; exec "$@"', "sh"]
        with Serve(cfg, prefix=prefix) as serve:
            ready = serve.wait_event("serve_ready", timeout=60)
            files = _max_open_files(serve.pid)
            assert 600 == files
            assert (files - 128) // 2 == ready["max_connections"]
            for made in (folder / "run", folder / "run" / "sub"):
                assert 0o755 == made.stat().st_mode & 0o777, (made, oct(made.stat().st_mode))
            assert 0o666 == sock_path.stat().st_mode & 0o777
            assert "db" in serve.health()
            setpriv = shutil.which("setpriv")
            if os.geteuid() == 0 and setpriv is not None:  # a plain user reaches the socket
                script = (
                    "import sys; from logstats import api; "
                    "print(api.get(sys.argv[1], '/healthz', {})[0])"
                )
                proc = subprocess.run(
                    [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
                     sys.executable, "-c", script, str(sock_path)],
                    capture_output=True, text=True, timeout=60, check=False, cwd="/",
                )  # fmt: skip
                assert "200" == proc.stdout.strip(), proc.stderr


def test_answer_size_is_bounded(server: Server) -> None:
    """SendGrid per-category rows are days x categories: beyond 36,600 rows the request is
    refused with SendGrid's 400 naming the bound (100 years of one category still answer);
    Mailgun hourly buckets over a long window are refused alike."""
    base = {"method": "stats", "user": "alice", "api_user": "admin", "api_key": ADMIN_KEY}
    path = "/api/distributor.manage.json"
    one = request(server.port, "GET", path, {**base, "days": "36600", "category": "a"})
    assert 200 == one.status, one.body[:200]
    assert isinstance(one.json(), list)
    two = request(server.port, "GET", path, {**base, "days": "18301", "category[]": ["a", "b"]})
    assert 400 == two.status
    assert "error" == two.json()["message"]
    assert "36600 rows" in two.json()["errors"][0]
    fits = request(server.port, "GET", path, {**base, "days": "18300", "category[]": ["a", "b"]})
    assert 200 == fits.status
    xml = request(
        server.port, "GET", "/api/distributor.manage.xml",
        {**base, "days": "1000", "category": [f"c{i}" for i in range(40)]},
    )  # fmt: skip
    assert 400 == xml.status
    assert xml.body.startswith(b"<result>")
    hourly = request(
        server.port, "GET", "/v3/stats/total",
        {"event": "accepted", "resolution": "hour", "start": "1000000000", "end": "1700000000"},
        auth(ADMIN_KEY),
    )  # fmt: skip
    assert 400 == hourly.status
    assert "at most 20000" in hourly.json()["message"]
