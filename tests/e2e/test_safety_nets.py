"""A VM's own safety net powers an idle runner's VM off; the listener (a subprocess) cleans it up
like any powered-off VM: registration removed, server deleted, and demand refilled."""

import json

import pytest

from simulator.e2e_world import SCALE_SET, E2EWorld


@pytest.mark.timeout(120)
def test_a_vm_its_idle_net_powered_off_is_cleaned_up_and_replaced(world: E2EWorld) -> None:
    # A warm runner (min_runners=1) is within demand: the listener keeps it idle, so only the
    # VM's own idle net (VM_IDLE_SHUTDOWN) ends it.
    runners = [{"name": SCALE_SET, "labels": ["e2e"], "min_runners": 1, "max_runners": 2}]
    listener = world.start_listener(RUNNERS=json.dumps(runners), VM_IDLE_SHUTDOWN="4s")
    listener.log.wait_event("session_created", timeout=30)
    world.wait_github(lambda state: any(r["state"] == "idle" for r in state["runners"]), timeout=60)
    [first] = world.servers()
    name = first["name"]
    vm_dir = world.guests.sandbox_vm(name).dir  # type: ignore[attr-defined]

    world.wait_cloud(
        lambda servers: name not in {s["name"] for s in servers} and len(servers) == 1,
        timeout=60,
    )
    world.wait_github(lambda state: name not in {r["name"] for r in state["runners"]}, timeout=30)

    console = (vm_dir / "console").read_text().splitlines()
    assert f"SCALESET-RUNNER safety-poweroff runner={name} reason=idle" in console
    deleted = world.cloud_control.requests(endpoint="compute.servers.delete")
    assert len(deleted) == 1
    [replacement] = world.servers()
    assert replacement["name"] != name
    assert listener.stop(timeout=15) == 0
