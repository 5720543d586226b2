"""Keeps a replica's view in step with etcd: list, then watch from revision + 1.

`Follower.run` is the replica's one etcd watch. It owns the `View` and the
`History` and hands every applied batch to a publish callback (the hub).

Order of effects per store batch: apply to the view → append the deltas to
the history → publish them. A reader that sees `view.revision == r` can
therefore resume any subscriber from r.

Failure handling:
- the store reconnects its watch across etcd members by itself;
- `Compacted` (the watch fell behind etcd's history): list again and publish
  the difference, stamped with the new list's revision, so subscribers stay
  consistent without re-snapshotting;
- `Unavailable`: retry with capped exponential backoff; the view keeps
  serving its last state, and `healthy` turns false until the watch is back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from registry.errors import Unavailable
from registry.raft.store import Compacted, Store
from registry.view import Delta, History, View

log = logging.getLogger(__name__)

Publish = Callable[[Sequence[Delta], int], None]


class Follower:
    """Feeds `view` and `history` from `store`; see module docstring."""

    def __init__(
        self,
        store: Store,
        view: View,
        history: History,
        publish: Publish,
        *,
        max_backoff: float = 2.0,
    ) -> None:
        self._store = store
        self.view = view
        self.history = history
        self._publish = publish
        self._max_backoff = max_backoff
        self._ready = asyncio.Event()
        self._advanced = asyncio.Condition()  # notified whenever the view's revision moves
        self.healthy = False
        self.relists = 0

    @property
    def ready(self) -> bool:
        """True once the first list has been applied."""
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    async def wait_for_revision(self, revision: int, timeout: float) -> bool:
        """Wait until the view has reached `revision`; False on timeout."""
        async with self._advanced:
            try:
                await asyncio.wait_for(
                    self._advanced.wait_for(lambda: self.view.revision >= revision), timeout
                )
            except TimeoutError:
                return False
        return True

    async def run(self) -> None:
        """Follow the store until cancelled."""
        backoff = 0.05
        need_list = True
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                self.healthy = True
                await self._follow()
                await asyncio.sleep(backoff)  # the store ended the watch: start it again
            except Compacted as e:
                log.warning("registry watch fell behind etcd compaction (%s); listing again", e)
                need_list = True
            except Unavailable as e:
                self.healthy = False
                log.warning("etcd unavailable, retrying in %.2fs: %s", backoff, e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._max_backoff)
                continue
            backoff = 0.05

    async def _relist(self) -> None:
        snapshot = await self._store.snapshot()
        deltas = self.view.reset(snapshot)
        if self._ready.is_set():
            self.relists += 1
            self.history.append(deltas)
            self._publish(deltas, self.view.revision)
        else:
            self.history.start_revision = self.view.revision
            self._ready.set()
        await self._notify_advanced()

    async def _follow(self) -> None:
        async for batch in self._store.watch(self.view.revision + 1):
            deltas = self.view.apply(batch)
            if deltas:
                self.history.append(deltas)
                self._publish(deltas, self.view.revision)
            await self._notify_advanced()

    async def _notify_advanced(self) -> None:
        async with self._advanced:
            self._advanced.notify_all()
