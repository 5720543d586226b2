"""The registry's domain objects and their validation. Pure: no I/O.

`Instance` is the one record type the registry stores and streams. Fields set
by the store (lease, revisions) are zero until the instance has been read back
from etcd. `validate_instance` is the single place that decides what a client
may register; the API layer calls it before anything reaches etcd.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from registry import names
from registry.errors import InvalidArgument

MAX_ADDRESSES = 16
MAX_WEIGHT = 10_000
DEFAULT_WEIGHT = 100
MAX_TIER = 15
MIN_TTL_SECONDS = 1
MAX_TTL_SECONDS = 3600
DEFAULT_TTL_SECONDS = 10
MAX_METADATA_ENTRIES = 32
MAX_METADATA_KEY_LEN = 63
MAX_METADATA_VALUE_LEN = 256
MAX_LOCALITY_LEN = 63
INSTANCE_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_METADATA_KEY_RE = re.compile(r"[A-Za-z0-9._/-]+")


@dataclass(frozen=True, slots=True)
class Instance:
    """One registered endpoint of a service.

    `weight` is the effective weight: 0 while drained, when `drained_weight`
    keeps the weight that undrain restores. `lease_id`, `create_revision` and
    `mod_revision` come from etcd and are ignored on writes.
    """

    service: str
    instance_id: str
    addresses: tuple[str, ...]
    port: int
    weight: int = DEFAULT_WEIGHT
    tier: int = 0
    region: str = ""
    zone: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    ttl_seconds: int = DEFAULT_TTL_SECONDS
    drained: bool = False
    drained_weight: int = 0
    lease_id: int = 0
    create_revision: int = 0
    mod_revision: int = 0

    @property
    def key(self) -> tuple[str, str]:
        """Identity of the instance: ``(service, instance_id)``."""
        return (self.service, self.instance_id)


def validate_instance(instance: Instance) -> Instance:
    """Return `instance` with its service name normalised, or raise `InvalidArgument`.

    Checks every client-settable field; store-set fields are reset to zero.
    """
    try:
        service = names.normalize(instance.service)
    except names.InvalidName as e:
        raise InvalidArgument(f"service: {e}") from None
    check_instance_id(instance.instance_id)
    addresses = _check_addresses(instance.addresses)
    if not 1 <= instance.port <= 65535:
        raise InvalidArgument(f"port {instance.port} is outside 1..65535")
    if not 0 <= instance.weight <= MAX_WEIGHT:
        raise InvalidArgument(f"weight {instance.weight} is outside 0..{MAX_WEIGHT}")
    if not 0 <= instance.tier <= MAX_TIER:
        raise InvalidArgument(f"tier {instance.tier} is outside 0..{MAX_TIER}")
    check_ttl(instance.ttl_seconds)
    for label, value in (("region", instance.region), ("zone", instance.zone)):
        if len(value) > MAX_LOCALITY_LEN or (value and not _METADATA_KEY_RE.fullmatch(value)):
            raise InvalidArgument(
                f"locality {label} {value!r} must be <= {MAX_LOCALITY_LEN} of [A-Za-z0-9._/-]"
            )
    _check_metadata(instance.metadata)
    return replace(
        instance,
        service=service,
        addresses=addresses,
        metadata=dict(instance.metadata),
        drained=False,
        drained_weight=0,
        lease_id=0,
        create_revision=0,
        mod_revision=0,
    )


def check_instance_id(instance_id: str) -> None:
    """Raise `InvalidArgument` unless `instance_id` is 1-128 of ``[A-Za-z0-9._:-]``."""
    if not INSTANCE_ID_RE.fullmatch(instance_id):
        raise InvalidArgument(
            f"instance_id {instance_id[:140]!r} must be 1..128 characters of [A-Za-z0-9._:-]"
        )


def check_ttl(ttl_seconds: int) -> None:
    """Raise `InvalidArgument` unless the TTL is within the allowed range."""
    if not MIN_TTL_SECONDS <= ttl_seconds <= MAX_TTL_SECONDS:
        raise InvalidArgument(f"ttl {ttl_seconds}s is outside {MIN_TTL_SECONDS}..{MAX_TTL_SECONDS}s")


def check_weight(weight: int) -> None:
    """Raise `InvalidArgument` unless `weight` is a usable (non-zero) weight."""
    if not 1 <= weight <= MAX_WEIGHT:
        raise InvalidArgument(f"weight {weight} is outside 1..{MAX_WEIGHT} (use drain for 0)")


def _check_addresses(addresses: tuple[str, ...]) -> tuple[str, ...]:
    if not addresses:
        raise InvalidArgument("at least one address is required")
    if len(addresses) > MAX_ADDRESSES:
        raise InvalidArgument(f"{len(addresses)} addresses, more than {MAX_ADDRESSES}")
    out = []
    for text in addresses:
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            raise InvalidArgument(f"address {text[:64]!r} is not an IPv4 or IPv6 address") from None
        if addr.is_unspecified or addr.is_multicast:
            raise InvalidArgument(f"address {text!r} is unspecified or multicast")
        out.append(addr.compressed)
    if len(set(out)) != len(out):
        raise InvalidArgument("addresses contain duplicates")
    return tuple(out)


def _check_metadata(metadata: Mapping[str, str]) -> None:
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise InvalidArgument(f"metadata has {len(metadata)} entries, more than {MAX_METADATA_ENTRIES}")
    for key, value in metadata.items():
        if not (0 < len(key) <= MAX_METADATA_KEY_LEN) or not _METADATA_KEY_RE.fullmatch(key):
            raise InvalidArgument(
                f"metadata key {key[:80]!r} must be 1..{MAX_METADATA_KEY_LEN} of [A-Za-z0-9._/-]"
            )
        if len(value.encode()) > MAX_METADATA_VALUE_LEN:
            raise InvalidArgument(f"metadata value of {key!r} is longer than {MAX_METADATA_VALUE_LEN} bytes")


def resolution_order(instances: list[Instance]) -> list[Instance]:
    """Best tier first; within a tier heavier first, then by instance ID (deterministic)."""
    return sorted(instances, key=lambda i: (i.tier, -i.weight, i.instance_id))
