"""Python client of the registry API, with failover between replicas.

Used by the CLI, the tests, the benchmark and (later) the host agent and DNS
bridge. Replicas are interchangeable, so on UNAVAILABLE (or a dead
connection) a call moves to the next target and is retried; every retried
call is idempotent or safe to repeat (a retried `register` on lease 0 may
leave an unused lease that expires by its TTL).

`watch()` follows the registry's push stream across replicas: it resumes from
the last revision it applied, on whichever replica answers, and falls back to
a fresh snapshot only when it was cut off in the middle of one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import grpc

from registry.api import convert
from registry.api.v1 import registry_pb2 as pb
from registry.api.v1 import registry_pb2_grpc as pb_grpc
from registry.model import Instance

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


class RegistryClient:
    """Calls one replica at a time out of `targets` ("host:port"), failing over on UNAVAILABLE."""

    def __init__(self, targets: Sequence[str], *, timeout: float = 5.0, attempts: int | None = None) -> None:
        if not targets:
            raise ValueError("at least one registry target is required")
        self.targets = list(targets)
        self.timeout = timeout
        self._attempts = attempts or max(2, 2 * len(self.targets))
        self._index = 0
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.RegistryStub | None = None

    @property
    def target(self) -> str:
        return self.targets[self._index]

    def stub(self) -> pb_grpc.RegistryStub:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(self.target)
            self._stub = pb_grpc.RegistryStub(self._channel)  # type: ignore[no-untyped-call]
        return self._stub

    async def failover(self) -> None:
        """Drop the current channel and move to the next target."""
        if self._channel is not None:
            await self._channel.close()
        self._channel, self._stub = None, None
        self._index = (self._index + 1) % len(self.targets)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        self._channel, self._stub = None, None

    async def _retrying(self, call: Callable[[pb_grpc.RegistryStub], Awaitable[T]]) -> T:
        for attempt in range(self._attempts):
            try:
                return await call(self.stub())
            except grpc.aio.AioRpcError as e:
                if e.code() not in RETRYABLE or attempt == self._attempts - 1:
                    raise
                log.debug("registry %s: %s; trying the next replica", self.target, e.details())
                await self.failover()
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
        raise AssertionError("unreachable")

    # ---- calls ---------------------------------------------------------------

    async def open_session(self, ttl_seconds: int) -> pb.OpenSessionResponse:
        req = pb.OpenSessionRequest(ttl_seconds=ttl_seconds)
        return await self._retrying(lambda s: s.OpenSession(req, timeout=self.timeout))

    async def close_session(self, lease_id: int) -> None:
        req = pb.CloseSessionRequest(lease_id=lease_id)
        await self._retrying(lambda s: s.CloseSession(req, timeout=self.timeout))

    async def register(
        self, instance: Instance, lease_id: int = 0, replace: bool = False
    ) -> pb.RegisterResponse:
        req = pb.RegisterRequest(
            instance=convert.instance_to_pb_input(instance), lease_id=lease_id, replace=replace
        )
        return await self._retrying(lambda s: s.Register(req, timeout=self.timeout))

    async def deregister(self, service: str, instance_id: str) -> int:
        req = pb.DeregisterRequest(service=service, instance_id=instance_id)
        resp = await self._retrying(lambda s: s.Deregister(req, timeout=self.timeout))
        return int(resp.revision)

    async def set_weight(self, service: str, instance_id: str, weight: int) -> pb.UpdateInstanceResponse:
        req = pb.UpdateInstanceRequest(service=service, instance_id=instance_id, weight=weight)
        return await self._retrying(lambda s: s.UpdateInstance(req, timeout=self.timeout))

    async def drain(self, service: str, instance_id: str, drain: bool = True) -> pb.UpdateInstanceResponse:
        req = pb.UpdateInstanceRequest(service=service, instance_id=instance_id, drain=drain)
        return await self._retrying(lambda s: s.UpdateInstance(req, timeout=self.timeout))

    async def resolve(self, service: str, min_revision: int = 0) -> pb.ResolveResponse:
        req = pb.ResolveRequest(service=service, min_revision=min_revision)
        return await self._retrying(lambda s: s.Resolve(req, timeout=self.timeout))

    async def list_services(
        self, suffix: str = "", limit: int = 0, page_token: str = "", min_revision: int = 0
    ) -> pb.ListServicesResponse:
        req = pb.ListServicesRequest(
            suffix=suffix, limit=limit, page_token=page_token, min_revision=min_revision
        )
        return await self._retrying(lambda s: s.ListServices(req, timeout=self.timeout))

    async def cluster_status(self) -> pb.ClusterStatusResponse:
        req = pb.ClusterStatusRequest()
        return await self._retrying(lambda s: s.ClusterStatus(req, timeout=self.timeout + 2))

    async def keep_alive_once(self, lease_id: int) -> int:
        """Refresh `lease_id` once; return its TTL. NOT_FOUND once it has expired."""

        async def call(stub: pb_grpc.RegistryStub) -> int:
            stream = stub.KeepAlive(iter([pb.KeepAliveRequest(lease_id=lease_id)]), timeout=self.timeout)
            async for resp in stream:
                return int(resp.ttl_seconds)
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata())

        return await self._retrying(call)

    def watch(self, from_revision: int = 0, subscriber_id: str = "", suffix: str = "") -> Watch:
        """A resumable watch stream (see `Watch`)."""
        return Watch(self, from_revision, subscriber_id, suffix)


@dataclass
class Watch:
    """Iterate to receive `pb.WatchResponse` messages; resumes across replicas.

    `applied_revision` is the revision of the last complete message delivered
    (the resume point after a failure); asking for the next message reports
    the previous one to the registry as applied (for lag tracking).
    `reconnects` counts resumptions; `reconnect_delay` caps the backoff.
    """

    client: RegistryClient
    applied_revision: int
    subscriber_id: str
    suffix: str
    reconnects: int = 0
    reconnect_delay: float = 1.0
    _in_snapshot: bool = field(default=False, init=False)

    async def __aiter__(self) -> AsyncIterator[pb.WatchResponse]:
        delay = 0.05
        while True:
            try:
                async for msg in self._stream():
                    delay = 0.05
                    yield msg
            except grpc.aio.AioRpcError as e:
                if e.code() not in RETRYABLE | {
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    grpc.StatusCode.CANCELLED,
                }:
                    raise
                log.info(
                    "watch on %s ended (%s: %s); resuming", self.client.target, e.code().name, e.details()
                )
            self.reconnects += 1
            await self.client.failover()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.reconnect_delay)

    async def _stream(self) -> AsyncIterator[pb.WatchResponse]:
        start_from = 0 if self._in_snapshot else self.applied_revision
        acks: asyncio.Queue[pb.WatchRequest | None] = asyncio.Queue()
        acks.put_nowait(
            pb.WatchRequest(
                start=pb.WatchStart(
                    from_revision=start_from, subscriber_id=self.subscriber_id, suffix=self.suffix
                )
            )
        )

        async def requests() -> AsyncIterator[pb.WatchRequest]:
            while (req := await acks.get()) is not None:
                yield req

        call = self.client.stub().Watch(requests())
        try:
            async for msg in call:
                self._in_snapshot = msg.kind == pb.WatchResponse.SNAPSHOT
                advanced = not self._in_snapshot and msg.revision > self.applied_revision
                if advanced:
                    self.applied_revision = msg.revision
                yield msg
                if advanced:  # the consumer asked for more: it has applied `msg`
                    acks.put_nowait(pb.WatchRequest(applied=pb.WatchApplied(revision=msg.revision)))
        finally:
            acks.put_nowait(None)
            call.cancel()


@dataclass
class Mirror:
    """A subscriber's copy of the registry, built from watch messages. Pure."""

    instances: dict[tuple[str, str], Instance] = field(default_factory=dict)
    revision: int = 0
    _fresh_snapshot: bool = True

    def apply(self, msg: pb.WatchResponse) -> None:
        """Apply one watch message (SNAPSHOT series replace the content)."""
        if msg.kind in (pb.WatchResponse.SNAPSHOT, pb.WatchResponse.SNAPSHOT_END):
            if self._fresh_snapshot:
                self.instances.clear()
            self._fresh_snapshot = msg.kind == pb.WatchResponse.SNAPSHOT_END
            for i in msg.instances:
                self.instances[(i.service, i.instance_id)] = convert.instance_from_wire(i)
        for d in msg.deltas:
            key = (d.instance.service, d.instance.instance_id)
            if d.kind == pb.InstanceDelta.DELETE:
                self.instances.pop(key, None)
            else:
                self.instances[key] = convert.instance_from_wire(d.instance)
        self.revision = max(self.revision, msg.revision)


async def keep_session_alive(client: RegistryClient, lease_id: int, interval: float) -> None:
    """Refresh `lease_id` every `interval` seconds over one KeepAlive stream, until cancelled.

    Moves to another replica when the stream breaks; raises the NOT_FOUND
    error once the lease has expired (its instances are gone: register again).
    """

    async def beats() -> AsyncIterator[pb.KeepAliveRequest]:
        while True:
            yield pb.KeepAliveRequest(lease_id=lease_id)
            await asyncio.sleep(interval)

    while True:
        call = client.stub().KeepAlive(beats())
        try:
            async for _ in call:
                pass
        except grpc.aio.AioRpcError as e:
            if e.code() not in RETRYABLE | {grpc.StatusCode.CANCELLED}:
                raise
            await client.failover()
            await asyncio.sleep(min(interval, 0.2))
        finally:
            call.cancel()
