"""The product ships without the simulator; the simulator ships as its own distribution.

The wheels are built as `pip install .` and `pip install ./sim` build them (setuptools, from a
copy of the repository's files, so nothing is written into the checkout), and their contents
are checked. Then the product runs where the simulator cannot be imported: its `demo` verb must
say where the demo is instead of failing with a traceback.
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import scaleset_listener
from tests.testsupport.repository import ROOT, repository_files

PRODUCT_PACKAGES = {"scaleset_listener", "provisioners", "reconciler"}
BUILD_TIMEOUT = 120


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, zipfile.ZipFile]:
    """Both wheels by distribution name, built from a copy of the repository's files."""
    source = tmp_path_factory.mktemp("source")
    for name in repository_files():
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    out = tmp_path_factory.mktemp("wheels")
    for project in (source, source / "sim"):
        # No build isolation: the dev extra's setuptools builds, with no index needed.
        built = subprocess.run(
            [
                *(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"),
                *("--no-build-isolation", "--no-cache-dir", "--disable-pip-version-check"),
                *("--wheel-dir", str(out), str(project)),
            ],
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
        assert built.returncode == 0, built.stdout + built.stderr
    found = {path.name.split("-")[0]: zipfile.ZipFile(path) for path in out.glob("*.whl")}
    assert set(found) == {"scaleset_listener", "scaleset_listener_sim"}, sorted(found)
    return found


def top_level(wheel: zipfile.ZipFile) -> set[str]:
    return {name.split("/")[0] for name in wheel.namelist() if ".dist-info/" not in name}


def entry_points(wheel: zipfile.ZipFile) -> configparser.ConfigParser:
    [name] = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(name).decode())
    return parser


@pytest.mark.timeout(2 * BUILD_TIMEOUT + 30)
def test_the_product_wheel_holds_the_service_and_its_data_but_no_simulator(
    wheels: dict[str, zipfile.ZipFile],
) -> None:
    wheel = wheels["scaleset_listener"]
    names = set(wheel.namelist())
    assert top_level(wheel) == PRODUCT_PACKAGES
    assert not [n for n in names if n.startswith(("simulator/", "sim/"))]
    # Package data: the bootstrap template and every package's py.typed.
    template_dir = ROOT / "provisioners" / "templates"
    templates = {f"provisioners/templates/{path.name}" for path in template_dir.iterdir()}
    assert templates
    assert templates <= names
    assert {f"{package}/py.typed" for package in PRODUCT_PACKAGES} <= names
    scripts = entry_points(wheel)["console_scripts"]
    assert scripts["scaleset-listener"] == "scaleset_listener.cli:main"


@pytest.mark.timeout(2 * BUILD_TIMEOUT + 30)
def test_the_simulator_wheel_holds_the_simulator_only(
    wheels: dict[str, zipfile.ZipFile],
) -> None:
    wheel = wheels["scaleset_listener_sim"]
    names = set(wheel.namelist())
    assert top_level(wheel) == {"simulator"}
    typed = {
        path.relative_to(ROOT / "sim").as_posix()
        for path in (ROOT / "sim" / "simulator").rglob("py.typed")
    }
    assert typed
    assert typed <= names
    assert {"simulator/demo.py", "simulator/cli.py", "simulator/github/world/jobs.py"} <= names
    scripts = entry_points(wheel)["console_scripts"]
    assert scripts["scaleset-listener-sim"] == "simulator.cli:main"


def without_the_simulator() -> dict[str, str]:
    """An environment whose Python (run with -S, so no .pth file and no editable install's
    import hook is read) finds the product and its dependencies but not the simulator."""
    paths = sysconfig.get_paths()
    product_root = Path(scaleset_listener.__file__).resolve().parents[1]
    search = [paths["purelib"], paths["platlib"], str(product_root)]
    hidden = [entry for entry in search if (Path(entry) / "simulator").is_dir()]
    if hidden:
        pytest.skip(f"the simulator is installed where the product is: {hidden}")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(search))}


def test_without_the_simulator_the_demo_verb_exits_2_and_says_where_the_demo_is(
    tmp_path: Path,
) -> None:
    env = without_the_simulator()
    python = [sys.executable, "-S"]
    # The environment is what it should be: the product imports, the simulator does not.
    probe = subprocess.run(
        [*python, "-c", "import scaleset_listener.cli, simulator"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=30,
        check=False,
    )
    assert "No module named 'simulator'" in probe.stderr, probe.stderr
    demo = subprocess.run(
        [*python, "-m", "scaleset_listener", "demo", "--jobs", "1"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=30,
        check=False,
    )
    assert demo.returncode == 2, demo.stdout + demo.stderr
    assert "Traceback" not in demo.stderr
    assert "scaleset-listener-sim" in demo.stderr
    assert "make demo" in demo.stderr
    assert "pip install ./sim" in demo.stderr
    assert demo.stdout == ""


def test_the_simulators_command_names_its_verbs_and_refuses_unknown_ones() -> None:
    command = Path(sys.executable).parent / "scaleset-listener-sim"
    listed = subprocess.run(
        [str(command), "--help"], capture_output=True, text=True, timeout=30, check=False
    )
    assert listed.returncode == 0, listed.stderr
    for verb in ("demo", "github", "openstack", "sandbox", "fleet"):
        assert f"\n  {verb} " in listed.stdout
        # Each verb reaches its own command line.
        helped = subprocess.run(
            [str(command), verb, "--help"], capture_output=True, text=True, timeout=30, check=False
        )
        assert helped.returncode == 0, helped.stderr
        assert helped.stdout.startswith("usage: "), helped.stdout
    unknown = subprocess.run(
        [str(command), "nonsense"], capture_output=True, text=True, timeout=30, check=False
    )
    assert unknown.returncode == 2
    assert "unknown verb 'nonsense'" in unknown.stderr
