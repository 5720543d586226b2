"""An agent control plane without a registry: fake data path, recording registrar, real local API.

`agent_harness(tmp_path)` serves the local API on a real Unix socket in
`tmp_path` over `Control` + `Reconciler` + `EventPump`, exactly as
`hostagent.agent.agent.Agent` wires them, with `FakeDatapath` and a
`RecordingRegistrar` in place of the data path and the registry session.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from hostagent.agent.control import Control
from hostagent.agent.desired import Locality, desired_rules, has_sal_instance
from hostagent.agent.events import EventPump
from hostagent.agent.listeners import HostIdentity
from hostagent.agent.local_api import LocalApi
from hostagent.agent.reconcile import Reconciler
from hostagent.sal_core.table import Rule
from registry.api.client import Mirror
from registry.model import Instance
from tests.fakes.datapath import FakeDatapath

POLL_INTERVAL = 0.02


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = 5.0) -> None:
    """Poll `check` (sync or async) until it holds; `TimeoutError` after `timeout` seconds."""
    for _ in range(max(1, int(timeout / POLL_INTERVAL))):
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        await asyncio.sleep(POLL_INTERVAL)
    raise TimeoutError(f"condition not met within {timeout}s")


HOST = HostIdentity(agent_id="a1", addresses=("10.0.0.1",), sal_port=17946, zone="z1", region="r1")


@dataclass
class RecordingRegistrar:
    """Records registrations; `fail` makes `put` raise it."""

    instances: dict[tuple[str, str], Instance] = field(default_factory=dict)
    log: list[tuple[str, str, str]] = field(default_factory=list)
    fail: Exception | None = None

    async def put(self, instance: Instance) -> int:
        if self.fail is not None:
            raise self.fail
        self.instances[instance.key] = instance
        self.log.append(("put", instance.service, instance.instance_id))
        return len(self.log)

    async def remove(self, service: str, instance_id: str) -> int:
        self.instances.pop((service, instance_id), None)
        self.log.append(("remove", service, instance_id))
        return len(self.log)


@dataclass
class Harness:
    datapath: FakeDatapath
    registrar: RecordingRegistrar
    control: Control
    reconciler: Reconciler
    pump: EventPump
    api: LocalApi
    mirror: Mirror
    socket_path: Path


@contextlib.asynccontextmanager
async def agent_harness(tmp_path: Path, remote: list[Instance] | None = None) -> AsyncIterator[Harness]:
    datapath = FakeDatapath()
    registrar = RecordingRegistrar()
    mirror = Mirror()
    for inst in remote or []:
        mirror.instances[inst.key] = inst
    holder: dict[str, Control] = {}

    def compute() -> tuple[list[Rule], int]:
        rules = desired_rules(mirror.instances.values(), Locality("z1", "r1"), holder["c"].listeners)
        return rules, mirror.revision

    reconciler = Reconciler(datapath, compute, debounce=0.01)
    control = holder["c"] = Control(
        datapath, registrar, reconciler, HOST, lambda sid: has_sal_instance(mirror.instances.values(), sid)
    )
    pump = EventPump(datapath, control, poll_ms=20)
    path = tmp_path / "agent.sock"
    api = LocalApi(control, path)
    api.open()
    reconciler.reconcile_now()
    tasks = [asyncio.create_task(t) for t in (reconciler.run(), pump.run(), api.serve())]
    try:
        yield Harness(datapath, registrar, control, reconciler, pump, api, mirror, path)
    finally:
        tasks[2].cancel()
        await api.close()
        pump.stop()
        tasks[0].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        datapath.shutdown()
        datapath.close_pending_fds()
