"""The registry's domain service: what each API call means, independent of gRPC.

One `RegistryService` per replica. Writes go to the store (registrations via
the group-commit batcher); reads are answered from the replica's view, which
the `Follower` keeps in step with etcd. The service holds no state of its own
that another replica would need: leases, records and revisions live in etcd.

Errors are `registry.errors` exceptions; the API layer maps them to codes.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from registry import names
from registry.batcher import WriteBatcher
from registry.errors import Aborted, InvalidArgument, NotFound, RegistryError, Unavailable
from registry.follower import Follower
from registry.model import (
    DEFAULT_TTL_SECONDS,
    Instance,
    check_instance_id,
    check_ttl,
    check_weight,
    validate_instance,
)
from registry.raft.store import InstanceWrite, Lease, Store, WriteOutcome
from registry.view import matches_suffix, normalize_suffix

MAX_LIST_LIMIT = 10_000
DEFAULT_LIST_LIMIT = 1_000
READ_WAIT_SECONDS = 5.0
_Change = Callable[[Instance], Instance]
CAS_ATTEMPTS = 8


@dataclass(frozen=True, slots=True)
class Registration:
    lease_id: int
    ttl_seconds: int
    revision: int
    service_id: str


@dataclass(frozen=True, slots=True)
class ServiceSummary:
    name: str
    service_id: str
    instances: int
    serving: int


class RegistryService:
    """Registry operations for one replica (see module docstring)."""

    def __init__(self, store: Store, follower: Follower, *, max_batch: int = 256) -> None:
        self._store = store
        self._follower = follower
        self._view = follower.view
        self.batcher: WriteBatcher[InstanceWrite, WriteOutcome] = WriteBatcher(
            store.put_instances, max_batch=max_batch
        )

    async def close(self) -> None:
        await self.batcher.close()

    # ---- sessions (leases) ------------------------------------------------

    async def open_session(self, ttl_seconds: int) -> Lease:
        check_ttl(ttl_seconds)
        return await self._store.grant_lease(ttl_seconds)

    async def keep_alive(self, lease_id: int) -> int:
        _check_lease_id(lease_id)
        return await self._store.keep_alive(lease_id)

    async def close_session(self, lease_id: int) -> None:
        _check_lease_id(lease_id)
        await self._store.revoke_lease(lease_id)

    # ---- writes -------------------------------------------------------------

    async def register(self, instance: Instance, lease_id: int, replace: bool) -> Registration:
        """Validate and commit one instance on `lease_id` (a new lease if 0).

        A lease granted here is revoked again if the registration is refused,
        so a failed call leaves nothing behind.
        """
        if instance.ttl_seconds == 0:
            instance = dataclasses.replace(instance, ttl_seconds=DEFAULT_TTL_SECONDS)
        inst = validate_instance(instance)
        if lease_id < 0:
            raise InvalidArgument(f"lease_id {lease_id} is negative")
        granted = None
        if lease_id == 0:
            granted = await self._store.grant_lease(inst.ttl_seconds)
            lease_id = granted.lease_id
        try:
            outcome = await self.batcher.submit(InstanceWrite(inst, lease_id, replace))
            if isinstance(outcome, RegistryError):
                raise outcome
        except BaseException:
            if granted is not None:
                await _revoke_quietly(self._store, granted.lease_id)
            raise
        ttl = granted.ttl_seconds if granted else inst.ttl_seconds
        return Registration(lease_id, ttl, outcome, names.service_id_hex(inst.service))

    async def deregister(self, service: str, instance_id: str) -> int:
        return await self._store.delete_instance(_service(service), _instance_id(instance_id))

    async def set_weight(self, service: str, instance_id: str, weight: int) -> tuple[Instance, int]:
        """Set a non-zero weight; this also undrains the instance."""
        check_weight(weight)
        return await self._update(
            service,
            instance_id,
            lambda i: dataclasses.replace(i, weight=weight, drained=False, drained_weight=0),
        )

    async def drain(self, service: str, instance_id: str, drain: bool) -> tuple[Instance, int]:
        """Drain (weight 0, old weight remembered) or undrain (restore it). Idempotent."""
        return await self._update(service, instance_id, lambda i: drained(i, drain))

    async def _update(self, service: str, instance_id: str, change: _Change) -> tuple[Instance, int]:
        svc, iid = _service(service), _instance_id(instance_id)
        for _ in range(CAS_ATTEMPTS):
            old = await self._store.get_instance(svc, iid)
            new = change(old)
            if new == old:
                return old, old.mod_revision
            revision = await self._store.replace_instance(old, new)
            if revision is not None:
                return dataclasses.replace(new, mod_revision=revision), revision
        raise Aborted(f"instance {iid} of {svc} kept changing; gave up after {CAS_ATTEMPTS} attempts")

    # ---- reads (from the view) -----------------------------------------------

    async def resolve(self, service: str, min_revision: int = 0) -> tuple[list[Instance], int, str]:
        svc = _service(service)
        await self._wait_for_view(min_revision)
        return self._view.resolve(svc), self._view.revision, names.service_id_hex(svc)

    async def lease_times_left(self, lease_ids: Iterable[int]) -> dict[int, int]:
        """Seconds each distinct lease has left (-1: gone), asking etcd at most 32 at a time."""
        distinct = sorted(set(lease_ids) - {0})
        slots = asyncio.Semaphore(32)

        async def one(lease_id: int) -> int:
            async with slots:
                return await self._store.lease_time_left(lease_id)

        return dict(zip(distinct, await asyncio.gather(*map(one, distinct)), strict=True))

    async def list_services(
        self, suffix: str, limit: int, page_token: str, min_revision: int = 0
    ) -> tuple[list[ServiceSummary], str, int]:
        """One page of service names in order, after `page_token`; the next token is '' at the end."""
        suffix = normalize_suffix(suffix)
        if limit > MAX_LIST_LIMIT:
            raise InvalidArgument(f"limit {limit} is more than {MAX_LIST_LIMIT}")
        limit = limit or DEFAULT_LIST_LIMIT
        await self._wait_for_view(min_revision)
        page: list[ServiceSummary] = []
        all_names = self._view.service_names()
        for name in itertools.islice(all_names, bisect.bisect_right(all_names, page_token), None):
            if not matches_suffix(name, suffix):
                continue
            if len(page) == limit:
                return page, page[-1].name, self._view.revision
            page.append(self._summary(name))
        return page, "", self._view.revision

    def _summary(self, name: str) -> ServiceSummary:
        insts = self._view.service_instances(name)
        serving = sum(1 for i in insts if i.weight > 0)
        return ServiceSummary(name, names.service_id_hex(name), len(insts), serving)

    async def _wait_for_view(self, min_revision: int) -> None:
        if not self._follower.ready:
            raise Unavailable("registry replica is still loading its view from etcd")
        if min_revision > self._view.revision and not await self._follower.wait_for_revision(
            min_revision, READ_WAIT_SECONDS
        ):
            raise Unavailable(
                f"replica view is at revision {self._view.revision}, "
                f"not yet at {min_revision} after {READ_WAIT_SECONDS:.0f}s"
            )


def drained(inst: Instance, drain: bool) -> Instance:
    """`inst` drained (weight 0, weight remembered) or undrained (weight restored). Pure."""
    if drain and not inst.drained:
        return dataclasses.replace(inst, drained=True, drained_weight=inst.weight, weight=0)
    if not drain and inst.drained:
        return dataclasses.replace(inst, drained=False, weight=inst.drained_weight or 1, drained_weight=0)
    return inst


def _service(service: str) -> str:
    try:
        return names.normalize(service)
    except names.InvalidName as e:
        raise InvalidArgument(f"service: {e}") from None


def _instance_id(instance_id: str) -> str:
    check_instance_id(instance_id)
    return instance_id


def _check_lease_id(lease_id: int) -> None:
    if lease_id <= 0:
        raise InvalidArgument(f"lease_id {lease_id} must be positive")


async def _revoke_quietly(store: Store, lease_id: int) -> None:
    with contextlib.suppress(NotFound, Unavailable):  # else it expires by its TTL anyway
        await store.revoke_lease(lease_id)
