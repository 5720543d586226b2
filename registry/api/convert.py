"""The only module that converts between protobuf messages and domain objects."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from registry import names
from registry.api.v1 import registry_pb2 as pb
from registry.model import Instance
from registry.raft.store import ClusterStatus
from registry.view import Delta


def instance_from_pb(msg: pb.Instance) -> Instance:
    """Client-settable fields only; store-set fields are left at zero."""
    return Instance(
        service=msg.service,
        instance_id=msg.instance_id,
        addresses=tuple(msg.addresses),
        port=msg.port,
        weight=msg.weight,
        tier=msg.tier,
        region=msg.locality.region,
        zone=msg.locality.zone,
        metadata=dict(msg.metadata),
        ttl_seconds=msg.ttl_seconds,
    )


def instance_to_pb_input(inst: Instance) -> pb.Instance:
    """Client-settable fields only, unvalidated: what a client sends to Register."""
    return pb.Instance(
        service=inst.service,
        instance_id=inst.instance_id,
        addresses=inst.addresses,
        port=inst.port,
        weight=inst.weight,
        tier=inst.tier,
        locality=pb.Locality(region=inst.region, zone=inst.zone),
        metadata=inst.metadata,
        ttl_seconds=inst.ttl_seconds,
    )


def instance_to_pb(inst: Instance) -> pb.Instance:
    """Every field, including store-set ones and the service ID: what the registry sends."""
    msg = instance_to_pb_input(inst)
    msg.lease_id = inst.lease_id
    msg.drained = inst.drained
    msg.drained_weight = inst.drained_weight
    msg.create_revision = inst.create_revision
    msg.mod_revision = inst.mod_revision
    msg.service_id = names.service_id_hex(inst.service)
    return msg


def instance_from_wire(msg: pb.Instance) -> Instance:
    """Every field, including store-set ones: for clients reading watch streams."""
    return dataclasses.replace(
        instance_from_pb(msg),
        drained=msg.drained,
        drained_weight=msg.drained_weight,
        lease_id=msg.lease_id,
        create_revision=msg.create_revision,
        mod_revision=msg.mod_revision,
    )


def delta_to_pb(delta: Delta) -> pb.InstanceDelta:
    if delta.instance is None:
        return pb.InstanceDelta(
            kind=pb.InstanceDelta.DELETE,
            instance=pb.Instance(service=delta.service, instance_id=delta.instance_id),
            revision=delta.revision,
        )
    return pb.InstanceDelta(
        kind=pb.InstanceDelta.PUT, instance=instance_to_pb(delta.instance), revision=delta.revision
    )


def deltas_message(deltas: Iterable[Delta], revision: int, replica_id: str) -> pb.WatchResponse:
    return pb.WatchResponse(
        kind=pb.WatchResponse.DELTAS,
        deltas=[delta_to_pb(d) for d in deltas],
        revision=revision,
        replica_id=replica_id,
    )


def snapshot_message(
    instances: Iterable[Instance], revision: int, replica_id: str, last: bool, first: bool
) -> pb.WatchResponse:
    """One part of a snapshot series: `first` starts it (`snapshot_start`), `last` ends it."""
    kind = pb.WatchResponse.SNAPSHOT_END if last else pb.WatchResponse.SNAPSHOT
    return pb.WatchResponse(
        kind=kind,
        instances=[instance_to_pb(i) for i in instances],
        revision=revision,
        replica_id=replica_id,
        snapshot_start=first,
    )


def progress_message(revision: int, replica_id: str) -> pb.WatchResponse:
    return pb.WatchResponse(kind=pb.WatchResponse.PROGRESS, revision=revision, replica_id=replica_id)


def cluster_status_to_pb(status: ClusterStatus) -> pb.ClusterStatusResponse:
    return pb.ClusterStatusResponse(
        members=[
            pb.EtcdMember(
                id=m.member_id,
                name=m.name,
                client_urls=m.client_urls,
                is_leader=m.is_leader,
                reachable=m.reachable,
                db_size_bytes=m.db_size_bytes,
                version=m.version,
                error=m.error,
            )
            for m in status.members
        ],
        leader_id=status.leader_id,
        etcd_revision=status.revision,
        db_size_bytes=status.db_size_bytes,
        db_quota_bytes=status.db_quota_bytes,
        etcd_endpoint=status.endpoint,
        compact_revision=status.compact_revision,
        replicas=[
            pb.ReplicaInfo(
                replica_id=r.replica_id,
                address=r.address,
                version=r.version,
                started_unix_ms=r.started_unix_ms,
            )
            for r in status.replicas
        ],
    )
