"""The dashboard's read model: services, instances, agents, recent events and propagation.

Pure: no I/O, no clock, no asyncio. The feed (`dashboard.feed`) hands it every
watch message with the wall time it arrived (`apply(msg, now)`); the API and the
pages only read it. One owner task mutates it; readers run on the same event
loop, so they never see a half-applied message.

Contract:
- `service_names` is kept sorted as instances come and go (bisect, O(log n) to
  find plus a memmove), so a page of services is a slice, never a sort;
  a substring search is one pass over the sorted names, stopping once the page
  is full.
- Counters (`instances`, `usable`, `drained`) are maintained per change, not
  recounted per request.
- A SNAPSHOT series replaces the content at its SNAPSHOT_END; deltas update it.
- `events` holds the most recent `max_events` deltas; `latencies` the most
  recent `max_latencies` registration → dashboard samples (see `LATENCY_KEY`).
- `propagation` holds the most recent `max_propagation` registration → agent
  samples the registry replicas measured (`ClusterStatus.propagation`, see
  `registry.api.fanout`); `add_propagation` takes a replica's whole current
  window each poll and keeps only the samples it has not seen before.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from registry.api import convert
from registry.api.v1 import registry_pb2 as pb
from registry.model import Instance

AGENTS_SERVICE = "agents.serval"  # hostagent.agent.desired.AGENTS_SERVICE (not imported: no Rust here)
VERSION_KEY = "serval.version"
AGENT_SUBSCRIBER = "agent/"  # host agents watch as subscriber "agent/<agent id>"
# Unix time in nanoseconds at which the registering client sent the registration.
# Clients that set it (the dashboard benchmark, tests, `serval register` could)
# get a registration → dashboard latency sample; nothing else carries a time.
LATENCY_KEY = "serval.registered_at_ns"


@dataclass(frozen=True, slots=True)
class Event:
    """One change seen by the dashboard: `instance` is None for a removal."""

    seq: int
    at: float
    revision: int
    service: str
    instance_id: str
    kind: str  # "put" | "delete"
    instance: Instance | None


@dataclass(frozen=True, slots=True)
class Propagation:
    """One registration → subscriber propagation sample, as a registry replica measured it."""

    at: float  # unix seconds the replica took it
    seconds: float
    subscriber: str
    replica: str
    revision: int


@dataclass(frozen=True, slots=True)
class Counts:
    services: int
    instances: int
    usable: int
    drained: int
    agents: int
    revision: int


@dataclass(frozen=True, slots=True)
class ServiceRow:
    name: str
    instances: int
    usable: int
    drained: int


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[ServiceRow]
    total: int  # rows matching the query (exact when `total_exact`)
    total_exact: bool
    offset: int
    limit: int


def usable(inst: Instance) -> bool:
    """An instance new flows may go to: not drained, weight > 0."""
    return not inst.drained and inst.weight > 0


@dataclass
class Model:
    """Every instance by service, at `revision`, with the indexes the pages need."""

    max_events: int = 1000
    max_latencies: int = 4096
    revision: int = 0
    services: dict[str, dict[str, Instance]] = field(default_factory=dict)
    service_names: list[str] = field(default_factory=list)  # sorted
    instance_count: int = 0
    usable_count: int = 0
    drained_count: int = 0
    events: deque[Event] = field(default_factory=deque)
    latencies: deque[tuple[float, float]] = field(default_factory=deque)  # (at, seconds)
    max_propagation: int = 8192
    propagation: deque[Propagation] = field(default_factory=deque)
    _propagation_seen: dict[str, set[tuple[int, str, int]]] = field(default_factory=dict)
    in_snapshot: bool = False
    last_message_at: float = 0.0
    _seq: int = 0
    _pending: dict[tuple[str, str], Instance] = field(default_factory=dict)

    # ---- writes (the feed's task only) ----

    def apply(self, msg: pb.WatchResponse, now: float) -> list[Event]:
        """Apply one watch message received at `now` (unix seconds); return the events it caused."""
        self.last_message_at = now
        if msg.kind in (pb.WatchResponse.SNAPSHOT, pb.WatchResponse.SNAPSHOT_END):
            return self._snapshot_part(msg, now)
        out: list[Event] = []
        for d in msg.deltas:
            if d.kind == pb.InstanceDelta.DELETE:
                old = self._remove(d.instance.service, d.instance.instance_id)
                if old is not None:
                    out.append(self._event(now, d.revision, old.service, old.instance_id, None))
            else:
                inst = convert.instance_from_wire(d.instance)
                self._put(inst)
                out.append(self._event(now, d.revision, inst.service, inst.instance_id, inst))
                self._sample_latency(inst, now)
        self.revision = max(self.revision, msg.revision)
        return out

    def _snapshot_part(self, msg: pb.WatchResponse, now: float) -> list[Event]:
        if msg.snapshot_start:
            self._pending.clear()
        self.in_snapshot = msg.kind == pb.WatchResponse.SNAPSHOT
        for i in msg.instances:
            inst = convert.instance_from_wire(i)
            self._pending[inst.key] = inst
        if self.in_snapshot:
            return []
        return self._replace(msg.revision, now)

    def _replace(self, revision: int, now: float) -> list[Event]:
        """Swap in the finished snapshot; the differences become events."""
        new, self._pending = self._pending, {}
        out: list[Event] = []
        for svc in list(self.services):
            for iid in list(self.services[svc]):
                if (svc, iid) not in new:
                    self._remove(svc, iid)
                    out.append(self._event(now, revision, svc, iid, None))
        for (svc, iid), inst in sorted(new.items()):
            if self.services.get(svc, {}).get(iid) != inst:
                self._put(inst)
                out.append(self._event(now, revision, svc, iid, inst))
        self.revision = max(self.revision, revision)
        return out

    def _put(self, inst: Instance) -> None:
        by_id = self.services.get(inst.service)
        if by_id is None:
            by_id = self.services[inst.service] = {}
            bisect.insort(self.service_names, inst.service)
        old = by_id.get(inst.instance_id)
        if old is not None:
            self._count(old, -1)
        by_id[inst.instance_id] = inst
        self._count(inst, +1)

    def _remove(self, service: str, instance_id: str) -> Instance | None:
        by_id = self.services.get(service)
        old = None if by_id is None else by_id.pop(instance_id, None)
        if old is None:
            return None
        self._count(old, -1)
        if not by_id:
            del self.services[service]
            i = bisect.bisect_left(self.service_names, service)
            del self.service_names[i]
        return old

    def _count(self, inst: Instance, sign: int) -> None:
        self.instance_count += sign
        self.usable_count += sign * usable(inst)
        self.drained_count += sign * inst.drained

    def _event(self, now: float, rev: int, svc: str, iid: str, inst: Instance | None) -> Event:
        self._seq += 1
        ev = Event(self._seq, now, rev, svc, iid, "delete" if inst is None else "put", inst)
        self.events.append(ev)
        while len(self.events) > self.max_events:
            self.events.popleft()
        return ev

    def _sample_latency(self, inst: Instance, now: float) -> None:
        stamp = inst.metadata.get(LATENCY_KEY, "")
        if not stamp.isdigit() or inst.create_revision != inst.mod_revision:
            return  # only the registration itself, not later weight/drain changes
        self.latencies.append((now, max(0.0, now - int(stamp) / 1e9)))
        while len(self.latencies) > self.max_latencies:
            self.latencies.popleft()

    # ---- reads ----

    def counts(self) -> Counts:
        agents = len(self.services.get(AGENTS_SERVICE, {}))
        return Counts(
            services=len(self.services),
            instances=self.instance_count,
            usable=self.usable_count,
            drained=self.drained_count,
            agents=agents,
            revision=self.revision,
        )

    def row(self, name: str) -> ServiceRow:
        by_id = self.services.get(name, {})
        n_usable = sum(1 for i in by_id.values() if usable(i))
        n_drained = sum(1 for i in by_id.values() if i.drained)
        return ServiceRow(name, len(by_id), n_usable, n_drained)

    def search(self, query: str = "", status: str = "all", offset: int = 0, limit: int = 50) -> Page:
        """Services whose name contains `query`, filtered by `status`, in name order.

        `status`: ``all``, ``degraded`` (some instance not usable), ``down`` (none
        usable). Without a filter the page is a slice of the sorted index; with
        one, the scan stops after the page (total is then only a lower bound
        unless the scan reached the end).
        """
        if not query and status == "all":
            names = self.service_names[offset : offset + limit]
            return Page([self.row(n) for n in names], len(self.service_names), True, offset, limit)
        rows: list[ServiceRow] = []
        matched = 0
        exact = True
        for name in self._matching(query):
            if status != "all":
                r = self.row(name)
                if (status == "down" and r.usable) or (status == "degraded" and r.usable == r.instances):
                    continue
            if offset <= matched < offset + limit:
                rows.append(self.row(name))
            matched += 1
            if matched >= offset + limit + 1000:  # enough to say "more"; stop scanning
                exact = False
                break
        return Page(rows, matched, exact, offset, limit)

    def _matching(self, query: str) -> Iterator[str]:
        q = query.lower()
        for name in self.service_names:
            if q in name:
                yield name

    def instances_of(self, service: str) -> list[Instance] | None:
        by_id = self.services.get(service)
        if by_id is None:
            return None
        return sorted(by_id.values(), key=lambda i: (i.tier, -i.weight, i.instance_id))

    def agents(self) -> list[Instance]:
        return sorted(self.services.get(AGENTS_SERVICE, {}).values(), key=lambda i: i.instance_id)

    def recent_events(self, after: int = 0, limit: int = 100) -> list[Event]:
        """Events with seq > `after`, newest last, at most `limit` (the newest)."""
        out = [e for e in self.events if e.seq > after]
        return out[-limit:]

    def add_propagation(self, replica: str, samples: Iterable[pb.PropagationSample]) -> int:
        """Take `replica`'s current sample window; keep the new samples; return how many."""
        seen = self._propagation_seen.get(replica, set())
        keys: set[tuple[int, str, int]] = set()
        new = []
        for s in samples:
            key = (s.at_unix_ms, s.subscriber_id, s.revision)
            keys.add(key)
            if key not in seen:
                new.append(Propagation(s.at_unix_ms / 1000, s.seconds, s.subscriber_id, replica, s.revision))
        self._propagation_seen[replica] = keys
        self.propagation.extend(sorted(new, key=lambda p: p.at))
        while len(self.propagation) > self.max_propagation:
            self.propagation.popleft()
        return len(new)

    def propagation_window(self, now: float, window: float = 300.0) -> dict[str, object]:
        """p50/p99/max of the last `window` seconds' samples: over the host agents' (subscribers
        ``agent/...``), and per subscriber, any kind (slowest p99 first)."""
        recent = self.recent_propagation(now, window)
        by_subscriber: dict[str, list[float]] = {}
        for p in recent:
            by_subscriber.setdefault(p.subscriber, []).append(p.seconds)
        stats = sorted(
            ((name, summary(values)) for name, values in by_subscriber.items()),
            key=lambda item: (-item[1]["p99"], item[0]),
        )
        per = [{"subscriber": name, **figures} for name, figures in stats]
        agents = [p.seconds for p in recent if p.subscriber.startswith(AGENT_SUBSCRIBER)]
        return {**summary(agents), "subscribers": per}

    def recent_propagation(
        self, now: float, window: float = 300.0, agents_only: bool = False
    ) -> list[Propagation]:
        """Samples of the last `window` seconds (only the host agents' with `agents_only`)."""
        return [
            p
            for p in self.propagation
            if p.at >= now - window and (not agents_only or p.subscriber.startswith(AGENT_SUBSCRIBER))
        ]

    def latency_window(self, now: float, window: float = 300.0) -> dict[str, float]:
        """p50/p99/max of registration → dashboard samples of the last `window` seconds."""
        return summary([s for at, s in self.latencies if at >= now - window])


def summary(values: list[float]) -> dict[str, float]:
    """Sample count, p50, p99 and max of `values` (any order); zeros when empty."""
    ordered = sorted(values)
    return {
        "samples": float(len(ordered)),
        "p50": percentile(ordered, 50),
        "p99": percentile(ordered, 99),
        "max": ordered[-1] if ordered else 0.0,
    }


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list; 0 when empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, -(-len(sorted_values) * p // 100))
    return sorted_values[min(len(sorted_values), int(rank)) - 1]
