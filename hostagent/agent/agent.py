"""The `serval agent` process: every part wired into one asyncio loop.

Start order (each step needs the previous ones):
 1. the data path (binds the SAL listeners; `open_datapath` or an injected factory);
 2. the host's addresses, read once and reported with `address_added`;
 3. the registry session (lease) and the host record on it;
 4. background tasks: lease keep-alive, registry watch → mirror (`mirror.py`:
    a compact Rust mirror the table is built from, no Python object per instance), the
    extra discovery back-ends if configured (`discovery.py`: static file, LAN, DNS,
    merged by a `resolver.merge.Resolver`; their SAL-capable endpoints join the same
    table), the debounced reconciler (an initial, empty table is applied at once), the
    data-path event pump, the address poller;
 5. the local API socket (apps can now listen/connect);
 6. legacy access (`legacy.py`, if configured): SOCKS5 and upstream listeners
    bound, exposed servers registered (a bind or registry failure fails the start);
 7. the metrics HTTP server (if a port is configured).

Stop order is the reverse, so nothing serves on a half-stopped agent:
metrics → address poller → legacy access (listeners closed, handshakes and
set-ups in progress abandoned, exposed servers unlistened and deregistered;
relayed flows continue in the data path until its shutdown) → local API (every listener is closed:
unlisten + deregister) → event pump (drains the poll in flight) → lease
keep-alive, host record deregistered, lease revoked → registry watch, discovery
back-ends and reconciler → registry client → data path `shutdown()` then `join()`.

`run()` returns when `request_stop()` is called, and raises when a
background task fails (e.g. a non-retryable registry error): an agent that
cannot do its job stops instead of serving a stale table. The failure is
logged before stopping; a service task that ends by a cancellation nobody
asked for counts as a failure too.

Address changes (the poller; addresses of interfaces that are down count as
gone): removed addresses go to the data path first (its flows move), then
added ones; after a removal the registry connection is reopened at once (it
may have used the removed address and would otherwise hang until a deadline,
which can be longer than the lease TTL), and the listeners and host record
are re-registered with the new addresses (retried until it works).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hostagent.agent import metrics as agent_metrics
from hostagent.agent.control import Control
from hostagent.agent.datapath import DatapathConfig, DatapathPort, open_datapath
from hostagent.agent.desired import AGENTS_SERVICE
from hostagent.agent.discovery import (
    AnnouncingRegistrar,
    ExtraSources,
    build_announcer,
    build_resolver,
)
from hostagent.agent.events import Endpoint, EventPump
from hostagent.agent.host_record import HostRecord
from hostagent.agent.interfaces import AddressPoller, Reader, advertised_addresses, read_host_addresses
from hostagent.agent.legacy import LegacyAccess, LegacyConfig
from hostagent.agent.listeners import HostIdentity
from hostagent.agent.local_api import LocalApi
from hostagent.agent.metrics import AgentGauges, MetricsServer
from hostagent.agent.mirror import AgentMirror
from hostagent.agent.reconcile import Reconciler
from hostagent.agent.registry_link import RegistryLink
from hostagent.agent.session import NO_REGISTRY, Registrar, RegistrySession
from hostagent.localproto import DEFAULT_SOCKET
from hostagent.sal_core.desired import DesiredRules, DesiredTable
from registry import __version__
from registry.api import transport_grpclib
from registry.api.client import RegistryClient
from resolver.sources import DiscoveryConfig

log = logging.getLogger(__name__)

DatapathFactory = Callable[[DatapathConfig], DatapathPort]


@dataclass(frozen=True)
class AgentConfig:
    """Everything `serval agent` is configured with (see `deploy/cli.py` for the flags)."""

    registry: Sequence[str]
    agent_id: str
    zone: str = ""
    region: str = ""
    socket_path: Path = Path(DEFAULT_SOCKET)
    socket_group: str | None = None
    sal_listen: tuple[Endpoint, ...] = (("0.0.0.0", 0),)
    metrics_port: int | None = None
    metrics_addr: str = "127.0.0.1"
    address_poll: float = 1.0
    lease_ttl: int = 10
    path_timeout: float = 20.0  # seconds; a silent agent-to-agent connection counts as broken
    keepalive_interval: float = 2.0
    debounce: float = 0.05
    legacy: LegacyConfig = field(default_factory=LegacyConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)


class Agent:
    """One host agent. `start()`/`stop()` or `run()`; the parts are attributes for status and tests."""

    def __init__(
        self,
        config: AgentConfig,
        datapath_factory: DatapathFactory = open_datapath,
        address_reader: Reader = read_host_addresses,
    ) -> None:
        self.config = config
        self.datapath_factory = datapath_factory
        self.poller = AddressPoller(self._addresses_changed, config.address_poll, address_reader)
        # grpclib, not grpcio: ~10 MB less RSS; same failover and failure modes (`transport_grpclib`).
        # No registry (`--registry none`): an ad-hoc network, names come from --lan / --static /
        # --dns-name alone; listening registers nowhere but (with --lan) is announced on the link.
        self.client: RegistryClient | None = None
        self.session: RegistrySession | None = None
        if config.registry:
            targets = spread(config.registry, config.agent_id)
            self.client = RegistryClient(targets, transport=transport_grpclib.dial)
            self.session = RegistrySession(self.client, config.lease_ttl, config.keepalive_interval)
        table = DesiredTable(config.zone, config.region)
        self.extras = ExtraSources(table)
        self.resolver = build_resolver(config.discovery)  # None: the registry alone
        # --lan: what the agent registers is also announced on the link (None without it)
        self.announcer = build_announcer(config.discovery, config.agent_id)
        offset = config.discovery.registry_tier_offset
        self.mirror = AgentMirror(table, tier_offset=offset, on_clear=self.extras.restore)
        self.link: RegistryLink | None = None
        self.host_record: HostRecord | None = None
        if self.client is not None and self.session is not None:
            self.link = RegistryLink(
                self.client, f"agent/{config.agent_id}", self._changed, self._progress, self.mirror
            )
            self.host_record = HostRecord(self.session, __version__)
        self.metrics: MetricsServer | None = None
        self.metrics_port = 0
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()
        self._datapath: DatapathPort | None = None
        self._control: Control | None = None
        self._reconciler: Reconciler | None = None
        self._pump: EventPump | None = None
        self._api: LocalApi | None = None
        self._legacy: LegacyAccess | None = None

    # Parts that exist once `start()` ran.
    @property
    def datapath(self) -> DatapathPort:
        assert self._datapath is not None, "start() first"
        return self._datapath

    @property
    def control(self) -> Control:
        assert self._control is not None, "start() first"
        return self._control

    @property
    def legacy(self) -> LegacyAccess:
        assert self._legacy is not None, "start() first"
        return self._legacy

    @property
    def reconciler(self) -> Reconciler:
        assert self._reconciler is not None, "start() first"
        return self._reconciler

    async def start(self) -> None:
        """Start every part in the documented order; on failure stop what started, then raise."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        cfg = self.config
        dp_config = DatapathConfig(sal_listen=cfg.sal_listen, path_timeout_ms=round(cfg.path_timeout * 1000))
        dp = self._datapath = self.datapath_factory(dp_config)
        for ip in sorted(self.poller.prime()):
            dp.address_added(ip)
        host = self._host_identity(self.poller.current)
        self._reconciler = Reconciler(
            dp,
            self._desired,
            cfg.debounce,
            ready=lambda: not self.mirror.in_snapshot,
            on_applied=self.link.confirm if self.link is not None else lambda revision: None,
        )
        registrar: Registrar = self.session if self.session is not None else NO_REGISTRY
        if self.announcer is not None:
            registrar = AnnouncingRegistrar(registrar, self.announcer)
            self._spawn("lan_announcer", self.announcer.run())
        self._control = Control(dp, registrar, self._reconciler, host, self.mirror.table.knows)
        self._pump = EventPump(dp, self._control)
        if self.host_record is not None:
            await self.host_record.publish(host)
        self._reconciler.reconcile_now()
        if self.session is not None and self.link is not None:
            self._spawn("keepalive", self.session.run())
            self._spawn("watch", self.link.run())
        if self.resolver is not None:
            self.resolver.subscribe(self._discovery_changed)
            self._spawn("discovery", self.resolver.run())
        self._spawn("reconcile", self._reconciler.run())
        self._spawn("pump", self._pump.run())
        # Kernel notifications only make sense for the host's real addresses (not an injected reader).
        self._spawn("addresses", self.poller.run(monitor=self.poller.reader is read_host_addresses))
        self._api = LocalApi(self._control, cfg.socket_path, cfg.socket_group)
        self._api.open()
        self._spawn("local_api", self._api.serve())
        self._legacy = LegacyAccess(self._control, cfg.legacy)
        await self._legacy.start()
        if cfg.metrics_port is not None:
            self.metrics = agent_metrics.serve(self._gauges(), cfg.metrics_addr, cfg.metrics_port)
            self.metrics_port = await self.metrics.start()
        log.info("agent %s up: SAL %s, socket %s", cfg.agent_id, dp.sal_addresses(), cfg.socket_path)

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        """Start, serve until `request_stop()` or a background failure, stop; re-raise a failure."""
        await self.start()
        stopper = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait([stopper, *self._tasks.values()], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            await asyncio.gather(stopper, return_exceptions=True)
            ended = [(n, t) for n, t in self._tasks.items() if t.done() and not _did_its_job(n, t)]
            failed = {n: _error(t) for n, t in ended}
            for name, error in failed.items():  # logged now: stopping may take a while
                log.error("agent task %r ended; stopping", name, exc_info=error)
            await self.stop()
        for name, error in failed.items():
            raise RuntimeError(f"agent task {name!r} ended") from error

    async def stop(self) -> None:
        """Stop in the documented order; safe on a partly started agent and when called twice."""
        if self.metrics is not None:
            await self.metrics.stop()
            self.metrics = None
        await self._cancel("addresses", "republish", "local_api")
        if self._legacy is not None:
            with contextlib.suppress(Exception):
                await self._legacy.close()
            self._legacy = None
        if self._api is not None:
            await self._api.close()
            self._api = None
        if self._pump is not None:
            self._pump.stop()
            await asyncio.gather(*self._take("pump"), return_exceptions=True)  # ends by itself
        await self._cancel("keepalive")
        if self.host_record is not None:
            with contextlib.suppress(Exception):
                await self.host_record.withdraw()
        if self.session is not None:
            await self.session.close()
        await self._cancel(*self._tasks)
        if self.client is not None:
            await self.client.close()
        if self._datapath is not None:
            self._datapath.shutdown()
            await asyncio.to_thread(self._datapath.join, 2000)
            self._datapath = None

    # ---- wiring --------------------------------------------------------------

    def _spawn(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks[name] = asyncio.create_task(coro, name=f"agent-{name}")

    def _cancel_nowait(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()

    def _take(self, *names: str) -> list[asyncio.Task[None]]:
        return [t for t in (self._tasks.pop(n, None) for n in names) if t is not None]

    async def _cancel(self, *names: str) -> None:
        tasks = self._take(*names)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _desired(self) -> tuple[DesiredRules, int]:
        """The desired table (a view of the Rust mirror; see `desired.py` for the semantics)."""
        listeners = [(listener.listener_id, listener.service) for listener in self.control.listeners]
        return self.mirror.table.rules(listeners, [AGENTS_SERVICE]), self.mirror.revision

    def _changed(self) -> None:
        if self._reconciler is not None:
            self._reconciler.request()

    def _discovery_changed(self) -> None:
        assert self.resolver is not None
        if self.extras.update(self.resolver.view()):
            self._changed()

    def _progress(self, revision: int) -> None:
        if self._reconciler is not None:
            self._reconciler.note_progress(revision)

    def _host_identity(self, addresses: frozenset[str]) -> HostIdentity:
        bound = self.datapath.sal_addresses()
        if not bound:
            raise RuntimeError("the data path has no SAL listener")
        cfg = self.config
        return HostIdentity(
            agent_id=cfg.agent_id,
            addresses=advertised_addresses(bound, addresses),
            sal_port=bound[0][1],
            zone=cfg.zone,
            region=cfg.region,
            ttl_seconds=cfg.lease_ttl,
        )

    async def _addresses_changed(self, added: frozenset[str], removed: frozenset[str]) -> None:
        for ip in sorted(removed):
            self.datapath.address_removed(ip)
        for ip in sorted(added):
            self.datapath.address_added(ip)
        if removed and self.client is not None:
            # The registry connection may have used a removed address: it would hang
            # until a deadline (longer than a short lease's TTL). Open a new one now.
            await self.client.reconnect()
        host = self._host_identity(self.poller.current)
        if not host.addresses:
            log.warning("the host has no usable address left; keeping the registered ones")
            return
        if host != self.control.host:
            self._cancel_nowait("republish")
            self._spawn("republish", self._republish(host))

    async def _republish(self, host: HostIdentity) -> None:
        """Re-register the listeners and the host record with `host`, retrying until it works.

        The registry may be unreachable for a while right after an address change
        (its connection used the old address); registrations keep their lease meanwhile.
        """
        delay = 0.2
        while True:
            try:
                await self.control.set_host(host)
                if self.host_record is not None:
                    await self.host_record.publish(host)
                return
            except Exception as e:
                log.warning("re-registering with addresses %s failed (%s); retrying", host.addresses, e)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _gauges(self) -> AgentGauges:
        dp, rec = self.datapath, self.reconciler
        return AgentGauges(
            datapath_stats=dp.stats,
            applied_revision=lambda: rec.applied_revision,
            mirror_revision=lambda: self.mirror.revision,
            table_generation=lambda: rec.generation,
            table_rules=lambda: rec.rule_count,
            listeners=lambda: len(self.control.listeners),
            registry_reconnects=lambda: self.link.reconnects if self.link is not None else 0,
            legacy_connections=lambda: dict(self.legacy.connections),
            legacy_failures=lambda: dict(self.legacy.failures),
            discovery=lambda: self.resolver.view() if self.resolver is not None else None,
        )


_ONE_SHOT = frozenset({"republish"})  # background tasks that end by themselves when done


def _did_its_job(name: str, task: asyncio.Task[None]) -> bool:
    return name in _ONE_SHOT and not task.cancelled() and task.exception() is None


def _error(task: asyncio.Task[None]) -> BaseException | None:
    """Why a service task ended: its exception, a cancellation nobody asked for (e.g. a
    gRPC stream cancelled under it), or None (it returned)."""
    if task.cancelled():
        return asyncio.CancelledError(f"task {task.get_name()} was cancelled")
    return task.exception()


def spread(targets: Sequence[str], agent_id: str) -> list[str]:
    """`targets` rotated by a stable hash of `agent_id`: agents given the same replica list
    start on different replicas (spreading their watch streams), each always on the same
    one, and fail over through the rest in the listed order."""
    if not targets:
        return []
    k = zlib.crc32(agent_id.encode()) % len(targets)
    return [*targets[k:], *targets[:k]]
