"""etcd protobuf messages to and from the registry's values: pure conversions, no I/O.

Contract: `decode_instance` turns an etcd `KeyValue` under the instance prefix
into an `Instance`, or None (logged) if its key or record is malformed, so
readers skip it; `txn_request` builds the protobuf of a `plan.Txn`, whose
failure branch reads the given keys; `first_kv` reads one such key back as a
`plan.StoredKv`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from aetcd import rpc

from registry.model import Instance
from registry.raft import plan, records
from registry.raft.keys import BadKey, KeySchema

log = logging.getLogger(__name__)

# aetcd's generated protobuf modules are untyped; `_Pb` marks a protobuf message.
_Pb = Any

_COMPARE_TARGETS = {"create": "create_revision", "mod": "mod_revision", "value": "value"}


def decode_instance(keys: KeySchema, kv: _Pb) -> Instance | None:
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


def txn_request(txn: plan.Txn, read_on_failure: Sequence[bytes] = ()) -> _Pb:
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
    return rpc.TxnRequest(compare=compares, success=success, failure=range_ops(read_on_failure))


def range_ops(keys: Sequence[bytes]) -> list[_Pb]:
    """One single-key Range operation per key, for a transaction branch."""
    return [rpc.RequestOp(request_range=rpc.RangeRequest(key=key)) for key in keys]


def first_kv(op_response: _Pb) -> plan.StoredKv | None:
    """What a single-key Range operation of a transaction read (None: the key is absent)."""
    kvs = op_response.response_range.kvs
    return _stored(kvs[0]) if kvs else None


def _stored(kv: _Pb) -> plan.StoredKv:
    return plan.StoredKv(
        value=bytes(kv.value),
        lease_id=int(kv.lease),
        create_revision=int(kv.create_revision),
        mod_revision=int(kv.mod_revision),
    )
