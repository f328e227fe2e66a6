"""The configuration file's structure, described once: a pydantic model per section.

``validate`` checks parsed YAML against ``File`` and reports every mistake at once, one
line each: ``FILE: dotted.key[index]: expected ..., got ...`` (an unknown key suggests the
close one); ``build`` turns the result into the ``Config`` the program uses.  Each value
type below checks what YAML gave and raises ``ValueError("expected ...")``: the report
adds the dotted key before it and ", got VALUE" after it.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, ClassVar, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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

from logstats.config import (
    DEFAULT_DB,
    DEFAULT_PROVIDERS,
    DEFAULT_SOCKET,
    ApiKey,
    Config,
    JournalSpec,
    Source,
    parse_duration,
)
from logstats.errors import ConfigError

_SIZE = re.compile(r"\d+(?:\.\d+)?\s*(?:[KMGT]i?B|B)", re.IGNORECASE)


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
    """``PORT`` (loopback), ``:PORT`` (every IPv4 interface) or ``HOST:PORT`` ->
    ``HOST:PORT``."""
    if value is None:
        return None
    text = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""
    if text and ":" not in text:
        text = f"127.0.0.1:{text}"  # a bare port listens on loopback only
    elif text.startswith(":") and text.count(":") == 1:
        text = f"0.0.0.0{text}"  # as operators write "all interfaces"
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


class JournalSection(Section):
    """``sources[i].journal``: which entries of the systemd journal are read."""

    expected: ClassVar[str] = "{units: [UNIT...], identifiers: [IDENTIFIER...], directory: DIR}"
    units: Names = ()
    identifiers: Names = ()
    directory: PathText | None = None

    @model_validator(mode="after")
    def _something(self) -> JournalSection:
        if not self.units and not self.identifiers:
            raise ValueError(
                "expected units or identifiers (or both): which entries to read, got neither"
            )
        return self


class SourceItem(Section):
    expected: ClassVar[str] = (
        "a path, {path: PATH, mta: exim|postfix} or {journal: {units, identifiers}, mta}"
    )
    item: ClassVar[bool] = True
    path: PathText | None = None
    journal: JournalSection | None = None
    mta: MtaName = None

    @model_validator(mode="before")
    @classmethod
    def _bare_path(cls, data: Any) -> Any:
        return {"path": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _one_kind(self) -> SourceItem:
        if (self.path is None) == (self.journal is None):
            raise ValueError("expected exactly one of path or journal")
        if self.journal is not None and self.mta is None:
            raise ValueError("expected mta (exim or postfix) beside journal, got none")
        return self


class ServeSection(Section):
    socket: PathText = DEFAULT_SOCKET
    batch_seconds: Seconds = 0.5
    poll_seconds: Seconds = 1.0
    commit_retries: Annotated[int, PlainValidator(_whole(1, 1000))] = 5


def _journals_apart(sources: tuple[SourceItem, ...]) -> tuple[SourceItem, ...]:
    """Two journal sources of one journal that name the same unit or identifier (or a unit
    that a pattern of the other matches) would count its entries twice."""
    seen: list[tuple[int, str | None, str, str]] = []  # index, directory, kind, name
    for i, item in enumerate(sources):
        journal = item.journal
        if journal is None:
            continue
        mine = [("unit", u) for u in journal.units]
        mine += [("identifier", x) for x in journal.identifiers]
        where = _journal_of(journal.directory)
        for j, directory, kind, name in seen:
            for my_kind, my_name in mine:
                same = _same(my_name, name) if kind == "unit" else my_name == name
                if directory == where and my_kind == kind and same:
                    raise ValueError(
                        f"expected each journal entry in one source, got {kind} {my_name} in "
                        f"[{i}] and {kind} {name} in [{j}] (their entries would count twice)"
                    )
        seen += [(i, where, kind, name) for kind, name in mine]
    return sources


def _journal_of(directory: str | None) -> str | None:
    """Which journal a source reads: None for the local one, which journalctl without
    ``-D`` reads from journald's own folders (``-D`` of one of them, or of this machine's
    folder in one, is the local one too; another machine's folder there, or journal-remote's
    ``remote``, is not)."""
    if directory is None:
        return None
    from logstats.journal import JOURNAL_DIRS

    path = Path(directory)
    machine = _machine_id()
    for top in map(Path, JOURNAL_DIRS):
        if path == top or (machine and path == top / machine):
            return None
    return str(path)


def _machine_id() -> str:
    try:
        return Path("/etc/machine-id").read_text().strip()
    except OSError:
        return ""


def _same(a: str, b: str) -> bool:
    """Whether two units take the same entries (either may be a pattern)."""
    return a == b or fnmatchcase(a, b) or fnmatchcase(b, a)


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


class ExportSection(Section):
    directory: PathText | None = None
    host: Name | None = None
    every: Duration = timedelta(hours=1)


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
    sources: Annotated[
        tuple[SourceItem, ...], BeforeValidator(_a_list), AfterValidator(_journals_apart)
    ] = ()
    serve: ServeSection = Field(default_factory=ServeSection)
    api: ApiSection = Field(default_factory=ApiSection)
    export: ExportSection = Field(default_factory=ExportSection)
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
        sources=tuple(
            Source(resolve(str(s.path)), s.mta)
            if s.journal is None
            else Source(
                "",
                s.mta,
                JournalSpec(
                    s.journal.units,
                    s.journal.identifiers,
                    resolve(s.journal.directory) if s.journal.directory else None,
                ),
            )
            for s in f.sources
        ),
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
        export_directory=resolve(f.export.directory) if f.export.directory else None,
        export_host=f.export.host,
        export_every=f.export.every,
        providers={**DEFAULT_PROVIDERS, **f.providers},
        tag_rules=tuple(
            (t.tag, "sender", t.sender)
            if t.sender is not None
            else (t.tag, "recipient", str(t.recipient))
            for t in f.tags
        ),
    )
