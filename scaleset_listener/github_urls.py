"""Where a config URL (GITHUB_URL) points: its scope, the REST API base, the token endpoint.

Pure functions (docs/architecture.md#config-url-and-api-base). "Hosted" hosts are github.com,
its www alias, github.localhost and *.ghe.com; every other host is GHES, whose API lives at
`<host>/api/v3`. The scheme and any port are kept, so http URLs work for labs and tests.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from scaleset_listener.errors import InvalidConfigURL


class Scope(enum.Enum):
    REPOSITORY = "repository"
    ORGANIZATION = "organization"
    ENTERPRISE = "enterprise"


@dataclass(frozen=True)
class GitHubTarget:
    """A parsed GITHUB_URL and the REST API base that serves it."""

    config_url: str
    scope: Scope
    owner: str  # the organization, the repository's owner, or the enterprise slug
    repository: str
    api_url: str

    @property
    def is_hosted(self) -> bool:
        return not self.api_url.endswith("/api/v3")

    @property
    def registration_token_path(self) -> str:
        """The REST path (relative to the API base) that mints a runner registration token."""
        owner = quote(self.owner, safe="")
        if self.scope is Scope.ENTERPRISE:
            return f"/enterprises/{owner}/actions/runners/registration-token"
        if self.scope is Scope.ORGANIZATION:
            return f"/orgs/{owner}/actions/runners/registration-token"
        repository = quote(self.repository, safe="")
        return f"/repos/{owner}/{repository}/actions/runners/registration-token"

    @property
    def runner_downloads_path(self) -> str:
        """The REST path listing the runner release this scope wants (per OS and architecture).

        Same scope as the registration token: GHES answers with the version it ships."""
        return self.registration_token_path.removesuffix("/registration-token") + "/downloads"


_HOSTED = frozenset({"github.com", "www.github.com", "github.localhost"})


def _is_hosted_host(hostname: str) -> bool:
    hostname = hostname.lower()
    return hostname in _HOSTED or hostname.endswith(".ghe.com")


def derive_api_url(config_url: str) -> str:
    """The REST API base for a config URL: api.github.com, api.<tenant>.ghe.com or GHES /api/v3."""
    parts = urlsplit(config_url)
    hostname = (parts.hostname or "").lower()
    port = f":{parts.port}" if parts.port else ""
    if hostname in ("github.com", "www.github.com"):
        return f"{parts.scheme}://api.github.com{port}"
    if _is_hosted_host(hostname):
        return f"{parts.scheme}://api.{hostname}{port}"
    return f"{parts.scheme}://{parts.netloc}/api/v3"


def parse_github_url(url: str, api_url: str | None = None) -> GitHubTarget:
    """Parse GITHUB_URL into a target; `api_url` (GITHUB_API_URL) overrides the derived base."""
    trimmed = url.strip().strip("/")
    parts = urlsplit(trimmed)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidConfigURL(
            f"{url!r} is not an http(s) URL; expected e.g. https://github.com/my-org"
        )
    segments = [segment for segment in parts.path.strip("/").split("/") if segment]
    if len(segments) == 1:
        scope, owner, repository = Scope.ORGANIZATION, segments[0], ""
    elif len(segments) == 2 and segments[0].lower() == "enterprises":
        scope, owner, repository = Scope.ENTERPRISE, segments[1], ""
    elif len(segments) == 2:
        scope, owner, repository = Scope.REPOSITORY, segments[0], segments[1]
    else:
        raise InvalidConfigURL(
            f"{url!r} should point to an enterprise (/enterprises/NAME), "
            "an organization (/ORG) or a repository (/OWNER/REPO)"
        )
    base = (api_url or "").strip().rstrip("/") or derive_api_url(trimmed)
    return GitHubTarget(
        config_url=trimmed, scope=scope, owner=owner, repository=repository, api_url=base
    )
