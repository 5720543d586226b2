"""The gRPC baselines: a stand-in registry that only answers and fans out, over the same API.

    python -m bench.echo_server --listen 127.0.0.1:PORT

It serves just enough of `serval.registry.v1.Registry` for the benchmark's
unchanged client code (`OpenSession`, `CloseSession`, `Register`,
`RegisterStream`, `Watch`) plus the standard health service, and nothing
else: no etcd, no validation, no view, no history. `Register` (and each
registration on a `RegisterStream`) encodes one DELTAS message with the
instance as given, offers the same bytes to every watch stream's queue and
answers at once; each watch handler writes what its queue holds, one message
per write, and reads the subscriber's acks. Per registration that is the
least any Python (grpc.aio) registry must do, so its throughput with the same
clients on the same machine bounds the registry's. Its fan-out is the naive
one (a write per message; the registry merges a backlog into fewer writes),
so for propagation it is a reference point rather than a floor.

Unbounded queues (the baseline never disconnects a slow subscriber);
revisions are a counter from 1.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
from collections.abc import AsyncIterator, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from registry.api.v1 import registry_pb2 as pb

SERVICE = "serval.registry.v1.Registry"
REPLICA_ID = "echo"


class EchoRegistry:
    """The four methods; every watch stream gets every registration (see module docstring)."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[bytes]] = set()
        self._revision = itertools.count(1)
        self._lease = itertools.count(1)

    async def open_session(self, request: pb.OpenSessionRequest, context: object) -> pb.OpenSessionResponse:
        return pb.OpenSessionResponse(lease_id=next(self._lease), ttl_seconds=request.ttl_seconds)

    async def close_session(
        self, request: pb.CloseSessionRequest, context: object
    ) -> pb.CloseSessionResponse:
        return pb.CloseSessionResponse()

    async def register(self, request: pb.RegisterRequest, context: object) -> pb.RegisterResponse:
        revision = next(self._revision)
        delta = pb.InstanceDelta(kind=pb.InstanceDelta.PUT, instance=request.instance, revision=revision)
        message = pb.WatchResponse(
            kind=pb.WatchResponse.DELTAS, deltas=[delta], revision=revision, replica_id=REPLICA_ID
        ).SerializeToString()
        for queue in self._queues:
            queue.put_nowait(message)
        return pb.RegisterResponse(lease_id=request.lease_id, revision=revision)

    async def register_stream(
        self, requests: AsyncIterator[pb.RegisterStreamRequest], context: object
    ) -> AsyncIterator[pb.RegisterStreamResponse]:
        """Each registration answered in order, as `register` answers it."""
        async for request in requests:
            answer = pb.RegisterStreamResponse(request_id=request.request_id)
            answer.registered.CopyFrom(await self.register(request.register, context))
            yield answer

    async def watch(
        self, requests: AsyncIterator[pb.WatchRequest], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> None:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._queues.add(queue)
        acks = asyncio.create_task(self._drain(requests))
        try:
            end = pb.WatchResponse(
                kind=pb.WatchResponse.SNAPSHOT_END, replica_id=REPLICA_ID, snapshot_start=True
            )
            await context.write(end.SerializeToString())
            while True:
                await context.write(await queue.get())
        finally:
            self._queues.discard(queue)
            acks.cancel()

    @staticmethod
    async def _drain(requests: AsyncIterator[pb.WatchRequest]) -> None:
        async for _ in requests:
            pass

    def handler(self) -> grpc.GenericRpcHandler:
        def unary(fn: object, parse: Callable[[bytes], object]) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                fn, request_deserializer=parse, response_serializer=_serialize
            )

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "OpenSession": unary(self.open_session, pb.OpenSessionRequest.FromString),
                "CloseSession": unary(self.close_session, pb.CloseSessionRequest.FromString),
                "Register": unary(self.register, pb.RegisterRequest.FromString),
                "RegisterStream": grpc.stream_stream_rpc_method_handler(
                    self.register_stream,
                    request_deserializer=pb.RegisterStreamRequest.FromString,
                    response_serializer=_serialize,
                ),
                "Watch": grpc.stream_stream_rpc_method_handler(
                    self.watch, request_deserializer=pb.WatchRequest.FromString, response_serializer=_raw
                ),
            },
        )


def _serialize(
    message: pb.OpenSessionResponse
    | pb.CloseSessionResponse
    | pb.RegisterResponse
    | pb.RegisterStreamResponse,
) -> bytes:
    return message.SerializeToString()


def _raw(data: bytes) -> bytes:
    return data


async def serve(listen: str) -> None:
    """Serve until SIGTERM or SIGINT."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((EchoRegistry().handler(),))
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    if not server.add_insecure_port(listen):
        raise SystemExit(f"cannot listen on {listen}")
    await server.start()
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="host:port")
    asyncio.run(serve(parser.parse_args().listen))


if __name__ == "__main__":
    main()
