"""Typed face of the agent's compact registry mirror (`DesiredRef` in `_native`).

`DesiredTable` keeps only what the service table needs of each SAL-capable
registry instance, in Rust (~140 bytes per instance instead of ~1.5 kB of
Python objects), and builds the desired table from it without creating a
Python object per rule. Semantics: exactly `hostagent.agent.desired.desired_rules`
(the pure Python reference; `tests/unit/test_agent_desired_native.py` checks
both agree), computed from the instances put so far.

`DesiredTable.rules(listeners, exclude)` returns a `DesiredRules`: a
`Sequence[Rule]` view of the table *at that moment*. The real data path
(`sal_core.datapath.Datapath.apply_table`) recognises it and builds the
table inside Rust; anything else (the fake data path, tests) iterates it,
which materialises `Rule` objects once. A view whose mirror changed since it
was taken refuses to materialise or apply (`RuntimeError`): take a new one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import overload

from hostagent.sal_core import _native
from hostagent.sal_core.table import Rule, RuleKind, Target

Listeners = tuple[tuple[int, str], ...]


class DesiredTable:
    """The SAL-capable instances of the registry, as the agent at `zone`/`region` sees them."""

    def __init__(self, zone: str = "", region: str = "") -> None:
        self._ref = _native.DesiredRef(zone, region)

    @property
    def ref(self) -> _native.DesiredRef:
        return self._ref

    def put(
        self,
        service: str,
        instance_id: str,
        addresses: Sequence[str],
        sal_port: int | None,
        weight: int,
        tier: int,
        zone: str = "",
        region: str = "",
    ) -> None:
        """Add or replace an instance; `sal_port` None (not SAL-capable) removes it."""
        self._ref.put(service, instance_id, list(addresses), sal_port, weight, tier, zone, region)

    def remove(self, service: str, instance_id: str) -> bool:
        return self._ref.remove(service, instance_id)

    def clear(self) -> None:
        self._ref.clear()

    def knows(self, service_id: bytes) -> bool:
        """True if a service with these 32 ID bytes has a SAL-capable instance."""
        return self._ref.knows(service_id)

    @property
    def version(self) -> int:
        """Change counter: equal values mean equal content."""
        return self._ref.version

    @property
    def instances(self) -> int:
        return self._ref.instances

    @property
    def services(self) -> int:
        return self._ref.services

    def rules(self, listeners: Iterable[tuple[int, str]], exclude: Iterable[str]) -> DesiredRules:
        """The desired table now: DEMUX for `listeners` ``(id, name)``, FORWARD for the rest."""
        return DesiredRules(self, tuple(listeners), tuple(exclude))


class DesiredRules(Sequence[Rule]):
    """The desired table of a `DesiredTable` at one version (see the module docstring)."""

    def __init__(self, table: DesiredTable, listeners: Listeners, exclude: tuple[str, ...]) -> None:
        self.table = table
        self.listeners = listeners
        self.exclude = exclude
        self.version = table.version
        self._count: int | None = None
        self._rules: tuple[Rule, ...] | None = None

    @property
    def content_key(self) -> tuple[object, ...]:
        """Equal keys mean equal content (the mirror's version and the inputs)."""
        return (self.table, self.version, self.listeners, self.exclude)

    def check_current(self) -> None:
        """Raise `RuntimeError` if the mirror changed since this view was taken."""
        if self.table.version != self.version:
            raise RuntimeError("the desired table changed since this view was taken")

    def apply_args(self) -> tuple[_native.DesiredRef, list[tuple[int, str]], list[str]]:
        """Arguments of the native ``apply_desired(generation, *args)`` (checks currency)."""
        self.check_current()
        return self.table.ref, list(self.listeners), list(self.exclude)

    def __len__(self) -> int:
        if self._count is None:
            self.check_current()
            self._count = self.table.ref.rule_count(list(self.listeners), list(self.exclude))
        return self._count

    @overload
    def __getitem__(self, index: int) -> Rule: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Rule]: ...
    def __getitem__(self, index: int | slice) -> Rule | Sequence[Rule]:
        return self._materialised()[index]

    def __iter__(self) -> Iterator[Rule]:
        return iter(self._materialised())

    def _materialised(self) -> tuple[Rule, ...]:
        if self._rules is None:
            self.check_current()
            native = self.table.ref.rules(list(self.listeners), list(self.exclude))
            self._rules = tuple(
                Rule(prefix, bits, RuleKind(kind), tuple(Target(*t) for t in targets), listener)
                for prefix, bits, kind, targets, listener in native
            )
        return self._rules
