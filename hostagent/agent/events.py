"""Data-path events (the contract's table in `docs/agent-datapath.md`) and the pump.

The events are the plain frozen dataclasses of the data path's typed wrapper
(`hostagent.sal_core.datapath`), re-exported here: one definition for the real
data path and the fake in `tests/fakes/datapath.py`.

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
from typing import Protocol

from hostagent.sal_core.datapath import (
    Accepted,
    Addr,
    Connected,
    ConnectFailed,
    Delayed,
    Event,
    FlowClosed,
    Migrated,
    Overflow,
    TargetFailed,
)

log = logging.getLogger(__name__)

Endpoint = Addr

__all__ = [
    "Accepted", "ConnectFailed", "Connected", "Delayed", "Endpoint", "Event", "EventHandler",
    "EventPump", "EventSource", "FlowClosed", "Migrated", "Overflow", "TargetFailed",
]  # fmt: skip


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
