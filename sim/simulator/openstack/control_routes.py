"""The control API under /_sim/ (no auth): config, faults, state, request log, reset, and
nudges to simulated VMs (console lines, power state). Documented in sim/README.md."""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Callable
from typing import Any

from starlette.requests import Request

from simulator.faults import FaultSpecError
from simulator.openstack import compute
from simulator.openstack.cloudsyaml import clouds_yaml_text
from simulator.openstack.config import ConfigError
from simulator.openstack.model import JSON, Server, utcnow
from simulator.openstack.state import Cloud
from simulator.openstack.web import Reply

Params = dict[str, str]
ControlHandler = Callable[[Cloud, Request, Any, Params], Reply]


class ControlError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _ok(payload: Any, status: int = 200) -> Reply:
    return Reply.json(status, payload)


def health(cloud: Cloud, request: Request, body: Any, params: Params) -> Reply:
    return _ok({"ok": True, "base_url": cloud.base_url})


def get_config(cloud: Cloud, request: Request, body: Any, params: Params) -> Reply:
    return _ok(cloud.config.to_json())


def patch_config(cloud: Cloud, request: Request, body: Any, params: Params) -> Reply:
    if not isinstance(body, dict):
        raise ControlError(400, "body must be a JSON object of config fields")
    old_pool = cloud.config.floating_ip_pool
    try:
        cloud.config.patch(body)
    except (ConfigError, ValueError) as exc:
        raise ControlError(400, str(exc)) from None
    if cloud.config.floating_ip_pool != old_pool:
        _resize_pool(cloud, old_pool)
    cloud.lay_out_subnet(cloud.tenant_subnet())
    return _ok(cloud.config.to_json())


def _resize_pool(cloud: Cloud, old_pool: tuple[str, ...]) -> None:
    """Drop free addresses that left the pool, add the new ones; associated ones stay."""
    new_pool = set(cloud.config.floating_ip_pool)
    for fip in list(cloud.floating_ips.values()):
        if fip.address in old_pool and fip.address not in new_pool and fip.port_id is None:
            del cloud.floating_ips[fip.id]
    have = {f.address for f in cloud.floating_ips.values()}
    for address in cloud.config.floating_ip_pool:
        if address not in have:
            cloud.add_floating_ip(address)


def get_state(cloud: Cloud, request: Request, body: Any, params: Params) -> Reply:
    return _ok(cloud.dump())


def get_endpoints(cloud: Cloud, request: Request, body: Any, params: Params) -> Reply:
    return _ok({"endpoints": list(cloud.endpoints)})


def get_requests(cloud: Cloud, request: Request, body: Any, params: Params) -> Reply:
    entries = list(cloud.request_log)
    query = request.query_params
    if "since" in query:
        since = int(query["since"])
        entries = [e for e in entries if e["id"] > since]
    if "endpoint" in query:
        entries = [e for e in entries if fnmatch.fnmatchcase(e["endpoint"], query["endpoint"])]
    if "service" in query:
        entries = [e for e in entries if e["service"] == query["service"]]
    return _ok({"requests": entries})


def get_request_counts(cloud: Cloud, request: Request, body: Any, params: Params) -> Reply:
    counts = cloud.request_counts
    return _ok({"total": sum(counts.values()), "by_endpoint": dict(sorted(counts.items()))})


def get_server_briefs(cloud: Cloud, request: Request, body: Any, params: Params) -> Reply:
    after = int(request.query_params.get("user_data_after", "0"))
    return _ok({"servers": cloud.server_briefs(after)})


def clear_requests(cloud: Cloud, request: Request, body: Any, params: Params) -> Reply:
    cloud.request_log.clear()
    cloud.request_counts.clear()
    return Reply.empty(204)


def reset(cloud: Cloud, request: Request, body: Any, params: Params) -> Reply:
    cloud.reset()
    return _ok({"ok": True})


def list_faults(cloud: Cloud, request: Request, body: Any, params: Params) -> Reply:
    return _ok({"faults": [f.to_json() for f in cloud.faults.faults]})


def add_fault(cloud: Cloud, request: Request, body: Any, params: Params) -> Reply:
    if not isinstance(body, dict):
        raise ControlError(400, "body must be a fault object")
    try:
        fault = cloud.faults.add(body)
    except (FaultSpecError, TypeError) as exc:
        raise ControlError(400, str(exc)) from None
    return _ok(fault.to_json(), 201)


def clear_faults(cloud: Cloud, request: Request, body: Any, params: Params) -> Reply:
    cloud.faults.clear()
    return Reply.empty(204)


def delete_fault(cloud: Cloud, request: Request, body: Any, params: Params) -> Reply:
    if not cloud.faults.remove(int(params["fault_id"])):
        raise ControlError(404, f"no fault {params['fault_id']}")
    return Reply.empty(204)


def _server(cloud: Cloud, ref: str) -> Server:
    server = cloud.servers.get(ref)
    if server is None:
        matches = [s for s in cloud.servers.values() if s.name == ref]
        if len(matches) != 1:
            raise ControlError(404, f"no server with id or unique name {ref!r}")
        server = matches[0]
    return server


def get_server(cloud: Cloud, request: Request, body: Any, params: Params) -> Reply:
    return _ok(cloud.dump_server(_server(cloud, params["server"])))


def get_console(cloud: Cloud, request: Request, body: Any, params: Params) -> Reply:
    return _ok({"lines": list(_server(cloud, params["server"]).console)})


def append_console(cloud: Cloud, request: Request, body: Any, params: Params) -> Reply:
    server = _server(cloud, params["server"])
    lines = body.get("lines") if isinstance(body, dict) else None
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise ControlError(400, 'body must be {"lines": ["...", ...]}')
    for line in lines:
        server.console.extend(line.split("\n"))
    return _ok({"console_lines": len(server.console)})


def set_status(cloud: Cloud, request: Request, body: Any, params: Params) -> Reply:
    """Change a server's state as its guest or hypervisor would (power-off, crash)."""
    server = _server(cloud, params["server"])
    status = body.get("status") if isinstance(body, dict) else None
    if status == "SHUTOFF":
        server.status, server.vm_state, server.power_state = "SHUTOFF", "stopped", 4
    elif status == "ACTIVE":
        server.status, server.vm_state, server.power_state = "ACTIVE", "active", 1
        server.fault = None
    elif status == "ERROR":
        message = body.get("fault_message") or "Simulated failure"
        compute.set_error(server, {"code": int(body.get("fault_code", 500)), "message": message})
    else:
        raise ControlError(400, 'status must be "SHUTOFF", "ACTIVE" or "ERROR"')
    server.task_state = None
    server.updated = utcnow()
    return _ok(cloud.dump_server(server))


def get_clouds_yaml(cloud: Cloud, request: Request, body: Any, params: Params) -> Reply:
    text = clouds_yaml_text(cloud.base_url, cloud.config.region)
    return Reply(200, text.encode(), "application/yaml")


def _r(method: str, path: str, handler: ControlHandler) -> tuple[str, re.Pattern[str], Any]:
    regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path)
    return method, re.compile(f"^{regex}/?$"), handler


ROUTES = [
    _r("GET", "/_sim/health", health),
    _r("GET", "/_sim/config", get_config),
    _r("PATCH", "/_sim/config", patch_config),
    _r("GET", "/_sim/state", get_state),
    _r("GET", "/_sim/endpoints", get_endpoints),
    _r("GET", "/_sim/requests", get_requests),
    _r("DELETE", "/_sim/requests", clear_requests),
    _r("GET", "/_sim/request_counts", get_request_counts),
    _r("GET", "/_sim/server_briefs", get_server_briefs),
    _r("POST", "/_sim/reset", reset),
    _r("GET", "/_sim/faults", list_faults),
    _r("POST", "/_sim/faults", add_fault),
    _r("DELETE", "/_sim/faults", clear_faults),
    _r("DELETE", "/_sim/faults/{fault_id}", delete_fault),
    _r("GET", "/_sim/servers/{server}", get_server),
    _r("GET", "/_sim/servers/{server}/console", get_console),
    _r("POST", "/_sim/servers/{server}/console", append_console),
    _r("POST", "/_sim/servers/{server}/status", set_status),
    _r("GET", "/_sim/clouds.yaml", get_clouds_yaml),
]


def dispatch(cloud: Cloud, method: str, path: str, request: Request, raw: bytes) -> Reply:
    cloud.tick()
    try:
        body: JSON | Any = json.loads(raw) if raw else None
    except ValueError:
        return Reply.json(400, {"error": "body is not JSON"})
    known_path = False
    for route_method, pattern, handler in ROUTES:
        found = pattern.match(path)
        if found is None:
            continue
        known_path = True
        if route_method != method:
            continue
        try:
            result: Reply = handler(cloud, request, body, found.groupdict())
        except ControlError as exc:
            return Reply.json(exc.status, {"error": exc.message})
        return result
    if known_path:
        return Reply.json(405, {"error": f"{method} not allowed on {path}"})
    return Reply.json(404, {"error": f"no control route {path}"})
