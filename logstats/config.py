"""YAML configuration -> a validated, frozen ``Config``.

The only module that reads YAML, the environment, ``/etc/passwd`` or cPanel's
``/etc/userdomains``.  Unknown keys are errors that name the file and the dotted key;
relative paths resolve against the config file's directory.
"""

from __future__ import annotations

import os
import pwd
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from logstats.correlate import Policy
from logstats.errors import ConfigError

DEFAULT_DB = "/var/lib/logstats/logstats.duckdb"
DEFAULT_SOCKET = "/run/logstats/logstats.sock"
_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True, slots=True)
class Source:
    path: str  # a path or a glob
    mta: str | None = None  # None: detected from the content


# Recipient domains and MX hosts of the big mailbox providers (extend or override in config).
DEFAULT_PROVIDERS: dict[str, tuple[str, ...]] = {
    "google": ("gmail.com", "googlemail.com", "*.google.com", "*.googlemail.com"),
    "microsoft": (
        "outlook.com",
        "hotmail.*",
        "live.*",
        "msn.com",
        "*.outlook.com",
        "*.protection.outlook.com",
        "*.hotmail.com",
    ),
    "yahoo": ("yahoo.*", "ymail.com", "rocketmail.com", "aol.com", "*.yahoodns.net"),
    "apple": ("icloud.com", "me.com", "mac.com", "*.icloud.com"),
    "gmx": ("gmx.*", "web.de", "*.gmx.net", "*.web.de"),
    "yandex": ("yandex.*", "ya.ru", "*.yandex.net"),
    "mailru": ("mail.ru", "bk.ru", "inbox.ru", "list.ru", "*.mail.ru"),
    "proton": ("proton.me", "protonmail.com", "pm.me", "*.protonmail.ch"),
    "zoho": ("zoho.com", "zohomail.com", "*.zoho.com"),
}


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key for the HTTP API and what it may see (an empty scope: no limit there)."""

    key: str
    accounts: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    name: str = ""


@dataclass(frozen=True, slots=True)
class Config:
    path: str | None = None  # the file this came from
    timezone: str | None = None  # None: the machine's zone
    db: str = DEFAULT_DB
    retention_days: int = 10
    memory_limit: str = "128MB"  # DuckDB's memory while writing (sorts beyond it spill to disk)
    domains: Mapping[str, str] = field(default_factory=dict)
    userdomains: str | None = None
    uids: Mapping[int, str] = field(default_factory=dict)
    sender_domain_fallback: bool = False
    filter_relays: tuple[str, ...] = ("127.0.0.1", "[::1]", "::1", "localhost")
    ttl: timedelta = timedelta(days=7)
    orphan_ttl: timedelta = timedelta(hours=1)
    handoff_window: timedelta = timedelta(minutes=10)
    batch_lines: int = 50000
    max_line_length: int = 65536
    workers: int = 0  # parser processes for large files; 0: one per core, 1: none
    parallel_bytes: int = 4 << 20  # runs of lines smaller than this are parsed in-process
    sources: tuple[Source, ...] = ()
    socket: str = DEFAULT_SOCKET  # the daemon's HTTP socket (queries while it runs)
    batch_seconds: float = 0.5  # a batch is committed at most this long after its first line
    poll_seconds: float = 1.0  # files are checked at least this often (lost inotify events)
    commit_retries: int = 5  # failed commits retried with back-off before the daemon exits
    tcp: str | None = None  # optional HOST:PORT for the HTTP API (loopback unless configured)
    admins: tuple[str, ...] = ("root",)  # Unix users who see every account over the socket
    api_keys: tuple[ApiKey, ...] = ()
    metrics_per_account: bool = False
    providers: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: DEFAULT_PROVIDERS)
    tag_rules: tuple[tuple[str, str, str], ...] = ()  # (tag, sender|recipient, pattern)

    def tz(self) -> tzinfo:
        if self.timezone is None:
            return local_zone()
        return ZoneInfo(self.timezone)

    def domain_map(self) -> dict[str, str]:
        table: dict[str, str] = {}
        if self.userdomains:
            table.update(read_userdomains(self.userdomains))
        table.update({k.lower(): v for k, v in self.domains.items()})
        return table

    def policy(self) -> Policy:
        uids = dict(self.uids)

        def uid_name(uid: int) -> str | None:
            if uid in uids:
                return uids[uid]
            try:
                return pwd.getpwuid(uid).pw_name
            except (KeyError, OverflowError):
                return None

        return Policy(
            domains=self.domain_map(),
            uid_name=uid_name,
            sender_domain_fallback=self.sender_domain_fallback,
            filter_relays=self.filter_relays,
            ttl=self.ttl,
            orphan_ttl=self.orphan_ttl,
            handoff_window=self.handoff_window,
            providers=self.providers,
            tag_rules=self.tag_rules,
        )


def local_zone() -> tzinfo:
    """The machine's zone: $TZ, /etc/timezone, /etc/localtime, else UTC."""
    for name in (os.environ.get("TZ", "").lstrip(":"),):
        if name:
            try:
                return ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                pass
    etc = Path("/etc/timezone")
    if etc.exists():
        try:
            return ZoneInfo(etc.read_text().strip())
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass
    link = Path("/etc/localtime")
    if link.is_symlink():
        target = str(link.resolve())
        if "zoneinfo/" in target:
            try:
                return ZoneInfo(target.split("zoneinfo/", 1)[1])
            except (ZoneInfoNotFoundError, ValueError):
                pass
    return ZoneInfo("UTC")


def read_userdomains(path: str) -> dict[str, str]:
    """cPanel's ``/etc/userdomains``: ``domain: user`` per line (``*: nobody`` skipped)."""
    table: dict[str, str] = {}
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ConfigError(f"accounts.userdomains: cannot read {path}: {exc.strerror}") from exc
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        domain, sep, user = line.partition(":")
        if not sep or not user.strip():
            raise ConfigError(f"{path}:{number}: expected 'domain: user', got {raw!r}")
        if domain.strip() != "*":
            table[domain.strip().lower()] = user.strip()
    return table


def parse_duration(value: object, key: str, where: str) -> timedelta:
    if isinstance(value, int) and value > 0:
        return timedelta(seconds=value)
    m = _DURATION.match(str(value).strip())
    if not m or int(m.group(1)) <= 0:
        raise ConfigError(f"{where}: {key}: expected a duration like 90m, 12h or 7d, got {value!r}")
    return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])


_SCHEMA: dict[str, Any] = {
    "timezone": str,
    "store": {"path": str, "retention_days": int, "memory_limit": "size"},
    "accounts": {
        "domains": dict,
        "userdomains": str,
        "uids": dict,
        "sender_domain_fallback": bool,
    },
    "correlation": {
        "ttl": "duration",
        "orphan_ttl": "duration",
        "handoff_window": "duration",
        "filter_relays": list,
    },
    "ingest": {"batch_lines": int, "max_line_length": int, "workers": int},
    "sources": list,
    "serve": {
        "socket": str,
        "batch_seconds": "seconds",
        "poll_seconds": "seconds",
        "commit_retries": int,
    },
    "api": {"tcp": "address", "admins": list, "keys": list, "metrics_per_account": bool},
    "providers": dict,
    "tags": list,
}


def _check(data: Any, schema: Mapping[str, Any], prefix: str, where: str) -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {prefix or 'top level'}: expected a mapping")
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in schema:
            raise ConfigError(f"{where}: unknown key {dotted!r}")
        kind = schema[key]
        if isinstance(kind, dict):
            _check(value, kind, dotted, where)
        elif kind == "duration":
            parse_duration(value, dotted, where)
        elif kind == "address":
            if not isinstance(value, str | int) or isinstance(value, bool):
                raise ConfigError(f"{where}: {dotted}: expected PORT or HOST:PORT, got {value!r}")
        elif kind == "size":
            if not isinstance(value, str) or not _SIZE.fullmatch(value.strip()):
                raise ConfigError(
                    f"{where}: {dotted}: expected a size like 128MB or 1GiB, got {value!r}"
                )
        elif kind == "seconds":
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(
                    f"{where}: {dotted}: expected a positive number of seconds, got {value!r}"
                )
        elif kind is int and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ConfigError(f"{where}: {dotted}: expected a positive integer, got {value!r}")
        elif kind is not int and not isinstance(value, kind):
            raise ConfigError(f"{where}: {dotted}: expected {kind.__name__}, got {value!r}")


_SIZE = re.compile(r"\d+(?:\.\d+)?\s*(?:[KMGT]i?B|B)", re.IGNORECASE)


def _read_text(path: str, where: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read config: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{where}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line {line}): "
            "save the config as UTF-8"
        ) from exc


def load(path: str | None) -> Config:
    """Read and validate a config file; ``None`` gives the built-in defaults."""
    if path is None:
        return Config()
    where = str(path)
    text = _read_text(path, where)
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from exc
    _check(data, _SCHEMA, "", where)
    base = Path(path).resolve().parent

    def resolve(p: str) -> str:
        return str(p) if Path(p).is_absolute() or p == ":memory:" else str(base / p)

    store = data.get("store", {})
    accounts = data.get("accounts", {})
    corr = data.get("correlation", {})
    ingest = data.get("ingest", {})
    serve = data.get("serve", {})
    timezone = data.get("timezone")
    if timezone is not None:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ConfigError(f"{where}: timezone: unknown zone {timezone!r}") from exc
    uids: dict[int, str] = {}
    for k, v in accounts.get("uids", {}).items():
        if not str(k).isdigit():
            raise ConfigError(f"{where}: accounts.uids: {k!r} is not a numeric uid")
        uids[int(k)] = str(v)
    sources = []
    for i, item in enumerate(data.get("sources", [])):
        s = {"path": item} if isinstance(item, str) else item
        if not isinstance(s, dict) or "path" not in s or set(s) - {"path", "mta"}:
            raise ConfigError(f"{where}: sources[{i}]: expected {{path: ..., mta: exim|postfix}}")
        if s.get("mta") not in (None, "exim", "postfix"):
            raise ConfigError(f"{where}: sources[{i}].mta: expected exim or postfix")
        sources.append(Source(resolve(s["path"]), s.get("mta")))
    defaults = Config()
    api = data.get("api", {})
    keys = tuple(_api_key(i, k, where) for i, k in enumerate(api.get("keys", [])))
    providers = _providers(data.get("providers", {}), where)
    tag_rules = _tag_rules(data.get("tags", []), where)
    tcp = api.get("tcp")
    if tcp is not None:
        tcp = str(tcp)
        if ":" not in tcp:
            tcp = f"127.0.0.1:{tcp}"  # a bare port listens on loopback only
        if not tcp.rsplit(":", 1)[1].isdigit():
            raise ConfigError(f"{where}: api.tcp: expected PORT or HOST:PORT, got {tcp!r}")
    return Config(
        path=where,
        timezone=timezone,
        db=resolve(store.get("path", defaults.db)),
        retention_days=store.get("retention_days", defaults.retention_days),
        memory_limit=store.get("memory_limit", defaults.memory_limit),
        domains={str(k).lower(): str(v) for k, v in accounts.get("domains", {}).items()},
        userdomains=resolve(accounts["userdomains"]) if "userdomains" in accounts else None,
        uids=uids,
        sender_domain_fallback=accounts.get("sender_domain_fallback", False),
        filter_relays=tuple(str(x) for x in corr.get("filter_relays", defaults.filter_relays)),
        ttl=parse_duration(corr["ttl"], "correlation.ttl", where)
        if "ttl" in corr
        else defaults.ttl,
        orphan_ttl=(
            parse_duration(corr["orphan_ttl"], "correlation.orphan_ttl", where)
            if "orphan_ttl" in corr
            else defaults.orphan_ttl
        ),
        handoff_window=(
            parse_duration(corr["handoff_window"], "correlation.handoff_window", where)
            if "handoff_window" in corr
            else defaults.handoff_window
        ),
        batch_lines=ingest.get("batch_lines", defaults.batch_lines),
        max_line_length=ingest.get("max_line_length", defaults.max_line_length),
        workers=ingest.get("workers", defaults.workers),
        sources=tuple(sources),
        socket=resolve(serve["socket"]) if "socket" in serve else defaults.socket,
        batch_seconds=float(serve.get("batch_seconds", defaults.batch_seconds)),
        poll_seconds=float(serve.get("poll_seconds", defaults.poll_seconds)),
        commit_retries=serve.get("commit_retries", defaults.commit_retries),
        tcp=tcp,
        admins=tuple(str(a) for a in api.get("admins", defaults.admins)),
        api_keys=keys,
        metrics_per_account=api.get("metrics_per_account", False),
        providers=providers,
        tag_rules=tuple(tag_rules),
    )


def _api_key(i: int, item: Any, where: str) -> ApiKey:
    allowed = {"key", "name", "accounts", "domains", "tags"}
    if not isinstance(item, dict) or not isinstance(item.get("key"), str) or set(item) - allowed:
        raise ConfigError(
            f"{where}: api.keys[{i}]: expected {{key: SECRET, name, accounts, domains, tags}}"
        )
    scopes = {}
    for field_name in ("accounts", "domains", "tags"):
        values = item.get(field_name, [])
        if not isinstance(values, list):
            raise ConfigError(f"{where}: api.keys[{i}].{field_name}: expected a list")
        scopes[field_name] = tuple(str(v) for v in values)
    return ApiKey(key=item["key"], name=str(item.get("name", "")), **scopes)


def _providers(items: dict[str, Any], where: str) -> dict[str, tuple[str, ...]]:
    providers = dict(DEFAULT_PROVIDERS)
    for name, patterns in items.items():
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise ConfigError(f"{where}: providers.{name}: expected a list of domain patterns")
        providers[str(name)] = tuple(p.lower() for p in patterns)
    return providers


def _tag_rules(items: list[Any], where: str) -> list[tuple[str, str, str]]:
    rules = []
    for i, rule in enumerate(items):
        kinds = set(rule) & {"sender", "recipient"} if isinstance(rule, dict) else set()
        if (
            not isinstance(rule, dict)
            or "tag" not in rule
            or len(kinds) != 1
            or set(rule) - {"tag", "sender", "recipient"}
        ):
            raise ConfigError(
                f"{where}: tags[{i}]: expected {{tag: NAME, sender|recipient: PATTERN}}"
            )
        kind = kinds.pop()
        rules.append((str(rule["tag"]), kind, str(rule[kind]).lower()))
    return rules
