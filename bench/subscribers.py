"""Watch subscriber workers: many watch streams per process, each on its own connection.

A worker opens one `RegistryClient(...).watch()` stream per subscriber it
hosts, each on its own gRPC channel (as separate host agents would), and:

1. reports ``ready`` once every stream holds the current state: it has
   received SNAPSHOT_END (fresh subscribers, `from_revision` 0) or its first
   message after resuming (PROGRESS or DELTAS);
2. records, per stream, when each PUT delta of an instance whose ID starts
   with `id_prefix` arrived (`time.monotonic_ns()`, taken once per received
   message, before anything else is done with it);
3. on the supervisor's ``"finish"``, waits until every stream has `expected`
   such arrivals or `FINISH_GRACE_S` has passed and says ``complete``; then
   closes the streams and reports one `StreamReport` per stream as ``result``.

Streams do what a real subscriber does besides: the `Watch` iterator
acknowledges each applied revision back to the replica. They do not build a
mirror of the registry (that cost is the subscriber's, not the registry's).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

from bench.workers import WorkerLink, Workers
from registry.api.client import RegistryClient
from registry.api.v1 import registry_pb2 as pb

READY_TIMEOUT_S = 120.0  # every stream must be ready within this
FINISH_GRACE_S = 10.0  # after "finish", how long a worker waits for missing deltas


@dataclass(frozen=True)
class SubscriberJob:
    """The streams of one worker: `subscriber_ids[i]` starts from `from_revisions[i]`."""

    target: str
    subscriber_ids: list[str]
    from_revisions: list[int]
    id_prefix: str
    expected: int


@dataclass
class StreamReport:
    subscriber_id: str
    took_snapshot: bool = False
    snapshot_instances: int = 0
    ready_ns: int = 0
    arrivals_ns: dict[str, int] = field(default_factory=dict)
    reconnects: int = 0
    error: str = ""


class Stream:
    """One subscriber's watch stream and what it observed."""

    def __init__(self, target: str, subscriber_id: str, from_revision: int, id_prefix: str) -> None:
        # Each client's transport opens its own connection, as separate agents would.
        self.client = RegistryClient([target], timeout=30)
        self.watch = self.client.watch(from_revision, subscriber_id=subscriber_id)
        self.id_prefix = id_prefix
        self.report = StreamReport(subscriber_id)

    @property
    def ready(self) -> bool:
        return self.report.ready_ns > 0

    async def run(self) -> None:
        """Consume the stream until cancelled; a non-retryable error is kept in the report."""
        try:
            async for msg in self.watch:
                self._observe(time.monotonic_ns(), msg)
        except Exception as e:
            self.report.error = f"{type(e).__name__}: {e}"

    def _observe(self, now: int, msg: pb.WatchResponse) -> None:
        r = self.report
        if msg.kind in (pb.WatchResponse.SNAPSHOT, pb.WatchResponse.SNAPSHOT_END):
            r.snapshot_instances += len(msg.instances)
        if msg.kind == pb.WatchResponse.SNAPSHOT_END:
            r.took_snapshot = True
        if msg.kind != pb.WatchResponse.SNAPSHOT and not r.ready_ns:
            r.ready_ns = now
        for d in msg.deltas:
            iid = d.instance.instance_id
            if d.kind == pb.InstanceDelta.PUT and iid.startswith(self.id_prefix):
                r.arrivals_ns.setdefault(iid, now)

    async def close(self) -> StreamReport:
        self.report.reconnects = self.watch.reconnects
        await self.client.close()
        return self.report


async def subscriber_worker(link: WorkerLink, job: SubscriberJob) -> None:
    """Run the job's streams through ready / finish / result (see module docstring)."""
    streams = [
        Stream(job.target, sid, rev, job.id_prefix)
        for sid, rev in zip(job.subscriber_ids, job.from_revisions, strict=True)
    ]
    tasks = [asyncio.create_task(s.run()) for s in streams]
    try:
        await _until(lambda: all(s.ready or s.report.error for s in streams), READY_TIMEOUT_S)
        failed = [s.report for s in streams if s.report.error]
        if failed:
            raise RuntimeError(f"{len(failed)} streams failed, first: {failed[0].error}")
        link.send("ready", [s.report.ready_ns for s in streams])
        await link.receive(timeout=600)

        def complete() -> bool:
            return all(len(s.report.arrivals_ns) >= job.expected for s in streams)

        await _until(complete, FINISH_GRACE_S, fail=False)
        link.send("complete")
    finally:
        for t in tasks:
            t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
        reports = await asyncio.gather(*(s.close() for s in streams))
    link.send("result", reports)


async def _until(condition: Callable[[], bool], timeout: float, fail: bool = True) -> None:
    """Poll `condition` every 10 ms; after `timeout` raise TimeoutError (or return if not `fail`)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            if fail:
                raise TimeoutError(f"condition not met after {timeout:.0f}s")
            return
        await asyncio.sleep(0.01)


def split_jobs(
    target: str, subscribers: list[tuple[str, int]], workers: int, id_prefix: str = "", expected: int = 0
) -> list[SubscriberJob]:
    """Deal ``(subscriber_id, from_revision)`` pairs round-robin over `workers` jobs."""
    count = max(1, min(workers, len(subscribers)))
    return [
        SubscriberJob(
            target=target,
            subscriber_ids=[sid for sid, _ in subscribers[i::count]],
            from_revisions=[rev for _, rev in subscribers[i::count]],
            id_prefix=id_prefix,
            expected=expected,
        )
        for i in range(count)
    ]


class Subscribers:
    """The worker processes of `jobs`, from connected (on entry) to finished (`drain`, `reports`).

    Entering starts the workers and returns once every stream is ready;
    `connect_s` is how long that took. Leaving stops every worker.
    """

    def __init__(self, name: str, jobs: list[SubscriberJob]) -> None:
        self._workers = Workers(name, subscriber_worker, jobs)
        self.connect_s = 0.0

    @property
    def pids(self) -> list[int]:
        return self._workers.pids

    async def __aenter__(self) -> Subscribers:
        started = time.monotonic()
        self._workers.__enter__()
        try:
            await self._workers.collect("ready", timeout=READY_TIMEOUT_S + 30)
        except BaseException:
            self._workers.stop(grace=0)
            raise
        self.connect_s = time.monotonic() - started
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._workers.__exit__(exc_type, exc, tb)

    async def drain(self) -> None:
        """Tell the workers to finish; return once every stream got what it expects (or the grace ran out)."""
        self._workers.send_all("finish")
        await self._workers.collect("complete", timeout=FINISH_GRACE_S + 30)

    async def reports(self) -> list[StreamReport]:
        """Every stream's report, once the workers closed their streams (after `drain`)."""
        per_worker: list[list[StreamReport]] = await self._workers.collect("result", timeout=60)
        return [r for reports in per_worker for r in reports]
