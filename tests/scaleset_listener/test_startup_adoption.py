"""VMScaler.prepare: the startup reconciliation's adoptions join the owned set before demand is
counted; a booting VM keeps its deadline; a failed reconciliation does not stop the service."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from scaleset_listener.config import ScaleSetSpec
from scaleset_listener.scaler import Adoption, Lifecycle, Phase, VMScaler


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def scaler_with(reconcile: Any, clock: Clock) -> VMScaler:
    nothing: Any = None
    return VMScaler(
        ScaleSetSpec(name="linux"),
        nothing,
        nothing,
        nothing,
        "test",
        Lifecycle(boot_timeout=600.0),
        asyncio.Semaphore(1),
        clock=clock,
        reconcile=reconcile,
    )


async def test_adopted_vms_join_the_owned_set_in_their_phases_once_per_scale_set() -> None:
    calls: list[int] = []

    async def reconcile(scale_set_id: int) -> Sequence[Adoption]:
        calls.append(scale_set_id)
        return [
            Adoption("linux-a", "srv-a", Phase.IDLE, runner_id=1, age_seconds=3600),
            Adoption("linux-b", "srv-b", Phase.BUSY, runner_id=2, age_seconds=3600),
            Adoption("linux-c", "srv-c", Phase.BOOTING, runner_id=3, age_seconds=500),
        ]

    clock = Clock()
    scaler = scaler_with(reconcile, clock)
    scaler.bind_scale_set(7)
    await scaler.prepare(7)
    await scaler.prepare(7)
    assert calls == [7]
    phases = {r.name: r.phase for r in scaler.owned()}
    assert phases == {"linux-a": Phase.IDLE, "linux-b": Phase.BUSY, "linux-c": Phase.BOOTING}
    booting = scaler.runners["linux-c"]
    # 500 s of its 600 s boot deadline are already spent.
    assert clock.now - booting.phase_since == 500
    assert scaler.runners["linux-a"].server_id == "srv-a"


async def test_a_failed_reconciliation_is_logged_and_the_scaler_goes_on() -> None:
    async def reconcile(scale_set_id: int) -> Sequence[Adoption]:
        raise RuntimeError("cloud down")

    scaler = scaler_with(reconcile, Clock())
    await scaler.prepare(7)
    assert scaler.owned() == []
