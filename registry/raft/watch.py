"""The instance watch of `EtcdStore`: one etcd watch stream, re-created across failures.

Contract: `watch_instances(pool, keys, from_revision)` yields a `WatchBatch`
per etcd watch response on the instance range, in revision order, from
`from_revision` on. An event batch's `revision` is its last event's; an empty
batch reports progress at the header revision (etcd's `progress_notify`). A
broken stream is re-created on the next endpoint from the revision after the
last one yielded, invisibly to the caller; `Unavailable` if no member accepts
a watch for the pool's `request_timeout`, `Compacted` if the history is gone.
Events with a malformed key or record are logged and skipped.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncGenerator
from typing import Any

from aetcd import rpc

from registry.errors import Unavailable
from registry.raft.connection import BidiStream, Connection, EndpointFailure, Pool, translate
from registry.raft.convert import decode_instance
from registry.raft.keys import BadKey, KeySchema, range_end
from registry.raft.store import Compacted, InstanceDeleted, InstancePut, StoreEvent, WatchBatch

log = logging.getLogger(__name__)

# aetcd's generated protobuf modules are untyped; `_Pb` marks a protobuf message.
_Pb = Any


async def watch_instances(
    pool: Pool, keys: KeySchema, from_revision: int
) -> AsyncGenerator[WatchBatch, None]:
    """Batches of every instance change from `from_revision` on, across endpoint failures.

    Batches carry whole revisions. Close the iterator (``aclose``) to end the watch.
    """
    next_revision = max(from_revision, 1)
    loop = asyncio.get_running_loop()
    failing_since: float | None = None  # streams have been failing before yielding since then
    while True:
        stream = await pool.call(
            "watch", functools.partial(_open_watch, pool, keys, start_revision=next_revision)
        )
        yielded = False
        try:
            while (batch := await _next_batch(pool, stream)) is not None:
                if batch.revision < next_revision - 1:
                    continue  # progress from a member behind what was already yielded
                next_revision, yielded = batch.revision + 1, True
                yield batch
        finally:
            await stream.close()
            await pool.release(stream.conn)
        failing_since = None if yielded else (failing_since or loop.time())
        if failing_since is not None:
            if loop.time() - failing_since > pool.request_timeout:
                raise Unavailable(f"etcd watch from revision {next_revision} keeps failing on every member")
            await asyncio.sleep(0.1)


async def _open_watch(
    pool: Pool, keys: KeySchema, conn: Connection, timeout: float, start_revision: int
) -> _WatchStream:
    stream = _WatchStream(conn, keys, start_revision)
    try:
        await stream.start(timeout)
    except BaseException:
        await stream.close()
        raise
    pool.hold(conn)  # released by `watch_instances` when the stream ends
    return stream


async def _next_batch(pool: Pool, stream: _WatchStream) -> WatchBatch | None:
    """The stream's next batch; None when the stream failed and must be re-created."""
    while True:
        try:
            batch = await stream.next()
        except rpc.AioRpcError as e:
            error = translate(e)
            if not isinstance(error, EndpointFailure):
                raise error from None
            log.info("watch stream to %s failed (%s); re-watching elsewhere", stream.conn.endpoint, error)
            pool.fail(stream.conn)
            return None
        except EndpointFailure as e:
            log.info("watch stream to %s failed (%s); re-watching elsewhere", stream.conn.endpoint, e)
            pool.fail(stream.conn)
            return None
        if batch is not None:
            return batch


class _WatchStream:
    """One etcd watch over the instance range on one connection; turns responses into batches."""

    def __init__(self, conn: Connection, keys: KeySchema, start_revision: int) -> None:
        self.conn = conn
        self._keys = keys
        self._start_revision = start_revision
        self._stream = BidiStream(conn.watch.Watch)

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
            raise EndpointFailure("etcd did not confirm the watch")
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
            raise EndpointFailure("watch stream ended")
        return response

    def _check_canceled(self, response: _Pb) -> None:
        if response.compact_revision:
            raise Compacted(int(response.compact_revision))
        if response.canceled:
            raise EndpointFailure(f"etcd canceled the watch: {response.cancel_reason or 'no reason given'}")

    def _event(self, event: _Pb) -> StoreEvent | None:
        kv = event.kv
        try:
            service, instance_id = self._keys.parse_instance_key(bytes(kv.key))
        except BadKey as e:
            log.warning("watch: skipping event: %s", e)
            return None
        if event.type == rpc.Event.DELETE:
            return InstanceDeleted(service, instance_id, int(kv.mod_revision))
        instance = decode_instance(self._keys, kv)
        return InstancePut(instance, int(kv.mod_revision)) if instance is not None else None
