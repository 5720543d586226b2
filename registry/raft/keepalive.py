"""Lease refreshes for `EtcdStore`: one long-lived LeaseKeepAlive stream per store.

Contract: `KeepAlive.refresh(lease_id)` sends one refresh and returns the TTL
etcd answers, or raises `NotFound` once the lease is gone (etcd answers a
TTL <= 0); `Unavailable` if no member answers within the pool's
`request_timeout`. Any number of concurrent refreshes share the stream, and
responses are matched to callers by lease ID. A broken stream, or one on a
connection the pool has moved away from, is replaced on the current
connection by the next refresh. `close()` ends the stream.
"""

from __future__ import annotations

import asyncio
import logging

from aetcd import rpc

from registry.raft import plan
from registry.raft.connection import BidiStream, Connection, EndpointFailure, Pool, translate

log = logging.getLogger(__name__)


class KeepAlive:
    """The store's shared keep-alive stream, (re)opened on the pool's current connection."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self._stream: _KeepAliveStream | None = None
        self._lock = asyncio.Lock()

    async def refresh(self, lease_id: int) -> int:
        """Refresh `lease_id` with failover; its TTL, or `NotFound` once the lease is gone."""
        ttl = await self._pool.call("lease keep-alive", lambda c, t: self._refresh(c, lease_id))
        if ttl <= 0:
            raise plan.lease_not_found(lease_id)
        return ttl

    async def _refresh(self, conn: Connection, lease_id: int) -> int:
        async with self._lock:
            stream = self._stream
            if stream is not None and (stream.broken or stream.conn is not conn):
                self._stream = None
                await stream.close()
                await self._pool.release(stream.conn)
            if self._stream is None:
                self._stream = _KeepAliveStream(conn)
                self._pool.hold(conn)  # released when the stream is replaced
            stream = self._stream
        return await stream.refresh(lease_id)

    async def close(self) -> None:
        """End the stream (its connection is left to the pool to close)."""
        async with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            await stream.close()


class _KeepAliveStream:
    """One LeaseKeepAlive stream on one connection; refreshes any number of leases.

    Responses are matched to waiters by lease ID. If the stream breaks, every
    waiter fails with `EndpointFailure` and the stream is marked `broken`.
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.broken = False
        self._stream = BidiStream(conn.lease.LeaseKeepAlive)
        self._waiters: dict[int, list[asyncio.Future[int]]] = {}
        self._write_lock = asyncio.Lock()
        self._reader = asyncio.create_task(self._read_loop(), name=f"etcd-keepalive-{conn.endpoint}")

    async def refresh(self, lease_id: int) -> int:
        """Send one refresh for `lease_id`; return the TTL etcd answers (<= 0: lease gone)."""
        if self.broken:
            raise EndpointFailure("lease keep-alive stream is broken")
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
            log.info("lease keep-alive stream to %s ended: %s", self.conn.endpoint, translate(e))
        except EndpointFailure:
            pass  # closed by us
        finally:
            self.broken = True
            for waiting in self._waiters.values():
                for future in waiting:
                    if not future.done():
                        future.set_exception(EndpointFailure("lease keep-alive stream ended"))
            self._waiters.clear()

    async def close(self) -> None:
        """End the stream gracefully (etcd ends it on half-close) and stop the reader."""
        self.broken = True
        await self._stream.end(graceful=True)
        self._reader.cancel()
        await asyncio.wait([self._reader])  # unlike awaiting it, never swallows our own cancellation
