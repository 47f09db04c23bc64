"""Every Actions-service endpoint of the client, against the simulator over real sockets."""

from __future__ import annotations

import asyncio

import pytest

from scaleset_listener.errors import (
    JobStillRunning,
    RunnerExists,
    RunnerGroupNotFound,
    ScaleSetNotFound,
    SessionConflict,
    SessionNotFound,
)
from scaleset_listener.session import MessageSession
from tests.conftest import GitHubSimFactory
from tests.scaleset_listener.test_listener import admin_client


async def test_runner_groups_resolve_by_name_and_default_needs_no_call(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory()
    group_id = sim.control.add_runner_group("gpu")
    async with admin_client(sim) as client:
        assert (await client.get_runner_group_by_name("default")).id == 1
        assert (await client.get_runner_group_by_name("gpu")).id == group_id
        with pytest.raises(RunnerGroupNotFound):
            await client.get_runner_group_by_name("absent")
    assert len(sim.control.requests(endpoint="runner_groups")) == 2


async def test_scale_set_find_get_create_update_delete(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory()
    async with admin_client(sim) as client:
        assert await client.find_scale_set("linux", 1) is None
        created = await client.create_scale_set("linux", 1, ["linux", "gpu"])
        assert [label.name for label in created.labels] == ["linux", "gpu"]
        found = await client.find_scale_set("linux", 1)
        assert found is not None
        assert found.id == created.id
        fetched = await client.get_scale_set(created.id)
        assert fetched is not None
        assert fetched.name == "linux"
        renamed = await client.update_scale_set(created.id, {"name": "linux-2"})
        assert renamed.name == "linux-2"
        await client.delete_scale_set(created.id)
        with pytest.raises(ScaleSetNotFound):
            await client.get_scale_set(created.id)
    (create,) = sim.control.requests(endpoint="create_scale_set")
    assert create["status"] == 200
    assert create["body"]["runnerSetting"] == {"disableUpdate": True}


async def test_session_create_conflict_refresh_and_delete(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory()
    async with admin_client(sim) as client:
        scale_set = await client.create_scale_set("linux", 1, ["linux"])
        session = await client.create_session(scale_set.id, "host-a")
        assert session.runner_scale_set is not None
        assert session.runner_scale_set.id == scale_set.id
        assert session.statistics is not None
        with pytest.raises(SessionConflict):
            await client.create_session(scale_set.id, "host-b")
        refreshed = await client.refresh_session(scale_set.id, session.session_id)
        assert refreshed.message_queue_access_token != session.message_queue_access_token
        await client.delete_session(scale_set.id, session.session_id)
        with pytest.raises(SessionNotFound):
            await client.delete_session(scale_set.id, session.session_id)
        with pytest.raises(ScaleSetNotFound):
            await client.create_session(scale_set.id + 100, "host-a")


async def test_closing_an_already_gone_session_is_quiet(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory()
    async with admin_client(sim) as client:
        scale_set = await client.create_scale_set("linux", 1, ["linux"])
        created = await client.create_session(scale_set.id, "host-a")
        session = MessageSession(client, client._http, scale_set.id, created)
        await client.delete_session(scale_set.id, created.session_id)
        await session.close()


async def test_acquirable_jobs_list_what_is_offered(github_sim_factory: GitHubSimFactory) -> None:
    sim = github_sim_factory(mode="ghes")
    async with admin_client(sim) as client:
        scale_set = await client.create_scale_set("linux", 1, ["linux"])
        assert await client.get_acquirable_jobs(scale_set.id) == []
        created = await client.create_session(scale_set.id, "host-a")
        session = MessageSession(client, client._http, scale_set.id, created)
        job_ids = sim.control.enqueue_jobs(["linux"], count=2)
        # Offers happen when the set's session polls and announces its capacity.
        await session.get_message(0, 5)
        offered = await client.get_acquirable_jobs(scale_set.id)
        assert sorted(job.runner_request_id for job in offered) == sorted(job_ids)
        assert await session.acquire_jobs(job_ids) == job_ids
        assert await client.get_acquirable_jobs(scale_set.id) == []
        await session.close()


async def test_runners_jit_config_lookup_and_removal(github_sim_factory: GitHubSimFactory) -> None:
    sim = github_sim_factory()
    async with admin_client(sim) as client:
        scale_set = await client.create_scale_set("linux", 1, ["linux"])
        jit = await client.generate_jit_config(scale_set.id, "linux-aaa")
        assert jit.runner.name == "linux-aaa"
        assert jit.encoded_jit_config not in repr(jit)
        with pytest.raises(RunnerExists):
            await client.generate_jit_config(scale_set.id, "linux-aaa")
        by_name = await client.get_runner_by_name("linux-aaa")
        assert by_name is not None
        assert by_name.id == jit.runner.id
        by_id = await client.get_runner(jit.runner.id)
        assert by_id is not None
        assert by_id.name == "linux-aaa"
        assert await client.get_runner_by_name("linux-zzz") is None
        assert await client.get_runner(jit.runner.id + 999) is None

        # A busy runner cannot be removed; once its job is over it can, and removing twice is fine.
        session = MessageSession(
            client, client._http, scale_set.id, await client.create_session(scale_set.id, "h")
        )
        sim.control.enqueue_jobs(["linux"], count=1)
        await session.get_message(0, 5)
        runner = await asyncio.to_thread(sim.control.connect_runner, jit.encoded_jit_config)
        await asyncio.to_thread(sim.control.runner_take_job, int(runner["id"]))
        with pytest.raises(JobStillRunning):
            await client.remove_runner(jit.runner.id)
        second = await client.generate_jit_config(scale_set.id, "linux-bbb")
        await client.remove_runner(second.runner.id)
        await client.remove_runner(second.runner.id)
        assert await client.get_runner(second.runner.id) is None
        await session.close()
