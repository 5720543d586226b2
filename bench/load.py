"""Load-generator workers: registrations through gRPC, raw etcd puts, and bulk loading.

`load_worker` is what the throughput phase measures. Both kinds run the same
way, so they compare fairly: one process holds one connection (a gRPC channel
to the replica, or an aetcd client to etcd) shared by `coroutines` loops, each
with one request in flight. A registration loop opens its own session first
(`OpenSession`, TTL 60 s) and registers fresh instance IDs on it; a put loop
writes fresh keys with a value of the registration record's size. Loops start
together at the supervisor's start time; an operation counts when it
completes inside the measurement window that follows the warm-up, and its
latency (send to response, in this process) is kept.

`bulk_worker` registers a fixed set of instances as fast as it can (memory
phase set-up); nothing of it is timed except its total.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import aetcd

from bench.common import sample_instance, service_name
from bench.workers import WorkerLink
from registry.api import convert
from registry.api.client import RegistrationStream, RegistryClient
from registry.api.rpc import Transport
from registry.api.v1 import registry_pb2 as pb
from registry.raft.keys import KeySchema
from registry.raft.records import encode_instance

SESSION_TTL = 60
RAW_PREFIX = "/bench-raw"
Op = Callable[[int], Awaitable[object]]


@dataclass(frozen=True)
class LoadJob:
    """One load-generator process: `coroutines` loops of `kind` against `target`.

    Kinds: "etcd" (raw puts), "registry" (unary Register calls), "registry-stream"
    (registrations over one RegisterStream per loop).
    """

    kind: str
    target: str
    coroutines: int
    warmup_s: float
    duration_s: float
    services: int
    zone: str


@dataclass
class LoadResult:
    """What one loop (or, merged, one worker) did inside the measurement window."""

    ops: int = 0
    errors: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    first_error: str = ""

    def merge(self, other: LoadResult) -> None:
        self.ops += other.ops
        self.errors += other.errors
        self.latencies_ns.extend(other.latencies_ns)
        self.first_error = self.first_error or other.first_error


async def load_worker(link: WorkerLink, job: LoadJob) -> None:
    """Connect, report ``ready``, wait for the start time, run the loops, report ``result``."""
    connect = {
        "registry": _registry_operations,
        "registry-stream": _registry_operations,
        "etcd": _etcd_operations,
    }
    async with connect[job.kind](job, link.index) as ops:
        link.send("ready")
        start_ns: int = await link.receive(timeout=120)
        measure_from = start_ns + int(job.warmup_s * 1e9)
        measure_to = measure_from + int(job.duration_s * 1e9)
        loops = [_timed_loop(op, start_ns, measure_from, measure_to) for op in ops]
        results = await asyncio.gather(*loops)
    total = LoadResult()
    for r in results:
        total.merge(r)
    link.send("result", total)


async def _timed_loop(op: Op, start_ns: int, measure_from: int, measure_to: int) -> LoadResult:
    """Call `op(0)`, `op(1)`, ... back to back from `start_ns` until `measure_to`."""
    await asyncio.sleep(max(0, start_ns - time.monotonic_ns()) / 1e9)
    result = LoadResult()
    n = 0
    while (sent := time.monotonic_ns()) < measure_to:
        error = ""
        try:
            await op(n)
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
        done = time.monotonic_ns()
        n += 1
        if not measure_from <= done <= measure_to:
            continue
        if error:
            result.errors += 1
            result.first_error = result.first_error or error
        else:
            result.ops += 1
            result.latencies_ns.append(done - sent)
    return result


@contextlib.asynccontextmanager
async def _registry_operations(job: LoadJob, worker: int) -> AsyncIterator[list[Op]]:
    """Registrations on one channel; each loop on its own session, closed (revoked) at the end.

    "registry": one unary Register call per registration; "registry-stream":
    each loop keeps one RegisterStream open and has one registration in flight on it.
    """
    client = RegistryClient([job.target], timeout=30)
    leases = [(await client.open_session(SESSION_TTL)).lease_id for _ in range(job.coroutines)]
    streams = [client.registration_stream() for _ in leases] if job.kind == "registry-stream" else []
    try:
        if streams:
            yield [_stream_op(streams[c], job, worker, c, lease) for c, lease in enumerate(leases)]
        else:
            yield [_register_op(client.channel(), job, worker, c, lease) for c, lease in enumerate(leases)]
    finally:
        for stream in streams:
            await stream.close()
        with contextlib.suppress(Exception):
            await asyncio.gather(*(client.close_session(lease) for lease in leases))
        await client.close()


def _register_op(channel: Transport, job: LoadJob, worker: int, loop: int, lease_id: int) -> Op:
    """Register instance ``w{worker}-c{loop}-{n}`` of a service picked round-robin, on `lease_id`."""
    template = convert.instance_to_pb_input(sample_instance("x.bench", "x", SESSION_TTL))

    async def op(n: int) -> object:
        req = pb.RegisterRequest(lease_id=lease_id)
        req.instance.CopyFrom(template)
        req.instance.service = service_name((loop + n) % job.services, job.zone)
        req.instance.instance_id = f"w{worker}-c{loop}-{n}"
        return await channel.unary("Register", req, pb.RegisterResponse, 30)

    return op


def _stream_op(stream: RegistrationStream, job: LoadJob, worker: int, loop: int, lease_id: int) -> Op:
    """As `_register_op`, over `stream`."""

    async def op(n: int) -> object:
        service = service_name((loop + n) % job.services, job.zone)
        inst = sample_instance(service, f"w{worker}-c{loop}-{n}", SESSION_TTL)
        return await stream.register(inst, lease_id=lease_id)

    return op


@contextlib.asynccontextmanager
async def _etcd_operations(job: LoadJob, worker: int) -> AsyncIterator[list[Op]]:
    """aetcd puts of fresh keys on one client (one channel), values of the record's size."""
    host, _, port = job.target.rpartition(":")
    client = aetcd.Client(host, int(port))
    await client.connect()
    keys = KeySchema(RAW_PREFIX)
    value = encode_instance(sample_instance("x.bench", "x", SESSION_TTL))

    def put_op(loop: int) -> Op:
        async def op(n: int) -> object:
            key = keys.instance_key(
                service_name((loop + n) % job.services, job.zone), f"w{worker}-c{loop}-{n}"
            )
            return await client.put(key, value)

        return op

    try:
        yield [put_op(c) for c in range(job.coroutines)]
    finally:
        await client.close()


@dataclass(frozen=True)
class BulkJob:
    """Register instances ``n`` in ``range(first, total, step)``, `coroutines` at a time."""

    target: str
    first: int
    step: int
    total: int
    coroutines: int
    services: int
    zone: str
    ttl_seconds: int = 3600


@dataclass
class BulkResult:
    registered: int
    max_revision: int
    seconds: float


async def bulk_worker(link: WorkerLink, job: BulkJob) -> None:
    """Register this worker's share of the instances; each loop on its own long session."""
    client = RegistryClient([job.target], timeout=30)
    numbers = range(job.first, job.total, job.step)
    started = time.monotonic()
    try:
        revisions = await asyncio.gather(
            *(_bulk_loop(client, job, numbers[c :: job.coroutines]) for c in range(job.coroutines))
        )
    finally:
        await client.close()
    link.send("result", BulkResult(len(numbers), max(revisions, default=0), time.monotonic() - started))


async def _bulk_loop(client: RegistryClient, job: BulkJob, numbers: range) -> int:
    """Register `numbers` one after another on a new session; return the last revision."""
    lease = (await client.open_session(job.ttl_seconds)).lease_id
    revision = 0
    for n in numbers:
        inst = sample_instance(service_name(n % job.services, job.zone), f"i-{n}", job.ttl_seconds, n)
        revision = (await client.register(inst, lease_id=lease)).revision
    return revision
