"""The stub "actions/runner release": the runner tarball sandbox VMs download, one per version.

The simulated GitHub serves it as its runner release files (`simulator.github`) and the sandbox's
mirror serves it for pinned versions (`simulator.sandbox.downloads`); stdlib only, so both can
build it. The tarball has the real runner's entry points: `run.sh` (a bash script that starts
`bin/Runner.Listener` and exits with its code, as the real one does) and `bin/Runner.Listener`,
a stdlib-only Python script that names its process `Runner.Listener` (prctl PR_SET_NAME), so the
probe's `pgrep -x Runner.Listener` finds it. The version is built in:
`bin/Runner.Listener --version` prints it, as the real runner does.

`run.sh --jitconfig <config>` decodes the JIT config (the GitHub simulator's is base64 JSON with
the simulator's `serverUrl`), connects to the simulated Actions service with it and its version
(the service refuses a version below the minimum or deprecated: the stub logs the service's
message as `Runner.Listener: An error occurred: <message>` and exits 1), takes one job of
its scale set (unless the service's `auto_take` gave it one), "runs" it for the job's
`duration` (then finishes it with the job's configured result; a 409 means `auto_finish` or a
test was first), and exits 0 when the job succeeded, else 1. A registration removed while idle,
or a runner marked offline, ends it with 1.

Job hooks as the real runner runs them: `bin/Runner.Listener` first sets every `KEY=VALUE` line
of the runner's `.env` in its environment; then, around a job, the script named by
`ACTIONS_RUNNER_HOOK_JOB_STARTED` runs before the job's steps ("Set up runner") and the one named
by `ACTIONS_RUNNER_HOOK_JOB_COMPLETED` after them, before the job completes ("Complete runner";
also for a job finished from outside). Each is an absolute path to a `.sh` file run with
`bash -e` as the runner's user, with its environment plus the job's `GITHUB_*` variables
(GITHUB_EVENT_NAME, GITHUB_REPOSITORY, GITHUB_REPOSITORY_OWNER, GITHUB_REF, GITHUB_HEAD_REF,
GITHUB_BASE_REF, and GITHUB_EVENT_PATH: the event's payload from the service, written under
`_work/_temp/_github_workflow/` as the real runner does); a hook that fails fails the job (a
failing started hook skips the steps).

A job may ask for a failure (`runner_behaviour` in the GitHub simulator's job): `crash` (as
below) or `hang` (the runner never reports; the job stays running, the VM up). Failure
behaviours per server come from `/etc/scaleset-sandbox/runner.json` inside the VM (written by the
sandbox; a light VM's is under `$SCALESET_GUEST_ROOT`): `crash` (once its job runs, after
`crash_after` seconds, the runner dies: the service sees it go offline, the process exits 1) and
`wedge` (the same, but the process hangs instead of exiting, so the VM stays up without a word).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import re
import tarfile
from dataclasses import dataclass

BEHAVIOUR_PATH = "/etc/scaleset-sandbox/runner.json"

RUN_SH = """\
#!/bin/bash
# Stub of the GitHub Actions runner's run.sh (simulator.runner_stub): it starts the listener and
# exits with its exit code.
cd "$(dirname "$0")"
bin/Runner.Listener run "$@"
exit $?
"""

RUNNER_LISTENER = r'''#!/usr/bin/env python3
"""Stub Runner.Listener (simulator.runner_stub): one job against the GitHub simulator."""
import base64
import ctypes
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

BEHAVIOUR_PATH = "@BEHAVIOUR_PATH@"
VERSION = "@VERSION@"
STARTED_HOOK = "ACTIONS_RUNNER_HOOK_JOB_STARTED"
COMPLETED_HOOK = "ACTIONS_RUNNER_HOOK_JOB_COMPLETED"


def log(message):
    print(f"{time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime())} Runner.Listener: {message}",
          flush=True)


class Api:
    def __init__(self, base):
        self.base = base.rstrip("/") + "/_sim"

    def call(self, method, path, body=None, timeout=60.0):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
                return response.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, {"error": raw.decode(errors="replace")}


def hang():
    while True:
        time.sleep(3600)


def load_env_file(root):
    """As the real Runner.Listener does at start: every KEY=VALUE line of <runner root>/.env is
    set in its environment, over what the environment already had."""
    try:
        with open(os.path.join(root, ".env")) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return
    for line in lines:
        key, separator, value = line.partition("=")
        if separator and key:
            os.environ[key] = value


def event_file(api, work, job):
    """As the real runner does before a job: the event's webhook payload written to
    <_work>/_temp/_github_workflow/event.json (GITHUB_EVENT_PATH). None when the service
    does not give it (the file is then not written)."""
    path = os.path.join(work, "_temp", "_github_workflow", "event.json")
    if os.path.exists(path):
        return path
    status, payload = api.call("GET", f"/jobs/{job['id']}/event")
    if status != 200:
        log(f"the event payload of job {job['id']}: the service answered {status}")
        return None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(payload, handle)
    return path


def run_hook(variable, step, root, runner_name, job, api):
    """The job hook named by `variable` (ACTIONS_RUNNER_HOOK_JOB_STARTED or _COMPLETED), as the
    real runner runs it: an absolute path to a .sh file, run with `bash -e` (or sh) as this
    runner's user, with this runner's environment plus the job's GITHUB_* variables (its event,
    repository, refs and the payload's file). True when there is none or it exits 0;
    otherwise the job fails, as the real one's does."""
    path = os.environ.get(variable, "")
    if not path:
        return True
    if not os.path.isabs(path) or not path.endswith(".sh"):
        log(f"{step}: {variable}={path} is not an absolute path to a .sh file")
        return False
    shell = shutil.which("bash") or shutil.which("sh")
    work = os.path.join(root, "_work")
    os.makedirs(work, exist_ok=True)
    owner, repository = job.get("owner") or "", job.get("repository") or ""
    env = dict(
        os.environ,
        CI="true",
        GITHUB_ACTIONS="true",
        GITHUB_JOB=f"job-{job['id']}",
        GITHUB_RUN_ID=str(job["id"]),
        GITHUB_EVENT_NAME=job.get("event_name") or "",
        GITHUB_REPOSITORY=f"{owner}/{repository}",
        GITHUB_REPOSITORY_OWNER=owner,
        GITHUB_REF=job.get("ref") or "",
        GITHUB_REF_NAME=(job.get("ref") or "").rsplit("/", 1)[-1],
        GITHUB_HEAD_REF=job.get("head_ref") or "",
        GITHUB_BASE_REF=job.get("base_ref") or "",
        GITHUB_WORKSPACE=os.path.join(work, repository, repository),
        RUNNER_NAME=runner_name,
        RUNNER_TEMP=os.path.join(work, "_temp"),
    )
    event_path = event_file(api, work, job)
    if event_path is not None:
        env["GITHUB_EVENT_PATH"] = event_path
    log(f"{step}: running {path}")
    done = subprocess.run([shell, "-e", path], env=env, cwd=work, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        log(f"{step}: {path} exited {done.returncode}")
    return done.returncode == 0


def name_process():
    """`env python3` leaves the process named python3; the probe looks for Runner.Listener."""
    try:
        ctypes.CDLL(None).prctl(15, b"Runner.Listener", 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def main(argv):
    if argv[1:] == ["--version"]:
        print(VERSION, flush=True)
        return 0
    name_process()
    root = os.path.dirname(os.path.dirname(os.path.abspath(argv[0])))
    load_env_file(root)
    if len(argv) < 3 or argv[1] != "run" or "--jitconfig" not in argv:
        log("usage: Runner.Listener run --jitconfig <config>")
        return 2
    jit = argv[argv.index("--jitconfig") + 1]
    try:
        document = json.loads(base64.b64decode(jit, validate=True))
        server = str(document["serverUrl"])
    except (ValueError, KeyError, TypeError):
        log("the JIT config is not one this runner understands")
        return 1
    try:
        # A light VM's files live under its root directory (no mount namespace).
        with open(os.environ.get("SCALESET_GUEST_ROOT", "") + BEHAVIOUR_PATH) as handle:
            behaviour = json.load(handle)
    except (OSError, ValueError):
        behaviour = {}
    failure = behaviour.get("failure")
    api = Api(server)
    status, runner = api.call("POST", "/runners/connect", {"jit_config": jit, "version": VERSION})
    if status != 200:
        # As the real runner words it, e.g. "Runner version v2.330.0 is deprecated and cannot
        # receive messages."
        error = runner.get("error") if isinstance(runner, dict) else None
        log(f"An error occurred: {error or f'the service answered {status}'}")
        return 1
    runner_id, scale_set, name = runner["id"], runner["scale_set_id"], runner["name"]
    log(f"connected as runner {runner['name']} (id {runner_id}, version {VERSION}); "
        "listening for jobs")
    seen = -1
    job = None
    completed, hook_ok = False, True
    while True:
        status, world = api.call("GET", f"/state?after_version={seen}&wait=20", timeout=60)
        if status != 200:
            log(f"state answered {status}")
            time.sleep(0.5)
            continue
        seen = world["version"]
        mine = next((r for r in world["runners"] if r["id"] == runner_id), None)
        if job is None:
            if mine is None:
                log("the registration was removed while idle")
                return 1
            if mine["state"] == "offline":
                log("the service marked this runner offline")
                return 1
            if mine["state"] == "busy" and mine.get("job") is not None:
                job = next(j for j in world["jobs"] if j["id"] == mine["job"])
            elif any(j["state"] == "assigned" and j["scale_set_id"] == scale_set
                     for j in world["jobs"]):
                status, taken = api.call("POST", f"/runners/{runner_id}/take", {})
                if status != 200:
                    continue  # 409: another runner, or auto_take, was first
                job = taken
            if job is None:
                continue
            log(f"running job {job['id']} ({job.get('duration')} s)")
            if not run_hook(STARTED_HOOK, "Set up runner", root, name, job, api):
                # The job's steps never run; the post-job hook still does.
                hook_ok = run_hook(COMPLETED_HOOK, "Complete runner", root, name, job, api)
                completed = True
                api.call("POST", f"/jobs/{job['id']}/finish", {"result": "failed"})
                continue
            asked = job.get("runner_behaviour")
            if asked == "hang":
                log("the job hangs")
                hang()
            if asked == "crash":
                failure = "crash"
            if failure in ("crash", "wedge"):
                time.sleep(float(behaviour.get("crash_after", 0.0)))
                api.call("POST", f"/runners/{runner_id}/die")
                log("crashed")
                if failure == "wedge":
                    hang()
                return 1
            if job.get("duration") is not None:
                time.sleep(float(job["duration"]))
                # The post-job hook runs at the end of the job, before it completes.
                hook_ok = run_hook(COMPLETED_HOOK, "Complete runner", root, name, job, api)
                completed = True
                result = job.get("configured_result") or "succeeded"
                api.call("POST", f"/jobs/{job['id']}/finish",
                         {"result": result if hook_ok else "failed"})
            continue
        done = next((j for j in world["jobs"] if j["id"] == job["id"]), None)
        if done is not None and done["state"] == "completed":
            if not completed:  # finished from outside (canceled): post-job steps still run
                hook_ok = run_hook(COMPLETED_HOOK, "Complete runner", root, name, job, api)
                completed = True
            result = done.get("result")
            log(f"job {job['id']} completed: {result}")
            return 0 if result == "succeeded" and hook_ok else 1
        if mine is not None and mine["state"] == "offline":
            log("the service marked this runner offline")
            return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
'''.replace("@BEHAVIOUR_PATH@", BEHAVIOUR_PATH)

_VERSION = re.compile(r"\d+\.\d+\.\d+")


@dataclass(frozen=True)
class RunnerTarball:
    """The stub runner as the bootstrap downloads it."""

    data: bytes
    sha256: str


def runner_files(version: str) -> dict[str, str]:
    """The stub runner `version`'s files (path in the runner directory -> text, all 0755): what
    the tarball holds, and what an image with a baked runner has in its runner directory."""
    if not _VERSION.fullmatch(version):
        raise ValueError(f"runner version {version!r} is not like 2.331.0")
    return {"run.sh": RUN_SH, "bin/Runner.Listener": RUNNER_LISTENER.replace("@VERSION@", version)}


@functools.lru_cache(maxsize=32)
def build_runner_tarball(version: str) -> RunnerTarball:
    """The stub of runner `version` (like 2.331.0): a gzipped tarball of `run.sh` and
    `bin/Runner.Listener`, both 0755, owned by root. Same version, same bytes: built once per
    process, whoever serves it (the simulated GitHub, a mirror)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for name, text in runner_files(version).items():
            payload = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(payload), 0o755, 1_700_000_000
            archive.addfile(info, io.BytesIO(payload))
    # Fixed times: the same stub has the same sha256 on every run.
    data = gzip.compress(buffer.getvalue(), mtime=0)
    return RunnerTarball(data, hashlib.sha256(data).hexdigest())
