"""Tokens the simulator issues and checks.

Admin and message-queue tokens are real JWTs (HS256 with a per-process secret) because clients
read their `exp` claim to decide when to refresh. Everything else (PATs, installation and
registration tokens) is an opaque random string remembered by the world.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jwt

ADMIN = "admin"
QUEUE = "queue"

# The permission runner administration needs, per kind of scope, as GitHub names it in an
# installation's permissions and in X-Accepted-GitHub-Permissions.
RUNNER_ADMIN_PERMISSION = {"org": "organization_self_hosted_runners", "repo": "administration"}
DEFAULT_APP_PERMISSIONS = {"organization_self_hosted_runners": "write", "administration": "write"}


@dataclass(frozen=True)
class App:
    app_id: str
    client_id: str | None
    installation_ids: frozenset[int]
    public_key_pem: str
    # What the App was granted, in the names GitHub's API uses (an installation token's
    # `permissions`). By default what a runner scale set needs at either scope.
    permissions: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_APP_PERMISSIONS))


class AppJwtError(Exception):
    pass


class JwtIssuer:
    def __init__(self) -> None:
        self._secret = secrets.token_bytes(32)

    def issue(self, kind: str, ttl: float, **claims: Any) -> tuple[str, str]:
        """Return (token, jti)."""
        now = int(time.time())
        jti = uuid.uuid4().hex
        payload = {
            "typ": kind,
            "jti": jti,
            "iat": now,
            "nbf": now,
            "exp": now + max(1, round(ttl)),
            "iss": "simulator.github",
            **claims,
        }
        return jwt.encode(payload, self._secret, algorithm="HS256"), jti

    def decode(self, token: str) -> dict[str, Any] | None:
        """Claims of a token this process issued and that has not expired, else None."""
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self._secret, algorithms=["HS256"], options={"require": ["exp", "typ"]}
            )
        except jwt.PyJWTError:
            return None
        return claims

    def peek_kind(self, token: str) -> str | None:
        """The `typ` of one of our tokens even when expired, for the request log."""
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=["HS256"], options={"verify_exp": False}
            )
        except jwt.PyJWTError:
            return None
        kind = claims.get("typ")
        return kind if isinstance(kind, str) else None


def unverified_app_issuer(token: str) -> str | None:
    """The `iss` of an RS256 JWT, without checking anything (to find which App to verify with)."""
    try:
        header = jwt.get_unverified_header(token)
        if header.get("alg") != "RS256":
            return None
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    iss = claims.get("iss")
    if isinstance(iss, int | str) and not isinstance(iss, bool):
        return str(iss)
    return None


def verify_app_jwt(token: str, apps: dict[str, App], skew: float) -> App:
    """Check an App JWT the way GitHub documents it; return the App it authenticates."""
    issuer = unverified_app_issuer(token)
    if issuer is None:
        raise AppJwtError("'Issuer' claim ('iss') must be an Integer or a String")
    app = next((a for a in apps.values() if issuer in (a.app_id, a.client_id)), None)
    if app is None:
        raise AppJwtError(f"Integration not found for issuer {issuer}")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            app.public_key_pem,
            algorithms=["RS256"],
            options={"require": ["exp", "iat", "iss"], "verify_iat": False},
        )
    except jwt.ExpiredSignatureError as exc:
        raise AppJwtError("'Expiration time' claim ('exp') must be a future time") from exc
    except jwt.PyJWTError as exc:
        raise AppJwtError(f"A JSON web token could not be decoded: {exc}") from exc
    iat, exp = claims["iat"], claims["exp"]
    if not isinstance(iat, int | float) or not isinstance(exp, int | float):
        raise AppJwtError("'iat' and 'exp' must be numbers")
    if iat > time.time() + skew:
        raise AppJwtError("'Issued at' claim ('iat') must be an Integer representing the time")
    if exp - iat > 600:
        raise AppJwtError("'Expiration time' claim ('exp') is too far in the future")
    return app


def opaque(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(27).replace("-", "x").replace("_", "y")
