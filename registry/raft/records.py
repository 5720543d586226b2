"""The versioned codec of instance records stored in etcd. Pure: no I/O.

A record is compact JSON with a schema version, ``{"v": 1, ...}``. Readers
decode through `DECODERS`, one function per version, so a v2 can be added
beside v1 while old records stay readable. Within a version, readers ignore
fields they do not know; an incompatible change bumps ``"v"``.

What a record does not hold, because etcd already does: the service and
instance ID (they are the key), the lease and the revisions (they come from
etcd's ``KeyValue`` and are passed to `decode_instance`).

`encode_instance` is deterministic (sorted keys, no spaces, defaults left
out), so equal instances encode to equal bytes; the store relies on this to
recognise a write it already made.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TypeVar

from registry.model import DEFAULT_WEIGHT, Instance
from registry.raft.store import ReplicaRecord

RECORD_VERSION = 1
_T = TypeVar("_T")


class RecordError(ValueError):
    """A stored record cannot be decoded; the message says which field and why."""


class UnknownVersion(RecordError):
    """The record's schema version has no decoder here (written by a newer release?)."""

    def __init__(self, version: object) -> None:
        super().__init__(f"record schema version {version!r} is unknown (known: {sorted(DECODERS)})")
        self.version = version


def encode_instance(instance: Instance) -> bytes:
    """The current-version record of `instance` (store-set fields are not included)."""
    body: dict[str, object] = {
        "v": RECORD_VERSION,
        "addrs": list(instance.addresses),
        "port": instance.port,
        "weight": instance.weight,
        "ttl": instance.ttl_seconds,
    }
    optional: dict[str, object] = {
        "tier": instance.tier,
        "region": instance.region,
        "zone": instance.zone,
        "meta": dict(instance.metadata),
        "drained": instance.drained,
        "drained_weight": instance.drained_weight,
    }
    body.update((name, value) for name, value in optional.items() if value)
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def decode_instance(
    service: str,
    instance_id: str,
    value: bytes,
    *,
    lease_id: int = 0,
    create_revision: int = 0,
    mod_revision: int = 0,
) -> Instance:
    """Decode a record of any known version; raise `RecordError` (or `UnknownVersion`).

    `service` and `instance_id` come from the key, the other keyword
    arguments from the etcd ``KeyValue`` the record was read from.
    """
    try:
        body = json.loads(value)
    except ValueError as e:  # includes UnicodeDecodeError
        raise RecordError(f"record is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise RecordError(f"record is a JSON {type(body).__name__}, not an object")
    version = body.get("v")
    decoder = DECODERS.get(version) if type(version) is int else None
    if decoder is None:
        raise UnknownVersion(version)
    instance = decoder(service, instance_id, body)
    return replace(instance, lease_id=lease_id, create_revision=create_revision, mod_revision=mod_revision)


def _decode_v1(service: str, instance_id: str, body: Mapping[str, object]) -> Instance:
    addresses = _get(body, "addrs", list, None)
    if not all(isinstance(a, str) for a in addresses):
        raise RecordError("field 'addrs' must be a list of strings")
    metadata = _get(body, "meta", dict, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise RecordError("field 'meta' must map strings to strings")
    return Instance(
        service=service,
        instance_id=instance_id,
        addresses=tuple(addresses),
        port=_get(body, "port", int, None),
        weight=_get(body, "weight", int, DEFAULT_WEIGHT),
        tier=_get(body, "tier", int, 0),
        region=_get(body, "region", str, ""),
        zone=_get(body, "zone", str, ""),
        metadata=metadata,
        ttl_seconds=_get(body, "ttl", int, None),
        drained=_get(body, "drained", bool, False),
        drained_weight=_get(body, "drained_weight", int, 0),
    )


def _get(body: Mapping[str, object], name: str, kind: type[_T], default: _T | None) -> _T:
    """Field `name` of exact type `kind` (``bool`` is not an ``int``); `default` if absent."""
    if name not in body:
        if default is None:
            raise RecordError(f"field {name!r} is missing")
        return default
    value = body[name]
    if not isinstance(value, kind) or type(value) is not kind:
        raise RecordError(f"field {name!r} is {type(value).__name__}, expected {kind.__name__}")
    return value


def encode_replica(record: ReplicaRecord) -> bytes:
    """The record of a replica announcement (same JSON conventions as instances)."""
    body = {
        "v": RECORD_VERSION,
        "id": record.replica_id,
        "addr": record.address,
        "version": record.version,
        "started_ms": record.started_unix_ms,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def decode_replica(value: bytes) -> ReplicaRecord:
    """Decode a replica announcement; `RecordError` if it is not one this release reads."""
    try:
        body = json.loads(value)
    except ValueError as e:
        raise RecordError(f"replica record is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise RecordError(f"replica record is a JSON {type(body).__name__}, not an object")
    if body.get("v") != RECORD_VERSION:
        raise UnknownVersion(body.get("v"))
    return ReplicaRecord(
        replica_id=_get(body, "id", str, None),
        address=_get(body, "addr", str, ""),
        version=_get(body, "version", str, ""),
        started_unix_ms=_get(body, "started_ms", int, 0),
    )


# One decoder per schema version; add v2 here, keep v1 for old records.
DECODERS: Mapping[int, Callable[[str, str, Mapping[str, object]], Instance]] = {
    1: _decode_v1,
}
