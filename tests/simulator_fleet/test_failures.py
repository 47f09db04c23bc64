"""Failure behaviours: hang, setup failure, crash, wedge, slow boot; foreign user_data."""

from __future__ import annotations

import base64

import pytest

from simulator.fleet import Behaviour, FleetConfig
from tests.simulator_fleet.conftest import LABEL, World


def test_a_hanging_setup_never_connects(world: World) -> None:
    world.fleet.next_boots_fail(1, "hang")
    world.boot("runner-1")
    world.fleet.wait_for_event("setup-hang", "runner-1")
    world.fleet.wait_idle_ticks(3)
    assert world.markers("runner-1") == []
    assert world.runner("runner-1")["jit_used"] is False  # type: ignore[index]
    assert world.cloud_control.server("runner-1").status == "ACTIVE"
    assert world.fleet.counters.hung == 1
    assert world.fleet.connected == 0


def test_a_failing_setup_reports_and_powers_off_without_a_runner(world: World) -> None:
    world.fleet.next_boots_fail(1, "setup_fail")
    world.boot("runner-1")
    world.fleet.wait_for_event("powered-off", "runner-1")
    [marker] = world.markers("runner-1")
    assert marker.startswith("SCALESET-RUNNER setup-failed runner=runner-1 reason=")
    assert world.cloud_control.server("runner-1").status == "SHUTOFF"
    assert world.runner("runner-1")["jit_used"] is False  # type: ignore[index]
    assert world.fleet.counters.setup_failed == 1


def test_a_crashing_runner_fails_its_job_and_the_vm_powers_off(world: World) -> None:
    [job_id] = world.github.control.enqueue_jobs([LABEL])
    world.fleet.next_boots_fail(1, "crash", crash_after=0.05)
    world.boot("runner-1")
    state = world.github.control.wait_for_state(
        lambda s: any(j["id"] == job_id and j["state"] == "completed" for j in s["jobs"])
    )
    assert next(j for j in state["jobs"] if j["id"] == job_id)["result"] == "failed"
    world.fleet.wait_for_event("powered-off", "runner-1")
    assert world.markers("runner-1")[-1] == "SCALESET-RUNNER run-complete runner=runner-1 exit=1"
    assert world.runner("runner-1")["state"] == "offline"  # type: ignore[index]
    assert world.fleet.died == 1


def test_a_wedged_vm_loses_its_runner_and_stays_up_silent(world: World) -> None:
    world.github.control.enqueue_jobs([LABEL])
    world.fleet.behave("runner-1", "wedge")
    world.boot("runner-1")
    world.fleet.wait_for_event("crashed", "runner-1")
    world.fleet.wait_idle_ticks(3)
    assert world.markers("runner-1") == ["SCALESET-RUNNER setup-complete runner=runner-1"]
    assert world.cloud_control.server("runner-1").status == "ACTIVE"
    assert world.fleet.vm("runner-1").phase == "dead"
    assert world.runner("runner-1")["state"] == "offline"  # type: ignore[index]


def test_crash_runner_kills_an_idle_runner_now(world: World) -> None:
    world.boot("runner-1")
    world.fleet.wait_for_event("connected", "runner-1")
    world.fleet.crash_runner("runner-1")
    world.fleet.wait_for_event("powered-off", "runner-1")
    assert world.runner("runner-1")["state"] == "offline"  # type: ignore[index]
    assert world.fleet.wait_for_event("run-complete", "runner-1").detail == "exit=1"


def test_crash_runner_without_power_off_leaves_the_vm_up(world: World) -> None:
    world.boot("runner-1")
    world.fleet.wait_for_event("connected", "runner-1")
    world.fleet.crash_runner("runner-1", power_off=False)
    world.fleet.wait_for_event("crashed", "runner-1")
    assert world.fleet.vm("runner-1").phase == "dead"
    with pytest.raises(KeyError):
        world.fleet.crash_runner("runner-1")  # no online runner any more


def test_crash_runner_needs_an_online_runner(world: World) -> None:
    with pytest.raises(KeyError):
        world.fleet.crash_runner("nobody")


def test_a_slow_boot_connects_later(world: World) -> None:
    world.fleet.next_boots_slow(1, 0.4)
    world.boot("slow")
    world.boot("fast")
    world.fleet.wait_for(lambda: world.fleet.connected == 2)
    events = world.fleet.events
    connected = [e.server for e in events if e.what == "connected"]
    assert connected == ["fast", "slow"]
    booting = next(e for e in events if e.what == "booting" and e.server == "slow")
    ready = next(e for e in events if e.what == "setup-complete" and e.server == "slow")
    assert booting.detail == "0.4s"
    assert ready.time - booting.time >= 0.4
    assert world.fleet.vm("slow").behaviour == Behaviour(boot_seconds=0.4)


def test_next_boots_apply_in_order_and_a_name_wins(world: World) -> None:
    world.fleet.next_boots(1, "hang")
    world.fleet.next_boots(1, "setup_fail")
    world.fleet.behave("named", "wedge")
    world.boot("named")
    world.fleet.wait_for_event("seen", "named")
    world.boot("first")
    world.fleet.wait_for_event("seen", "first")
    world.boot("second")
    world.fleet.wait_for_event("seen", "second")
    world.boot("third")
    world.fleet.wait_for_event("seen", "third")
    vms = world.fleet.vms()
    assert {name: vm.behaviour.failure for name, vm in vms.items()} == {
        "named": "wedge",
        "first": "hang",
        "second": "setup_fail",
        "third": None,
    }


def test_foreign_user_data_is_left_alone(world: World) -> None:
    world.nova.create("cloud-config", b"#cloud-config\nruncmd:\n - echo hi\n")
    world.nova.create("no-user-data", None)
    world.nova.create("binary", bytes(range(256)))
    world.fleet.wait_for(lambda: world.fleet.counters.ignored == 3)
    world.fleet.wait_idle_ticks(3)
    assert world.fleet.vms() == {}
    assert {e.server for e in world.fleet.events if e.what == "ignored"} == {
        "cloud-config",
        "no-user-data",
        "binary",
    }
    for name in ("cloud-config", "no-user-data", "binary"):
        assert world.markers(name) == []


def test_behaviour_and_config_are_checked() -> None:
    with pytest.raises(ValueError, match="unknown failure mode"):
        Behaviour("explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="crash_after"):
        Behaviour(crash_after=-1)
    with pytest.raises(ValueError, match="boot_seconds"):
        FleetConfig(boot_seconds=-1)


def test_console_control_route_returns_the_whole_log(world: World) -> None:
    world.nova.create("plain", base64.b64decode(base64.b64encode(b"echo hi")))
    world.fleet.wait_for_event("ignored", "plain")
    world.cloud_control.append_console("plain", "one", "two\nthree")
    assert world.cloud_control.console("plain")[-3:] == ["one", "two", "three"]


def test_a_server_that_never_builds_is_never_booted(world: World) -> None:
    world.cloud_control.fail_server_creates()
    world.boot("runner-1")
    world.fleet.wait_for_event("down", "runner-1")
    assert world.fleet.vm("runner-1").phase == "down"
    assert world.fleet.counters.booted == 0
