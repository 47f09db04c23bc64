"""Reading the bootstrap's console markers (the fallback channel when SSH cannot answer)."""

from __future__ import annotations

from provisioners.sentinels import MARKER_PREFIX, RUN_COMPLETE, SETUP_COMPLETE, SETUP_FAILED
from reconciler.policy import ConsoleFacts


def parse_console(text: str, runner_name: str) -> ConsoleFacts:
    """The markers `SCALESET-RUNNER <event> runner=<runner_name> ...` in a console log; lines
    about other runners (a reused image, a reused name) do not count."""
    seen: set[str] = set()
    for line in text.splitlines():
        words = line.split()
        try:
            start = words.index(MARKER_PREFIX)
        except ValueError:
            continue
        rest = words[start + 1 :]
        if len(rest) >= 2 and rest[1] == f"runner={runner_name}":
            seen.add(rest[0])
    return ConsoleFacts(
        setup_complete=SETUP_COMPLETE in seen,
        run_complete=RUN_COMPLETE in seen,
        setup_failed=SETUP_FAILED in seen,
    )
