"""The agent's registry session: one lease for everything it registers.

The host record and every listener's instance hang on one lease, so if the
agent dies they all vanish together when the lease expires. `RegistrySession`
remembers what it registered; `run()` keeps the lease alive and, when the
lease has expired anyway (a long partition), opens a new one and registers
everything again. Registrations use ``replace=True``: the instance ids are
this agent's own (an agent restarting under the same id takes over the
records its previous run left on a still-living lease).

Failure modes: `put`/`remove` raise the registry's error (`rpc.RpcError`, the
same over either client transport) after the client's failover retries; the
caller decides (the local API reports it to the app). `run()` only returns by cancellation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Protocol

from registry.api.client import RegistryClient, keep_session_alive
from registry.api.rpc import RETRYABLE, RpcError, StatusCode
from registry.model import Instance

log = logging.getLogger(__name__)

MIN_RETRY_DELAY = 0.2
MAX_RETRY_DELAY = 2.0


class Registrar(Protocol):
    """What the control plane needs of a session (the fake in tests records calls)."""

    async def put(self, instance: Instance) -> int: ...

    async def remove(self, service: str, instance_id: str) -> int: ...


class _NoRegistry:
    """The `Registrar` of an agent run without a registry (`serval agent --registry none`):
    registering goes nowhere (revision 0); with `--lan` the names are still announced."""

    async def put(self, instance: Instance) -> int:
        return 0

    async def remove(self, service: str, instance_id: str) -> int:
        return 0


NO_REGISTRY: Registrar = _NoRegistry()


class RegistrySession:
    """A lease of `ttl_seconds`, refreshed every `keepalive_interval` seconds by `run()`."""

    def __init__(self, client: RegistryClient, ttl_seconds: int = 10, keepalive_interval: float = 2.0):
        self.client = client
        self.ttl_seconds = ttl_seconds
        self.keepalive_interval = keepalive_interval
        self.lease_id = 0
        self.renewals = 0
        self._registered: dict[tuple[str, str], Instance] = {}
        self._lock = asyncio.Lock()

    @property
    def registered(self) -> dict[tuple[str, str], Instance]:
        return dict(self._registered)

    async def open(self) -> None:
        """Grant the lease (`put` calls `open` itself when needed)."""
        resp = await self.client.open_session(self.ttl_seconds)
        self.lease_id = int(resp.lease_id)

    async def put(self, instance: Instance) -> int:
        """Register (or update) `instance` on the lease; return the commit revision."""
        async with self._lock:
            if not self.lease_id:
                await self.open()
            resp = await self.client.register(instance, lease_id=self.lease_id, replace=True)
            self._registered[instance.key] = instance
            return int(resp.revision)

    async def remove(self, service: str, instance_id: str) -> int:
        """Deregister one instance; return the revision (0 if the registry had nothing)."""
        async with self._lock:
            self._registered.pop((service, instance_id), None)
            try:
                return await self.client.deregister(service, instance_id)
            except RpcError as e:
                if e.code != StatusCode.NOT_FOUND:
                    raise
                return 0

    async def run(self) -> None:
        """Keep the lease alive; after it expired, re-register everything on a new one.

        The registry being unreachable (UNAVAILABLE, DEADLINE_EXCEEDED: a replica
        down, or this host's address changed under the connection) is not fatal:
        the channel is dropped and the keep-alive retried with backoff (at most
        `MAX_RETRY_DELAY` s apart), so a lease survives any outage shorter than its TTL.
        """
        delay, renew = MIN_RETRY_DELAY, False
        while True:
            try:
                if renew:
                    await self._renew()
                    renew = False
                await keep_session_alive(self.client, self.lease_id, self.keepalive_interval)
                delay = MIN_RETRY_DELAY
            except RpcError as e:
                if e.code == StatusCode.NOT_FOUND and not renew:
                    log.warning("registry lease %x expired: registering everything again", self.lease_id)
                    renew = True
                    continue
                if e.code not in RETRYABLE:
                    raise
                log.warning("registry unreachable (%s) for lease %x; retrying", e.code.name, self.lease_id)
                await self.client.failover()
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)

    async def _renew(self) -> None:
        async with self._lock:
            await self.open()
            self.renewals += 1
            for instance in list(self._registered.values()):
                await self.client.register(instance, lease_id=self.lease_id, replace=True)

    async def close(self) -> None:
        """Revoke the lease: every instance registered on it is deleted at once."""
        async with self._lock:
            self._registered.clear()
            if self.lease_id:
                with contextlib.suppress(RpcError):
                    await self.client.close_session(self.lease_id)
                self.lease_id = 0
