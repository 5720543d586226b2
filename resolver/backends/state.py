"""What every back-end holds: its current `Snapshot` and its listeners.

`Published.publish` replaces the snapshot (new revision) only when the services or
the error changed, then calls the listeners synchronously, in subscription order, on
the caller's thread (the event loop). A listener that raises is logged and does not
stop the others. Pure apart from the listeners it calls.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from resolver.model import Endpoint, Listener, Snapshot

log = logging.getLogger(__name__)


class Published:
    """The snapshot a back-end exposes; starts empty at revision 0."""

    def __init__(self, source: str) -> None:
        self._snapshot = Snapshot(source=source, revision=0, services={})
        self._listeners: list[Listener] = []

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def publish(
        self, services: Mapping[str, tuple[Endpoint, ...]], error: str = "", revision: int | None = None
    ) -> bool:
        """Make `services` (with `error`) the snapshot; True (and listeners called) if it changed.
        `revision` is the source's own revision when it has one (the registry's; it must grow),
        else the snapshot's revision is bumped by one."""
        old = self._snapshot
        if old.error == error and old.services == services:
            return False
        new_revision = max(old.revision + 1, revision or 0)
        self._snapshot = Snapshot(old.source, new_revision, dict(services), error)
        self._notify()
        return True

    def set_error(self, error: str) -> bool:
        """Keep the services, report `error` ("" clears it); True if that changed the snapshot."""
        return self.publish(self._snapshot.services, error)

    def _notify(self) -> None:
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                log.exception("resolver listener failed")


class PublishingBackend:
    """Base of the back-ends: `snapshot()` and `subscribe()` (the `Backend` protocol's
    read side) come from the `Published` state a subclass keeps in `_state`."""

    _state: Published

    def snapshot(self) -> Snapshot:
        return self._state.snapshot()

    def subscribe(self, listener: Listener) -> None:
        self._state.subscribe(listener)


def group(endpoints: list[Endpoint]) -> dict[str, tuple[Endpoint, ...]]:
    """Endpoints by service, each service's sorted by (tier, instance id) (the `Backend` contract)."""
    out: dict[str, list[Endpoint]] = {}
    for e in endpoints:
        out.setdefault(e.service, []).append(e)
    return {s: tuple(sorted(es, key=lambda e: (e.tier, e.instance_id))) for s, es in sorted(out.items())}
