"""Instance writes of `EtcdStore`: `plan`'s transactions run on etcd, with recovery.

Contract: `InstanceWriter.put_instances(writes)` returns one outcome per write,
in order, and never raises `Unavailable` (an unconfirmed write gets it as its
outcome, so earlier successes are still reported). `replace_instance(old,
new)` is a compare-and-swap on `old.mod_revision` keeping `old.lease_id`.

Writes run in rounds: `plan.plan_batch` puts as many writes as fit into one
transaction (group commit). If its compares fail, the failure branch's reads
feed `plan.plan_recovery` and one merged second transaction; whatever is left,
and every write of a transaction etcd refused as a whole (a lease is gone, or
too large), goes write by write: fresh read, `plan.plan_write`, CAS, re-read
after a lost race (at most `_CAS_ATTEMPTS` tries, then `Aborted`).

Retries are safe because every write is a compare-and-swap: a retried create
whose first attempt committed fails its compare, and the slow path then
recognises its own record (`plan.Done`). Service-ID claims seen committed or
read are cached: they never change.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from aetcd import rpc

from registry import names
from registry.errors import Aborted, InvalidArgument, RegistryError
from registry.model import Instance
from registry.raft import plan, records
from registry.raft.connection import REQUIRE_LEADER, LeaseNotFound, Pool, TxnRejected
from registry.raft.convert import first_kv, range_ops, txn_request
from registry.raft.keys import KeySchema
from registry.raft.store import InstanceWrite, WriteOutcome

log = logging.getLogger(__name__)

_CAS_ATTEMPTS = 4


@dataclass(frozen=True, slots=True)
class _TxnResult:
    """Whether the compares held, the header revision, and the failure branch's reads (or None)."""

    succeeded: bool
    revision: int
    read: tuple[plan.StoredKv | None, ...] = ()


class InstanceWriter:
    """Commits instance writes through `pool`; owns the cache of service-ID claims."""

    def __init__(self, pool: Pool, keys: KeySchema, limits: plan.TxnLimits) -> None:
        self._pool = pool
        self._keys = keys
        self._limits = limits
        self._claims: dict[str, str] = {}  # service ID hex -> owning name; claims never change

    async def put_instances(self, writes: Sequence[InstanceWrite]) -> list[WriteOutcome]:
        """Commit `writes` round by round until none is deferred; one outcome per write."""
        outcomes: list[WriteOutcome | None] = [None] * len(writes)
        pending = list(range(len(writes)))
        try:
            while pending:
                pending = await self._put_round(writes, pending, outcomes)
        except RegistryError as e:  # Unavailable, or etcd refusing in a way no retry fixes
            outcomes = [e if outcome is None else outcome for outcome in outcomes]
        return [outcome for outcome in outcomes if outcome is not None]

    async def replace_instance(self, old: Instance, new: Instance) -> int | None:
        """CAS `new` over `old`; the revision, or None if the record moved or its lease ended."""
        if old.key != new.key:
            raise InvalidArgument(f"replace_instance cannot move {old.key} to {new.key}")
        key = self._keys.instance_key(*old.key)
        value = records.encode_instance(new)
        txn = plan.Txn((plan.Compare(key, "mod", old.mod_revision),), (plan.Put(key, value, old.lease_id),))
        try:
            result = await self._txn(
                txn, f"replace of instance {old.instance_id} of {old.service}", read=[key]
            )
        except LeaseNotFound:
            return None  # the lease ended between the caller's read and now
        if result.succeeded:
            return result.revision
        current = result.read[0]
        if current is not None and current.lease_id == old.lease_id and current.value == value:
            return current.mod_revision
        return None

    async def _put_round(
        self, writes: Sequence[InstanceWrite], pending: list[int], outcomes: list[WriteOutcome | None]
    ) -> list[int]:
        """Plan and run one fast-path transaction over `pending`; return the deferred indices."""
        batch = plan.plan_batch([writes[i] for i in pending], self._claims, self._keys, self._limits)
        for j, error in batch.refused.items():
            outcomes[pending[j]] = error
        included = [pending[j] for j in batch.included]
        result = await self._try_txn(batch.txn, "instance batch", batch.reads) if included else None
        if result is not None and result.succeeded:
            self._claims.update(batch.claims)
            for i in included:
                outcomes[i] = result.revision
        elif result is not None:  # compares failed: decide again from what the failure branch read
            await self._recover(writes, included, dict(zip(batch.reads, result.read, strict=True)), outcomes)
        else:
            for i in included:
                outcomes[i] = await self._put_one(writes[i])
        return [pending[j] for j in batch.deferred]

    async def _recover(
        self,
        writes: Sequence[InstanceWrite],
        included: list[int],
        state: dict[bytes, plan.StoredKv | None],
        outcomes: list[WriteOutcome | None],
    ) -> None:
        """Second chance for a failed batch: one merged transaction, then write by write."""
        self._learn_claims(state)
        recovery = plan.plan_recovery([writes[i] for i in included], state, self._keys)
        commits: dict[int, plan.Commit] = {}
        for i, decision in zip(included, recovery.decisions, strict=True):
            if isinstance(decision, plan.Commit):
                commits[i] = decision
            else:
                outcomes[i] = decision.error if isinstance(decision, plan.Refuse) else decision.revision
        result = await self._try_txn(recovery.txn, "instance batch (second try)") if commits else None
        if result is not None and result.succeeded:
            self._claims.update(commit.claim for commit in commits.values())
        for i in commits:
            outcomes[i] = result.revision if result and result.succeeded else await self._put_one(writes[i])

    async def _try_txn(self, txn: plan.Txn, what: str, read: Sequence[bytes] = ()) -> _TxnResult | None:
        """`_txn`, or None when etcd refused it as a whole (a lease is gone, or it is too large)."""
        try:
            return await self._txn(txn, what, read)
        except LeaseNotFound:
            return None  # one of the leases is gone: find out which, write by write
        except TxnRejected as e:
            log.warning("etcd refused a %d-put transaction (%s); writing one by one", len(txn.puts), e)
            return None

    def _learn_claims(self, state: dict[bytes, plan.StoredKv | None]) -> None:
        prefix = self._keys.claims_prefix
        for key, kv in state.items():
            owner = plan.claim_owner(kv)
            if key.startswith(prefix) and owner is not None:
                self._claims[key[len(prefix) :].decode()] = owner

    async def _put_one(self, write: InstanceWrite) -> WriteOutcome:
        """The slow path: fresh read, `plan.plan_write`, commit; retry lost CAS races a few times."""
        service, instance_id = write.instance.key
        key = self._keys.instance_key(service, instance_id)
        for _ in range(_CAS_ATTEMPTS):
            decision = await self._decide(write, key)
            if isinstance(decision, plan.Refuse):
                return decision.error
            if isinstance(decision, plan.Done):
                return decision.revision
            try:
                result = await self._txn(decision.txn, f"write of instance {instance_id} of {service}")
            except LeaseNotFound:
                return plan.lease_not_found(write.lease_id)
            except TxnRejected as e:
                return InvalidArgument(
                    f"instance {instance_id} of service {service}: etcd refused the write: {e}"
                )
            if result.succeeded:
                self._claims[decision.claim[0]] = decision.claim[1]
                return result.revision
        return Aborted(
            f"instance {instance_id} of service {service}: lost {_CAS_ATTEMPTS} compare-and-swap races; retry"
        )

    async def _decide(self, write: InstanceWrite, key: bytes) -> plan.WriteDecision:
        try:
            sid = names.service_id_hex(write.instance.service)
        except names.InvalidName as e:
            return plan.Refuse(InvalidArgument(f"service: {e}"))
        claim_key = self._keys.claim_key(sid)
        current, claim = await self._read_keys([key, claim_key])
        self._learn_claims({claim_key: claim})
        return plan.plan_write(write, current, plan.claim_owner(claim), self._keys)

    async def _txn(self, txn: plan.Txn, what: str, read: Sequence[bytes] = ()) -> _TxnResult:
        """Run `txn`; on compare failure, also return the current `read` keys."""
        request = txn_request(txn, read)
        response = await self._pool.call(
            what, lambda c, t: c.kv.Txn(request, timeout=t, metadata=REQUIRE_LEADER)
        )
        revision = int(response.header.revision)
        if response.succeeded:
            return _TxnResult(True, revision)
        return _TxnResult(False, revision, tuple(first_kv(r) for r in response.responses))

    async def _read_keys(self, keys: Sequence[bytes]) -> tuple[plan.StoredKv | None, ...]:
        """Linearizable read of `keys` at one revision (a read-only transaction)."""
        request = rpc.TxnRequest(success=range_ops(keys))
        response = await self._pool.call(
            "read", lambda c, t: c.kv.Txn(request, timeout=t, metadata=REQUIRE_LEADER)
        )
        return tuple(first_kv(r) for r in response.responses)
