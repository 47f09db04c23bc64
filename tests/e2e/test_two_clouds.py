"""Two scale sets on two clouds served by one listener process: the second set's RUNNERS entry
names another clouds.yaml entry (`cloud`), so its VMs go there and only there. The second (the
"GPU" set) carries a job policy that refuses forks' pull requests on the VM; the first serves
them."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulator.e2e_world import E2EWorld, make_guests
from simulator.github.config import SimulatorConfig
from simulator.openstack.cloudsyaml import clouds_yaml_entries, clouds_yaml_text
from simulator.openstack.control import CloudControl
from simulator.openstack.server import run_in_thread as run_cloud
from tests.e2e.guests import GUESTS

SECOND_SET = "e2e-gpu"
SECOND_CLOUD = "west"
FORK_HEAD = "mallory/app"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[E2EWorld]:
    # The runners report each job's result, as on GitHub (no auto_finish): a refused job's
    # result is the policy's doing.
    github = SimulatorConfig(long_poll_timeout=1.0, session_abandon_timeout=2.0, auto_finish=False)
    with E2EWorld(tmp_path, guest_kind=GUESTS, github_config=github) as running:
        yield running


def two_clouds_yaml(path: Path, first_url: str, second_url: str) -> Path:
    """clouds.yaml with the first cloud as `sim` (OS_CLOUD) and the second as SECOND_CLOUD."""
    first = clouds_yaml_text(first_url).rstrip()
    path.write_text(f"{first}\n{clouds_yaml_entries(second_url, SECOND_CLOUD)}", encoding="utf-8")
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
            {
                "name": SECOND_SET,
                "max_runners": 2,
                "cloud": SECOND_CLOUD,
                "job_policy": {"fork_pull_requests": False},
            },
        ]
        listener = world.start_listener(
            RUNNERS=json.dumps(runners), OS_CLIENT_CONFIG_FILE=str(clouds_yaml)
        )
        listener.log.wait_for(
            lambda: len(listener.log.named("session_created")) == 2,
            timeout=30,
            what="a session per scale set",
        )
        control = world.github.control
        world.queue_jobs(2, duration=0.5)
        [first_fork] = control.enqueue_jobs(
            [world.scale_set], event_name="pull_request", head_repository=FORK_HEAD, duration=0.5
        )
        ids = control.enqueue_jobs([SECOND_SET], 2, duration=0.5)
        [second_fork] = control.enqueue_jobs(
            [SECOND_SET], event_name="pull_request", head_repository=FORK_HEAD, duration=0.5
        )
        world.queued.update(dict.fromkeys(ids, "succeeded"))
        world.queued.update({first_fork: "succeeded", second_fork: "failed"})

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
        assert all(jobs[i]["runner_name"] in west_created for i in [*ids, second_fork])
        assert jobs[first_fork]["runner_name"] in east_created
        # The fork's pull request ran on the first set; on the second the policy refused it.
        assert (jobs[first_fork]["result"], jobs[second_fork]["result"]) == (
            "succeeded",
            "failed",
        )
        west_logs = "".join(
            path.read_text()
            for path in west_guests.root.glob("vms/*/cloud-init-output.log")  # type: ignore[attr-defined]
        )
        assert (
            f"scaleset-listener job policy: a pull request from the fork {FORK_HEAD} is not "
            f"allowed on scale set {SECOND_SET}"
        ) in west_logs
        # Nothing leaks on the second cloud either (the world judges the first).
        west_guests.wait_for(lambda: not west_control.state()["servers"], 20)

        assert listener.stop(timeout=15) == 0
    assert world.violations() == []
