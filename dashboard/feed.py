"""The dashboard's I/O shell towards the registry: one watch into the `Model`,
a periodic `ClusterStatus` poll, and the fan-out of change notices to SSE clients.

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
                self.status = await self.client.cluster_status()
                self.status_at = self.clock()
                self.status_error = ""
            except RpcError as e:
                self.status_error = f"{e.code.name}: {e.details}"
            await asyncio.sleep(self.status_interval)
