"""In-memory discovery back-end honouring `resolver.model.Backend` (tests only).

`set(*endpoints, error=...)` replaces its snapshot (revision + 1) and calls the
listeners synchronously, like a real back-end does on the event loop; `run()`
only waits to be cancelled.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from resolver.model import Endpoint, Listener, Snapshot


def snapshot_of(source: str, *endpoints: Endpoint, revision: int = 1, error: str = "") -> Snapshot:
    """A snapshot holding `endpoints` as a back-end would (the `Backend` contract): grouped
    by service, each with `source` set and sorted by (tier, instance id)."""
    services: dict[str, tuple[Endpoint, ...]] = {}
    for e in endpoints:
        services[e.service] = (*services.get(e.service, ()), replace(e, source=source))
    ordered = {s: tuple(sorted(es, key=lambda e: (e.tier, e.instance_id))) for s, es in services.items()}
    return Snapshot(source, revision, ordered, error)


class FakeBackend:
    def __init__(self, name: str) -> None:
        self.name = name
        self._snap = Snapshot(name, 0, {})
        self._listeners: list[Listener] = []

    def snapshot(self) -> Snapshot:
        return self._snap

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def set(self, *endpoints: Endpoint, error: str = "") -> None:
        self._snap = snapshot_of(self.name, *endpoints, revision=self._snap.revision + 1, error=error)
        for listener in self._listeners:
            listener()

    async def run(self) -> None:
        await asyncio.Event().wait()
