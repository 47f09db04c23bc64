"""The runner pool is listed once for every scale set asking at the same time, over real sockets.

GitHub's pool listing (`pools/0/agents`) returns the runners of every scale set whatever set
asks, so the scalers of many sets share one request; each still gets only its own set's runners.
"""

from __future__ import annotations

import asyncio

import pytest

from scaleset_listener.errors import ActionsError
from tests.conftest import GitHubSim, GitHubSimFactory
from tests.scaleset_listener.test_listener import admin_client, register_runner

pytestmark = pytest.mark.timeout(30)


def pool_listings(sim: GitHubSim) -> int:
    counts = sim.control.request_counts()["by_endpoint"]
    return int(counts.get("find_runner", 0))


async def test_sets_asking_together_share_one_listing_and_each_gets_its_own_runners(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory()
    linux = int(sim.control.create_scale_set("linux")["id"])
    arm = int(sim.control.create_scale_set("arm")["id"])
    linux_runners = {await register_runner(sim, linux, f"linux-{i}") for i in range(3)}
    arm_runners = {await register_runner(sim, arm, "arm-0")}
    async with admin_client(sim) as client:
        before = pool_listings(sim)
        answers = await asyncio.gather(
            *(client.list_runners(scale_set) for scale_set in [linux, arm] * 10)
        )
        assert pool_listings(sim) == before + 1
        assert all({r.id for r in answer} == linux_runners for answer in answers[0::2])
        assert all({r.id for r in answer} == arm_runners for answer in answers[1::2])

        # A call after that listing ended is answered by a new one: it sees a new runner.
        added = await register_runner(sim, arm, "arm-1")
        again = await client.list_runners(arm)
        assert pool_listings(sim) == before + 2
        assert {r.id for r in again} == arm_runners | {added}


async def test_a_failed_listing_fails_every_set_that_shared_it_and_the_next_call_asks_again(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory()
    linux = int(sim.control.create_scale_set("linux")["id"])
    arm = int(sim.control.create_scale_set("arm")["id"])
    runner = await register_runner(sim, linux, "linux-0")
    sim.control.add_fault("find_runner", status=403, times=1)
    async with admin_client(sim) as client:
        answers = await asyncio.gather(
            client.list_runners(linux), client.list_runners(arm), return_exceptions=True
        )
        assert all(isinstance(answer, ActionsError) for answer in answers)
        assert [r.id for r in await client.list_runners(linux)] == [runner]
    assert pool_listings(sim) == 2
