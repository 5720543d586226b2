"""The control plane's seam to the data path (`docs/agent-datapath.md`).

`DatapathPort` is the contract's `Datapath` as a `typing.Protocol`: the agent
only ever talks to this. Production uses the Rust data path
(`hostagent.sal_core.datapath`, built by another issue) through
`open_datapath`; tests use `tests.fakes.datapath.FakeDatapath`.

Clarifications of the contract (the Rust wrapper follows them):
- `connect`'s `service_id` is the 32 raw bytes of the service ID and
  `deadline_ms` is a *relative* budget in milliseconds from the call (the two
  sides share no clock).
- Endpoints (`sal_addresses`, event targets and peers) are ``(ip, port)``.
- Calls other than `poll_events` and `join` do not block for long; the agent
  calls them on its event loop thread. `poll_events` runs in a worker thread,
  so the implementation must be thread-safe.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from hostagent.agent.events import Endpoint, Event
from hostagent.sal_core import datapath as native
from hostagent.sal_core.table import ApplyResult, Rule

STATS_KEYS = (
    "flows_active",
    "flows_opened",
    "flows_accepted",
    "bytes_in",
    "bytes_out",
    "migrations",
    "failovers",
    "connect_failures",
    "events_dropped",
    "flows_refused",
    "rsyn_rejected",
    # Datagram flows (UDP semantics): messages to / from local apps, dropped ones
    # (app not reading, oversized, flow not open), of those oversized, undecodable
    # or unroutable datagrams, keep-alive give-ups, open datagram flows (a gauge).
    "dgram_in",
    "dgram_out",
    "dgram_dropped",
    "dgram_oversized",
    "dgram_stray",
    "dgram_keepalive_timeouts",
    "dgram_flows_active",
)
GAUGE_KEYS = ("flows_active", "dgram_flows_active")


@dataclass(frozen=True)
class DatapathConfig:
    """What the data path needs to start: the SAL listen endpoints (port 0 = any), its queue bound
    and the path timeout (a silent agent-to-agent connection counts as broken; 0 = the kernel's)."""

    sal_listen: tuple[Endpoint, ...] = (("0.0.0.0", 0),)
    event_queue: int = 4096
    path_timeout_ms: int = 20000


class DatapathPort(Protocol):
    """A started data path. See the module docstring and the contract page for each call."""

    def sal_addresses(self) -> list[Endpoint]:
        """The bound SAL endpoints."""
        ...

    def apply_table(self, generation: int, rules: Sequence[Rule]) -> ApplyResult:
        """Install the whole desired table; same content = ``applied=False``; `ValueError` if refused."""
        ...

    def listen(self, listener_id: int, expose: Endpoint | None = None, datagram: bool = False) -> None:
        """Accept flows for DEMUX rules naming `listener_id` (as `Accepted` events, or to `expose`).

        `datagram=True`: a datagram listener; its `Accepted` fds are ``SOCK_SEQPACKET``
        sockets (one message per datagram); no `expose`."""
        ...

    def unlisten(self, listener_id: int) -> bool:
        """No new flows for `listener_id`; existing flows continue. False if it was unknown."""
        ...

    def connect(
        self,
        request_id: int,
        service_id: bytes,
        app: int,
        deadline_ms: int,
        greeting: bytes = b"",
        datagram: bool = False,
    ) -> None:
        """Take ownership of the fd `app` and answer later with `Connected` or `ConnectFailed`.

        `datagram=True`: a datagram flow (UDP semantics) for a ``SOCK_SEQPACKET`` `app`.

        If the call raises, the caller still owns the fd. `greeting` is written to
        the app once the flow is established, before any byte from the peer, and
        never if the set-up fails (the translator's SOCKS5 success reply)."""
        ...

    def settle_delay(self, request_id: int, release: bool) -> bool:
        """Answer a `Delayed` event: re-resolve (`release`) or fail the connect. False if not held."""
        ...

    def address_added(self, ip: str) -> None: ...

    def address_removed(self, ip: str) -> None: ...

    def poll_events(self, max_events: int, timeout_ms: int) -> list[Event]:
        """Up to `max_events` events, waiting at most `timeout_ms`; thread-safe, GIL released."""
        ...

    def stats(self) -> dict[str, int]:
        """Counters named in `STATS_KEYS` (missing keys read as 0); thread-safe."""
        ...

    def shutdown(self) -> None:
        """Phase one of the stop: stop accepting, reset flows, signal the threads."""
        ...

    def join(self, timeout_ms: int) -> bool:
        """Phase two: wait for the threads; True when they have all ended."""
        ...


class DatapathUnavailable(RuntimeError):
    """The Rust data path is not built into this installation."""


DATAPATH_MODULE = "hostagent.sal_core.datapath"


def open_datapath(config: DatapathConfig) -> DatapathPort:
    """Start the Rust data path (imported lazily); `DatapathUnavailable` if it is not installed.

    There is deliberately no fallback to a fake: an agent without a data path
    would register listeners that nobody can reach.
    """
    try:
        module: Any = importlib.import_module(DATAPATH_MODULE)
    except ImportError as e:
        raise DatapathUnavailable(
            f"the SAL data path ({DATAPATH_MODULE}) is not available in this build: {e}; "
            "rebuild the Rust extension (make dev) with the data path included"
        ) from e
    native_config = module.DatapathConfig(
        sal_listen=tuple(config.sal_listen),
        event_queue=config.event_queue,
        path_timeout_ms=config.path_timeout_ms,
    )
    port: DatapathPort = module.Datapath.start(native_config)
    return port


def _conforms(datapath: native.Datapath) -> DatapathPort:
    """Never called: makes mypy check that the Rust data path's wrapper satisfies `DatapathPort`."""
    return datapath
