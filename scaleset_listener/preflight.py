"""`scaleset-listener check-config --online`: every check a deployment's first minutes would make,
made at once and read-only, one line each.

    ok    OPENSTACK_IMAGE              ubuntu-24.04 (id 5c1f...)
    FAIL  OPENSTACK_NETWORK            no network named 'x' (nor with that id)

GitHub: the credential is exchanged for the Actions service's admin token (the chain the service
starts with), each scale set's runner group is resolved and the scale set found ("would create"
when it is not there: nothing is created), and the runner release resolves. The cloud: the
provisioner's own pre-flight (provisioners.openstack) per cloud and placement, with the quota
headroom for the sum of max_runners of every scale set per flavor on each cloud, as they all
create in its one project; and the bootstrap is rendered with a placeholder JIT config of
JIT_CONFIG_PLACEHOLDER_SIZE characters (real ones are a few KiB of base64) to see that user_data
fits Nova's limit.

Failures are reported per check (unreachable services too) and name the setting to fix; the
exit code is 2 when any check failed. `warn` lines do not fail the run.
"""

from __future__ import annotations

import base64
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from provisioners.bootstrap import BootstrapError, generate_host_key
from provisioners.naming import Ownership, runner_name
from provisioners.openstack import USER_DATA_LIMIT, CloudCheck, OpenStackProvisioner
from scaleset_listener.actions_client import ActionsClient
from scaleset_listener.config import ScaleSetSpec, Settings
from scaleset_listener.errors import (
    HTTPStatusError,
    ListenerError,
    RunnerGroupNotFound,
    TransportFailure,
)
from scaleset_listener.github_urls import GitHubTarget, Scope
from scaleset_listener.http import HttpChannel
from scaleset_listener.retrying import RetryPolicy
from scaleset_listener.runner_versions import RunnerRelease, pinned_release
from scaleset_listener.wiring import (
    github,
    missing_cloud_settings,
    placements,
    runner_versions,
    server_spec,
)

Status = Literal["ok", "warn", "FAIL", "skip"]
EXIT_OK = 0
EXIT_FAILED = 2

# A real encoded JIT config is base64 of a JSON document holding the runner's settings and its
# RSA key parameters: about 3-4 KiB. Twice that bounds it with room to spare.
JIT_CONFIG_PLACEHOLDER_SIZE = 8192
# A pre-flight that waits minutes for an unreachable GitHub helps nobody: fewer, shorter retries.
PREFLIGHT_RETRY = RetryPolicy(max_attempts=2, max_wait=2.0, recovery_max_wait=2.0)


@dataclass(frozen=True)
class Check:
    status: Status
    setting: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<5} {self.setting:<28} {self.detail}"


# GitHub ------------------------------------------------------------------------------------


def missing_permission(target: GitHubTarget, uses_app: bool) -> str:
    """What a credential that GitHub refuses runner administration lacks, for this scope."""
    if uses_app:
        if target.scope is Scope.REPOSITORY:
            return (
                "the GitHub App lacks the repository permission 'Administration: read and write' "
                "(or is not installed on this repository)"
            )
        return (
            "the GitHub App lacks the organization permission 'Self-hosted runners: read and "
            "write' (or is not installed on this organization)"
        )
    if target.scope is Scope.REPOSITORY:
        return (
            "the token lacks the 'repo' scope (classic PAT) or 'Administration: read and write' "
            "(fine-grained), or its owner is not an admin of the repository"
        )
    if target.scope is Scope.ENTERPRISE:
        return "the token lacks the 'manage_runners:enterprise' scope (classic PAT)"
    return (
        "the token lacks the 'admin:org' scope (classic PAT) or 'Self-hosted runners: read and "
        "write' (fine-grained), or its owner is not an owner of the organization"
    )


def _github_failure(exc: ListenerError, target: GitHubTarget, uses_app: bool) -> str:
    if isinstance(exc, TransportFailure):
        return f"GitHub unreachable: {exc}"
    if isinstance(exc, HTTPStatusError) and exc.status == 401:
        return f"GitHub refused the credential (401 Bad credentials): {exc.method} {exc.url}"
    # The registration token is the first thing that needs runner administration: GitHub's
    # 403 (or 404, for a repository the credential may not administer) there means that.
    if (
        isinstance(exc, HTTPStatusError)
        and exc.status in (403, 404)
        and "registration-token" in exc.url
    ):
        return f"{missing_permission(target, uses_app)}: {exc}"
    return str(exc)


async def github_checks(settings: Settings, http: HttpChannel) -> list[Check]:
    """Authentication, then each scale set's runner group and the scale set itself."""
    gh = github(settings, http)
    credential = "GITHUB_APP_ID" if settings.uses_github_app else "GITHUB_TOKEN"
    try:
        service = await gh.client.service_base()
    except ListenerError as exc:
        failure = _github_failure(exc, gh.target, settings.uses_github_app)
        checks = [Check("FAIL", credential, failure)]
        checks += [
            Check("skip", f"RUNNERS[{spec.name}]", "not checked: GitHub authentication failed")
            for spec in settings.runners
        ]
        return checks
    kind = "GitHub App" if settings.uses_github_app else "token"
    checks = [
        Check("ok", credential, f"{kind} may manage runners of {gh.target.config_url} ({service})")
    ]
    for spec in settings.runners:
        checks.extend(await _scale_set_checks(settings, spec, gh.client, gh.target))
    return checks


async def _scale_set_checks(
    settings: Settings, spec: ScaleSetSpec, client: ActionsClient, target: GitHubTarget
) -> list[Check]:
    name = f"RUNNERS[{spec.name}]"
    group_id = spec.runner_group_id
    try:
        if group_id is None:
            group = await client.get_runner_group_by_name(spec.runner_group)
            group_id = group.id
            group_check = Check("ok", f"{name}.runner_group", f"{group.name} (id {group.id})")
        else:
            group_check = Check("ok", f"{name}.id", f"runner group id {group_id} (as configured)")
    except RunnerGroupNotFound as exc:
        return [
            Check(
                "FAIL",
                f"{name}.runner_group",
                f"no runner group named {spec.runner_group!r} ({exc.message}); the listener "
                "does not create runner groups",
            )
        ]
    except ListenerError as exc:
        return [Check("FAIL", f"{name}.runner_group", _github_failure(exc, target, False))]
    try:
        found = await client.find_scale_set(spec.name, group_id)
    except ListenerError as exc:
        return [group_check, Check("FAIL", name, _github_failure(exc, target, False))]
    if found is None:
        labels = ", ".join(spec.effective_labels)
        detail = f"not registered: would create it (labels {labels})"
    else:
        detail = f"scale set id {found.id} exists"
        if settings.manage_runner_scale_sets:
            detail += " (MANAGE_RUNNER_SCALE_SETS: would replace it at start)"
    return [group_check, Check("ok", name, detail)]


# The runner release ------------------------------------------------------------------------


async def runner_check(settings: Settings, http: HttpChannel) -> tuple[Check, RunnerRelease]:
    """Whether GITHUB_RUNNER_VERSION resolves; the release to render the bootstrap with (a
    placeholder of the configured shape when it does not)."""
    versions = runner_versions(settings, github(settings, http), http)
    setting = "GITHUB_RUNNER_VERSION"
    try:
        release, warning = await versions.resolve_once()
    except ListenerError as exc:
        placeholder = pinned_release("2.331.0", settings.runner_download_url, "")
        return Check("FAIL", setting, f"{settings.github_runner_version}: {exc}"), placeholder
    source = "latest from GitHub's downloads endpoint" if versions.follows_latest else "pinned"
    if warning is not None:
        return Check("warn", setting, f"{release.version} ({source}): {warning}"), release
    return Check("ok", setting, f"{release.version} ({source})"), release


# The cloud ---------------------------------------------------------------------------------


def cloud_demand(
    settings: Settings, scale_sets: Collection[str] | None = None
) -> tuple[dict[str, list[str]], dict[str, int]]:
    """The images the scale sets use (each with the settings that name it) and the servers per
    flavor they may run at once: every set at its max_runners, all in the one project.
    `scale_sets` (names) limits it to those that share one placement."""
    images: dict[str, list[str]] = defaultdict(list)
    flavors: dict[str, int] = defaultdict(int)
    for spec in settings.runners:
        if scale_sets is not None and spec.name not in scale_sets:
            continue
        image = spec.image or settings.openstack_image
        images[image].append(f"RUNNERS[{spec.name}].image" if spec.image else "OPENSTACK_IMAGE")
        flavors[spec.flavor or settings.openstack_flavor] += spec.max_runners
    return dict(images), dict(flavors)


def _flavor_setting(settings: Settings, flavor: str) -> str:
    overriding = [spec.name for spec in settings.runners if spec.flavor == flavor]
    if flavor == settings.openstack_flavor or not overriding:
        return "OPENSTACK_FLAVOR"
    return f"RUNNERS[{overriding[0]}].flavor"


# A CloudCheck's subject -> the global setting and the RUNNERS key that overrides it.
_PLACEMENT_SETTINGS = {
    "cloud": ("OS_CLOUD", "cloud"),
    "microversion": ("OS_CLOUD", "cloud"),
    "network": ("OPENSTACK_NETWORK", "network"),
    "security_group": ("OPENSTACK_SECURITY_GROUPS", "security_groups"),
    "keypair": ("OPENSTACK_KEYPAIR", "keypair"),
    "floating_ip": ("OPENSTACK_FLOATING_IPS", "floating_ips"),
}


def _setting_of(
    settings: Settings,
    check: CloudCheck,
    images: dict[str, list[str]],
    scale_sets: Collection[str] = (),
) -> str:
    if check.subject == "image":
        return sorted(set(images.get(check.ref, ["OPENSTACK_IMAGE"])))[0]
    if check.subject == "flavor":
        return _flavor_setting(settings, check.ref)
    if check.subject in _PLACEMENT_SETTINGS:
        variable, key = _PLACEMENT_SETTINGS[check.subject]
        for spec in settings.runners:
            if spec.name in scale_sets and getattr(spec, key) is not None:
                return f"RUNNERS[{spec.name}].{key}"
        return variable
    return {"quota": "RUNNERS (max_runners)"}.get(check.subject, check.subject.upper())


def _sets(names: Iterable[str]) -> str:
    return f"scale sets {', '.join(names)}: "


async def cloud_checks(settings: Settings) -> list[Check]:
    """The cloud's pre-flight once per distinct cloud and placement (wiring.placements), each
    with the images, flavors and max_runners of the scale sets it serves."""
    missing = missing_cloud_settings(settings)
    if missing:
        return [Check("FAIL", name, "not set (nor on every scale set)") for name in missing]
    groups = placements(settings)
    several = len(groups.configs) > 1
    # Sets on one cloud create in one project: its quota must hold all of them, so the first
    # placement on each cloud checks the demand of every set there, and the others none.
    on_cloud = groups.scale_sets_by_cloud()
    quota_checked: set[str | None] = set()
    flavors_checked: set[tuple[str | None, str]] = set()
    checks = []
    for config, names in zip(groups.configs, groups.scale_sets, strict=True):
        images, flavors = cloud_demand(settings, names)
        check_quota = config.cloud not in quota_checked
        quota_checked.add(config.cloud)
        if check_quota:
            flavors = cloud_demand(settings, on_cloud[config.cloud])[1]
        provisioner = OpenStackProvisioner(config)
        try:
            found = await provisioner.preflight(list(images), flavors)
        finally:
            await provisioner.close()
        prefix = _sets(names) if several else ""
        for check in found:
            if check.subject == "quota" and not check_quota:
                continue
            if check.subject == "flavor":
                if (config.cloud, check.ref) in flavors_checked:
                    continue
                flavors_checked.add((config.cloud, check.ref))
            detail = check.detail
            if check.subject == "microversion":
                detail = f"compute API {detail}"
            elif check.subject == "quota" and check.ok:
                detail = f"room for every scale set at max_runners: {detail}"
            elif check.subject == "quota" and check.ok is False:
                detail = f"max_runners of every scale set do not fit: {detail}"
            status: Status = "skip" if check.ok is None else ("ok" if check.ok else "FAIL")
            setting = _setting_of(settings, check, images, names)
            if check.subject == "quota" and several:
                checks.append(Check(status, setting, _sets(on_cloud[config.cloud]) + detail))
            else:
                checks.append(Check(status, setting, prefix + detail))
    return checks


def user_data_check(settings: Settings, release: RunnerRelease) -> Check:
    """The bootstrap of each scale set rendered with a placeholder JIT config of realistic
    (upper-bound) size; the largest measured as Nova measures it: the base64 text."""
    setting = "CLOUD_INIT_TEMPLATE"
    placeholder = "A" * JIT_CONFIG_PLACEHOLDER_SIZE
    largest = 0
    for scale_set in settings.runners:
        name = runner_name(scale_set.name)
        try:
            spec = server_spec(
                settings,
                scale_set,
                Ownership(settings.effective_listener_instance_id, 1),
                name,
                placeholder,
                generate_host_key(name),
                datetime.now(UTC),
                release,
            )
        except BootstrapError as exc:  # UserDataTooLarge among them
            return Check("FAIL", setting, f"scale set {scale_set.name}: {exc}")
        largest = max(largest, len(base64.b64encode(spec.user_data)))
    detail = (
        f"user_data {largest} of {USER_DATA_LIMIT} bytes base64-encoded "
        f"(with a {JIT_CONFIG_PLACEHOLDER_SIZE}-character placeholder JIT config)"
    )
    return Check("ok" if largest <= USER_DATA_LIMIT else "FAIL", setting, detail)


# All of it ---------------------------------------------------------------------------------


async def preflight(settings: Settings) -> list[Check]:
    """Every check, GitHub's first, then the runner release, the bootstrap and the cloud."""
    http = HttpChannel(PREFLIGHT_RETRY)
    try:
        checks = await github_checks(settings, http)
        runner, release = await runner_check(settings, http)
        checks.append(runner)
    finally:
        await http.aclose()
    checks.append(user_data_check(settings, release))
    checks.extend(await cloud_checks(settings))
    return checks


async def run_preflight(settings: Settings, out: Callable[[str], None]) -> int:
    """Print one line per check; the exit code (2 when any failed)."""
    checks = await preflight(settings)
    for check in checks:
        out(check.line())
    return exit_code(checks)


def exit_code(checks: Iterable[Check]) -> int:
    return EXIT_FAILED if any(check.status == "FAIL" for check in checks) else EXIT_OK
