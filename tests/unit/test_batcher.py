"""Group commit: writes queued while a commit is in flight share the next one."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from registry.batcher import WriteBatcher
from registry.errors import Unavailable


class GatedCommit:
    """A commit function that records batches and waits for the test to open a gate."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()

    async def __call__(self, writes: Sequence[int]) -> list[int]:
        self.batches.append(list(writes))
        await self.gate.wait()
        return [w * 10 for w in writes]


async def test_writes_queued_during_a_commit_share_the_next_batch() -> None:
    commit = GatedCommit()
    batcher: WriteBatcher[int, int] = WriteBatcher(commit, max_batch=30)
    first = asyncio.create_task(batcher.submit(0))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    rest = [asyncio.create_task(batcher.submit(n)) for n in range(1, 50)]
    await asyncio.sleep(0)
    commit.gate.set()
    assert await first == 0
    assert [await t for t in rest] == [n * 10 for n in range(1, 50)]
    assert [len(b) for b in commit.batches] == [1, 30, 19]
    await batcher.close()


async def test_a_failed_commit_fails_every_write_of_its_batch() -> None:
    async def broken(writes: Sequence[int]) -> list[int]:
        raise Unavailable("etcd is down")

    batcher: WriteBatcher[int, int] = WriteBatcher(broken)
    results = await asyncio.gather(*(batcher.submit(n) for n in range(5)), return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results)
    await batcher.close()
    with pytest.raises(Unavailable, match="shutting down"):
        await batcher.submit(1)


async def test_commits_in_flight_are_bounded() -> None:
    commit = GatedCommit()
    batcher: WriteBatcher[int, int] = WriteBatcher(commit, max_batch=10, max_in_flight=2)
    tasks = [asyncio.create_task(batcher.submit(n)) for n in range(50)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert [len(b) for b in commit.batches] == [10, 10]  # two commits in flight, the rest wait
    commit.gate.set()
    assert [await t for t in tasks] == [n * 10 for n in range(50)]
    assert sum(len(b) for b in commit.batches) == 50
    await batcher.close()
