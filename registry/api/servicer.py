"""Thin gRPC handlers: validate the envelope, call the domain service, map errors.

Each method converts the request (via `convert`), calls `RegistryService` or
the `Hub`, and fills the response. Domain errors map to status codes in
`STATUS_OF`; anything unexpected is logged and becomes INTERNAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import NoReturn, TypeAlias, TypeVar

import grpc

from registry.api import convert
from registry.api.fanout import Hub, Subscription, SubscriptionClosed
from registry.api.v1 import registry_pb2 as pb
from registry.errors import Aborted, AlreadyExists, InvalidArgument, NotFound, RegistryError, Unavailable
from registry.follower import Follower
from registry.service import RegistryService
from registry.view import normalize_suffix

log = logging.getLogger(__name__)

STATUS_OF: dict[type[RegistryError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    Aborted: grpc.StatusCode.ABORTED,
}

T = TypeVar("T")
MAX_STREAM_IN_FLIGHT = 256
# A Watch stream must say what it wants this soon, or it is closed.
FIRST_MESSAGE_TIMEOUT = 30.0
Ctx: TypeAlias = grpc.aio.ServicerContext


async def _call(context: Ctx, op: Awaitable[T]) -> T:
    """Await a domain operation, turning domain errors into the call's status."""
    try:
        return await op
    except RegistryError as e:
        await _abort(context, e)


def _code_of(e: RegistryError) -> grpc.StatusCode:
    return next((c for t, c in STATUS_OF.items() if isinstance(e, t)), grpc.StatusCode.INTERNAL)


async def _abort(context: Ctx, e: RegistryError) -> NoReturn:
    await context.abort(_code_of(e), str(e))
    raise AssertionError("unreachable")  # context.abort raises


class RegistryServicer:
    """Implements serval.registry.v1.Registry (see registry.proto for the contract)."""

    def __init__(self, service: RegistryService, hub: Hub, follower: Follower, status: StatusSource) -> None:
        self._service = service
        self._hub = hub
        self._follower = follower
        self._status = status

    async def OpenSession(self, request: pb.OpenSessionRequest, context: Ctx) -> pb.OpenSessionResponse:
        lease = await _call(context, self._service.open_session(request.ttl_seconds))
        return pb.OpenSessionResponse(lease_id=lease.lease_id, ttl_seconds=lease.ttl_seconds)

    async def CloseSession(self, request: pb.CloseSessionRequest, context: Ctx) -> pb.CloseSessionResponse:
        await _call(context, self._service.close_session(request.lease_id))
        return pb.CloseSessionResponse()

    async def KeepAlive(
        self, requests: AsyncIterator[pb.KeepAliveRequest], context: Ctx
    ) -> AsyncIterator[pb.KeepAliveResponse]:
        async for request in requests:
            ttl = await _call(context, self._service.keep_alive(request.lease_id))
            yield pb.KeepAliveResponse(lease_id=request.lease_id, ttl_seconds=ttl)

    async def Register(self, request: pb.RegisterRequest, context: Ctx) -> pb.RegisterResponse:
        return await _call(context, self._register(request))

    async def _register(self, request: pb.RegisterRequest) -> pb.RegisterResponse:
        """One registration as Register and RegisterStream carry it; domain errors propagate."""
        if not request.HasField("instance"):
            raise InvalidArgument("instance is required")
        inst = convert.instance_from_pb(request.instance)
        reg = await self._service.register(inst, request.lease_id, request.replace)
        return pb.RegisterResponse(
            lease_id=reg.lease_id,
            ttl_seconds=reg.ttl_seconds,
            revision=reg.revision,
            service_id=reg.service_id,
        )

    async def RegisterStream(self, requests: AsyncIterator[pb.RegisterStreamRequest], context: Ctx) -> None:
        """Registrations handled concurrently (at most `MAX_STREAM_IN_FLIGHT`); answers as they complete."""
        answers: asyncio.Queue[pb.RegisterStreamResponse | None] = asyncio.Queue()
        reader = asyncio.create_task(self._read_registrations(context, answers))
        try:
            while (answer := await answers.get()) is not None:
                await context.write(answer)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _read_registrations(
        self, context: Ctx, answers: asyncio.Queue[pb.RegisterStreamResponse | None]
    ) -> None:
        slots = asyncio.Semaphore(MAX_STREAM_IN_FLIGHT)
        running: set[asyncio.Task[None]] = set()
        try:
            while (msg := await context.read()) is not grpc.aio.EOF:
                await slots.acquire()
                task = asyncio.create_task(self._register_one(msg, answers, slots))
                running.add(task)
                task.add_done_callback(running.discard)
            await asyncio.gather(*running)
        finally:
            for task in running:
                task.cancel()
            answers.put_nowait(None)

    async def _register_one(
        self,
        msg: pb.RegisterStreamRequest,
        answers: asyncio.Queue[pb.RegisterStreamResponse | None],
        slots: asyncio.Semaphore,
    ) -> None:
        answer = pb.RegisterStreamResponse(request_id=msg.request_id)
        try:
            answer.registered.CopyFrom(await self._register(msg.register))
        except RegistryError as e:
            answer.error_code = _code_of(e).value[0]
            answer.error_message = str(e)
        finally:
            slots.release()
        answers.put_nowait(answer)

    async def Deregister(self, request: pb.DeregisterRequest, context: Ctx) -> pb.DeregisterResponse:
        revision = await _call(context, self._service.deregister(request.service, request.instance_id))
        return pb.DeregisterResponse(revision=revision)

    async def UpdateInstance(
        self, request: pb.UpdateInstanceRequest, context: Ctx
    ) -> pb.UpdateInstanceResponse:
        change = request.WhichOneof("change")
        if change == "weight":
            op = self._service.set_weight(request.service, request.instance_id, request.weight)
        elif change == "drain":
            op = self._service.drain(request.service, request.instance_id, request.drain)
        else:
            await _abort(context, InvalidArgument("one of weight or drain must be set"))
        inst, revision = await _call(context, op)
        return pb.UpdateInstanceResponse(instance=convert.instance_to_pb(inst), revision=revision)

    async def Resolve(self, request: pb.ResolveRequest, context: Ctx) -> pb.ResolveResponse:
        insts, revision, sid = await _call(
            context, self._service.resolve(request.service, request.min_revision)
        )
        answer = pb.ResolveResponse(
            instances=[convert.instance_to_pb(i) for i in insts], revision=revision, service_id=sid
        )
        if request.with_lease_time_left:
            left = await _call(context, self._service.lease_times_left(i.lease_id for i in insts))
            for msg in answer.instances:
                msg.lease_time_left_seconds = left.get(msg.lease_id, -1)
        return answer

    async def ListServices(self, request: pb.ListServicesRequest, context: Ctx) -> pb.ListServicesResponse:
        page, token, revision = await _call(
            context,
            self._service.list_services(
                request.suffix, request.limit, request.page_token, request.min_revision
            ),
        )
        return pb.ListServicesResponse(
            services=[
                pb.ServiceSummary(
                    name=s.name, service_id=s.service_id, instances=s.instances, serving=s.serving
                )
                for s in page
            ],
            next_page_token=token,
            revision=revision,
        )

    async def Watch(self, requests: AsyncIterator[pb.WatchRequest], context: Ctx) -> None:
        """First message `start`, then `applied` acks; responses are pre-encoded bytes."""
        try:
            first = await asyncio.wait_for(context.read(), FIRST_MESSAGE_TIMEOUT)
        except TimeoutError:
            await _abort(context, InvalidArgument(f"no `start` message within {FIRST_MESSAGE_TIMEOUT:.0f}s"))
        if first is grpc.aio.EOF or not isinstance(first, pb.WatchRequest) or not first.HasField("start"):
            await _abort(context, InvalidArgument("the first Watch message must be `start`"))
        start = first.start
        if start.from_revision < 0:
            await _abort(context, InvalidArgument(f"from_revision {start.from_revision} is negative"))
        try:
            suffix = normalize_suffix(start.suffix)
        except RegistryError as e:
            await _abort(context, e)
        if not self._follower.ready:
            await _abort(context, Unavailable("registry replica is still loading its view from etcd"))
        sub = self._hub.subscribe(start.subscriber_id[:128], context.peer(), start.from_revision, suffix)
        reader = asyncio.create_task(self._read_acks(context, sub))
        try:
            while True:
                await context.write(await sub.next_message())
                self._hub.written(sub)
        except SubscriptionClosed as e:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        finally:
            self._hub.unsubscribe(sub)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _read_acks(self, context: Ctx, sub: Subscription) -> None:
        while True:
            msg = await context.read()
            if msg is grpc.aio.EOF:
                return
            if isinstance(msg, pb.WatchRequest) and msg.HasField("applied"):
                applied = msg.applied
                delay = applied.apply_delay_us if applied.HasField("apply_delay_us") else None
                self._hub.record_applied(sub, applied.revision, delay)

    async def ClusterStatus(self, request: pb.ClusterStatusRequest, context: Ctx) -> pb.ClusterStatusResponse:
        return await _call(context, self._status(request.local_only))


# `StatusSource(local_only)`: see `ClusterStatusRequest.local_only`.
StatusSource = Callable[[bool], Awaitable[pb.ClusterStatusResponse]]
