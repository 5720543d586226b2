"""Local listeners: id allocation and the registry instances that advertise them.

A listener is opened by one local-API connection (`listen(name)`) and lives
until that connection closes. `Listeners` is the agent's bookkeeping (pure:
no I/O); the local API performs the effects (data path, registry, table) in
the order documented in `local_api.py`.

Registry instance of a listener: service = the name, instance id =
``<agent id>-l<listener id>``, addresses = the host's advertised addresses,
port = the SAL port, metadata ``serval.sal_port`` (= the SAL port) and
``serval.agent`` (the agent id), zone/region of the agent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from hostagent.agent.desired import SAL_PORT_KEY, LocalListener
from hostagent.agent.events import Accepted, Endpoint
from registry.model import Instance

AGENT_KEY = "serval.agent"

Deliver = Callable[[Accepted], None]


@dataclass(frozen=True)
class HostIdentity:
    """What every registration of this agent shares."""

    agent_id: str
    addresses: tuple[str, ...]
    sal_port: int
    zone: str = ""
    region: str = ""
    ttl_seconds: int = 10


def listener_instance(host: HostIdentity, listener: LocalListener) -> Instance:
    """The registry instance advertising `listener` on this host."""
    return Instance(
        service=listener.service,
        instance_id=f"{host.agent_id}-l{listener.listener_id}",
        addresses=host.addresses,
        port=host.sal_port,
        zone=host.zone,
        region=host.region,
        metadata={SAL_PORT_KEY: str(host.sal_port), AGENT_KEY: host.agent_id},
        ttl_seconds=host.ttl_seconds,
    )


class Listeners:
    """Open listeners: id → (listener, where its accepted flows go). Ids are never reused."""

    def __init__(self) -> None:
        self._next_id = 1
        self._open: dict[int, tuple[LocalListener, Deliver]] = {}
        self._exposed: dict[int, Endpoint] = {}

    def open(self, service: str, deliver: Deliver, expose: Endpoint | None = None) -> LocalListener:
        """Allocate an id for `service` (already normalised) and remember where flows go.

        `expose`: the local TCP server the data path relays this listener's flows to."""
        listener = LocalListener(self._next_id, service)
        self._next_id += 1
        self._open[listener.listener_id] = (listener, deliver)
        if expose is not None:
            self._exposed[listener.listener_id] = expose
        return listener

    def exposed(self, listener_id: int) -> Endpoint | None:
        """The local server an exposed listener relays to; None for an app's listener."""
        return self._exposed.get(listener_id)

    def close(self, listener_id: int) -> LocalListener | None:
        self._exposed.pop(listener_id, None)
        entry = self._open.pop(listener_id, None)
        return entry[0] if entry else None

    def deliverer(self, listener_id: int) -> Deliver | None:
        entry = self._open.get(listener_id)
        return entry[1] if entry else None

    def __iter__(self) -> Iterator[LocalListener]:
        return iter([listener for listener, _ in self._open.values()])

    def __len__(self) -> int:
        return len(self._open)
