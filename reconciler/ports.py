"""What the reconciler needs from the cloud, from GitHub and from the prober: small Protocols
that the OpenStack provisioner, the Actions client and `provisioners.ssh.SSHProber` satisfy
structurally (the reconciler imports none of them). It never creates a server."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from provisioners.base import ProbeResult, RunnerVM


class Cloud(Protocol):
    """The four calls the reconciler makes on the cloud (`provisioners.base.Provisioner` has
    them all)."""

    async def list_owned(self, tags: tuple[str, ...]) -> list[RunnerVM]: ...

    async def console_output(self, server_id: str, lines: int = 200) -> str: ...

    async def set_metadata(self, server_id: str, metadata: Mapping[str, str]) -> None: ...

    async def delete(self, server_id: str) -> None: ...


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


class RunnerRegistrations(Protocol):
    """The two calls the reconciler makes on GitHub's runner list (the scaler's
    `RunnerRegistry` adds the JIT config and the one-runner look-up)."""

    async def list_runners(self, scale_set_id: int) -> Sequence[RunnerRegistration]: ...

    async def remove_runner(self, runner_id: int) -> None:
        """Deregister; already gone is success."""
        ...


class Prober(Protocol):
    """The reconciler calls `probe` for every VM at once: the prober bounds its own work
    (`provisioners.ssh.SSHProber`: TCP connects, then SSH sessions)."""

    async def probe(self, address: str, pinned_public_key: str | None) -> ProbeResult: ...


class ScaleSetDirectory(Protocol):
    async def scale_set_exists(self, scale_set_id: int) -> bool:
        """False only when GitHub says the scale set does not exist (404): any doubt (an
        error, an odd answer) must read as "exists" or raise, never as "deleted"."""
        ...
