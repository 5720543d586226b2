"""The grpcio `Transport` (`rpc.py`): the default of `RegistryClient` (CLI, bench, tests).

One `grpc.aio` channel per transport, with its own subchannel pool: a new
transport after `RegistryClient.reconnect` opens a new connection instead of
reusing the (possibly dead) one of the process-wide pool. No keepalive pings
(grpcio's client default): a dead connection is noticed by a call's deadline
or a TCP error, or replaced by `reconnect`.

grpc.aio quirk handled here: a call whose channel is closed under it raises
`asyncio.CancelledError` in the calling task, which is translated to
`ChannelClosed` when that task is not itself being cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
from google.protobuf.message import Message

from registry.api.rpc import ChannelClosed, R, RpcError, StatusCode, method_path
from registry.api.v1 import registry_pb2_grpc as pb_grpc


def dial(target: str) -> GrpcioTransport:
    """A `rpc.Dial`: the grpcio transport to `target`."""
    return GrpcioTransport(target)


class GrpcioTransport:
    """`rpc.Transport` over one `grpc.aio` channel (created at once; it connects on first use)."""

    def __init__(self, target: str) -> None:
        self.channel = grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        self._stub: pb_grpc.RegistryStub | None = None

    @property
    def stub(self) -> pb_grpc.RegistryStub:
        """The generated stub on this channel: raw calls for tests and benchmarks (grpc errors)."""
        if self._stub is None:
            self._stub = pb_grpc.RegistryStub(self.channel)  # type: ignore[no-untyped-call]
        return self._stub

    async def unary(self, method: str, request: Message, response_type: type[R], timeout: float) -> R:
        call = self.channel.unary_unary(
            method_path(method), request_serializer=_serialize, response_deserializer=response_type.FromString
        )
        try:
            return cast(R, await call(request, timeout=timeout))
        except grpc.aio.AioRpcError as e:
            raise rpc_error(e) from None
        except asyncio.CancelledError:
            raise_if_closed_under_us()
            raise

    def stream(
        self,
        method: str,
        requests: AsyncIterator[Message],
        response_type: type[R],
        timeout: float | None = None,
    ) -> GrpcioCall[R]:
        call = self.channel.stream_stream(
            method_path(method), request_serializer=_serialize, response_deserializer=response_type.FromString
        )
        return GrpcioCall(call(requests, timeout=timeout))

    async def close(self) -> None:
        await self.channel.close()


class GrpcioCall(AsyncIterator[R]):
    """`rpc.Call` over a `grpc.aio` stream-stream call, with errors translated."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._responses: AsyncIterator[R] = call.__aiter__()

    def __aiter__(self) -> GrpcioCall[R]:
        return self

    async def __anext__(self) -> R:
        try:
            return await self._responses.__anext__()
        except grpc.aio.AioRpcError as e:
            raise rpc_error(e) from None
        except asyncio.CancelledError:
            raise_if_closed_under_us()
            raise

    def cancel(self) -> None:
        self._call.cancel()


def rpc_error(e: grpc.aio.AioRpcError) -> RpcError:
    """The transport-neutral error for a grpcio one (same code and details)."""
    return RpcError(StatusCode.of(e.code().value[0]), e.details() or "")


def raise_if_closed_under_us() -> None:
    """Inside ``except asyncio.CancelledError``: raise `ChannelClosed` if the error came from a
    call cancelled because its channel was closed (by another task sharing the client), not
    from cancelling this task. grpc.aio raises `CancelledError` (not an `AioRpcError`) there."""
    task = asyncio.current_task()
    if task is not None and task.cancelling() == 0:
        raise ChannelClosed() from None


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()
