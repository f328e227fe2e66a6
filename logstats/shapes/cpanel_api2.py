"""cPanel API 2's generic output options: ``api2_filter``, ``api2_sort``, ``api2_paginate``.

Pure functions over a function's rows (a list of dicts), applied in cPanel's order:
filter, then sort, then paginate.  Parameters (one filter, or numbered ones
``api2_filter_column_0``, ``api2_filter_term_0``, ``api2_filter_type_0``, ...):

  api2_filter=1  api2_filter_column  api2_filter_term  api2_filter_type
                 (contains, the default; regex; ==; !=; lt; gt; lt_equal; gt_equal; begins)
  api2_sort=1    api2_sort_column  api2_sort_reverse=0|1
                 api2_sort_method (alphabet, the default; numeric; numeric_zero_as_max; ipv4)
  api2_paginate=1  api2_paginate_start (1-based, default 1)  api2_paginate_size (default 10)

Decisions where cPanel's description is loose: a filter naming a column the rows lack
matches nothing; ``regex`` is Python's ``re.search`` (a bad pattern is refused); the
comparison types compare as numbers and refuse a term that is not one; ``api2_filter=1``
without a column is refused; pagination answers ``paginate`` {start_result, results_per_page,
total_results, total_pages, current_page} next to ``data``.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

MAX_PAGE = 100_000  # a page size or start beyond this is refused (no huge slices)
FILTER_TYPES = ("contains", "regex", "==", "!=", "lt", "gt", "lt_equal", "gt_equal", "begins")
_NUMBERED = re.compile(r"api2_filter_column_\d{1,6}")
SORT_METHODS = ("alphabet", "numeric", "numeric_zero_as_max", "ipv4")


class Api2Error(ValueError):
    """An output option cPanel would refuse; the message names the parameter."""


@dataclass(frozen=True, slots=True)
class Filter:
    column: str
    term: str
    kind: str = "contains"


@dataclass(frozen=True, slots=True)
class Sort:
    column: str
    reverse: bool = False
    method: str = "alphabet"


@dataclass(frozen=True, slots=True)
class Page:
    start: int = 1
    size: int = 10


@dataclass(frozen=True, slots=True)
class Options:
    filters: tuple[Filter, ...] = ()
    sort: Sort | None = None
    page: Page | None = None


def _on(params: Mapping[str, str], name: str) -> bool:
    return (params.get(name) or "0").strip() not in ("", "0")


def _whole(name: str, value: str | None, default: int, low: int) -> int:
    if value is None or value.strip() == "":
        return default
    v = value.strip()
    if not (v.isascii() and v.isdigit()) or not low <= int(v) <= MAX_PAGE:
        raise Api2Error(f"{name}: {value!r} is not a whole number from {low} to {MAX_PAGE}")
    return int(v)


def parse(params: Mapping[str, str]) -> Options:
    """The output options a call asks for (Api2Error for one that cannot be used)."""
    filters: list[Filter] = []
    if _on(params, "api2_filter"):
        numbered = (k[len("api2_filter_column") :] for k in params if _NUMBERED.fullmatch(k))
        suffixes = ["", *sorted(numbered, key=lambda s: int(s[1:]))]
        for sfx in suffixes:
            column = params.get("api2_filter_column" + sfx)
            if column is None:
                continue
            kind = (params.get("api2_filter_type" + sfx) or "contains").strip()
            if kind not in FILTER_TYPES:
                raise Api2Error(
                    f"api2_filter_type{sfx}: {kind!r} is not one of {', '.join(FILTER_TYPES)}"
                )
            term = params.get("api2_filter_term" + sfx) or ""
            if kind == "regex":
                try:
                    re.compile(term)
                except re.error as exc:
                    raise Api2Error(f"api2_filter_term{sfx}: {exc}") from exc
            elif kind in ("lt", "gt", "lt_equal", "gt_equal") and _number(term) is None:
                raise Api2Error(f"api2_filter_term{sfx}: {term!r} is not a number")
            filters.append(Filter(column, term, kind))
        if not filters:
            raise Api2Error("api2_filter_column: missing")
    sort = None
    if _on(params, "api2_sort"):
        column = (params.get("api2_sort_column") or "").strip()
        if not column:
            raise Api2Error("api2_sort_column: missing")
        method = (params.get("api2_sort_method") or "alphabet").strip()
        if method not in SORT_METHODS:
            raise Api2Error(f"api2_sort_method: {method!r} is not one of {', '.join(SORT_METHODS)}")
        sort = Sort(column, _on(params, "api2_sort_reverse"), method)
    page = None
    if _on(params, "api2_paginate"):
        page = Page(
            _whole("api2_paginate_start", params.get("api2_paginate_start"), 1, 1),
            _whole("api2_paginate_size", params.get("api2_paginate_size"), 10, 1),
        )
    return Options(tuple(filters), sort, page)


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    try:
        n = float(value)
    except (TypeError, ValueError):
        return None
    return n if math.isfinite(n) else None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def matches(row: Mapping[str, Any], f: Filter) -> bool:
    if f.column not in row:
        return False
    value = row[f.column]
    text = _text(value)
    if f.kind == "contains":
        return f.term.lower() in text.lower()
    if f.kind == "begins":
        return text.lower().startswith(f.term.lower())
    if f.kind == "regex":
        return re.search(f.term, text) is not None
    if f.kind == "==":
        return text == f.term
    if f.kind == "!=":
        return text != f.term
    n, term = _number(value), _number(f.term)
    if n is None or term is None:
        return False
    compare: dict[str, Callable[[float, float], bool]] = {
        "lt": lambda a, b: a < b,
        "gt": lambda a, b: a > b,
        "lt_equal": lambda a, b: a <= b,
        "gt_equal": lambda a, b: a >= b,
    }
    return compare[f.kind](n, term)


def sort_key(sort: Sort) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    def key(row: Mapping[str, Any]) -> tuple[Any, ...]:
        value = row.get(sort.column)
        if sort.method == "alphabet":
            return (_text(value).lower(),)
        if sort.method == "ipv4":
            try:
                return (0, int(ipaddress.ip_address(_text(value))))
            except ValueError:
                return (1, 0)
        n = _number(value)
        if n is None:
            n = 0.0
        if sort.method == "numeric_zero_as_max" and n == 0:
            return (1, 0.0)
        return (0, n)

    return key


def apply(
    rows: list[dict[str, Any]], opts: Options
) -> tuple[list[dict[str, Any]], dict[str, int] | None]:
    """``rows`` filtered, sorted and cut to the page; the ``paginate`` block when paged."""
    out = [r for r in rows if all(matches(r, f) for f in opts.filters)]
    if opts.sort is not None:
        out.sort(key=sort_key(opts.sort), reverse=opts.sort.reverse)  # stable: ties keep order
    if opts.page is None:
        return out, None
    total, size = len(out), opts.page.size
    start = opts.page.start
    block = {
        "start_result": start,
        "results_per_page": size,
        "total_results": total,
        "total_pages": (total + size - 1) // size,
        "current_page": (start - 1) // size + 1,
    }
    return out[start - 1 : start - 1 + size], block
