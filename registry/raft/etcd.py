"""`EtcdStore`: the `Store` over a real etcd cluster (aetcd's gRPC stubs).

This is the registry's one I/O shell for etcd, and deliberately its largest
module: connection failover, transaction execution, the lease keep-alive
stream, the watch stream and cluster status all share one connection pool and
one error mapping, and splitting them would spread that contract thin. Every
decision that can be pure lives elsewhere: keys in `keys`, record encoding in
`records`, what to compare and put in `plan`.

Connections: one aetcd client (one gRPC channel) at a time, to one endpoint.
A call that fails with UNAVAILABLE, a deadline, "no leader" or a broken
stream retires that client and retries on the next endpoint, round-robin,
until the call's budget (`request_timeout`) is spent; then `Unavailable`
names the endpoints tried and the last error. A retired client is closed when
its last call or stream ends. Every request carries ``hasleader: true`` so a
member without quorum refuses it (or cancels the stream) instead of stalling.

Retries are safe because every instance write is a compare-and-swap: a retried
create whose first attempt committed fails its compare, and the slow path then
recognises its own record (`plan.Done`).

Concurrency: all methods may be called concurrently from one event loop.
`close()` ends the keep-alive stream and closes every channel; a watch still
open then ends with `Unavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import aetcd
from aetcd import rpc

from registry import names
from registry.errors import Aborted, InvalidArgument, NotFound, RegistryError, Unavailable
from registry.model import Instance
from registry.raft import plan, records
from registry.raft.keys import BadKey, KeySchema, range_end
from registry.raft.store import (
    ClusterStatus,
    Compacted,
    InstanceDeleted,
    InstancePut,
    InstanceWrite,
    Lease,
    MemberStatus,
    Snapshot,
    StoreEvent,
    WatchBatch,
    WriteOutcome,
)

if TYPE_CHECKING:
    from registry.raft.store import Store

log = logging.getLogger(__name__)

_T = TypeVar("_T")
# aetcd and its generated protobuf modules are untyped; `_Pb` marks a protobuf
# message (or stub) that only this module's converters look into.
_Pb = Any

_REQUIRE_LEADER = (("hasleader", "true"),)
_CHANNEL_OPTIONS = {
    "grpc.max_receive_message_length": 256 * 1024 * 1024,  # a 10,000-key snapshot page
    "grpc.keepalive_time_ms": 10_000,  # etcd's --grpc-keepalive-min-time is 5 s
    "grpc.keepalive_timeout_ms": 5_000,
}
_RETRY_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN"})
_MIN_TRY_SECONDS = 0.5
_TIMEOUT_SLACK_SECONDS = 0.5
_STATUS_TIMEOUT_SECONDS = 1.0
_CAS_ATTEMPTS = 4
_SNAPSHOT_ATTEMPTS = 3


class _EndpointFailure(Exception):
    """This endpoint could not answer; another one may."""


class _LeaseNotFound(Exception):
    """etcd does not know a lease the request names."""


class _TxnRejected(Exception):
    """etcd refused a transaction as too large (ops or bytes)."""


class _RevisionCompacted(Exception):
    """A read at a revision that has been compacted away."""


def _translate(error: _Pb) -> Exception:
    """Map a gRPC error from etcd to a retryable failure, an internal signal or a domain error."""
    code = getattr(error.code(), "name", str(error.code()))
    details = error.details() or ""
    if code in _RETRY_CODES or "too many requests" in details:
        return _EndpointFailure(f"{code}: {details}")
    if "lease not found" in details:
        return _LeaseNotFound(details)
    if "has been compacted" in details:
        return _RevisionCompacted(details)
    if "too many operations in txn" in details or "request is too large" in details:
        return _TxnRejected(details)
    if "database space exceeded" in details:
        return Unavailable(f"etcd database space exceeded ({details}); compact and defragment etcd")
    if code in ("INVALID_ARGUMENT", "OUT_OF_RANGE"):
        return InvalidArgument(f"etcd refused the request: {details}")
    return Unavailable(f"etcd refused the request: {code}: {details}")


def _split_endpoint(endpoint: str) -> tuple[str, int]:
    host, sep, port = endpoint.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"etcd endpoint {endpoint!r} must be host:port")
    return host, int(port)


async def _open_client(endpoint: str) -> _Pb:
    """A connected aetcd client for `endpoint` (the channel connects lazily)."""
    host, port = _split_endpoint(endpoint)
    client = aetcd.Client(host=host, port=port, options=_CHANNEL_OPTIONS)
    await client.connect()
    return client


class _Connection:
    """One aetcd client to one endpoint, reference-counted by the calls and streams using it."""

    def __init__(self, endpoint: str, index: int, client: _Pb) -> None:
        self.endpoint = endpoint
        self.index = index
        self.client = client
        self.kv: _Pb = client.kvstub
        self.lease: _Pb = client.leasestub
        self.maintenance: _Pb = client.maintenancestub
        self.cluster: _Pb = client.clusterstub
        self.watch: _Pb = rpc.WatchStub(client.channel)
        self.refs = 0
        self.retired = False

    async def close(self) -> None:
        await self.client.close()


class _Pool:
    """Failover over the endpoints: the current connection, rotation, and bounded retries."""

    def __init__(self, endpoints: Sequence[str], request_timeout: float) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is required")
        for endpoint in endpoints:
            _split_endpoint(endpoint)
        self.endpoints = tuple(endpoints)
        self.request_timeout = request_timeout
        self._current: _Connection | None = None
        self._next_index = 0
        self._open: set[_Connection] = set()
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def endpoint(self) -> str:
        """The endpoint in use now ("" before the first call)."""
        return self._current.endpoint if self._current else ""

    async def acquire(self) -> _Connection:
        """The current connection (opened on first use), with one more reference held."""
        async with self._lock:
            if self._closed:
                raise Unavailable("the etcd store is closed")
            if self._current is None:
                index = self._next_index % len(self.endpoints)
                client = await _open_client(self.endpoints[index])
                self._current = _Connection(self.endpoints[index], index, client)
                self._open.add(self._current)
            conn = self._current
            conn.refs += 1
            return conn

    def hold(self, conn: _Connection) -> None:
        """One more reference on a connection in use, for a stream that outlives the call."""
        conn.refs += 1

    async def release(self, conn: _Connection) -> None:
        """Drop a reference; a retired connection closes with its last reference."""
        conn.refs -= 1
        if conn.retired and conn.refs == 0 and conn in self._open:
            self._open.discard(conn)
            await conn.close()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[_Connection]:
        conn = await self.acquire()
        try:
            yield conn
        finally:
            await self.release(conn)

    def fail(self, conn: _Connection) -> None:
        """Retire `conn` after a failure so the next use moves on to the next endpoint."""
        if conn is self._current:
            self._current = None
            self._next_index = conn.index + 1
        conn.retired = True

    async def call(self, what: str, fn: Callable[[_Connection, float], Awaitable[_T]]) -> _T:
        """Run ``fn(connection, attempt_timeout)`` with failover until `request_timeout` is spent.

        Raise `Unavailable` when no endpoint answered in time; domain errors
        and internal signals from `_translate` propagate at once.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.request_timeout
        share = self.request_timeout / len(self.endpoints)
        tried: list[str] = []
        last_error = "no attempt was made"
        while (remaining := deadline - loop.time()) > 0:
            attempt_timeout = min(remaining, max(share, _MIN_TRY_SECONDS))
            async with self.connection() as conn:
                try:
                    async with asyncio.timeout(attempt_timeout + _TIMEOUT_SLACK_SECONDS):
                        return await fn(conn, attempt_timeout)
                except rpc.AioRpcError as e:
                    error = _translate(e)
                    if not isinstance(error, _EndpointFailure):
                        raise error from None
                    last_error = str(error)
                except (_EndpointFailure, TimeoutError) as e:
                    last_error = str(e) or "timed out"
                self.fail(conn)
                tried.append(conn.endpoint)
            if len(tried) % len(self.endpoints) == 0:  # a full round failed: back off
                await asyncio.sleep(min(0.05 * 2 ** (len(tried) // len(self.endpoints)), 0.5, remaining))
        raise Unavailable(
            f"no etcd member answered {what} within {self.request_timeout:g}s "
            f"(tried {', '.join(dict.fromkeys(tried)) or 'none'}); last error: {last_error}"
        )

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
            self._current = None
            conns, self._open = self._open, set()
        for conn in conns:
            await conn.close()


def _grpc_stream_tasks() -> set[asyncio.Task[Any]]:
    """grpc-aio's own per-stream tasks; each finishes shortly after its stream ends."""
    return {
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "__qualname__", "").endswith("_handle_status_once_received")
    }


class _BidiStream:
    """A bidirectional gRPC call that, once ended, has left no grpc task behind.

    grpc-aio runs one internal task per stream that outlives a cancel by a few
    loop iterations; `end` waits for it (recognised as the one that appeared
    when the stream started), so closing a store leaks no task.
    """

    def __init__(self, method: _Pb) -> None:
        self._before = _grpc_stream_tasks()
        self._internal: set[asyncio.Task[Any]] = set()
        self._call: _Pb = method(metadata=_REQUIRE_LEADER)

    async def write(self, request: _Pb) -> None:
        async with self._ended_is_failure():
            await self._call.write(request)
        if not self._internal:
            self._internal = _grpc_stream_tasks() - self._before

    async def read(self, response_type: type) -> _Pb | None:
        """The next message, or None at the end of the stream."""
        async with self._ended_is_failure():
            response = await self._call.read()
        return response if isinstance(response, response_type) else None

    @contextlib.asynccontextmanager
    async def _ended_is_failure(self) -> AsyncIterator[None]:
        """grpc raises CancelledError on a stream cancelled locally (our `end`, a closed
        channel); unless our own task is being cancelled, that is a failed stream."""
        try:
            yield
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._call.cancelled() and task is not None and not task.cancelling():
                raise _EndpointFailure("the stream was closed") from None
            raise

    async def end(self, graceful: bool = False, timeout: float = 1.0) -> None:
        """Half-close and let the server finish (`graceful`), else cancel; then wait for grpc."""
        if graceful:
            with contextlib.suppress(rpc.AioRpcError, TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._call.done_writing()
                    await self._call.code()
        self._call.cancel()
        pending = [task for task in self._internal if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)


class _KeepAliveStream:
    """One LeaseKeepAlive stream on one connection; refreshes any number of leases.

    Responses are matched to waiters by lease ID. If the stream breaks, every
    waiter fails with `_EndpointFailure` and the stream is marked `broken`.
    """

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn
        self.broken = False
        self._stream = _BidiStream(conn.lease.LeaseKeepAlive)
        self._waiters: dict[int, list[asyncio.Future[int]]] = {}
        self._write_lock = asyncio.Lock()
        self._reader = asyncio.create_task(self._read_loop(), name=f"etcd-keepalive-{conn.endpoint}")

    async def refresh(self, lease_id: int) -> int:
        """Send one refresh for `lease_id`; return the TTL etcd answers (<= 0: lease gone)."""
        if self.broken:
            raise _EndpointFailure("lease keep-alive stream is broken")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(lease_id, []).append(future)
        try:
            async with self._write_lock:
                await self._stream.write(rpc.LeaseKeepAliveRequest(ID=lease_id))
            return await future
        finally:
            waiting = self._waiters.get(lease_id, [])
            if future in waiting:
                waiting.remove(future)

    async def _read_loop(self) -> None:
        try:
            while (response := await self._stream.read(rpc.LeaseKeepAliveResponse)) is not None:
                for future in self._waiters.pop(response.ID, []):
                    if not future.done():
                        future.set_result(int(response.TTL))
        except rpc.AioRpcError as e:
            log.info("lease keep-alive stream to %s ended: %s", self.conn.endpoint, _translate(e))
        except _EndpointFailure:
            pass  # closed by us
        finally:
            self.broken = True
            for waiting in self._waiters.values():
                for future in waiting:
                    if not future.done():
                        future.set_exception(_EndpointFailure("lease keep-alive stream ended"))
            self._waiters.clear()

    async def close(self) -> None:
        """End the stream gracefully (etcd ends it on half-close) and stop the reader."""
        self.broken = True
        await self._stream.end(graceful=True)
        self._reader.cancel()
        await asyncio.wait([self._reader])  # unlike awaiting it, never swallows our own cancellation


class _WatchStream:
    """One etcd watch over the instance range on one connection; turns responses into batches."""

    def __init__(self, conn: _Connection, keys: KeySchema, start_revision: int) -> None:
        self.conn = conn
        self._keys = keys
        self._start_revision = start_revision
        self._stream = _BidiStream(conn.watch.Watch)

    async def start(self, timeout: float) -> None:
        """Create the watch and wait for etcd to confirm it; `Compacted` if history is gone."""
        prefix = self._keys.instances_prefix
        create = rpc.WatchCreateRequest(
            key=prefix, range_end=range_end(prefix), start_revision=self._start_revision, progress_notify=True
        )
        await self._stream.write(rpc.WatchRequest(create_request=create))
        async with asyncio.timeout(timeout):
            response = await self._read()
        if not response.created:
            raise _EndpointFailure("etcd did not confirm the watch")
        self._check_canceled(response)

    async def next(self) -> WatchBatch | None:
        """The next batch, or None for a response that reports nothing (a late confirmation)."""
        response = await self._read()
        self._check_canceled(response)
        if response.created:
            return None
        if not response.events:
            return WatchBatch(revision=int(response.header.revision))
        events = [event for event in map(self._event, response.events) if event is not None]
        return WatchBatch(revision=int(response.events[-1].kv.mod_revision), events=tuple(events))

    async def close(self) -> None:
        """Cancel the watch (etcd ends a watch stream only when the client cancels it)."""
        await self._stream.end()

    async def _read(self) -> _Pb:
        response = await self._stream.read(rpc.WatchResponse)
        if response is None:
            raise _EndpointFailure("watch stream ended")
        return response

    def _check_canceled(self, response: _Pb) -> None:
        if response.compact_revision:
            raise Compacted(int(response.compact_revision))
        if response.canceled:
            raise _EndpointFailure(f"etcd canceled the watch: {response.cancel_reason or 'no reason given'}")

    def _event(self, event: _Pb) -> StoreEvent | None:
        kv = event.kv
        try:
            service, instance_id = self._keys.parse_instance_key(bytes(kv.key))
        except BadKey as e:
            log.warning("watch: skipping event: %s", e)
            return None
        if event.type == rpc.Event.DELETE:
            return InstanceDeleted(service, instance_id, int(kv.mod_revision))
        instance = _decode(self._keys, kv)
        return InstancePut(instance, int(kv.mod_revision)) if instance is not None else None


def _stored(kv: _Pb) -> plan.StoredKv:
    return plan.StoredKv(
        value=bytes(kv.value),
        lease_id=int(kv.lease),
        create_revision=int(kv.create_revision),
        mod_revision=int(kv.mod_revision),
    )


def _decode(keys: KeySchema, kv: _Pb) -> Instance | None:
    """The instance in an etcd KeyValue, or None (logged) if its key or record is malformed."""
    try:
        service, instance_id = keys.parse_instance_key(bytes(kv.key))
        return records.decode_instance(
            service,
            instance_id,
            bytes(kv.value),
            lease_id=int(kv.lease),
            create_revision=int(kv.create_revision),
            mod_revision=int(kv.mod_revision),
        )
    except (BadKey, records.RecordError) as e:
        log.warning("skipping malformed instance record at %r: %s", bytes(kv.key), e)
        return None


_COMPARE_TARGETS = {"create": "create_revision", "mod": "mod_revision", "value": "value"}


def _txn_request(txn: plan.Txn, read_on_failure: Sequence[bytes] = ()) -> _Pb:
    """The protobuf of `txn`; on failure it reads `read_on_failure` (same revision)."""
    compares = []
    for c in txn.compares:
        compare = rpc.Compare(
            key=c.key, result=rpc.Compare.EQUAL, target=getattr(rpc.Compare, c.target.upper())
        )
        setattr(compare, _COMPARE_TARGETS[c.target], c.value)
        compares.append(compare)
    success = [
        rpc.RequestOp(request_put=rpc.PutRequest(key=p.key, value=p.value, lease=p.lease_id))
        for p in txn.puts
    ]
    return rpc.TxnRequest(compare=compares, success=success, failure=_range_ops(read_on_failure))


def _range_ops(keys: Sequence[bytes]) -> list[_Pb]:
    return [rpc.RequestOp(request_range=rpc.RangeRequest(key=key)) for key in keys]


def _first_kv(op_response: _Pb) -> plan.StoredKv | None:
    kvs = op_response.response_range.kvs
    return _stored(kvs[0]) if kvs else None


@dataclass(frozen=True, slots=True)
class _TxnResult:
    """Whether the compares held, the header revision, and the failure branch's reads (or None)."""

    succeeded: bool
    revision: int
    read: tuple[plan.StoredKv | None, ...] = ()


class EtcdStore:
    """The registry's `Store` on etcd. See the module docstring for failover and retries."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        prefix: str = "/serval",
        request_timeout: float = 5.0,
        db_quota_bytes: int = 2 * 1024**3,
        max_txn_ops: int = 128,
        snapshot_page_size: int = 10_000,
    ) -> None:
        """Connects lazily. `max_txn_ops` must not exceed the servers' ``--max-txn-ops``."""
        self._pool = _Pool(endpoints, request_timeout)
        self._keys = KeySchema(prefix)
        self._db_quota_bytes = db_quota_bytes
        self._limits = plan.TxnLimits(max_ops=max_txn_ops)
        self._page_size = snapshot_page_size
        self._claims: dict[str, str] = {}  # service ID hex -> owning name; claims never change
        self._keepalive: _KeepAliveStream | None = None
        self._keepalive_lock = asyncio.Lock()

    # -- leases ---------------------------------------------------------------

    async def grant_lease(self, ttl_seconds: int) -> Lease:
        """Grant a lease; a retried grant may leave an unused lease that simply expires."""
        response = await self._pool.call(
            "lease grant",
            lambda c, t: c.lease.LeaseGrant(
                rpc.LeaseGrantRequest(TTL=ttl_seconds), timeout=t, metadata=_REQUIRE_LEADER
            ),
        )
        if response.error:
            raise Unavailable(f"etcd refused to grant a lease: {response.error}")
        return Lease(lease_id=int(response.ID), ttl_seconds=int(response.TTL))

    async def keep_alive(self, lease_id: int) -> int:
        """Refresh over the store's one keep-alive stream; `NotFound` once the lease is gone."""
        ttl = await self._pool.call("lease keep-alive", lambda c, t: self._refresh(c, lease_id))
        if ttl <= 0:
            raise plan.lease_not_found(lease_id)
        return ttl

    async def _refresh(self, conn: _Connection, lease_id: int) -> int:
        async with self._keepalive_lock:
            stream = self._keepalive
            if stream is not None and (stream.broken or stream.conn is not conn):
                self._keepalive = None
                await stream.close()
                await self._pool.release(stream.conn)
            if self._keepalive is None:
                self._keepalive = _KeepAliveStream(conn)
                self._pool.hold(conn)  # released when the stream is replaced
            stream = self._keepalive
        return await stream.refresh(lease_id)

    async def revoke_lease(self, lease_id: int) -> int:
        """Revoke; `NotFound` if etcd does not know the lease.

        If an earlier attempt may have reached etcd (the call was retried), a
        missing lease counts as revoked by that attempt.
        """
        attempts = 0

        async def revoke(c: _Connection, t: float) -> int:
            nonlocal attempts
            attempts += 1
            try:
                response = await c.lease.LeaseRevoke(
                    rpc.LeaseRevokeRequest(ID=lease_id), timeout=t, metadata=_REQUIRE_LEADER
                )
            except rpc.AioRpcError as e:
                if attempts > 1 and isinstance(_translate(e), _LeaseNotFound):
                    return await self._current_revision(c, t)
                raise
            return int(response.header.revision)

        try:
            return await self._pool.call("lease revoke", revoke)
        except _LeaseNotFound:
            raise plan.lease_not_found(lease_id) from None

    # -- instance writes ------------------------------------------------------

    async def put_instances(self, writes: Sequence[InstanceWrite]) -> list[WriteOutcome]:
        """Commit `writes` (group commit on the fast path); one outcome per write, in order.

        Writes to the same instance key apply in batch order. Never raises
        `Unavailable`: each write that could not be confirmed gets it as its
        outcome (it may or may not have been applied; retrying is safe), so
        the successes before it are still reported.
        """
        outcomes: list[WriteOutcome | None] = [None] * len(writes)
        pending = list(range(len(writes)))
        try:
            while pending:
                pending = await self._put_round(writes, pending, outcomes)
        except RegistryError as e:  # Unavailable, or etcd refusing in a way no retry fixes
            outcomes = [e if outcome is None else outcome for outcome in outcomes]
        return [outcome for outcome in outcomes if outcome is not None]

    async def _put_round(
        self, writes: Sequence[InstanceWrite], pending: list[int], outcomes: list[WriteOutcome | None]
    ) -> list[int]:
        """Plan and run one fast-path transaction over `pending`; return the deferred indices."""
        batch = plan.plan_batch([writes[i] for i in pending], self._claims, self._keys, self._limits)
        for j, error in batch.refused.items():
            outcomes[pending[j]] = error
        included = [pending[j] for j in batch.included]
        result = await self._try_txn(batch.txn, "instance batch", batch.reads) if included else None
        if result is not None and result.succeeded:
            self._claims.update(batch.claims)
            for i in included:
                outcomes[i] = result.revision
        elif result is not None:  # compares failed: decide again from what the failure branch read
            await self._recover(writes, included, dict(zip(batch.reads, result.read, strict=True)), outcomes)
        else:
            for i in included:
                outcomes[i] = await self._put_one(writes[i])
        return [pending[j] for j in batch.deferred]

    async def _recover(
        self,
        writes: Sequence[InstanceWrite],
        included: list[int],
        state: dict[bytes, plan.StoredKv | None],
        outcomes: list[WriteOutcome | None],
    ) -> None:
        """Second chance for a failed batch: one merged transaction, then write by write."""
        self._learn_claims(state)
        recovery = plan.plan_recovery([writes[i] for i in included], state, self._keys)
        commits: dict[int, plan.Commit] = {}
        for i, decision in zip(included, recovery.decisions, strict=True):
            if isinstance(decision, plan.Commit):
                commits[i] = decision
            else:
                outcomes[i] = decision.error if isinstance(decision, plan.Refuse) else decision.revision
        result = await self._try_txn(recovery.txn, "instance batch (second try)") if commits else None
        if result is not None and result.succeeded:
            self._claims.update(commit.claim for commit in commits.values())
        for i in commits:
            outcomes[i] = result.revision if result and result.succeeded else await self._put_one(writes[i])

    async def _try_txn(self, txn: plan.Txn, what: str, read: Sequence[bytes] = ()) -> _TxnResult | None:
        """`_txn`, or None when etcd refused it as a whole (a lease is gone, or it is too large)."""
        try:
            return await self._txn(txn, what, read)
        except _LeaseNotFound:
            return None  # one of the leases is gone: find out which, write by write
        except _TxnRejected as e:
            log.warning("etcd refused a %d-put transaction (%s); writing one by one", len(txn.puts), e)
            return None

    def _learn_claims(self, state: dict[bytes, plan.StoredKv | None]) -> None:
        prefix = self._keys.claims_prefix
        for key, kv in state.items():
            owner = plan.claim_owner(kv)
            if key.startswith(prefix) and owner is not None:
                self._claims[key[len(prefix) :].decode()] = owner

    async def _put_one(self, write: InstanceWrite) -> WriteOutcome:
        """The slow path: fresh read, `plan.plan_write`, commit; retry lost CAS races a few times."""
        service, instance_id = write.instance.key
        key = self._keys.instance_key(service, instance_id)
        for _ in range(_CAS_ATTEMPTS):
            decision = await self._decide(write, key)
            if isinstance(decision, plan.Refuse):
                return decision.error
            if isinstance(decision, plan.Done):
                return decision.revision
            try:
                result = await self._txn(decision.txn, f"write of instance {instance_id} of {service}")
            except _LeaseNotFound:
                return plan.lease_not_found(write.lease_id)
            except _TxnRejected as e:
                return InvalidArgument(
                    f"instance {instance_id} of service {service}: etcd refused the write: {e}"
                )
            if result.succeeded:
                self._claims[decision.claim[0]] = decision.claim[1]
                return result.revision
        return Aborted(
            f"instance {instance_id} of service {service}: lost {_CAS_ATTEMPTS} compare-and-swap races; retry"
        )

    async def _decide(self, write: InstanceWrite, key: bytes) -> plan.WriteDecision:
        try:
            sid = names.service_id(write.instance.service).hex()
        except names.InvalidName as e:
            return plan.Refuse(InvalidArgument(f"service: {e}"))
        claim_key = self._keys.claim_key(sid)
        current, claim = await self._read_keys([key, claim_key])
        self._learn_claims({claim_key: claim})
        return plan.plan_write(write, current, plan.claim_owner(claim), self._keys)

    async def delete_instance(self, service: str, instance_id: str) -> int:
        """Delete; `NotFound` if absent (unless a retried attempt may have deleted it)."""
        key = self._keys.instance_key(service, instance_id)
        attempts = 0

        async def delete(c: _Connection, t: float) -> tuple[int, int]:
            nonlocal attempts
            attempts += 1
            response = await c.kv.DeleteRange(
                rpc.DeleteRangeRequest(key=key), timeout=t, metadata=_REQUIRE_LEADER
            )
            return int(response.deleted), int(response.header.revision)

        deleted, revision = await self._pool.call(f"delete of instance {instance_id} of {service}", delete)
        if deleted == 0 and attempts == 1:
            raise NotFound(f"instance {instance_id!r} of service {service!r} not found")
        return revision

    async def replace_instance(self, old: Instance, new: Instance) -> int | None:
        """Compare-and-swap on `old.mod_revision`, keeping `old.lease_id`; None if the record moved.

        If the record is already exactly `new` on that lease (a retried call
        that committed), return its revision.
        """
        if old.key != new.key:
            raise InvalidArgument(f"replace_instance cannot move {old.key} to {new.key}")
        key = self._keys.instance_key(*old.key)
        value = records.encode_instance(new)
        txn = plan.Txn((plan.Compare(key, "mod", old.mod_revision),), (plan.Put(key, value, old.lease_id),))
        try:
            result = await self._txn(
                txn, f"replace of instance {old.instance_id} of {old.service}", read=[key]
            )
        except _LeaseNotFound:
            return None  # the lease ended between the caller's read and now
        if result.succeeded:
            return result.revision
        current = result.read[0]
        if current is not None and current.lease_id == old.lease_id and current.value == value:
            return current.mod_revision
        return None

    # -- reads ----------------------------------------------------------------

    async def get_instance(self, service: str, instance_id: str) -> Instance:
        """Linearizable read; `NotFound` if absent or if its record cannot be decoded (logged)."""
        key = self._keys.instance_key(service, instance_id)
        response = await self._pool.call(
            f"read of instance {instance_id} of {service}",
            lambda c, t: c.kv.Range(rpc.RangeRequest(key=key), timeout=t, metadata=_REQUIRE_LEADER),
        )
        instance = _decode(self._keys, response.kvs[0]) if response.kvs else None
        if instance is None:
            raise NotFound(f"instance {instance_id!r} of service {service!r} not found")
        return instance

    async def snapshot(self) -> Snapshot:
        """Every decodable instance at one revision, read in pages of `snapshot_page_size` keys.

        If that revision is compacted while paging, start over (a few times).
        """
        for _ in range(_SNAPSHOT_ATTEMPTS):
            with contextlib.suppress(_RevisionCompacted):
                return await self._snapshot_once()
        raise Unavailable(f"snapshot kept losing its revision to compaction ({_SNAPSHOT_ATTEMPTS} attempts)")

    async def _snapshot_once(self) -> Snapshot:
        start, end = self._keys.instances_prefix, range_end(self._keys.instances_prefix)
        revision = 0
        instances: list[Instance] = []
        while True:
            response = await self._range_page(start, end, revision)
            revision = revision or int(response.header.revision)
            instances += [i for i in (_decode(self._keys, kv) for kv in response.kvs) if i is not None]
            if not response.more or not response.kvs:
                return Snapshot(instances=instances, revision=revision)
            start = bytes(response.kvs[-1].key) + b"\0"

    async def watch(self, from_revision: int) -> AsyncGenerator[WatchBatch, None]:
        """Batches of every instance change from `from_revision` on, across endpoint failures.

        A broken stream is re-created on the next endpoint from the revision
        after the last one yielded; `Unavailable` if that fails for
        `request_timeout`, `Compacted` if the history is gone. Batches carry
        whole revisions; an event batch's `revision` is its last event's.
        Close the iterator (``aclose``) to end the watch.
        """
        next_revision = max(from_revision, 1)
        loop = asyncio.get_running_loop()
        failing_since: float | None = None  # streams have been failing before yielding since then
        while True:
            stream = await self._pool.call(
                "watch", functools.partial(self._open_watch, start_revision=next_revision)
            )
            yielded = False
            try:
                while (batch := await self._next_batch(stream)) is not None:
                    if batch.revision < next_revision - 1:
                        continue  # progress from a member behind what was already yielded
                    next_revision, yielded = batch.revision + 1, True
                    yield batch
            finally:
                await stream.close()
                await self._pool.release(stream.conn)
            failing_since = None if yielded else (failing_since or loop.time())
            if failing_since is not None:
                if loop.time() - failing_since > self._pool.request_timeout:
                    raise Unavailable(
                        f"etcd watch from revision {next_revision} keeps failing on every member"
                    )
                await asyncio.sleep(0.1)

    async def _open_watch(self, conn: _Connection, timeout: float, start_revision: int) -> _WatchStream:
        stream = _WatchStream(conn, self._keys, start_revision)
        try:
            await stream.start(timeout)
        except BaseException:
            await stream.close()
            raise
        self._pool.hold(conn)  # released by `watch` when the stream ends
        return stream

    async def _next_batch(self, stream: _WatchStream) -> WatchBatch | None:
        """The stream's next batch; None when the stream failed and must be re-created."""
        while True:
            try:
                batch = await stream.next()
            except rpc.AioRpcError as e:
                error = _translate(e)
                if not isinstance(error, _EndpointFailure):
                    raise error from None
                log.info("watch stream to %s failed (%s); re-watching elsewhere", stream.conn.endpoint, error)
                self._pool.fail(stream.conn)
                return None
            except _EndpointFailure as e:
                log.info("watch stream to %s failed (%s); re-watching elsewhere", stream.conn.endpoint, e)
                self._pool.fail(stream.conn)
                return None
            if batch is not None:
                return batch

    # -- operations -----------------------------------------------------------

    async def compact(self, revision: int) -> None:
        """Compact history up to `revision`; compacting an already compacted revision is a no-op."""
        request = rpc.CompactionRequest(revision=revision)
        with contextlib.suppress(_RevisionCompacted):
            await self._pool.call(
                "compaction", lambda c, t: c.kv.Compact(request, timeout=t, metadata=_REQUIRE_LEADER)
            )

    async def cluster_status(self) -> ClusterStatus:
        """Members and each one's own status (unreachable ones flagged, not raised)."""
        response = await self._pool.call(
            "member list", lambda c, t: c.cluster.MemberList(rpc.MemberListRequest(), timeout=t)
        )
        probes = await asyncio.gather(*(_probe_member(m) for m in response.members))
        reachable = [p for p in probes if p.status is not None]
        leader = max(reachable, key=lambda p: p.raft_term).leader if reachable else 0
        members = tuple(p.member_status(leader) for p in probes)
        return ClusterStatus(
            members=members,
            leader_id=leader,
            revision=max([p.revision for p in reachable] + [int(response.header.revision)]),
            db_size_bytes=max((m.db_size_bytes for m in members), default=0),
            db_quota_bytes=self._db_quota_bytes,
            endpoint=self._pool.endpoint,
        )

    async def close(self) -> None:
        """End the keep-alive stream and close every connection; the store is unusable afterwards."""
        async with self._keepalive_lock:
            stream, self._keepalive = self._keepalive, None
        if stream is not None:
            await stream.close()
        await self._pool.close()

    # -- helpers --------------------------------------------------------------

    async def _txn(self, txn: plan.Txn, what: str, read: Sequence[bytes] = ()) -> _TxnResult:
        """Run `txn`; on compare failure, also return the current `read` keys."""
        request = _txn_request(txn, read)
        response = await self._pool.call(
            what, lambda c, t: c.kv.Txn(request, timeout=t, metadata=_REQUIRE_LEADER)
        )
        revision = int(response.header.revision)
        if response.succeeded:
            return _TxnResult(True, revision)
        return _TxnResult(False, revision, tuple(_first_kv(r) for r in response.responses))

    async def _read_keys(self, keys: Sequence[bytes]) -> tuple[plan.StoredKv | None, ...]:
        """Linearizable read of `keys` at one revision (a read-only transaction)."""
        request = rpc.TxnRequest(success=_range_ops(keys))
        response = await self._pool.call(
            "read", lambda c, t: c.kv.Txn(request, timeout=t, metadata=_REQUIRE_LEADER)
        )
        return tuple(_first_kv(r) for r in response.responses)

    async def _range_page(self, start: bytes, end: bytes, revision: int) -> _Pb:
        request = rpc.RangeRequest(key=start, range_end=end, limit=self._page_size, revision=revision)
        return await self._pool.call(
            "snapshot page", lambda c, t: c.kv.Range(request, timeout=t, metadata=_REQUIRE_LEADER)
        )

    async def _current_revision(self, conn: _Connection, timeout: float) -> int:
        request = rpc.RangeRequest(key=self._keys.instances_prefix, count_only=True)
        response = await conn.kv.Range(request, timeout=timeout, metadata=_REQUIRE_LEADER)
        return int(response.header.revision)


@dataclass(frozen=True, slots=True)
class _Probe:
    """One member and the answer of its own Status call (None if it did not answer)."""

    member_id: int
    name: str
    client_urls: tuple[str, ...]
    status: _Pb
    error: str = ""

    @property
    def leader(self) -> int:
        return int(self.status.leader) if self.status is not None else 0

    @property
    def raft_term(self) -> int:
        return int(self.status.raftTerm) if self.status is not None else -1

    @property
    def revision(self) -> int:
        return int(self.status.header.revision) if self.status is not None else 0

    def member_status(self, leader_id: int) -> MemberStatus:
        reachable = self.status is not None
        return MemberStatus(
            member_id=self.member_id,
            name=self.name,
            client_urls=self.client_urls,
            is_leader=self.member_id == leader_id and leader_id != 0,
            reachable=reachable,
            db_size_bytes=int(self.status.dbSize) if reachable else 0,
            version=str(self.status.version) if reachable else "",
            error=self.error,
        )


async def _probe_member(member: _Pb) -> _Probe:
    """Ask `member` for its own status at its first client URL, within a short timeout."""
    member_id, name, urls = int(member.ID), str(member.name), tuple(str(u) for u in member.clientURLs)
    if not urls:
        return _Probe(member_id, name, urls, None, "member has not started (no client URL)")
    endpoint = urls[0].split("://", 1)[-1]
    try:
        client = await _open_client(endpoint)
    except ValueError as e:
        return _Probe(member_id, name, urls, None, str(e))
    try:
        async with asyncio.timeout(_STATUS_TIMEOUT_SECONDS + _TIMEOUT_SLACK_SECONDS):
            status = await client.maintenancestub.Status(rpc.StatusRequest(), timeout=_STATUS_TIMEOUT_SECONDS)
        return _Probe(member_id, name, urls, status)
    except rpc.AioRpcError as e:
        return _Probe(member_id, name, urls, None, f"{getattr(e.code(), 'name', e.code())}: {e.details()}")
    except TimeoutError:
        return _Probe(member_id, name, urls, None, f"no answer within {_STATUS_TIMEOUT_SECONDS:g}s")
    finally:
        await client.close()


if TYPE_CHECKING:

    def _conforms(store: EtcdStore) -> Store:  # mypy checks EtcdStore against the protocol
        return store
