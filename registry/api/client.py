"""Python client of the registry API, with failover between replicas.

Used by the CLI, the tests, the benchmark and the host agent. Replicas are
interchangeable, so on UNAVAILABLE (or a dead connection) a call moves to the
next target and is retried; every retried call is idempotent or safe to
repeat (a retried `register` on lease 0 may leave an unused lease that
expires by its TTL).

`watch()` follows the registry's push stream across replicas: it resumes from
the last revision it applied, on whichever replica answers, and falls back to
a fresh snapshot only when it was cut off in the middle of one.

The gRPC library is behind one seam, `rpc.Transport` (one connection to one
replica): grpcio by default (`transport_grpcio`, imported on first use), or
grpclib (`transport_grpclib`, what the host agent passes: no grpcio in its
process). This module's logic is the same over both; errors are `rpc.RpcError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from google.protobuf.message import Message

from registry.api import convert
from registry.api.rpc import RETRYABLE, Call, ChannelClosed, Dial, RpcError, StatusCode, Transport
from registry.api.v1 import registry_pb2 as pb
from registry.model import Instance

log = logging.getLogger(__name__)
T = TypeVar("T")
M = TypeVar("M", bound=Message)


def dial_grpcio(target: str) -> Transport:
    """The default `Dial`: grpcio, imported here so that clients on another transport never load it."""
    from registry.api import transport_grpcio

    return transport_grpcio.dial(target)


class RegistryClient:
    """Calls one replica at a time out of `targets` ("host:port"), failing over on UNAVAILABLE.

    `transport` opens the connection to a target (`rpc.Dial`; grpcio by default).
    Calls raise `rpc.RpcError` once the retries are spent.
    """

    def __init__(
        self,
        targets: Sequence[str],
        *,
        timeout: float = 5.0,
        attempts: int | None = None,
        transport: Dial = dial_grpcio,
    ) -> None:
        if not targets:
            raise ValueError("at least one registry target is required")
        self.targets = list(targets)
        self.timeout = timeout
        self._attempts = attempts or max(2, 2 * len(self.targets))
        self._index = 0
        self._dial = transport
        self._channel: Transport | None = None

    @property
    def target(self) -> str:
        return self.targets[self._index]

    def channel(self) -> Transport:
        """The connection to the current target, opened on first use (a new one after
        `reconnect` / `failover`). Raw calls on it are neither retried nor failed over."""
        if self._channel is None:
            self._channel = self._dial(self.target)
        return self._channel

    async def failover(self) -> None:
        """Drop the current channel and move to the next target."""
        await self.reconnect()
        self._index = (self._index + 1) % len(self.targets)

    async def reconnect(self) -> None:
        """Drop the current channel; the next call opens a new one to the same target.

        For when the channel's connection may be dead without the channel knowing
        (e.g. the host's address it was bound to went away). Calls and streams in
        flight on the old channel end with `rpc.ChannelClosed`; the client's own
        calls and `keep_session_alive` / `Watch` retry on the new one (same target).
        """
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

    async def close(self) -> None:
        await self.reconnect()

    async def _retrying(self, call: Callable[[Transport], Awaitable[T]]) -> T:
        for attempt in range(self._attempts):
            try:
                return await call(self.channel())
            except ChannelClosed:
                if attempt == self._attempts - 1:
                    raise RpcError(StatusCode.UNAVAILABLE, "the channel was closed during the call") from None
                log.debug("registry %s: channel closed during a call; retrying", self.target)
                continue  # someone else replaced the channel: retry on the new one
            except RpcError as e:
                if e.code not in RETRYABLE or attempt == self._attempts - 1:
                    raise
                log.debug("registry %s: %s; trying the next replica", self.target, e.details)
                await self.failover()
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
        raise AssertionError("unreachable")

    async def _unary(
        self, method: str, request: Message, response_type: type[M], timeout: float | None = None
    ) -> M:
        """`method` with failover and retries, bounded by `timeout` (default: the client's) per attempt."""
        limit = self.timeout if timeout is None else timeout
        return await self._retrying(lambda t: t.unary(method, request, response_type, limit))

    # ---- calls ---------------------------------------------------------------

    async def open_session(self, ttl_seconds: int) -> pb.OpenSessionResponse:
        req = pb.OpenSessionRequest(ttl_seconds=ttl_seconds)
        return await self._unary("OpenSession", req, pb.OpenSessionResponse)

    async def close_session(self, lease_id: int) -> None:
        req = pb.CloseSessionRequest(lease_id=lease_id)
        await self._unary("CloseSession", req, pb.CloseSessionResponse)

    async def register(
        self, instance: Instance, lease_id: int = 0, replace: bool = False
    ) -> pb.RegisterResponse:
        req = pb.RegisterRequest(
            instance=convert.instance_to_pb_input(instance), lease_id=lease_id, replace=replace
        )
        return await self._unary("Register", req, pb.RegisterResponse)

    async def deregister(self, service: str, instance_id: str) -> int:
        req = pb.DeregisterRequest(service=service, instance_id=instance_id)
        resp = await self._unary("Deregister", req, pb.DeregisterResponse)
        return int(resp.revision)

    async def set_weight(self, service: str, instance_id: str, weight: int) -> pb.UpdateInstanceResponse:
        req = pb.UpdateInstanceRequest(service=service, instance_id=instance_id, weight=weight)
        return await self._unary("UpdateInstance", req, pb.UpdateInstanceResponse)

    async def drain(self, service: str, instance_id: str, drain: bool = True) -> pb.UpdateInstanceResponse:
        req = pb.UpdateInstanceRequest(service=service, instance_id=instance_id, drain=drain)
        return await self._unary("UpdateInstance", req, pb.UpdateInstanceResponse)

    async def resolve(
        self, service: str, min_revision: int = 0, with_lease_time_left: bool = False
    ) -> pb.ResolveResponse:
        req = pb.ResolveRequest(
            service=service, min_revision=min_revision, with_lease_time_left=with_lease_time_left
        )
        return await self._unary("Resolve", req, pb.ResolveResponse)

    async def list_services(
        self, suffix: str = "", limit: int = 0, page_token: str = "", min_revision: int = 0
    ) -> pb.ListServicesResponse:
        req = pb.ListServicesRequest(
            suffix=suffix, limit=limit, page_token=page_token, min_revision=min_revision
        )
        return await self._unary("ListServices", req, pb.ListServicesResponse)

    async def cluster_status(self, local_only: bool = False) -> pb.ClusterStatusResponse:
        req = pb.ClusterStatusRequest(local_only=local_only)
        return await self._unary("ClusterStatus", req, pb.ClusterStatusResponse, self.timeout + 2)

    async def keep_alive_once(self, lease_id: int) -> int:
        """Refresh `lease_id` once; return its TTL. NOT_FOUND once it has expired."""

        async def one() -> AsyncIterator[pb.KeepAliveRequest]:
            yield pb.KeepAliveRequest(lease_id=lease_id)

        async def call(transport: Transport) -> int:
            stream = transport.stream("KeepAlive", one(), pb.KeepAliveResponse, timeout=self.timeout)
            try:
                async for resp in stream:
                    return int(resp.ttl_seconds)
            finally:
                stream.cancel()
            raise RpcError(StatusCode.UNAVAILABLE, "the keep-alive stream ended without an answer")

        return await self._retrying(call)

    def registration_stream(self) -> RegistrationStream:
        """Many registrations over one stream (see `RegistrationStream`)."""
        return RegistrationStream(self)

    def watch(
        self,
        from_revision: int = 0,
        subscriber_id: str = "",
        suffix: str = "",
        explicit_confirm: bool = False,
    ) -> Watch:
        """A resumable watch stream (see `Watch`)."""
        return Watch(self, from_revision, subscriber_id, suffix, explicit_confirm=explicit_confirm)


class RegistrationStream:
    """Registrations over one `RegisterStream` call, many in flight.

    `register` behaves like `RegistryClient.register`: it returns the
    `RegisterResponse` or raises `rpc.RpcError` with the code a unary
    Register would have ended with. If the stream breaks, the registrations in
    flight fail with its error (they may or may not have been committed:
    registering again is safe); the next call opens a new stream, on the next
    replica when the last one was unavailable.
    """

    def __init__(self, client: RegistryClient) -> None:
        self.client = client
        self._outbox: asyncio.Queue[pb.RegisterStreamRequest | None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[pb.RegisterResponse]] = {}
        self._next_id = 0

    async def register(
        self, instance: Instance, lease_id: int = 0, replace: bool = False
    ) -> pb.RegisterResponse:
        if self._outbox is None:
            self._open()
        assert self._outbox is not None
        self._next_id += 1
        fut: asyncio.Future[pb.RegisterResponse] = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = fut
        req = pb.RegisterRequest(
            instance=convert.instance_to_pb_input(instance), lease_id=lease_id, replace=replace
        )
        self._outbox.put_nowait(pb.RegisterStreamRequest(request_id=self._next_id, register=req))
        return await fut

    async def close(self) -> None:
        """End the stream after the registrations in flight have been answered."""
        if self._outbox is not None:
            self._outbox.put_nowait(None)
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    def _open(self) -> None:
        outbox: asyncio.Queue[pb.RegisterStreamRequest | None] = asyncio.Queue()

        async def requests() -> AsyncIterator[pb.RegisterStreamRequest]:
            while (req := await outbox.get()) is not None:
                yield req

        self._outbox = outbox
        call = self.client.channel().stream("RegisterStream", requests(), pb.RegisterStreamResponse)
        self._reader = asyncio.create_task(self._read(call))

    async def _read(self, call: Call[pb.RegisterStreamResponse]) -> None:
        error = RpcError(StatusCode.UNAVAILABLE, "the register stream ended")
        try:
            async for answer in call:
                self._settle(answer)
        except RpcError as e:  # a `ChannelClosed` (CANCELLED) too: no failover for that
            error = e
        finally:
            call.cancel()
        self._outbox = None
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(error)
        if pending and error.code in RETRYABLE:
            await self.client.failover()

    def _settle(self, answer: pb.RegisterStreamResponse) -> None:
        fut = self._pending.pop(answer.request_id, None)
        if fut is None or fut.done():
            return
        if answer.error_code:
            fut.set_exception(RpcError(StatusCode.of(answer.error_code), answer.error_message))
        else:
            fut.set_result(answer.registered)


@dataclass
class Watch:
    """Iterate to receive `pb.WatchResponse` messages; resumes across replicas.

    `applied_revision` is the revision of the last complete message delivered
    (the resume point after a failure). What counts as *applied* for the
    registry's lag figures: by default, asking for the next message confirms
    the previous one; with `explicit_confirm` the consumer calls
    `confirm(revision)` when a change has taken effect where it matters (the
    host agent: its data-path table). The latest confirmed revision is
    reported at most once per `ack_interval` seconds, with the time from
    receiving the DELTAS message that carried it to its confirmation
    (`WatchApplied.apply_delay_us`), from which the replica measures
    propagation. `reconnects` counts resumptions; `reconnect_delay` caps the
    backoff.
    """

    client: RegistryClient
    applied_revision: int
    subscriber_id: str
    suffix: str
    reconnects: int = 0
    reconnect_delay: float = 1.0
    ack_interval: float = 1.0
    explicit_confirm: bool = False
    _in_snapshot: bool = field(default=False, init=False)
    # (revision, receive time) of recent DELTAS messages, oldest first.
    _received: deque[tuple[int, float]] = field(default_factory=lambda: deque(maxlen=256), init=False)
    # Latest confirmation (revision, apply delay in µs or None) and the stream's ack wake-up.
    _confirmed: tuple[int, int | None] = field(default=(0, None), init=False)
    _wake: asyncio.Event | None = field(default=None, init=False)

    def confirm(self, revision: int) -> None:
        """The changes up to `revision` have taken effect (with `explicit_confirm`; cheap)."""
        if revision <= self._confirmed[0]:
            return
        received = next((t for r, t in reversed(self._received) if r == revision), None)
        delay = None if received is None else round((time.monotonic() - received) * 1e6)
        self._confirmed = (revision, delay)
        if self._wake is not None:
            self._wake.set()

    async def __aiter__(self) -> AsyncIterator[pb.WatchResponse]:
        delay = 0.05
        while True:
            try:
                async for msg in self._stream():
                    delay = 0.05
                    yield msg
            except ChannelClosed:
                log.info("watch on %s: channel replaced; resuming", self.client.target)
                self.reconnects += 1
                await asyncio.sleep(delay)
                continue
            except RpcError as e:
                if e.code not in RETRYABLE | {StatusCode.RESOURCE_EXHAUSTED, StatusCode.CANCELLED}:
                    raise
                log.info("watch on %s ended (%s: %s); resuming", self.client.target, e.code.name, e.details)
            self.reconnects += 1
            await self.client.failover()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.reconnect_delay)

    async def _stream(self) -> AsyncIterator[pb.WatchResponse]:
        start_from = 0 if self._in_snapshot else self.applied_revision
        start = pb.WatchStart(from_revision=start_from, subscriber_id=self.subscriber_id, suffix=self.suffix)
        wake, stop = asyncio.Event(), asyncio.Event()
        self._wake = wake

        async def requests() -> AsyncIterator[pb.WatchRequest]:
            """The start, then at most one `applied` ack per `ack_interval`, only when it changed."""
            yield pb.WatchRequest(start=start)
            sent = start_from
            while True:
                await wake.wait()
                wake.clear()
                if stop.is_set():
                    return
                revision, apply_delay = self._confirmed
                if revision > sent:
                    sent = revision
                    yield pb.WatchRequest(applied=pb.WatchApplied(revision=sent, apply_delay_us=apply_delay))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), self.ack_interval)

        call = self.client.channel().stream("Watch", requests(), pb.WatchResponse)
        try:
            async for msg in call:
                self._in_snapshot = msg.kind == pb.WatchResponse.SNAPSHOT
                advanced = not self._in_snapshot and msg.revision > self.applied_revision
                if advanced:
                    self.applied_revision = msg.revision
                    if msg.kind == pb.WatchResponse.DELTAS:
                        self._received.append((msg.revision, time.monotonic()))
                yield msg
                if advanced and not self.explicit_confirm:  # the consumer asked for more: `msg` applied
                    self.confirm(msg.revision)
        finally:
            stop.set()
            wake.set()
            self._wake = None
            call.cancel()


@dataclass
class Mirror:
    """A subscriber's copy of the registry, built from watch messages. Pure."""

    instances: dict[tuple[str, str], Instance] = field(default_factory=dict)
    revision: int = 0
    # In the middle of a snapshot series: `instances` is not a consistent view.
    in_snapshot: bool = False

    def apply(self, msg: pb.WatchResponse) -> None:
        """Apply one watch message (a SNAPSHOT series replaces the content: its first message,
        `snapshot_start`, drops everything held, even the parts of a series cut off earlier)."""
        if msg.kind in (pb.WatchResponse.SNAPSHOT, pb.WatchResponse.SNAPSHOT_END):
            if msg.snapshot_start:
                self.instances.clear()
            self.in_snapshot = msg.kind == pb.WatchResponse.SNAPSHOT
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

    async def beats(stop: asyncio.Event) -> AsyncIterator[pb.KeepAliveRequest]:
        while not stop.is_set():
            yield pb.KeepAliveRequest(lease_id=lease_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    while True:
        # `stop` ends the request iterator too: grpc does not cancel its consumer task
        # when the call has already ended (e.g. with NOT_FOUND), so it would linger.
        stop = asyncio.Event()
        call = client.channel().stream("KeepAlive", beats(stop), pb.KeepAliveResponse)
        try:
            async for _ in call:
                pass
        except ChannelClosed:
            await asyncio.sleep(min(interval, 0.05))  # the channel was replaced: use the new one
        except RpcError as e:
            if e.code not in RETRYABLE | {StatusCode.CANCELLED}:
                raise
            await client.failover()
            await asyncio.sleep(min(interval, 0.2))
        finally:
            stop.set()
            call.cancel()
