"""WHM API 1's generic output options: ``api.filter.*``, ``api.sort.*``, ``api.chunk.*``.

From WHM's documents "WHM API 1 - Filter Output", "- Sort Output", "- Paginate Output":
filters ``api.filter.enable=1`` with ``api.filter.<letter>.field``, ``.arg0`` and ``.type``
(every lettered filter applies); sorts ``api.sort.enable=1`` with ``api.sort.<letter>.field``,
``.method`` (lexicographic, the default; numeric; numeric_zero_as_max; ipv4) and ``.reverse``
(the first letter the main key); pages ``api.chunk.enable=1`` with ``api.chunk.size`` and
``api.chunk.start`` (1-based).  Applied in that order: filter, sort, page.  The rows are
matched and ordered as cPanel API 2's options do (logstats/shapes/cpanel_api2.py).

Decisions where the documents are silent: a filter type defaults to ``contains``; ``eq``
is ``==``; the unlettered ``api.filter.field``/``api.sort.field`` forms are letter ``a``;
``api.chunk.size`` defaults to 100 and ``api.chunk.start`` to 1; a field or type that
cannot be used is refused (the caller gets ``metadata.result`` 0 naming the parameter).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from logstats.shapes.cpanel_api2 import (
    FILTER_TYPES,
    MAX_PAGE,
    Api2Error,
    Filter,
    Page,
    Sort,
    matches,
    sort_key,
)

CHUNK_DEFAULT = 100
_LETTERED = re.compile(r"api\.(filter|sort)\.([a-z]{1,3})\.field")
_METHODS = {"lexicographic": "alphabet", "numeric": "numeric", "numeric_zero_as_max":
            "numeric_zero_as_max", "ipv4": "ipv4"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Options:
    filters: tuple[Filter, ...] = ()
    sorts: tuple[Sort, ...] = ()
    page: Page | None = None


def _on(params: Mapping[str, str], name: str) -> bool:
    return (params.get(name) or "0").strip() not in ("", "0")


def _letters(params: Mapping[str, str], kind: str) -> list[str]:
    found = sorted(
        {m.group(2) for k in params if (m := _LETTERED.fullmatch(k)) and m.group(1) == kind}
    )
    if f"api.{kind}.field" in params and "a" not in found:
        found.insert(0, "")
    return found


def _name(kind: str, letter: str, what: str) -> str:
    return f"api.{kind}.{letter}.{what}" if letter else f"api.{kind}.{what}"


def _whole(name: str, value: str | None, default: int) -> int:
    v = (value or "").strip()
    if not v:
        return default
    if not (v.isascii() and v.isdigit()) or not 1 <= int(v) <= MAX_PAGE:
        raise Api2Error(f"{name}: {value!r} is not a whole number from 1 to {MAX_PAGE}")
    return int(v)


def parse(params: Mapping[str, str]) -> Options:
    """The output options a call asks for (Api2Error names one that cannot be used)."""
    filters: list[Filter] = []
    if _on(params, "api.filter.enable"):
        for letter in _letters(params, "filter"):
            field = (params.get(_name("filter", letter, "field")) or "").strip()
            kind = (params.get(_name("filter", letter, "type")) or "contains").strip()
            kind = "==" if kind == "eq" else kind
            if not field:
                raise Api2Error(f"{_name('filter', letter, 'field')}: missing")
            if kind not in FILTER_TYPES or kind == "regex":
                raise Api2Error(f"{_name('filter', letter, 'type')}: {kind!r} is not a filter type")
            term = params.get(_name("filter", letter, "arg0")) or ""
            if kind in ("lt", "gt", "lt_equal", "gt_equal"):
                try:
                    float(term)
                except ValueError:
                    raise Api2Error(
                        f"{_name('filter', letter, 'arg0')}: {term!r} is not a number"
                    ) from None
            filters.append(Filter(field, term, kind))
    sorts: list[Sort] = []
    if _on(params, "api.sort.enable"):
        for letter in _letters(params, "sort"):
            field = (params.get(_name("sort", letter, "field")) or "").strip()
            method = (params.get(_name("sort", letter, "method")) or "lexicographic").strip()
            if not field:
                raise Api2Error(f"{_name('sort', letter, 'field')}: missing")
            if method not in _METHODS:
                raise Api2Error(
                    f"{_name('sort', letter, 'method')}: {method!r} is not one of "
                    + ", ".join(_METHODS)
                )
            sorts.append(
                Sort(field, _on(params, _name("sort", letter, "reverse")), _METHODS[method])
            )
    page = None
    if _on(params, "api.chunk.enable"):
        page = Page(
            _whole("api.chunk.start", params.get("api.chunk.start"), 1),
            _whole("api.chunk.size", params.get("api.chunk.size"), CHUNK_DEFAULT),
        )
    return Options(tuple(filters), tuple(sorts), page)


def apply(rows: list[dict[str, Any]], opts: Options) -> list[dict[str, Any]]:
    """``rows`` filtered, sorted (the first sort the main key) and cut to the chunk."""
    out = [r for r in rows if all(matches(r, f) for f in opts.filters)]
    for sort in reversed(opts.sorts):  # stable sorts: the last applied decides first
        out.sort(key=sort_key(sort), reverse=sort.reverse)
    if opts.page is not None:
        out = out[opts.page.start - 1 : opts.page.start - 1 + opts.page.size]
    return out


def envelope(command: str, records: list[dict[str, Any]], **metadata: Any) -> dict[str, Any]:
    """WHM API 1's answer: ``data.records`` and ``metadata`` (result 1, reason OK)."""
    return {
        "data": {"records": records},
        "metadata": {"command": command, "reason": "OK", "result": 1, "version": 1, **metadata},
    }


def error(command: str, reason: str) -> dict[str, Any]:
    """WHM API 1's failure: ``metadata.result`` 0 and the reason."""
    return {"metadata": {"command": command, "reason": reason, "result": 0, "version": 1}}
