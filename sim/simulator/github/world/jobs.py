"""Jobs: queued, matched to a scale set with a live session, offered (ghes) or assigned,
acquired, taken by a runner, finished; withdrawn and re-queued when no runner takes them.

The job messages the listener reads (JobAvailable, JobAssigned, JobStarted, JobCompleted) are
posted to the set's message queue as the job moves.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from simulator.github.events import job_event
from simulator.github.model import JSON, ControlError, Job, Runner, ScaleSet, wire_time

if TYPE_CHECKING:
    from simulator.github.world import World

IN_FLIGHT = ("available", "acquired", "assigned", "running")
ZEROABLE = frozenset({"runnerRequestId", "workflowRunId", "jobId"})
# What a job may ask of the runner that takes it (simulator.sandbox's stub runner obeys): crash
# (the runner dies, its job fails) or hang (it never reports; auto_finish leaves the job running).
RUNNER_BEHAVIOURS = frozenset({"crash", "hang"})


class Jobs:
    def __init__(self, world: World) -> None:
        self._world = world
        self._ledger = world.ledger
        self.by_id: dict[int, Job] = {}
        self._next_request_id = 1001
        self._next_run_id = 9001

    def enqueue(self, spec: JSON) -> list[int]:
        labels = [str(label) for label in spec.get("labels") or []]
        if not labels:
            raise ControlError(400, "labels are required")
        zero = frozenset(spec.get("zero_fields") or ())
        if not zero <= ZEROABLE:
            raise ControlError(400, f"zero_fields must be within {sorted(ZEROABLE)}")
        runner_behaviour = spec.get("runner_behaviour")
        if runner_behaviour is not None and runner_behaviour not in RUNNER_BEHAVIOURS:
            raise ControlError(
                400, f"runner_behaviour must be null or one of {sorted(RUNNER_BEHAVIOURS)}"
            )
        count = int(spec.get("count", 1))
        owner = str(spec.get("owner", "acme"))
        repository = str(spec.get("repository", "app"))
        run_id = self._next_run_id
        self._next_run_id += 1
        ids: list[int] = []
        event_name = str(spec.get("event_name") or "push")
        head_repository = spec.get("head_repository")
        payload = spec.get("event_payload")
        if payload is not None and not isinstance(payload, dict):
            raise ControlError(400, "event_payload must be a JSON object")
        for index in range(count):
            event = job_event(
                event_name,
                owner,
                repository,
                ref=spec.get("ref") or None,
                head_ref=spec.get("head_ref") or None,
                base_ref=spec.get("base_ref") or None,
                head_repository=str(head_repository) if head_repository else None,
                number=self._next_request_id,
            )
            job = Job(
                runner_request_id=self._next_request_id,
                job_id=str(uuid.uuid4()),
                labels=labels,
                repository=repository,
                owner=owner,
                workflow_ref=str(
                    spec.get("workflow_ref")
                    or f"{owner}/{repository}/.github/workflows/ci.yml@refs/heads/main"
                ),
                event_name=event_name,
                display_name=str(spec.get("display_name") or f"build ({index + 1})"),
                workflow_run_id=run_id,
                duration=spec.get("duration"),
                result=str(spec.get("result", "succeeded")),
                zero_fields=zero,
                queue_time=time.time(),
                runner_behaviour=runner_behaviour,
                ref=event.ref,
                head_ref=event.head_ref,
                base_ref=event.base_ref,
                event_payload=payload if payload is not None else event.payload,
            )
            self._next_request_id += 1
            self.by_id[job.runner_request_id] = job
            ids.append(job.runner_request_id)
            self._ledger.count("jobs_enqueued")
            self._ledger.event("job_state", job=job.runner_request_id, state="queued")
        self.schedule()
        return ids

    def get(self, job_id: int) -> Job:
        job = self.by_id.get(job_id)
        if job is None:
            raise ControlError(404, f"no job {job_id}")
        return job

    # ------------------------------------------------------------------ offering and acquiring

    def acquirable(self, ss_id: int) -> list[JSON]:
        self._world.scale_sets.get(ss_id)
        return [
            {
                "acquireJobUrl": self._acquire_url(job),
                "messageType": "JobAvailable",
                "runnerRequestId": job.runner_request_id,
                "repositoryName": job.repository,
                "ownerName": job.owner,
                "jobWorkflowRef": job.workflow_ref,
                "eventName": job.event_name,
                "requestLabels": list(job.labels),
            }
            for job in self.by_id.values()
            if job.scale_set_id == ss_id and job.state == "available"
        ]

    def acquire(self, ss_id: int, ids: Iterable[int]) -> list[int]:
        self._ledger.count("acquire_calls")
        acquired: list[int] = []
        for job_id in ids:
            job = self.by_id.get(job_id)
            if job is None or job.scale_set_id != ss_id or job.state != "available":
                continue
            job.state = "acquired"
            self._ledger.event(
                "job_state", job=job.runner_request_id, state="acquired", scale_set_id=ss_id
            )
            acquired.append(job_id)
            self._ledger.count("jobs_acquired")
            self._assign(job, self._world.scale_sets.by_id[ss_id])
        self._ledger.event("acquire", scale_set_id=ss_id, acquired=acquired)
        return acquired

    # ------------------------------------------------------------------ matching and assigning

    def schedule(self) -> None:
        """Move queued jobs to matching scale sets, and let idle runners take work (auto_take)."""
        config = self._world.config
        now = asyncio.get_running_loop().time()
        waiting = [
            job
            for job in self.by_id.values()
            if job.state == "queued" and not job.parked and job.not_before <= now
        ]
        if not waiting:
            # Nothing to place: skip counting (thousands of jobs, on every change).
            self._auto_take(config.auto_take)
            return
        # Counted once per pass and kept up to date below, not once per job and set.
        in_flight: dict[int | None, int] = {}
        for job in self.by_id.values():
            if job.state in IN_FLIGHT:
                in_flight[job.scale_set_id] = in_flight.get(job.scale_set_id, 0) + 1
        for job in sorted(waiting, key=lambda j: j.runner_request_id):
            ss = self._candidate(job, in_flight)
            if ss is None:
                continue
            job.scale_set_id = ss.id
            if config.mode == "ghes":
                job.state = "available"
                self._post(job, "JobAvailable", acquireJobUrl=self._acquire_url(job))
                self._ledger.event(
                    "job_state", job=job.runner_request_id, state="available", scale_set_id=ss.id
                )
            else:
                self._assign(job, ss)
            if job.state in IN_FLIGHT:
                in_flight[ss.id] = in_flight.get(ss.id, 0) + 1
        self._auto_take(config.auto_take)

    def _auto_take(self, enabled: bool) -> None:
        if enabled:
            for runner in sorted(self._world.runners.by_id.values(), key=lambda r: r.id):
                if runner.state == "idle" and self._oldest_assigned(runner.scale_set_id):
                    self.take(runner.id, None)

    def _candidate(self, job: Job, in_flight_by_set: dict[int | None, int]) -> ScaleSet | None:
        """The least loaded scale set with a live session whose labels (and name) cover the
        job's labels and that has capacity left."""
        wanted = {label.lower() for label in job.labels}
        best: tuple[int, int, ScaleSet] | None = None
        for ss in self._world.scale_sets.by_id.values():
            session = self._world.sessions.live(ss.id)
            if session is None or session.ghost:
                continue
            if not wanted <= {label.lower() for label in ss.labels} | {ss.name.lower()}:
                continue
            in_flight = in_flight_by_set.get(ss.id, 0)
            if ss.max_capacity is not None and in_flight >= ss.max_capacity:
                continue
            key = (in_flight, ss.id, ss)
            if best is None or key[:2] < best[:2]:
                best = key
        return best[2] if best else None

    def _assign(self, job: Job, ss: ScaleSet) -> None:
        job.state = "assigned"
        job.scale_set_id = ss.id
        job.scale_set_assign_time = time.time()
        job.assign_generation += 1
        self._post(job, "JobAssigned")
        self._ledger.event(
            "job_state", job=job.runner_request_id, state="assigned", scale_set_id=ss.id
        )
        timeout = self._world.config.assign_timeout
        if timeout is not None:
            generation = job.assign_generation
            self._ledger.later(timeout, lambda: self._assign_timed_out(job, generation))

    def _assign_timed_out(self, job: Job, generation: int) -> None:
        """No runner took the job in time: withdraw it and offer it again later (or park it
        after `max_reassignments`)."""
        if job.state != "assigned" or job.assign_generation != generation:
            return
        config = self._world.config
        job.finish_time = time.time()
        self._post(job, "JobCompleted", result="canceled", runnerId=0, runnerName="")
        job.withdrawals += 1
        self._ledger.count("withdrawals")
        job.state, job.scale_set_id = "queued", None
        job.scale_set_assign_time = job.finish_time = None
        if job.withdrawals > config.max_reassignments:
            job.parked = True
        else:
            delay = config.reassign_base_delay * 2 ** (job.withdrawals - 1)
            job.not_before = asyncio.get_running_loop().time() + delay
            self._ledger.later(delay, self.schedule)
        self._ledger.event(
            "job_withdrawn",
            job=job.runner_request_id,
            withdrawals=job.withdrawals,
            parked=job.parked,
        )
        self._ledger.event("job_state", job=job.runner_request_id, state="queued")
        self.schedule()

    def _oldest_assigned(self, ss_id: int) -> Job | None:
        assigned = [
            j for j in self.by_id.values() if j.scale_set_id == ss_id and j.state == "assigned"
        ]
        return min(assigned, key=lambda j: j.runner_request_id) if assigned else None

    # ------------------------------------------------------------------ running and ending

    def take(self, runner_id: int, job_id: int | None) -> Job:
        """An idle runner starts a job assigned to its set (by default the oldest)."""
        runner = self._world.runners.get(runner_id)
        if runner.state != "idle":
            raise ControlError(409, f"runner {runner.name} is {runner.state}, not idle")
        if job_id is None:
            job = self._oldest_assigned(runner.scale_set_id)
            if job is None:
                raise ControlError(409, f"no job assigned to scale set {runner.scale_set_id}")
        else:
            job = self.get(job_id)
            if job.state != "assigned" or job.scale_set_id != runner.scale_set_id:
                raise ControlError(409, f"job {job_id} is {job.state}, not assigned to the set")
        job.state = "running"
        job.runner_id, job.runner_name = runner.id, runner.name
        job.runner_assign_time = time.time()
        runner.state, runner.job = "busy", job.runner_request_id
        self._post(job, "JobStarted", runnerId=runner.id, runnerName=runner.name)
        self._ledger.event(
            "job_state",
            job=job.runner_request_id,
            state="running",
            scale_set_id=job.scale_set_id,
            runner_id=runner.id,
        )
        config = self._world.config
        if config.auto_finish and job.duration is not None and job.runner_behaviour != "hang":
            self._ledger.later(float(job.duration), lambda: self._auto_finish(job, runner.id))
        return job

    def _auto_finish(self, job: Job, runner_id: int) -> None:
        if job.state == "running" and job.runner_id == runner_id:
            self.finish(job.runner_request_id, job.result)

    def finish(self, job_id: int, result: str) -> Job:
        job = self.get(job_id)
        if job.state != "running":
            raise ControlError(409, f"job {job_id} is {job.state}, not running")
        self._complete(job, result)
        return job

    def cancel(self, job_id: int) -> Job:
        job = self.get(job_id)
        if job.state == "completed":
            raise ControlError(409, f"job {job_id} already completed")
        self._complete(job, "canceled")
        return job

    def runner_died(self, job: Job, runner: Runner) -> None:
        """The runner running `job` died: the job fails; the runner stays registered."""
        job.finish_time = time.time()
        job.final_result = "failed"
        self._post(job, "JobCompleted", result="failed", runnerId=runner.id, runnerName=runner.name)
        job.state = "completed"
        self._ledger.count("jobs_completed")
        self._ledger.event(
            "job_state",
            job=job.runner_request_id,
            state="completed",
            result="failed",
            scale_set_id=job.scale_set_id,
        )

    def drop_scale_set(self, ss_id: int) -> None:
        """The scale set is being deleted: its running jobs are canceled (no message: the queue
        goes too), the others go back to the queue for another set."""
        for job in list(self.by_id.values()):
            if job.scale_set_id != ss_id or job.state == "completed":
                continue
            if job.state == "running":
                self._complete(job, "canceled", emit=False)
            else:
                # Assigned but not running: back to the queue for another set.
                job.state, job.scale_set_id = "queued", None
                self._ledger.event("job_state", job=job.runner_request_id, state="queued")

    def _complete(self, job: Job, result: str, emit: bool = True) -> None:
        job.finish_time = time.time()
        job.final_result = result
        runners = self._world.runners
        runner = runners.by_id.get(job.runner_id) if job.runner_id is not None else None
        if emit and job.state != "queued":
            self._post(
                job,
                "JobCompleted",
                result=result,
                runnerId=runner.id if runner else 0,
                runnerName=runner.name if runner else "",
            )
        job.state = "completed"
        self._ledger.count("jobs_completed")
        self._ledger.event(
            "job_state",
            job=job.runner_request_id,
            state="completed",
            result=result,
            scale_set_id=job.scale_set_id,
        )
        if runner is not None and runner.job == job.runner_request_id:
            # Scale-set runners are ephemeral: one job, then the service forgets them.
            runners.forget(runner, reason="ephemeral")
        self.schedule()

    # ------------------------------------------------------------------ job messages

    def _post(self, job: Job, message_type: str, **extra: Any) -> None:
        self._world.messages.post(job.scale_set_id, self._job_message(job, message_type, **extra))

    def _job_message(self, job: Job, message_type: str, **extra: Any) -> JSON:
        message: JSON = {
            "messageType": message_type,
            "runnerRequestId": job.runner_request_id,
            "jobId": job.job_id,
            "repositoryName": job.repository,
            "ownerName": job.owner,
            "jobWorkflowRef": job.workflow_ref,
            "jobDisplayName": job.display_name,
            "workflowRunId": job.workflow_run_id,
            "eventName": job.event_name,
            "requestLabels": list(job.labels),
            "queueTime": wire_time(job.queue_time),
            "scaleSetAssignTime": wire_time(job.scale_set_assign_time),
            "runnerAssignTime": wire_time(job.runner_assign_time),
            "finishTime": wire_time(job.finish_time),
            **extra,
        }
        for name in job.zero_fields:
            message[name] = "" if name == "jobId" else 0
        return message

    def _acquire_url(self, job: Job) -> str:
        return (
            f"{self._world.tenant_url}_apis/runtime/runnerscalesets/{job.scale_set_id}"
            f"/acquirejob/{job.runner_request_id}"
        )
