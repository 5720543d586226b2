"""`make bench-dashboard`: the dashboard's server time at scale, and registration → SSE.

    python -m bench.dashboard [--quick] [--json PATH]

- **server time**: a read model holding `services` services and `instances`
  instances (fed one synthetic SNAPSHOT, as the watch would), served in-process
  through ASGI (httpx `ASGITransport`, no sockets: the time includes the HTTP
  client's own overhead, so it is an upper bound of the server's). For each
  request `rounds` timed calls: the services API (first page, a deep page, a
  substring search, a status filter), the services HTML page, one service's
  instances (no registry in this phase, so without lease times). Baseline in the
  same run: the same first page computed by sorting the names per request (what
  the sorted index avoids).
- **registration → SSE**: a real single-node etcd, one registry replica and the
  dashboard served by uvicorn, all in this process; one SSE client connected.
  `registrations` registrations one at a time; latency = the SSE ``change``
  event naming the instance arriving at the client minus the Register call sent
  (`time.monotonic`, same process). Baseline in the same run: the same
  registrations seen by a plain registry watch (`RegistryClient.watch`).
  Then one service's API with its instances' lease times, which the dashboard
  asks of the real registry per request (over real HTTP).

Targets: p99 ≤ 100 ms per request, p99 ≤ 1 s registration → SSE.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, cast

import httpx
import uvicorn

from bench.report import table
from dashboard.app import create_app
from dashboard.auth import ADMIN, Principal
from dashboard.model import percentile
from dashboard.state import DashboardConfig, State
from registry.api import convert
from registry.api.client import RegistryClient
from registry.api.server import Replica, ReplicaConfig
from registry.api.v1 import registry_pb2 as pb
from registry.model import Instance
from registry.raft.local_etcd import LocalEtcdCluster

TOKEN = "bench-token-0123456789abcdef"
HEADERS = {"authorization": f"Bearer {TOKEN}"}


def synthetic_snapshot(services: int, instances: int) -> pb.WatchResponse:
    per = max(1, instances // services)
    msgs = []
    for s in range(services):
        name = f"svc-{s:05d}.team-{s % 97}.prod"
        for i in range(per):
            inst = Instance(
                service=name,
                instance_id=f"i-{i}",
                addresses=(f"10.{s // 256 % 256}.{s % 256}.{i + 1}",),
                port=8080,
                weight=0 if (s + i) % 50 == 0 else 100,
                tier=i % 2,
                zone=f"z{i % 3}",
            )
            msgs.append(convert.instance_to_pb(inst))
    return pb.WatchResponse(
        kind=pb.WatchResponse.SNAPSHOT_END, snapshot_start=True, instances=msgs, revision=1
    )


def summary_ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50_ms": percentile(ordered, 50) * 1000,
        "p99_ms": percentile(ordered, 99) * 1000,
        "max_ms": ordered[-1] * 1000,
        "n": len(ordered),
    }


async def server_time(services: int, instances: int, rounds: int) -> dict[str, Any]:
    config = DashboardConfig(registry=["127.0.0.1:1"], tokens={TOKEN: Principal("bench", ADMIN)})
    app = create_app(config)  # lifespan not run: no feed, the model is fed here
    st: State = app.state.dashboard
    t0 = time.monotonic()
    st.model.apply(synthetic_snapshot(services, instances), time.time())
    load_s = time.monotonic() - t0
    st.feed.ready.set()
    st.model.last_message_at = time.time() + 3600  # not stale during the run
    requests = {
        "API services, first page": "/api/v1/services",
        "API services, page at 5000": "/api/v1/services?offset=5000",
        "API services, search 'team-42'": "/api/v1/services?q=team-42.",
        "API services, filter degraded": "/api/v1/services?status=degraded",
        # (no registry in this phase: lease times are skipped; see the SSE phase for them)
        "API one service": f"/api/v1/services/svc-{services // 2:05d}.team-{services // 2 % 97}.prod",
        "page /services": "/services",
        "page /services?q=team-42": "/services?q=team-42.",
        "API overview": "/api/v1/overview",
    }
    out: dict[str, Any] = {"load_seconds": load_s, "counts": dataclasses.asdict(st.model.counts())}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench", headers=HEADERS) as http:
        login = await http.post("/login", data={"token": TOKEN})  # the pages need a session
        assert login.status_code in (200, 303), login.status_code
        for label, path in requests.items():
            samples = []
            for _ in range(rounds):
                t = time.perf_counter()
                resp = await http.get(path)
                samples.append(time.perf_counter() - t)
                assert resp.status_code == 200, (path, resp.status_code)
            out[label] = summary_ms(samples)
    baseline = []
    for _ in range(rounds):
        t = time.perf_counter()
        names = sorted(st.model.services)[:50]
        [st.model.row(n) for n in names]
        baseline.append(time.perf_counter() - t)
    out["baseline: first page by sorting per request (no HTTP)"] = summary_ms(baseline)
    return out


async def sse_latency(registrations: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, LocalEtcdCluster(Path(tmp) / "etcd", size=1) as etcd:
        replica = Replica(ReplicaConfig(etcd_endpoints=list(etcd.endpoints), listen="127.0.0.1:0"))
        port = await replica.start()
        await replica.wait_ready(15)
        target = f"127.0.0.1:{port}"
        config = DashboardConfig(registry=[target], tokens={TOKEN: Principal("bench", ADMIN)})
        app = create_app(config)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        serving = asyncio.create_task(server.serve())
        registry = RegistryClient([target], timeout=10)
        try:
            for _ in range(1000):
                if server.started:
                    break
                await asyncio.sleep(0.01)
            await app.state.dashboard.feed.ready.wait()
            base = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
            return await _measure_sse(base, registry, registrations)
        finally:
            await registry.close()
            server.should_exit = True
            await serving
            await replica.stop(grace=0.2)


async def _measure_sse(base: str, registry: RegistryClient, n: int) -> dict[str, Any]:
    sent: dict[str, float] = {}
    sse_at: dict[str, float] = {}
    watch_at: dict[str, float] = {}
    lease = (await registry.open_session(300)).lease_id

    async def watch_baseline() -> None:
        async for msg in registry.watch(subscriber_id="bench/baseline"):
            for d in msg.deltas:
                watch_at.setdefault(d.instance.instance_id, time.monotonic())

    async def sse_client(connected: asyncio.Event) -> None:
        async with (
            httpx.AsyncClient(base_url=base, headers=HEADERS, timeout=None) as http,
            http.stream("GET", "/api/v1/events/stream") as resp,
            contextlib.aclosing(cast(AsyncGenerator[str, None], resp.aiter_lines())) as lines,
        ):
            async for line in lines:
                connected.set()
                if line.startswith("data:"):
                    for ev in json.loads(line[5:]).get("events", []):
                        sse_at.setdefault(ev["instance_id"], time.monotonic())

    connected = asyncio.Event()
    tasks = [asyncio.create_task(sse_client(connected)), asyncio.create_task(watch_baseline())]
    try:
        await asyncio.wait_for(connected.wait(), 10)
        await asyncio.sleep(0.5)
        for k in range(n):
            iid = f"b-{k}"
            inst = Instance(service="bench.sse", instance_id=iid, addresses=("10.9.0.1",), port=80)
            sent[iid] = time.monotonic()
            await registry.register(inst, lease_id=lease)
            await asyncio.sleep(0.02)
        for _ in range(100):  # 5 s for the last events
            if len(sse_at) >= n:
                break
            await asyncio.sleep(0.05)
        # One service's API with every instance's lease time asked of the real registry.
        one_service = []
        async with httpx.AsyncClient(base_url=base, headers=HEADERS, timeout=10) as http:
            for _ in range(50):
                t0 = time.monotonic()
                answer = await http.get("/api/v1/services/bench.sse")
                one_service.append(time.monotonic() - t0)
                assert answer.json()["instances"][0]["lease_remaining_seconds"] is not None
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    missing = [i for i in sent if i not in sse_at]
    return {
        f"API one service with lease times ({n} instances, real registry, HTTP)": summary_ms(one_service),
        "registration → SSE event": summary_ms([sse_at[i] - sent[i] for i in sent if i in sse_at]),
        "baseline: registration → plain watch": summary_ms(
            [watch_at[i] - sent[i] for i in sent if i in watch_at]
        ),
        "missing": len(missing),
    }


def render(results: dict[str, Any]) -> str:
    st = results["server_time"]
    c = st["counts"]
    rows = []
    for label, s in st.items():
        if isinstance(s, dict) and "p99_ms" in s:
            target = "" if label.startswith("baseline") else "p99 ≤ 100 ms"
            ok = "" if not target else ("ok" if s["p99_ms"] <= 100 else "MISSED")
            rows.append((label, f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}", f"{s['max_ms']:.2f}", target, ok))
    sse = results["sse"]
    for label, s in sse.items():
        if label.startswith("API"):
            ok = "ok" if s["p99_ms"] <= 100 else "MISSED"
            rows.append(
                (label, f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}", f"{s['max_ms']:.2f}", "p99 ≤ 100 ms", ok)
            )
    for label in ("registration → SSE event", "baseline: registration → plain watch"):
        s = sse[label]
        target = "" if label.startswith("baseline") else "p99 ≤ 1000 ms"
        ok = "" if not target else ("ok" if s["p99_ms"] <= 1000 and not sse["missing"] else "MISSED")
        rows.append((label, f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}", f"{s['max_ms']:.2f}", target, ok))
    head = (
        f"read model: {c['services']} services, {c['instances']} instances "
        f"(snapshot applied in {st['load_seconds']:.2f} s); SSE: {sse['registration → SSE event']['n']} "
        f"registrations, {sse['missing']} missing\n"
    )
    return head + table(rows, ["measurement", "p50 ms", "p99 ms", "max ms", "target", ""])


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    services, instances, rounds, regs = (1000, 10_000, 50, 50) if args.quick else (10_000, 100_000, 200, 200)
    return {
        "server_time": await server_time(services, instances, rounds),
        "sse": await sse_latency(regs),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="bench.dashboard", description=__doc__.splitlines()[0] if __doc__ else ""
    )
    p.add_argument("--quick", action="store_true", help="a tenth of the size, fewer rounds")
    p.add_argument("--json", type=Path, default=Path(".bench/dashboard.json"))
    args = p.parse_args(argv)
    results = asyncio.run(main_async(args))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str))
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
