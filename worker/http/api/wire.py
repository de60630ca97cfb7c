"""The API's wire: reading a request (JSON body, query parameters, NUL and surrogate checks, pydantic errors in
words with a hint) and writing an answer (``plain`` JSON values, ``ok``).
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Iterator, Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from worker.http.errors import (
    ApiError,
    field_error,
    invalid_request,
    json_response,
)
from worker.http.models import (
    ACTION_FIELDS,
    ACTIONS,
    PATTERN_MESSAGES,
)


# ------------------------------------------------------------------------------------------- validation
def _text_problem(value: str) -> str | None:
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (no lone surrogates)"
    return None


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


_HINTS = {
    ("scan", "experimentName"): "scan covers every running experiment; use 'check' or 'promote' for one",
    ("rollback", "experimentName"): "rollback is identified by promotionId alone",
}


def _error_message(err: Mapping[str, Any], action: str | None, field: str) -> str:
    """One pydantic error in words that say what is wrong and how to fix it."""
    kind = err["type"]
    given = err.get("input")
    if kind in ("union_tag_invalid", "literal_error") and field == "action":
        return f"unknown action {_describe(given)}; use one of {', '.join(ACTIONS)}"
    if kind == "missing":
        why = ": say why" if (action, field) == ("rollback", "reason") else ""
        return f"is required for action '{action}'{why}" if action else "is required"
    if kind == "extra_forbidden" and action is not None and any(field in f for f in ACTION_FIELDS.values()):
        hint = _HINTS.get((action, field))
        if hint:
            return f"is not used by action '{action}': {hint}"
        users = [a for a, fields in ACTION_FIELDS.items() if field in fields]
        return f"is only used by action {' and '.join(repr(u) for u in users)}, not '{action}'"
    if kind == "extra_forbidden":
        return "unknown field; check the spelling (fields are camelCase)"
    if (kind, action, field) == ("literal_error", "rollback", "dryRun"):
        return "rollback has no dry run; it always changes the weights back"
    if kind == "string_pattern_mismatch":
        return PATTERN_MESSAGES.get(str((err.get("ctx") or {}).get("pattern")), "has the wrong form")
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    return f"{err['msg']}, got {_describe(given)}"


def validation_errors(exc: ValidationError, prefix: str = "", *, tagged: bool = False) -> list[dict[str, str]]:
    """Each error as ``{path, message}``. ``tagged``: the model is the action union, whose error locations
    start with the action (dropped from the path)."""
    out: list[dict[str, str]] = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        action = loc.pop(0) if tagged and loc else None
        if err["type"] in ("union_tag_not_found", "union_tag_invalid"):
            loc = ["action"]
        path = ".".join(loc)
        if err["type"] == "union_tag_not_found":
            out.append(field_error("action", "is required"))
            continue
        out.append(
            field_error(
                prefix + path if path else prefix.rstrip(".") or "body",
                _error_message(err, action, loc[-1] if loc else ""),
            )
        )
    return out


def _walk_strings(node: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string (keys included) in a JSON tree with its path, for the NUL / surrogate check."""
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            sub = f"{path}.{key}" if path else str(key)
            yield sub, key
            yield from _walk_strings(value, sub)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk_strings(value, f"{path}[{i}]")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object, whatever the Content-Type (the seed's curl examples send none)."""
    raw = await request.read()  # over client_max_size: aiohttp raises 413, the middleware shapes it
    if not raw.strip():
        raise ApiError(400, "malformed_json", "the request body is empty; send a JSON object")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise ApiError(400, "malformed_json", "the request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ApiError(
            400,
            "malformed_json",
            f"the request body is not valid JSON: {exc.msg}",
            {"line": exc.lineno, "column": exc.colno},
        ) from None
    except (ValueError, RecursionError) as exc:
        message = str(exc)[:200] if isinstance(exc, ValueError) else "nested too deeply"
        raise ApiError(400, "malformed_json", f"the request body is not valid JSON: {message}") from None
    if not isinstance(data, dict):
        raise invalid_request(
            "the request body must be a JSON object",
            [field_error("body", f"must be a JSON object, got {type(data).__name__}")],
        )
    problems = [field_error(p or "body", why) for p, s in _walk_strings(data, "") if (why := _text_problem(s))]
    if problems:
        raise invalid_request("the request body contains text PostgreSQL cannot store", problems[:20])
    return data


_Q = TypeVar("_Q", bound=BaseModel)


def parse_query(request: web.Request, model: type[_Q]) -> _Q:
    """Query parameters through ``model``; unknown or repeated parameters are errors."""
    values: dict[str, str] = {}
    errors: list[dict[str, str]] = []
    for key in request.query:
        if key in values:
            continue
        all_values = request.query.getall(key)
        if len(all_values) > 1:
            errors.append(field_error(f"query.{key}", "is given more than once"))
        values[key] = all_values[0]
    try:
        parsed = model.model_validate(values)
    except ValidationError as exc:
        errors.extend(validation_errors(exc, "query."))
        parsed = None
    if errors or parsed is None:
        raise invalid_request("invalid query parameters", errors)
    return parsed


# ------------------------------------------------------------------------------------------------ output
def plain(x: Any) -> Any:
    """JSON-ready: datetimes as ISO 8601, UUIDs as strings, non-finite numbers as null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [plain(v) for v in x]
    if isinstance(x, datetime | date):
        return x.isoformat()
    if isinstance(x, uuid.UUID):
        return str(x)
    if isinstance(x, Decimal):
        return plain(float(x))
    return x


def ok(data: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return json_response({"success": True, "data": plain(data)}, headers=headers)
