"""What the reconciler needs from GitHub and from the prober: small Protocols that the Actions
client and `provisioners.ssh.SSHProber` satisfy structurally (the reconciler imports neither)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from provisioners.base import ProbeResult


class RunnerRegistration(Protocol):
    """One runner registered in the scale set, as GitHub reports it."""

    @property
    def id(self) -> int: ...

    @property
    def name(self) -> str: ...

    @property
    def status(self) -> str: ...  # "online" or "offline"

    @property
    def busy(self) -> bool: ...


class RunnerRegistry(Protocol):
    async def list_runners(self, scale_set_id: int) -> Sequence[RunnerRegistration]: ...

    async def remove_runner(self, runner_id: int) -> None:
        """Deregister; already gone is success."""
        ...


class Prober(Protocol):
    async def probe(self, address: str, pinned_public_key: str | None) -> ProbeResult: ...


class ScaleSetDirectory(Protocol):
    async def scale_set_exists(self, scale_set_id: int) -> bool:
        """False only when GitHub says the scale set does not exist (404): any doubt (an
        error, an odd answer) must read as "exists" or raise, never as "deleted"."""
        ...
