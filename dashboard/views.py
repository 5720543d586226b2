"""JSON shapes of the read model, for the API, the SSE stream and the templates. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dashboard.feed import ReplicaState
from dashboard.model import VERSION_KEY, Event, Model, Page, usable
from registry.api.v1 import registry_pb2 as pb
from registry.model import Instance


def instance(i: Instance, lease_left: int | None = None) -> dict[str, Any]:
    """An instance; `lease_left`: seconds its lease has left (-1 expired, None: not asked)."""
    why = ""
    if i.drained:
        why = f"drained by an operator (weight {i.drained_weight} restored on undrain)"
    elif i.weight == 0:
        why = "registered with weight 0"
    return {
        "service": i.service,
        "instance_id": i.instance_id,
        "addresses": list(i.addresses),
        "port": i.port,
        "tier": i.tier,
        "weight": i.weight,
        "region": i.region,
        "zone": i.zone,
        "drained": i.drained,
        "drained_weight": i.drained_weight,
        "usable": usable(i),
        "why_not_usable": why,
        "ttl_seconds": i.ttl_seconds,
        "lease_id": i.lease_id,
        "lease_remaining_seconds": lease_left,
        "source": (i.metadata.get("serval.agent", "") and f"agent {i.metadata['serval.agent']}") or "api",
        "metadata": dict(i.metadata),
        "create_revision": i.create_revision,
        "mod_revision": i.mod_revision,
    }


def page(p: Page) -> dict[str, Any]:
    return {
        "services": [
            {"name": r.name, "instances": r.instances, "usable": r.usable, "drained": r.drained}
            for r in p.rows
        ],
        "total": p.total,
        "total_exact": p.total_exact,
        "offset": p.offset,
        "limit": p.limit,
    }


def event(e: Event) -> dict[str, Any]:
    return {
        "seq": e.seq,
        "at": e.at,
        "revision": e.revision,
        "service": e.service,
        "instance_id": e.instance_id,
        "kind": e.kind,
        "weight": None if e.instance is None else e.instance.weight,
        "drained": None if e.instance is None else e.instance.drained,
    }


def agents(model: Model, subscribers: dict[str, tuple[str, pb.SubscriberStatus]]) -> list[dict[str, Any]]:
    """Host records (service `agents.serval`) with the lag of subscriber ``agent/<id>``, on
    whichever replica serves it (`subscribers`: `Feed.subscriber_statuses()`)."""
    out = []
    for rec in model.agents():
        replica, sub = subscribers.get(f"agent/{rec.instance_id}", ("", None))
        out.append(
            {
                "agent_id": rec.instance_id,
                "addresses": list(rec.addresses),
                "sal_port": rec.port,
                "version": rec.metadata.get(VERSION_KEY, ""),
                "region": rec.region,
                "zone": rec.zone,
                "subscribed": sub is not None,
                "replica": replica,
                "applied_revision": sub.applied_revision if sub else None,
                "lag_revisions": sub.lag_revisions if sub else None,
                "lag_seconds": sub.lag_seconds if sub else None,
            }
        )
    return out


def cluster(
    status: pb.ClusterStatusResponse | None, at: float, error: str, replicas: Iterable[ReplicaState] = ()
) -> dict[str, Any]:
    """The etcd cluster as the connected replica sees it, and every replica's own state."""
    if status is None:
        return {"available": False, "error": error}
    return {
        "available": True,
        "error": error,
        "fetched_at": at,
        "replica_id": status.replica_id,
        "replica_version": status.replica_version,
        "etcd_endpoint": status.etcd_endpoint,
        "leader_id": f"{status.leader_id:x}",
        "etcd_revision": status.etcd_revision,
        "view_revision": status.view_revision,
        "history_start_revision": status.history_start_revision,
        "db_size_bytes": status.db_size_bytes,
        "db_quota_bytes": status.db_quota_bytes,
        "db_used_fraction": status.db_size_bytes / status.db_quota_bytes if status.db_quota_bytes else None,
        "last_compaction_revision": status.compact_revision or None,
        "replicas": [replica(r) for r in sorted(replicas, key=lambda r: r.info.replica_id)],
        "services": status.services,
        "instances": status.instances,
        "members": [
            {
                "id": f"{m.id:x}",
                "name": m.name,
                "client_urls": list(m.client_urls),
                "is_leader": m.is_leader,
                "reachable": m.reachable,
                "db_size_bytes": m.db_size_bytes,
                "version": m.version,
                "error": m.error,
            }
            for m in status.members
        ],
        "subscribers": [
            {
                "subscriber_id": s.subscriber_id,
                "peer": s.peer,
                "applied_revision": s.applied_revision,
                "lag_revisions": s.lag_revisions,
                "lag_seconds": s.lag_seconds,
                "queued_messages": s.queued_messages,
            }
            for s in status.subscribers
        ],
    }


def replica(r: ReplicaState) -> dict[str, Any]:
    st = r.status
    return {
        "replica_id": r.info.replica_id,
        "address": r.info.address,
        "version": r.info.version,
        "started_unix_ms": r.info.started_unix_ms,
        "reachable": st is not None,
        "error": r.error,
        "view_revision": st.view_revision if st else None,
        "subscribers": len(st.subscribers) if st else None,
        "etcd_endpoint": st.etcd_endpoint if st else None,
    }
