"""Answer schemas written from the seed documents (``shared/seeds``), and their validators.

JSON answers are checked against a small subset of JSON Schema (``type``, ``properties``,
``required``, ``additionalProperties``, ``items``, ``pattern``, ``enum``, ``const``,
``minimum``); XML answers against element trees (``tag``, ``text`` pattern, ``children`` in
order, or ``each``: any number of one element).  ``validate`` and ``validate_xml`` return
the list of problems, empty when the value fits.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "null": type(None),
    "boolean": bool,
}


def _is(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[name])


def validate(value: Any, schema: dict[str, Any], where: str = "$") -> list[str]:
    """Problems with ``value`` against ``schema`` (a JSON Schema subset)."""
    problems: list[str] = []
    if "const" in schema and value != schema["const"]:
        return [f"{where}: {value!r} is not {schema['const']!r}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} is not one of {schema['enum']!r}"]
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if not any(_is(value, n) for n in names):
            return [f"{where}: {type(value).__name__} is not {'/'.join(names)}"]
    if (
        isinstance(value, str)
        and "pattern" in schema
        and not re.fullmatch(schema["pattern"], value)
    ):
        problems.append(f"{where}: {value!r} does not match {schema['pattern']!r}")
    if _is(value, "integer") and "minimum" in schema and value < schema["minimum"]:
        problems.append(f"{where}: {value} is below {schema['minimum']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name in schema.get("required", ()):
            if name not in value:
                problems.append(f"{where}: missing {name!r}")
        extra = schema.get("additionalProperties", True)
        for name, v in value.items():
            if name in props:
                problems += validate(v, props[name], f"{where}.{name}")
            elif extra is False:
                problems.append(f"{where}: unexpected {name!r}")
            elif isinstance(extra, dict):
                problems += validate(v, extra, f"{where}.{name}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            problems += validate(v, schema["items"], f"{where}[{i}]")
    return problems


def _element(el: ET.Element, schema: dict[str, Any], where: str) -> list[str]:
    here = f"{where}/{el.tag}"
    if el.tag != schema["tag"]:
        return [f"{where}: <{el.tag}> is not <{schema['tag']}>"]
    problems: list[str] = []
    kids = list(el)
    if "text" in schema:
        if kids:
            problems.append(f"{here}: has child elements, expected text")
        if not re.fullmatch(schema["text"], el.text or ""):
            problems.append(f"{here}: text {el.text!r} does not match {schema['text']!r}")
    elif (el.text or "").strip():
        problems.append(f"{here}: unexpected text {el.text!r}")
    if "children" in schema:
        expected = [c["tag"] for c in schema["children"]]
        if [k.tag for k in kids] != expected:
            return [*problems, f"{here}: children {[k.tag for k in kids]} are not {expected}"]
        for k, c in zip(kids, schema["children"], strict=True):
            problems += _element(k, c, here)
    elif "each" in schema:
        for k in kids:
            problems += _element(k, schema["each"], here)
    elif "text" not in schema and kids:
        problems.append(f"{here}: unexpected children")
    return problems


def validate_xml(text: str, schema: dict[str, Any]) -> list[str]:
    """Problems with XML ``text`` (it must be well-formed) against an element schema."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        return [f"not well-formed: {exc}"]
    return _element(root, schema, "")
