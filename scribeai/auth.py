"""Tokens (JWT HS256) and the identity of a connection or request."""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http.cookies import CookieError, SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt

from scribeai.errors import StartupCheckFailed, Unauthorized

log = logging.getLogger(__name__)
ANONYMOUS = "anonymous"
ADMIN_ROLE = "admin"
COOKIE_NAME = "scribeai_token"
USER_ID_MAX = 256


def secret_file(data_dir: Path) -> Path:
    """Where the server keeps the secret it generated (when SCRIBEAI_SECRET is empty)."""
    return Path(data_dir) / "secret.key"


def existing_secret(secret: str, data_dir: Path) -> tuple[str, str] | None:
    """The secret tokens are signed with and where it comes from (SCRIBEAI_SECRET or the file), without generating
    one: None when there is none yet. A file that cannot be read raises OSError."""
    if secret:
        return secret, "SCRIBEAI_SECRET"
    path = secret_file(data_dir)
    try:
        return path.read_text().strip(), str(path.resolve())
    except FileNotFoundError:
        return None


def load_secret(secret: str, data_dir: Path) -> str:
    """The configured secret, or one generated once into DATA_DIR/secret.key and reused after."""
    found = existing_secret(secret, data_dir)
    if found is not None:
        return found[0]
    path = secret_file(data_dir)
    value = secrets.token_urlsafe(48)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first
            return path.read_text().strip()
        with os.fdopen(fd, "w") as f:
            f.write(value)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise StartupCheckFailed(f"cannot write the generated token secret to {path}: {exc.strerror or exc} "
                                 "(make DATA_DIR writable, or set SCRIBEAI_SECRET)") from exc
    log.info("generated a new token secret in %s", path)
    return value


def create_token(secret: str, user_id: str, ttl_s: int | None = None, role: str | None = None) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": user_id, "iat": now}
    if ttl_s:
        claims["exp"] = now + ttl_s
    if role:
        claims["role"] = role
    return jwt.encode(claims, secret, algorithm="HS256")


@dataclass(frozen=True)
class Identity:
    user: str
    admin: bool  # may see the whole server's figures (a "role": "admin" claim, or listed in ADMIN_USERS)


class Authenticator:
    """Turns a token into an identity; with auth 'none' everyone is `anonymous`, an admin (one local user)."""

    def __init__(self, secret: str, mode: str = "jwt", admin_users: Iterable[str] = ()) -> None:
        if mode not in ("jwt", "none"):
            raise ValueError(f"SCRIBEAI_AUTH must be 'jwt' or 'none', not {mode!r}")
        self.secret = secret
        self.disabled = mode == "none"
        self.admin_users = frozenset(admin_users)

    def __repr__(self) -> str:
        return f"Authenticator(disabled={self.disabled}, admins={len(self.admin_users)})"

    def user_of(self, token: str | None) -> str:
        return self.identity_of(token).user

    def identity_of(self, token: str | None) -> Identity:
        if self.disabled:
            return Identity(ANONYMOUS, admin=True)
        if not token:
            raise Unauthorized("a token is required (auth.token, ?token=, Authorization: Bearer, or cookie)")
        try:
            claims = jwt.decode(token, self.secret, algorithms=["HS256"], options={"require": ["sub"]})
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"invalid token: {exc}") from exc
        sub = claims.get("sub")
        if not isinstance(sub, str) or not 0 < len(sub) <= USER_ID_MAX or "\x00" in sub:  # PostgreSQL text has no NUL
            raise Unauthorized("token has no valid sub")
        return Identity(sub, admin=claims.get("role") == ADMIN_ROLE or sub in self.admin_users)


def token_from_handshake(auth: Any, query_string: str, headers: Mapping[str, str]) -> str | None:
    """Token from `auth.token`, `?token=`, `Authorization: Bearer`, or the `scribeai_token` cookie, in that order."""
    if isinstance(auth, dict) and isinstance(auth.get("token"), str) and auth["token"]:
        return str(auth["token"])
    values = parse_qs(query_string or "").get("token")
    if values and values[0]:
        return values[0]
    return token_from_headers(headers)


def token_from_headers(headers: Mapping[str, str]) -> str | None:
    authorization = headers.get("Authorization") or headers.get("authorization") or ""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    cookie_header = headers.get("Cookie") or headers.get("cookie")
    if cookie_header:
        try:
            cookie = SimpleCookie(cookie_header)
        except CookieError:
            return None
        if COOKIE_NAME in cookie and cookie[COOKIE_NAME].value:
            return cookie[COOKIE_NAME].value
    return None
