"""The merge: several back-ends' snapshots → one `View`, and the `Resolver` that keeps it.

`merge(snapshots, precedence, ...)` is pure. Its contract:
- Precedence: back-end name → int, 0 highest. A back-end missing from `precedence`
  ranks after every listed one (max + 1). Every endpoint in the view has `source` =
  its back-end's name and effective `tier` = precedence * `TIERS_PER_SOURCE` +
  min(own tier, 15): consumers that prefer lower tiers prefer higher-precedence
  back-ends first, the back-end's own tiers second.
- A service known to several back-ends has the endpoints of all of them, and is
  listed in `conflicts` (instance_id "", the sources in precedence order). This is a
  report, not an error: it is how a static file or DNS adds fall-backs to a
  registry service.
- Instance ids are unique within a service in the view: when several back-ends
  have the same (service, instance_id), the highest-precedence one's endpoint is
  kept; when their addresses or ports differ, a `Conflict` for that instance says
  what each source has.
- A service's endpoints are sorted by (tier, instance_id); services by name.
  `errors` holds each back-end's non-empty `Snapshot.error`.

`Resolver` is the I/O shell: it runs the back-ends, rebuilds the view (debounced)
after any of them changes, then calls its own listeners (on the event loop, in
subscription order). `view()` is always the latest complete view (never None).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace

from resolver.model import (
    EMPTY_VIEW,
    TIERS_PER_SOURCE,
    Backend,
    Conflict,
    Endpoint,
    Listener,
    Snapshot,
    View,
)

log = logging.getLogger(__name__)
MAX_OWN_TIER = TIERS_PER_SOURCE - 1


def effective_tier(precedence: int, tier: int) -> int:
    return precedence * TIERS_PER_SOURCE + min(max(tier, 0), MAX_OWN_TIER)


def ranks(sources: Iterable[str], precedence: Mapping[str, int]) -> dict[str, int]:
    """Each source's precedence (unlisted ones: after the listed ones)."""
    after = max(precedence.values(), default=-1) + 1
    return {s: precedence.get(s, after) for s in sources}


Clashes = dict[tuple[str, str], list[Endpoint]]
Memo = dict[tuple[str, str], tuple[tuple[Endpoint, ...], int, tuple[Endpoint, ...], Clashes]]
"""`merge`'s optional cache: (source, service) → (the back-end's endpoints tuple, its
precedence, the merged tuple made from it, the instance-id clashes found in it)."""


def merge(
    snapshots: Iterable[Snapshot],
    precedence: Mapping[str, int],
    *,
    revision: int = 0,
    built_at: float = 0.0,
    memo: Memo | None = None,
) -> View:
    """The merged view of `snapshots` (one per back-end; see the module docstring). Pure,
    but for `memo`: given one, a service that one back-end alone knows and whose endpoints
    tuple is the very object of the previous call is not rebuilt (back-ends keep the tuples
    of unchanged services), so a rebuild after one change costs dictionary look-ups, not a
    copy of every endpoint; `memo` then holds this call's entries only. Same result either way.
    """
    snaps = list(snapshots)
    rank = ranks((s.source for s in snaps), precedence)
    snaps.sort(key=lambda s: (rank[s.source], s.source))
    if len(snaps) == 1 and rank[snaps[0].source] == 0:
        # One back-end first in precedence: its snapshot is the view (its endpoints already
        # carry their source and tiers 0..15, by the `Backend` contract). O(1): a DNS bridge
        # fed by the registry alone stays as fresh as the registry's stream.
        only = snaps[0]
        if memo is not None:
            memo.clear()
        return View(
            revision=revision,
            services=only.services,
            source_revisions={only.source: only.revision},
            errors={only.source: only.error} if only.error else {},
            built_at=built_at,
        )
    known_by: dict[str, list[Snapshot]] = {}
    for snap in snaps:
        for service in snap.services:
            known_by.setdefault(service, []).append(snap)
    services: dict[str, tuple[Endpoint, ...]] = {}
    clashes: Clashes = {}
    new_memo: Memo = {}
    for service in sorted(known_by):
        holders = known_by[service]
        if len(holders) == 1:
            snap = holders[0]
            key, given, r = (snap.source, service), snap.services[service], rank[snap.source]
            cached = memo.get(key) if memo is not None else None
            if cached is not None and cached[0] is given and cached[1] == r:
                merged, own = cached[2], cached[3]
            else:
                own = {}
                merged = _merged(_adjusted(snap, service, r), own)
            new_memo[key] = (given, r, merged, own)
            clashes.update(own)
            services[service] = merged
        else:
            services[service] = _merged(
                [e for snap in holders for e in _adjusted(snap, service, rank[snap.source])], clashes
            )
    if memo is not None:
        memo.clear()
        memo.update(new_memo)
    conflicts = [
        Conflict(service, "", sources, f"known to {len(sources)} back-ends: {', '.join(sources)}")
        for service, sources in ((s, tuple(h.source for h in hs)) for s, hs in known_by.items())
        if len(sources) > 1
    ]
    conflicts.extend(_instance_conflict(es) for _, es in sorted(clashes.items()) if _differ(es))
    conflicts.sort(key=lambda c: (c.service, c.instance_id))
    return View(
        revision=revision,
        services=services,
        source_revisions={s.source: s.revision for s in snaps},
        conflicts=tuple(conflicts),
        errors={s.source: s.error for s in snaps if s.error},
        built_at=built_at,
    )


def _adjusted(snap: Snapshot, service: str, rank: int) -> list[Endpoint]:
    """`snap`'s endpoints of `service` with their source and effective tier (copied only when
    they differ: the registry at precedence 0 needs no copy)."""
    out = []
    for e in snap.services[service]:
        tier = effective_tier(rank, e.tier)
        out.append(
            e if e.source == snap.source and e.tier == tier else replace(e, source=snap.source, tier=tier)
        )
    return out


def _merged(
    endpoints: list[Endpoint], clashes: dict[tuple[str, str], list[Endpoint]]
) -> tuple[Endpoint, ...]:
    """One endpoint per instance id (the first, i.e. the highest-precedence one; later ones
    with the same id are recorded in `clashes`), ordered by (tier, instance id)."""
    kept: dict[str, Endpoint] = {}
    for e in endpoints:
        first = kept.setdefault(e.instance_id, e)
        if first is not e:
            clashes.setdefault(e.key, [first]).append(e)
    return tuple(sorted(kept.values(), key=_order))


def _order(e: Endpoint) -> tuple[int, str]:
    return (e.tier, e.instance_id)


def _where(e: Endpoint) -> str:
    return f"{e.source}: {','.join(e.addresses)} port {e.port}"


def _differ(endpoints: Sequence[Endpoint]) -> bool:
    return len({(frozenset(e.addresses), e.port) for e in endpoints}) > 1


def _instance_conflict(endpoints: Sequence[Endpoint]) -> Conflict:
    first = endpoints[0]
    detail = "; ".join(_where(e) for e in endpoints) + f" (kept {first.source})"
    return Conflict(first.service, first.instance_id, tuple(e.source for e in endpoints), detail)


class Resolver:
    """Runs `backends` and keeps their merged `View`.

    `precedence` defaults to the order of `backends` (the first is 0). Back-end names
    must be unique. `run()` runs every back-end and the rebuild loop until cancelled;
    it raises (and stops everything) if a back-end's `run()` raises. Each change of a
    back-end schedules one rebuild `debounce` seconds later (changes in between share
    it); listeners are called after the new view is in place.
    """

    def __init__(
        self,
        backends: Sequence[Backend],
        precedence: Mapping[str, int] | None = None,
        *,
        debounce: float = 0.02,
        clock: Callable[[], float] = time.time,
    ) -> None:
        names = [b.name for b in backends]
        if len(set(names)) != len(names):
            raise ValueError(f"back-end names must be unique: {names}")
        self.backends = list(backends)
        self.precedence = dict(precedence) if precedence is not None else {n: i for i, n in enumerate(names)}
        self.debounce = debounce
        self._clock = clock
        self._view = EMPTY_VIEW
        self._memo: Memo = {}
        self._listeners: list[Listener] = []
        self._changed = asyncio.Event()

    def view(self) -> View:
        return self._view

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def rebuild(self) -> View:
        """Merge the back-ends' current snapshots into a new view now, and notify. Conflicts
        that appear (or clear) are logged once, as warnings: reported, never hidden."""
        before = set(self._view.conflicts)
        self._view = merge(
            (b.snapshot() for b in self.backends),
            self.precedence,
            revision=self._view.revision + 1,
            built_at=self._clock(),
            memo=self._memo,
        )
        after = set(self._view.conflicts)
        for c in sorted(after - before, key=lambda c: (c.service, c.instance_id)):
            log.warning(
                "conflict: %s%s: %s", c.service, f"/{c.instance_id}" if c.instance_id else "", c.detail
            )
        for c in sorted(before - after, key=lambda c: (c.service, c.instance_id)):
            log.info("conflict resolved: %s%s", c.service, f"/{c.instance_id}" if c.instance_id else "")
        for listener in list(self._listeners):
            try:
                listener()
            except Exception:
                log.exception("resolver view listener failed")
        return self._view

    async def run(self) -> None:
        for b in self.backends:
            b.subscribe(self._changed.set)
        self.rebuild()
        async with asyncio.TaskGroup() as tg:
            for b in self.backends:
                tg.create_task(b.run(), name=f"resolver-{b.name}")
            tg.create_task(self._rebuild_loop(), name="resolver-merge")

    async def _rebuild_loop(self) -> None:
        while True:
            await self._changed.wait()
            await asyncio.sleep(self.debounce)
            self._changed.clear()
            self.rebuild()
