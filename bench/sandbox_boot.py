"""Sandbox VMs (or light VMs): how fast N of them boot the real bootstrap, what they cost,
how fast they go.

    .venv/bin/python bench/sandbox_boot.py --vms 20 [--guest sandbox|light] [--baked-runner]

N servers are created at once through the real OpenStack provisioner, each with the real
rendered bootstrap and its own JIT config; the sandbox fleet boots one VM per server (namespaces,
overlay root, sshd, user_data, stub runner download). Measured: from the create call to each
VM's `setup-complete` and `connected` events (the slowest and the median), the memory of all VM
processes once every runner is connected (sum of PSS, so shared pages count once), then the
time to delete every server and see every VM's processes gone. Sandbox VMs need root and
namespaces; light VMs do not (their sshd is a thread of this process: not in the PSS). The
simulators run in this process (threads).

`--baked-runner`: every image holds the wanted runner in /opt/actions-runner (as an image
built per docs/images.md), so the bootstrap downloads nothing; `runner_downloads` counts the
VMs' requests to the mirror (N without, 0 with). The stub runner's tarball is a few KiB, so the
saving measured here is the download's fixed costs (curl, sha256, tar); the real runner's is
also its ~200 MB transfer and extraction.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from provisioners.bootstrap import BootstrapSpec, generate_host_key, render_user_data
from scaleset_listener.actions_client import ActionsClient
from scaleset_listener.auth import ActionsAdminAuth, PersonalAccessToken
from scaleset_listener.github_urls import parse_github_url
from scaleset_listener.http import HttpChannel
from scaleset_listener.retrying import RetryPolicy
from simulator.github.config import SimulatorConfig
from simulator.github.server import run_in_thread as run_github
from simulator.openstack.config import CloudConfig, Quotas
from simulator.openstack.server import run_in_thread as run_cloud
from simulator.openstack.state import (
    APP_CREDENTIAL_ID,
    APP_CREDENTIAL_SECRET,
    FLAVOR_NAMES,
    IMAGE_NAME,
    NETWORK_NAME,
)
from simulator.sandbox import (
    LightFleet,
    SandboxConfig,
    SandboxFleet,
    light_problem,
    sandbox_problem,
)

LABEL = "bench"
# Pinned and served by the fleet's mirror (the bench builds the bootstraps itself).
RUNNER_VERSION = "2.330.0"


def _pss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total


@contextlib.asynccontextmanager
async def _actions(github_url: str, pat: str) -> AsyncIterator[ActionsClient]:
    http = HttpChannel(RetryPolicy(max_attempts=2, max_wait=0.01))
    auth = ActionsAdminAuth(parse_github_url(github_url), PersonalAccessToken(pat), http)
    try:
        yield ActionsClient(auth, http)
    finally:
        await http.aclose()


class Nova:
    """Create and delete servers over plain httpx, as any Nova client would."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(timeout=30)
        auth = {
            "auth": {
                "identity": {
                    "methods": ["application_credential"],
                    "application_credential": {
                        "id": APP_CREDENTIAL_ID,
                        "secret": APP_CREDENTIAL_SECRET,
                    },
                }
            }
        }
        response = self.http.post(f"{base_url}/identity/v3/auth/tokens", json=auth)
        response.raise_for_status()
        self.http.headers["X-Auth-Token"] = response.headers["X-Subject-Token"]
        self.compute = f"{base_url}/compute/v2.1"
        images = self.http.get(f"{base_url}/image/v2/images", params={"name": IMAGE_NAME})
        self.image = images.json()["images"][0]["id"]
        flavors = self.http.get(f"{self.compute}/flavors").json()["flavors"]
        self.flavor = next(f["id"] for f in flavors if f["name"] == FLAVOR_NAMES[0])
        networks = self.http.get(f"{base_url}/network/v2.0/networks", params={"name": NETWORK_NAME})
        self.network = networks.json()["networks"][0]["id"]

    def create(self, name: str, user_data: bytes) -> str:
        server = {
            "name": name,
            "imageRef": self.image,
            "flavorRef": self.flavor,
            "networks": [{"uuid": self.network}],
            "user_data": base64.b64encode(user_data).decode(),
        }
        response = self.http.post(f"{self.compute}/servers", json={"server": server})
        response.raise_for_status()
        return str(response.json()["server"]["id"])

    def delete(self, server_id: str) -> None:
        self.http.delete(f"{self.compute}/servers/{server_id}").raise_for_status()


async def _jit_configs(github_url: str, pat: str, scale_set_id: int, names: list[str]) -> list[str]:
    async with _actions(f"{github_url}/acme", pat) as client:
        return [
            (await client.generate_jit_config(scale_set_id, name)).encoded_jit_config
            for name in names
        ]


def run(vms: int, guest: str = "sandbox", baked_runner: bool = False) -> dict[str, object]:
    kind = LightFleet if guest == "light" else SandboxFleet
    config = SandboxConfig(baked_runner=RUNNER_VERSION if baked_runner else None)
    with (
        run_github(SimulatorConfig(long_poll_timeout=0.2)) as github,
        run_cloud(
            CloudConfig(
                build_delay=0.2, delete_delay=0.2, quotas=Quotas(instances=-1, cores=-1, ram=-1)
            )
        ) as cloud,
        kind(github.base_url, cloud.base_url, config) as fleet,
    ):
        scale_set = github.control.create_scale_set(LABEL, labels=[LABEL])
        names = [f"{LABEL}-{k:04d}" for k in range(vms)]
        jits = asyncio.run(
            _jit_configs(github.base_url, github.config.pats[0], int(scale_set["id"]), names)
        )
        mirror = fleet.mirror_settings(RUNNER_VERSION)
        user_data = []
        for name, jit in zip(names, jits, strict=True):
            key = generate_host_key(name)
            user_data.append(
                render_user_data(
                    BootstrapSpec(
                        runner_name=name,
                        jit_config=jit,
                        runner_version=RUNNER_VERSION,
                        runner_download_url=mirror["RUNNER_DOWNLOAD_URL"],
                        runner_sha256=mirror["RUNNER_SHA256"],
                        labels=(LABEL,),
                        ssh_host_key_private=key.private_openssh,
                        ssh_host_key_public=key.public_openssh,
                        probe_public_key=fleet.client_public_key,
                    )
                )
            )
        nova = Nova(cloud.base_url)
        started = time.monotonic()
        wall = time.time()
        ids = [nova.create(name, data) for name, data in zip(names, user_data, strict=True)]
        fleet.wait_for(lambda: fleet.counters.connected == vms, timeout=60 + 2 * vms)
        all_connected = time.monotonic() - started
        setup = sorted(e.time - wall for e in fleet.events if e.what == "setup-complete")
        connected = sorted(e.time - wall for e in fleet.events if e.what == "connected")
        pids = [pid for name in names for pid in fleet.vm_processes(name)]
        pss = _pss_kib(pids)
        deleting = time.monotonic()
        for server_id in ids:
            nova.delete(server_id)
        fleet.wait_for(
            lambda: sum(e.what == "runner-killed" for e in fleet.events) == vms,
            timeout=60 + vms,
        )
        gone = all(not fleet.vm_processes(name) for name in names)
        downloads = len(fleet.downloads)
        teardown = time.monotonic() - deleting
        nova.http.close()
    return {
        "guest": guest,
        "vms": vms,
        "baked_runner": baked_runner,
        "runner_downloads": downloads,
        "seconds_to_all_connected": round(all_connected, 2),
        "setup_complete_median_s": round(statistics.median(setup), 2),
        "setup_complete_max_s": round(setup[-1], 2),
        "connected_median_s": round(statistics.median(connected), 2),
        "connected_max_s": round(connected[-1], 2),
        "processes_per_vm": round(len(pids) / vms, 1),
        "pss_mib_per_vm": round(pss / 1024 / vms, 2),
        "seconds_to_delete_all": round(teardown, 2),
        "no_process_left": gone,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vms", type=int, default=20, help="servers created at once")
    parser.add_argument("--guest", choices=("sandbox", "light"), default="sandbox")
    parser.add_argument(
        "--baked-runner", action="store_true", help="the runner baked into every VM's image"
    )
    args = parser.parse_args(argv)
    problem = sandbox_problem() if args.guest == "sandbox" else light_problem()
    if problem is not None:
        print(f"{args.guest} guests cannot run here: {problem}", file=sys.stderr)
        return 2
    print(json.dumps(run(args.vms, args.guest, args.baked_runner)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
