"""What every discovery back-end produces and what the merge hands to consumers. Pure: no I/O.

The contract between the resolver's parts (`ARCHITECTURE.md` §5):

- A back-end (`Backend`) knows a set of services, each with its endpoints, at a
  revision that grows with every change; it calls its listeners after each change.
  It never blocks its listeners and never raises from `snapshot()`.
- The merge (`resolver.merge`) combines the snapshots of several back-ends, each
  with a configured precedence, into one immutable `View`: every endpoint keeps
  its `source` (the back-end's name) and gets an effective `tier` (precedence *
  `TIERS_PER_SOURCE` + the back-end's own tier), so a consumer that prefers lower
  tiers (the agent's service table, DNS SRV priority) prefers higher-precedence
  back-ends. Disagreements are listed in `View.conflicts`, never hidden.
- Consumers (the host agent, the DNS bridge) read only `View`s: a view is never
  mutated after it is built, so readers need no lock.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

TIERS_PER_SOURCE = 16
"""Tiers one back-end may use (the registry's tiers are 0..15): effective tier =
precedence * TIERS_PER_SOURCE + the endpoint's tier within its back-end."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One instance of a service as a back-end knows it.

    `service` is the normalised name (`registry.names.normalize`). `weight` 0 means
    drained: known, but not to be chosen (DNS leaves it out of answers). `healthy`
    False means the back-end reports it failing (also left out). `tier` is lower =
    preferred. `source` is the back-end's name (set by the back-end itself).
    """

    service: str
    instance_id: str
    addresses: tuple[str, ...]
    port: int
    weight: int = 100
    tier: int = 0
    healthy: bool = True
    zone: str = ""
    region: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    source: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.service, self.instance_id)

    @property
    def usable(self) -> bool:
        """Healthy and not drained: may be handed to clients."""
        return self.healthy and self.weight > 0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A back-end's complete state at `revision`: service name → its endpoints."""

    source: str
    revision: int
    services: Mapping[str, tuple[Endpoint, ...]]
    error: str = ""  # the last problem the back-end hit (it keeps its last good state)


Listener = Callable[[], None]


class Backend(Protocol):
    """A source of services. Its snapshots' endpoints carry `source` = `name` and tiers
    0..TIERS_PER_SOURCE-1, are sorted by (tier, instance_id) within a service and have
    unique instance ids there; a service's tuple is the same object while it does not
    change (the merge relies on all of this). `run()` follows the source until cancelled (it handles its own
    retries and reports problems in `snapshot().error`; it raises only on a configuration
    error it cannot start with); `snapshot()` is cheap and never blocks; `subscribe` adds a
    listener called (on the event loop) after every change of the snapshot."""

    name: str

    async def run(self) -> None: ...

    def snapshot(self) -> Snapshot: ...

    def subscribe(self, listener: Listener) -> None: ...


@dataclass(frozen=True, slots=True)
class Conflict:
    """A service (or one instance of it) that several back-ends disagree about."""

    service: str
    instance_id: str  # "" when the conflict is about the service as a whole
    sources: tuple[str, ...]
    detail: str


@dataclass(frozen=True, slots=True)
class View:
    """The merged, immutable view consumers read. `revision` grows with every rebuild;
    `source_revisions` says which revision of each back-end it was built from; `built_at`
    is a `time.time()` stamp (for staleness shown to clients, e.g. DNS TXT)."""

    revision: int
    services: Mapping[str, tuple[Endpoint, ...]]
    source_revisions: Mapping[str, int]
    conflicts: tuple[Conflict, ...] = ()
    errors: Mapping[str, str] = field(default_factory=dict)
    built_at: float = 0.0

    def endpoints(self, service: str) -> tuple[Endpoint, ...]:
        return self.services.get(service, ())


EMPTY_VIEW = View(revision=0, services={}, source_revisions={})
