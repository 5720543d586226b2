"""Follows the registry's watch stream into a mirror and asks for reconciliation.

The mirror is the agent's compact `AgentMirror` (`mirror.py`; a
`registry.api.client.Mirror` by default).

The `RegistryClient` watch already fails over between replicas and resumes
from the last applied revision; `RegistryLink.run()` only applies each
message to the mirror and, once the mirror is consistent (never in the
middle of a snapshot series), calls `on_change()`; a PROGRESS message (no
change, the view reached a newer revision) calls `on_progress(revision)`.
The agent calls `confirm(revision)` once the data-path table computed from
that revision is in force (`Reconciler.on_applied`); the client's `Watch`
reports those confirmations to the registry with the time from receiving
the change to its taking effect, so the registry's lag and propagation
figures mean "in force in this agent's data path".

Failure modes: retryable errors are the client's business (it reconnects
with back-off; `reconnects` counts them); anything else ends `run()` with
the error, which stops the agent (an agent that cannot follow the registry
must not keep serving a stale table silently).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from registry.api.client import Mirror, RegistryClient, Watch
from registry.api.v1 import registry_pb2 as pb


class WatchMirror(Protocol):
    """What the link feeds: `registry.api.client.Mirror` or the agent's `AgentMirror`."""

    revision: int

    def apply(self, msg: pb.WatchResponse) -> None: ...


class RegistryLink:
    """The mirror of the whole registry as this agent sees it."""

    def __init__(
        self,
        client: RegistryClient,
        subscriber_id: str,
        on_change: Callable[[], None],
        on_progress: Callable[[int], None] = lambda revision: None,
        mirror: WatchMirror | None = None,
    ) -> None:
        self.client = client
        self.subscriber_id = subscriber_id
        self.on_change = on_change
        self.on_progress = on_progress
        self.mirror: WatchMirror = mirror if mirror is not None else Mirror()
        self.messages = 0
        self.synced = False
        self._watch: Watch | None = None

    @property
    def mirror_revision(self) -> int:
        """Revision of the last message applied to the mirror."""
        return self.mirror.revision

    @property
    def reconnects(self) -> int:
        return self._watch.reconnects if self._watch else 0

    def confirm(self, revision: int) -> None:
        """The table computed from the mirror at `revision` is in force (reported to the registry)."""
        if self._watch is not None:
            self._watch.confirm(revision)

    async def run(self) -> None:
        self._watch = self.client.watch(
            from_revision=0, subscriber_id=self.subscriber_id, explicit_confirm=True
        )
        async for msg in self._watch:
            self.mirror.apply(msg)
            self.messages += 1
            if msg.kind == pb.WatchResponse.SNAPSHOT:
                continue  # more of the snapshot follows: the mirror is not consistent yet
            self.synced = True
            if msg.kind == pb.WatchResponse.PROGRESS:
                self.on_progress(self.mirror.revision)
            else:
                self.on_change()
