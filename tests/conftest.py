"""Shared pytest set-up: real-etcd and network-namespace fixtures, and the leaked-task check."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

pytest_plugins = [
    "tests.support.etcd",
    "tests.support.netns",
    "tests.support.replica",
    "tests.support.testbed",
]


@pytest.fixture(autouse=True)
async def no_leaked_tasks(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Fail an async test that leaves tasks running once its fixtures are torn down."""
    yield
    if not asyncio.iscoroutinefunction(request.function):
        return
    current = asyncio.current_task()
    await asyncio.sleep(0)
    leaked = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    assert not leaked, f"test leaked tasks: {leaked}"
