"""In-memory data path honouring `hostagent.agent.datapath.DatapathPort` (tests only).

What it does, per the contract in `docs/agent-datapath.md`:
- `apply_table`: whole tables, versioned; identical content → ``applied=False``;
  different content with a generation not above the current one, or a FORWARD
  rule with duplicate targets, → `ValueError` (table unchanged). Every
  accepted apply is recorded in `tables`.
- `connect`: takes ownership of the fd. Longest-prefix match on the current
  table. FORWARD: eligible targets (weight > 0) best tier first, then the
  next tiers (failover); a target counts as reachable when it is in
  `reachable` (default: every target). The first reachable one gives
  `Connected` and the data path's end of the stream is kept in `flows`
  (tests talk to the app through it); unreachable ones give `TargetFailed`
  and an ``("ip:port", "refused")`` entry in `ConnectFailed.tried`. DEMUX to a
  local listener: the fd itself is handed to the listener as `Accepted`
  (a local short-cut: the two apps talk directly). A `greeting` is written
  to the app's socket on success, before anything else. DELAY → `Delayed`; no
  rule → ``ConnectFailed("no route")``.
- `inject_accept(listener_id)`: a remote flow arrives; returns the remote
  side's socket, whose bytes reach the app through the delivered fd.
- Datagram flows (`listen(..., datagram=True)`, `connect(..., datagram=True)`):
  the app fd must be a ``SOCK_SEQPACKET`` socket (`ValueError` otherwise, the
  caller keeps it); a listener takes only flows of its kind (a local DEMUX to a
  listener of the other kind fails with ``no service``); `inject_accept` on a
  datagram listener hands over a seqpacket socket. `expose` with
  ``datagram=True`` → `ValueError`.
- Events queue up to `queue_size`; past that they are dropped and an
  `Overflow` is queued once room is back (like the bounded Rust queue).
Thread-safe: `poll_events` runs in the agent's worker thread.
"""

from __future__ import annotations

import itertools
import socket
import threading
from collections import Counter, deque
from collections.abc import Sequence

from hostagent.agent.datapath import DatapathConfig, DatapathPort
from hostagent.agent.events import (
    Accepted,
    Connected,
    ConnectFailed,
    Delayed,
    Endpoint,
    Event,
    FlowClosed,
    Overflow,
    TargetFailed,
)
from hostagent.sal_core.datapath import MAX_GREETING
from hostagent.sal_core.table import ApplyResult, Rule, RuleKind, Target


class FakeDatapath:
    def __init__(self, config: DatapathConfig | None = None, *, queue_size: int = 1024) -> None:
        config = config or DatapathConfig(sal_listen=(("127.0.0.1", 0),))
        self.config = config
        self._sal = [(ip, port or 17946 + i) for i, (ip, port) in enumerate(config.sal_listen)]
        self.queue_size = queue_size
        self.tables: list[tuple[int, tuple[Rule, ...]]] = []
        self.generation = 0
        self.rules: tuple[Rule, ...] = ()
        self.listening: dict[int, Endpoint | None] = {}
        self.datagram_listeners: set[int] = set()
        self.datagram_flows: set[int] = set()
        self.listen_calls: list[int] = []
        self.addresses: set[str] = set()
        self.address_log: list[tuple[str, str]] = []
        self.reachable: set[Endpoint] | None = None  # None: every target is reachable
        self.flows: dict[int, socket.socket] = {}
        self.settled: list[tuple[int, bool]] = []
        self.counters: Counter[str] = Counter()
        self.stopped = False
        self._delayed: dict[int, tuple[bytes, socket.socket]] = {}
        self._greetings: dict[int, bytes] = {}
        self._events: deque[Event] = deque()
        self._dropped = 0
        self._cond = threading.Condition()
        self._flow_ids = itertools.count(1)

    @classmethod
    def start(cls, config: DatapathConfig) -> FakeDatapath:
        return cls(config)

    def sal_addresses(self) -> list[Endpoint]:
        return list(self._sal)

    # ---- table ---------------------------------------------------------------

    def apply_table(self, generation: int, rules: Sequence[Rule]) -> ApplyResult:
        new = tuple(sorted(rules, key=lambda r: (r.prefix, r.prefix_bits)))
        with self._cond:
            if new == self.rules and self.tables:
                return ApplyResult(False, self.generation, 0, 0, 0)
            if generation <= self.generation:
                raise ValueError(f"generation {generation} is not above {self.generation}")
            for rule in new:
                hosts = [(t.host, t.port) for t in rule.targets]
                if len(set(hosts)) != len(hosts):
                    raise ValueError(f"duplicate target in rule {rule.prefix.hex()}/{rule.prefix_bits}")
            old = {(r.prefix, r.prefix_bits): r for r in self.rules}
            cur = {(r.prefix, r.prefix_bits): r for r in new}
            added = len(cur.keys() - old.keys())
            removed = len(old.keys() - cur.keys())
            changed = sum(1 for k in cur.keys() & old.keys() if cur[k] != old[k])
            self.generation, self.rules = generation, new
            self.tables.append((generation, new))
            return ApplyResult(True, generation, added, removed, changed)

    def lookup(self, service_id: bytes) -> Rule | None:
        """The longest-prefix rule for a 32-byte ID in the current table."""
        value = int.from_bytes(service_id, "big")
        best: Rule | None = None
        for rule in self.rules:
            shift = 256 - rule.prefix_bits
            if value >> shift == int.from_bytes(rule.prefix, "big") >> shift and (
                best is None or rule.prefix_bits > best.prefix_bits
            ):
                best = rule
        return best

    # ---- listeners and flows ------------------------------------------------------

    def listen(self, listener_id: int, expose: Endpoint | None = None, datagram: bool = False) -> None:
        if datagram and expose is not None:
            raise ValueError("a datagram listener cannot expose a TCP server")
        with self._cond:
            self.listening[listener_id] = expose
            self.listen_calls.append(listener_id)
            if datagram:
                self.datagram_listeners.add(listener_id)
            else:
                self.datagram_listeners.discard(listener_id)

    def unlisten(self, listener_id: int) -> bool:
        with self._cond:
            self.datagram_listeners.discard(listener_id)
            return self.listening.pop(listener_id, None) is not None

    def connect(
        self,
        request_id: int,
        service_id: bytes,
        app: int,
        deadline_ms: int,
        greeting: bytes = b"",
        datagram: bool = False,
    ) -> None:
        if len(greeting) > MAX_GREETING:
            raise ValueError(f"greeting longer than {MAX_GREETING} bytes")
        if datagram:
            kind = socket.socket(fileno=app)
            is_seqpacket = kind.type == socket.SOCK_SEQPACKET
            kind.detach()
            if greeting or not is_seqpacket:
                raise ValueError("a datagram connect takes a SOCK_SEQPACKET socket and no greeting")
            self.datagram_flows.add(request_id)
        self._greetings[request_id] = greeting
        self._resolve(request_id, service_id, socket.socket(fileno=app))

    def settle_delay(self, request_id: int, release: bool) -> bool:
        self.settled.append((request_id, release))
        if request_id not in self._delayed:
            return False
        service_id, sock = self._delayed.pop(request_id)
        if release:
            self._resolve(request_id, service_id, sock, allow_delay=False)
        else:
            sock.close()
            self._emit(ConnectFailed(request_id, "dropped by the control plane", ()))
        return True

    def _resolve(self, request_id: int, sid: bytes, sock: socket.socket, allow_delay: bool = True) -> None:
        rule = self.lookup(sid)
        if rule is None or (rule.kind == RuleKind.DELAY and not allow_delay):
            return self._fail(request_id, sock, "no route")
        if rule.kind == RuleKind.DELAY:
            self._delayed[request_id] = (sid, sock)
            return self._emit(Delayed(request_id, sid))
        datagram = request_id in self.datagram_flows
        if rule.kind == RuleKind.DEMUX and rule.listener in self.listening:
            if (rule.listener in self.datagram_listeners) != datagram:
                return self._fail(request_id, sock, "no service")
            self._greet(request_id, sock)
            flow_id = next(self._flow_ids)
            self._emit(Connected(request_id, flow_id, self._sal[0]))
            self.counters["flows_opened"] += 1
            self.counters["flows_accepted"] += 1
            return self._emit(Accepted(rule.listener, flow_id, sock.detach(), self._sal[0]))
        if rule.kind != RuleKind.FORWARD:
            return self._fail(request_id, sock, f"{rule.kind.value} rule")
        tried = []
        for target in self._eligible(rule.targets):
            endpoint = (target.host, target.port)
            if self.reachable is None or endpoint in self.reachable:
                self._greet(request_id, sock)
                flow_id = next(self._flow_ids)
                self.flows[flow_id] = sock
                self.counters["flows_opened"] += 1
                self.counters["flows_active"] += 1
                return self._emit(Connected(request_id, flow_id, endpoint))
            self._emit(TargetFailed(request_id, endpoint, "refused"))
            self.counters["failovers"] += 1
            tried.append((f"{target.host}:{target.port}", "refused"))
        self._fail(request_id, sock, "no target reachable", tried)

    def _greet(self, request_id: int, sock: socket.socket) -> None:
        """The flow is established: the greeting goes to the app before anything else."""
        greeting = self._greetings.pop(request_id, b"")
        if greeting:
            sock.sendall(greeting)

    @staticmethod
    def _eligible(targets: Sequence[Target]) -> list[Target]:
        return sorted((t for t in targets if t.weight > 0), key=lambda t: (t.tier, -t.weight, t.host, t.port))

    def _fail(
        self, request_id: int, sock: socket.socket, reason: str, tried: Sequence[tuple[str, str]] = ()
    ) -> None:
        self._greetings.pop(request_id, None)
        sock.close()
        self.counters["connect_failures"] += 1
        self._emit(ConnectFailed(request_id, reason, tuple(tried)))

    def inject_accept(self, listener_id: int, peer: Endpoint = ("10.9.9.9", 40000)) -> socket.socket:
        """A remote flow for `listener_id` arrives; return the remote end of its stream
        (of its message socket, for a datagram listener)."""
        kind = socket.SOCK_SEQPACKET if listener_id in self.datagram_listeners else socket.SOCK_STREAM
        remote, local = socket.socketpair(socket.AF_UNIX, kind)
        flow_id = next(self._flow_ids)
        self.counters["flows_accepted"] += 1
        self._emit(Accepted(listener_id, flow_id, local.detach(), peer))
        return remote

    def close_flow(self, flow_id: int, reason: str = "fin") -> None:
        sock = self.flows.pop(flow_id)
        sock.close()
        self.counters["flows_active"] -= 1
        self._emit(FlowClosed(flow_id, reason))

    # ---- host addresses ------------------------------------------------------------

    def address_added(self, ip: str) -> None:
        self.addresses.add(ip)
        self.address_log.append(("added", ip))

    def address_removed(self, ip: str) -> None:
        self.addresses.discard(ip)
        self.address_log.append(("removed", ip))

    # ---- events, stats, stop ---------------------------------------------------

    def inject(self, event: Event) -> None:
        """Queue any event (tests)."""
        self._emit(event)

    def _emit(self, event: Event) -> None:
        with self._cond:
            if len(self._events) >= self.queue_size:
                self._dropped += 1
                self.counters["events_dropped"] += 1
                if isinstance(event, Accepted):
                    socket.close(event.app_fd)
                return
            self._events.append(event)
            self._cond.notify_all()

    def poll_events(self, max_events: int, timeout_ms: int) -> list[Event]:
        with self._cond:
            if not self._events and not self._dropped:
                self._cond.wait(timeout_ms / 1000)
            out: list[Event] = []
            if self._dropped and len(self._events) < self.queue_size:
                out.append(Overflow(self._dropped))
                self._dropped = 0
            while self._events and len(out) < max_events:
                out.append(self._events.popleft())
            return out

    def stats(self) -> dict[str, int]:
        with self._cond:
            return dict(self.counters)

    def shutdown(self) -> None:
        with self._cond:
            self.stopped = True
            for sock in self.flows.values():
                sock.close()
            self.flows.clear()
            for _, sock in self._delayed.values():
                sock.close()
            self._delayed.clear()
            self._cond.notify_all()

    def join(self, timeout_ms: int) -> bool:
        return self.stopped

    def close_pending_fds(self) -> None:
        """Close the fds of undelivered `Accepted` events (test teardown)."""
        with self._cond:
            for event in self._events:
                if isinstance(event, Accepted):
                    socket.close(event.app_fd)
            self._events.clear()


def as_port(fake: FakeDatapath) -> DatapathPort:
    """The fake typed as the seam (mypy checks that it satisfies `DatapathPort`)."""
    return fake
