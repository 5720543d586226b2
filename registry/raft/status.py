"""Cluster status for `EtcdStore`: the member list, and each member's own Status.

Contract: `cluster_status(pool, db_quota_bytes)` lists the members through the
pool (with failover; `Unavailable` if no member answers), then asks every
member directly, at its first client URL, within a short timeout. A member
that does not answer is reported `reachable=False` with the error, never
raised. The leader is the one named by the reachable member with the highest
raft term; revision and database size are the highest any member reports.

`compact_revision(pool)` is etcd's last compaction (0 if history was never
compacted). etcd has no call that reports it, so it is probed: a read at
revision 1 succeeds while nothing was compacted; otherwise a watch on a key
that is never written, from revision 1, is cancelled by etcd with the
compaction revision. `Unavailable` if no member answers.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aetcd import rpc

from registry.raft.connection import (
    TIMEOUT_SLACK_SECONDS,
    BidiStream,
    Connection,
    EndpointFailure,
    Pool,
    RevisionCompacted,
    open_client,
)
from registry.raft.store import ClusterStatus, MemberStatus

# aetcd's generated protobuf modules are untyped; `_Pb` marks a protobuf message.
_Pb = Any

_STATUS_TIMEOUT_SECONDS = 1.0


async def cluster_status(pool: Pool, db_quota_bytes: int) -> ClusterStatus:
    """Members and each one's own status (unreachable ones flagged, not raised)."""
    response = await pool.call(
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
        db_quota_bytes=db_quota_bytes,
        endpoint=pool.endpoint,
    )


_NEVER_WRITTEN = b"\0serval/compaction-probe"


async def compact_revision(pool: Pool) -> int:
    """etcd's last compaction revision; 0 if history was never compacted (see module docstring)."""
    try:
        await pool.call(
            "compaction probe",
            lambda c, t: c.kv.Range(rpc.RangeRequest(key=_NEVER_WRITTEN, revision=1), timeout=t),
        )
        return 0
    except RevisionCompacted:
        return await pool.call("compaction probe", _watch_for_compaction)


async def _watch_for_compaction(conn: Connection, timeout: float) -> int:
    stream = BidiStream(conn.watch.Watch)
    try:
        create = rpc.WatchCreateRequest(key=_NEVER_WRITTEN, start_revision=1)
        await stream.write(rpc.WatchRequest(create_request=create))
        async with asyncio.timeout(timeout):
            while (response := await stream.read(rpc.WatchResponse)) is not None:
                if response.compact_revision:
                    return int(response.compact_revision)
                if response.canceled:
                    break
        raise EndpointFailure("etcd ended the compaction probe without a compaction revision")
    except TimeoutError:
        raise EndpointFailure(f"no compaction revision from etcd within {timeout:g}s") from None
    finally:
        await stream.end()


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
        client = await open_client(endpoint)
    except ValueError as e:
        return _Probe(member_id, name, urls, None, str(e))
    try:
        async with asyncio.timeout(_STATUS_TIMEOUT_SECONDS + TIMEOUT_SLACK_SECONDS):
            status = await client.maintenancestub.Status(rpc.StatusRequest(), timeout=_STATUS_TIMEOUT_SECONDS)
        return _Probe(member_id, name, urls, status)
    except rpc.AioRpcError as e:
        return _Probe(member_id, name, urls, None, f"{getattr(e.code(), 'name', e.code())}: {e.details()}")
    except TimeoutError:
        return _Probe(member_id, name, urls, None, f"no answer within {_STATUS_TIMEOUT_SECONDS:g}s")
    finally:
        await client.close()
