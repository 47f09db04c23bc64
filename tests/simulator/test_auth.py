"""Authentication and bootstrap: PATs, GitHub Apps, registration tokens, admin and queue tokens."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import GitHubSim, GitHubSimFactory
from tests.simulator.helpers import ACCEPT, Actions, jwt_claims

APP_ID = 4242
CLIENT_ID = "Iv1.simulated"
INSTALLATION = 77


def _keypair() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


@pytest.fixture(scope="module")
def app_keys() -> tuple[str, str]:
    return _keypair()


def _app_jwt(private_pem: str, **overrides: Any) -> str:
    now = int(time.time())
    claims = {"iat": now - 60, "exp": now + 480, "iss": CLIENT_ID, **overrides}
    # PyJWT refuses a numeric `iss`, which some clients send (orka: the numeric App ID).
    return jwt.PyJWS().encode(json.dumps(claims).encode(), private_pem, algorithm="RS256")


def _access_token(sim: GitHubSim, token: str, installation: int = INSTALLATION) -> httpx.Response:
    return httpx.post(
        f"{sim.api_url}/app/installations/{installation}/access_tokens",
        headers={
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/vnd.github+json",
        },
    )


@pytest.fixture
def app_sim(github_sim: GitHubSim, app_keys: tuple[str, str]) -> GitHubSim:
    github_sim.control.add_app(APP_ID, INSTALLATION, app_keys[1], client_id=CLIENT_ID)
    return github_sim


def test_pat_gets_a_registration_token_under_api_v3_and_at_the_root(github_sim: GitHubSim) -> None:
    for base in (github_sim.api_url, github_sim.base_url):
        response = httpx.post(
            f"{base}/orgs/acme/actions/runners/registration-token",
            headers={"Authorization": f"Bearer {github_sim.pat}"},
        )
        assert response.status_code == 201
        assert response.json()["token"]
        assert response.json()["expires_at"].endswith("Z")
        assert response.headers["X-GitHub-Request-Id"]


@pytest.mark.parametrize(
    "path", ["enterprises/big/actions", "repos/acme/app/actions", "orgs/acme/actions"]
)
def test_registration_token_exists_for_every_scope(github_sim: GitHubSim, path: str) -> None:
    response = httpx.post(
        f"{github_sim.api_url}/{path}/runners/registration-token",
        headers={"Authorization": f"Bearer {github_sim.pat}"},
    )
    assert response.status_code == 201


def test_unknown_pat_is_rejected_with_bad_credentials(github_sim: GitHubSim) -> None:
    response = httpx.post(
        f"{github_sim.api_url}/orgs/acme/actions/runners/registration-token",
        headers={"Authorization": "Bearer ghp_not_a_real_one"},
    )
    assert response.status_code == 401
    assert response.json()["message"] == "Bad credentials"


@pytest.mark.parametrize(
    ("path", "scope"),
    [
        ("enterprises/big/actions", "manage_runners:enterprise"),
        ("repos/acme/app/actions", "repo"),
        ("orgs/acme/actions", "admin:org"),
    ],
)
@pytest.mark.parametrize("endpoint", ["POST registration-token", "GET downloads"])
def test_a_pat_without_the_runner_admin_scope_is_refused_with_403(
    github_sim_factory: GitHubSimFactory, path: str, scope: str, endpoint: str
) -> None:
    limited = "ghp_read_org_only"
    sim = github_sim_factory(pats=("ghp_full", limited), pats_without_runner_admin=(limited,))
    method, name = endpoint.split()
    url = f"{sim.api_url}/{path}/runners/{name}"
    refused = httpx.request(method, url, headers={"Authorization": f"Bearer {limited}"})
    assert refused.status_code == 403
    assert refused.json()["message"] == "Must have admin rights to Repository."
    assert refused.headers["X-Accepted-OAuth-Scopes"] == scope
    accepted = httpx.request(method, url, headers={"Authorization": "Bearer ghp_full"})
    assert accepted.status_code in (200, 201)


def test_pat_added_through_the_control_api_is_accepted(github_sim: GitHubSim) -> None:
    github_sim.control.add_pat("ghp_added_later")
    response = httpx.post(
        f"{github_sim.api_url}/orgs/acme/actions/runners/registration-token",
        headers={"Authorization": "Bearer ghp_added_later"},
    )
    assert response.status_code == 201


@pytest.mark.parametrize("issuer", [CLIENT_ID, APP_ID, str(APP_ID)])
def test_app_jwt_by_client_id_or_app_id_gets_an_installation_token(
    app_sim: GitHubSim, app_keys: tuple[str, str], issuer: object
) -> None:
    response = _access_token(app_sim, _app_jwt(app_keys[0], iss=issuer))
    assert response.status_code == 201, response.text
    token = response.json()["token"]
    assert response.json()["expires_at"].endswith("Z")
    registration = httpx.post(
        f"{app_sim.api_url}/orgs/acme/actions/runners/registration-token",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert registration.status_code == 201


@pytest.mark.parametrize(
    ("path", "granted", "needed"),
    [
        ("orgs/acme/actions", {"administration": "write"}, "organization_self_hosted_runners"),
        (
            "orgs/acme/actions",
            {"organization_self_hosted_runners": "read"},
            "organization_self_hosted_runners",
        ),
        ("repos/acme/app/actions", {"organization_self_hosted_runners": "write"}, "administration"),
    ],
)
def test_an_app_without_the_runner_permission_is_refused_as_an_integration(
    github_sim: GitHubSim,
    app_keys: tuple[str, str],
    path: str,
    granted: dict[str, str],
    needed: str,
) -> None:
    github_sim.control.add_app(APP_ID, INSTALLATION, app_keys[1], permissions=granted)
    minted = _access_token(github_sim, _app_jwt(app_keys[0], iss=str(APP_ID)))
    assert minted.status_code == 201
    assert minted.json()["permissions"] == granted
    registration = httpx.post(
        f"{github_sim.api_url}/{path}/runners/registration-token",
        headers={"Authorization": f"Bearer {minted.json()['token']}"},
    )
    assert registration.status_code == 403
    assert registration.json()["message"] == "Resource not accessible by integration"
    assert registration.headers["X-Accepted-GitHub-Permissions"] == f"{needed}=write"


def test_an_app_is_refused_enterprise_runners(
    app_sim: GitHubSim, app_keys: tuple[str, str]
) -> None:
    token = _access_token(app_sim, _app_jwt(app_keys[0])).json()["token"]
    registration = httpx.post(
        f"{app_sim.api_url}/enterprises/big/actions/runners/registration-token",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert registration.status_code == 403
    assert registration.json()["message"] == "Resource not accessible by integration"


# Claims as offsets from the moment the test runs (not when it is collected: a long suite
# would otherwise age "issued in the future" into the allowed clock skew).
@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"exp": -5}, id="expired"),
        pytest.param({"iat": -60, "exp": 600}, id="too-long"),
        pytest.param({"iat": 300}, id="issued-in-the-future"),
        pytest.param({"iss": "someone-else"}, id="unknown-issuer"),
    ],
)
def test_bad_app_jwt_is_unauthorized(
    app_sim: GitHubSim, app_keys: tuple[str, str], claims: dict[str, Any]
) -> None:
    now = int(time.time())
    absolute = {k: now + v if isinstance(v, int) else v for k, v in claims.items()}
    assert _access_token(app_sim, _app_jwt(app_keys[0], **absolute)).status_code == 401


def test_app_jwt_signed_with_another_key_is_unauthorized(app_sim: GitHubSim) -> None:
    other_private, _ = _keypair()
    assert _access_token(app_sim, _app_jwt(other_private)).status_code == 401


def test_installation_of_another_app_is_not_found(
    app_sim: GitHubSim, app_keys: tuple[str, str]
) -> None:
    response = _access_token(app_sim, _app_jwt(app_keys[0]), installation=999)
    assert response.status_code == 404


def test_runner_registration_returns_the_tenant_and_a_jwt_admin_token(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory(admin_token_ttl=59)
    before = int(time.time())
    client = Actions(sim)
    after = time.time()
    assert client.tenant_url.startswith(sim.base_url + "/pipelines/")
    assert client.tenant_url.endswith("/")
    claims = jwt_claims(client.admin_token)
    # Issued (whole seconds) while the registration was answered: 59 s after that.
    assert before + 59 <= claims["exp"] <= after + 59
    client.close()


@pytest.mark.parametrize("url_path", ["acme", "ACME/", "/acme"])
def test_runner_registration_compares_only_the_path_case_insensitively(
    github_sim: GitHubSim, url_path: str
) -> None:
    token = httpx.post(
        f"{github_sim.api_url}/orgs/acme/actions/runners/registration-token",
        headers={"Authorization": f"Bearer {github_sim.pat}"},
    ).json()["token"]
    response = httpx.post(
        f"{github_sim.api_url}/actions/runner-registration",
        headers={"Authorization": f"RemoteAuth {token}"},
        json={"url": f"https://elsewhere.example/{url_path}", "runner_event": "register"},
    )
    assert response.status_code == 200


def test_runner_registration_rejects_a_url_outside_the_token_scope(github_sim: GitHubSim) -> None:
    token = httpx.post(
        f"{github_sim.api_url}/repos/acme/app/actions/runners/registration-token",
        headers={"Authorization": f"Bearer {github_sim.pat}"},
    ).json()["token"]
    response = httpx.post(
        f"{github_sim.api_url}/actions/runner-registration",
        headers={"Authorization": f"RemoteAuth {token}"},
        json={"url": github_sim.config_url("acme"), "runner_event": "register"},
    )
    assert response.status_code == 404


def test_runner_registration_needs_the_remoteauth_scheme(github_sim: GitHubSim) -> None:
    token = httpx.post(
        f"{github_sim.api_url}/orgs/acme/actions/runners/registration-token",
        headers={"Authorization": f"Bearer {github_sim.pat}"},
    ).json()["token"]
    response = httpx.post(
        f"{github_sim.api_url}/actions/runner-registration",
        headers={"Authorization": f"Bearer {token}"},
        json={"url": github_sim.config_url("acme"), "runner_event": "register"},
    )
    assert response.status_code == 401


def test_expired_admin_tokens_are_unauthorized_until_a_new_one_is_fetched(
    github_sim: GitHubSim, actions: Actions
) -> None:
    assert actions.call("GET", "_apis/runtime/runnergroups/").status_code == 200
    github_sim.control.expire_admin_tokens()
    stale = actions.call("GET", "_apis/runtime/runnergroups/")
    assert stale.status_code == 401
    assert stale.headers["ActivityId"]
    fresh = Actions(github_sim)
    assert fresh.call("GET", "_apis/runtime/runnergroups/").status_code == 200
    fresh.close()


def test_queue_token_is_refused_on_admin_calls_and_admin_token_on_queue_calls(
    actions: Actions,
) -> None:
    session = actions.create_session(actions.create_scale_set())
    assert (
        actions.call("GET", "_apis/runtime/runnergroups/", token=session.token).status_code == 401
    )
    poll = actions.poll(session, token=actions.admin_token)
    assert poll.status_code == 401
    assert poll.content == b""
    acquire = actions.call(
        "POST", f"_apis/runtime/runnerscalesets/{session.scale_set_id}/acquirejobs", json_body=[]
    )
    assert acquire.status_code == 401
    assert actions.ack(session, 100000000, token=actions.admin_token).status_code == 401


def test_actions_calls_need_the_api_version_query(actions: Actions) -> None:
    response = actions.http.get(
        actions.tenant_url + "_apis/runtime/runnergroups/",
        headers={"Authorization": f"Bearer {actions.admin_token}"},
    )
    assert response.status_code == 400
    assert "api-version" in response.json()["message"]


def test_get_message_needs_the_accept_header_with_api_version(actions: Actions) -> None:
    session = actions.create_session(actions.create_scale_set())
    response = actions.http.get(
        session.queue_url, headers={"Authorization": f"Bearer {session.token}"}
    )
    assert response.status_code == 400
    assert actions.poll(session).status_code == 202


@pytest.mark.parametrize("github_sim", [{"strict": False}], indirect=True)
def test_lenient_mode_skips_the_api_version_checks(actions: Actions) -> None:
    response = actions.http.get(
        actions.tenant_url + "_apis/runtime/runnergroups/",
        headers={"Authorization": f"Bearer {actions.admin_token}", "Accept": ACCEPT},
    )
    assert response.status_code == 200
