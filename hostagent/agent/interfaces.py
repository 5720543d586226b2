"""The host's addresses: a pure diff, the choice of advertised addresses, and a thin poller.

`AddressPoller` reads the interface addresses every `interval` seconds
(`psutil.net_if_addrs()` by default; injectable) and calls `on_change(added,
removed)` when the set changed. The first read happens in `prime()` so the
agent starts with a known set. Reading failures are logged and retried on
the next tick.

The poll is the safety net; changes are normally seen at once: `run()` also
follows the kernel's address and link notifications (``ip -o monitor address
link``, netlink via iproute2) and reads again as soon as one arrives, so a
flow starts moving within milliseconds of an address change rather than up to
one interval later. Without `ip` (or if the monitor dies) only the poll runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable

import psutil

from hostagent.agent.events import Endpoint
from registry.model import MAX_ADDRESSES

log = logging.getLogger(__name__)

Reader = Callable[[], frozenset[str]]
OnChange = Callable[[frozenset[str], frozenset[str]], Awaitable[None]]


def diff_addresses(old: frozenset[str], new: frozenset[str]) -> tuple[frozenset[str], frozenset[str]]:
    """``(added, removed)`` between two address sets."""
    return new - old, old - new


def read_host_addresses() -> frozenset[str]:
    """Every IPv4/IPv6 address on the host's interfaces that are up (IPv6 zone suffixes stripped).

    An interface that is down keeps its addresses configured but carries nothing,
    so its addresses count as gone: flows using them must move.
    """
    out = set()
    stats = psutil.net_if_stats()
    for name, addrs in psutil.net_if_addrs().items():
        if name in stats and not stats[name].isup:
            continue
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                out.add(ipaddress.ip_address(a.address.split("%", 1)[0]).compressed)
    return frozenset(out)


def advertised_addresses(sal_bound: Iterable[Endpoint], host_addresses: Iterable[str]) -> tuple[str, ...]:
    """The addresses other agents should dial, sorted, at most `MAX_ADDRESSES`.

    The specific IPs the SAL listeners are bound to, when they are; for a
    wildcard bind the host's addresses without link-local and multicast ones
    and without loopback unless nothing else is left (a single-host setup).
    """
    bound = {ipaddress.ip_address(ip) for ip, _ in sal_bound}
    specific = sorted((a for a in bound if not a.is_unspecified), key=_order)
    if specific and len(specific) == len(bound):
        return tuple(a.compressed for a in specific[:MAX_ADDRESSES])
    want_v6 = any(a.version == 6 for a in bound)
    usable = [
        a
        for a in map(ipaddress.ip_address, host_addresses)
        if not (a.is_link_local or a.is_multicast or a.is_unspecified) and (a.version == 4 or want_v6)
    ]
    usable += [a for a in specific if a not in usable]
    chosen = [a for a in usable if not a.is_loopback] or usable
    return tuple(a.compressed for a in sorted(set(chosen), key=_order)[:MAX_ADDRESSES])


def _order(a: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, int]:
    return (a.version, int(a))


class AddressPoller:
    """Polls `reader` and reports changes to `on_change`; `current` is the last set read."""

    def __init__(self, on_change: OnChange, interval: float = 1.0, reader: Reader = read_host_addresses):
        self.on_change = on_change
        self.interval = interval
        self.reader = reader
        self.current: frozenset[str] = frozenset()

    def prime(self) -> frozenset[str]:
        """Read the addresses once without reporting (start-up)."""
        self.current = self.reader()
        return self.current

    async def run(self, monitor: bool = True) -> None:
        """Read on every tick and on every kernel notification (`monitor`); report changes."""
        wake = asyncio.Event()
        watcher = asyncio.create_task(self._follow_kernel(wake)) if monitor else None
        try:
            await self._loop(wake)
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)

    async def _loop(self, wake: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self.interval)
            wake.clear()
            try:
                new = self.reader()
            except Exception:
                log.exception("reading the host's addresses failed")
                continue
            added, removed = diff_addresses(self.current, new)
            if added or removed:
                self.current = new
                try:
                    await self.on_change(added, removed)
                except Exception:
                    log.exception(
                        "reacting to address changes (+%s -%s) failed", sorted(added), sorted(removed)
                    )

    @staticmethod
    async def _follow_kernel(wake: asyncio.Event) -> None:
        """Set `wake` on every line of ``ip -o monitor address link``; return if it cannot run."""
        try:
            proc = await asyncio.create_subprocess_exec(
                "ip", "-o", "monitor", "address", "link",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        except OSError as e:
            log.info("no kernel address notifications (%s): polling only", e)
            return
        assert proc.stdout is not None
        try:
            while await proc.stdout.readline():
                wake.set()
            log.warning("ip monitor ended (status %s): polling only", await proc.wait())
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
