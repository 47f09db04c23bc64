"""The listener's exception tree. Adapters translate third-party errors into these, once.

    ListenerError
    ├── ConfigError                    a setting is missing or wrong (fails at start)
    │   └── InvalidConfigURL           GITHUB_URL is not an enterprise, org or repository URL
    ├── TransportFailure               the request never got an HTTP answer (connect, read, reset)
    ├── GitHubAPIError                 the GitHub REST API answered with an unexpected status
    │   └── AuthenticationFailed       401/403 from token minting, registration or the exchange
    ├── ActionsError                   the Actions service / broker answered with an error
    │   ├── ScaleSetNotFound           RunnerScaleSetNotFoundException (the set was deleted)
    │   ├── SessionConflict            RunnerScaleSetSessionConflictException (another live session)
    │   ├── SessionNotFound            RunnerScaleSetSessionExpiredException or a refresh 404
    │   ├── RunnerExists               AgentExistsException (JIT config for a taken name)
    │   ├── RunnerNotFound             AgentNotFoundException
    │   ├── JobStillRunning            JobStillRunningException (the runner is busy)
    │   ├── QueueTokenExpired          401 on a message-queue call
    │   └── RunnerGroupNotFound        no runner group has that name
    └── ProtocolError                  a 2xx answer we cannot use (bad JSON, missing fields)

Every HTTP error carries the method, the URL (never a token: tokens travel in headers only), the
status and GitHub's correlation ids, so an operator can quote them in a support ticket.
"""

from __future__ import annotations


class ListenerError(Exception):
    """Base of every error the listener raises on purpose."""


class ConfigError(ListenerError):
    """A setting is missing or has a bad value."""


class InvalidConfigURL(ConfigError):
    """GITHUB_URL does not point to an enterprise, an organization or a repository."""


class TransportFailure(ListenerError):
    """The request got no HTTP answer: connection refused or reset, timeout, protocol error."""

    def __init__(self, method: str, url: str, reason: str) -> None:
        self.method = method
        self.url = url
        self.reason = reason
        super().__init__(f"{method} {url}: {reason}")


class HTTPStatusError(ListenerError):
    """An HTTP answer with a status the caller did not expect."""

    def __init__(
        self,
        method: str,
        url: str,
        status: int,
        message: str,
        *,
        type_name: str = "",
        activity_id: str = "",
        request_id: str = "",
        retry_after: float | None = None,
    ) -> None:
        self.method = method
        self.url = url
        self.status = status
        self.message = message
        self.type_name = type_name
        self.activity_id = activity_id
        self.request_id = request_id
        self.retry_after = retry_after
        ids = ", ".join(
            part
            for part in (
                f"activity_id={activity_id}" if activity_id else "",
                f"github_request_id={request_id}" if request_id else "",
            )
            if part
        )
        kind = f" {type_name.split(',')[0].rsplit('.', 1)[-1]}" if type_name else ""
        super().__init__(
            f"{method} {url} -> {status}{kind}: {message}" + (f" ({ids})" if ids else "")
        )

    @property
    def is_transient(self) -> bool:
        """429 and 5xx other than 501 are worth retrying; everything else is final."""
        return self.status == 429 or (self.status >= 500 and self.status != 501)


class GitHubAPIError(HTTPStatusError):
    """The GitHub REST API (token, registration) answered with an error."""


class AuthenticationFailed(GitHubAPIError):
    """GitHub refused our credentials (401/403)."""


class ActionsError(HTTPStatusError):
    """The Actions service or its message broker answered with an error."""


class ScaleSetNotFound(ActionsError):
    """The runner scale set does not exist (any more)."""


class SessionConflict(ActionsError):
    """Another message session is live on this scale set."""


class SessionNotFound(ActionsError):
    """The session id is unknown to the service: expired, deleted or evicted."""


class RunnerExists(ActionsError):
    """A runner with that name is already registered."""


class RunnerNotFound(ActionsError):
    """No runner with that id or name."""


class JobStillRunning(ActionsError):
    """The runner is running a job and cannot be removed now."""


class QueueTokenExpired(ActionsError):
    """The message-queue token was rejected (401): refresh the session."""


class RunnerGroupNotFound(ActionsError):
    """No runner group has the configured name."""


class ProtocolError(ListenerError):
    """A successful answer that does not have the shape the protocol promises."""


# Substrings of the service's `typeName` (e.g. "GitHub.Actions.Runtime.WebApi.X, GitHub...")
# mapped to the class a caller branches on. Checked in order; first match wins.
ACTIONS_EXCEPTIONS: tuple[tuple[str, type[ActionsError]], ...] = (
    ("RunnerScaleSetNotFoundException", ScaleSetNotFound),
    ("RunnerScaleSetSessionConflictException", SessionConflict),
    ("RunnerScaleSetSessionExpiredException", SessionNotFound),
    ("AgentExistsException", RunnerExists),
    ("AgentNotFoundException", RunnerNotFound),
    ("JobStillRunningException", JobStillRunning),
)


def classify_actions_error(type_name: str) -> type[ActionsError]:
    """The most specific ActionsError class for an error body's `typeName` and status."""
    for needle, cls in ACTIONS_EXCEPTIONS:
        if needle in type_name:
            return cls
    return ActionsError
