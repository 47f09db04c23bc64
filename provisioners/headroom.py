"""The project's quota headroom as one process sees it (no SDK here: pure bookkeeping).

Nova's `GET /limits` is the truth, but it is read only now and then (CAPACITY_REFRESH_INTERVAL,
and soon after Nova refused a create for quota). Between two reads the process adjusts it
itself, the way `scaleset_listener.demand.cloud_capacity` adjusts the floating IP pool:

* a create *claims* its flavor's share before its request is sent, and keeps the claim until a
  read that began after Nova accepted the request (from then on Nova's own usage counts it); a
  refused request gives its claim back at once;
* a delete that finished *releases* the server's share until a read that began after it.

Every scale set of the process that creates in the same project shares this one view (sets with
different placements on one cloud have provisioners of their own, handed the same view): the
headroom goes first come, first served, and a create that finds no headroom left is refused here
without a call to Nova (two sets never both take the last slot).

A claim counts against the headroom from the moment it is made, but the scaler counts its own
creates in flight already (demand.cloud_capacity: owned - in flight + free), so `free_servers`
hands the claims of the asking owner's creates in flight back: each caller sees the headroom as
if its own creates in flight had not taken theirs yet, and everyone else's as taken.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass


@dataclass(frozen=True)
class FlavorSize:
    vcpus: int
    ram_mb: int


@dataclass(frozen=True)
class ComputeLimits:
    """Nova's absolute limits of the project (GET /limits); -1 is unlimited."""

    max_instances: int
    max_cores: int
    max_ram_mb: int
    used_instances: int
    used_cores: int
    used_ram_mb: int


@dataclass(frozen=True)
class Usage:
    """Instances, vCPUs and MiB of RAM: what servers take from the quota."""

    instances: int = 0
    cores: int = 0
    ram_mb: int = 0

    @classmethod
    def of(cls, size: FlavorSize) -> Usage:
        return cls(1, size.vcpus, size.ram_mb)

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.instances + other.instances,
            self.cores + other.cores,
            self.ram_mb + other.ram_mb,
        )

    def __sub__(self, other: Usage) -> Usage:
        return Usage(
            self.instances - other.instances,
            self.cores - other.cores,
            self.ram_mb - other.ram_mb,
        )


@dataclass
class _Claim:
    usage: Usage
    owner: tuple[str, ...]
    server_id: str | None = None
    # The event after which Nova counts the server (its create request was accepted).
    accepted_at: int | None = None
    in_flight: bool = True  # until the create has finished, whichever way


@dataclass(frozen=True)
class _Release:
    usage: Usage
    released_at: int


def servers_that_fit(limits: ComputeLimits, taken: Usage, size: FlavorSize) -> int | None:
    """How many more servers of `size` the quota takes beyond `taken`; None when no quota
    limits them (every resource unlimited, or the flavor needs none of the limited ones)."""
    fits: list[int] = []
    for limit, used, each in (
        (limits.max_instances, limits.used_instances + taken.instances, 1),
        (limits.max_cores, limits.used_cores + taken.cores, size.vcpus),
        (limits.max_ram_mb, limits.used_ram_mb + taken.ram_mb, size.ram_mb),
    ):
        if limit < 0 or each <= 0:
            continue
        fits.append(max(0, limit - used) // each)
    return min(fits) if fits else None


class ProjectHeadroom:
    """Nova's last limits of the project, less the creates claimed since, plus the deletes
    released since. Single-threaded (the event loop): a claim is checked and taken in one step.

    The sums are kept as claims come and go, so asking costs the same with 500 creates in
    flight as with one (a burst asks once per create and per scaler pass).
    """

    def __init__(self) -> None:
        self._limits: ComputeLimits | None = None
        # Nova refused a create for quota: no room until a read says otherwise.
        self._exhausted = False
        # One sequence orders claims' acceptances, releases and the starts of reads.
        self._events = itertools.count(1)
        self._claims: dict[int, _Claim] = {}
        self._claim_ids = itertools.count(1)
        self._releases: list[_Release] = []
        # What each server created here takes, so that its delete gives back the right share.
        self._usage_by_server: dict[str, Usage] = {}
        self._claim_of_server: dict[str, int] = {}
        # Running sums of the above: every claim, the releases, and per owner its claims still
        # in flight (their usage and their number).
        self._claimed = Usage()
        self._released = Usage()
        self._in_flight: dict[tuple[str, ...], tuple[Usage, int]] = {}

    @property
    def limits(self) -> ComputeLimits | None:
        return self._limits

    @property
    def is_exhausted(self) -> bool:
        """Nova refused a create for quota since the last read: read again soon."""
        return self._exhausted

    def begin_read(self) -> int:
        """Mark the start of a /limits read; hand the mark to `apply`."""
        return next(self._events)

    def apply(self, limits: ComputeLimits, read_began: int) -> None:
        """A /limits answer whose read began at `read_began`. When unsure whether Nova's answer
        saw a change, the reading is kept on the safe side (less headroom): a create accepted
        while the read was under way keeps its claim, a delete finished meanwhile loses its
        release."""
        read_ended = next(self._events)
        self._limits = limits
        self._exhausted = False
        for claim_id, claim in list(self._claims.items()):
            if claim.accepted_at is not None and claim.accepted_at < read_began:
                self._drop(claim_id)
        kept = [r for r in self._releases if r.released_at > read_ended]
        self._releases = kept
        self._released = sum((r.usage for r in kept), Usage())

    def taken(self, owner: tuple[str, ...] | None = None) -> Usage:
        """Claims less releases since the last read; without the claims of `owner`'s creates
        in flight (the caller counts those itself)."""
        total = self._claimed - self._released
        if owner is not None and owner in self._in_flight:
            total -= self._in_flight[owner][0]
        return total

    def _count_in_flight(self, claim: _Claim, sign: int) -> None:
        usage, count = self._in_flight.get(claim.owner, (Usage(), 0))
        usage = usage + claim.usage if sign > 0 else usage - claim.usage
        if count + sign:
            self._in_flight[claim.owner] = (usage, count + sign)
        else:
            self._in_flight.pop(claim.owner, None)

    def _drop(self, claim_id: int) -> None:
        claim = self._claims.pop(claim_id)
        self._claimed -= claim.usage
        if claim.in_flight:
            self._count_in_flight(claim, -1)
        if claim.server_id is not None:
            self._claim_of_server.pop(claim.server_id, None)

    def free_servers(self, size: FlavorSize, owner: tuple[str, ...]) -> int | None:
        """More servers of `size` that fit, `owner`'s creates in flight handed back; None when
        the quota does not limit them (or has not been read)."""
        if self._exhausted:
            return self._in_flight.get(owner, (Usage(), 0))[1]
        if self._limits is None:
            return None
        return servers_that_fit(self._limits, self.taken(owner), size)

    def claim(self, size: FlavorSize, owner: tuple[str, ...]) -> int | None:
        """Take one server's share for a create about to be sent; its claim id, or None when the
        headroom is gone (first come, first served). Unread limits refuse nothing."""
        if self._exhausted:
            return None
        if self._limits is not None:
            fit = servers_that_fit(self._limits, self.taken(), size)
            if fit is not None and fit < 1:
                return None
        claim_id = next(self._claim_ids)
        claim = _Claim(Usage.of(size), owner)
        self._claims[claim_id] = claim
        self._claimed += claim.usage
        self._count_in_flight(claim, +1)
        return claim_id

    def accepted(self, claim_id: int, server_id: str) -> None:
        """Nova accepted the create: it counts the server from now on."""
        claim = self._claims.get(claim_id)
        if claim is not None:
            claim.server_id = server_id
            claim.accepted_at = next(self._events)
            self._usage_by_server[server_id] = claim.usage
            self._claim_of_server[server_id] = claim_id

    def refused(self, claim_id: int) -> None:
        """The create request failed: nothing was taken."""
        if claim_id in self._claims:
            self._drop(claim_id)

    def exhausted(self) -> None:
        """Nova refused a create for quota: whatever the last read said, there is no room
        (something outside this process took it) until the next read."""
        self._exhausted = True

    def settled(self, server_id: str) -> None:
        """The create has finished (ACTIVE, or failed and deleted): no longer in flight."""
        claim = self._claims.get(self._claim_of_server.get(server_id, 0))
        if claim is not None and claim.in_flight:
            claim.in_flight = False
            self._count_in_flight(claim, -1)

    def released(self, server_id: str) -> None:
        """The server is gone. Only a server created here gives its share back at once: another
        one's (an earlier process's, or an id already deleted) waits for the next read, so that
        a guess never makes room Nova does not have."""
        usage = self._usage_by_server.pop(server_id, None)
        if usage is not None:
            self._releases.append(_Release(usage, next(self._events)))
            self._released += usage
