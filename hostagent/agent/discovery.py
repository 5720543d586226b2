"""The agent's extra discovery back-ends (static file, LAN, DNS) in its service table.

The registry stays the agent's primary source through its own compact mirror
(`mirror.py` → the Rust `DesiredTable`). The other back-ends run under a
`resolver.merge.Resolver`; `ExtraSources` puts the SAL-capable endpoints of its view
(metadata `serval.sal_port`) into the *same* `DesiredTable`:
- instance id ``"<source>/<instance_id>"``: "/" never occurs in a registry instance
  id, so they never clash with registry instances (nor with each other);
- tier = the endpoint's effective tier from the merge (precedence * 16 + its own
  tier), so with the default precedence (registry 0) a registry instance of a service
  is always preferred and the extras are its fall-backs; the agent's mirror adds
  `precedence["registry"] * 16` to registry tiers for the same scale;
- unhealthy endpoints and ones without a valid SAL port are left out; drained ones
  (weight 0) are kept with weight 0, as the registry's are.

Ordering: `update(view)` applies the difference to the table (removals, then puts)
and returns whether anything changed (the agent then asks for a reconcile pass);
`restore()` puts every extra entry again: the mirror calls it right after a registry
snapshot series cleared the table. Event-loop thread only.
"""

from __future__ import annotations

import logging
import re

from hostagent.agent.desired import SAL_PORT_KEY, parse_sal_port
from hostagent.agent.session import Registrar
from hostagent.sal_core.desired import DesiredTable
from registry.model import Instance
from resolver.backends.lan import LanAnnouncer
from resolver.backends.registry import endpoint_from_instance
from resolver.merge import Resolver
from resolver.model import Endpoint, View
from resolver.sources import DiscoveryConfig, extra_backends

log = logging.getLogger(__name__)

SOURCE_SEP = "/"

# (addresses, sal_port, weight, tier, zone, region): the arguments of `DesiredTable.put`
TableEntry = tuple[tuple[str, ...], int, int, int, str, str]


def build_resolver(config: DiscoveryConfig) -> Resolver | None:
    """The resolver over the configured extra back-ends, or None when there is none.
    Raises ValueError on a configuration it cannot start with (e.g. DNS names without
    a server). dnspython is imported only when DNS names are configured."""
    backends = extra_backends(config)
    return Resolver(backends, config.precedence) if backends else None


def table_entries(view: View) -> dict[tuple[str, str], TableEntry]:
    """The `DesiredTable` entries for `view`'s SAL-capable endpoints (registry excluded). Pure."""
    out: dict[tuple[str, str], TableEntry] = {}
    for service, endpoints in view.services.items():
        for e in endpoints:
            port = parse_sal_port(e.metadata.get(SAL_PORT_KEY, ""))
            if port is None or not e.healthy or e.source == "registry":
                continue
            key = (service, f"{e.source}{SOURCE_SEP}{e.instance_id}")
            out[key] = (tuple(e.addresses), port, e.weight, e.tier, e.zone, e.region)
    return out


class ExtraSources:
    """The extra back-ends' entries currently in `table` (see the module docstring)."""

    def __init__(self, table: DesiredTable) -> None:
        self.table = table
        self.entries: dict[tuple[str, str], TableEntry] = {}

    def update(self, view: View) -> bool:
        new = table_entries(view)
        gone = [k for k in self.entries if k not in new]
        changed = [(k, v) for k, v in new.items() if self.entries.get(k) != v]
        for service, iid in gone:
            self.table.remove(service, iid)
        for key, entry in changed:
            self._put(key, entry)
        self.entries = new
        return bool(gone or changed)

    def restore(self) -> None:
        for key, entry in self.entries.items():
            self._put(key, entry)

    def _put(self, key: tuple[str, str], entry: TableEntry) -> None:
        addresses, port, weight, tier, zone, region = entry
        self.table.put(key[0], key[1], addresses, port, weight, tier, zone, region)


def build_announcer(config: DiscoveryConfig, agent_id: str) -> LanAnnouncer | None:
    """The agent's LAN announcer (`--lan`), named after the agent (characters a LAN host
    id may not hold become "-"), or None without `--lan`."""
    if not config.lan:
        return None
    host = re.sub(r"[^A-Za-z0-9._:-]", "-", agent_id)[:64] or "agent"
    return LanAnnouncer(host, group=config.lan_group, port=config.lan_port, interface=config.lan_interface)


class AnnouncingRegistrar:
    """A `Registrar` that also announces on the LAN what it registers (`serval agent --lan`).

    Listening on a name registers it in the registry through `inner` (the agent's
    session) and, from the same call, makes it discoverable by the agents on the link
    through `announcer` (its `LanAnnouncer`), so that hosts of an ad-hoc network find it
    even when the registry is out of reach. The announcement is updated before the
    registry call, so a registry failure (raised to the caller as before) does not
    withhold it; closing the listener withdraws both.
    """

    def __init__(self, inner: Registrar, announcer: LanAnnouncer) -> None:
        self.inner = inner
        self.announcer = announcer
        self._announced: dict[tuple[str, str], Endpoint] = {}

    @property
    def announced(self) -> tuple[Endpoint, ...]:
        """What is announced now, in registration order."""
        return tuple(self._announced.values())

    async def put(self, instance: Instance) -> int:
        self._announced[instance.key] = endpoint_from_instance(instance, "lan")
        self._publish()
        return await self.inner.put(instance)

    async def remove(self, service: str, instance_id: str) -> int:
        if self._announced.pop((service, instance_id), None) is not None:
            self._publish()
        return await self.inner.remove(service, instance_id)

    def _publish(self) -> None:
        try:
            self.announcer.set_endpoints(self._announced.values())
        except ValueError:  # one endpoint too large for a datagram: the previous set stays
            log.warning("LAN announcement not updated: an endpoint does not fit a datagram")
