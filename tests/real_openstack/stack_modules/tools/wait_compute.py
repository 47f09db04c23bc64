"""Wait until nova-compute is alive and its node is in placement: wait_compute.py [MAX_SECONDS].

Ready when a ``nova-compute`` service is ``up`` with a heartbeat (``updated_at``) later than the
start time (env ``OSK_T0``, Unix seconds; so a previous process's heartbeat does not count), and
its host names one of placement's resource providers. Polls every 0.5 s as osk-admin.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time

import openstack


def _ready(conn: openstack.connection.Connection, started: float) -> str | None:
    hosts = set()
    for svc in conn.compute.services():
        if svc.binary != "nova-compute" or svc.state != "up" or not svc.updated_at:
            continue
        beat = dt.datetime.fromisoformat(str(svc.updated_at).replace("Z", "+00:00"))
        if beat.tzinfo is None:
            beat = beat.replace(tzinfo=dt.UTC)
        if beat.timestamp() > started:
            hosts.add(svc.host)
    if not hosts:
        return None
    providers = {rp.name for rp in conn.placement.resource_providers()}
    found = sorted(hosts & providers)
    return found[0] if found else None


def main() -> None:
    limit = float(sys.argv[1]) if len(sys.argv) > 1 else 120.0
    started = float(os.environ["OSK_T0"])
    deadline = time.monotonic() + limit
    conn = openstack.connect(cloud="osk-admin")
    last_error = ""
    while time.monotonic() < deadline:
        try:
            host = _ready(conn, started)
        except Exception as exc:  # noqa: BLE001  (anything: the APIs may still be settling)
            text = f"{type(exc).__name__}: {exc}"
            if text != last_error:
                print(f"wait_compute: retrying after {text}", file=sys.stderr)
                last_error = text
            host = None
        if host:
            print(f"compute host {host} is up and registered in placement")
            return
        time.sleep(0.5)
    sys.exit("compute not ready")


if __name__ == "__main__":
    main()
