"""Getting from a PAT or a GitHub App to the Actions service's URL and admin token.

The chain (docs/architecture.md#authentication-chain, docs/architecture.md#admin-token):

    PAT ───────────────────────────────┐
    App key -JWT-> installation token ─┴─> registration token -RemoteAuth-> (URL, admin JWT)

* The App JWT is RS256, `iat` backdated 60 s for clock skew, `exp` 9 minutes after `iat`.
* Installation tokens last an hour; we keep one until 5 minutes before it expires.
* The admin token is a JWT whose `exp` we read without verifying; it is refreshed when less than
  60 s remain, under a lock so concurrent callers trigger one refresh, not many.
* Refresh failures keep nothing half-updated: the old connection stays until a new one exists.

This is the only module that imports PyJWT.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from scaleset_listener.errors import (
    AuthenticationFailed,
    ConfigError,
    GitHubAPIError,
    ProtocolError,
)
from scaleset_listener.github_urls import GitHubTarget
from scaleset_listener.http import HttpChannel

Clock = Callable[[], float]

APP_JWT_BACKDATE = 60.0
APP_JWT_LIFETIME = 540.0
ADMIN_TOKEN_MARGIN = 60.0
INSTALLATION_TOKEN_MARGIN = 300.0
GITHUB_JSON = "application/vnd.github+json"


def load_app_private_key(pem: str) -> RSAPrivateKey:
    """Parse the App's key (PKCS#1 or PKCS#8 PEM); ConfigError names the variable on failure."""
    try:
        key = load_pem_private_key(pem.strip().encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            "GITHUB_APP_PRIVATE_KEY: not a PEM RSA private key (PKCS#1 "
            "'BEGIN RSA PRIVATE KEY' or PKCS#8 'BEGIN PRIVATE KEY'), or it is encrypted"
        ) from exc
    if not isinstance(key, RSAPrivateKey):
        raise ConfigError("GITHUB_APP_PRIVATE_KEY: GitHub Apps use RSA keys; this key is not RSA")
    return key


class AppJWTSigner:
    """Mints the short-lived JWT a GitHub App authenticates with."""

    def __init__(self, app_id: str, private_key_pem: str, clock: Clock = time.time) -> None:
        self._app_id = app_id
        self._key = load_app_private_key(private_key_pem)
        self._clock = clock

    def __repr__(self) -> str:
        return f"AppJWTSigner(app_id={self._app_id!r})"

    def mint(self) -> str:
        issued_at = int(self._clock() - APP_JWT_BACKDATE)
        claims = {"iat": issued_at, "exp": issued_at + int(APP_JWT_LIFETIME), "iss": self._app_id}
        return jwt.encode(claims, self._key, algorithm="RS256")


class Credential(Protocol):
    """Something that yields a token GitHub's REST API accepts as `Bearer`."""

    async def token(self) -> str: ...


class PersonalAccessToken:
    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "PersonalAccessToken(****)"

    async def token(self) -> str:
        return self._token


class AppInstallation:
    """A GitHub App installation token, minted from the App JWT and kept until near expiry."""

    def __init__(
        self,
        signer: AppJWTSigner,
        installation_id: int,
        api_url: str,
        http: HttpChannel,
        clock: Clock = time.time,
    ) -> None:
        self._signer = signer
        self._installation_id = installation_id
        self._api_url = api_url
        self._http = http
        self._clock = clock
        self._token = ""
        self._expires_at = 0.0
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"AppInstallation(installation_id={self._installation_id})"

    async def token(self) -> str:
        async with self._lock:
            if not self._token or self._clock() + INSTALLATION_TOKEN_MARGIN >= self._expires_at:
                self._token, self._expires_at = await self._mint()
            return self._token

    async def _mint(self) -> tuple[str, float]:
        what = "create installation access token"
        answer = await self._http.request(
            "POST",
            f"{self._api_url}/app/installations/{self._installation_id}/access_tokens",
            expected={201},
            service=GitHubAPIError,
            headers={"Authorization": f"Bearer {self._signer.mint()}", "Accept": GITHUB_JSON},
            what=what,
        )
        data = answer.json(what)
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise ProtocolError(f"{what}: no token in the answer")
        return token, _parse_expiry(data.get("expires_at"), self._clock() + 3600.0)


def _parse_expiry(value: object, default: float) -> float:
    if isinstance(value, str) and value:
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return default
    return default


@dataclass(frozen=True)
class AdminConnection:
    """The Actions service's URL and the admin token for it."""

    service_url: str
    token: str = field(repr=False)
    expires_at: float


def token_expiry(token: str) -> float:
    """The `exp` claim of a JWT, read without verifying the signature (we are not its audience)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise ProtocolError("the admin token is not a JWT") from exc
    expiry = claims.get("exp")
    if not isinstance(expiry, int | float):
        raise ProtocolError("the admin token has no exp claim")
    return float(expiry)


class ActionsAdminAuth:
    """Keeps a valid AdminConnection; refreshes it 60 s before the admin token expires."""

    def __init__(
        self,
        target: GitHubTarget,
        credential: Credential,
        http: HttpChannel,
        clock: Clock = time.time,
    ) -> None:
        self._target = target
        self._credential = credential
        self._http = http
        self._clock = clock
        self._connection: AdminConnection | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"ActionsAdminAuth(config_url={self._target.config_url!r})"

    async def connection(self) -> AdminConnection:
        async with self._lock:
            current = self._connection
            if current is None or self._clock() + ADMIN_TOKEN_MARGIN > current.expires_at:
                current = self._connection = await self._exchange()
            return current

    def invalidate(self, stale: AdminConnection) -> None:
        """Forget `stale` (the service rejected it) so the next call fetches a new one."""
        if self._connection is stale:
            self._connection = None

    async def _registration_token(self) -> str:
        what = "create registration token"
        credential = await self._credential.token()
        answer = await self._http.request(
            "POST",
            self._target.api_url + self._target.registration_token_path,
            expected={201},
            service=GitHubAPIError,
            headers={
                "Authorization": f"Bearer {credential}",
                "Content-Type": "application/vnd.github.v3+json",
            },
            what=what,
        )
        data = answer.json(what)
        token = data.get("token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token:
            raise ProtocolError(f"{what}: no token in the answer")
        return token

    async def _exchange(self) -> AdminConnection:
        what = "runner registration"
        registration_token = await self._registration_token()
        answer = await self._http.request(
            "POST",
            f"{self._target.api_url}/actions/runner-registration",
            expected=range(200, 300),
            service=GitHubAPIError,
            headers={
                "Authorization": f"RemoteAuth {registration_token}",
                "Content-Type": "application/json",
            },
            json_body={"url": self._target.config_url, "runner_event": "register"},
            what=what,
            # GitHub answers 401/403 here transiently right after minting
            # (docs/architecture.md#authentication-chain).
            also_retry=lambda exc: isinstance(exc, AuthenticationFailed),
        )
        data = answer.json(what)
        if not isinstance(data, dict):
            raise ProtocolError(f"{what}: answer is not a JSON object")
        url, token = data.get("url"), data.get("token")
        if not isinstance(url, str) or not url or not isinstance(token, str) or not token:
            raise ProtocolError(f"{what}: answer lacks the service url or the token")
        return AdminConnection(service_url=url, token=token, expires_at=token_expiry(token))


def build_credential(
    *,
    target: GitHubTarget,
    http: HttpChannel,
    pat: str | None,
    app_id: str,
    installation_id: int | None,
    private_key_pem: str | None,
    clock: Clock = time.time,
) -> Credential:
    """The App installation when an App is configured, otherwise the PAT."""
    if app_id and installation_id is not None and private_key_pem is not None:
        signer = AppJWTSigner(app_id, private_key_pem, clock)
        return AppInstallation(signer, installation_id, target.api_url, http, clock)
    if pat:
        return PersonalAccessToken(pat)
    raise ConfigError("GITHUB_TOKEN: no GitHub credentials configured")
