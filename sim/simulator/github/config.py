"""Knobs of the simulated GitHub + Actions service.

Defaults suit tests (short long poll, lenient nothing, strict protocol checks). The CLI overrides
the few that a demo wants to be realistic (a 50 s long poll).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_PAT = "ghp_simulator_default_pat"
# A runner release number, as GitHub tags them without the leading "v".
VERSION_PATTERN = r"^\d+\.\d+\.\d+$"

Mode = Literal["github.com", "ghes"]


class SimulatorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    pats: tuple[str, ...] = (DEFAULT_PAT,)
    # Classic PATs (also listed in `pats`) that authenticate but lack the scope runner
    # administration needs (admin:org for an organization, repo for a repository,
    # manage_runners:enterprise for an enterprise): GitHub refuses them with 403 on the
    # registration-token and runner-downloads endpoints, as it does for such a token.
    pats_without_runner_admin: tuple[str, ...] = ()
    # github.com: queued jobs are assigned directly (JobAssigned); ghes: they are offered
    # (JobAvailable) and only assigned once the listener acquires them.
    mode: Mode = "github.com"
    long_poll_timeout: float = Field(default=0.5, ge=0)
    admin_token_ttl: float = Field(default=3600.0, gt=0)
    queue_token_ttl: float = Field(default=3600.0, gt=0)
    installation_token_ttl: float = Field(default=3600.0, gt=0)
    registration_token_ttl: float = Field(default=3600.0, gt=0)
    # Allowed clock skew for the App JWT's `iat` lying in the future.
    app_jwt_skew: float = Field(default=30.0, ge=0)
    # None: assigned jobs wait for a runner forever. Otherwise they are withdrawn after this many
    # seconds (JobCompleted canceled, no runner) and re-queued after a growing delay.
    assign_timeout: float | None = Field(default=None, gt=0)
    max_reassignments: int = Field(default=3, ge=0)
    reassign_base_delay: float = Field(default=0.05, ge=0)
    # None: a session lives until deleted/evicted. Otherwise a session whose client has not been
    # seen (poll, refresh) for this many seconds is dropped, as the real service eventually does.
    session_abandon_timeout: float | None = Field(default=None, gt=0)
    # Protocol checks: api-version query on Actions calls, the Accept header on get message and
    # the queue URL's query string on the broker.
    strict: bool = True
    # Idle runners pick up assigned jobs of their scale set by themselves (demo); tests drive
    # runners explicitly through the control API.
    auto_take: bool = False
    # A running job that has a `duration` finishes by itself after it.
    auto_finish: bool = True
    # Treat message ids <= lastMessageId as acknowledged (an option; the real service's
    # semantics are unpublished: docs/architecture.md#the-long-poll).
    implicit_ack: bool = False
    # Status for DELETE of an unknown message id: 204 (lenient) or 404.
    unknown_ack_status: Literal[204, 404] = 204
    max_batch: int = Field(default=50, ge=1)
    tenant_id: str = "AbCdEfSim0123"
    # Base URL to put into returned URLs; None means the address the server is bound to.
    public_url: str | None = None
    seed: int | None = None
    # The runner releases at start (and after a reset): the newest one, published this many
    # days ago. More are announced through the control API.
    runner_version: str = Field(default="2.331.0", pattern=VERSION_PATTERN)
    runner_version_age_days: float = Field(default=1.0, ge=0)
    # GitHub's runner policy: registering needs at least this version, and a runner gets no
    # messages once a newer release has been out for more than `runner_deprecation_days`.
    runner_min_version: str = Field(default="2.329.0", pattern=VERSION_PATTERN)
    runner_deprecation_days: float = Field(default=30.0, ge=0)

    def patched(self, changes: dict[str, Any]) -> SimulatorConfig:
        return SimulatorConfig.model_validate({**self.model_dump(), **changes})
