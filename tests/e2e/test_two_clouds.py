"""Two scale sets on two clouds served by one listener process: the second set's RUNNERS entry
names another clouds.yaml entry (`cloud`), so its VMs go there and only there."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from simulator.e2e_world import E2EWorld, make_guests
from simulator.openstack.cloudsyaml import APP_CREDENTIAL_CLOUD, clouds_yaml_text
from simulator.openstack.control import CloudControl
from simulator.openstack.server import run_in_thread as run_cloud

SECOND_SET = "e2e-gpu"
SECOND_CLOUD = "west"


def two_clouds_yaml(path: Path, first_url: str, second_url: str) -> Path:
    """clouds.yaml with the first cloud as `sim` (OS_CLOUD) and the second as SECOND_CLOUD
    (the simulator's own entries, the second's renamed)."""
    first = clouds_yaml_text(first_url)
    second = clouds_yaml_text(second_url).split("\nclouds:\n", 1)[1]
    second = second.replace(f"  {APP_CREDENTIAL_CLOUD}:", f"  {SECOND_CLOUD}:")
    second = second.replace(f"  {APP_CREDENTIAL_CLOUD}-password:", f"  {SECOND_CLOUD}-password:")
    path.write_text(f"{first.rstrip()}\n{second}", encoding="utf-8")
    return path


def created_names(control: CloudControl) -> set[str]:
    """The names of the servers the cloud accepted to create (its own request log)."""
    return {
        str(record.body["server"]["name"])
        for record in control.requests(endpoint="compute.servers.create")
        if record.status == 202
    }


@pytest.mark.timeout(120)
def test_two_scale_sets_on_two_clouds_each_served_on_its_own(world: E2EWorld) -> None:
    with contextlib.ExitStack() as stack:
        west = stack.enter_context(run_cloud(world.cloud_config))
        west_control = stack.enter_context(CloudControl(west.base_url))
        west_guests = make_guests(world.guest_kind, world.github.base_url, west.base_url)
        stack.enter_context(west_guests)
        clouds_yaml = two_clouds_yaml(
            world.directory / "two-clouds.yaml", world.cloud.base_url, west.base_url
        )
        runners = [
            {"name": world.scale_set, "max_runners": world.max_runners},
            {"name": SECOND_SET, "max_runners": 2, "cloud": SECOND_CLOUD},
        ]
        listener = world.start_listener(
            RUNNERS=json.dumps(runners), OS_CLIENT_CONFIG_FILE=str(clouds_yaml)
        )
        listener.log.wait_for(
            lambda: len(listener.log.named("session_created")) == 2,
            timeout=30,
            what="a session per scale set",
        )
        world.queue_jobs(3, duration=0.5)
        ids = world.github.control.enqueue_jobs([SECOND_SET], 3, duration=0.5)
        world.queued.update(dict.fromkeys(ids, "succeeded"))

        world.wait_served(timeout=60)
        world.wait_clean(timeout=20)

        east_created = created_names(world.cloud_control)
        west_created = created_names(west_control)
        assert len(east_created) >= 1
        assert all(name.startswith(f"{world.scale_set}-") for name in east_created)
        assert len(west_created) >= 1
        assert all(name.startswith(f"{SECOND_SET}-") for name in west_created)
        # Every job ran on a runner of its own set (so on its set's cloud).
        jobs = {job["id"]: job for job in world.jobs()}
        assert all(jobs[i]["runner_name"] in west_created for i in ids)
        # Nothing leaks on the second cloud either (the world judges the first).
        west_guests.wait_for(lambda: not west_control.state()["servers"], 20)

        assert listener.stop(timeout=15) == 0
    assert world.violations() == []
