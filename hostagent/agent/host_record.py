"""The agent's own host record in the registry.

Service `AGENTS_SERVICE` (``agents.serval``), instance id = the agent id,
addresses = the host's advertised addresses, port = the SAL port, metadata
``serval.sal_port``, ``serval.version`` (the agent's version) and
``serval.agent``; zone/region of the agent. It hangs on the agent's session
lease (`session.py`), is re-registered when the host's addresses change and
deleted on shutdown (deregistered, then the lease is revoked). The desired
table excludes this service: it lists agents, it is not something apps dial.
"""

from __future__ import annotations

from hostagent.agent.desired import AGENTS_SERVICE, SAL_PORT_KEY
from hostagent.agent.listeners import AGENT_KEY, HostIdentity
from hostagent.agent.session import RegistrySession
from registry.model import Instance

VERSION_KEY = "serval.version"


def host_instance(host: HostIdentity, version: str) -> Instance:
    """The host record of `host`."""
    return Instance(
        service=AGENTS_SERVICE,
        instance_id=host.agent_id,
        addresses=host.addresses,
        port=host.sal_port,
        zone=host.zone,
        region=host.region,
        metadata={SAL_PORT_KEY: str(host.sal_port), VERSION_KEY: version, AGENT_KEY: host.agent_id},
        ttl_seconds=host.ttl_seconds,
    )


class HostRecord:
    """Keeps the host record in step with the host identity (put only when it changed)."""

    def __init__(self, session: RegistrySession, version: str) -> None:
        self.session = session
        self.version = version
        self._current: Instance | None = None

    async def publish(self, host: HostIdentity) -> None:
        """Register the record for `host` unless the same record is already registered."""
        record = host_instance(host, self.version)
        if record != self._current:
            await self.session.put(record)
            self._current = record

    async def withdraw(self) -> None:
        """Deregister the record (shutdown)."""
        if self._current is not None:
            await self.session.remove(AGENTS_SERVICE, self._current.instance_id)
            self._current = None
