"""Who may call what: PATs, GitHub Apps and their installation tokens, registration tokens, admin
tokens, and the temporary download tokens GHES hands out. Message-queue tokens belong to their
session (sessions.py)."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from simulator.github.tokens import QUEUE, App, unverified_app_issuer

if TYPE_CHECKING:
    from simulator.github.world import World


@dataclass
class RegistrationToken:
    token: str
    scope_path: str
    expires: float


@dataclass
class InstallationToken:
    token: str
    installation_id: int
    expires: float


class Credentials:
    def __init__(self, world: World) -> None:
        self._world = world
        self._ledger = world.ledger
        self.pats: set[str] = set(world.config.pats)
        self.apps: dict[str, App] = {}
        self.installation_tokens: dict[str, InstallationToken] = {}
        self.registration_tokens: dict[str, RegistrationToken] = {}
        # Bumped to invalidate every admin token issued so far.
        self.admin_epoch = 0
        # GHES hands out a temporary token with each runner download; kept to recognise them.
        self.download_tokens: set[str] = set()

    def issue_registration_token(self, scope_path: str) -> RegistrationToken:
        token = RegistrationToken(
            token="AREG" + secrets.token_hex(14).upper(),
            scope_path=scope_path,
            expires=time.time() + self._world.config.registration_token_ttl,
        )
        self.registration_tokens[token.token] = token
        self._ledger.count("registration_tokens_issued")
        self._ledger.event("registration_token_issued", scope=scope_path)
        return token

    def issue_installation_token(self, installation_id: int) -> InstallationToken:
        token = InstallationToken(
            token="ghs_" + secrets.token_hex(18),
            installation_id=installation_id,
            expires=time.time() + self._world.config.installation_token_ttl,
        )
        self.installation_tokens[token.token] = token
        self._ledger.count("installation_tokens_issued")
        self._ledger.event("installation_token_issued", installation_id=installation_id)
        return token

    def installation_app(self, token: str) -> App | None:
        """The App whose installation `token` was issued for (None: not an installation token)."""
        issued = self.installation_tokens.get(token)
        if issued is None:
            return None
        for app in self.apps.values():
            if issued.installation_id in app.installation_ids:
                return app
        return None

    def issue_admin_token(self, scope_path: str) -> str:
        token, _ = self._world.issuer.issue(
            "admin", self._world.config.admin_token_ttl, epoch=self.admin_epoch, scope=scope_path
        )
        self._ledger.count("admin_tokens_issued")
        self._ledger.event("admin_token_issued", scope=scope_path)
        return token

    def issue_download_token(self) -> str:
        token = secrets.token_urlsafe(24)
        self.download_tokens.add(token)
        return token

    def admin_token_valid(self, token: str) -> bool:
        claims = self._world.issuer.decode(token)
        return (
            claims is not None
            and claims.get("typ") == "admin"
            and claims.get("epoch") == self.admin_epoch
        )

    def expire_admin_tokens(self) -> None:
        self.admin_epoch += 1
        self._ledger.event("admin_tokens_expired", epoch=self.admin_epoch)

    def credential_valid(self, token: str) -> bool:
        """A PAT or an unexpired installation token (what the REST API accepts)."""
        if token in self.pats:
            return True
        inst = self.installation_tokens.get(token)
        return inst is not None and inst.expires > time.time()

    def token_kind(self, authorization: str | None) -> str:
        """What a request's Authorization header carries, for the request log."""
        if not authorization:
            return "none"
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() == "remoteauth":
            return "registration" if token in self.registration_tokens else "invalid"
        if scheme.lower() not in ("bearer", "token") or not token:
            return "invalid"
        if token in self.pats:
            return "pat"
        if token in self.installation_tokens:
            return "installation"
        if token in self.download_tokens:
            return "temp_download"
        kind = self._world.issuer.peek_kind(token)
        if kind in ("admin", QUEUE):
            return kind
        if unverified_app_issuer(token) is not None:
            return "app_jwt"
        return "invalid"
