"""Typed face of the Rust data path (`DatapathRef` in `_native`).

The contract is `docs/agent-datapath.md`; the design is in
`hostagent/sal_core/README.md` ("Data path"). In short:

- `Datapath.start(config)` binds the SAL listeners and starts the data path's own
  threads; Python is never on the per-byte path.
- The control plane hands it the whole service table (`apply_table`), registers
  local listeners (`listen`), asks for flows (`connect`, which takes ownership of
  the app's stream socket, or for a datagram flow a ``SOCK_SEQPACKET`` socket) and
  pulls events (`poll_events`, which blocks with the
  GIL released: from asyncio, call it via `asyncio.to_thread`).
- Events are the frozen dataclasses below. `Accepted.app_fd` is owned by the
  receiver (close it or hand it to the app). `Overflow` means events were lost:
  do a full resync (re-apply the table, re-list listeners).
- Stopping has two phases: `shutdown()` (returns at once: no new flows, flows
  reset) then `join(timeout_ms)`.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeAlias

from hostagent.sal_core import _native
from hostagent.sal_core.desired import DesiredRules
from hostagent.sal_core.table import ApplyResult, Rule

Addr: TypeAlias = tuple[str, int]

MAX_GREETING = 4096  # bytes; `Datapath.connect(greeting=...)` (MAX_GREETING in datapath/mod.rs)


@dataclass(frozen=True)
class DatapathConfig:
    """Tunables; `sal_listen` port 0 means any free port (see `Datapath.sal_addresses`)."""

    sal_listen: tuple[Addr, ...] = (("127.0.0.1", 0),)
    worker_threads: int = 2
    event_queue: int = 4096
    delay_limit: int = 1024
    send_buffer: int | None = None  # default 1 MiB per flow
    recv_window: int | None = None  # default 1 MiB per flow
    time_wait_ms: int = 2000
    resync_timeout_ms: int = 60000  # how long a flow whose path broke may stay frozen
    setup_timeout_ms: int = 3000  # per target, within the connect deadline
    path_timeout_ms: int = 20000  # a silent agent-to-agent connection counts as broken (0 = kernel's)
    dgram_keepalive_ms: int = 15000  # datagram flows: probe a peer silent this long (0 = off)
    dgram_keepalive_interval_ms: int = 5000  # between unanswered probes
    dgram_keepalive_probes: int = 3  # unanswered probes before the flow ends ("timeout")
    dgram_app_queue: int = 256  # messages queued toward an app that does not read (then dropped)


MAX_MESSAGE = 65467  # bytes; largest datagram-flow message (flow::MAX_MESSAGE)


@dataclass(frozen=True)
class Connected:
    """The flow is established; the app's socket now carries its bytes."""

    request_id: int
    flow_id: int
    target: Addr


@dataclass(frozen=True)
class ConnectFailed:
    """No target could be reached; `tried` is ``(ip:port, why)`` per target. The app fd is closed."""

    request_id: int
    reason: str
    tried: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Accepted:
    """A remote flow for a local listener; the receiver owns `app_fd`."""

    listener_id: int
    flow_id: int
    app_fd: int
    peer: Addr


@dataclass(frozen=True)
class Delayed:
    """A DELAY rule matched; answer with `Datapath.settle_delay`."""

    request_id: int
    service_id: bytes


@dataclass(frozen=True)
class Migrated:
    """The flow moved to a new agent-to-agent connection."""

    flow_id: int
    local: Addr
    remote: Addr


@dataclass(frozen=True)
class TargetFailed:
    """A target refused or was unreachable while `request_id` was set up."""

    request_id: int
    target: Addr
    reason: str


@dataclass(frozen=True)
class FlowClosed:
    """A flow ended: ``fin``, ``timeout`` or ``reset: <reason>[, by peer]``."""

    flow_id: int
    reason: str


@dataclass(frozen=True)
class Overflow:
    """`dropped` events were lost to a full queue: resync the whole state."""

    dropped: int


Event: TypeAlias = (
    Connected | ConnectFailed | Accepted | Delayed | Migrated | TargetFailed | FlowClosed | Overflow
)


def _addr(a: Any) -> Addr:
    return (str(a[0]), int(a[1]))


def _event(t: tuple[Any, ...]) -> Event:
    kind = t[0]
    if kind == "connected":
        return Connected(t[1], t[2], _addr(t[3]))
    if kind == "connect_failed":
        return ConnectFailed(t[1], t[2], tuple((str(a), str(w)) for a, w in t[3]))
    if kind == "accepted":
        return Accepted(t[1], t[2], t[3], _addr(t[4]))
    if kind == "delayed":
        return Delayed(t[1], bytes(t[2]))
    if kind == "migrated":
        return Migrated(t[1], _addr(t[2]), _addr(t[3]))
    if kind == "target_failed":
        return TargetFailed(t[1], _addr(t[2]), t[3])
    if kind == "flow_closed":
        return FlowClosed(t[1], t[2])
    if kind == "overflow":
        return Overflow(t[1])
    raise ValueError(f"unknown data-path event {kind!r}")


class Datapath:
    """A running data path (wraps `_native.DatapathRef`). Thread-safe."""

    def __init__(self, ref: _native.DatapathRef) -> None:
        self._ref = ref

    @classmethod
    def start(cls, config: DatapathConfig) -> Datapath:
        """Bind the SAL listeners and start the threads; `OSError` if binding fails."""
        ref = _native.DatapathRef(
            list(config.sal_listen),
            worker_threads=config.worker_threads,
            event_queue=config.event_queue,
            delay_limit=config.delay_limit,
            send_buffer=config.send_buffer,
            recv_window=config.recv_window,
            time_wait_ms=config.time_wait_ms,
            resync_timeout_ms=config.resync_timeout_ms,
            setup_timeout_ms=config.setup_timeout_ms,
            path_timeout_ms=config.path_timeout_ms,
            dgram_keepalive_ms=config.dgram_keepalive_ms,
            dgram_keepalive_interval_ms=config.dgram_keepalive_interval_ms,
            dgram_keepalive_probes=config.dgram_keepalive_probes,
            dgram_app_queue=config.dgram_app_queue,
        )
        return cls(ref)

    def sal_addresses(self) -> list[Addr]:
        """The bound SAL endpoints (what FORWARD rules elsewhere should name)."""
        return self._ref.sal_addresses()

    def apply_table(self, generation: int, rules: Iterable[Rule]) -> ApplyResult:
        """Replace the whole service table (same rules as `ServiceTable.apply`).

        A `DesiredRules` view is built into the table inside Rust (no `Rule` objects).
        """
        if isinstance(rules, DesiredRules):
            r = self._ref.apply_desired(generation, *rules.apply_args())
        else:
            r = self._ref.apply_table(generation, [rule.as_native() for rule in rules])
        return ApplyResult(
            applied=r["outcome"] == "applied",
            generation=int(r["generation"]),
            added=int(r["added"]),
            removed=int(r["removed"]),
            changed=int(r["changed"]),
        )

    def listen(self, listener_id: int, expose: Addr | None = None, datagram: bool = False) -> None:
        """Accept flows DEMUXed to `listener_id`; with `expose`, relay them to that local TCP server.

        `datagram=True`: a datagram listener (`Accepted.app_fd` is a ``SOCK_SEQPACKET``
        socket; stream SYNs for it are refused, and a stream listener refuses datagram
        SYNs); it cannot `expose` (`ValueError`).
        """
        self._ref.listen(listener_id, expose, datagram)

    def unlisten(self, listener_id: int) -> bool:
        """No new flows for `listener_id` (existing ones continue); False if unknown."""
        return self._ref.unlisten(listener_id)

    def connect(
        self,
        request_id: int,
        service_id: bytes | tuple[bytes, int],
        app: int | socket.socket,
        deadline_ms: int,
        greeting: bytes = b"",
        datagram: bool = False,
    ) -> None:
        """Set up a flow for the app's connected stream socket; answered by an event.

        Ownership of `app` passes to the data path when this returns (a socket
        object is detached); if it raises, the caller still owns it.
        `greeting` (at most `MAX_GREETING` bytes) is written to the app once the
        flow is established, before any byte from the peer; never on failure.
        `datagram=True`: a datagram flow (UDP semantics); `app` must be a
        ``SOCK_SEQPACKET`` socket (`ValueError` otherwise) and there is no greeting.
        """
        sid, bits = service_id if isinstance(service_id, tuple) else (service_id, 256)
        fd = app.fileno() if isinstance(app, socket.socket) else app
        self._ref.connect(request_id, sid, fd, deadline_ms, bits, greeting, datagram)
        if isinstance(app, socket.socket):
            app.detach()

    def settle_delay(self, request_id: int, release: bool) -> bool:
        """Answer a `Delayed` event: re-resolve (True) or fail it; False if not held."""
        return self._ref.settle_delay(request_id, release)

    def address_added(self, ip: str) -> None:
        self._ref.address_added(ip)

    def address_removed(self, ip: str) -> None:
        """Flows whose path used `ip` move to another local address (RSYN)."""
        self._ref.address_removed(ip)

    def poll_events(self, max_events: int = 256, timeout_ms: int = 0) -> list[Event]:
        """Up to `max_events` events, waiting up to `timeout_ms` (GIL released) if none."""
        return [_event(t) for t in self._ref.poll_events(max_events, timeout_ms)]

    def stats(self) -> dict[str, int]:
        return self._ref.stats()

    def debug_break_path(self, flow_id: int) -> bool:
        """Fault injection: reset the TCP connection under a flow (it then migrates)."""
        return self._ref.debug_break_path(flow_id)

    def shutdown(self) -> None:
        """Phase one of stopping: returns at once; flows are reset."""
        self._ref.shutdown()

    def join(self, timeout_ms: int) -> bool:
        """Phase two: wait (GIL released) for the threads; True if every flow ended in time."""
        return self._ref.join(timeout_ms)


def start(config: DatapathConfig) -> Datapath:
    """`Datapath.start` (the contract's ``start(config) -> Datapath``)."""
    return Datapath.start(config)


__all__ = [
    "MAX_GREETING",
    "MAX_MESSAGE",
    "Accepted",
    "Addr",
    "ConnectFailed",
    "Connected",
    "Datapath",
    "DatapathConfig",
    "Delayed",
    "Event",
    "FlowClosed",
    "Migrated",
    "Overflow",
    "TargetFailed",
    "start",
]
