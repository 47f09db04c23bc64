"""The job policy and the bootstrap extras in sandbox VMs and light VMs: the real rendered
bootstrap, the stub runner running its job hooks with the job's GITHUB_* variables and the
event payload the simulated GitHub gives, as the real runner does."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from provisioners.bootstrap import JobPolicy
from simulator.sandbox import SandboxConfig
from tests.simulator_sandbox.conftest import FAST_SANDBOX, LABEL, World, leftovers

GPU_POLICY = JobPolicy(
    events=("push", "pull_request"), repositories=("acme/*",), fork_pull_requests=False
)
REFUSAL = "scaleset-listener job policy: {what} is not allowed on scale set gpu"
# A package manager that says what it was asked and succeeds (the sandbox has no mirror).
STUB_APT_GET = '#!/bin/sh\necho "stub apt-get: $*"\nexit 0\n'


@pytest.fixture
def github_overrides() -> dict[str, Any]:
    # The runner reports each job's result, as on GitHub: the simulator's auto_finish would
    # race a refused job's runner with the job's configured result.
    return {"auto_finish": False}


@pytest.fixture
def fleet_config() -> SandboxConfig:
    return SandboxConfig(
        poll_interval=FAST_SANDBOX.poll_interval,
        image_files={"/usr/local/sbin/apt-get": (STUB_APT_GET, 0o755)},
    )


def _job(world: World, job_id: int) -> dict[str, object]:
    return next(j for j in world.github.control.state()["jobs"] if j["id"] == job_id)


def _self_signed_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scaleset test CA")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.timeout(120)
def test_a_forks_pull_request_is_refused_before_any_step_and_the_vm_goes(world: World) -> None:
    control = world.github.control
    [fork] = control.enqueue_jobs(
        [LABEL], event_name="pull_request", head_repository="mallory/app", duration=0.2
    )
    [same] = control.enqueue_jobs([LABEL], event_name="pull_request", duration=0.2)
    [push] = control.enqueue_jobs([LABEL], duration=0.2)
    [broken] = control.enqueue_jobs(
        [LABEL], event_name="pull_request", event_payload={"action": "opened"}, duration=0.2
    )
    names = [f"runner-{n}" for n in range(1, 5)]
    for name in names:
        world.boot(name, job_policy=GPU_POLICY, scale_set="gpu")
    for name in names:
        world.fleet.wait_for_event("powered-off", name, timeout=60)

    results = {job: _job(world, job)["result"] for job in (fork, same, push, broken)}
    assert results == {fork: "failed", same: "succeeded", push: "succeeded", broken: "failed"}
    logs = "".join(world.fleet.output_log(name) for name in names)
    assert REFUSAL.format(what="a pull request from the fork mallory/app") in logs
    assert "a pull request whose head cannot be checked" in logs
    assert "KeyError: 'pull_request'" in logs
    # A refused job ends its runner like any failed job: run-complete, power-off.
    exits = sorted(
        marker.rsplit("exit=", 1)[1]
        for name in names
        for marker in world.markers(name)
        if "run-complete" in marker
    )
    assert exits == ["0", "0", "1", "1"]
    assert leftovers(world.fleet, *names) == {}


@pytest.mark.timeout(120)
def test_a_refused_event_says_which_in_the_job_log(world: World) -> None:
    [job] = world.github.control.enqueue_jobs(
        [LABEL], event_name="pull_request_target", duration=0.2
    )
    world.boot("runner-1", job_policy=GPU_POLICY, scale_set="gpu")

    world.fleet.wait_for_event("powered-off", "runner-1", timeout=60)

    assert _job(world, job)["result"] == "failed"
    assert REFUSAL.format(what="event pull_request_target") in world.fleet.output_log("runner-1")
    assert world.markers("runner-1")[-1] == "SCALESET-RUNNER run-complete runner=runner-1 exit=1"


@pytest.mark.timeout(120)
def test_extras_packages_proxy_and_ca_reach_the_vm_and_the_jobs_hook(world: World) -> None:
    # The setup script names a hook of the image's own, which the bootstrap chains after its
    # own: it prints what a job sees.
    setup = (
        "printf '#!/bin/bash\\necho \"job sees https_proxy=$https_proxy TZ=$TZ "
        'NODE_EXTRA_CA_CERTS=$NODE_EXTRA_CA_CERTS"\\n\' >"$RUNNER_DIR/show-env.sh"\n'
        'echo "ACTIONS_RUNNER_HOOK_JOB_STARTED=$RUNNER_DIR/show-env.sh" >>"$RUNNER_DIR/.env"\n'
        "if [ -e /etc/ssl/certs/scaleset-listener.pem ]; then echo 'trust store: updated'; fi\n"
    )
    world.github.control.enqueue_jobs([LABEL], duration=0.2)
    world.boot(
        "runner-1",
        vm_packages=("docker.io", "nvidia-container-toolkit"),
        vm_setup_script=setup,
        # Nobody listens there: everything the VM reaches is on loopback, which no_proxy covers.
        vm_https_proxy="http://user:secret@proxy.invalid:3128",
        vm_no_proxy="127.0.0.0/8,localhost,127.0.0.1",
        vm_ca_certificates=_self_signed_pem(),
        runner_env={"TZ": "UTC"},
        vm_idle_shutdown=3600,
    )

    world.fleet.wait_for_event("powered-off", "runner-1", timeout=60)

    log = world.fleet.output_log("runner-1")
    assert "stub apt-get: " in log
    assert "install --no-install-recommends docker.io nvidia-container-toolkit" in log
    assert "job sees https_proxy=http://user:secret@proxy.invalid:3128 TZ=UTC" in log
    assert "NODE_EXTRA_CA_CERTS=/" in log
    assert "trusting 1 extra CA certificate(s)" in log
    if world.kind == "sandbox":  # a light VM leaves the host's trust store alone
        assert "trust store: updated" in log
    assert world.markers("runner-1")[-1] == "SCALESET-RUNNER run-complete runner=runner-1 exit=0"


@pytest.mark.timeout(120)
def test_a_failing_setup_script_is_a_setup_failure_with_the_reason(world: World) -> None:
    world.boot("runner-1", vm_setup_script="echo 'no GPU found' >&2\nexit 4\n")

    event = world.fleet.wait_for_event("setup-failed", "runner-1", timeout=60)
    world.fleet.wait_for_event("powered-off", "runner-1", timeout=10)

    assert event.detail == "the setup script failed with exit 4"
    assert "no GPU found" in world.fleet.output_log("runner-1")
    assert world.fleet.counters.connected == 0
