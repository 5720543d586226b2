"""Group commit: many concurrent registrations, one etcd transaction.

`WriteBatcher.submit` queues one write and waits for its outcome. A worker
task takes everything queued (up to `max_batch`) and commits it with one call;
up to `max_in_flight` commits run at once (etcd then groups them into one
disk sync), and new writes queue up behind them. Batches therefore grow with
load, and a lone write is committed at once, with no added delay.

Writes in different concurrent batches are not ordered with respect to each
other; a caller that needs order waits for one write's outcome before
submitting the next (as every API client does).

Contract: outcomes come back in submission order per batch; an exception from
the commit call (e.g. `Unavailable`) is raised to every write of that batch;
after `close()` new writes are refused with `Unavailable`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from registry.errors import Unavailable

W = TypeVar("W")
O = TypeVar("O")  # noqa: E741


class WriteBatcher(Generic[W, O]):
    def __init__(
        self,
        commit: Callable[[Sequence[W]], Awaitable[Sequence[O]]],
        max_batch: int = 256,
        max_in_flight: int = 4,
    ) -> None:
        self._commit = commit
        self._max_batch = max_batch
        self._slots = asyncio.Semaphore(max_in_flight)
        self._pending: list[tuple[W, asyncio.Future[O]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._commits: set[asyncio.Task[None]] = set()
        self._closed = False
        self.batches = 0
        self.writes = 0

    async def submit(self, write: W) -> O:
        """Queue `write`, wait for its batch, return its outcome."""
        if self._closed:
            raise Unavailable("registry replica is shutting down")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="write-batcher")
        fut: asyncio.Future[O] = asyncio.get_running_loop().create_future()
        self._pending.append((write, fut))
        self._wake.set()
        return await fut

    async def close(self) -> None:
        """Stop taking writes; fail the queued ones; wait for the worker."""
        self._closed = True
        tasks = [t for t in (self._task, *self._commits) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _, fut in self._pending:
            if not fut.done():
                fut.set_exception(Unavailable("registry replica is shutting down"))
        self._pending.clear()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                await self._slots.acquire()
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                task = asyncio.create_task(self._commit_batch(batch))
                self._commits.add(task)
                task.add_done_callback(self._commit_done)

    def _commit_done(self, task: asyncio.Task[None]) -> None:
        self._commits.discard(task)
        self._slots.release()

    async def _commit_batch(self, batch: list[tuple[W, asyncio.Future[O]]]) -> None:
        self.batches += 1
        self.writes += len(batch)
        try:
            outcomes = await self._commit([w for w, _ in batch])
        except asyncio.CancelledError:
            for _, fut in batch:
                fut.cancel()
            raise
        except Exception as e:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        for (_, fut), outcome in zip(batch, outcomes, strict=True):
            if not fut.done():
                fut.set_result(outcome)
