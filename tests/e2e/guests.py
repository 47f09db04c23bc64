"""What plays the VMs in the end-to-end tests.

Sandbox VMs (real sshd, the real bootstrap, SSH probes at reconcile) wherever the machine allows
them; CI requires them (REQUIRE_SSH_HOSTS=1). Elsewhere the light fleet (console markers only).
"""

import os

from simulator.e2e_world import GuestKind
from simulator.sandbox import sandbox_problem

_PROBLEM = sandbox_problem()
if _PROBLEM is not None and os.environ.get("REQUIRE_SSH_HOSTS") == "1":
    raise RuntimeError(f"REQUIRE_SSH_HOSTS=1 but sandbox VMs cannot run here: {_PROBLEM}")

GUESTS: GuestKind = "sandbox" if _PROBLEM is None else "light"
