"""The API's one error shape, and the middleware that gives every failure under /api/ that shape.

``{"success": false, "error": {"code", "message", "details"}}``, never a stack trace. Unexpected exceptions
become a 500 ``internal_error`` whose details carry a request id that the server log also names.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import structlog
from aiohttp import web

from worker import metrics
from worker.config import ConfigError
from worker.domain.errors import (
    AlreadyPromoted,
    AlreadyRolledBack,
    ApprovalNotFound,
    ApprovalNotPending,
    DomainError,
    ExperimentNotFound,
    InvalidRequest,
    MetricExists,
    MetricNotFound,
    PromotionNotFound,
    RolloutConflict,
    RolloutNotFound,
)
from worker.http.app import CTX
from worker.retry import is_transient

log = structlog.get_logger("worker.http")

API_PREFIX = "/api/"

# Codes for the HTTP errors aiohttp raises by itself (no route, wrong method, body too large, ...).
_STATUS_CODES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    411: "length_required",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


# Every domain error's HTTP status and error code: the one place the domain meets HTTP. A subclass not listed
# takes its nearest listed base's entry (DomainError: a 400).
DOMAIN_ERRORS: dict[type[DomainError], tuple[int, str]] = {
    DomainError: (400, "invalid_request"),
    InvalidRequest: (400, "invalid_request"),
    ExperimentNotFound: (404, "experiment_not_found"),
    PromotionNotFound: (404, "promotion_not_found"),
    AlreadyPromoted: (409, "already_promoted"),
    AlreadyRolledBack: (409, "already_rolled_back"),
    ApprovalNotFound: (404, "approval_not_found"),
    ApprovalNotPending: (409, "approval_not_pending"),
    RolloutNotFound: (404, "rollout_not_found"),
    RolloutConflict: (409, "rollout_state_conflict"),
    MetricNotFound: (404, "metric_not_found"),
    MetricExists: (409, "metric_exists"),
}


def domain_status(exc: DomainError) -> tuple[int, str]:
    """The status code and error code of a domain error (by its class, or the nearest listed base)."""
    for cls in type(exc).__mro__:
        if cls in DOMAIN_ERRORS:
            return DOMAIN_ERRORS[cls]
    raise AssertionError(f"{type(exc).__name__} is not a DomainError")  # unreachable: DomainError is listed


def domain_error_response(exc: DomainError, headers: Mapping[str, str] | None = None) -> web.Response:
    """A domain error in the API's error shape."""
    status, code = domain_status(exc)
    return error_response(status, code, exc.message, exc.details, headers)


class ApiError(Exception):
    """A failure the client can act on; rendered as the error shape with ``status``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return error_response(self.status, self.code, self.message, self.details, self.headers)

    def http_exception(self) -> web.HTTPException:
        """The same error as an aiohttp HTTPException, for routes outside /api/ (no middleware there)."""
        exc_class = _HTTP_EXCEPTIONS.get(self.status, web.HTTPBadRequest)
        return exc_class(
            text=_dumps(error_body(self.code, self.message, self.details)),
            content_type="application/json",
            headers=self.headers,
        )


_HTTP_EXCEPTIONS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest,
    401: web.HTTPUnauthorized,
    403: web.HTTPForbidden,
    404: web.HTTPNotFound,
    429: web.HTTPTooManyRequests,
    503: web.HTTPServiceUnavailable,
}


def field_error(path: str, message: str) -> dict[str, str]:
    return {"path": path, "message": message}


def invalid_request(message: str, errors: list[dict[str, str]], code: str = "invalid_request") -> ApiError:
    """A 400 listing every problem as ``{"path", "message"}``."""
    return ApiError(400, code, message, {"errors": errors})


def config_error(exc: ConfigError, prefix: str = "config.") -> ApiError:
    """A ConfigError (``path: message`` lines) as a 400 ``invalid_config`` with request paths."""
    errors: list[dict[str, str]] = []
    for line in exc.errors:
        path, sep, message = line.partition(": ")
        if not sep:
            errors.append(field_error("config", line))
        elif path == "preset":
            errors.append(field_error("preset", message))
        else:
            errors.append(field_error(prefix + path, message))
    noun = "error" if len(errors) == 1 else "errors"
    return invalid_request(f"invalid configuration overrides ({len(errors)} {noun})", errors, "invalid_config")


def error_body(code: str, message: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"success": False, "error": {"code": code, "message": message, "details": dict(details or {})}}


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str)


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """A JSON response that is always valid JSON (no NaN/Infinity)."""
    return web.json_response(data, status=status, headers=headers, dumps=_dumps)


def error_response(
    status: int,
    code: str,
    message: str,
    details: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    return json_response(error_body(code, message, details), status=status, headers=headers)


def _route_label(request: web.Request) -> str:
    """The route template (bounded cardinality for the metric), not the concrete path."""
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    canonical = getattr(resource, "canonical", None)
    return canonical if isinstance(canonical, str) else "unmatched"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def api_error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every /api/ response: errors in the error shape, nothing leaks, each request counted."""
    if not request.path.startswith(API_PREFIX):
        return await handler(request)
    try:
        response = await handler(request)
    except ApiError as exc:
        response = exc.response()
    except DomainError as exc:
        response = domain_error_response(exc)
    except ConfigError as exc:
        response = config_error(exc).response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        if exc.content_type == "application/json":
            response = json_response(json.loads(exc.text or "{}"), status=exc.status, headers=_safe_headers(exc))
        else:
            response = _from_http_exception(request, exc)
    except Exception as exc:
        response = _unexpected(request, exc)
    metrics.API_REQUESTS.labels(_route_label(request), str(response.status)).inc()
    return response


def _unexpected(request: web.Request, exc: Exception) -> web.Response:
    """503 for a transient database fault (worker.retry's list: unreachable, restarting, read-only after a failover,
    a cancelled statement...), else 500 with a request id and no details."""
    if is_transient(exc):
        with contextlib.suppress(Exception):
            log.error(
                "api.database_unavailable",
                path=request.path,
                method=request.method,
                error=str(exc),
                error_type=type(exc).__name__,
            )
        return error_response(
            503, "database_unavailable", "the database is unreachable; try again shortly", headers={"Retry-After": "5"}
        )
    request_id = uuid.uuid4().hex
    # A broken log sink must not turn this answer into aiohttp's plain-text 500.
    with contextlib.suppress(Exception):
        log.error(
            "api.internal_error",
            path=request.path,
            method=request.method,
            request_id=request_id,
            error_type=type(exc).__name__,
            exc_info=True,
        )  # called inside the except
    return error_response(
        500,
        "internal_error",
        "internal error; the server log has the details under this request id",
        {"requestId": request_id},
    )


def _safe_headers(exc: web.HTTPException) -> dict[str, str]:
    keep = ("WWW-Authenticate", "Retry-After", "Allow")
    return {k: v for k, v in exc.headers.items() if k in keep}


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> web.Response:
    code = _STATUS_CODES.get(exc.status, "http_error" if exc.status < 500 else "internal_error")
    details: dict[str, Any] = {}
    if exc.status == 413:
        limit = request.app[CTX].settings.max_body_bytes
        message = f"request body too large; the limit is {limit} bytes"
        details = {"maxBytes": limit}
    elif exc.status == 404:
        message = f"no API endpoint at {request.path[:200]}"
    elif exc.status == 405:
        allowed = sorted(getattr(exc, "allowed_methods", ()) or ())
        message = f"method {request.method} is not allowed here" + (f"; use {', '.join(allowed)}" if allowed else "")
        details = {"allowed": allowed}
    else:
        message = exc.reason
    return error_response(exc.status, code, message, details, _safe_headers(exc))
