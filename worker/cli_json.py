"""Indented JSON for the command line: exactly what ``json.dumps(value, indent=2)`` writes, about twice as fast.

The standard library encodes with indentation in pure Python, one generator per container; a scan's ``--json`` of
10,000 experiments is ~10 MB of it. This walks the value once, appending strings (the escaping is the standard
library's own C function, numbers their ``repr``). tests/unit/test_cli_json.py checks it against ``json.dumps``.
"""

from __future__ import annotations

from collections.abc import Callable
from json.encoder import encode_basestring_ascii
from typing import Any

_INFINITY = float("inf")
_float_repr = float.__repr__
_int_repr = int.__repr__


def _float(x: float) -> str:
    if x != x:
        return "NaN"
    if x == _INFINITY:
        return "Infinity"
    if x == -_INFINITY:
        return "-Infinity"
    return _float_repr(x)


def _scalar(value: Any) -> str | None:
    """The JSON of a scalar as json.dumps writes it; None for a container (or anything else)."""
    kind = type(value)
    if kind is str:
        return encode_basestring_ascii(value)
    if kind is float:
        return _float(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if kind is int:
        return _int_repr(value)
    if isinstance(value, str):
        return encode_basestring_ascii(value)
    if isinstance(value, int):
        return _int_repr(value)
    if isinstance(value, float):
        return _float(value)
    return None


def _key(key: Any) -> str:
    """A dict key as json.dumps writes it (a str, or a scalar turned into one)."""
    if isinstance(key, str):
        return encode_basestring_ascii(key)
    if isinstance(key, float):
        return encode_basestring_ascii(_float(key))
    if key is True or key is False or key is None:
        return {True: '"true"', False: '"false"', None: '"null"'}[key]
    if isinstance(key, int):
        return encode_basestring_ascii(_int_repr(key))
    raise TypeError(f"keys must be str, int, float, bool or None, not {key.__class__.__name__}")


def dumps_indented(value: Any, indent: int = 2) -> str:
    """``json.dumps(value, indent=indent)`` (no ``default``: a value JSON cannot hold raises TypeError)."""
    out: list[str] = []
    append = out.append
    step = " " * indent

    def container(node: Any, level: int, encode: Callable[[Any, int], None]) -> None:
        inner = "\n" + step * (level + 1)
        separator = "," + inner
        if isinstance(node, dict):
            if not node:
                append("{}")
                return
            append("{" + inner)
            first = True
            for key, item in node.items():
                if first:
                    first = False
                else:
                    append(separator)
                text = _scalar(item)
                if text is not None:
                    append(_key(key) + ": " + text)
                else:
                    append(_key(key) + ": ")
                    encode(item, level + 1)
            append("\n" + step * level + "}")
            return
        if not node:
            append("[]")
            return
        append("[" + inner)
        first = True
        for item in node:
            if first:
                first = False
            else:
                append(separator)
            text = _scalar(item)
            if text is not None:
                append(text)
            else:
                encode(item, level + 1)
        append("\n" + step * level + "]")

    def encode(node: Any, level: int) -> None:
        if isinstance(node, dict | list | tuple):
            container(node, level, encode)
            return
        text = _scalar(node)
        if text is None:
            raise TypeError(f"Object of type {node.__class__.__name__} is not JSON serializable")
        append(text)

    encode(value, 0)
    return "".join(out)
