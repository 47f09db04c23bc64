"""The bootstrap: rendering rules, and the rendered default script run for real in a sandbox."""

from __future__ import annotations

import base64
import hashlib
import os
import platform
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_ssh_private_key,
)

from provisioners.bootstrap import (
    NOVA_USER_DATA_LIMIT,
    RUNNER_ARCHITECTURES,
    BootstrapError,
    BootstrapSpec,
    RunnerDownload,
    UserDataTooLarge,
    fingerprint_sha256,
    generate_host_key,
    render_user_data,
    shquote,
)
from provisioners.sentinels import REPORT_SCRIPT_PATH, parse_report
from tests.provisioners.sandbox import (
    RUNNER_VERSION,
    RunnerServer,
    Sandbox,
    clean_env,
    make_sandbox,
    path_without,
    serve_runner,
    sha256_hex,
    stub_run_sh,
    stub_runner_tarball,
)

JIT = "eyJydW5uZXIiOiAiZmFrZSJ9" * 3
MARKER_SETUP = "SCALESET-RUNNER setup-complete runner=linux-x64-abc123"
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def spec(**overrides: object) -> BootstrapSpec:
    values: dict[str, object] = {
        "runner_name": "linux-x64-abc123",
        "jit_config": JIT,
        "runner_version": RUNNER_VERSION,
        "runner_download_url": "https://example.test/v{version}/runner-{arch}-{version}.tar.gz",
    }
    values.update(overrides)
    return BootstrapSpec(**values)  # type: ignore[arg-type]


def vm_arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}[machine]


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return make_sandbox(tmp_path)


@pytest.fixture
def server() -> Iterator[RunnerServer]:
    with serve_runner() as running:
        yield running


# Rendering


def test_rendered_script_carries_the_markers_and_the_jit_config_exactly_once() -> None:
    text = render_user_data(spec()).decode()

    assert text.startswith("#!/bin/bash\n")
    assert text.count(JIT) == 1
    assert f"JIT_CONFIG={shquote(JIT)}\n" in text
    for marker in ("setup-complete", "run-complete", "setup-failed", "runner-started"):
        assert marker in text
    assert "SCALESET-RUNNER setup-complete runner=$RUNNER_NAME" in text
    assert "SCALESET-RUNNER run-complete runner=$RUNNER_NAME exit=$code" in text


def test_a_jit_config_with_shell_metacharacters_is_quoted_once() -> None:
    jit = "a'b\"c$(d)`e`;f\ng"
    text = render_user_data(spec(jit_config=jit)).decode()

    assert text.count(shquote(jit)) == 1
    assert f"JIT_CONFIG={shquote(jit)}\n" in text


def test_the_default_script_never_turns_on_tracing() -> None:
    code_lines = [
        line
        for line in render_user_data(spec()).decode().splitlines()
        if not line.lstrip().startswith("#")
    ]
    assert not any(re.search(r"set\s+-[a-zA-Z]*x", line) for line in code_lines)
    assert not any("xtrace" in line for line in code_lines)


def test_the_url_template_gives_one_url_per_architecture_with_the_version_filled_in() -> None:
    text = render_user_data(spec(runner_sha256="ab" * 32)).decode()

    for arch in RUNNER_ARCHITECTURES:
        url = f"https://example.test/v2.330.0/runner-{arch}-2.330.0.tar.gz"
        assert f"    {arch}) url={shquote(url)} sha256={'ab' * 32} ;;\n" in text
    assert spec().variables()["runner_download_url"] == (
        "https://example.test/v2.330.0/runner-{arch}-2.330.0.tar.gz"
    )


def test_an_unknown_placeholder_in_the_download_url_is_refused() -> None:
    with pytest.raises(BootstrapError, match=r"\{Version\}"):
        spec(runner_download_url="https://example.test/{Version}/runner.tar.gz")


def test_a_4kib_jit_config_stays_far_below_nova_limit() -> None:
    user_data = render_user_data(spec(jit_config="J" * 4096))

    assert len(base64.b64encode(user_data)) < NOVA_USER_DATA_LIMIT // 3


def test_a_huge_extra_value_trips_the_nova_limit_naming_both_numbers(tmp_path: Path) -> None:
    template = _template_using(tmp_path, "#!/bin/sh\n# {{ blob }}\n")
    with pytest.raises(UserDataTooLarge) as raised:
        render_user_data(spec(extra={"blob": "x" * 70_000}), template)

    assert raised.value.limit == NOVA_USER_DATA_LIMIT
    assert raised.value.size > NOVA_USER_DATA_LIMIT
    assert str(raised.value.size) in str(raised.value)
    assert str(NOVA_USER_DATA_LIMIT) in str(raised.value)


def test_a_huge_jit_config_trips_the_limit() -> None:
    with pytest.raises(UserDataTooLarge, match=r"Nova takes at most 65535"):
        render_user_data(spec(jit_config="J" * 60_000))


def test_the_limit_counts_base64_bytes_not_raw_bytes(tmp_path: Path) -> None:
    # 50,000 raw bytes are under 65,535 but become 66,668 once base64-encoded.
    template = _template_using(tmp_path, "{{ jit_config }}")
    with pytest.raises(UserDataTooLarge) as raised:
        render_user_data(spec(jit_config="J" * 50_000), template)
    assert raised.value.size == 66_668

    assert len(render_user_data(spec(jit_config="J" * 49_000), template)) == 49_000


def test_a_custom_template_gets_the_same_variables(tmp_path: Path) -> None:
    template = tmp_path / "mine.sh.j2"
    names = [
        "runner_name",
        "jit_config",
        "runner_version",
        "runner_download_url",
        "runner_sha256",
        "sentinel_dir",
        "runner_user",
        "runner_sudo",
        "runner_dir",
        "root",
        "poweroff_command",
        "console_path",
        "ssh_host_key_public",
    ]
    template.write_text(
        "#!/bin/sh\n"
        + "".join(f"{name}={{{{ {name} | shquote }}}}\n" for name in names)
        + "labels={{ labels | join(',') }}\n"
        + "registry={{ registry }} via-extra={{ extra.registry }}\n"
    )
    key = generate_host_key()
    rendered = render_user_data(
        spec(
            labels=("gpu", "linux"),
            runner_sha256="AB" * 32,
            extra={"registry": "mirror.example"},
            ssh_host_key_private=key.private_openssh,
            ssh_host_key_public=key.public_openssh,
        ),
        template,
    ).decode()

    assert f"jit_config={JIT}\n" in rendered
    assert "runner_version=2.330.0\n" in rendered
    assert "runner_name=linux-x64-abc123\n" in rendered
    url = "https://example.test/v2.330.0/runner-{arch}-2.330.0.tar.gz"
    assert f"runner_download_url={shquote(url)}\n" in rendered
    assert f"runner_sha256={'ab' * 32}\n" in rendered
    assert "sentinel_dir=/var/lib/scaleset-runner\n" in rendered
    assert "runner_user=runner\n" in rendered
    assert "runner_sudo=True\n" in rendered
    assert "runner_dir=/opt/actions-runner\n" in rendered
    assert "root=''\n" in rendered
    assert "console_path=/dev/console\n" in rendered
    assert f"poweroff_command={shquote('systemctl poweroff || shutdown -h now || poweroff')}" in (
        rendered
    )
    assert f"ssh_host_key_public={shquote(key.public_openssh.strip())}\n" in rendered
    assert "labels=gpu,linux\n" in rendered
    assert "registry=mirror.example via-extra=mirror.example\n" in rendered


def test_a_custom_template_using_an_unknown_variable_names_it(tmp_path: Path) -> None:
    template = tmp_path / "mine.sh.j2"
    template.write_text("#!/bin/sh\necho {{ runner_name }} {{ flavour_of_the_day }}\n")

    with pytest.raises(BootstrapError) as raised:
        render_user_data(spec(), template)

    assert "flavour_of_the_day" in str(raised.value)
    assert str(template) in str(raised.value)


def test_a_missing_template_file_names_its_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.sh.j2"

    with pytest.raises(BootstrapError, match=re.escape(f"{missing} does not exist")):
        render_user_data(spec(), missing)


def test_a_template_syntax_error_names_the_path_line_and_jinja_message(tmp_path: Path) -> None:
    template = tmp_path / "broken.sh.j2"
    template.write_text("#!/bin/sh\n\n{% if runner_name %}\necho\n")

    with pytest.raises(BootstrapError) as raised:
        render_user_data(spec(), template)

    message = str(raised.value)
    assert str(template) in message
    assert "line 4" in message
    assert "endif" in message


def test_reprs_hide_the_jit_config_the_private_key_and_extras() -> None:
    key = generate_host_key()
    the_spec = spec(
        ssh_host_key_private=key.private_openssh,
        ssh_host_key_public=key.public_openssh,
        extra={"registry_token": "tok-secret"},
    )

    for text in (repr(the_spec), str(the_spec)):
        assert JIT not in text
        assert "OPENSSH PRIVATE KEY" not in text
        assert "tok-secret" not in text
        assert "linux-x64-abc123" in text
    assert "OPENSSH PRIVATE KEY" not in repr(key)
    assert key.fingerprint_sha256 in repr(key)


def test_a_host_key_needs_both_parts() -> None:
    key = generate_host_key()
    with pytest.raises(BootstrapError, match="both parts"):
        spec(ssh_host_key_private=key.private_openssh)
    with pytest.raises(BootstrapError, match="both parts"):
        spec(ssh_host_key_public=key.public_openssh)


def test_extra_variables_cannot_hide_builtin_ones() -> None:
    with pytest.raises(BootstrapError, match="'jit_config' would hide"):
        spec(extra={"jit_config": "other"})
    with pytest.raises(BootstrapError, match="not an identifier"):
        spec(extra={"not-a-name": "x"})


def test_a_sha256_that_is_not_64_hex_digits_is_refused() -> None:
    with pytest.raises(BootstrapError, match="64 hex digits"):
        spec(runner_sha256="abc")


def test_an_empty_sha256_means_no_check() -> None:
    text = render_user_data(spec(runner_sha256="")).decode()

    assert f"    {vm_arch()}) url=" in text
    assert all(line.endswith(" sha256='' ;;") for line in text.splitlines() if ") url=" in line)


def test_the_host_key_fingerprint_is_what_ssh_keygen_prints(tmp_path: Path) -> None:
    key = generate_host_key(comment="linux-x64-abc123")

    # Independently: the SSH wire blob is string "ssh-ed25519" then string <32 raw bytes>.
    private = load_ssh_private_key(key.private_openssh.encode(), password=None)
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    blob = _ssh_string(b"ssh-ed25519") + _ssh_string(raw)
    expected = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    assert key.fingerprint_sha256 == expected
    assert key.public_openssh.split()[1] == base64.b64encode(blob).decode()
    assert key.public_openssh.endswith(" linux-x64-abc123")
    assert key.private_openssh.startswith("-----BEGIN OPENSSH PRIVATE KEY-----\n")

    ssh_keygen = shutil.which("ssh-keygen")
    if ssh_keygen is not None:
        pub = tmp_path / "key.pub"
        pub.write_text(key.public_openssh + "\n")
        printed = subprocess.run(
            [ssh_keygen, "-lf", str(pub)], capture_output=True, text=True, timeout=10, check=True
        ).stdout
        assert printed.split()[1] == key.fingerprint_sha256


def test_the_user_docs_name_every_variable_sentinel_and_marker() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "bootstrap.md").read_text()

    for name in spec().variables():
        assert f"| `{name}` |" in docs
    for sentinel in ("setup-complete", "runner-started", "run-complete", "setup-failed"):
        assert f"| `{sentinel}` |" in docs
    assert "SCALESET-RUNNER run-complete runner=<runner_name> exit=<code>" in docs


# The real thing: the rendered default script, executed by bash in a sandbox.


@pytest.mark.parametrize("exit_code", [0, 3])
def test_the_script_downloads_runs_the_runner_once_and_powers_off(
    sandbox: Sandbox, server: RunnerServer, exit_code: int
) -> None:
    server.tarball = stub_runner_tarball(exit_code)
    jit = "eyJhIjogMX0=" + "Zm9v" * 1000 + "+/="

    result = sandbox.run(render_user_data(sandbox.spec(server.base_url, jit_config=jit)))

    assert result.returncode == 0, result.stderr
    assert server.paths == [f"/v2.330.0/actions-runner-linux-{vm_arch()}-2.330.0.tar.gz"]
    assert sandbox.stub_args() == ["--jitconfig", jit]
    assert sandbox.stub_calls() == 1
    assert TIMESTAMP.fullmatch(sandbox.read(sandbox.sentinels / "setup-complete").strip())
    assert sandbox.read(sandbox.sentinels / "run-complete") == f"{exit_code}\n"
    assert not (sandbox.sentinels / "setup-failed").exists()
    pid, boot_id = sandbox.read(sandbox.sentinels / "runner-started").splitlines()
    assert pid.isdigit()
    assert boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    run_marker = f"SCALESET-RUNNER run-complete runner=linux-x64-abc123 exit={exit_code}"
    assert sandbox.read(sandbox.console) == f"{MARKER_SETUP}\n{run_marker}\n"
    assert MARKER_SETUP in result.stdout.splitlines()
    assert run_marker in result.stdout.splitlines()
    assert sandbox.poweroff_calls() == 1
    # The JIT config reaches run.sh and nothing else: not the log, not the console.
    assert "Zm9vZm9v" not in result.stdout + result.stderr
    assert "Zm9vZm9v" not in sandbox.read(sandbox.console)
    assert not (sandbox.runner_dir / ".actions-runner.tar.gz").exists()
    assert (sandbox.read(sandbox.runner_dir / "stub-cwd")).strip() == str(sandbox.runner_dir)


def test_the_right_sha256_lets_the_runner_run(sandbox: Sandbox, server: RunnerServer) -> None:
    server.tarball = stub_runner_tarball(0)
    the_spec = sandbox.spec(server.base_url, runner_sha256=sha256_hex(server.tarball).upper())

    result = sandbox.run(render_user_data(the_spec))

    assert result.returncode == 0, result.stderr
    assert sandbox.stub_calls() == 1
    assert sandbox.read(sandbox.sentinels / "run-complete") == "0\n"


def test_a_wrong_sha256_fails_setup_without_running_the_runner(
    sandbox: Sandbox, server: RunnerServer
) -> None:
    server.tarball = stub_runner_tarball(0)
    wrong = "0" * 64

    result = sandbox.run(render_user_data(sandbox.spec(server.base_url, runner_sha256=wrong)))

    assert result.returncode == 1
    failed = sandbox.read(sandbox.sentinels / "setup-failed")
    assert f"sha256 mismatch for {server.base_url}/" in failed
    assert f"expected {wrong}, got {sha256_hex(server.tarball)}" in failed
    assert sandbox.stub_calls() == 0
    assert not (sandbox.runner_dir / "run.sh").exists()
    assert not (sandbox.sentinels / "setup-complete").exists()
    assert not (sandbox.sentinels / "run-complete").exists()
    console = sandbox.read(sandbox.console)
    assert console.startswith("SCALESET-RUNNER setup-failed runner=linux-x64-abc123 reason=sha256")
    assert sandbox.poweroff_calls() == 1


def test_a_failed_download_fails_setup_and_powers_off(
    sandbox: Sandbox, server: RunnerServer
) -> None:
    server.missing = True

    result = sandbox.run(render_user_data(sandbox.spec(server.base_url)))

    assert result.returncode == 1
    assert "download of http://127.0.0.1:" in sandbox.read(sandbox.sentinels / "setup-failed")
    assert sandbox.poweroff_calls() == 1
    assert len(server.requests) == 1  # a 404 is not retried


def test_any_unexpected_failure_writes_setup_failed_and_powers_off(
    sandbox: Sandbox, server: RunnerServer
) -> None:
    server.tarball = b"not a gzip archive"

    result = sandbox.run(render_user_data(sandbox.spec(server.base_url)))

    assert result.returncode == 1
    failed = sandbox.read(sandbox.sentinels / "setup-failed")
    assert re.fullmatch(r"command failed with exit \d+ at line \d+\n", failed)
    assert sandbox.stub_calls() == 0
    assert sandbox.read(sandbox.console).startswith("SCALESET-RUNNER setup-failed ")
    assert sandbox.poweroff_calls() == 1


def bake_runner(sandbox: Sandbox, version: str | None, exit_code: int = 0) -> None:
    """A runner baked into the image: run.sh and a `bin/Runner.Listener` that answers
    `--version` as the real one does (None: one that cannot tell its version)."""
    (sandbox.runner_dir / "bin").mkdir(parents=True)
    run_sh = sandbox.runner_dir / "run.sh"
    run_sh.write_text(stub_run_sh(exit_code))
    listener = sandbox.runner_dir / "bin" / "Runner.Listener"
    answer = f"echo {version}" if version else "exit 1"
    listener.write_text(f'#!/bin/bash\n[ "$1" = --version ] && {answer}\nexit 2\n')
    for script in (run_sh, listener):
        script.chmod(0o755)
    (sandbox.runner_dir / ".env").write_text("LANG=C.UTF-8\n")


@pytest.mark.parametrize("baked", [RUNNER_VERSION, "2.330.1", "2.400.0"])
def test_a_prebaked_runner_at_least_as_new_skips_the_download(
    sandbox: Sandbox, server: RunnerServer, baked: str
) -> None:
    bake_runner(sandbox, baked)

    result = sandbox.run(render_user_data(sandbox.spec(server.base_url, runner_sha256="1" * 64)))

    assert result.returncode == 0, result.stderr
    assert server.requests == []
    assert f"pre-baked runner {baked} in" in result.stdout
    assert sandbox.stub_args() == ["--jitconfig", "eyJKSVQiOiAiZmFrZSJ9+/="]
    assert sandbox.read(sandbox.sentinels / "run-complete") == "0\n"
    assert sandbox.poweroff_calls() == 1


@pytest.mark.parametrize("baked", ["2.329.0", "2.9.9", None])
def test_an_older_prebaked_runner_is_replaced_by_the_wanted_one(
    sandbox: Sandbox, server: RunnerServer, baked: str | None
) -> None:
    # The old runner would exit 7; the downloaded one exits 0.
    bake_runner(sandbox, baked, exit_code=7)
    server.tarball = stub_runner_tarball(0)
    the_spec = sandbox.spec(server.base_url, runner_sha256=sha256_hex(server.tarball))

    result = sandbox.run(render_user_data(the_spec))

    assert result.returncode == 0, result.stderr
    assert server.paths == [f"/v2.330.0/actions-runner-linux-{vm_arch()}-2.330.0.tar.gz"]
    update = (
        f"SCALESET-RUNNER runner-update runner=linux-x64-abc123 baked={baked or 'unknown'} "
        "wanted=2.330.0"
    )
    assert sandbox.read(sandbox.console).splitlines()[0] == update
    assert sandbox.read(sandbox.sentinels / "run-complete") == "0\n"
    assert sandbox.stub_calls() == 1
    # The baked runner is kept aside, its environment file carried over.
    baked_dir = sandbox.runner_dir.with_name("actions-runner.baked")
    assert (baked_dir / "run.sh").exists()
    assert not (baked_dir / "stub-calls").exists()
    assert sandbox.read(sandbox.runner_dir / ".env") == "LANG=C.UTF-8\n"


def test_an_older_prebaked_runner_that_cannot_be_updated_fails_setup_saying_why(
    sandbox: Sandbox, server: RunnerServer
) -> None:
    bake_runner(sandbox, "2.329.0")
    server.missing = True

    result = sandbox.run(render_user_data(sandbox.spec(server.base_url)))

    assert result.returncode == 1
    reason = (
        "the pre-baked runner 2.329.0 is older than 2.330.0 and the download of "
        f"{server.base_url}/v2.330.0/actions-runner-linux-{vm_arch()}-2.330.0.tar.gz failed"
    )
    assert sandbox.read(sandbox.sentinels / "setup-failed") == reason + "\n"
    assert sandbox.read(sandbox.console).splitlines()[-1] == (
        f"SCALESET-RUNNER setup-failed runner=linux-x64-abc123 reason={reason}"
    )
    assert sandbox.stub_calls() == 0
    assert not (sandbox.sentinels / "setup-complete").exists()
    assert sandbox.poweroff_calls() == 1


def test_per_architecture_downloads_fetch_this_machines_tarball_and_check_its_own_sha256(
    sandbox: Sandbox, server: RunnerServer
) -> None:
    server.tarball = stub_runner_tarball(0)
    downloads = {
        arch: RunnerDownload(
            f"{server.base_url}/{arch}.tar.gz",
            sha256_hex(server.tarball) if arch == vm_arch() else "0" * 64,
        )
        for arch in RUNNER_ARCHITECTURES
    }
    the_spec = sandbox.spec(server.base_url, runner_download_url="", runner_downloads=downloads)

    result = sandbox.run(render_user_data(the_spec))

    assert result.returncode == 0, result.stderr
    assert server.paths == [f"/{vm_arch()}.tar.gz"]
    assert sandbox.stub_calls() == 1


def test_per_architecture_downloads_with_a_wrong_checksum_fail_setup(
    sandbox: Sandbox, server: RunnerServer
) -> None:
    server.tarball = stub_runner_tarball(0)
    downloads = {
        arch: RunnerDownload(f"{server.base_url}/{arch}.tar.gz", "0" * 64)
        for arch in RUNNER_ARCHITECTURES
    }
    the_spec = sandbox.spec(server.base_url, runner_download_url="", runner_downloads=downloads)

    result = sandbox.run(render_user_data(the_spec))

    assert result.returncode == 1
    assert "sha256 mismatch" in sandbox.read(sandbox.sentinels / "setup-failed")
    assert sandbox.stub_calls() == 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"runner_downloads": {"sparc": RunnerDownload("https://x/r.tar.gz")}}, "sparc"),
        ({"runner_downloads": {"x64": RunnerDownload("https://x/{arch}.tar.gz")}}, "full URL"),
        ({"runner_downloads": {"x64": RunnerDownload("https://x/r.tar.gz", "12")}}, "64 hex"),
        ({"runner_download_url": ""}, "runner_download_url or runner_downloads"),
        ({"runner_version": "latest"}, "not like 2.331.0"),
    ],
)
def test_runner_downloads_that_cannot_work_are_refused(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(BootstrapError, match=message):
        spec(**overrides)


def test_stale_sentinels_in_a_prebaked_image_are_cleared_first(
    sandbox: Sandbox, server: RunnerServer
) -> None:
    server.tarball = stub_runner_tarball(0)
    sandbox.sentinels.mkdir(parents=True)
    (sandbox.sentinels / "setup-failed").write_text("from the image build\n")
    (sandbox.sentinels / "run-complete").write_text("7\n")

    result = sandbox.run(render_user_data(sandbox.spec(server.base_url)))

    assert result.returncode == 0, result.stderr
    assert not (sandbox.sentinels / "setup-failed").exists()
    assert sandbox.read(sandbox.sentinels / "run-complete") == "0\n"


def test_the_host_key_is_installed_under_root_with_owner_only_mode(
    sandbox: Sandbox, server: RunnerServer
) -> None:
    server.tarball = stub_runner_tarball(0)
    key = generate_host_key(comment="linux-x64-abc123")
    the_spec = sandbox.spec(
        server.base_url,
        ssh_host_key_private=key.private_openssh,
        ssh_host_key_public=key.public_openssh,
    )

    result = sandbox.run(render_user_data(the_spec))

    assert result.returncode == 0, result.stderr
    private = sandbox.root / "etc" / "ssh" / "ssh_host_ed25519_key"
    public = sandbox.root / "etc" / "ssh" / "ssh_host_ed25519_key.pub"
    assert private.read_text() == key.private_openssh
    assert public.read_text() == key.public_openssh + "\n"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert not (private.parent / "ssh_host_ed25519_key.new").exists()
    assert fingerprint_sha256(public.read_text()) == key.fingerprint_sha256
    assert "OPENSSH PRIVATE KEY" not in result.stdout + result.stderr


@pytest.mark.parametrize("sudo", [True, False])
def test_the_runner_user_gets_passwordless_sudo_unless_turned_off(
    sandbox: Sandbox, server: RunnerServer, sudo: bool
) -> None:
    server.tarball = stub_runner_tarball(0)
    (sandbox.root / "etc" / "sudoers.d").mkdir(parents=True)
    the_spec = sandbox.spec(server.base_url, runner_sudo=sudo)

    result = sandbox.run(render_user_data(the_spec))

    assert result.returncode == 0, result.stderr
    sudoers = sandbox.root / "etc" / "sudoers.d" / "90-scaleset-runner"
    if sudo:
        assert sudoers.read_text() == f"{the_spec.runner_user} ALL=(ALL) NOPASSWD:ALL\n"
        assert stat.S_IMODE(sudoers.stat().st_mode) == 0o440
    else:
        assert not sudoers.exists()


PROBE_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGJ5c2VsZi1wcm9iZS1rZXktZm9yLXRlc3RzLW9ubHk"


def test_the_probe_key_may_only_run_the_installed_report_script(
    sandbox: Sandbox, server: RunnerServer
) -> None:
    server.tarball = stub_runner_tarball(0)
    the_spec = sandbox.spec(server.base_url, probe_public_key=PROBE_KEY + " operator@laptop")

    result = sandbox.run(render_user_data(the_spec))

    assert result.returncode == 0, result.stderr
    keys = sandbox.root / "home" / "scaleset-probe" / ".ssh" / "authorized_keys"
    assert keys.read_text() == (
        f'restrict,command="{REPORT_SCRIPT_PATH} /var/lib/scaleset-runner" {PROBE_KEY}\n'
    )
    script = sandbox.root / REPORT_SCRIPT_PATH.lstrip("/")
    assert stat.S_IMODE(script.stat().st_mode) == 0o755
    assert script.stat().st_uid == os.getuid()  # the bootstrap's own user: root on a VM
    # What sshd runs for the key, whatever the client asked: the report the prober parses.
    report = subprocess.run(
        [str(script), str(sandbox.sentinels)], capture_output=True, text=True, timeout=10
    )
    assert report.returncode == 0, report.stderr
    parsed = parse_report(report.stdout)
    assert parsed.setup_complete
    assert parsed.run_complete_exit_code == 0
    # A second run (an image rebuilt from this VM) does not add the entry twice.
    assert sandbox.run(render_user_data(the_spec)).returncode == 0
    assert len(keys.read_text().splitlines()) == 1


def test_without_a_probe_key_no_probe_access_is_installed(
    sandbox: Sandbox, server: RunnerServer
) -> None:
    server.tarball = stub_runner_tarball(0)

    result = sandbox.run(render_user_data(sandbox.spec(server.base_url)))

    assert result.returncode == 0, result.stderr
    assert not (sandbox.root / "home").exists()
    assert not (sandbox.root / REPORT_SCRIPT_PATH.lstrip("/")).exists()


def test_a_probe_key_that_cannot_be_an_authorized_keys_entry_is_refused() -> None:
    with pytest.raises(BootstrapError, match="probe_public_key"):
        spec(probe_public_key="not-a-key")
    with pytest.raises(BootstrapError, match="probe_public_key: the public key's base64"):
        spec(probe_public_key='ssh-ed25519 AAAA" command="sh')
    with pytest.raises(BootstrapError, match="quotes"):
        spec(probe_public_key=PROBE_KEY, sentinel_dir='/var/lib/x"y')
    with pytest.raises(BootstrapError, match="probe_user"):
        spec(probe_user="probe;id")


def test_a_runner_user_that_is_not_a_user_name_is_refused() -> None:
    with pytest.raises(BootstrapError, match="not a valid user name"):
        spec(runner_user="runner ALL=(ALL)")


def test_hostile_names_and_labels_execute_nothing(
    sandbox: Sandbox, server: RunnerServer, tmp_path: Path
) -> None:
    server.tarball = stub_runner_tarball(0)
    pwned = tmp_path / "pwned"
    hostile = f"'$(touch {pwned})`touch {pwned}`;touch {pwned}"
    the_spec = sandbox.spec(server.base_url, runner_name="x" + hostile, labels=(hostile, "linux"))

    result = sandbox.run(render_user_data(the_spec))

    assert result.returncode == 0, result.stderr
    assert not pwned.exists()
    assert f"SCALESET-RUNNER setup-complete runner=x{hostile}" in sandbox.read(sandbox.console)


def test_wget_is_used_when_curl_is_missing(
    sandbox: Sandbox, server: RunnerServer, tmp_path: Path
) -> None:
    if shutil.which("wget") is None:
        pytest.skip("wget is not installed here")
    server.tarball = stub_runner_tarball(0)
    env = clean_env()
    env["PATH"] = path_without(tmp_path / "bin", "curl")

    result = sandbox.run(render_user_data(sandbox.spec(server.base_url)), env=env)

    assert result.returncode == 0, result.stderr
    assert [agent.split("/")[0] for _path, agent in server.requests] == ["Wget"]
    assert sandbox.stub_calls() == 1


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A sandbox parent another user can traverse (pytest's tmp_path is private to us)."""
    parent = Path(tempfile.mkdtemp(prefix="bootstrap-"))
    parent.chmod(0o755)
    try:
        yield parent
    finally:
        shutil.rmtree(parent)


@pytest.mark.parametrize("switch", ["runuser", "su"])
def test_the_runner_runs_as_the_runner_user_when_it_differs(
    shared_root: Path, server: RunnerServer, switch: str
) -> None:
    if os.getuid() != 0 or shutil.which(switch, path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
        pytest.skip(f"needs root and {switch} to switch users")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user here")
    sandbox = make_sandbox(shared_root)
    server.tarball = stub_runner_tarball(5)
    env = clean_env()
    if switch == "su":
        env["PATH"] = path_without(shared_root / "bin", "runuser")
    the_spec = sandbox.spec(server.base_url, runner_user="nobody")

    result = sandbox.run(render_user_data(the_spec), env=env)

    assert result.returncode == 0, result.stderr
    assert sandbox.read(sandbox.runner_dir / "stub-user") == "nobody\n"
    assert sandbox.stub_args() == ["--jitconfig", "eyJKSVQiOiAiZmFrZSJ9+/="]
    assert sandbox.runner_dir.stat().st_uid == pwd.getpwnam("nobody").pw_uid
    assert sandbox.read(sandbox.sentinels / "run-complete") == "5\n"
    assert sandbox.poweroff_calls() == 1


def test_a_missing_runner_user_is_not_created_inside_a_sandbox(
    sandbox: Sandbox, server: RunnerServer
) -> None:
    server.tarball = stub_runner_tarball(0)

    result = sandbox.run(
        render_user_data(sandbox.spec(server.base_url, runner_user="no-such-user-4711"))
    )

    assert result.returncode == 1
    assert "no-such-user-4711 does not exist" in sandbox.read(sandbox.sentinels / "setup-failed")
    assert server.requests == []
    assert sandbox.poweroff_calls() == 1


def _template_using(directory: Path, body: str) -> Path:
    template = directory / "t.j2"
    template.write_text(body)
    return template


def _ssh_string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data
