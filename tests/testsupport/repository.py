"""The repository's own files, for tests that check or rebuild what the repository holds."""

from __future__ import annotations

import subprocess
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@cache
def repository_files() -> tuple[str, ...]:
    """Tracked files plus new ones not ignored (a file is checked before its first commit)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    return tuple(sorted(name for name in listed.split("\0") if name and (ROOT / name).is_file()))
