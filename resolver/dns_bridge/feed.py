"""Where the DNS bridge gets its `View`: the narrow `ViewSource` seam, and a registry feed.

`ViewSource` is what the bridge needs of the resolver: `view()` (cheap, never blocks)
and `subscribe(cb)` (cb called on the event loop after every new view). The merged
`resolver.merge.Resolver` has that shape and replaces `RegistryFeed` once it lands;
until then `RegistryFeed` follows the registry alone.

`RegistryFeed.run()` follows `RegistryClient.watch()` into a `Mirror` and publishes a
new `View` after every message that leaves the mirror consistent — never in the middle
of a snapshot series (`Mirror.in_snapshot`). Drained instances become endpoints of
weight 0 (known, not answered). A service's endpoint tuple is rebuilt only when one
of its instances changed, so consumers can compare services cheaply.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from registry.api.client import Mirror, RegistryClient
from registry.model import Instance
from resolver.model import EMPTY_VIEW, Endpoint, View

SOURCE = "registry"


class ViewSource(Protocol):
    def view(self) -> View: ...

    def subscribe(self, listener: Callable[[], None]) -> None: ...


def endpoint(i: Instance) -> Endpoint:
    """The resolver's form of a registry instance (drained → weight 0)."""
    return Endpoint(
        service=i.service,
        instance_id=i.instance_id,
        addresses=i.addresses,
        port=i.port,
        weight=0 if i.drained else i.weight,
        tier=i.tier,
        zone=i.zone,
        region=i.region,
        metadata=i.metadata,
        source=SOURCE,
    )


class StaticSource:
    """A `ViewSource` set by hand (tests, and the bridge before any source is wired)."""

    def __init__(self, view: View = EMPTY_VIEW) -> None:
        self._view = view
        self._listeners: list[Callable[[], None]] = []

    def view(self) -> View:
        return self._view

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def publish(self, view: View) -> None:
        self._view = view
        for listener in self._listeners:
            listener()


class RegistryFeed(StaticSource):
    """Follows the registry's watch stream; `run()` until cancelled (the watch retries and
    fails over by itself). `clock` stamps `View.built_at`."""

    def __init__(self, client: RegistryClient, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.client = client
        self.mirror = Mirror()
        self._clock = clock
        self._services: dict[str, tuple[Endpoint, ...]] = {}
        self._dirty: set[str] = set()  # services touched since the last publication

    async def run(self) -> None:
        async for msg in self.client.watch(subscriber_id="dns-bridge"):
            touched = {i.service for i in msg.instances} | {d.instance.service for d in msg.deltas}
            if msg.snapshot_start:
                touched |= self._services.keys()
            self.mirror.apply(msg)
            if touched:
                self._dirty.update(touched)
            if not self.mirror.in_snapshot and (self._dirty or self.mirror.revision != self._view.revision):
                self._publish()

    def _publish(self) -> None:
        """Rebuild the touched services' tuples and publish (not mid-snapshot)."""
        dirty, self._dirty = self._dirty, set()
        if dirty:
            by_service: dict[str, list[Endpoint]] = {s: [] for s in dirty}
            for (service, _), inst in self.mirror.instances.items():
                if service in by_service:
                    by_service[service].append(endpoint(inst))
            for service, eps in by_service.items():
                if eps:
                    self._services[service] = tuple(sorted(eps, key=lambda e: e.instance_id))
                else:
                    self._services.pop(service, None)
        revision = self.mirror.revision
        self.publish(
            View(
                revision=revision,
                services=dict(self._services),
                source_revisions={SOURCE: revision},
                built_at=self._clock(),
            )
        )
