"""A typed, synchronous client for the simulated cloud's control API (/_sim/)."""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import httpx

JSON = dict[str, Any]
QuotaResource = Literal["instances", "cores", "ram"]


class ControlApiError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"control API answered {status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ServerInfo:
    """A server as the state dump shows it (user_data decoded when it is UTF-8 text)."""

    id: str
    name: str
    status: str
    vm_state: str
    task_state: str | None
    tags: tuple[str, ...]
    metadata: dict[str, str]
    user_data: str | None
    flavor: str
    addresses: tuple[str, ...]
    floating_ips: tuple[str, ...]
    volumes: tuple[str, ...]
    ports: tuple[str, ...]
    fault: JSON | None
    raw: JSON

    @classmethod
    def from_json(cls, data: JSON) -> ServerInfo:
        return cls(
            id=data["id"],
            name=data["name"],
            status=data["status"],
            vm_state=data["vm_state"],
            task_state=data["task_state"],
            tags=tuple(data["tags"]),
            metadata=dict(data["metadata"]),
            user_data=data["user_data"],
            flavor=data["flavor"],
            addresses=tuple(data["addresses"]),
            floating_ips=tuple(data["floating_ips"]),
            volumes=tuple(data["volumes"]),
            ports=tuple(data["ports"]),
            fault=data["fault"],
            raw=data,
        )


@dataclass(frozen=True)
class RequestRecord:
    id: int
    method: str
    path: str
    query: str
    service: str
    endpoint: str
    status: int | None
    microversion: str | None
    fault_id: int | None
    dropped: bool
    body: Any
    # When the request arrived (Unix time), before any delay a fault put on its answer.
    received_at: float = 0.0

    @classmethod
    def from_json(cls, data: JSON) -> RequestRecord:
        return cls(
            id=data["id"],
            method=data["method"],
            path=data["path"],
            query=data["query"],
            service=data["service"],
            endpoint=data["endpoint"],
            status=data["status"],
            microversion=data["microversion"],
            fault_id=data["fault_id"],
            dropped=data["dropped"],
            body=data["body"],
            received_at=float(data.get("time", 0.0)) - float(data.get("duration_ms", 0.0)) / 1000,
        )


class CloudControl:
    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url + "/_sim", timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CloudControl:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _call(self, method: str, path: str, body: Any = None, **params: Any) -> Any:
        response = self._http.request(
            method, path, json=body, params={k: v for k, v in params.items() if v is not None}
        )
        if response.status_code >= 400:
            try:
                message = str(response.json().get("error"))
            except ValueError:
                message = response.text
            raise ControlApiError(response.status_code, message)
        if response.status_code == 204 or not response.content:
            return None
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.text

    # ----- config and world --------------------------------------------------------------

    def health(self) -> JSON:
        result: JSON = self._call("GET", "/health")
        return result

    def config(self) -> JSON:
        result: JSON = self._call("GET", "/config")
        return result

    def update_config(self, **changes: Any) -> JSON:
        """e.g. update_config(build_delay=1.0, max_microversion="2.51", quotas={"instances": 2})."""
        result: JSON = self._call("PATCH", "/config", changes)
        return result

    def set_quotas(self, **limits: int) -> JSON:
        return self.update_config(quotas=limits)

    def reset(self) -> None:
        self._call("POST", "/reset")

    def state(self) -> JSON:
        result: JSON = self._call("GET", "/state")
        return result

    def endpoints(self) -> list[str]:
        return list(self._call("GET", "/endpoints")["endpoints"])

    def clouds_yaml(self) -> str:
        return str(self._call("GET", "/clouds.yaml"))

    # ----- servers -----------------------------------------------------------------------

    def servers(self) -> list[ServerInfo]:
        return [ServerInfo.from_json(s) for s in self.state()["servers"]]

    def server(self, id_or_name: str) -> ServerInfo:
        return ServerInfo.from_json(self._call("GET", f"/servers/{id_or_name}"))

    def console(self, id_or_name: str) -> list[str]:
        """A server's whole console log, one string a line (what os-getConsoleOutput shows)."""
        return [str(line) for line in self._call("GET", f"/servers/{id_or_name}/console")["lines"]]

    def append_console(self, id_or_name: str, *lines: str) -> int:
        """Append lines to a server's console log; returns the number of lines now held."""
        result = self._call("POST", f"/servers/{id_or_name}/console", {"lines": list(lines)})
        return int(result["console_lines"])

    def set_server_status(
        self,
        id_or_name: str,
        status: Literal["ACTIVE", "SHUTOFF", "ERROR"],
        fault_message: str | None = None,
    ) -> ServerInfo:
        """Change a server's state as its guest would (SHUTOFF: the VM powered itself off)."""
        body: JSON = {"status": status}
        if fault_message is not None:
            body["fault_message"] = fault_message
        return ServerInfo.from_json(self._call("POST", f"/servers/{id_or_name}/status", body))

    # ----- request log -------------------------------------------------------------------

    def requests(
        self, endpoint: str | None = None, since: int | None = None, service: str | None = None
    ) -> list[RequestRecord]:
        data = self._call("GET", "/requests", endpoint=endpoint, since=since, service=service)
        return [RequestRecord.from_json(r) for r in data["requests"]]

    def clear_requests(self) -> None:
        self._call("DELETE", "/requests")

    def request_counts(self) -> JSON:
        """`{"total": N, "by_endpoint": {...}}`: every request since the last reset or clear
        (the request log itself keeps only the newest)."""
        result: JSON = self._call("GET", "/request_counts")
        return result

    def server_briefs(self, user_data_after: int = 0) -> list[JSON]:
        """Every server's id, name, status, task_state, deleting and sequence, oldest first,
        with its user_data only when its sequence is above `user_data_after`: cheap to poll."""
        return list(self._call("GET", "/server_briefs", user_data_after=user_data_after)["servers"])

    # ----- faults ------------------------------------------------------------------------

    def faults(self) -> list[JSON]:
        return list(self._call("GET", "/faults")["faults"])

    def add_fault(self, endpoint: str, kind: str = "status", **fields: Any) -> JSON:
        """A raw fault spec; see sim/simulator/openstack/faults.py for kinds and fields."""
        result: JSON = self._call("POST", "/faults", {"endpoint": endpoint, "kind": kind, **fields})
        return result

    def fail_requests(
        self,
        endpoint: str,
        status: int = 500,
        times: int | None = 1,
        probability: float | None = None,
        message: str | None = None,
    ) -> JSON:
        return self.add_fault(
            endpoint, "status", status=status, times=times, probability=probability, message=message
        )

    def delay_requests(self, endpoint: str, seconds: float, times: int | None = 1) -> JSON:
        return self.add_fault(endpoint, "delay", delay=seconds, times=times)

    def drop_connections(
        self, endpoint: str, times: int | None = 1, after_processing: bool = False
    ) -> JSON:
        return self.add_fault(endpoint, "drop", times=times, after_processing=after_processing)

    def fail_server_creates(
        self, message: str = "No valid host was found. ", times: int | None = 1, code: int = 500
    ) -> JSON:
        """The next creates are accepted, then the servers go to ERROR with this fault."""
        return self.add_fault(
            "compute.servers.create", "server_error", message=message, times=times, code=code
        )

    def exceed_quota(self, resource: QuotaResource = "instances", times: int | None = 1) -> JSON:
        return self.add_fault(
            "compute.servers.create", "quota_exceeded", resource=resource, times=times
        )

    def never_active(self, times: int | None = 1) -> JSON:
        return self.add_fault("compute.servers.create", "never_active", times=times)

    def fail_server_deletes(self, message: str | None = None, times: int | None = 1) -> JSON:
        """The next deletes are accepted (204), then the servers go to ERROR instead."""
        return self.add_fault(
            "compute.servers.delete", "delete_error", message=message, times=times
        )

    def remove_fault(self, fault_id: int) -> None:
        self._call("DELETE", f"/faults/{fault_id}")

    def clear_faults(self) -> None:
        self._call("DELETE", "/faults")
