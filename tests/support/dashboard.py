"""A dashboard over a real registry replica on the session etcd, for API, SSE and browser tests.

`DashboardRig` holds the replica, a registry client for the test's own writes,
the app (its lifespan running, its feed past the first snapshot) and, when
served, the uvicorn server on an ephemeral loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from dashboard.app import create_app
from dashboard.auth import ADMIN, READ_ONLY, Principal
from dashboard.state import DashboardConfig, State
from registry.api.client import RegistryClient
from registry.api.server import Replica
from registry.model import Instance
from tests.support.replica import started_replica

ADMIN_TOKEN = "admin-token-0123456789abcdef"
READ_TOKEN = "read-token-0123456789abcdef"
TOKENS = {ADMIN_TOKEN: Principal("alice", ADMIN), READ_TOKEN: Principal("bob", READ_ONLY)}


@dataclass
class DashboardRig:
    replica: Replica
    registry: RegistryClient
    app: FastAPI
    base_url: str

    @property
    def state(self) -> State:
        st: State = self.app.state.dashboard
        return st

    def http(self, token: str | None = ADMIN_TOKEN) -> httpx.AsyncClient:
        """A client of the app (in-process ASGI unless served), with `token` as bearer."""
        headers = {"authorization": f"Bearer {token}"} if token else {}
        if self.base_url.startswith("http://127."):
            return httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=5)
        transport = httpx.ASGITransport(app=self.app)
        return httpx.AsyncClient(transport=transport, base_url=self.base_url, headers=headers, timeout=5)


def inst(iid: str, service: str = "payments.prod", **kw: Any) -> Instance:
    fields: dict[str, Any] = {"addresses": ("10.0.0.1",), "port": 8080, **kw}
    return Instance(service=service, instance_id=iid, **fields)


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    """Poll `predicate()` every 10 ms until true; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        if predicate():
            return
        assert loop.time() < deadline, f"not true within {timeout} s"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def dashboard_rig(
    etcd_endpoints: list[str],
    prefix: str,
    serve: bool = False,
    open_reads: bool = False,
    stale_after: float = 15.0,
) -> AsyncIterator[DashboardRig]:
    async with started_replica(etcd_endpoints, prefix) as replica:
        target = f"127.0.0.1:{replica.port}"
        registry = RegistryClient([target], timeout=5)
        config = DashboardConfig(
            registry=[target],
            tokens=dict(TOKENS),
            open_reads=open_reads,
            status_interval=0.5,
            stale_after=stale_after,
        )
        app = create_app(config)
        server: uvicorn.Server | None = None
        task: asyncio.Task[None] | None = None
        try:
            if serve:
                server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
                task = asyncio.create_task(server.serve())
                await wait_for(lambda: server is not None and server.started, 10)
                sock = server.servers[0].sockets[0]
                base = f"http://127.0.0.1:{sock.getsockname()[1]}"
                rig = DashboardRig(replica, registry, app, base)
                await asyncio.wait_for(rig.state.feed.ready.wait(), 10)
                yield rig
            else:
                async with app.router.lifespan_context(app):
                    rig = DashboardRig(replica, registry, app, "http://dashboard")
                    await asyncio.wait_for(rig.state.feed.ready.wait(), 10)
                    yield rig
        finally:
            if server is not None and task is not None:
                server.should_exit = True
                await task
            await registry.close()
