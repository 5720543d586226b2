"""One registry replica: store + follower + hub + domain service behind a gRPC server.

`Replica.start()` connects nothing eagerly except the listening socket; the
follower lists etcd in the background and the replica reports NOT_SERVING on
the standard health service until its view is loaded, and again whenever its
etcd watch is down. Replicas are stateless: run as many as you like on one
etcd cluster; any of them serves every call.

Shutdown has two phases: `stop(grace)` stops accepting calls, lets running
ones finish within `grace`, then cancels the background tasks and closes the
store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from registry import __version__, presence
from registry.api import convert
from registry.api.fanout import Hub
from registry.api.servicer import RegistryServicer
from registry.api.v1 import registry_pb2 as pb
from registry.follower import Follower
from registry.raft.store import ReplicaRecord, Store
from registry.service import RegistryService
from registry.view import History, View

log = logging.getLogger(__name__)

SERVICE_NAME = "serval.registry.v1.Registry"


@dataclass
class ReplicaConfig:
    """Settings of one replica; see `serval registry --help` for their meaning."""

    etcd_endpoints: Sequence[str]
    listen: str = "127.0.0.1:7070"
    prefix: str = "/serval"
    replica_id: str = ""
    # host:port announced to the other replicas and to operators (default: the
    # listen address, with this host's name when listening on every interface).
    advertise: str = ""
    announce_ttl: int = presence.DEFAULT_TTL_SECONDS
    history_size: int = 100_000
    max_queued: int = 4096
    progress_interval: float = 5.0
    max_batch: int = 256
    etcd_timeout: float = 5.0
    # Must not exceed the etcd servers' --max-txn-ops (etcd's default is 128).
    etcd_max_txn_ops: int = 128


class Replica:
    """A running registry replica (see module docstring)."""

    def __init__(self, config: ReplicaConfig, store: Store | None = None) -> None:
        self.config = config
        if store is None:
            from registry.raft.etcd import EtcdStore

            store = EtcdStore(
                config.etcd_endpoints, prefix=config.prefix, request_timeout=config.etcd_timeout
            )
        self.store = store
        self.view = View()
        self.history = History(0, config.history_size)
        self.replica_id = config.replica_id
        self.hub = Hub(self.view, self.history, self.replica_id, max_queued=config.max_queued)
        self.follower = Follower(store, self.view, self.history, self.hub.publish)
        self.service = RegistryService(store, self.follower, max_batch=config.max_batch)
        self.health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.port = 0
        self.address = ""
        self.started_unix_ms = 0

    async def start(self) -> int:
        """Bind and start serving; return the bound port."""
        server = grpc.aio.server(
            options=[
                ("grpc.keepalive_time_ms", 20_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.max_receive_message_length", 4 * 1024 * 1024),
            ]
        )
        servicer = RegistryServicer(self.service, self.hub, self.follower, self.cluster_status)
        server.add_generic_rpc_handlers((registry_handlers(servicer),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        self.port = server.add_insecure_port(self.config.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {self.config.listen}")
        if not self.replica_id:
            self.replica_id = self.hub.replica_id = f"{socket.gethostname()}:{self.port}"
        self.address = self.config.advertise or advertised_address(self.config.listen, self.port)
        self.started_unix_ms = round(time.time() * 1000)
        record = ReplicaRecord(self.replica_id, self.address, __version__, self.started_unix_ms)
        await self._set_health(False)
        await server.start()
        self._server = server
        self._tasks = [
            asyncio.create_task(self.follower.run(), name="follower"),
            asyncio.create_task(self._progress_loop(), name="progress"),
            asyncio.create_task(self._health_loop(), name="health"),
            asyncio.create_task(
                presence.announce(self.store, record, self.config.announce_ttl), name="announce"
            ),
        ]
        log.info("registry replica %s serving on %s", self.replica_id, self.config.listen)
        return self.port

    async def wait_ready(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.follower.wait_ready(), timeout)

    async def stop(self, grace: float = 1.0) -> None:
        if self._server is not None:
            await self._server.stop(grace)
        self.hub.resync_all("registry replica is shutting down")
        await self.service.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.store.close()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()

    async def cluster_status(self, local_only: bool = False) -> pb.ClusterStatusResponse:
        """The etcd cluster and this replica; with `local_only`, this replica alone (no etcd call)."""
        if local_only:
            msg = pb.ClusterStatusResponse()
            msg.replicas.add(
                replica_id=self.replica_id,
                address=self.address,
                version=__version__,
                started_unix_ms=self.started_unix_ms,
            )
        else:
            msg = convert.cluster_status_to_pb(await self.store.cluster_status())
        msg.view_revision = self.view.revision
        msg.replica_id = self.replica_id
        msg.replica_version = __version__
        msg.services = self.view.service_count
        msg.instances = self.view.instance_count
        msg.history_start_revision = self.history.start_revision
        for p in self.hub.propagation:
            msg.propagation.add(
                subscriber_id=p.subscriber_id,
                revision=p.revision,
                seconds=p.seconds,
                at_unix_ms=round(p.at_unix * 1000),
            )
        for s in self.hub.stats():
            msg.subscribers.add(
                subscriber_id=s.subscriber_id,
                peer=s.peer,
                applied_revision=s.applied_revision,
                lag_revisions=s.lag_revisions,
                lag_seconds=s.lag_seconds,
                queued_messages=s.queued_messages,
            )
        return msg

    async def _announce(self, record: ReplicaRecord) -> None:
        """Announce this replica once its view is loaded (it can serve), until stopped."""
        await self.follower.wait_ready()
        await presence.announce(self.store, record, self.config.announce_ttl)

    async def _progress_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.progress_interval)
            self.hub.progress()

    async def _health_loop(self) -> None:
        serving: bool | None = None
        while True:
            now = self.follower.ready and self.follower.healthy
            if now != serving:
                await self._set_health(now)
                serving = now
            await asyncio.sleep(0.2)

    async def _set_health(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set("", status)
        await self.health.set(SERVICE_NAME, status)


def advertised_address(listen: str, port: int) -> str:
    """`listen` with the bound `port`; a wildcard host becomes this host's name."""
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _serialize(message: Any) -> bytes:
    """Responses may be pre-encoded (watch fan-out encodes once for all subscribers)."""
    return message if isinstance(message, bytes) else bytes(message.SerializeToString())


def registry_handlers(servicer: RegistryServicer) -> grpc.GenericRpcHandler:
    """Method handlers for every RPC in the service descriptor, bound to `servicer`."""
    service = pb.DESCRIPTOR.services_by_name["Registry"]
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        request_cls = message_factory.GetMessageClass(method.input_type)
        kind = _HANDLER_KINDS[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = kind(
            getattr(servicer, method.name),
            request_deserializer=request_cls.FromString,
            response_serializer=_serialize,
        )
    return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)


_HANDLER_KINDS: dict[tuple[bool, bool], Callable[..., grpc.RpcMethodHandler]] = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}
