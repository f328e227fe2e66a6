"""YAML configuration -> a validated, frozen ``Config``.

The only module that reads YAML, the environment, ``/etc/passwd`` or cPanel's
``/etc/userdomains``.  The file's structure is described once, by the pydantic models of
``logstats.schema`` (imported by ``load`` only: ``logstats --help`` needs none of it);
``load`` reports every mistake at once, one line each naming the file and the dotted key,
and gives the ``Config`` the rest of the program uses.  Unknown keys are errors; relative
paths resolve against the config file's directory.
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
_LONGEST = 36500 * 86400  # a duration or a retention beyond a century is a typo


@dataclass(frozen=True, slots=True)
class JournalSpec:
    """Which entries of the systemd journal a source reads (see ``logstats.journal``): those
    of any of ``units`` (``_SYSTEMD_UNIT``) or any of ``identifiers`` (``SYSLOG_IDENTIFIER``),
    from the local journal or the journal files under ``directory`` (journalctl ``-D``)."""

    units: tuple[str, ...] = ()
    identifiers: tuple[str, ...] = ()
    directory: str | None = None


@dataclass(frozen=True, slots=True)
class Source:
    path: str  # a path or a glob ("" for a journal source)
    mta: str | None = None  # None: detected from the content (a journal source names it)
    journal: JournalSpec | None = None  # a journal source instead of a file


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
    export_directory: str | None = None  # the fleet's Parquet export (None: no export)
    export_host: str | None = None  # this host's name there (None: the machine's name)
    export_every: timedelta = timedelta(hours=1)
    providers: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: DEFAULT_PROVIDERS)
    tag_rules: tuple[tuple[str, str, str], ...] = ()  # (tag, sender|recipient, pattern)

    def tz(self) -> tzinfo:
        if self.timezone is None:
            return local_zone()
        return ZoneInfo(self.timezone)

    def domain_map(self) -> dict[str, str]:
        """``accounts.domains`` over the entries of ``accounts.userdomains``.  A map file
        that does not exist (yet) adds nothing (``warnings`` says so; it is read once it
        exists, at the next reload); one that exists but cannot be read, or is not in
        cPanel's format, is an error naming the config file and the key."""
        table: dict[str, str] = {}
        if self.userdomains and os.path.exists(self.userdomains):
            try:
                table.update(read_userdomains(self.userdomains))
            except ConfigError as exc:
                raise ConfigError(f"{self.where}: accounts.userdomains: {exc}") from exc
        table.update({k.lower(): v for k, v in self.domains.items()})
        return table

    @property
    def where(self) -> str:
        return self.path or "built-in defaults"

    def warnings(self) -> list[str]:
        """What is valid but will not work as configured yet, one line each."""
        found: list[str] = []
        if self.userdomains and not os.path.exists(self.userdomains):
            found.append(
                f"{self.where}: accounts.userdomains: {self.userdomains} does not exist: no "
                "accounts from it until it does (it is read again at reload, SIGHUP)"
            )
        return found

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
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
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


def parse_duration(value: Any) -> timedelta:
    """``90m``, ``12h``, ``7d``, ``2w`` or a whole number of seconds."""
    seconds = 0
    if isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    elif m := _DURATION.match(value.strip()) if isinstance(value, str) else None:
        seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if not 0 < seconds <= _LONGEST:
        raise ValueError("expected a duration like 90m, 12h or 7d (at most 36500d)")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The inverse of ``parse_duration`` in the largest unit of s, m, h, d that fits."""
    seconds = int(value.total_seconds())
    for unit in "dhm":
        if seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


# -- reading a file ------------------------------------------------------------------------------


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


class _Loader(yaml.SafeLoader):
    """YAML that refuses a key given twice in one mapping (the last would win silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in this mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        context = exc.context or ""
        if context and exc.context_mark:
            context += f" (line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1})"
        what = " ".join(str(x) for x in (context, exc.problem) if x)
        raise ConfigError(f"{where}: not valid YAML{at}: {what}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from exc


def load(path: str | None) -> Config:
    """Read and validate a config file; ``None`` gives the built-in defaults."""
    if path is None:
        return Config()
    where = str(path)
    data = _parse_yaml(_read_text(path, where), where)
    from logstats import schema

    return schema.build(schema.validate(data, where), where, Path(path).resolve().parent)


MASK = "********"


def settings(cfg: Config) -> dict[str, Any]:
    """Every setting's effective value by its dotted key, as YAML would write it (durations
    as ``7d``; API key secrets masked).  ``schema.setting_keys()`` lists the same keys."""
    return {
        "timezone": cfg.timezone,
        "store.path": cfg.db,
        "store.retention_days": cfg.retention_days,
        "store.memory_limit": cfg.memory_limit,
        "accounts.domains": dict(cfg.domains),
        "accounts.userdomains": cfg.userdomains,
        "accounts.uids": dict(cfg.uids),
        "accounts.sender_domain_fallback": cfg.sender_domain_fallback,
        "correlation.ttl": format_duration(cfg.ttl),
        "correlation.orphan_ttl": format_duration(cfg.orphan_ttl),
        "correlation.handoff_window": format_duration(cfg.handoff_window),
        "correlation.filter_relays": list(cfg.filter_relays),
        "ingest.batch_lines": cfg.batch_lines,
        "ingest.max_line_length": cfg.max_line_length,
        "ingest.workers": cfg.workers,
        "sources": [_source_setting(s) for s in cfg.sources],
        "serve.socket": cfg.socket,
        "serve.batch_seconds": cfg.batch_seconds,
        "serve.poll_seconds": cfg.poll_seconds,
        "serve.commit_retries": cfg.commit_retries,
        "api.tcp": cfg.tcp,
        "api.admins": list(cfg.admins),
        "api.keys": [
            {
                "key": MASK,
                "name": k.name or None,
                "accounts": list(k.accounts),
                "domains": list(k.domains),
                "tags": list(k.tags),
            }
            for k in cfg.api_keys
        ],
        "api.metrics_per_account": cfg.metrics_per_account,
        "export.directory": cfg.export_directory,
        "export.host": cfg.export_host,
        "export.every": format_duration(cfg.export_every),
        "providers": {name: list(p) for name, p in cfg.providers.items()},
        "tags": [{"tag": tag, kind: pattern} for tag, kind, pattern in cfg.tag_rules],
    }


def _source_setting(source: Source) -> dict[str, Any]:
    """A source as YAML writes it: ``{path, mta}`` or ``{journal: {...}, mta}``."""
    j = source.journal
    if j is None:
        return {"path": source.path, "mta": source.mta}
    return {
        "journal": {
            "units": list(j.units),
            "identifiers": list(j.identifiers),
            "directory": j.directory,
        },
        "mta": source.mta,
    }
