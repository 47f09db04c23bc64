"""What plays the VMs in the end-to-end tests.

Sandbox VMs (real sshd in namespaces) wherever the machine allows them; CI requires them
(REQUIRE_SSH_HOSTS=1). Elsewhere light VMs (the same bootstrap, stub runner and sentinels, a
paramiko sshd). E2E_GUESTS=light|sandbox chooses by hand.
"""

import os
from typing import cast

from simulator.e2e_world import GuestKind
from simulator.sandbox import sandbox_problem

_PROBLEM = sandbox_problem()
if _PROBLEM is not None and os.environ.get("REQUIRE_SSH_HOSTS") == "1":
    raise RuntimeError(f"REQUIRE_SSH_HOSTS=1 but sandbox VMs cannot run here: {_PROBLEM}")

_CHOSEN = os.environ.get("E2E_GUESTS") or ("sandbox" if _PROBLEM is None else "light")
if _CHOSEN not in ("light", "sandbox"):
    raise RuntimeError(f"E2E_GUESTS={_CHOSEN!r}: light or sandbox")
GUESTS = cast(GuestKind, _CHOSEN)
