"""Host addresses: the pure diff, the advertised-address choice, and the poller."""

from __future__ import annotations

import asyncio

import pytest

from hostagent.agent.interfaces import (
    AddressPoller,
    advertised_addresses,
    diff_addresses,
    read_host_addresses,
)


@pytest.mark.parametrize(
    ("old", "new", "added", "removed"),
    [
        (set(), {"10.0.0.1"}, {"10.0.0.1"}, set()),
        ({"10.0.0.1"}, set(), set(), {"10.0.0.1"}),
        ({"10.0.0.1", "fd00::1"}, {"10.0.0.1", "fd00::2"}, {"fd00::2"}, {"fd00::1"}),
        ({"10.0.0.1"}, {"10.0.0.1"}, set(), set()),
    ],
)
def test_diff(old: set[str], new: set[str], added: set[str], removed: set[str]) -> None:
    assert diff_addresses(frozenset(old), frozenset(new)) == (frozenset(added), frozenset(removed))


@pytest.mark.parametrize(
    ("bound", "host", "expected"),
    [
        ([("10.0.0.5", 7946)], ["10.0.0.1", "10.0.0.5"], ("10.0.0.5",)),  # specific bind wins
        ([("0.0.0.0", 7946)], ["127.0.0.1", "10.0.0.2", "10.0.0.1"], ("10.0.0.1", "10.0.0.2")),
        ([("0.0.0.0", 7946)], ["127.0.0.1", "169.254.1.1"], ("127.0.0.1",)),  # loopback if nothing else
        ([("0.0.0.0", 7946)], ["10.0.0.1", "fd00::1"], ("10.0.0.1",)),  # v4 bind: no v6 addresses
        ([("::", 7946)], ["10.0.0.1", "fd00::1", "fe80::1"], ("10.0.0.1", "fd00::1")),
        ([("0.0.0.0", 7946)], [], ()),
    ],
)
def test_advertised_addresses(
    bound: list[tuple[str, int]], host: list[str], expected: tuple[str, ...]
) -> None:
    assert advertised_addresses(bound, host) == expected


def test_read_host_addresses_has_loopback() -> None:
    assert "127.0.0.1" in read_host_addresses()


async def test_poller_reports_changes_only() -> None:
    readings = iter([frozenset({"10.0.0.1"}), frozenset({"10.0.0.1"}), frozenset({"10.0.0.2"})])
    last = frozenset({"10.0.0.2"})
    changes: list[tuple[frozenset[str], frozenset[str]]] = []
    done = asyncio.Event()

    async def on_change(added: frozenset[str], removed: frozenset[str]) -> None:
        changes.append((added, removed))
        done.set()

    poller = AddressPoller(on_change, interval=0.01, reader=lambda: next(readings, last))
    assert poller.prime() == {"10.0.0.1"}
    task = asyncio.create_task(poller.run(monitor=False))
    await asyncio.wait_for(done.wait(), 5)
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert changes == [(frozenset({"10.0.0.2"}), frozenset({"10.0.0.1"}))]
    assert poller.current == last
