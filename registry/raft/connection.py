"""The connection layer under `EtcdStore`: endpoint failover, gRPC streams, error mapping.

Contract: `Pool.call(what, fn)` runs ``fn(connection, attempt_timeout)`` on
one endpoint at a time until it answers or `request_timeout` is spent, then
raises `Unavailable` naming the endpoints tried and the last error. Every
other module reaches etcd through a `Connection` the pool hands out, and
passes `REQUIRE_LEADER` as the metadata of each request.

Connections: one aetcd client (one gRPC channel) at a time, to one endpoint.
A call that fails with UNAVAILABLE, a deadline, "no leader" or a broken
stream retires that client and retries on the next endpoint, round-robin,
with short backoff after each full round. A retired client is closed when its
last call or stream ends (`acquire`/`hold` ... `release`). Every request
carries ``hasleader: true`` so a member without quorum refuses it (or cancels
the stream) instead of stalling.

Errors: `translate` maps a gRPC error to `EndpointFailure` (retry elsewhere;
the pool handles it), to an internal signal the caller handles
(`LeaseNotFound`, `TxnRejected`, `RevisionCompacted`), or to a domain error.

`BidiStream` wraps a bidirectional call (keep-alive, watch) so that a stream
cancelled under us reads as `EndpointFailure` and an ended stream leaves no
grpc task behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aetcd
from aetcd import rpc

from registry.errors import InvalidArgument, Unavailable

_T = TypeVar("_T")
# aetcd and its generated protobuf modules are untyped; `_Pb` marks a protobuf
# message (or stub) that only the converters look into.
_Pb = Any

REQUIRE_LEADER = (("hasleader", "true"),)
TIMEOUT_SLACK_SECONDS = 0.5  # local timeout beyond the gRPC deadline, so gRPC's fires first
_CHANNEL_OPTIONS = {
    "grpc.max_receive_message_length": 256 * 1024 * 1024,  # a 10,000-key snapshot page
    "grpc.keepalive_time_ms": 10_000,  # etcd's --grpc-keepalive-min-time is 5 s
    "grpc.keepalive_timeout_ms": 5_000,
}
_RETRY_CODES = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "UNKNOWN"})
_MIN_TRY_SECONDS = 0.5


class EndpointFailure(Exception):
    """This endpoint could not answer; another one may."""


class LeaseNotFound(Exception):
    """etcd does not know a lease the request names."""


class TxnRejected(Exception):
    """etcd refused a transaction as too large (ops or bytes)."""


class RevisionCompacted(Exception):
    """A read at a revision that has been compacted away."""


def translate(error: _Pb) -> Exception:
    """Map a gRPC error from etcd to a retryable failure, an internal signal or a domain error."""
    code = getattr(error.code(), "name", str(error.code()))
    details = error.details() or ""
    if code in _RETRY_CODES or "too many requests" in details:
        return EndpointFailure(f"{code}: {details}")
    if "lease not found" in details:
        return LeaseNotFound(details)
    if "has been compacted" in details:
        return RevisionCompacted(details)
    if "too many operations in txn" in details or "request is too large" in details:
        return TxnRejected(details)
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


async def open_client(endpoint: str) -> _Pb:
    """A connected aetcd client for `endpoint` (the channel connects lazily)."""
    host, port = _split_endpoint(endpoint)
    client = aetcd.Client(host=host, port=port, options=_CHANNEL_OPTIONS)
    await client.connect()
    return client


class Connection:
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


class Pool:
    """Failover over the endpoints: the current connection, rotation, and bounded retries."""

    def __init__(self, endpoints: Sequence[str], request_timeout: float) -> None:
        if not endpoints:
            raise ValueError("at least one etcd endpoint is required")
        for endpoint in endpoints:
            _split_endpoint(endpoint)
        self.endpoints = tuple(endpoints)
        self.request_timeout = request_timeout
        self._current: Connection | None = None
        self._next_index = 0
        self._open: set[Connection] = set()
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def endpoint(self) -> str:
        """The endpoint in use now ("" before the first call)."""
        return self._current.endpoint if self._current else ""

    async def acquire(self) -> Connection:
        """The current connection (opened on first use), with one more reference held."""
        async with self._lock:
            if self._closed:
                raise Unavailable("the etcd store is closed")
            if self._current is None:
                index = self._next_index % len(self.endpoints)
                client = await open_client(self.endpoints[index])
                self._current = Connection(self.endpoints[index], index, client)
                self._open.add(self._current)
            conn = self._current
            conn.refs += 1
            return conn

    def hold(self, conn: Connection) -> None:
        """One more reference on a connection in use, for a stream that outlives the call."""
        conn.refs += 1

    async def release(self, conn: Connection) -> None:
        """Drop a reference; a retired connection closes with its last reference."""
        conn.refs -= 1
        if conn.retired and conn.refs == 0 and conn in self._open:
            self._open.discard(conn)
            await conn.close()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        conn = await self.acquire()
        try:
            yield conn
        finally:
            await self.release(conn)

    def fail(self, conn: Connection) -> None:
        """Retire `conn` after a failure so the next use moves on to the next endpoint."""
        if conn is self._current:
            self._current = None
            self._next_index = conn.index + 1
        conn.retired = True

    async def call(self, what: str, fn: Callable[[Connection, float], Awaitable[_T]]) -> _T:
        """Run ``fn(connection, attempt_timeout)`` with failover until `request_timeout` is spent.

        Raise `Unavailable` when no endpoint answered in time; domain errors
        and internal signals from `translate` propagate at once.
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
                    async with asyncio.timeout(attempt_timeout + TIMEOUT_SLACK_SECONDS):
                        return await fn(conn, attempt_timeout)
                except rpc.AioRpcError as e:
                    error = translate(e)
                    if not isinstance(error, EndpointFailure):
                        raise error from None
                    last_error = str(error)
                except (EndpointFailure, TimeoutError) as e:
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


class BidiStream:
    """A bidirectional gRPC call that, once ended, has left no grpc task behind.

    grpc-aio runs one internal task per stream that outlives a cancel by a few
    loop iterations; `end` waits for it (recognised as the one that appeared
    when the stream started), so closing a store leaks no task.
    """

    def __init__(self, method: _Pb) -> None:
        self._before = _grpc_stream_tasks()
        self._internal: set[asyncio.Task[Any]] = set()
        self._call: _Pb = method(metadata=REQUIRE_LEADER)

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
                raise EndpointFailure("the stream was closed") from None
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
