"""Runner releases as GitHub serves them: the downloads endpoint of every scope, the release
files, the actions/runner release list, announcing a newer release, and GitHub's runner version
policy (below the minimum: no registration; superseded for more than 30 days: no messages)."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from simulator.github.__main__ import config_from_args, parse_args
from simulator.github.control import ControlAPIError
from simulator.runner_stub import build_runner_tarball
from tests.conftest import GitHubSim, GitHubSimFactory
from tests.simulator.helpers import Actions
from tests.simulator.test_auth import INSTALLATION, _access_token, _app_jwt, app_keys, app_sim

__all__ = ["app_keys", "app_sim"]  # fixtures used here

DAY = 86400.0
SCOPES = ("repos/acme/app", "orgs/acme", "enterprises/big-corp")
FILES = {
    ("osx", "x64", "actions-runner-osx-x64-2.331.0.tar.gz"),
    ("osx", "arm64", "actions-runner-osx-arm64-2.331.0.tar.gz"),
    ("linux", "x64", "actions-runner-linux-x64-2.331.0.tar.gz"),
    ("linux", "arm64", "actions-runner-linux-arm64-2.331.0.tar.gz"),
    ("linux", "arm", "actions-runner-linux-arm-2.331.0.tar.gz"),
    ("win", "x64", "actions-runner-win-x64-2.331.0.zip"),
    ("win", "arm64", "actions-runner-win-arm64-2.331.0.zip"),
}


def _downloads(
    sim: GitHubSim, scope: str = "orgs/acme", token: str | None = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token or sim.pat}"}
    return httpx.get(f"{sim.api_url}/{scope}/actions/runners/downloads", headers=headers)


def _listed(sim: GitHubSim, scope: str = "orgs/acme") -> dict[tuple[str, str], dict[str, str]]:
    response = _downloads(sim, scope)
    assert response.status_code == 200, response.text
    return {(e["os"], e["architecture"]): e for e in response.json()}


def _jit(actions: Actions, name: str = "runner-1") -> str:
    scale_set_id = actions.create_scale_set("linux")
    response = actions.generate_jit(scale_set_id, name)
    assert response.status_code == 200, response.text
    return str(response.json()["encodedJITConfig"])


def _runner(sim: GitHubSim, name: str = "runner-1") -> dict[str, object]:
    return next(r for r in sim.control.state()["runners"] if r["name"] == name)


# ---------------------------------------------------------------------------- downloads endpoint


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("prefix", ["/api/v3", ""])
def test_every_scope_lists_the_newest_release_per_os_and_architecture(
    github_sim: GitHubSim, scope: str, prefix: str
) -> None:
    response = httpx.get(
        f"{github_sim.base_url}{prefix}/{scope}/actions/runners/downloads",
        headers={"Authorization": f"Bearer {github_sim.pat}"},
    )

    assert response.status_code == 200, response.text
    entries = response.json()
    assert {(e["os"], e["architecture"], e["filename"]) for e in entries} == FILES
    linux_sha256 = build_runner_tarball("2.331.0").sha256
    for entry in entries:
        assert set(entry) == {"os", "architecture", "download_url", "filename", "sha256_checksum"}
        assert entry["download_url"] == (
            f"{github_sim.base_url}/actions/runner/releases/download/v2.331.0/{entry['filename']}"
        )
        if entry["os"] == "linux":
            assert entry["sha256_checksum"] == linux_sha256
        else:
            assert len(entry["sha256_checksum"]) == 64
    [logged] = github_sim.control.requests(endpoint="runner_downloads")
    assert (logged["token_kind"], logged["status"]) == ("pat", 200)


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("authorization", [None, "Bearer ghp_not_a_known_token", "Basic eDp5"])
def test_the_downloads_endpoint_needs_a_credential(
    github_sim: GitHubSim, scope: str, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.get(f"{github_sim.api_url}/{scope}/actions/runners/downloads", headers=headers)
    assert response.status_code == 401
    assert response.json()["message"] == "Bad credentials"


def test_an_installation_token_may_list_the_downloads(
    app_sim: GitHubSim, app_keys: tuple[str, str]
) -> None:
    issued = _access_token(app_sim, _app_jwt(app_keys[0]), INSTALLATION)
    assert issued.status_code == 201, issued.text

    response = _downloads(app_sim, token=issued.json()["token"])

    assert response.status_code == 200
    assert len(response.json()) == len(FILES)


def test_ghes_hands_out_a_fresh_temporary_download_token_with_each_file(
    github_sim_factory: GitHubSimFactory,
) -> None:
    sim = github_sim_factory(mode="ghes")
    first, second = _listed(sim), _listed(sim)

    tokens = [e["temp_download_token"] for e in (*first.values(), *second.values())]
    assert len(set(tokens)) == len(tokens) == 2 * len(FILES)
    assert all(len(token) >= 20 for token in tokens)
    # A download that carries one is recognised in the request log, which never shows tokens.
    linux = first["linux", "x64"]
    response = httpx.get(
        linux["download_url"], headers={"Authorization": f"Bearer {linux['temp_download_token']}"}
    )
    assert response.status_code == 200
    [logged] = sim.control.requests(endpoint="runner_release_download")
    assert logged["token_kind"] == "temp_download"
    assert linux["temp_download_token"] not in repr(sim.control.requests())


def test_github_com_has_no_temporary_download_tokens(github_sim: GitHubSim) -> None:
    assert all("temp_download_token" not in entry for entry in _listed(github_sim).values())


# ---------------------------------------------------------------------------- release files


def test_the_linux_files_download_without_auth_and_are_the_stub_of_that_version(
    github_sim: GitHubSim, tmp_path: Path
) -> None:
    linux = [e for e in _listed(github_sim).values() if e["os"] == "linux"]

    for entry in linux:
        response = httpx.get(entry["download_url"])
        assert response.status_code == 200, entry["filename"]
        assert response.headers["content-type"] == "application/gzip"
        assert hashlib.sha256(response.content).hexdigest() == entry["sha256_checksum"]
        target = tmp_path / entry["architecture"]
        with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as archive:
            archive.extractall(target, filter="data")
        version = subprocess.run(
            [sys.executable, str(target / "bin" / "Runner.Listener"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert version.stdout == "2.331.0\n"

    logged = github_sim.control.requests(endpoint="runner_release_download")
    assert [(e["path"], e["token_kind"], e["status"]) for e in logged] == [
        (httpx.URL(e["download_url"]).path, "none", 200) for e in linux
    ]


@pytest.mark.parametrize(
    "path",
    [
        "v2.331.0/actions-runner-win-x64-2.331.0.zip",
        "v2.331.0/actions-runner-osx-arm64-2.331.0.tar.gz",
        "v2.331.0/actions-runner-linux-x64-2.330.0.tar.gz",
        "v2.330.0/actions-runner-linux-x64-2.330.0.tar.gz",
        "v2.331.0/actions-runner-linux-s390x-2.331.0.tar.gz",
    ],
)
def test_other_files_and_unknown_releases_are_not_found(github_sim: GitHubSim, path: str) -> None:
    response = httpx.get(f"{github_sim.base_url}/actions/runner/releases/download/{path}")
    assert response.status_code == 404


# ---------------------------------------------------------------------------- releases


def test_the_release_list_is_public_newest_first_with_publication_times(
    github_sim: GitHubSim,
) -> None:
    control = github_sim.control
    control.announce_runner_release("2.332.0", age_days=2)
    control.announce_runner_release("2.330.0", published_at="2026-10-01T08:00:00Z")
    control.announce_runner_release("2.9.0", published_at=1_600_000_000)  # numerically oldest

    anonymous = httpx.get(f"{github_sim.base_url}/repos/actions/runner/releases")
    with_pat = httpx.get(
        f"{github_sim.api_url}/repos/actions/runner/releases",
        headers={"Authorization": f"Bearer {github_sim.pat}"},
    )

    assert anonymous.status_code == with_pat.status_code == 200
    assert anonymous.json() == with_pat.json()
    releases = anonymous.json()
    assert [r["tag_name"] for r in releases] == ["v2.332.0", "v2.331.0", "v2.330.0", "v2.9.0"]
    assert all(r["name"] == r["tag_name"] for r in releases)
    assert all((r["draft"], r["prerelease"]) == (False, False) for r in releases)
    assert releases[2]["published_at"] == "2026-10-01T08:00:00Z"
    assert releases[3]["published_at"] == "2020-09-13T12:26:40Z"
    published = {
        r["tag_name"]: datetime.fromisoformat(r["published_at"]).timestamp() for r in releases
    }
    assert published["v2.331.0"] == pytest.approx(time.time() - 1 * DAY, abs=60)
    assert published["v2.332.0"] == pytest.approx(time.time() - 2 * DAY, abs=60)
    listed = control.runner_releases()
    assert [r["version"] for r in listed] == ["2.332.0", "2.331.0", "2.330.0", "2.9.0"]
    assert listed[1]["age_days"] == pytest.approx(1.0, abs=0.01)
    assert [e["type"] for e in control.events(type="runner_release")] == ["runner_release"] * 3


def test_the_release_list_pages(github_sim: GitHubSim) -> None:
    github_sim.control.announce_runner_release("2.332.0")
    url = f"{github_sim.base_url}/repos/actions/runner/releases"

    first = httpx.get(url, params={"per_page": 1})
    second = httpx.get(url, params={"per_page": 1, "page": 2})

    assert [r["tag_name"] for r in first.json()] == ["v2.332.0"]
    assert first.headers["link"] == f'<{url}?per_page=1&page=2>; rel="next"'
    assert [r["tag_name"] for r in second.json()] == ["v2.331.0"]
    assert "link" not in second.headers


def test_a_bad_credential_is_refused_even_on_the_public_release_list(
    github_sim: GitHubSim,
) -> None:
    response = httpx.get(
        f"{github_sim.api_url}/repos/actions/runner/releases",
        headers={"Authorization": "Bearer ghp_not_a_known_token"},
    )
    assert response.status_code == 401


def test_ghes_has_no_actions_runner_repository(github_sim_factory: GitHubSimFactory) -> None:
    sim = github_sim_factory(mode="ghes")
    response = httpx.get(
        f"{sim.api_url}/repos/actions/runner/releases",
        headers={"Authorization": f"Bearer {sim.pat}"},
    )
    assert response.status_code == 404
    assert response.json() == {"message": "Not Found"}


def test_a_newer_release_is_what_the_downloads_endpoint_answers_from_then_on(
    github_sim: GitHubSim,
) -> None:
    announced = github_sim.control.announce_runner_release("2.332.0")

    assert announced["version"] == "2.332.0"
    assert announced["age_days"] == pytest.approx(0.0, abs=0.01)
    linux = _listed(github_sim, "repos/acme/app")["linux", "x64"]
    assert linux["filename"] == "actions-runner-linux-x64-2.332.0.tar.gz"
    assert linux["sha256_checksum"] == build_runner_tarball("2.332.0").sha256
    response = httpx.get(linux["download_url"])
    assert hashlib.sha256(response.content).hexdigest() == linux["sha256_checksum"]
    # The previous release's files are still there (VMs booting meanwhile fetch them).
    previous = linux["download_url"].replace("2.332.0", "2.331.0")
    assert httpx.get(previous).status_code == 200


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"version": "2.332"}, 400),
        ({"version": "latest"}, 400),
        ({"version": "2.332.0", "age_days": "old"}, 400),
        ({"version": "2.332.0", "published_at": "yesterday"}, 400),
        ({"version": "2.332.0", "age_days": 1, "published_at": 1_700_000_000}, 400),
        ({}, 400),
        ({"version": "2.331.0"}, 409),
    ],
)
def test_a_malformed_or_duplicate_release_is_refused(
    github_sim: GitHubSim, body: dict[str, object], status: int
) -> None:
    response = httpx.post(f"{github_sim.base_url}/_sim/runner_releases", json=body)
    assert response.status_code == status, response.text
    assert [r["version"] for r in github_sim.control.runner_releases()] == ["2.331.0"]


def test_reset_restores_the_configured_release(github_sim: GitHubSim) -> None:
    github_sim.control.announce_runner_release("2.332.0")
    github_sim.control.reset(runner_version="2.340.0", runner_version_age_days=3)
    [release] = github_sim.control.runner_releases()
    assert release["version"] == "2.340.0"
    assert release["age_days"] == pytest.approx(3.0, abs=0.01)
    [in_state] = github_sim.control.state()["runner_releases"]
    assert (in_state["version"], in_state["published_at"]) == ("2.340.0", release["published_at"])


def test_faults_can_target_the_release_endpoints(github_sim: GitHubSim) -> None:
    control = github_sim.control
    control.add_fault("runner_downloads", status=503)
    control.add_fault("runner_releases", status=502)
    control.add_fault("runner_release_download", status=500)

    assert _downloads(github_sim).status_code == 503
    assert httpx.get(f"{github_sim.base_url}/repos/actions/runner/releases").status_code == 502
    url = _listed(github_sim)["linux", "x64"]["download_url"]
    assert httpx.get(url).status_code == 500
    assert httpx.get(url).status_code == 200


def test_the_release_routes_do_not_shadow_repository_routes(github_sim: GitHubSim) -> None:
    pat = {"Authorization": f"Bearer {github_sim.pat}"}
    api = github_sim.api_url
    # The actions/runner repository is a repository like any other for the downloads endpoint.
    assert httpx.get(
        f"{api}/repos/actions/runner/actions/runners/downloads", headers=pat
    ).is_success
    registration = httpx.post(
        f"{api}/repos/actions/runner/actions/runners/registration-token", headers=pat
    )
    assert registration.status_code == 201
    assert httpx.get(f"{api}/repos/actions/runner/releases").is_success
    assert httpx.get(f"{api}/repos/acme/app/releases").status_code == 404
    endpoints = [e["endpoint"] for e in github_sim.control.requests()]
    assert endpoints == ["runner_downloads", "registration_token", "runner_releases", None]


# ---------------------------------------------------------------------------- runner policy


def test_a_runner_below_the_minimum_version_is_refused_and_stays_offline(
    github_sim: GitHubSim, actions: Actions
) -> None:
    jit = _jit(actions)

    with pytest.raises(ControlAPIError) as refused:
        github_sim.control.connect_runner(jit, version="2.328.0")

    assert refused.value.status == 400
    assert refused.value.message == (
        "Runner version v2.328.0 is older than the minimum v2.329.0 and cannot be registered."
    )
    runner = _runner(github_sim)
    assert (runner["state"], runner["version"], runner["jit_used"]) == ("offline", "2.328.0", False)
    [event] = github_sim.control.events(type="runner_refused")
    assert (event["runner_id"], event["name"], event["version"], event["reason"]) == (
        runner["id"],
        "runner-1",
        "2.328.0",
        "below_minimum",
    )
    assert github_sim.control.state()["counters"]["runners_refused"] == 1


def test_a_runner_superseded_for_more_than_30_days_is_deprecated_and_gets_no_job(
    github_sim: GitHubSim, actions: Actions
) -> None:
    scale_set_id = actions.create_scale_set("linux")
    actions.create_session(scale_set_id)
    response = actions.generate_jit(scale_set_id, "runner-1")
    assert response.status_code == 200, response.text
    github_sim.control.announce_runner_release("2.332.0", age_days=31)

    with pytest.raises(ControlAPIError) as refused:
        github_sim.control.connect_runner(response.json()["encodedJITConfig"], version="2.331.0")

    assert refused.value.status == 403
    assert refused.value.message == (
        "Runner version v2.331.0 is deprecated and cannot receive messages."
    )
    runner = _runner(github_sim)
    assert (runner["state"], runner["version"], runner["refused"]) == (
        "offline",
        "2.331.0",
        refused.value.message,
    )
    [event] = github_sim.control.events(type="runner_refused")
    assert (event["runner_id"], event["name"], event["version"], event["reason"]) == (
        runner["id"],
        "runner-1",
        "2.331.0",
        "deprecated",
    )
    [job_id] = github_sim.control.enqueue_jobs(["linux"])
    with pytest.raises(ControlAPIError) as no_job:
        github_sim.control.runner_take_job(int(str(runner["id"])))
    assert no_job.value.status == 409
    job = next(j for j in github_sim.control.state()["jobs"] if j["id"] == job_id)
    assert (job["state"], job["runner_id"]) == ("assigned", None)


def test_a_runner_whose_successor_is_29_days_old_still_connects(
    github_sim: GitHubSim, actions: Actions
) -> None:
    jit = _jit(actions)
    github_sim.control.announce_runner_release("2.332.0", age_days=29)

    runner = github_sim.control.connect_runner(jit, version="2.331.0")

    assert (runner["state"], runner["version"], runner["refused"]) == ("idle", "2.331.0", None)
    assert github_sim.control.events(type="runner_refused") == []


def test_the_deprecation_clock_starts_with_the_first_newer_release(
    github_sim: GitHubSim, actions: Actions
) -> None:
    # 2.330.0 was superseded by 2.331.0 one day ago (the default): fine, despite 2.329.0 being
    # years older.
    github_sim.control.announce_runner_release("2.329.0", age_days=400)
    runner = github_sim.control.connect_runner(_jit(actions), version="2.330.0")
    assert runner["state"] == "idle"


def test_without_a_version_a_runner_is_the_newest_release(
    github_sim: GitHubSim, actions: Actions
) -> None:
    github_sim.control.announce_runner_release("2.332.0", age_days=31)
    runner = github_sim.control.connect_runner(_jit(actions))
    assert (runner["state"], runner["version"]) == ("idle", "2.332.0")
    [event] = github_sim.control.events(type="runner_state")
    assert event["version"] == "2.332.0"


def test_a_refusal_does_not_use_up_the_jit_config(github_sim: GitHubSim, actions: Actions) -> None:
    jit = _jit(actions)
    with pytest.raises(ControlAPIError):
        github_sim.control.connect_runner(jit, version="2.300.0")
    assert github_sim.control.connect_runner(jit, version="v2.331.0")["state"] == "idle"


def test_versions_compare_numerically(github_sim_factory: GitHubSimFactory) -> None:
    sim = github_sim_factory(runner_version="2.10.0", runner_min_version="2.10.0")
    actions = Actions(sim)
    try:
        scale_set_id = actions.create_scale_set("linux")
        jits = [
            str(actions.generate_jit(scale_set_id, f"runner-{n}").json()["encodedJITConfig"])
            for n in (1, 2)
        ]
    finally:
        actions.close()
    with pytest.raises(ControlAPIError) as refused:
        sim.control.connect_runner(jits[0], version="2.9.0")
    assert refused.value.status == 400
    assert sim.control.connect_runner(jits[1], version="2.10.0")["state"] == "idle"


@pytest.mark.parametrize("version", ["latest", "2.331", "", "2.331.0-beta"])
def test_a_malformed_runner_version_is_a_bad_request(
    github_sim: GitHubSim, actions: Actions, version: str
) -> None:
    jit = _jit(actions)
    with pytest.raises(ControlAPIError) as refused:
        github_sim.control.connect_runner(jit, version=version)
    assert refused.value.status == 400
    assert "malformed runner version" in refused.value.message
    assert github_sim.control.events(type="runner_refused") == []


def test_the_policy_follows_config_changes(github_sim: GitHubSim, actions: Actions) -> None:
    github_sim.control.patch_config(runner_min_version="2.331.0")
    with pytest.raises(ControlAPIError) as refused:
        github_sim.control.connect_runner(_jit(actions), version="2.330.0")
    assert refused.value.status == 400


# ---------------------------------------------------------------------------- the command


def test_the_command_line_sets_the_runner_releases() -> None:
    config = config_from_args(
        parse_args(
            [
                "--runner-version",
                "2.340.1",
                "--runner-version-age-days",
                "12.5",
                "--runner-min-version",
                "2.335.0",
                "--runner-deprecation-days",
                "14",
            ]
        )
    )
    assert (
        config.runner_version,
        config.runner_version_age_days,
        config.runner_min_version,
        config.runner_deprecation_days,
    ) == ("2.340.1", 12.5, "2.335.0", 14.0)
    defaults = config_from_args(parse_args([]))
    assert (defaults.runner_version, defaults.runner_min_version) == ("2.331.0", "2.329.0")


def test_a_malformed_configured_version_is_refused() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--runner-deprecation-days", "soon"])
    with pytest.raises(ValueError, match="runner_version"):
        config_from_args(parse_args(["--runner-version", "latest"]))
