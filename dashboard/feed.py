"""The dashboard's I/O shell towards the registry: one watch into the `Model`,
a periodic `ClusterStatus` poll, and the fan-out of change notices to SSE clients.

The poll asks the replica the dashboard is connected to for the whole
status, then every other replica that status lists (`ClusterStatus.replicas`,
at its advertised address), concurrently and `local_only` (no etcd calls: the
cluster's state came with the first answer): each replica knows only its own
subscribers and propagation samples. `replicas` holds the latest answer or error of each;
every answer's samples go into the model (`Model.add_propagation`).

Order per watch message: apply to the model (with the wall time it arrived),
then notify every SSE subscriber. A subscriber is a bounded queue; one that
falls behind loses notices (a counter says how many) and its page refetches.
The watch resumes across replicas by itself (`registry.api.client.Watch`);
while it is down, `stale_for()` grows and the pages show a stale banner.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dashboard.model import Event, Model
from registry.api.client import RegistryClient
from registry.api.rpc import RpcError
from registry.api.v1 import registry_pb2 as pb

log = logging.getLogger("serval.dashboard.feed")


@dataclass
class ReplicaState:
    """The latest poll of one registry replica: its status, or why there is none."""

    info: pb.ReplicaInfo
    status: pb.ClusterStatusResponse | None = None
    error: str = ""
    at: float = 0.0


@dataclass(eq=False)
class Subscriber:
    """One SSE client's bounded queue of change batches (hashable by identity)."""

    queue: asyncio.Queue[list[Event]] = field(default_factory=lambda: asyncio.Queue(maxsize=256))
    dropped: int = 0


class Feed:
    """Owns the model's writer task and the status poller. `start()` / `stop()`."""

    def __init__(
        self,
        client: RegistryClient,
        model: Model,
        subscriber_id: str = "dashboard",
        status_interval: float = 2.0,
        stale_after: float = 15.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.model = model
        self.subscriber_id = subscriber_id
        self.status_interval = status_interval
        self.stale_after = stale_after
        self.clock = clock
        self.status: pb.ClusterStatusResponse | None = None
        self.status_at = 0.0
        self.status_error = ""
        self.replicas: dict[str, ReplicaState] = {}
        self._peers: dict[str, RegistryClient] = {}  # other replicas' clients, by address
        self.subscribers: set[Subscriber] = set()
        self.ready = asyncio.Event()  # set after the first complete snapshot
        self.connected = False
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._watch(), name="dashboard-watch"),
            asyncio.create_task(self._poll_status(), name="dashboard-status"),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []
        for peer in self._peers.values():
            await peer.close()
        self._peers = {}

    def subscriber_statuses(self) -> dict[str, tuple[str, pb.SubscriberStatus]]:
        """Every replica's subscribers by subscriber ID, with the replica serving each."""
        out: dict[str, tuple[str, pb.SubscriberStatus]] = {}
        for replica_id, r in self.replicas.items():
            for sub in r.status.subscribers if r.status is not None else ():
                out.setdefault(sub.subscriber_id, (replica_id, sub))
        return out

    def stale_for(self) -> float:
        """Age of the data when it is stale, else 0.

        The registry sends a PROGRESS message at least every few seconds when idle,
        so no message for `stale_after` seconds means the watch is down (the
        client keeps resuming it); never having had one is stale forever.
        """
        if not self.model.last_message_at:
            return float("inf")
        age = self.clock() - self.model.last_message_at
        return age if age > self.stale_after else 0.0

    def subscribe(self) -> Subscriber:
        sub = Subscriber()
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def _publish(self, events: list[Event]) -> None:
        for sub in self.subscribers:
            try:
                sub.queue.put_nowait(events)
            except asyncio.QueueFull:
                sub.dropped += 1

    async def _watch(self) -> None:
        while True:
            watch = self.client.watch(subscriber_id=self.subscriber_id)
            try:
                async for msg in watch:
                    self.connected = True
                    events = self.model.apply(msg, self.clock())
                    if msg.kind == pb.WatchResponse.SNAPSHOT_END:
                        self.ready.set()
                    if events:
                        self._publish(events)
            except RpcError as e:
                log.warning("dashboard watch failed (%s: %s); retrying", e.code.name, e.details)
            self.connected = False
            await asyncio.sleep(1.0)

    async def _poll_status(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception:  # a bug here must not end the poller: log it, poll again
                log.exception("cluster status poll failed")
            await asyncio.sleep(self.status_interval)

    async def poll_once(self) -> None:
        """One status poll of the connected replica, then of every other listed replica."""
        try:
            status = await self.client.cluster_status()
        except RpcError as e:
            self.status_error = f"{e.code.name}: {e.details}"
            return
        self.status, self.status_at, self.status_error = status, self.clock(), ""
        others = [r for r in status.replicas if r.replica_id != status.replica_id]
        polled = await asyncio.gather(*(self._poll_peer(r) for r in others))
        own = ReplicaState(_own_info(status), status, "", self.status_at)
        self.replicas = {r.info.replica_id: r for r in [own, *polled]}
        for r in self.replicas.values():
            if r.status is not None:
                self.model.add_propagation(r.info.replica_id, r.status.propagation)
        for address in set(self._peers) - {r.address for r in others}:
            await self._peers.pop(address).close()

    async def _poll_peer(self, info: pb.ReplicaInfo) -> ReplicaState:
        peer = self._peers.get(info.address)
        if peer is None:
            peer = self._peers[info.address] = RegistryClient([info.address], timeout=self.status_interval)
        try:
            return ReplicaState(info, await peer.cluster_status(local_only=True), "", self.clock())
        except RpcError as e:
            return ReplicaState(info, None, f"{e.code.name}: {e.details}", self.clock())


def _own_info(status: pb.ClusterStatusResponse) -> pb.ReplicaInfo:
    """The connected replica's announcement (or what its status says, if it is not listed yet)."""
    for info in status.replicas:
        if info.replica_id == status.replica_id:
            return info
    return pb.ReplicaInfo(replica_id=status.replica_id, version=status.replica_version)
