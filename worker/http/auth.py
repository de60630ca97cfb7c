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
import re
import secrets
from dataclasses import dataclass
from typing import Literal, get_args

import structlog
from aiohttp import web

from worker.config import ConfigError, Settings
from worker.http.app import CTX
from worker.http.errors import ApiError

log = structlog.get_logger("worker.http.auth")

Role = Literal["viewer", "operator"]
ROLES: tuple[str, ...] = get_args(Role)
_RANK: dict[str, int] = {"viewer": 1, "operator": 2}
TOKENS_ENV = "AUTO_PROMOTION_API_TOKENS"
TOKEN_PREFIX = "ap_"  # noqa: S105  # a public marker for secret scanners, not a secret
TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_REALM = 'Bearer realm="autopromote"'
ANONYMOUS = "anonymous"
# The dashboard's sign-in cookie: it holds the token itself, so that revoking the token ends the sign-in.
SESSION_COOKIE = "autopromote_token"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's name (the audit actor) and its role."""

    name: str
    role: Role
    authenticated: bool = True

    def has_role(self, role: Role) -> bool:
        return _RANK[self.role] >= _RANK[role]


@dataclass(frozen=True, slots=True)
class TokenEntry:
    name: str
    role: Role
    digest: bytes  # SHA-256 of the token

    def principal(self) -> Principal:
        return Principal(self.name, self.role)


def hash_token(token: str) -> str:
    """The hex SHA-256 of a token, as stored in ``AUTO_PROMOTION_API_TOKENS``."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def generate_token() -> str:
    """A new random token (256 bits); the prefix lets secret scanners recognise it."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_entry(name: str, role: str, token: str) -> str:
    """The ``name:role:sha256hex`` entry for a token; ValueError on a bad name or role."""
    check_name(name)
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    return f"{name}:{role}:{hash_token(token)}"


def check_name(name: str) -> str:
    """A token name is what the audit log shows as the actor: short, printable, no separators."""
    if not TOKEN_NAME.fullmatch(name):
        raise ValueError(
            "name must be 1-64 characters of letters, digits, '.', '_', '@' or '-', starting with a letter or "
            f"digit, got {name[:70]!r}"
        )
    return name


def parse_tokens(raw: str) -> tuple[TokenEntry, ...]:
    """Parse ``AUTO_PROMOTION_API_TOKENS``; ConfigError lists every malformed entry (the hashes are never echoed).

    Only the name and role of an entry appear in messages: a token pasted in place of its hash must not end
    up in a log.
    """
    text = raw.strip()
    if not text:
        return ()
    entries: list[TokenEntry] = []
    errors: list[str] = []
    seen_names: dict[str, int] = {}
    seen_digests: dict[bytes, str] = {}
    for index, item in enumerate(text.split(","), start=1):
        where = f"{TOKENS_ENV} entry {index}"
        part = item.strip()
        if not part:
            errors.append(f"{where}: is empty; remove the extra comma")
            continue
        fields = part.split(":")
        if len(fields) != 3:
            errors.append(f"{where}: expected name:role:sha256hex, got {len(fields)} colon-separated field(s)")
            continue
        name, role, digest_hex = (f.strip() for f in fields)
        problems: list[str] = []
        try:
            check_name(name)
        except ValueError as exc:
            problems.append(str(exc))
            name = ""
        else:
            where = f"{where} ({name})"
        if role not in ROLES:
            shown = repr(role) if re.fullmatch(r"[A-Za-z_-]{1,20}", role) else "a value"
            problems.append(f"role must be one of {', '.join(ROLES)}, got {shown}")
        if not _HEX64.fullmatch(digest_hex):
            problems.append(
                f"the hash must be 64 hexadecimal characters, got {len(digest_hex)} character(s); store the "
                "SHA-256 printed by `autopromote token create`, never the token itself"
            )
        if problems:
            errors.extend(f"{where}: {p}" for p in problems)
            continue
        digest = bytes.fromhex(digest_hex)
        if name in seen_names:
            errors.append(f"{where}: the name is also used by entry {seen_names[name]}; names must be unique")
            continue
        if digest in seen_digests:
            errors.append(f"{where}: same token hash as {seen_digests[digest]!r}; each name needs its own token")
            continue
        seen_names[name] = index
        seen_digests[digest] = name
        entries.append(TokenEntry(name, role, digest))  # type: ignore[arg-type]  # role checked against ROLES
    if errors:
        raise ConfigError(errors)
    return tuple(entries)


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
