"""Typed face of the Rust service table (`ServiceTableRef` in `_native`).

The control plane builds the whole desired table as `Rule` values and calls
`ServiceTable.apply(generation, rules)`; the data path resolves service IDs
with `choose`. Everything crosses the boundary as plain values: rules go in as
tuples, answers come back as the frozen dataclasses below.

Contract (enforced by the Rust core, see `hostagent/sal_core/README.md`):
- `apply` replaces the whole table atomically: concurrent lookups see the old
  or the new table, never a mix, and never wait for the build (the GIL is
  released while it runs). The same content again is ``no_change``; different
  content with a generation not above the current one is refused.
- Invalid rules (bad prefix, duplicate targets, targets on a DROP rule, ...)
  raise `ValueError` naming the problem; the table is then unchanged.
- FORWARD targets: only the best (lowest-numbered) tier with an eligible
  target (weight > 0) is used; `choose` is deterministic for a flow key.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from hostagent.sal_core import _native


class RuleKind(StrEnum):
    FORWARD = "forward"  # to one of the targets
    DEMUX = "demux"  # to a local listener
    DELAY = "delay"  # ask the control plane first
    DROP = "drop"


@dataclass(frozen=True)
class Target:
    """A FORWARD target: an IP literal and port, a weight (0 = drained) and a tier (lower = preferred)."""

    host: str
    port: int
    weight: int = 1
    tier: int = 0


@dataclass(frozen=True)
class Rule:
    """What to do with IDs under `prefix` (32 bytes; the first `prefix_bits` bits count)."""

    prefix: bytes
    prefix_bits: int
    kind: RuleKind
    targets: tuple[Target, ...] = ()
    listener: int | None = None

    @classmethod
    def for_name(
        cls, name: str, kind: RuleKind, targets: Sequence[Target] = (), listener: int | None = None
    ) -> Rule:
        """The rule for a service name's ID prefix (32 bits per label)."""
        prefix, bits = _native.service_id(name)
        return cls(prefix, bits, kind, tuple(targets), listener)

    def as_native(self) -> tuple[bytes, int, str, list[tuple[str, int, int, int]], int | None]:
        targets = [(t.host, t.port, t.weight, t.tier) for t in self.targets]
        return (self.prefix, self.prefix_bits, self.kind.value, targets, self.listener)


@dataclass(frozen=True)
class ApplyResult:
    """What an apply did: `applied` False means identical content ("no change")."""

    applied: bool
    generation: int
    added: int
    removed: int
    changed: int


@dataclass(frozen=True)
class Match:
    """The longest matching rule's kind and prefix."""

    kind: RuleKind
    prefix: bytes
    prefix_bits: int


@dataclass(frozen=True)
class Choice:
    """A resolution: `kind` is a rule kind, ``no_target`` (every target excluded or drained)
    or ``no_route`` (no rule matched); `target` is set for FORWARD, `listener` for DEMUX."""

    kind: str
    target: tuple[str, int] | None = None
    listener: int | None = None


@dataclass(frozen=True)
class TargetCount:
    host: str
    port: int
    chosen: int


@dataclass(frozen=True)
class RuleCount:
    prefix: bytes
    prefix_bits: int
    kind: RuleKind
    hits: int
    targets: tuple[TargetCount, ...] = field(default=())


@dataclass(frozen=True)
class Counters:
    """A snapshot of the table's counters (`no_route`: lookups that matched no rule)."""

    generation: int
    no_route: int
    rules: tuple[RuleCount, ...]


class ServiceTable:
    """One host's service table (wraps `_native.ServiceTableRef`). Thread-safe."""

    def __init__(self) -> None:
        self._ref = _native.ServiceTableRef()

    @property
    def generation(self) -> int:
        return self._ref.generation

    def apply(self, generation: int, rules: Iterable[Rule]) -> ApplyResult:
        """Replace the whole table (see module docstring); `ValueError` if refused.

        A `sal_core.desired.DesiredRules` view is built into the table inside Rust.
        """
        from hostagent.sal_core.desired import DesiredRules  # here: that module imports this one

        if isinstance(rules, DesiredRules):
            r = self._ref.apply_desired(generation, *rules.apply_args())
        else:
            r = self._ref.apply(generation, [rule.as_native() for rule in rules])
        return ApplyResult(
            applied=r["outcome"] == "applied",
            generation=int(r["generation"]),
            added=int(r["added"]),
            removed=int(r["removed"]),
            changed=int(r["changed"]),
        )

    def lookup(self, service_id: bytes) -> Match | None:
        """The longest-prefix rule for a 32-byte ID; counts nothing."""
        found = self._ref.lookup(service_id)
        return None if found is None else Match(RuleKind(found[0]), found[1], found[2])

    def choose(self, service_id: bytes, flow_key: int, exclude: Iterable[tuple[str, int]] = ()) -> Choice:
        """Resolve an ID for a flow (a u64 key), skipping `exclude`d targets; counts the result."""
        kind, target, listener = self._ref.choose(service_id, flow_key, list(exclude))
        return Choice(kind, target, listener)

    def all_targets(self, service_id: bytes) -> list[tuple[str, int]]:
        """Every eligible target of the best tier of the matching FORWARD rule ("send to all")."""
        return self._ref.all_targets(service_id)

    def counters(self) -> Counters:
        generation, no_route, rules = self._ref.counters()
        return Counters(
            generation,
            no_route,
            tuple(
                RuleCount(p, bits, RuleKind(kind), hits, tuple(TargetCount(*t) for t in targets))
                for p, bits, kind, hits, targets in rules
            ),
        )
