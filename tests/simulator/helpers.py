"""A deliberately naive protocol client on plain httpx, for exercising the simulator.

It is not the project's client: the simulator's tests must not depend on the code they are meant
to check.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import httpx

from tests.conftest import GitHubSim

API_VERSION = "6.0-preview"
ACCEPT = "application/json; api-version=6.0-preview"


def type_name_of(response: httpx.Response) -> str:
    return str(response.json()["typeName"])


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return claims


@dataclass
class Session:
    id: str
    scale_set_id: int
    queue_url: str
    token: str
    raw: dict[str, Any]


class Actions:
    """Bootstraps like a listener (PAT -> registration token -> admin token) and speaks
    the Actions service and broker protocol with explicit, visible requests."""

    def __init__(self, sim: GitHubSim, org: str = "acme") -> None:
        self.sim = sim
        self.http = httpx.Client(timeout=10)
        registration = self.http.post(
            f"{sim.api_url}/orgs/{org}/actions/runners/registration-token",
            headers={"Authorization": f"Bearer {sim.pat}"},
        )
        assert registration.status_code == 201, registration.text
        exchanged = self.http.post(
            f"{sim.api_url}/actions/runner-registration",
            headers={"Authorization": f"RemoteAuth {registration.json()['token']}"},
            json={"url": sim.config_url(org), "runner_event": "register"},
        )
        assert exchanged.status_code == 200, exchanged.text
        self.tenant_url: str = exchanged.json()["url"]
        self.admin_token: str = exchanged.json()["token"]

    def close(self) -> None:
        self.http.close()

    def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        token: str | None = None,
    ) -> httpx.Response:
        return self.http.request(
            method,
            self.tenant_url + path,
            params={**(params or {}), "api-version": API_VERSION},
            json=json_body,
            headers={
                "Authorization": f"Bearer {token or self.admin_token}",
                "Content-Type": "application/json",
            },
        )

    def create_scale_set(self, name: str = "linux", labels: tuple[str, ...] = ()) -> int:
        body = {
            "name": name,
            "runnerGroupId": 1,
            "labels": [{"type": "System", "name": label} for label in (labels or (name,))],
            "RunnerSetting": {"disableUpdate": True},
            "createdOn": "0001-01-01T00:00:00Z",
        }
        response = self.call("POST", "_apis/runtime/runnerscalesets", json_body=body)
        assert response.status_code == 200, response.text
        return int(response.json()["id"])

    def create_session(self, scale_set_id: int, owner: str = "host-1") -> Session:
        response = self.call(
            "POST",
            f"_apis/runtime/runnerscalesets/{scale_set_id}/sessions",
            json_body={"ownerName": owner, "sessionId": "00000000-0000-0000-0000-000000000000"},
        )
        assert response.status_code == 200, response.text
        return self.session_from(response.json())

    @staticmethod
    def session_from(body: dict[str, Any]) -> Session:
        return Session(
            id=body["sessionId"],
            scale_set_id=body["runnerScaleSet"]["id"],
            queue_url=body["messageQueueUrl"],
            token=body["messageQueueAccessToken"],
            raw=body,
        )

    def poll(
        self,
        session: Session,
        last_message_id: int = 0,
        capacity: int | None = 10,
        token: str | None = None,
        timeout: float = 10,
    ) -> httpx.Response:
        url = httpx.URL(session.queue_url)
        if last_message_id > 0:
            url = url.copy_merge_params({"lastMessageId": str(last_message_id)})
        headers = {"Accept": ACCEPT, "Authorization": f"Bearer {token or session.token}"}
        if capacity is not None:
            headers["X-ScaleSetMaxCapacity"] = str(capacity)
        return self.http.get(url, headers=headers, timeout=timeout)

    def ack(self, session: Session, message_id: int, token: str | None = None) -> httpx.Response:
        url = httpx.URL(session.queue_url)
        url = url.copy_with(path=f"{url.path}/{message_id}")
        return self.http.delete(
            url,
            headers={
                "Authorization": f"Bearer {token or session.token}",
                "Content-Type": "application/json",
            },
        )

    def job_messages(self, response: httpx.Response) -> list[dict[str, Any]]:
        assert response.status_code == 200, (response.status_code, response.text)
        body = response.json()["body"]
        assert isinstance(body, str)
        items: list[dict[str, Any]] = json.loads(body) if body else []
        return items

    def receive(self, session: Session, capacity: int | None = 10) -> list[dict[str, Any]]:
        """Poll once, expect a message, acknowledge it, return its job messages."""
        response = self.poll(session, capacity=capacity)
        items = self.job_messages(response)
        assert self.ack(session, response.json()["messageId"]).status_code == 204
        return items

    def generate_jit(self, scale_set_id: int, name: str) -> httpx.Response:
        return self.call(
            "POST",
            f"_apis/runtime/runnerscalesets/{scale_set_id}/generatejitconfig",
            json_body={"name": name, "workFolder": ""},
        )

    def start_runner(self, scale_set_id: int, name: str) -> int:
        """Register a runner with a JIT config and bring it online; returns its id."""
        response = self.generate_jit(scale_set_id, name)
        assert response.status_code == 200, response.text
        self.sim.control.connect_runner(response.json()["encodedJITConfig"])
        return int(response.json()["runner"]["id"])
