"""The registry back-end: the registry's push stream as a `resolver.model.Backend`.

Data flow: `RegistryClient.watch()` (resume and failover between replicas are the
client's) → `registry.api.client.Mirror` → `RegistryView` (pure: instances →
`Endpoint`s, per service) → the published snapshot.

Contract:
- No snapshot is published while the mirror is in the middle of a SNAPSHOT series
  (`Mirror.in_snapshot`): consumers never see a half-received registry.
- Conversion (`endpoint_from_instance`): drained instances get weight 0 (their
  other fields are kept); tier, zone, region and metadata are copied; `source` is
  the back-end's name.
- Cost: a delta rebuilds only its service's endpoint tuple; each published change
  copies the service map (O(services), a C-level dict copy) so snapshots stay immutable.
- A watch that fails for good (a non-retryable error) is reported in
  `snapshot().error`, the last good state is kept, and the watch is restarted from a
  fresh snapshot after `retry_delay` seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence

from registry.api.client import Mirror, RegistryClient, dial_grpcio
from registry.api.rpc import Dial, RpcError
from registry.api.v1 import registry_pb2 as pb
from registry.model import Instance
from resolver.backends.state import Published, PublishingBackend
from resolver.model import Endpoint

log = logging.getLogger(__name__)


def endpoint_from_instance(instance: Instance, source: str) -> Endpoint:
    """The `Endpoint` for one registry instance (drained → weight 0)."""
    return Endpoint(
        service=instance.service,
        instance_id=instance.instance_id,
        addresses=tuple(instance.addresses),
        port=instance.port,
        weight=0 if instance.drained else instance.weight,
        tier=instance.tier,
        zone=instance.zone,
        region=instance.region,
        metadata=dict(instance.metadata),
        source=source,
    )


class RegistryView:
    """Pure: the endpoints of a `Mirror`, kept per service and updated per watch message.

    `apply(msg)` applies the message to the mirror and returns True when the
    endpoints may have changed and the mirror is consistent (not in a snapshot).
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.mirror = Mirror()
        self.services: dict[str, tuple[Endpoint, ...]] = {}
        self._by_service: dict[str, dict[str, Endpoint]] = {}
        self._dirty_all = False

    def apply(self, msg: pb.WatchResponse) -> bool:
        self.mirror.apply(msg)
        if msg.kind in (pb.WatchResponse.SNAPSHOT, pb.WatchResponse.SNAPSHOT_END):
            self._dirty_all = True
        if self.mirror.in_snapshot:
            return False
        if self._dirty_all:
            self._dirty_all = False
            self._rebuild_all(self.mirror.instances.values())
            return True
        touched = set()
        for d in msg.deltas:
            service, iid = d.instance.service, d.instance.instance_id
            instance = self.mirror.instances.get((service, iid))
            endpoints = self._by_service.setdefault(service, {})
            if instance is None:
                endpoints.pop(iid, None)
            else:
                endpoints[iid] = endpoint_from_instance(instance, self.source)
            touched.add(service)
        for service in touched:
            self._refresh(service)
        return bool(touched)

    def _rebuild_all(self, instances: Iterable[Instance]) -> None:
        self._by_service = {}
        for i in instances:
            self._by_service.setdefault(i.service, {})[i.instance_id] = endpoint_from_instance(i, self.source)
        self.services = {}
        for service in sorted(self._by_service):
            self._refresh(service)

    def _refresh(self, service: str) -> None:
        endpoints = self._by_service.get(service)
        if endpoints:
            self.services[service] = tuple(sorted(endpoints.values(), key=lambda e: (e.tier, e.instance_id)))
        else:
            self._by_service.pop(service, None)
            self.services.pop(service, None)


class RegistryBackend(PublishingBackend):
    """Follows the registry at `targets` ("host:port"); `name` is the source name."""

    def __init__(
        self,
        targets: Sequence[str],
        *,
        name: str = "registry",
        suffix: str = "",
        subscriber_id: str = "",
        transport: Dial = dial_grpcio,
        retry_delay: float = 1.0,
    ) -> None:
        if not targets:
            raise ValueError("the registry back-end needs at least one registry target")
        self.name = name
        self._targets = list(targets)
        self._suffix = suffix
        self._subscriber_id = subscriber_id
        self._transport = transport
        self._retry_delay = retry_delay
        self._state = Published(name)

    async def run(self) -> None:
        client = RegistryClient(self._targets, transport=self._transport)
        try:
            while True:
                try:
                    await self._follow(client)
                except RpcError as e:
                    error = f"registry watch failed: {e.code.name}: {e.details}"
                    log.warning("%s: %s", self.name, error)
                    self._state.set_error(error)
                await asyncio.sleep(self._retry_delay)
        finally:
            await client.close()

    async def _follow(self, client: RegistryClient) -> None:
        view = RegistryView(self.name)
        async for msg in client.watch(subscriber_id=self._subscriber_id, suffix=self._suffix):
            if view.apply(msg):
                self._state.publish(view.services, revision=view.mirror.revision)
            elif not view.mirror.in_snapshot and self._state.snapshot().error:
                self._state.set_error("")
