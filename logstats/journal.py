"""The systemd journal as a log source, read with ``journalctl -o json``.

A journal source (``sources: [{journal: {units, identifiers, directory}, mta}]``) takes
the entries of any of its units (``_SYSTEMD_UNIT``, which journald sets from the sender's
cgroup) or any of its syslog identifiers (``SYSLOG_IDENTIFIER``), from the local journal or
from the journal files under ``directory`` (journalctl ``-D``).  A unit may be a shell
pattern (``postfix@*.service``): each poll matches it against the units the journal holds
(``JournalReader.units``).  Each entry becomes the
line a syslog daemon would have written, with an RFC 3339 stamp (UTC, microseconds, so no
year is guessed) of when the program logged it (``_SOURCE_REALTIME_TIMESTAMP``, else
journald's ``__REALTIME_TIMESTAMP``), as journalctl shows it::

    2026-12-02T18:30:00.123456+00:00 HOSTNAME postfix/smtp[1234]: MESSAGE

and those lines go through the same ``Pipeline`` as a file's.  The checkpoint of a journal
source is the cursor of its last entry handed on (``model.JournalCursor``), committed with
the counters in one transaction, keyed by ``source_id``.

Every ``poll`` runs ``journalctl --cursor=STORED``: the first entry must be the stored one
(same ``s=`` seqnum id and ``i=`` seqnum in the cursor), and is left out.  Cursors survive
journal file rotation (the entry is found in the archived file).  When it is not the
stored one, the stored entry was vacuumed: that is a gap, reported (``journal_gap`` note)
and counted (anomaly ``journal-gap``), and reading goes on from the oldest entry there is.
A poll reads at most ``max_entries`` entries (``more`` then tells that there is more), so
backfill and the daemon catch up on a large journal in bounded steps.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any

from logstats.config import JournalSpec
from logstats.follow import Note
from logstats.model import JournalCursor, Position
from logstats.sources import Piece

JOURNALCTL = "journalctl"
MAX_ENTRIES = 50_000  # entries one poll reads at most
PIECE_ENTRIES = 2_000  # entries per piece handed to the pipeline
MAX_REALTIME = 253_402_300_799_999_999  # 9999-12-31T23:59:59.999999Z, in microseconds
JOURNAL_DIRS = ("/run/log/journal", "/var/log/journal")  # where journald keeps its files
# the fields a line is made of (journalctl adds __CURSOR and __REALTIME_TIMESTAMP)
FIELDS = "MESSAGE,_HOSTNAME,SYSLOG_IDENTIFIER,SYSLOG_PID,_PID,_COMM,_SOURCE_REALTIME_TIMESTAMP"


def source_id(spec: JournalSpec) -> str:
    """A journal source's stable identity (the key of its checkpoint): what it reads."""
    what = {
        "directory": spec.directory,
        "units": sorted(set(spec.units)),
        "identifiers": sorted(set(spec.identifiers)),
    }
    return "journal:" + json.dumps(what, sort_keys=True, separators=(",", ":"))


def describe(spec: JournalSpec) -> str:
    """A journal source as log lines and reports name it."""
    parts = [f"unit {u}" for u in sorted(set(spec.units))]
    parts += [f"identifier {i}" for i in sorted(set(spec.identifiers))]
    where = f" in {spec.directory}" if spec.directory else ""
    return f"journal ({', '.join(parts)}){where}"


def matches(spec: JournalSpec, units: tuple[str, ...] | None = None) -> list[str]:
    """journalctl's matches: any of the units (``units``: the spec's with its patterns
    expanded, see ``JournalReader.units``), or (``+``) any of the identifiers."""
    names = [f"_SYSTEMD_UNIT={u}" for u in (spec.units if units is None else units)]
    identifiers = [f"SYSLOG_IDENTIFIER={i}" for i in spec.identifiers]
    if names and identifiers:
        return [*names, "+", *identifiers]
    return names or identifiers


def _env() -> dict[str, str]:
    return {**os.environ, "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}


def is_pattern(unit: str) -> bool:
    """A unit given as a shell pattern (``postfix@*.service``), as ``journalctl -u`` takes."""
    return any(c in unit for c in "*?[")


def seqnum_of(cursor: str) -> tuple[str, int] | None:
    """The seqnum id and seqnum a cursor names (``s=...;i=...;...``)."""
    fields = dict(part.split("=", 1) for part in cursor.split(";") if "=" in part)
    try:
        return fields["s"], int(fields["i"], 16)
    except (KeyError, ValueError):
        return None


def _text(value: Any) -> str | None:
    """A field's value: text, or a byte array (not UTF-8) decoded with replacement."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if value and isinstance(value[0], list | str):  # a field given more than once
            return _text(value[0])
        try:
            return bytes(value).decode("utf-8", "replace")
        except (TypeError, ValueError):
            return None
    return None


def stamp(realtime: int) -> str:
    """``__REALTIME_TIMESTAMP`` (microseconds) as an RFC 3339 stamp in UTC."""
    ts = datetime.fromtimestamp(realtime // 1_000_000, UTC).replace(
        microsecond=realtime % 1_000_000
    )
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def entry_line(entry: dict[str, Any], realtime: int) -> str | None:
    """The syslog line of one entry, or None when it has no MESSAGE.  Its time is when the
    program logged it (``_SOURCE_REALTIME_TIMESTAMP``, as journalctl shows it), else when
    journald received it (``realtime``: ``__REALTIME_TIMESTAMP``)."""
    message = _text(entry.get("MESSAGE"))
    if message is None:
        return None
    source = _text(entry.get("_SOURCE_REALTIME_TIMESTAMP"))
    if source is not None and source.isascii() and source.isdigit() and len(source) < 19:
        realtime = int(source)
    realtime = min(max(realtime, 0), MAX_REALTIME)
    host = _text(entry.get("_HOSTNAME")) or "localhost"
    ident = _text(entry.get("SYSLOG_IDENTIFIER")) or _text(entry.get("_COMM")) or "unknown"
    pid = _text(entry.get("SYSLOG_PID")) or _text(entry.get("_PID"))
    tag = f"{ident}[{pid}]" if pid else ident
    message = message.rstrip("\n")
    if "\n" in message or "\r" in message:  # one entry, one line
        message = message.replace("\r", " ").replace("\n", " ")
    return f"{stamp(realtime)} {host} {tag}: {message}"


@dataclass(slots=True)
class JournalReader:
    """Reads one journal source, each ``poll`` what is new since the last (the daemon's
    follower and backfill's reader of a journal source alike)."""

    spec: JournalSpec
    mta: str
    stored: Any  # Callable[[str], JournalCursor | None]: the committed cursor of a source
    journalctl: str = JOURNALCTL
    max_entries: int = MAX_ENTRIES
    piece_entries: int = PIECE_ENTRIES
    notes: list[Note] = field(default_factory=list)
    more: bool = False  # the last poll stopped at max_entries: poll again at once
    started: bool = False
    source: str = ""
    path: str = ""  # how it is named (``describe``)
    _cursor: JournalCursor | None = None  # where reading stands (handed on, maybe not committed)
    _loaded: bool = False
    _error: str = ""

    def __post_init__(self) -> None:
        self.source = source_id(self.spec)
        self.path = describe(self.spec)

    def folders(self) -> list[str]:
        """The folders journald writes this source's files in (to be woken on a write)."""
        tops = [self.spec.directory] if self.spec.directory else list(JOURNAL_DIRS)
        out = []
        for top in tops:
            if not os.path.isdir(top):
                continue
            out.append(top)
            with contextlib.suppress(OSError):
                out += [e.path for e in os.scandir(top) if e.is_dir()]
        return out

    def poll(self) -> list[Piece]:
        """The entries since the last poll (at most ``max_entries``), as pieces."""
        self.started = True
        self.more = False
        if not self._loaded:
            self._cursor = self.stored(self.source)
            self._loaded = True
        units = self.units()
        read: tuple[_Pieces, bool] | None = None
        noted = len(self.notes)
        for _ in range(3):
            del self.notes[noted:]  # a read done again notes its gap again
            if units is None:
                return []  # journalctl cannot list the units (reported)
            if not units and not self.spec.identifiers:
                return []  # no unit that a pattern matches has logged yet
            read = self._read(units)
            if read is None:
                return []
            if not any(map(is_pattern, self.spec.units)):
                break
            # a unit that a pattern matches and that began to log during the read: read
            # again from the same cursor with it, so that none of its entries is passed over
            again = self.units()
            if again is None or set(again) <= set(units):
                break
            units = again
        if read is None:
            return []
        out, stopped = read
        self.more = stopped
        self._cursor = out.cursor
        return out.pieces

    def units(self) -> tuple[str, ...] | None:
        """The units matched: the names given, and the journal's units that a pattern of
        them matches (``journalctl -F _SYSTEMD_UNIT``, fnmatch as ``journalctl -u``; read
        on every poll, so a new instance is taken as soon as it logs); None when journalctl
        cannot list them (reported)."""
        if not any(map(is_pattern, self.spec.units)):
            return self.spec.units
        argv = [self.journalctl, *self._where(), "-F", "_SYSTEMD_UNIT"]
        try:
            proc = subprocess.run(argv, capture_output=True, check=False, env=_env(), timeout=120)
        except (OSError, subprocess.SubprocessError) as exc:
            self._report(f"cannot run {self.journalctl}: {getattr(exc, 'strerror', None) or exc}")
            return None
        if proc.returncode != 0:
            err = proc.stderr.decode("utf-8", "replace").strip()
            why = err.splitlines()[0] if err else "no message"
            self._report(
                f"{self.journalctl} -F _SYSTEMD_UNIT failed (exit {proc.returncode}): {why}"
            )
            return None
        present = proc.stdout.decode("utf-8", "replace").splitlines()
        patterns = [u for u in self.spec.units if is_pattern(u)]
        found = sorted({u for u in present if u and any(fnmatchcase(u, p) for p in patterns)})
        names = [u for u in self.spec.units if not is_pattern(u)]
        return tuple(dict.fromkeys([*names, *found]))

    def _read(self, units: tuple[str, ...]) -> tuple[_Pieces, bool] | None:
        """One ``journalctl --cursor`` run from where reading stands: its entries as pieces,
        and whether it stopped at ``max_entries``; None when journalctl cannot be run."""
        try:
            proc = subprocess.Popen(
                self._argv(self._cursor, units),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=_env(),
            )
        except OSError as exc:
            self._report(f"cannot run {self.journalctl}: {exc.strerror or exc}")
            return None
        assert proc.stdout is not None and proc.stderr is not None
        out = _Pieces(self.source, self.path, self._cursor, self.piece_entries)
        stopped = False
        try:
            for raw in proc.stdout:
                if self._take(out, raw) and out.taken >= self.max_entries:
                    stopped = True
                    break
            out.flush()
        finally:
            if stopped:
                proc.kill()
            proc.stdout.close()
            err = proc.stderr.read().decode("utf-8", "replace").strip()
            proc.stderr.close()
            code = proc.wait()
        if not stopped and code != 0:
            why = err.splitlines()[0] if err else "no message"
            self._report(f"{self.journalctl} failed (exit {code}): {why}")
        elif not stopped:
            self._error = ""
        return out, stopped

    def _where(self) -> list[str]:
        return ["-D", self.spec.directory] if self.spec.directory else []

    def _argv(self, start: JournalCursor | None, units: tuple[str, ...] | None = None) -> list[str]:
        argv = [self.journalctl, "-o", "json", f"--output-fields={FIELDS}", "--no-pager", "-q"]
        argv += self._where()
        if start is not None:
            argv.append(f"--cursor={start.cursor}")  # from the stored entry itself
        return argv + matches(self.spec, units)

    def _take(self, out: _Pieces, raw: bytes) -> bool:
        """One JSON line of journalctl: False when it is left out."""
        try:
            entry = json.loads(raw)
            text = entry["__CURSOR"]
            realtime = int(entry["__REALTIME_TIMESTAMP"])
        except (ValueError, KeyError, TypeError, IndexError, OverflowError):
            return False  # not an entry journalctl would write: nothing to place it by
        if not isinstance(text, str) or not 0 <= realtime <= MAX_REALTIME:
            return False
        seq = seqnum_of(text)
        if out.first:
            out.first = False
            assert out.start is not None
            if seq is not None and seq == out.stored_seq:
                return False  # the stored entry itself: read already
            out.gap = self._gap(out.start, realtime)
        elif (
            out.stored_seq is not None
            and seq is not None
            and seq[0] == out.stored_seq[0]
            and seq[1] <= out.stored_seq[1]
        ):
            return False  # at or before the stored entry (a gap's seek lands near it)
        out.add(text, realtime, entry_line(entry, realtime))
        return True

    def _gap(self, stored: JournalCursor, first: int) -> str:
        """The stored entry is gone (vacuumed): note it; the sample text for the anomaly."""
        stored_at = stamp(stored.realtime)
        first_at = stamp(first)
        detail = (
            f"the entry last read ({stored_at}) is no longer in the journal; "
            f"reading on from the oldest there is ({first_at})"
        )
        self.notes.append(
            Note(
                "journal_gap",
                self.path,
                detail,
                {"source": self.source, "stored_at": stored_at, "first_at": first_at},
            )
        )
        return f"{self.path}: {detail}"

    def _report(self, detail: str) -> None:
        if detail != self._error:
            self.notes.append(Note("source_error", self.path, detail))
            self._error = detail

    def close(self) -> None:
        """Nothing is held between polls."""


@dataclass(slots=True)
class _Pieces:
    """The entries of one poll, cut into pieces of ``size`` entries, each with its cursor."""

    source: str
    path: str
    start: JournalCursor | None
    size: int
    pieces: list[Piece] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    no_message: int = 0
    gap: str | None = None
    taken: int = 0
    first: bool = False  # the next entry is the one at the stored cursor
    stored_seq: tuple[str, int] | None = None
    cursor: JournalCursor | None = None

    def __post_init__(self) -> None:
        self.cursor = self.start
        self.first = self.start is not None
        self.stored_seq = seqnum_of(self.start.cursor) if self.start is not None else None

    def add(self, text: str, realtime: int, line: str | None) -> None:
        entries = (self.cursor.entries if self.cursor is not None else 0) + 1
        self.cursor = JournalCursor(self.source, text, realtime, entries)
        if line is None:
            self.no_message += 1
        else:
            self.lines.append(line)
        self.taken += 1
        if self.taken % self.size == 0:
            self.flush()

    def flush(self) -> None:
        cursor = self.cursor
        if cursor is None or (not self.lines and not self.no_message and self.gap is None):
            return
        body = ("\n".join(self.lines) + "\n").encode() if self.lines else b""
        position = Position(
            self.source, self.path, 0, cursor.entries, cursor.entries, cursor.realtime / 1e6
        )
        self.pieces.append(Piece(body, position, 0, cursor, self.no_message, self.gap))
        self.lines, self.no_message, self.gap = [], 0, None
