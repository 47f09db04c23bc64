"""GitHub App auth against the simulator: JWT -> installation token -> registration -> admin."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from scaleset_listener.config import Settings
from tests.conftest import GitHubSim, GitHubSimFactory
from tests.scaleset_listener.test_faults import demand_still_flows, session_is_open
from tests.scaleset_listener.test_listener import live_sessions, wait_state
from tests.testsupport.listener_harness import make_settings, running_service

APP_ID = 31337
INSTALLATION_ID = 4711


def app_settings(sim: GitHubSim, tmp_path: Path, fmt: serialization.PrivateFormat) -> Settings:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    sim.control.add_app(APP_ID, INSTALLATION_ID, public.decode())
    pem = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    return make_settings(
        sim.config_url(),
        None,
        github_app_id=str(APP_ID),
        github_app_installation_id=INSTALLATION_ID,
        github_app_private_key=pem.decode(),
    )


@pytest.mark.parametrize(
    "fmt", [serialization.PrivateFormat.TraditionalOpenSSL, serialization.PrivateFormat.PKCS8]
)
async def test_an_app_key_in_either_pem_format_opens_a_session(
    github_sim_factory: GitHubSimFactory, tmp_path: Path, fmt: serialization.PrivateFormat
) -> None:
    sim = github_sim_factory()
    async with running_service(app_settings(sim, tmp_path, fmt)) as service:
        await session_is_open(sim)
        await demand_still_flows(sim, service)
    kinds = {(r["endpoint"], r["token_kind"]) for r in sim.control.requests()}
    assert ("access_tokens", "app_jwt") in kinds
    assert ("registration_token", "installation") in kinds
    assert ("runner_registration", "registration") in kinds


async def test_the_installation_token_is_kept_until_close_to_expiry(
    github_sim_factory: GitHubSimFactory, tmp_path: Path
) -> None:
    sim = github_sim_factory()
    settings = app_settings(sim, tmp_path, serialization.PrivateFormat.PKCS8)
    async with running_service(settings) as service:
        state = await session_is_open(sim)
        for _ in range(2):
            before = sim.control.requests()[-1]["seq"]
            sim.control.expire_admin_tokens()
            sim.control.expire_queue_token(live_sessions(state)[0]["id"])
            refresh = await asyncio.to_thread(
                sim.control.wait_for_request,
                lambda r: r["endpoint"] == "refresh_session" and r["status"] == 200,
                5.0,
                before,
            )
            # The poll retried with the new token must succeed before the next round.
            await asyncio.to_thread(
                sim.control.wait_for_request,
                lambda r: r["endpoint"] == "get_message" and r["status"] in (200, 202),
                5.0,
                refresh["seq"],
            )
        await demand_still_flows(sim, service)
    # Three admin exchanges, one installation token (it lives an hour).
    assert len(sim.control.requests(endpoint="runner_registration")) == 3
    assert len(sim.control.requests(endpoint="access_tokens")) == 1


async def test_an_installation_token_near_expiry_is_replaced(
    github_sim_factory: GitHubSimFactory, tmp_path: Path
) -> None:
    # Under the 5-minute margin: every exchange needs a fresh installation token.
    sim = github_sim_factory(installation_token_ttl=120)
    settings = app_settings(sim, tmp_path, serialization.PrivateFormat.PKCS8)
    async with running_service(settings) as service:
        state = await session_is_open(sim)
        sim.control.expire_admin_tokens()
        sim.control.expire_queue_token(live_sessions(state)[0]["id"])
        await wait_state(sim, lambda s: s["counters"].get("sessions_refreshed", 0) == 1)
        await demand_still_flows(sim, service)
    assert len(sim.control.requests(endpoint="access_tokens")) == 2


async def test_a_jwt_for_another_app_is_refused(
    github_sim_factory: GitHubSimFactory, tmp_path: Path
) -> None:
    sim = github_sim_factory()
    settings = app_settings(sim, tmp_path, serialization.PrivateFormat.PKCS8)
    # Register a different public key under the same App id: our signature no longer verifies.
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    sim.control.add_app(
        APP_ID,
        INSTALLATION_ID,
        other.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode(),
    )
    async with running_service(settings) as service:
        exit_code = await service.shutdown() if service.task.done() else await service.task
    assert exit_code == 1
    assert [r["status"] for r in sim.control.requests(endpoint="access_tokens")] == [401]
