"""API tokens without the web server: the roles, the ``AUTO_PROMOTION_API_TOKENS`` entries (``name:role:sha256hex``)
and making a new token. ``autopromote token create`` uses this module alone, so that it (and ``--help``) does not
load the server; ``auth.py`` authenticates requests with it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Literal, get_args

from worker.config import ConfigError

Role = Literal["viewer", "operator"]
ROLES: tuple[str, ...] = get_args(Role)
_RANK: dict[str, int] = {"viewer": 1, "operator": 2}
TOKENS_ENV = "AUTO_PROMOTION_API_TOKENS"
TOKEN_PREFIX = "ap_"  # noqa: S105  # a public marker for secret scanners, not a secret
TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


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
