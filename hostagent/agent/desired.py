"""The desired service table: registry mirror + locality + local listeners → rules. Pure.

Contract of `desired_rules`:
- FORWARD, one rule per service name that has at least one *SAL-capable*
  instance (metadata ``serval.sal_port`` holding a port 1..65535). Each
  address of such an instance becomes a target ``(address, sal_port)`` with
  the instance's weight (0 while drained: the data path never chooses it) and
  the table tier ``(instance.tier * LOCALITY_RANKS + locality_rank) *
  ADDRESS_RANKS + address_rank`` where the locality rank is 0 for the agent's
  zone, 1 for its region, 2 elsewhere, and the address rank is 0 for the
  instance's first address and 1 for its others. So a lower registry tier
  always wins; within a registry tier nearer targets are used first, farther
  ones only when every nearer target is gone or drained; and an instance's
  weight counts once (on its first address), its other addresses being its
  failover at set-up when the first is unreachable (a multi-homed host). Once
  a flow is set up, the data path learns all of the peer's SAL endpoints from
  the handshake and migrates between them by itself.
  The same ``(address, port)`` from several instances (two listeners of one
  agent) is merged: best table tier, weights of that tier summed (capped).
- DEMUX, one rule per service name with a local listener, naming the oldest
  (lowest id) listener of that name; it replaces the name's FORWARD rule, so
  flows to a name served on this host stay on this host.
- Services in `exclude` (the agents' own host records) get no rule.
- Output is sorted by (prefix, prefix_bits): the same inputs give the same list.

`Generations` numbers table contents: the generation only increases when the
content changes, as the data path's `apply_table` expects.

The agent itself computes this table in Rust (`hostagent.sal_core.desired`,
fed by `mirror.py`): no Python object per instance or rule. This module is
the reference those semantics are checked against
(`tests/unit/test_agent_desired_native.py`) and what the fakes use.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from hostagent.sal_core.desired import DesiredRules
from hostagent.sal_core.table import Rule, RuleKind, Target
from registry import names
from registry.model import MAX_WEIGHT, Instance

SAL_PORT_KEY = "serval.sal_port"
AGENTS_SERVICE = "agents.serval"
LOCALITY_RANKS = 3
ADDRESS_RANKS = 2
MAX_TARGET_WEIGHT = MAX_WEIGHT * 16


@dataclass(frozen=True)
class Locality:
    """Where this agent runs; empty strings mean unknown."""

    zone: str = ""
    region: str = ""


@dataclass(frozen=True)
class LocalListener:
    """A listener the local API opened: its data-path id and its (normalised) service name."""

    listener_id: int
    service: str


def sal_port(instance: Instance) -> int | None:
    """The instance's SAL port from its metadata, or None when absent or malformed."""
    return parse_sal_port(instance.metadata.get(SAL_PORT_KEY, ""))


def parse_sal_port(text: str) -> int | None:
    """A ``serval.sal_port`` metadata value as a port 1..65535, or None when malformed."""
    if not (text.isascii() and text.isdigit()):
        return None
    port = int(text)
    return port if 1 <= port <= 65535 else None


def has_sal_instance(instances: Iterable[Instance], service_id: bytes) -> bool:
    """True if a SAL-capable instance's service has these 32 ID bytes (a DELAY may be released)."""
    return any(sal_port(i) is not None and names.service_id(i.service).raw == service_id for i in instances)


def locality_rank(instance: Instance, here: Locality) -> int:
    """0 = same zone (and not a different region), 1 = same region, 2 = elsewhere or unknown."""
    same_region = bool(here.region) and instance.region == here.region
    region_compatible = same_region or not here.region or not instance.region
    if here.zone and instance.zone == here.zone and region_compatible:
        return 0
    return 1 if same_region else 2


def desired_rules(
    instances: Iterable[Instance],
    here: Locality,
    listeners: Iterable[LocalListener],
    exclude: frozenset[str] = frozenset({AGENTS_SERVICE}),
) -> list[Rule]:
    """The whole desired table (see the module docstring)."""
    demux: dict[str, int] = {}
    for listener in listeners:
        demux[listener.service] = min(listener.listener_id, demux.get(listener.service, listener.listener_id))
    targets: dict[str, dict[tuple[str, int], tuple[int, int]]] = {}
    for inst in instances:
        port = sal_port(inst)
        if port is None or inst.service in exclude or inst.service in demux:
            continue
        tier = (inst.tier * LOCALITY_RANKS + locality_rank(inst, here)) * ADDRESS_RANKS
        merged = targets.setdefault(inst.service, {})
        for rank, address in enumerate(inst.addresses):
            key = (address, port)
            merged[key] = _merge(merged.get(key), tier + min(rank, ADDRESS_RANKS - 1), inst.weight)
    rules = [_rule(name, RuleKind.DEMUX, listener=lid) for name, lid in demux.items()]
    rules += [_rule(name, RuleKind.FORWARD, _targets(merged)) for name, merged in targets.items()]
    return sorted(rules, key=lambda r: (r.prefix, r.prefix_bits))


def _merge(old: tuple[int, int] | None, tier: int, weight: int) -> tuple[int, int]:
    if old is None or tier < old[0]:
        return (tier, weight)
    if tier > old[0]:
        return old
    return (tier, min(old[1] + weight, MAX_TARGET_WEIGHT))


def _targets(merged: dict[tuple[str, int], tuple[int, int]]) -> tuple[Target, ...]:
    return tuple(Target(host, port, weight, tier) for (host, port), (tier, weight) in sorted(merged.items()))


def _rule(name: str, kind: RuleKind, targets: Sequence[Target] = (), listener: int | None = None) -> Rule:
    sid = names.service_id(name)
    return Rule(sid.raw, sid.prefix_bits, kind, tuple(targets), listener)


@dataclass
class Generations:
    """Numbers table contents: `advance(rules)` bumps the generation only when they differ.

    A `DesiredRules` view is compared by its `content_key` (the Rust mirror's
    change counter) without materialising it: a change undone within one pass
    then still counts as a change (the data path answers ``no_change``).
    """

    generation: int = 0
    _last: object = field(default=None, repr=False)

    def advance(self, rules: Sequence[Rule]) -> tuple[int, bool]:
        """Return ``(generation, changed)`` for `rules`."""
        content = rules.content_key if isinstance(rules, DesiredRules) else tuple(rules)
        if content != self._last:
            self.generation += 1
            self._last = content
            return self.generation, True
        return self.generation, False
