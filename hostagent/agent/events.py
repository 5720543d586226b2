"""Data-path events (the contract's table in `docs/agent-datapath.md`) and the pump.

The events are plain frozen dataclasses. The Rust binding hands plain tuples
across; its typed wrapper converts them into these classes (the fake in
`tests/fakes/datapath.py` produces them directly).

`EventPump` pulls events in a worker thread (`poll_events` blocks with the GIL
released) in bounded batches and dispatches each one on the event loop, in
order, to an `EventHandler`. It is stopped gracefully (`stop()` then await the
task), never by cancelling a poll in flight: a batch already pulled may hold
`Accepted` fds that only the handler can own.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

Endpoint = tuple[str, int]


@dataclass(frozen=True)
class Connected:
    """`connect(request_id, ...)` succeeded: the app fd now carries the flow's bytes."""

    request_id: int
    flow_id: int
    target: Endpoint


@dataclass(frozen=True)
class ConnectFailed:
    """No target was reachable before the deadline; `tried` holds ``"ip:port -> why"`` lines."""

    request_id: int
    reason: str
    tried: tuple[str, ...] = ()


@dataclass(frozen=True)
class Accepted:
    """A remote flow for a local listener. The receiver of this event owns `app_fd`."""

    listener_id: int
    flow_id: int
    app_fd: int
    peer: Endpoint


@dataclass(frozen=True)
class Delayed:
    """A DELAY rule held a connect; answer with `settle_delay(request_id, release)`."""

    request_id: int
    service_id: bytes


@dataclass(frozen=True)
class Migrated:
    """A flow moved to a new path (RSYN completed)."""

    flow_id: int
    local: Endpoint
    remote: Endpoint


@dataclass(frozen=True)
class TargetFailed:
    """A target refused or was unreachable during a set-up."""

    target: Endpoint
    reason: str


@dataclass(frozen=True)
class FlowClosed:
    """A flow ended: ``fin``, ``reset: <reason>`` or ``timeout``."""

    flow_id: int
    reason: str


@dataclass(frozen=True)
class Overflow:
    """The event queue overflowed and `dropped` events were lost: resync everything."""

    dropped: int


Event = Connected | ConnectFailed | Accepted | Delayed | Migrated | TargetFailed | FlowClosed | Overflow


class EventSource(Protocol):
    """The part of the data path the pump needs (see `DatapathPort.poll_events`)."""

    def poll_events(self, max_events: int, timeout_ms: int) -> list[Event]: ...


class EventHandler(Protocol):
    """Where the pump delivers events; every method runs on the event loop and must not block."""

    def on_connect_result(self, event: Connected | ConnectFailed) -> None: ...

    def on_accepted(self, event: Accepted) -> None: ...

    def on_delayed(self, event: Delayed) -> None: ...

    def on_overflow(self, event: Overflow) -> None: ...


class EventPump:
    """Pulls events (at most `batch` per poll, waiting up to `poll_ms`) and dispatches them.

    `counts` counts every event by class name (for logs and tests); Migrated,
    TargetFailed and FlowClosed are only counted and logged at debug level.
    """

    def __init__(self, source: EventSource, handler: EventHandler, *, batch: int = 256, poll_ms: int = 100):
        self.source = source
        self.handler = handler
        self.batch = batch
        self.poll_ms = poll_ms
        self.counts: Counter[str] = Counter()
        self._stopping = False

    def stop(self) -> None:
        """Ask `run` to return after the poll in flight (at most `poll_ms`)."""
        self._stopping = True

    async def run(self) -> None:
        while not self._stopping:
            events = await asyncio.to_thread(self.source.poll_events, self.batch, self.poll_ms)
            for event in events:
                self.dispatch(event)

    def dispatch(self, event: Event) -> None:
        """Route one event; a handler's exception is logged, never ends the pump."""
        self.counts[type(event).__name__] += 1
        try:
            match event:
                case Connected() | ConnectFailed():
                    self.handler.on_connect_result(event)
                case Accepted():
                    self.handler.on_accepted(event)
                case Delayed():
                    self.handler.on_delayed(event)
                case Overflow():
                    log.warning("data-path event queue overflowed (%d dropped): resyncing", event.dropped)
                    self.handler.on_overflow(event)
                case _:
                    log.debug("data-path event %s", event)
        except Exception:
            log.exception("handling data-path event %s failed", event)
