"""YAML configuration -> a validated, frozen ``Config``.

The only module that reads YAML, the environment, ``/etc/passwd`` or cPanel's
``/etc/userdomains``.  The file's structure is described once, by the pydantic models
below (``File`` and its sections); ``load`` validates a file against them, reports every
mistake at once (one line each, naming the file and the dotted key), and builds the
``Config`` the rest of the program uses.  Unknown keys are errors; relative paths resolve
against the config file's directory.
"""

from __future__ import annotations

import difflib
import json
import os
import pwd
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import timedelta, tzinfo
from pathlib import Path
from typing import Annotated, Any, ClassVar, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    model_validator,
)

from logstats.correlate import Policy
from logstats.errors import ConfigError

DEFAULT_DB = "/var/lib/logstats/logstats.duckdb"
DEFAULT_SOCKET = "/run/logstats/logstats.sock"
_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_SIZE = re.compile(r"\d+(?:\.\d+)?\s*(?:[KMGT]i?B|B)", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_LONGEST = 36500 * 86400  # a duration or a retention beyond a century is a typo


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


# -- the file's structure ----------------------------------------------------------------------
# Each value type checks what YAML gave and raises ValueError("expected ..."): the report
# adds the dotted key before it and ", got VALUE" after it.


def _whole(least: int, most: int) -> Callable[[Any], int]:
    what = "a positive integer" if least == 1 else f"a whole number, {least} or more"

    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
            raise ValueError(f"expected {what} (at most {most:,})")
        return value

    return check


def _seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3600:
        raise ValueError("expected a positive number of seconds (at most 3600)")
    return float(value)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _path(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a path")
    return value


def _name(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        raise ValueError("expected a name")
    return str(value)


def _pattern(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a pattern (a domain, an address, * wildcards)")
    return value.lower()


def _size(value: Any) -> str:
    if not isinstance(value, str) or not _SIZE.fullmatch(value.strip()):
        raise ValueError("expected a size like 128MB or 1GiB")
    return value.strip()


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


def _zone(value: Any) -> str | None:
    if value is None:
        return None
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError, UnicodeError) as exc:
        raise ValueError("unknown zone: expected an IANA name like Europe/Amsterdam") from exc
    return value


def _address(value: Any) -> str | None:
    """``PORT`` (loopback) or ``HOST:PORT`` -> ``HOST:PORT``."""
    if value is None:
        return None
    text = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""
    if text and ":" not in text:
        text = f"127.0.0.1:{text}"  # a bare port listens on loopback only
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("expected PORT or HOST:PORT")
    return text


def _uid(value: Any) -> int:
    if isinstance(value, bool) or not str(value).isdigit():
        raise ValueError("expected a numeric uid")
    return int(value)


def _mta(value: Any) -> str | None:
    if value not in (None, "exim", "postfix"):
        raise ValueError("expected exim or postfix")
    return str(value) if value else None


def _a_list(value: Any) -> Any:
    if not isinstance(value, list):
        raise ValueError("expected a list")
    return value


def _a_mapping(value: Any, expected: str = "expected a mapping") -> dict[str, Any]:
    """A mapping (null: an empty one) with its keys as text (a key ``1`` or ``~`` is then
    an unknown key, or checked as a name, rather than a type error)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(expected)
    return {k if isinstance(k, str) else json.dumps(k): v for k, v in value.items()}


def _secret(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected the key's secret (text)")
    return value


Seconds = Annotated[float, PlainValidator(_seconds)]
Boolean = Annotated[bool, PlainValidator(_boolean)]
PathText = Annotated[str, PlainValidator(_path)]
Name = Annotated[str, PlainValidator(_name)]
Pattern = Annotated[str, PlainValidator(_pattern)]
Size = Annotated[str, PlainValidator(_size)]
Duration = Annotated[timedelta, PlainValidator(parse_duration)]
Zone = Annotated[str | None, PlainValidator(_zone)]
Address = Annotated[str | None, PlainValidator(_address)]
Uid = Annotated[int, PlainValidator(_uid)]
MtaName = Annotated[str | None, PlainValidator(_mta)]
Names = Annotated[tuple[Name, ...], BeforeValidator(_a_list)]
Patterns = Annotated[tuple[Pattern, ...], BeforeValidator(_a_list)]


class Section(BaseModel):
    """A mapping of known keys (an empty section, ``store:``, is all defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    expected: ClassVar[str] = "a mapping"
    item: ClassVar[bool] = False  # an item of a list: null is not an empty one

    @model_validator(mode="before")
    @classmethod
    def _mapping(cls, data: Any) -> Any:
        if data is None and cls.item:
            raise ValueError(f"expected {cls.expected}")
        return _a_mapping(data, f"expected {cls.expected}")


class StoreSection(Section):
    path: PathText = DEFAULT_DB
    retention_days: Annotated[int, PlainValidator(_whole(1, 36500))] = 10
    memory_limit: Size = "128MB"


class AccountsSection(Section):
    domains: Annotated[dict[Pattern, Name], BeforeValidator(_a_mapping)] = {}
    userdomains: PathText | None = None
    uids: Annotated[dict[Uid, Name], BeforeValidator(_a_mapping)] = {}
    sender_domain_fallback: Boolean = False


class CorrelationSection(Section):
    ttl: Duration = timedelta(days=7)
    orphan_ttl: Duration = timedelta(hours=1)
    handoff_window: Duration = timedelta(minutes=10)
    filter_relays: Names = ("127.0.0.1", "[::1]", "::1", "localhost")


class IngestSection(Section):
    batch_lines: Annotated[int, PlainValidator(_whole(1, 10_000_000))] = 50000
    max_line_length: Annotated[int, PlainValidator(_whole(1, 1 << 30))] = 65536
    workers: Annotated[int, PlainValidator(_whole(0, 1024))] = 0


class SourceItem(Section):
    expected: ClassVar[str] = "a path or {path: PATH, mta: exim|postfix}"
    item: ClassVar[bool] = True
    path: PathText
    mta: MtaName = None

    @model_validator(mode="before")
    @classmethod
    def _bare_path(cls, data: Any) -> Any:
        return {"path": data} if isinstance(data, str) else data


class ServeSection(Section):
    socket: PathText = DEFAULT_SOCKET
    batch_seconds: Seconds = 0.5
    poll_seconds: Seconds = 1.0
    commit_retries: Annotated[int, PlainValidator(_whole(1, 1000))] = 5


def _distinct_keys(keys: tuple[KeyItem, ...]) -> tuple[KeyItem, ...]:
    first: dict[str, int] = {}
    for i, item in enumerate(keys):
        if item.key in first:
            raise ValueError(
                f"expected a secret per key, got the same in [{first[item.key]}] and [{i}]"
            )
        first[item.key] = i
    return keys


class KeyItem(Section):
    expected: ClassVar[str] = "{key: SECRET, name, accounts, domains, tags}"
    item: ClassVar[bool] = True
    key: Annotated[str, PlainValidator(_secret)]
    name: Name | None = None
    accounts: Names = ()
    domains: Patterns = ()
    tags: Names = ()


class ApiSection(Section):
    tcp: Address = None
    admins: Names = ("root",)
    keys: Annotated[
        tuple[KeyItem, ...], BeforeValidator(_a_list), AfterValidator(_distinct_keys)
    ] = ()
    metrics_per_account: Boolean = False


class TagRule(Section):
    expected: ClassVar[str] = "{tag: NAME, sender|recipient: PATTERN}"
    item: ClassVar[bool] = True
    tag: Name
    sender: Pattern | None = None
    recipient: Pattern | None = None

    @model_validator(mode="after")
    def _one_pattern(self) -> TagRule:
        if (self.sender is None) == (self.recipient is None):
            raise ValueError("expected exactly one of sender or recipient beside tag")
        return self


class File(Section):
    """The whole file.  Every key of ``config/logstats.example.yaml`` is a field here."""

    timezone: Zone = None
    store: StoreSection = Field(default_factory=StoreSection)
    accounts: AccountsSection = Field(default_factory=AccountsSection)
    correlation: CorrelationSection = Field(default_factory=CorrelationSection)
    ingest: IngestSection = Field(default_factory=IngestSection)
    sources: Annotated[tuple[SourceItem, ...], BeforeValidator(_a_list)] = ()
    serve: ServeSection = Field(default_factory=ServeSection)
    api: ApiSection = Field(default_factory=ApiSection)
    providers: Annotated[dict[Name, Patterns], BeforeValidator(_a_mapping)] = {}
    tags: Annotated[tuple[TagRule, ...], BeforeValidator(_a_list)] = ()


def setting_keys(model: type[BaseModel] = File, prefix: str = "") -> Iterator[str]:
    """The dotted name of every setting (a section's keys; lists and maps are one each)."""
    for name, info in model.model_fields.items():
        dotted = f"{prefix}{name}"
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, Section):
            yield from setting_keys(kind, f"{dotted}.")
        else:
            yield dotted


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


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part != "[key]":
            out += f".{part}" if out else str(part)
    return out


def _got(value: Any) -> str:
    if isinstance(value, dict):
        return f"a mapping of {', '.join(map(str, value))}" if value else "an empty mapping"
    if isinstance(value, list):
        return "a list"
    text = (
        json.dumps(value, default=str) if value is None or isinstance(value, bool) else repr(value)
    )
    return text if len(text) <= 60 else text[:57] + "..."


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The section a location points into (for the names of its keys)."""
    model: type[BaseModel] = File
    for part in loc:
        if isinstance(part, int):
            continue
        info = model.model_fields.get(str(part))
        if info is None:
            return None
        kinds = [info.annotation]
        found = None
        while kinds:
            kind = kinds.pop()
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                found = kind
                break
            kinds.extend(get_args(kind))
        if found is None:
            return None
        model = found
    return model


def _problems(exc: ValidationError, where: str) -> list[str]:
    lines = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        key = _dotted(loc) or "top level"
        kind = error["type"]
        if kind == "extra_forbidden":
            line = f"{where}: unknown key {key!r}"
            parent = _model_at(loc[:-1])
            close = difflib.get_close_matches(
                str(loc[-1]), list(parent.model_fields) if parent else [], n=1
            )
            if close:
                line += f" (did you mean {_dotted((*loc[:-1], close[0]))!r}?)"
        elif kind == "missing":
            line = f"{where}: {key}: expected a value (the key is required), got none"
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
            if not message.startswith("expected") and not message.startswith("unknown"):
                message = f"expected {message[0].lower()}{message[1:]}"
            if ", got " not in message:
                message += f", got {_got(error['input'])}"
            line = f"{where}: {key}: {message}"
        lines.append(line)
    return lines


def validate(data: Any, where: str) -> File:
    """``data`` (parsed YAML) as a ``File``, or a ``ConfigError`` listing every mistake."""
    try:
        return File.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(_problems(exc, where))) from None


def load(path: str | None) -> Config:
    """Read and validate a config file; ``None`` gives the built-in defaults."""
    if path is None:
        return Config()
    where = str(path)
    data = _parse_yaml(_read_text(path, where), where)
    return build(validate(data, where), where, Path(path).resolve().parent)


def build(f: File, where: str | None, base: Path) -> Config:
    """The ``Config`` of a validated file; relative paths resolve against ``base``."""

    def resolve(p: str) -> str:
        return p if Path(p).is_absolute() or p == ":memory:" else str(base / p)

    return Config(
        path=where,
        timezone=f.timezone,
        db=resolve(f.store.path),
        retention_days=f.store.retention_days,
        memory_limit=f.store.memory_limit,
        domains=dict(f.accounts.domains),
        userdomains=resolve(f.accounts.userdomains) if f.accounts.userdomains else None,
        uids=dict(f.accounts.uids),
        sender_domain_fallback=f.accounts.sender_domain_fallback,
        filter_relays=f.correlation.filter_relays,
        ttl=f.correlation.ttl,
        orphan_ttl=f.correlation.orphan_ttl,
        handoff_window=f.correlation.handoff_window,
        batch_lines=f.ingest.batch_lines,
        max_line_length=f.ingest.max_line_length,
        workers=f.ingest.workers,
        sources=tuple(Source(resolve(s.path), s.mta) for s in f.sources),
        socket=resolve(f.serve.socket),
        batch_seconds=f.serve.batch_seconds,
        poll_seconds=f.serve.poll_seconds,
        commit_retries=f.serve.commit_retries,
        tcp=f.api.tcp,
        admins=f.api.admins,
        api_keys=tuple(
            ApiKey(
                key=k.key, accounts=k.accounts, domains=k.domains, tags=k.tags, name=k.name or ""
            )
            for k in f.api.keys
        ),
        metrics_per_account=f.api.metrics_per_account,
        providers={**DEFAULT_PROVIDERS, **f.providers},
        tag_rules=tuple(
            (t.tag, "sender", t.sender)
            if t.sender is not None
            else (t.tag, "recipient", str(t.recipient))
            for t in f.tags
        ),
    )


MASK = "********"


def settings(cfg: Config) -> dict[str, Any]:
    """Every setting's effective value by its dotted key, as YAML would write it (durations
    as ``7d``; API key secrets masked).  ``setting_keys()`` lists the same keys."""
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
        "sources": [{"path": s.path, "mta": s.mta} for s in cfg.sources],
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
        "providers": {name: list(p) for name, p in cfg.providers.items()},
        "tags": [{"tag": tag, kind: pattern} for tag, kind, pattern in cfg.tag_rules],
    }
