"""Debounced reconciliation of the data path's table with the desired table.

Anything that may change the desired table (a registry message, a listener
opened or closed, an address change) calls `request()`; `run()` waits
`debounce` seconds after the first request (so a burst of changes costs one
computation), then computes the whole desired table, numbers it
(`Generations`) and, if the content changed, hands it to the data path.
`resync()` forces the next pass to re-apply even unchanged content (after a
data-path event overflow).

`ready()` says whether the mirror is consistent. While it is not (in the
middle of a snapshot series, which replaces the whole mirror) a pass is put
off: the table in force stays, complete if stale, rather than a partial one
whose missing services would refuse connects. The registry link asks for a
pass when the series ends; waiters in `settled()` wait for that pass.

`rule_count` is the number of rules of the table in force. The rules
themselves are not kept: they may be a view of the agent's Rust mirror
(`sal_core.desired.DesiredRules`), valid only until the mirror changes.

`applied_revision` is the registry revision of the mirror the last applied
(or confirmed unchanged) table was computed from; `generation` is that
table's generation. `on_applied(revision)` is called whenever it advances.
A refused table (`ValueError` from the data path) is logged and counted in
`errors`; the previous table stays in force and the next change retries.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from hostagent.agent.datapath import DatapathPort
from hostagent.agent.desired import Generations
from hostagent.sal_core.table import Rule

log = logging.getLogger(__name__)

Compute = Callable[[], tuple[Sequence[Rule], int]]


class Reconciler:
    """Applies `compute()` → ``(rules, registry revision)`` to `datapath`, debounced."""

    def __init__(
        self,
        datapath: DatapathPort,
        compute: Compute,
        debounce: float = 0.05,
        ready: Callable[[], bool] = lambda: True,
        on_applied: Callable[[int], None] = lambda revision: None,
    ) -> None:
        self.datapath = datapath
        self.compute = compute
        self.debounce = debounce
        self.ready = ready
        self.on_applied = on_applied
        self.deferred = 0
        self.generations = Generations()
        self.applied_revision = 0
        self.applies = 0
        self.errors = 0
        self.rule_count = 0
        self._wanted = asyncio.Event()
        self._force = False
        self._failed = False
        self._started = 0
        self._finished = 0
        self._done = asyncio.Condition()

    @property
    def generation(self) -> int:
        return self.generations.generation

    def request(self) -> None:
        """Ask for a pass (cheap; many requests within `debounce` make one pass)."""
        self._wanted.set()

    def resync(self) -> None:
        """Ask for a pass that re-applies the table even when it did not change."""
        self._force = True
        self._wanted.set()

    def note_progress(self, revision: int) -> None:
        """The registry moved on without changes: the table in force is current for `revision`."""
        if not self._wanted.is_set() and not self._failed:
            self._advance(revision)

    def reconcile_now(self) -> None:
        """One pass, synchronously (start-up and tests)."""
        rules, revision = self.compute()
        generation, changed = self.generations.advance(rules)
        force, self._force = self._force, False
        if changed or force:
            try:
                result = self.datapath.apply_table(generation, rules)
            except ValueError:
                self.errors += 1
                self._failed = self._force = True  # retry on the next pass
                log.exception("the data path refused table generation %d", generation)
                return
            self.applies += int(result.applied)
        self._failed = False
        self.rule_count = len(rules)
        self._advance(revision)

    def _advance(self, revision: int) -> None:
        if revision > self.applied_revision:
            self.applied_revision = revision
            self.on_applied(revision)

    async def run(self) -> None:
        while True:
            await self._wanted.wait()
            await asyncio.sleep(self.debounce)
            self._wanted.clear()
            if not self.ready():
                self.deferred += 1  # the end of the snapshot series asks again
                continue
            self._started += 1
            started = self._started
            self.reconcile_now()
            async with self._done:
                self._finished = started
                self._done.notify_all()

    async def settled(self) -> None:
        """Wait until a pass that started after this call has finished (tests, the local API)."""
        target = self._started + 1
        self.request()
        async with self._done:
            await self._done.wait_for(lambda: self._finished >= target)
