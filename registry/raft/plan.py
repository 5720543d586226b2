"""Transaction planning for `put_instances`. Pure: no I/O, no clock.

The store commits a batch of `InstanceWrite`s in two ways:

- Fast path, `plan_batch`: one transaction for many writes (group commit),
  planned from what the store already knows. Each new instance key must not
  exist yet (``create_revision == 0``; a ``replace`` write puts
  unconditionally); each service-ID claim is either known to be owned by the
  same name (``value == name``, nothing to write), known to be owned by another
  name (the write is refused right away) or unknown (the claim must not exist
  yet, and the transaction creates it). If any compare fails, the whole
  transaction fails and the store falls back to the slow path.
- Slow path, `plan_write`: one write, planned from a fresh read of its
  instance key and claim key. It either commits with exact compares, is
  refused, or is recognised as already done (a retried write that committed).

etcd refuses a transaction that puts the same key twice or exceeds its size
limits, so `plan_batch` puts each claim once and defers a second write to the
same instance key, and any write that does not fit `TxnLimits`, to a later
batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from registry import names
from registry.errors import AlreadyExists, InvalidArgument, NotFound, RegistryError
from registry.raft.keys import KeySchema
from registry.raft.records import encode_instance
from registry.raft.store import InstanceWrite

CompareTarget = Literal["create", "mod", "value"]


@dataclass(frozen=True, slots=True)
class Compare:
    """Holds iff the key's `target` (create/mod revision, or value) equals `value`."""

    key: bytes
    target: CompareTarget
    value: int | bytes


@dataclass(frozen=True, slots=True)
class Put:
    """Write `value` at `key`, attached to `lease_id` (0: no lease)."""

    key: bytes
    value: bytes
    lease_id: int = 0


@dataclass(frozen=True, slots=True)
class Txn:
    """If every compare holds, apply every put, atomically at one revision."""

    compares: tuple[Compare, ...] = ()
    puts: tuple[Put, ...] = ()


@dataclass(frozen=True, slots=True)
class TxnLimits:
    """What one transaction may hold: etcd's ``--max-txn-ops`` and a byte budget
    safely below ``--max-request-bytes`` (1.5 MiB by default)."""

    max_ops: int = 128
    max_bytes: int = 1 << 20


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """The fast-path plan for a batch; indices refer to the planned `writes`.

    `included` writes commit together iff `txn` succeeds; `claims` (sid hex →
    name) hold afterwards. `refused` writes failed planning and are final.
    `deferred` writes must be planned again after `txn` has been resolved.
    `reads` are the instance and claim keys of the included writes: read them
    if `txn` fails, and `plan_recovery` decides every included write at once.
    """

    txn: Txn
    included: tuple[int, ...] = ()
    refused: Mapping[int, RegistryError] = field(default_factory=dict)
    deferred: tuple[int, ...] = ()
    claims: Mapping[str, str] = field(default_factory=dict)
    reads: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class RecoveryPlan:
    """Slow-path decisions for a failed batch, one per write, and one `txn` merging every `Commit`."""

    decisions: tuple[WriteDecision, ...]
    txn: Txn


@dataclass(frozen=True, slots=True)
class StoredKv:
    """An etcd key as read: its value, lease and revisions."""

    value: bytes
    lease_id: int = 0
    create_revision: int = 0
    mod_revision: int = 0


@dataclass(frozen=True, slots=True)
class Commit:
    """Run `txn`; if its compares fail, read again and re-plan. `claim` is (sid hex, name)."""

    txn: Txn
    claim: tuple[str, str]


@dataclass(frozen=True, slots=True)
class Done:
    """The record is already exactly this write, on this lease, at `revision`."""

    revision: int


@dataclass(frozen=True, slots=True)
class Refuse:
    """The write is refused with `error`; nothing is written."""

    error: RegistryError


WriteDecision = Commit | Done | Refuse


def plan_batch(
    writes: Sequence[InstanceWrite],
    known_claims: Mapping[str, str],
    keys: KeySchema,
    limits: TxnLimits = TxnLimits(),
) -> BatchPlan:
    """Plan one fast-path transaction for `writes`, given the claims known so far.

    Every write ends up in exactly one of `included`, `refused`, `deferred`.
    The first write that is not refused is always included, so repeatedly
    planning the deferred writes terminates.
    """
    builder = _BatchBuilder(keys, limits, known_claims)
    for index, write in enumerate(writes):
        builder.add(index, write)
    return builder.plan()


class _BatchBuilder:
    """Accumulates one `BatchPlan`; `add` decides a single write."""

    def __init__(self, keys: KeySchema, limits: TxnLimits, known_claims: Mapping[str, str]) -> None:
        self._keys = keys
        self._limits = limits
        self._known = known_claims
        self._compares: list[Compare] = []
        self._puts: list[Put] = []
        self._bytes = 0
        self._included: list[int] = []
        self._refused: dict[int, RegistryError] = {}
        self._deferred: list[int] = []
        self._claims: dict[str, str] = {}
        self._reads: list[bytes] = []
        self._seen_keys: set[bytes] = set()
        self._full = False

    def add(self, index: int, write: InstanceWrite) -> None:
        name = write.instance.service
        key = self._keys.instance_key(name, write.instance.instance_id)
        try:
            sid = names.service_id_hex(name)
        except names.InvalidName as e:
            self._refused[index] = InvalidArgument(f"service: {e}")
            return
        owner = self._known.get(sid)
        if owner is not None and owner != name:
            self._refused[index] = collision(name, sid, owner)
            return
        if self._full or key in self._seen_keys or self._claims.get(sid, name) != name:
            self._defer(index, key)
            return
        compares, puts = self._ops(write, key, sid, owner)
        reads = [key] if sid in self._claims else [key, self._keys.claim_key(sid)]
        size = sum(len(c.key) + 16 for c in compares) + sum(len(p.key) + len(p.value) + 16 for p in puts)
        if self._included and not self._fits(len(compares), len(puts), len(reads), size):
            self._full = True
            self._defer(index, key)
            return
        self._compares += compares
        self._puts += puts
        self._reads += reads
        self._bytes += size
        self._included.append(index)
        self._claims[sid] = name
        self._seen_keys.add(key)

    def plan(self) -> BatchPlan:
        return BatchPlan(
            txn=Txn(tuple(self._compares), tuple(self._puts)),
            included=tuple(self._included),
            refused=self._refused,
            deferred=tuple(self._deferred),
            claims=self._claims,
            reads=tuple(self._reads),
        )

    def _ops(
        self, write: InstanceWrite, key: bytes, sid: str, owner: str | None
    ) -> tuple[list[Compare], list[Put]]:
        compares: list[Compare] = []
        puts: list[Put] = []
        if sid not in self._claims:  # first write of this service in the batch
            claim_compares, claim_puts = claim_ops(self._keys, sid, write.instance.service, owner)
            compares += claim_compares
            puts += claim_puts
        if not write.replace:
            compares.append(Compare(key, "create", 0))
        puts.append(Put(key, encode_instance(write.instance), write.lease_id))
        return compares, puts

    def _fits(self, compares: int, puts: int, reads: int, size: int) -> bool:
        """Whether the txn, and the reads that recover from its failure, stay within the limits."""
        return (
            len(self._compares) + compares <= self._limits.max_ops
            and len(self._puts) + puts <= self._limits.max_ops
            and len(self._reads) + reads <= self._limits.max_ops
            and self._bytes + size <= self._limits.max_bytes
        )

    def _defer(self, index: int, key: bytes) -> None:
        self._deferred.append(index)
        self._seen_keys.add(key)  # a later write to the same key must wait too


def plan_write(
    write: InstanceWrite,
    current: StoredKv | None,
    claim_owner: str | None,
    keys: KeySchema,
) -> WriteDecision:
    """Decide one write from a fresh read of its instance key and its claim key.

    Refuse on a service-ID collision, or when another lease holds the instance
    and `write.replace` is false. `Done` when the stored record is byte-for-byte
    this write on this lease (a retry of a write that committed). Otherwise
    commit, comparing ``mod_revision`` when replacing a record and
    ``create_revision == 0`` when creating one, so a concurrent change fails
    the compare instead of being overwritten.
    """
    instance = write.instance
    try:
        sid = names.service_id_hex(instance.service)
    except names.InvalidName as e:
        return Refuse(InvalidArgument(f"service: {e}"))
    if claim_owner is not None and claim_owner != instance.service:
        return Refuse(collision(instance.service, sid, claim_owner))
    value = encode_instance(instance)
    if current is not None:
        same_lease = current.lease_id == write.lease_id
        if same_lease and current.value == value and claim_owner == instance.service:
            return Done(current.mod_revision)
        if not same_lease and not write.replace:
            return Refuse(held_by_other_lease(instance.service, instance.instance_id, current.lease_id))
    key = keys.instance_key(instance.service, instance.instance_id)
    compares, puts = claim_ops(keys, sid, instance.service, claim_owner)
    if current is None:
        compares.append(Compare(key, "create", 0))
    else:
        compares.append(Compare(key, "mod", current.mod_revision))
    puts.append(Put(key, value, write.lease_id))
    return Commit(Txn(tuple(compares), tuple(puts)), (sid, instance.service))


def plan_recovery(
    writes: Sequence[InstanceWrite], state: Mapping[bytes, StoredKv | None], keys: KeySchema
) -> RecoveryPlan:
    """Decide every write of a failed batch from one consistent read of its `BatchPlan.reads`.

    The `Commit`s merge into one transaction: the batch planner already kept
    instance keys distinct and each service ID to one name, so the claim ops
    that several commits share are identical and kept once.
    """
    decisions: list[WriteDecision] = []
    for write in writes:
        instance = write.instance
        try:
            claim = state.get(keys.claim_key(names.service_id_hex(instance.service)))
        except names.InvalidName:
            claim = None  # plan_write refuses it
        current = state.get(keys.instance_key(instance.service, instance.instance_id))
        decisions.append(plan_write(write, current, claim_owner(claim), keys))
    commits = [d.txn for d in decisions if isinstance(d, Commit)]
    merged = Txn(
        tuple(dict.fromkeys(c for txn in commits for c in txn.compares)),
        tuple(dict.fromkeys(p for txn in commits for p in txn.puts)),
    )
    return RecoveryPlan(tuple(decisions), merged)


def claim_owner(claim: StoredKv | None) -> str | None:
    """The service name a claim key holds (None if the key does not exist)."""
    return claim.value.decode(errors="replace") if claim is not None else None


def claim_ops(keys: KeySchema, sid: str, name: str, owner: str | None) -> tuple[list[Compare], list[Put]]:
    """Ops that make `name` own `sid`, given the `owner` believed current (not another name)."""
    claim = keys.claim_key(sid)
    if owner == name:
        return [Compare(claim, "value", name.encode())], []
    return [Compare(claim, "create", 0)], [Put(claim, name.encode())]


def collision(name: str, sid: str, owner: str) -> AlreadyExists:
    """The error for `name` hashing to service ID `sid`, which `owner` already holds."""
    return AlreadyExists(
        f"service {name!r} has service ID {sid}, which is already claimed by service {owner!r}"
    )


def held_by_other_lease(service: str, instance_id: str, lease_id: int) -> AlreadyExists:
    """The error for registering an instance that another session's lease holds."""
    return AlreadyExists(
        f"instance {instance_id!r} of service {service!r} is held by lease 0x{lease_id:x}; "
        "use replace to take it over"
    )


def lease_not_found(lease_id: int) -> NotFound:
    """The error for a write or refresh on a lease etcd does not know."""
    return NotFound(f"lease 0x{lease_id:x} not found (expired or revoked)")
