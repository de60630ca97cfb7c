"""Bearer-token authentication with two roles, for the API and any other route that wants it.

Tokens are configured in ``AUTO_PROMOTION_API_TOKENS`` as comma-separated ``name:role:sha256hex`` entries:
only the SHA-256 of each token is stored, so the environment never holds a usable secret. A request's token
is hashed and compared with every entry in constant time.

Roles: ``viewer`` may read (every GET, and the ``check`` action); ``operator`` may also change things
(``scan``, ``promote``, ``rollback``). Other modules call ``require_role(request, "viewer")``; the ops module
guards /metrics with ``require_metrics_access(request)``.

The dashboard's pages, fragments and ``/events`` also accept the token from a sign-in cookie
(``authenticate_viewer``): a browser's EventSource cannot send an Authorization header. The cookie is
``HttpOnly`` and ``SameSite=Strict`` and is only ever read for those GETs; ``require_role`` (the API, every
write) never looks at cookies, so no request a cookie authenticates can change anything (no CSRF to defend).
"""

from __future__ import annotations

import hashlib
import hmac

import structlog
from aiohttp import web

from worker.config import Settings
from worker.http.app import CTX
from worker.http.errors import ApiError
from worker.http.tokens import (
    ROLES,
    TOKEN_NAME,
    TOKEN_PREFIX,
    TOKENS_ENV,
    Principal,
    Role,
    TokenEntry,
    check_name,
    generate_token,
    hash_token,
    parse_tokens,
    token_entry,
)

# The token names are tokens.py's (re-exported: other modules import them from here).
__all__ = [
    "ANONYMOUS",
    "AUTH",
    "ROLES",
    "SESSION_COOKIE",
    "TOKENS_ENV",
    "TOKEN_NAME",
    "TOKEN_PREFIX",
    "Authenticator",
    "Principal",
    "Role",
    "TokenEntry",
    "authenticate_viewer",
    "authenticator",
    "check_name",
    "generate_token",
    "hash_token",
    "install",
    "parse_tokens",
    "require_metrics_access",
    "require_role",
    "token_entry",
]

log = structlog.get_logger("worker.http.auth")

_REALM = 'Bearer realm="autopromote"'
ANONYMOUS = "anonymous"
# The dashboard's sign-in cookie: it holds the token itself, so that revoking the token ends the sign-in.
SESSION_COOKIE = "autopromote_token"


class Authenticator:
    """Resolves an ``Authorization`` header to a Principal, or raises the 401."""

    def __init__(self, entries: tuple[TokenEntry, ...], *, enabled: bool = True) -> None:
        self.entries = entries
        self.enabled = enabled

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator:
        """ConfigError when a token entry is malformed."""
        return cls(parse_tokens(settings.api_tokens), enabled=settings.api_auth == "enabled")

    def _lookup(self, token: str) -> TokenEntry | None:
        presented = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found: TokenEntry | None = None
        # Compare with every entry, without stopping at a match, so timing says nothing about which matched.
        for entry in self.entries:
            if hmac.compare_digest(presented, entry.digest):
                found = entry
        return found

    def verify(self, token: str) -> Principal | None:
        """The principal of a known token (the dashboard's sign-in form), None for an unknown one."""
        entry = self._lookup(token) if token else None
        return entry.principal() if entry is not None else None

    def authenticate(self, authorization: str | None) -> Principal:
        """The caller; ApiError 401 (with WWW-Authenticate) when auth is on and the token is missing or unknown."""
        token = _bearer_token(authorization)
        if not self.enabled:
            entry = self._lookup(token) if token else None
            return Principal(entry.name if entry else ANONYMOUS, "operator", authenticated=False)
        if authorization is None or not authorization.strip():
            raise ApiError(
                401,
                "unauthorized",
                "authentication required: send 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": _REALM},
            )
        if token is None:
            raise ApiError(
                401,
                "unauthorized",
                "malformed Authorization header: expected 'Bearer <token>'",
                headers={"WWW-Authenticate": f'{_REALM}, error="invalid_request"'},
            )
        entry = self._lookup(token)
        if entry is None:
            raise ApiError(
                401,
                "unauthorized",
                "unknown or revoked token",
                headers={"WWW-Authenticate": f'{_REALM}, error="invalid_token"'},
            )
        return entry.principal()


def _bearer_token(authorization: str | None) -> str | None:
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


AUTH: web.AppKey[Authenticator] = web.AppKey("auth", Authenticator)
_PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
# Kept apart from _PRINCIPAL so that a cookie-authenticated caller can never satisfy require_role.
_VIEWER: web.RequestKey[Principal] = web.RequestKey("viewer", Principal)


def install(app: web.Application, settings: Settings) -> Authenticator:
    """Build the authenticator once at startup (ConfigError on malformed tokens) and say loudly if it is off."""
    auth = Authenticator.from_settings(settings)
    app[AUTH] = auth
    if not auth.enabled:
        log.warning(
            "api.auth_disabled",
            message="AUTO_PROMOTION_API_AUTH=disabled: every caller is an operator; never do this in production",
        )
    elif not auth.entries:
        log.warning(
            "api.no_tokens",
            message=f"{TOKENS_ENV} is empty: every API call will be refused with 401; create a token "
            "with `autopromote token create --name NAME --role ROLE`",
        )
    return auth


def authenticator(request: web.Request) -> Authenticator:
    """The application's authenticator (built from the settings when the API module is not installed)."""
    return _authenticator(request)


def _authenticator(request: web.Request) -> Authenticator:
    auth = request.app.get(AUTH)
    if auth is None:  # the API module is not installed: build it from the settings (cheap)
        auth = Authenticator.from_settings(request.app[CTX].settings)
    return auth


async def require_role(request: web.Request, role: Role) -> Principal:
    """The authenticated caller if it holds ``role``; raises a JSON 401/403 HTTPException otherwise.

    Works on any route (the exception carries its own JSON body), and is idempotent per request.
    """
    principal = request.get(_PRINCIPAL)
    try:
        if not isinstance(principal, Principal):
            principal = _authenticator(request).authenticate(request.headers.get("Authorization"))
            request[_PRINCIPAL] = principal
        if not principal.has_role(role):
            raise ApiError(
                403,
                "forbidden",
                f"this needs the {role} role; token {principal.name!r} is a {principal.role}",
                {"requiredRole": role, "role": principal.role},
                headers={"WWW-Authenticate": f'{_REALM}, error="insufficient_scope"'},
            )
    except ApiError as exc:
        raise exc.http_exception() from None
    return principal


async def require_metrics_access(request: web.Request) -> Principal | None:
    """For /metrics: None when the endpoint is open (the default), else the viewer check of require_role."""
    if not request.app[CTX].settings.metrics_auth:
        return None
    return await require_role(request, "viewer")


def authenticate_viewer(request: web.Request) -> Principal:
    """For the dashboard's GETs: the caller by its bearer header like the API, else by the sign-in cookie.

    Raises ApiError 401 (the caller renders it as a sign-in page or as JSON). A header, when present, wins, so
    a script's wrong token is reported as such rather than hidden by a browser's cookie. Every role may view.
    """
    principal = request.get(_VIEWER)
    if isinstance(principal, Principal):
        return principal
    auth = _authenticator(request)
    authorization = request.headers.get("Authorization")
    if not auth.enabled or (authorization is not None and authorization.strip()):
        principal = auth.authenticate(authorization)
    else:
        token = request.cookies.get(SESSION_COOKIE)
        if not token:
            raise ApiError(
                401,
                "unauthorized",
                "sign in at /sign-in with a viewer or operator token, or send 'Authorization: Bearer <token>'",
                {"signIn": "/sign-in"},
                headers={"WWW-Authenticate": _REALM},
            )
        principal = auth.verify(token)
        if principal is None:
            raise ApiError(
                401,
                "unauthorized",
                "the token you signed in with is unknown or was revoked; sign in again at /sign-in",
                {"signIn": "/sign-in"},
                headers={"WWW-Authenticate": f'{_REALM}, error="invalid_token"'},
            )
    request[_VIEWER] = principal
    return principal
