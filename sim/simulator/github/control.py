"""A typed, synchronous client for the simulator's control API (`/_sim/...`).

Tests and the demo drive the simulated world with it: enqueue jobs, move runners, inject faults,
and wait for things to happen through the server-side blocking `wait` parameters (no sleeping).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import httpx

JSON = dict[str, Any]


class ControlAPIError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class SimulatorControl:
    def __init__(self, base_url: str, timeout: float = 40.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url + "/_sim", timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SimulatorControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        extra: dict[str, Any] = {}
        if timeout is not None:
            extra["timeout"] = timeout
        response = self._http.request(
            method,
            path,
            json=dict(body) if body is not None else None,
            params={k: v for k, v in (params or {}).items() if v is not None},
            **extra,
        )
        payload = response.json() if response.content else None
        if response.status_code >= 400:
            message = payload.get("error") if isinstance(payload, dict) else response.text
            raise ControlAPIError(response.status_code, str(message))
        return payload

    # ------------------------------------------------------------------ configuration

    def config(self) -> JSON:
        result: JSON = self._call("GET", "/config")
        return result

    def patch_config(self, **changes: Any) -> JSON:
        result: JSON = self._call("PATCH", "/config", changes)
        return result

    def reset(self, **config_changes: Any) -> JSON:
        result: JSON = self._call("POST", "/reset", config_changes)
        return result

    def add_pat(self, token: str) -> None:
        self._call("POST", "/pats", {"token": token})

    def add_app(
        self,
        app_id: int | str,
        installation_id: int,
        public_key_pem: str,
        client_id: str | None = None,
        permissions: dict[str, str] | None = None,
    ) -> None:
        """Register an App installed as `installation_id`; `permissions` (GitHub's names, e.g.
        {"organization_self_hosted_runners": "read"}) default to what runner administration
        needs."""
        self._call(
            "POST",
            "/apps",
            {
                "app_id": str(app_id),
                "installation_id": installation_id,
                "public_key_pem": public_key_pem,
                "client_id": client_id,
                "permissions": permissions,
            },
        )

    def expire_admin_tokens(self) -> None:
        self._call("POST", "/tokens/expire_admin")

    # ------------------------------------------------------------------ groups, sets, sessions

    def add_runner_group(self, name: str) -> int:
        return int(self._call("POST", "/runner_groups", {"name": name})["id"])

    def create_scale_set(
        self,
        name: str,
        labels: Iterable[str] = (),
        runner_group_id: int = 1,
        runner_setting: Mapping[str, Any] | None = None,
    ) -> JSON:
        """Create a scale set directly in the service (as if someone set it up beforehand)."""
        result: JSON = self._call(
            "POST",
            "/scalesets",
            {
                "name": name,
                "labels": list(labels),
                "runner_group_id": runner_group_id,
                "runner_setting": dict(runner_setting or {}),
            },
        )
        return result

    def delete_scale_set(self, scale_set_id: int) -> None:
        """The service deletes a scale set on its own (e.g. after a week offline)."""
        self._call("DELETE", f"/scalesets/{scale_set_id}")

    def ghost_session(
        self, scale_set_id: int, expires_after: float, owner_name: str = "someone-else"
    ) -> str:
        """A live session owned by another listener, so session create answers 409 meanwhile."""
        result = self._call(
            "POST",
            f"/scalesets/{scale_set_id}/ghost_session",
            {"expires_after": expires_after, "owner_name": owner_name},
        )
        return str(result["session_id"])

    def inject_message(
        self,
        scale_set_id: int,
        message_type: str | None = None,
        body: str | None = None,
        job_messages: list[JSON] | None = None,
        statistics: JSON | None = None,
    ) -> int | None:
        """With message_type, body or statistics: a whole envelope now (e.g. an unknown
        top-level type) and its id; its body is `body`, else `job_messages` as the batch, and
        `statistics` (raw, any shape inside the object, e.g. `{"totalAssignedJobs": "lots"}`)
        is sent instead of the computed statistics. With only job_messages: raw job messages
        (any shape) appended to the next batch; None is returned."""
        result = self._call(
            "POST",
            f"/scalesets/{scale_set_id}/messages",
            {
                "message_type": message_type,
                "body": body,
                "job_messages": job_messages,
                "statistics": statistics,
            },
        )
        message_id = result["message_id"]
        return int(message_id) if message_id is not None else None

    def evict_session(self, session_id: str) -> None:
        self._call("POST", f"/sessions/{session_id}/evict")

    def expire_queue_token(self, session_id: str) -> None:
        self._call("POST", f"/sessions/{session_id}/expire_token")

    # ------------------------------------------------------------------ jobs and runners

    def enqueue_jobs(
        self,
        labels: Iterable[str],
        count: int = 1,
        *,
        repository: str = "app",
        owner: str = "acme",
        workflow_ref: str | None = None,
        event_name: str = "push",
        display_name: str | None = None,
        duration: float | None = None,
        result: str = "succeeded",
        zero_fields: Iterable[str] = (),
        runner_behaviour: str | None = None,
        ref: str | None = None,
        head_ref: str | None = None,
        base_ref: str | None = None,
        head_repository: str | None = None,
        event_payload: JSON | None = None,
    ) -> list[int]:
        """Queue `count` jobs; returns their runnerRequestIds (the ids used everywhere here).
        `runner_behaviour` ("crash", "hang") is what the job asks of the runner that takes it;
        simulator.sandbox's stub runner obeys, and auto_finish leaves a "hang" job running.

        The event, as the runner gives it to the job (simulator.github.events): `event_name`
        on `owner/repository` at `ref` (default: a push to refs/heads/main; a pull request's
        is refs/pull/<n>/merge), a pull request's `head_ref`/`base_ref` and `head_repository`
        (owner/name: a fork when not the repository itself); `event_payload` replaces the
        payload built from those (e.g. a broken one)."""
        body = {
            "labels": list(labels),
            "count": count,
            "repository": repository,
            "owner": owner,
            "workflow_ref": workflow_ref,
            "event_name": event_name,
            "display_name": display_name,
            "duration": duration,
            "result": result,
            "zero_fields": list(zero_fields),
            "runner_behaviour": runner_behaviour,
            "ref": ref,
            "head_ref": head_ref,
            "base_ref": base_ref,
            "head_repository": head_repository,
            "event_payload": event_payload,
        }
        return [int(i) for i in self._call("POST", "/jobs", body)["ids"]]

    def job_event(self, job_id: int) -> JSON:
        """The payload the runner writes to GITHUB_EVENT_PATH for job `job_id`."""
        payload: JSON = self._call("GET", f"/jobs/{job_id}/event")
        return payload

    def finish_job(self, job_id: int, result: str = "succeeded") -> JSON:
        response: JSON = self._call("POST", f"/jobs/{job_id}/finish", {"result": result})
        return response

    def finish_jobs(self, job_ids: Iterable[int], result: str = "succeeded") -> JSON:
        """Finish many running jobs in one call: `{"finished": [...], "refused": [...]}`
        (refused: not running, or unknown)."""
        response: JSON = self._call(
            "POST", "/jobs/finish", {"ids": list(job_ids), "result": result}
        )
        return response

    def cancel_job(self, job_id: int) -> JSON:
        response: JSON = self._call("POST", f"/jobs/{job_id}/cancel")
        return response

    def connect_runner(self, jit_config: str, version: str | None = None) -> JSON:
        """The runner started with this JIT config comes online (idle). Works once per config.
        `version` is the runner's (None: the newest release); a version below the minimum is
        refused with 400, a deprecated one with 403 (ControlAPIError; the runner stays
        offline)."""
        response: JSON = self._call(
            "POST", "/runners/connect", {"jit_config": jit_config, "version": version}
        )
        return response

    def runner_take_job(self, runner_id: int, job_id: int | None = None) -> JSON:
        response: JSON = self._call("POST", f"/runners/{runner_id}/take", {"job_id": job_id})
        return response

    def runner_dies(self, runner_id: int) -> JSON:
        response: JSON = self._call("POST", f"/runners/{runner_id}/die")
        return response

    # ------------------------------------------------------------------ runner releases

    def announce_runner_release(
        self, version: str, age_days: float = 0.0, published_at: float | str | None = None
    ) -> JSON:
        """Publish runner release `version`, `age_days` ago (or at `published_at`: epoch
        seconds or ISO 8601). The newest release is what the downloads endpoints answer; once
        it is older than `runner_deprecation_days`, runners of older versions are refused."""
        body: JSON = {"version": version}
        if published_at is not None:
            body["published_at"] = published_at
        else:
            body["age_days"] = age_days
        response: JSON = self._call("POST", "/runner_releases", body)
        return response

    def runner_releases(self) -> list[JSON]:
        """The releases, newest first: `version`, `published_at` (epoch seconds), `age_days`."""
        return list(self._call("GET", "/runner_releases")["releases"])

    # ------------------------------------------------------------------ faults

    def add_fault(
        self,
        endpoint: str,
        kind: str = "status",
        *,
        status: int = 500,
        times: int | None = 1,
        probability: float | None = None,
        retry_after: str | int | None = None,
        type_name: str | None = None,
        message: str | None = None,
        body: str = "json",
        delay: float = 0.0,
        after_processing: bool = False,
    ) -> JSON:
        spec = {
            "endpoint": endpoint,
            "kind": kind,
            "status": status,
            "times": times,
            "probability": probability,
            "retry_after": str(retry_after) if retry_after is not None else None,
            "type_name": type_name,
            "message": message,
            "body": body,
            "delay": delay,
            "after_processing": after_processing,
        }
        response: JSON = self._call("POST", "/faults", spec)
        return response

    def faults(self) -> JSON:
        response: JSON = self._call("GET", "/faults")
        return response

    def clear_faults(self) -> None:
        self._call("DELETE", "/faults")

    def add_statistics_fault(
        self,
        *,
        scale_set_id: int | None = None,
        lag: int = 0,
        inflate_assigned: int = 0,
        registered_zero: bool = False,
        missing: bool = False,
        applies_to: str = "all",
        times: int | None = None,
    ) -> JSON:
        response: JSON = self._call(
            "POST",
            "/statistics_faults",
            {
                "scale_set_id": scale_set_id,
                "lag": lag,
                "inflate_assigned": inflate_assigned,
                "registered_zero": registered_zero,
                "missing": missing,
                "applies_to": applies_to,
                "times": times,
            },
        )
        return response

    def clear_statistics_faults(self) -> None:
        self._call("DELETE", "/statistics_faults")

    # ------------------------------------------------------------------ observation

    def state(
        self,
        after_version: int | None = None,
        wait: float = 0.0,
        *,
        parts: Sequence[str] | None = None,
        completed_within: float | None = None,
    ) -> JSON:
        """The world; with `parts` only those keys (and `version`), with `completed_within`
        only the jobs not completed or completed at most that many seconds ago."""
        response: JSON = self._call(
            "GET",
            "/state",
            params={
                "after_version": after_version,
                "wait": wait,
                "parts": ",".join(parts) if parts else None,
                "completed_within": completed_within,
            },
            timeout=wait + 10,
        )
        return response

    def request_counts(self) -> JSON:
        """`{"total": N, "by_endpoint": {...}}`: every request since the last reset (the
        request log keeps only the newest)."""
        response: JSON = self._call("GET", "/request_counts")
        return response

    def requests(
        self,
        after: int = 0,
        wait: float = 0.0,
        endpoint: str | None = None,
        method: str | None = None,
    ) -> list[JSON]:
        response = self._call(
            "GET",
            "/requests",
            params={"after": after, "wait": wait, "endpoint": endpoint, "method": method},
            timeout=wait + 10,
        )
        return list(response["requests"])

    def events(self, after: int = 0, wait: float = 0.0, type: str | None = None) -> list[JSON]:
        response = self._call(
            "GET",
            "/events",
            params={"after": after, "wait": wait, "type": type},
            timeout=wait + 10,
        )
        return list(response["events"])

    def wait_for_request(
        self, predicate: Callable[[JSON], bool], timeout: float = 5.0, after: int = 0
    ) -> JSON:
        """The first logged request after `after` matching the predicate; TimeoutError if none."""
        return _wait_in_log(
            lambda since, wait: self.requests(after=since, wait=wait),
            predicate,
            timeout,
            after,
            "request",
        )

    def wait_for_event(
        self, predicate: Callable[[JSON], bool], timeout: float = 5.0, after: int = 0
    ) -> JSON:
        return _wait_in_log(
            lambda since, wait: self.events(after=since, wait=wait),
            predicate,
            timeout,
            after,
            "event",
        )

    def wait_for_state(self, predicate: Callable[[JSON], bool], timeout: float = 5.0) -> JSON:
        """The first world state satisfying the predicate; TimeoutError with the last state."""
        deadline = time.monotonic() + timeout
        current = self.state()
        while not predicate(current):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"state predicate not met within {timeout} s; last state: "
                    f"jobs={current['jobs']} runners={current['runners']} "
                    f"sessions={current['sessions']} counters={current['counters']}"
                )
            current = self.state(after_version=current["version"], wait=remaining)
        return current


def _wait_in_log(
    fetch: Callable[[int, float], list[JSON]],
    predicate: Callable[[JSON], bool],
    timeout: float,
    after: int,
    what: str,
) -> JSON:
    deadline = time.monotonic() + timeout
    seen: list[JSON] = []
    while True:
        remaining = deadline - time.monotonic()
        entries = fetch(after, max(0.0, remaining))
        for entry in entries:
            if predicate(entry):
                return entry
        seen.extend(entries)
        if entries:
            after = entries[-1]["seq"]
        if time.monotonic() >= deadline:
            tail = [
                {k: e.get(k) for k in ("seq", "method", "path", "endpoint", "status", "type")}
                for e in seen[-10:]
            ]
            raise TimeoutError(f"no matching {what} within {timeout} s; last ones: {tail}")
