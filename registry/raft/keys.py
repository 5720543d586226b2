"""The etcd key schema of the registry. Pure: no I/O.

Every key lives under one configurable prefix (default ``/serval``):

- ``{prefix}/inst/{service}/{instance_id}`` holds one instance record, attached
  to the registering client's lease. Service names are DNS names and instance
  IDs are ``[A-Za-z0-9._:-]``, so neither contains ``/`` and a key parses back
  unambiguously.
- ``{prefix}/replica/{replica_id}`` announces a running registry replica, on
  that replica's own lease (the ID percent-encoded, so it never holds ``/``).
- ``{prefix}/sid/{64 hex digits}`` claims a service ID for the service name in
  its value. Claims have no lease: once a name owns an ID it keeps it, and a
  different name that hashes to the same ID is refused.

Keys are ``bytes`` because etcd keys are; the text is always ASCII.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

DEFAULT_PREFIX = "/serval"
_INSTANCES = "inst"
_CLAIMS = "sid"
_REPLICAS = "replica"


class BadKey(ValueError):
    """A key under the instance range does not have the ``{service}/{instance_id}`` shape."""


@dataclass(frozen=True, slots=True)
class KeySchema:
    """Builds and parses the registry's keys under `prefix`.

    `prefix` must start with ``/``, must not end with ``/`` and must not be
    just ``/``; two schemas with different prefixes never share a key.
    """

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix.startswith("/") or self.prefix.endswith("/") or "//" in self.prefix:
            raise ValueError(f"key prefix {self.prefix!r} must start with '/' and not end with '/'")

    @property
    def instances_prefix(self) -> bytes:
        """The prefix of every instance key (``{prefix}/inst/``)."""
        return f"{self.prefix}/{_INSTANCES}/".encode()

    @property
    def claims_prefix(self) -> bytes:
        """The prefix of every service-ID claim key (``{prefix}/sid/``)."""
        return f"{self.prefix}/{_CLAIMS}/".encode()

    @property
    def replicas_prefix(self) -> bytes:
        """The prefix of every replica announcement key (``{prefix}/replica/``)."""
        return f"{self.prefix}/{_REPLICAS}/".encode()

    def replica_key(self, replica_id: str) -> bytes:
        """The announcement key of `replica_id` (percent-encoded: any text is a valid ID)."""
        return self.replicas_prefix + quote(replica_id, safe="").encode()

    def service_prefix(self, service: str) -> bytes:
        """The prefix of every instance key of `service`."""
        return self.instances_prefix + service.encode() + b"/"

    def instance_key(self, service: str, instance_id: str) -> bytes:
        """The key of instance `instance_id` of `service`."""
        return self.service_prefix(service) + instance_id.encode()

    def claim_key(self, sid_hex: str) -> bytes:
        """The key claiming the service ID `sid_hex` (64 lower-case hex digits)."""
        return self.claims_prefix + sid_hex.encode()

    def parse_instance_key(self, key: bytes) -> tuple[str, str]:
        """Return ``(service, instance_id)`` of an instance key; raise `BadKey` otherwise."""
        start = self.instances_prefix
        if not key.startswith(start):
            raise BadKey(f"key {key!r} is not under {start!r}")
        service, sep, instance_id = key[len(start) :].partition(b"/")
        if not sep or not service or not instance_id or b"/" in instance_id:
            raise BadKey(f"key {key!r} is not {start.decode()}{{service}}/{{instance_id}}")
        try:
            return service.decode("ascii"), instance_id.decode("ascii")
        except UnicodeDecodeError:
            raise BadKey(f"key {key!r} is not ASCII") from None


def range_end(prefix: bytes) -> bytes:
    """The etcd ``range_end`` that selects every key starting with `prefix`.

    The last byte below 0xff is incremented and the rest dropped; an all-0xff
    (or empty) prefix selects everything from `prefix` on (``b"\\0"``).
    """
    body = prefix.rstrip(b"\xff")
    if not body:
        return b"\0"
    return body[:-1] + bytes([body[-1] + 1])
