"""Local listeners: id allocation and the registry instances that advertise them.

A listener is opened by one local-API connection (`listen(name)`) and lives
until that connection closes. `Listeners` is the agent's bookkeeping (pure:
no I/O); the local API performs the effects (data path, registry, table) in
the order documented in `local_api.py`.

Registry instance of a listener: service = the name, instance id =
``<agent id>-l<listener id>``, addresses = the host's advertised addresses,
port = the SAL port, metadata ``serval.sal_port`` (= the SAL port) and
``serval.agent`` (the agent id), zone/region of the agent. A datagram
listener (`listen(name, datagram=True)`) also carries ``serval.proto`` =
``dgram``, so tools can tell the kinds apart. One kind per name: the
desired table does not look at the kind (see `docs/agent-datapath.md`,
"Datagram flows"); a flow of the other kind is refused by the answering
agent (``no service``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from hostagent.agent.desired import SAL_PORT_KEY, LocalListener
from hostagent.agent.events import Accepted, Endpoint
from registry.model import Instance

AGENT_KEY = "serval.agent"
PROTO_KEY = "serval.proto"
DGRAM_PROTO = "dgram"

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


def listener_instance(host: HostIdentity, listener: LocalListener, datagram: bool = False) -> Instance:
    """The registry instance advertising `listener` on this host (a datagram listener's
    carries ``serval.proto=dgram``)."""
    metadata = {SAL_PORT_KEY: str(host.sal_port), AGENT_KEY: host.agent_id}
    if datagram:
        metadata[PROTO_KEY] = DGRAM_PROTO
    return Instance(
        service=listener.service,
        instance_id=f"{host.agent_id}-l{listener.listener_id}",
        addresses=host.addresses,
        port=host.sal_port,
        zone=host.zone,
        region=host.region,
        metadata=metadata,
        ttl_seconds=host.ttl_seconds,
    )


class Listeners:
    """Open listeners: id → (listener, where its accepted flows go). Ids are never reused."""

    def __init__(self) -> None:
        self._next_id = 1
        self._open: dict[int, tuple[LocalListener, Deliver]] = {}
        self._exposed: dict[int, Endpoint] = {}
        self._datagram: set[int] = set()

    def open(
        self, service: str, deliver: Deliver, expose: Endpoint | None = None, datagram: bool = False
    ) -> LocalListener:
        """Allocate an id for `service` (already normalised) and remember where flows go.

        `expose`: the local TCP server the data path relays this listener's flows to.
        `datagram`: a datagram listener (its flows are datagram flows)."""
        listener = LocalListener(self._next_id, service)
        self._next_id += 1
        self._open[listener.listener_id] = (listener, deliver)
        if expose is not None:
            self._exposed[listener.listener_id] = expose
        if datagram:
            self._datagram.add(listener.listener_id)
        return listener

    def is_datagram(self, listener_id: int) -> bool:
        """True for a datagram listener."""
        return listener_id in self._datagram

    def exposed(self, listener_id: int) -> Endpoint | None:
        """The local server an exposed listener relays to; None for an app's listener."""
        return self._exposed.get(listener_id)

    def close(self, listener_id: int) -> LocalListener | None:
        self._exposed.pop(listener_id, None)
        self._datagram.discard(listener_id)
        entry = self._open.pop(listener_id, None)
        return entry[0] if entry else None

    def deliverer(self, listener_id: int) -> Deliver | None:
        entry = self._open.get(listener_id)
        return entry[1] if entry else None

    def __iter__(self) -> Iterator[LocalListener]:
        return iter([listener for listener, _ in self._open.values()])

    def __len__(self) -> int:
        return len(self._open)
