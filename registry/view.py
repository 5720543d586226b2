"""A replica's in-memory, revision-stamped view of every instance, and its change log.

Pure: no I/O, no clock, no asyncio. The follower (`registry.follower`) feeds it
store batches; the hub (`registry.fanout`) streams the deltas it returns.

Contract:
- `View.revision` is the etcd revision the view reflects; it only grows.
- `View.apply(batch)` applies a store batch and returns the per-instance
  `Delta`s it caused, each stamped with the event's revision. Events at or
  below the view's revision are ignored (replays after a reconnect).
- `View.reset(snapshot)` replaces the whole content and returns the deltas that
  turn the old content into the new, all stamped with the snapshot's revision,
  so subscribers stay consistent without a fresh snapshot of their own.
- `History` keeps the most recent deltas (bounded). `since(r)` returns every
  delta with revision > r, or None when some of them were already dropped
  (or never seen): the subscriber then needs a snapshot.
"""

from __future__ import annotations

import bisect
import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from registry import names
from registry.errors import InvalidArgument
from registry.model import Instance, resolution_order
from registry.raft.store import InstancePut, Snapshot, WatchBatch


@dataclass(frozen=True, slots=True)
class Delta:
    """One instance changed at `revision`: `instance` is the new record, or None if deleted."""

    service: str
    instance_id: str
    revision: int
    instance: Instance | None


class View:
    """Every instance by service, at `revision`. Not thread-safe; one owner task mutates it."""

    def __init__(self) -> None:
        self.revision = 0
        self._services: dict[str, dict[str, Instance]] = {}
        self._count = 0

    @property
    def instance_count(self) -> int:
        return self._count

    @property
    def service_count(self) -> int:
        return len(self._services)

    def apply(self, batch: WatchBatch) -> list[Delta]:
        """Apply `batch`; return the deltas it caused (ignoring already-seen revisions)."""
        deltas: list[Delta] = []
        for event in batch.events:
            if event.revision <= self.revision:
                continue
            if isinstance(event, InstancePut):
                self._put(event.instance)
                inst = event.instance
                deltas.append(Delta(inst.service, inst.instance_id, event.revision, inst))
            elif self._remove(event.service, event.instance_id):
                deltas.append(Delta(event.service, event.instance_id, event.revision, None))
        self.revision = max(self.revision, batch.revision)
        return deltas

    def reset(self, snapshot: Snapshot) -> list[Delta]:
        """Replace the content with `snapshot`; return the difference as deltas."""
        rev = snapshot.revision
        old = {i.key: i for i in self.instances()}
        self._services.clear()
        self._count = 0
        deltas: list[Delta] = []
        for inst in snapshot.instances:
            self._put(inst)
            if old.pop(inst.key, None) != inst:
                deltas.append(Delta(inst.service, inst.instance_id, rev, inst))
        deltas.extend(Delta(svc, iid, rev, None) for svc, iid in sorted(old))
        self.revision = max(self.revision, rev)
        return deltas

    def resolve(self, service: str) -> list[Instance]:
        """Instances of `service` (already normalised), best tier first."""
        return resolution_order(list(self._services.get(service, {}).values()))

    def instances(self) -> Iterator[Instance]:
        """Every instance, in no particular order."""
        for by_id in self._services.values():
            yield from by_id.values()

    def service_names(self) -> list[str]:
        """Sorted names of services with at least one instance."""
        return sorted(self._services)

    def service_instances(self, service: str) -> list[Instance]:
        return list(self._services.get(service, {}).values())

    def _put(self, inst: Instance) -> None:
        by_id = self._services.setdefault(inst.service, {})
        if inst.instance_id not in by_id:
            self._count += 1
        by_id[inst.instance_id] = inst

    def _remove(self, service: str, instance_id: str) -> bool:
        by_id = self._services.get(service)
        if by_id is None or by_id.pop(instance_id, None) is None:
            return False
        self._count -= 1
        if not by_id:
            del self._services[service]
        return True


class History:
    """The most recent deltas, at most `max_deltas` of them, in revision order.

    `start_revision` is the oldest revision a subscriber may resume from: every
    delta after it is still held.
    """

    def __init__(self, start_revision: int, max_deltas: int = 100_000) -> None:
        if max_deltas < 1:
            raise ValueError("max_deltas must be positive")
        self.start_revision = start_revision
        self._max = max_deltas
        self._deltas: deque[Delta] = deque()

    def __len__(self) -> int:
        return len(self._deltas)

    def append(self, deltas: Iterable[Delta]) -> None:
        """Record deltas (revisions must not decrease); drop the oldest whole revisions past the bound."""
        self._deltas.extend(deltas)
        while len(self._deltas) > self._max:
            dropped = self._deltas.popleft().revision
            while self._deltas and self._deltas[0].revision == dropped:
                self._deltas.popleft()
            self.start_revision = max(self.start_revision, dropped)

    def since(self, revision: int) -> list[Delta] | None:
        """Deltas with revision > `revision`, or None if they are no longer all held."""
        if revision < self.start_revision:
            return None
        revisions = _RevisionKeys(self._deltas)
        first = bisect.bisect_right(revisions, revision)
        return list(itertools.islice(self._deltas, first, None))


class _RevisionKeys:
    """A read-only sequence view of the deltas' revisions, for `bisect`."""

    def __init__(self, deltas: deque[Delta]) -> None:
        self._deltas = deltas

    def __len__(self) -> int:
        return len(self._deltas)

    def __getitem__(self, i: int) -> int:
        return self._deltas[i].revision


def matches_suffix(service: str, suffix: str) -> bool:
    """True when `service` equals `suffix` or lies under it (label boundary); '' matches all."""
    return not suffix or service == suffix or service.endswith("." + suffix)


def normalize_suffix(suffix: str) -> str:
    """Normalise a watch/list suffix filter ('' stays ''); raise `InvalidArgument`."""
    try:
        return names.normalize(suffix) if suffix else ""
    except names.InvalidName as e:
        raise InvalidArgument(f"suffix: {e}") from None
