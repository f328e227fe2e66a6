"""The web UI (``/ui/``) in real headless Chromium, against a running ``logstats serve``.

The daemon is tests/test_api.py's (both recorded real-MTA samples, its keys); the browser
is Debian's ``chromium`` (tests/mta/install.sh) driven by ``playwright`` (dev extra) over
the DevTools protocol, each login in a fresh profile.  Chromium resolves no host but
127.0.0.1 (``--host-resolver-rules``), and every request a page makes is logged: none
may go to another origin.  Console errors and uncaught exceptions fail the test.

Expected numbers come from independent sources: the dashboard's are compared with the
cPanel EmailTrack API's answer for the same window and account (and, over the whole
recording, with the scenario's truth); the trace with the Exim log's own lines.
Screenshots (PNG) are kept under ``$LOGSTATS_TEST_ARTEFACTS`` (default: pytest's tmp dir).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.daemon_harness import SAMPLES, Serve, short_dir, write_config
from tests.mta.sink import free_port
from tests.test_api import (
    ADMIN_KEY,
    ALICE_KEY,
    DOMAIN_KEY,
    KEYS,
    PROVIDERS,
    Api,
    emailtrack_params,
    load_truth,
    sample_days,
    whm,
)

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="chromium is not installed (tests/mta/install.sh)"
)
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # no other host resolves
]
# Chromium's own network log of a refusal a test asks for (a page's failed load is seen
# by ``Browser.loaded``: the page marks it ``data-loaded="error"``)
REFUSED = re.compile(r"Failed to load resource: the server responded with a status of 40[134]")
TOTALS = {  # dashboard total -> EmailTrack field
    "sent": "SENDCOUNT",
    "delivered": "SUCCESSCOUNT",
    "deferred": "DEFERCOUNT",
    "failed": "FAILCOUNT",
    "inprogress": "INPROGRESSCOUNT",
}


@pytest.fixture(scope="module")
def api() -> Iterator[Api]:
    """``logstats serve`` following copies of both samples (as tests/test_api.py's), its
    Track Delivery rows kept for a century: the recording stays searchable whatever the
    date of the run (``store.retention_days`` counts back from the wall clock)."""
    first, last = sample_days()
    with short_dir("lsweb-") as folder:
        exim = folder / "exim_mainlog"
        maillog = folder / "maillog"
        shutil.copyfile(SAMPLES / "exim.log", exim)
        shutil.copyfile(SAMPLES / "postfix.log", maillog)
        pinned = datetime.combine(last + timedelta(days=1), datetime.min.time(), UTC)
        os.utime(maillog, (pinned.timestamp(), pinned.timestamp()))  # Postfix's year
        port = free_port()
        cfg = write_config(
            folder,
            [(exim, "exim"), (maillog, "postfix")],
            api={"tcp": f"127.0.0.1:{port}", "keys": KEYS, "admins": ["root"]},
            providers=PROVIDERS,
            store={"path": str(folder / "db.duckdb"), "retention_days": 36500},
        )
        with Serve(cfg) as serve:
            serve.wait_ready(timeout=60)
            yield Api(port, serve.socket_path, load_truth(), first, last)
            assert serve.proc.poll() is None, serve.stderr[-20:]


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("LOGSTATS_TEST_ARTEFACTS")
    folder = Path(given) / "web" if given else tmp_path_factory.mktemp("web-artefacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class Browser:
    """One Chromium profile logged in (or not) to the daemon, with what its pages did."""

    page: Any
    base: str
    artefacts: Path
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def goto(self, path: str) -> Any:
        return self.page.goto(self.base + path)

    def login(self, key: str) -> None:
        self.goto("/ui/login")
        self.page.fill("#key", key)
        with self.page.expect_navigation():
            self.page.click("#login-button")

    def loaded(self) -> None:
        self.page.wait_for_selector("body[data-loaded]")
        assert "1" == self.page.get_attribute("body", "data-loaded"), self.page.inner_text("#error")

    def text(self, selector: str) -> str:
        return str(self.page.inner_text(selector)).strip()

    def shot(self, name: str) -> Path:
        path = self.artefacts / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 1000
        return path

    def fetch(self, path: str) -> tuple[int, Any]:
        """A request from the page itself (its cookie, its origin)."""
        answer = self.page.evaluate(
            """async (url) => { const r = await fetch(url);
                 return [r.status, await r.text()]; }""",
            path,
        )
        return int(answer[0]), answer[1]


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    with playwright_api.sync_playwright() as pw:
        yield pw.chromium


@pytest.fixture
def browser(
    chromium: Any, request: pytest.FixtureRequest, artefacts: Path, tmp_path: Path
) -> Iterator[Callable[..., Browser]]:
    """Fresh Chromium profiles on a daemon (``base``; default: the ``api`` fixture's);
    after the test, no page may have asked another origin or logged an error."""
    made: list[tuple[Any, Browser]] = []

    def new(base: str | None = None) -> Browser:
        if base is None:
            base = request.getfixturevalue("api").base_url
        profile = tmp_path / f"profile-{len(made)}"
        context = chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=FLAGS
        )
        page = context.pages[0] if context.pages else context.new_page()
        b = Browser(page, base, artefacts)
        page.on("request", lambda r: b.requests.append(r.url))
        page.on(
            "console",
            lambda m: (
                b.errors.append(m.text) if m.type == "error" and not REFUSED.match(m.text) else None
            ),
        )
        page.on("pageerror", lambda e: b.errors.append(str(e)))
        made.append((context, b))
        return b

    yield new
    for context, b in made:
        context.close()
        assert b.requests, "no page was loaded"
        foreign = [u for u in b.requests if not u.startswith(b.base + "/")]
        assert [] == foreign
        assert [] == b.errors


def emailtrack(api: Api, account: str, start: str, end: str) -> dict[str, str]:
    resp = api.request(
        "GET",
        "/json-api/cpanel",
        {**emailtrack_params(account), "start": start, "end": end},
        headers=whm(ADMIN_KEY),
    )
    assert 200 == resp.status, resp.text
    row: dict[str, str] = resp.json()["cpanelresult"]["data"][0]
    return row


def shown_totals(b: Browser) -> dict[str, int]:
    return {k: int(b.text(f"#total-{k}")) for k in TOTALS}


def exim_lines(queue_id: str) -> list[str]:
    return [
        line
        for line in (SAMPLES / "exim.log").read_text().splitlines()
        if line[20:].startswith(queue_id + " ")
    ]


def queue_id_of(message_id: str) -> str:
    """The Exim queue id that received ``message_id`` (from the log itself)."""
    for line in (SAMPLES / "exim.log").read_text().splitlines():
        if " <= " in line and f" id={message_id}" in line:
            return line.split()[2]
    raise AssertionError(message_id)


def postfix_queue_ids(message_id: str) -> set[str]:
    """The Postfix queue ids whose cleanup logged ``message_id``."""
    return {
        line.split()[5].rstrip(":")
        for line in (SAMPLES / "postfix.log").read_text().splitlines()
        if f"message-id=<{message_id}>" in line
    }


def first_queue_id(sender: str) -> str:
    for line in (SAMPLES / "exim.log").read_text().splitlines():
        if f" <= {sender} " in line:
            return line.split()[2]
    raise AssertionError(sender)


# --- login and sessions ----------------------------------------------------------------


def test_without_login_pages_show_the_form_and_data_is_401(
    api: Api,
    browser: Callable[..., Browser],
) -> None:
    """No session: every page is the login form, every JSON endpoint 401; a wrong key
    leads back to the form saying so."""
    b = browser()
    for path in ("/ui/", "/ui/track?account=alice"):
        b.goto(path)
        assert b.page.is_visible("#key")
    for name in ("overview", "series", "search", "trace?id=x", "whoami"):
        status, _ = b.fetch(f"/ui/api/{name}")
        assert 401 == status
    b.login("not-a-key")
    assert b.page.url.endswith("/ui/login?failed=1")
    assert b.page.is_visible("#failed")
    b.shot("login-failed")


def test_login_cookie_is_httponly_strict_and_signed(api: Api) -> None:
    """The session cookie: HttpOnly, SameSite=Strict, Path=/ui, with an expiry; a token
    altered in one character, or made for another daemon, is no login."""
    origin = {"Origin": api.base_url, "Host": f"127.0.0.1:{api.port}"}
    resp = post_login(api, ALICE_KEY, origin)
    assert 303 == resp.status
    cookie = resp.getheader("Set-Cookie") or ""
    attrs = [a.strip() for a in cookie.split(";")]
    assert {"HttpOnly", "SameSite=Strict", "Path=/ui"} <= set(attrs)
    assert any(re.fullmatch(r"Max-Age=[1-9]\d*", a) for a in attrs)
    assert ALICE_KEY not in cookie
    token = attrs[0].partition("=")[2]
    good = get(api, "/ui/api/whoami", token)
    assert (200, "alice") == (good[0], good[1]["name"])
    flipped = token[:-1] + ("0" if token[-1] != "0" else "1")
    assert 401 == get(api, "/ui/api/whoami", flipped)[0]
    expiry, _, rest = token.partition(".")
    assert 401 == get(api, "/ui/api/whoami", f"{int(expiry) + 99999}.{rest}")[0]


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Referer": "http://evil.example/form"},
        {},  # neither Origin nor Referer
        {"Sec-Fetch-Site": "cross-site"},
    ],
    ids=["foreign-origin", "foreign-referer", "no-origin", "cross-site"],
)
def test_login_from_another_site_is_refused(api: Api, headers: dict[str, str]) -> None:
    """CSRF: a login posted from another origin (or from nowhere said) sets no cookie."""
    if "Sec-Fetch-Site" in headers:
        headers = {**headers, "Origin": api.base_url}
    resp = post_login(api, ADMIN_KEY, headers)
    assert 403 == resp.status
    assert resp.getheader("Set-Cookie") is None


def post_login(api: Api, key: str, headers: dict[str, str]) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    body = urlencode({"key": key})
    conn.request(
        "POST",
        "/ui/login",
        body=body,
        headers={"Content-Type": "application/x-www-form-urlencoded", **headers},
    )
    resp = conn.getresponse()
    resp.read()
    conn.close()
    return resp


def get(api: Api, path: str, token: str) -> tuple[int, Any]:
    resp = api.request("GET", path, headers={"Cookie": f"logstats_session={token}"})
    return resp.status, resp.json() if "json" in resp.content_type else resp.text


# --- the dashboard ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "account", "window"),
    [
        (ADMIN_KEY, "alice", "days=30"),
        (ADMIN_KEY, "bob", "days=1"),
        (ALICE_KEY, "alice", "days=7"),
    ],
)
def test_dashboard_numbers_equal_emailtrack(
    api: Api,
    browser: Callable[..., Browser],
    key: str,
    account: str,
    window: str,
) -> None:
    """The totals the dashboard shows for an account and window are EmailTrack::stats'
    answer for the same window; the default window ends at the newest data (so, here,
    it holds the whole recording: the scenario's counters)."""
    b = browser()
    b.login(key)
    b.goto(f"/ui/?account={account}&{window}")
    b.loaded()
    start, end = b.text("#window-start"), b.text("#window-end")
    shown = shown_totals(b)
    answer = emailtrack(api, account, start, end)
    assert {k: int(answer[f]) for k, f in TOTALS.items()} == shown
    truth = api.truth.accounts[account]
    assert {k: int(truth[f]) for k, f in TOTALS.items() if f in truth} == {
        k: shown[k] for k, f in TOTALS.items() if f in truth
    }
    assert shown["sent"] > 0
    assert int(b.page.get_attribute("#chart", "data-points") or 0) > 0
    assert b.page.locator("#chart canvas").count() == 1
    failures = b.text("#top-failures")
    if shown["failed"]:
        assert "550" in failures
    who = "admin" if key == ADMIN_KEY else "own"
    b.shot(f"dashboard-{account}-{window.replace('=', '')}-{who}")


def test_dashboard_window_from_to_narrows_the_numbers(
    api: Api,
    browser: Callable[..., Browser],
) -> None:
    """A from/to window outside the recording shows zeros, as EmailTrack answers it."""
    start = (api.first_day - timedelta(days=20)).isoformat() + "T00:00:00Z"
    end = (api.first_day - timedelta(days=10)).isoformat() + "T00:00:00Z"
    b = browser()
    b.login(ADMIN_KEY)
    b.goto(f"/ui/?account=alice&start={start}&end={end}")
    b.loaded()
    answer = emailtrack(api, "alice", start, end)
    assert {k: int(answer[f]) for k, f in TOTALS.items()} == shown_totals(b)
    assert {0} == set(shown_totals(b).values())


# --- Track Delivery --------------------------------------------------------------------


def test_track_search_finds_a_message_and_traces_it(
    api: Api,
    browser: Callable[..., Browser],
) -> None:
    """Searching by Message-ID finds the message's rows; choosing one shows its trace:
    every attempt of the Exim log (recipient, outcome, reason) and its bounce."""
    message_id = "m2@scenario.logstats.test"
    qid = queue_id_of(message_id)
    lines = exim_lines(qid)
    failed = [ln.split()[4] for ln in lines if ln.split()[3] == "**"]
    delivered = [ln.split()[4] for ln in lines if ln.split()[3] == "=>"]
    assert failed and delivered
    reason = re.search(r"550 5\.1\.1 .*", next(ln for ln in lines if " ** " in ln))
    assert reason is not None
    b = browser()
    b.login(ADMIN_KEY)
    b.goto("/ui/track?days=30")
    b.loaded()
    b.page.fill("#message_id", message_id)
    b.page.evaluate("document.body.removeAttribute('data-loaded')")
    b.page.click("#search-button")
    b.loaded()
    rows = b.page.locator("#results tbody tr")
    found = [rows.nth(i).locator("td").all_inner_texts() for i in range(rows.count())]
    exim = sorted((c[4], c[1]) for c in found if c[7] == qid)
    logged = [*((r, "failed") for r in failed), *((r, "delivered") for r in delivered)]
    assert sorted(logged) == exim
    # the other rows: the same message through Postfix (the scenario ran on both MTAs)
    assert {c[7] for c in found if c[7] != qid} == postfix_queue_ids(message_id)
    b.page.locator(f"#results tr[data-queue-id='{qid}'] a.trace-link").first.click()
    b.page.wait_for_selector(f"body[data-traced='{qid}']")
    trace = b.page.locator("#trace tbody tr")
    cells = [trace.nth(i).locator("td").all_inner_texts() for i in range(trace.count())]
    by_rcpt = {(c[3], c[1]) for c in cells}
    assert {(r, "failed") for r in failed} <= by_rcpt
    assert {(r, "delivered") for r in delivered} <= by_rcpt
    assert any(reason.group(0) in c[4] for c in cells if c[1] == "failed")
    assert any(c[1] == "send" and c[2] == qid for c in cells)  # the receipt
    assert any(c[2] != qid for c in cells)  # the bounce about it (its own queue id)
    b.shot("track-trace")


# --- scope -----------------------------------------------------------------------------


def test_scoped_login_cannot_reach_another_account(
    api: Api,
    browser: Callable[..., Browser],
) -> None:
    """Logged in with alice's key: bob's dashboard page and data are 403, his message
    cannot be traced (404, as for no message), and the search shows alice's rows only."""
    bob_qid = first_queue_id("bob@bob.test")
    b = browser()
    b.login(ALICE_KEY)
    resp = b.goto("/ui/?account=bob")
    assert 403 == resp.status
    assert 403 == b.goto("/ui/track?account=bob").status
    for path in (
        "overview?account=bob",
        "series?account=bob",
        "search?account=bob",
        "top?account=bob",
        "progress?account=bob",
        "overview?sender_domain=bob.test",
    ):
        status, body = b.fetch(f"/ui/api/{path}")
        assert 403 == status, path
        assert "bob@" not in body
    status, body = b.fetch(f"/ui/api/trace?id={bob_qid}")
    assert 404 == status
    assert bob_qid not in body.replace(f"'{bob_qid}'", "")
    b.goto("/ui/track?days=30")
    b.loaded()
    accounts = set(b.page.locator("#results tbody tr td:nth-child(3)").all_inner_texts())
    assert {"alice"} == accounts
    b.shot("track-alice")
    admin = browser()
    admin.login(ADMIN_KEY)
    status, _ = admin.fetch(f"/ui/api/trace?id={bob_qid}")
    assert 200 == status  # the message exists: alice's 404 is the scope


def test_domain_login_sees_its_domain_only(
    api: Api,
    browser: Callable[..., Browser],
) -> None:
    """A key limited to bob.test: its dashboard counts bob.test (the scenario's sender
    domain truth), alice's account or domain is 403."""
    b = browser()
    b.login(DOMAIN_KEY)
    b.goto("/ui/?days=30")
    b.loaded()
    truth = api.truth.sender_domains["bob.test"]
    shown = shown_totals(b)
    assert truth["delivered"] == shown["delivered"]
    assert 403 == b.goto("/ui/?account=alice").status
    assert 403 == b.fetch("/ui/api/overview?sender_domain=alice.test")[0]
    b.shot("dashboard-bob.test-domainkey")


# --- on the store of a real MTA's log ----------------------------------------------------


@pytest.mark.mta
@pytest.mark.skipif(
    bool(os.environ.get("LOGSTATS_TEST_SHIFT_DAYS")),
    reason="the real MTAs stamp their lines with the real clock, which the clock-shifted "
    "run moves only for Python processes: the two clocks disagree by design there",
)
@pytest.mark.parametrize("mta", ["exim", "postfix"])
def test_dashboard_on_a_real_mta_store_equals_emailtrack_and_the_script(
    mta: str, logstats_on: Any, browser: Callable[..., Browser]
) -> None:
    """``logstats serve`` following (from its start) the log a real Exim or Postfix
    wrote for the scenario (tests/mta): for each account the dashboard's totals (default
    window: the 30 days up to the newest data) equal EmailTrack's answer for that window
    and the scenario's truth."""
    import yaml

    from tests.mta.fixtures import serve_config

    run = logstats_on(mta)
    with short_dir("lswebmta-") as folder:
        log = folder / "mta.log"
        shutil.copyfile(run.result.log, log)
        cfg = serve_config(folder, log, mta)  # the real-MTA tests' own daemon config
        port = free_port()
        data = yaml.safe_load(cfg.read_text())
        data["api"] = {"tcp": f"127.0.0.1:{port}", "keys": KEYS}
        cfg.write_text(yaml.safe_dump(data, sort_keys=False))
        with Serve(cfg) as serve:
            serve.wait_ready(timeout=60)
            served = Api(port, serve.socket_path, load_truth(), *sample_days())
            b = browser(served.base_url)
            b.login(ADMIN_KEY)
            for account in ("alice", "bob"):
                b.goto(f"/ui/?account={account}&days=30")
                b.loaded()
                shown = shown_totals(b)
                answer = emailtrack(served, account, b.text("#window-start"), b.text("#window-end"))
                assert {k: int(answer[f]) for k, f in TOTALS.items()} == shown
                want = run.result.truth[account]
                assert {k: want[f] for k, f in TOTALS.items()} == shown
                b.shot(f"dashboard-{mta}-{account}-real")


def session(api: Api, key: str) -> str:
    """A session token, from a login posted as a browser on this origin posts it."""
    resp = post_login(api, key, {"Origin": api.base_url, "Host": f"127.0.0.1:{api.port}"})
    assert 303 == resp.status
    return str(resp.getheader("Set-Cookie")).split(";")[0].partition("=")[2]


@pytest.mark.parametrize(
    "query",
    [
        "overview?days=0",
        "overview?days=abc",
        "overview?days=99999999999999999999",
        "series?start=yesterday",
        "series?start=2026-11-24T00:00:00Z&end=2026-11-23T00:00:00Z",
        "series?end=99999999999999",
        "search?limit=-1",
        "search?offset=1e9",
        "search?types=bounced",
        "top?what=password",
        "trace",
        "search?limit=abc",
        "overview?host=not%20a%20host",
        "search?host=mx1;drop",
    ],
)
def test_odd_parameters_are_400_never_500(api: Api, query: str) -> None:
    """An odd value is a 400 in the UI's JSON envelope, never a traceback."""
    status, body = get(api, f"/ui/api/{query}", session(api, ADMIN_KEY))
    assert (400, False) == (status, body["ok"]), body


def test_root_leads_to_the_ui_and_pages_forbid_other_origins(api: Api) -> None:
    """``/`` redirects to ``/ui/``; pages carry a Content-Security-Policy of 'self' (no
    script, style, image or frame from another host); a logout from another site is
    refused."""
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    conn.request("GET", "/")
    resp = conn.getresponse()
    resp.read()
    assert (303, "/ui/") == (resp.status, resp.getheader("Location"))
    conn.request("GET", "/ui/")
    resp = conn.getresponse()
    resp.read()
    csp = resp.getheader("Content-Security-Policy") or ""
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    conn.request("POST", "/ui/logout", headers={"Origin": "http://evil.example"})
    resp = conn.getresponse()
    resp.read()
    assert 403 == resp.status
    conn.close()


def test_default_window_ends_at_the_counters_when_no_track_row_is_kept(tmp_path: Path) -> None:
    """With every Track Delivery row past the retention (pruned), the dashboard's default
    window still ends at the newest data (the hour after the counters' last bucket), not
    at the wall clock, and its totals are EmailTrack's.  In-process (``api.Router`` on the
    pruned store), the same code the daemon runs."""
    import time as wall

    import yaml

    from logstats.api import Router
    from logstats.config import load
    from logstats.store import Store
    from logstats.track import TrackQuery, count
    from tests.conftest import run_cli

    cfg = tmp_path / "logstats.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "timezone": "UTC",
                "accounts": {"domains": {"alice.test": "alice", "bob.test": "bob"}},
                "api": {"keys": KEYS},
            }
        )
    )
    db = tmp_path / "db.duckdb"
    log = SAMPLES / "exim.log"
    run_cli("backfill", "--config", str(cfg), "--db", str(db), "--mta", "exim", str(log))
    last = datetime.fromisoformat(log.read_text().splitlines()[-1][:19]).replace(tzinfo=UTC)
    with Store(db) as store:
        store.prune(datetime(9000, 1, 1, tzinfo=UTC))  # (backfill may have pruned already)
        stored = frozenset({"delivered", "deferred", "failed", "rejected", "expired", "send"})
        far = TrackQuery(
            datetime(1970, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC), types=stored
        )
        assert {0} == set(count(store.con, far).values())  # no Track row kept
        router = Router(store.con, dict, load(str(cfg)), lambda cur: "")
        token = router._web().sessions.issue(ADMIN_KEY, wall.time())
        headers = {"cookie": f"logstats_session={token}"}
        status, reply, _ = router.route(
            "GET", "/ui/api/overview", {"account": ["alice"]}, headers, None
        )
        assert 200 == status
        body = json.loads(reply.data)
        end = last.replace(minute=0, second=0) + timedelta(hours=1)
        assert end <= datetime.fromisoformat(body["window"]["end"]) <= end + timedelta(hours=1)
        params = {**emailtrack_params("alice"), **body["window"]}
        _, answer, _ = router.route(
            "GET", "/json-api/cpanel", {k: [v] for k, v in params.items()}, whm(ADMIN_KEY), None
        )
        row = answer["cpanelresult"]["data"][0]
        assert {k: int(row[f]) for k, f in TOTALS.items()} == body["totals"]
        assert body["totals"]["sent"] > 0


def test_dashboard_per_host_of_a_central_log(
    browser: Callable[..., Browser], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A daemon following one central syslog file of three Exim hosts whose message ids
    collide (tests/test_central.py's): the dashboard offers the hosts, and its totals for
    one host are EmailTrack's answer with the same ``host=`` (and that host's scripted
    truth); over every host they are the sum of the three."""
    from tests.test_central import HOSTS, _central_exim

    with short_dir("lswebh-") as folder:
        log = folder / "central-exim.log"
        truths = _central_exim(log)
        port = free_port()
        cfg = write_config(
            folder,
            [(log, "exim")],
            api={"tcp": f"127.0.0.1:{port}", "keys": KEYS, "admins": ["root"]},
            store={"path": str(folder / "db.duckdb"), "retention_days": 36500},
        )
        stamps = [
            datetime.strptime(line[:15], "%b %d %H:%M:%S")
            for line in log.read_text().splitlines()
        ]
        with Serve(cfg) as serve:
            serve.wait_ready(timeout=60)
            serve.wait_lines(len(stamps), timeout=60)
            api = Api(port, serve.socket_path, load_truth(), *sample_days())
            # the scripts run over New Year (2024 to 2025): a window around all of it
            window = "start=2024-12-01T00:00:00Z&end=2025-02-01T00:00:00Z"
            account = "alice"
            b = browser(api.base_url)
            b.login(ADMIN_KEY)
            b.goto(f"/ui/?account={account}&{window}")
            b.loaded()
            assert not b.page.is_hidden("#host-field")
            options = b.page.eval_on_selector_all("#hosts option", "os => os.map(o => o.value)")
            assert list(HOSTS) == options
            every = shown_totals(b)
            per_host = {}
            for host in HOSTS:
                b.goto(f"/ui/?account={account}&host={host}&{window}")
                b.loaded()
                assert host == b.page.input_value("#host")
                shown = per_host[host] = shown_totals(b)
                start, end = b.text("#window-start"), b.text("#window-end")
                resp = api.request(
                    "GET",
                    "/json-api/cpanel",
                    {**emailtrack_params(account), "start": start, "end": end, "host": host},
                    headers=whm(ADMIN_KEY),
                )
                assert 200 == resp.status, resp.text
                row = resp.json()["cpanelresult"]["data"][0]
                assert {k: int(row[f]) for k, f in TOTALS.items()} == shown, host
                truth = truths[host][account]
                assert {k: int(truth[f]) for k, f in TOTALS.items() if f in truth} == {
                    k: shown[k] for k, f in TOTALS.items() if f in truth
                }, host
            assert len({tuple(t.values()) for t in per_host.values()}) > 1  # the hosts differ
            assert every == {k: sum(t[k] for t in per_host.values()) for k in TOTALS}
            b.shot("dashboard-central-host")
