"""What the real runner gives a job about the event that triggered it: GITHUB_EVENT_NAME,
GITHUB_REPOSITORY, GITHUB_REF, GITHUB_HEAD_REF, GITHUB_BASE_REF, and the webhook payload it writes
to GITHUB_EVENT_PATH, shaped like GitHub's (the fields a job policy reads, and their neighbours).

For a pull request (`pull_request`, `pull_request_target`, `pull_request_review`...), the head
repository is `head_repository` (owner/name; None: the base repository itself, a same-repository
pull request). As on GitHub: `pull_request` runs on `refs/pull/<n>/merge`, `pull_request_target`
on the base branch, and GITHUB_HEAD_REF/GITHUB_BASE_REF are set for pull requests only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]


@dataclass(frozen=True)
class JobEvent:
    """The event of one job, as its runner sees it."""

    event_name: str
    owner: str
    repository: str
    ref: str
    head_ref: str
    base_ref: str
    payload: JSON

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.repository}"

    def runner_env(self) -> dict[str, str]:
        """The GITHUB_* variables the runner sets for a job's steps and hooks (the payload's
        path, GITHUB_EVENT_PATH, is the runner's to choose)."""
        return {
            "GITHUB_EVENT_NAME": self.event_name,
            "GITHUB_REPOSITORY": self.full_name,
            "GITHUB_REPOSITORY_OWNER": self.owner,
            "GITHUB_REF": self.ref,
            "GITHUB_REF_NAME": self.ref.rsplit("/", 1)[-1] if self.ref else "",
            "GITHUB_HEAD_REF": self.head_ref,
            "GITHUB_BASE_REF": self.base_ref,
        }


def _sha(*parts: object) -> str:
    return hashlib.sha1("/".join(map(str, parts)).encode(), usedforsecurity=False).hexdigest()


def _repository(full_name: str, *, fork: bool) -> JSON:
    owner, _, name = full_name.partition("/")
    return {
        "id": int(_sha(full_name)[:8], 16),
        "name": name,
        "full_name": full_name,
        "private": False,
        "owner": {"login": owner, "type": "Organization"},
        "fork": fork,
        "default_branch": "main",
        "html_url": f"https://github.com/{full_name}",
    }


def is_pull_request_event(event_name: str) -> bool:
    return event_name.startswith("pull_request")


def job_event(
    event_name: str,
    owner: str,
    repository: str,
    *,
    ref: str | None = None,
    head_ref: str | None = None,
    base_ref: str | None = None,
    head_repository: str | None = None,
    number: int = 1,
    sender: str = "octocat",
) -> JobEvent:
    """The event `event_name` on `owner/repository`, with GitHub's defaults for what is left
    out: a push to refs/heads/main; a pull request #`number` from branch `feature` into main."""
    full_name = f"{owner}/{repository}"
    base = _repository(full_name, fork=False)
    common: JSON = {"repository": base, "sender": {"login": sender, "type": "User"}}
    if is_pull_request_event(event_name):
        head_ref = head_ref or "feature"
        base_ref = base_ref or "main"
        head_full = head_repository or full_name
        head = _repository(head_full, fork=head_full.lower() != full_name.lower())
        if ref is None:
            ref = (
                f"refs/heads/{base_ref}"
                if event_name == "pull_request_target"
                else f"refs/pull/{number}/merge"
            )
        payload: JSON = {
            "action": "opened",
            "number": number,
            "pull_request": {
                "number": number,
                "state": "open",
                "title": f"Change #{number}",
                "user": {"login": sender},
                "head": {
                    "label": f"{head['owner']['login']}:{head_ref}",
                    "ref": head_ref,
                    "sha": _sha(head_full, head_ref),
                    "repo": head,
                },
                "base": {
                    "label": f"{owner}:{base_ref}",
                    "ref": base_ref,
                    "sha": _sha(full_name, base_ref),
                    "repo": base,
                },
            },
            **common,
        }
        return JobEvent(event_name, owner, repository, ref, head_ref, base_ref, payload)
    ref = ref or "refs/heads/main"
    if event_name == "push":
        payload = {
            "ref": ref,
            "before": _sha(full_name, ref, "before"),
            "after": _sha(full_name, ref),
            "pusher": {"name": sender},
            **common,
        }
    elif event_name == "workflow_dispatch":
        payload = {"ref": ref, "inputs": {}, **common}
    else:
        payload = dict(common)
    return JobEvent(event_name, owner, repository, ref, "", "", payload)
