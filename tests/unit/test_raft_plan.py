"""Table tests of the transaction planner (`registry.raft.plan`): fast-path batches, slow-path decisions."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from registry import names
from registry.errors import AlreadyExists, InvalidArgument, NotFound, RegistryError
from registry.model import Instance
from registry.raft import plan
from registry.raft.keys import KeySchema
from registry.raft.plan import Commit, Compare, Done, Put, Refuse, StoredKv, Txn, TxnLimits
from registry.raft.records import encode_instance
from registry.raft.store import InstanceWrite

KEYS = KeySchema("/p")
# Two real names with one service ID (see tests/testdata/service_ids.json).
COLLIDING: list[str] = json.loads((Path(__file__).parents[1] / "testdata" / "service_ids.json").read_text())[
    "colliding"
][0]["names"]


def inst(service: str = "web", instance_id: str = "i-1", port: int = 80) -> Instance:
    return Instance(service=service, instance_id=instance_id, addresses=("10.0.0.1",), port=port)


def write(
    service: str = "web", instance_id: str = "i-1", lease: int = 1, *, replace: bool = False
) -> InstanceWrite:
    return InstanceWrite(inst(service, instance_id), lease_id=lease, replace=replace)


def sid(service: str) -> str:
    return names.service_id(service).hex()


def claim(service: str) -> bytes:
    return KEYS.claim_key(sid(service))


def key(service: str = "web", instance_id: str = "i-1") -> bytes:
    return KEYS.instance_key(service, instance_id)


def value(service: str = "web", instance_id: str = "i-1") -> bytes:
    return encode_instance(inst(service, instance_id))


# -- fast path ----------------------------------------------------------------


@dataclass(frozen=True)
class BatchCase:
    writes: Sequence[InstanceWrite]
    known: Mapping[str, str]
    compares: Sequence[Compare]
    puts: Sequence[Put]
    included: Sequence[int]
    deferred: Sequence[int] = ()
    refused: Mapping[int, tuple[type[RegistryError], str]] = field(default_factory=dict)
    limits: TxnLimits = field(default_factory=TxnLimits)


BATCH_CASES = {
    "new service and instance: claim and instance must not exist": BatchCase(
        writes=[write()],
        known={},
        compares=[Compare(claim("web"), "create", 0), Compare(key(), "create", 0)],
        puts=[Put(claim("web"), b"web"), Put(key(), value(), 1)],
        included=[0],
    ),
    "claim known to be ours: compare its value, do not put it": BatchCase(
        writes=[write()],
        known={sid("web"): "web"},
        compares=[Compare(claim("web"), "value", b"web"), Compare(key(), "create", 0)],
        puts=[Put(key(), value(), 1)],
        included=[0],
    ),
    "claim known to be another name's: refused at once": BatchCase(
        writes=[write("web"), write("api", "i-2")],
        known={sid("web"): "other.name"},
        compares=[Compare(claim("api"), "create", 0), Compare(key("api", "i-2"), "create", 0)],
        puts=[Put(claim("api"), b"api"), Put(key("api", "i-2"), value("api", "i-2"), 1)],
        included=[1],
        refused={
            0: (AlreadyExists, f"service 'web' has service ID {sid('web')}, .* by service 'other.name'")
        },
    ),
    "two instances of one service: the claim is compared and put once": BatchCase(
        writes=[write("web", "a"), write("web", "b", 2)],
        known={},
        compares=[
            Compare(claim("web"), "create", 0),
            Compare(key("web", "a"), "create", 0),
            Compare(key("web", "b"), "create", 0),
        ],
        puts=[
            Put(claim("web"), b"web"),
            Put(key("web", "a"), value("web", "a"), 1),
            Put(key("web", "b"), value("web", "b"), 2),
        ],
        included=[0, 1],
    ),
    "replace puts the instance without a compare": BatchCase(
        writes=[write(replace=True)],
        known={sid("web"): "web"},
        compares=[Compare(claim("web"), "value", b"web")],
        puts=[Put(key(), value(), 1)],
        included=[0],
    ),
    "second write to the same instance key waits for the next batch": BatchCase(
        writes=[write(lease=1), write("api", "x"), write(lease=2, replace=True)],
        known={sid("web"): "web", sid("api"): "api"},
        compares=[
            Compare(claim("web"), "value", b"web"),
            Compare(key(), "create", 0),
            Compare(claim("api"), "value", b"api"),
            Compare(key("api", "x"), "create", 0),
        ],
        puts=[Put(key(), value(), 1), Put(key("api", "x"), value("api", "x"), 1)],
        included=[0, 1],
        deferred=[2],
    ),
    "two names sharing a service ID in one batch: the second waits": BatchCase(
        writes=[write(COLLIDING[0], "a"), write(COLLIDING[1], "b")],
        known={},
        compares=[Compare(claim(COLLIDING[0]), "create", 0), Compare(key(COLLIDING[0], "a"), "create", 0)],
        puts=[
            Put(claim(COLLIDING[0]), COLLIDING[0].encode()),
            Put(key(COLLIDING[0], "a"), value(COLLIDING[0], "a"), 1),
        ],
        included=[0],
        deferred=[1],
    ),
    "a name whose service ID another name holds: refused": BatchCase(
        writes=[write(COLLIDING[1], "b")],
        known={sid(COLLIDING[0]): COLLIDING[0]},
        compares=[],
        puts=[],
        included=[],
        refused={
            0: (AlreadyExists, f"'{COLLIDING[1]}' has service ID {sid(COLLIDING[1])}.*'{COLLIDING[0]}'")
        },
    ),
    "the reads that recover from a failure count against the op limit": BatchCase(
        writes=[
            write("web", "a", replace=True),
            write("web", "b", replace=True),
            write("web", "c", replace=True),
        ],
        known={sid("web"): "web"},
        compares=[Compare(claim("web"), "value", b"web")],
        puts=[Put(key("web", "a"), value("web", "a"), 1), Put(key("web", "b"), value("web", "b"), 1)],
        included=[0, 1],
        deferred=[2],
        limits=TxnLimits(max_ops=3),
    ),
    "invalid service name: refused": BatchCase(
        writes=[write("bad_name!")],
        known={},
        compares=[],
        puts=[],
        included=[],
        refused={0: (InvalidArgument, "service: label 'bad_name!'")},
    ),
    "writes beyond the op limit are deferred, in order": BatchCase(
        writes=[write("web", "a"), write("web", "b"), write("web", "c"), write("api", "d")],
        known={},
        compares=[
            Compare(claim("web"), "create", 0),
            Compare(key("web", "a"), "create", 0),
            Compare(key("web", "b"), "create", 0),
        ],
        puts=[
            Put(claim("web"), b"web"),
            Put(key("web", "a"), value("web", "a"), 1),
            Put(key("web", "b"), value("web", "b"), 1),
        ],
        included=[0, 1],
        deferred=[2, 3],
        limits=TxnLimits(max_ops=3),
    ),
    "the first write always fits, however small the limits": BatchCase(
        writes=[write("web", "a"), write("web", "b")],
        known={sid("web"): "web"},
        compares=[Compare(claim("web"), "value", b"web"), Compare(key("web", "a"), "create", 0)],
        puts=[Put(key("web", "a"), value("web", "a"), 1)],
        included=[0],
        deferred=[1],
        limits=TxnLimits(max_ops=1, max_bytes=1),
    ),
}


@pytest.mark.parametrize("case", BATCH_CASES.values(), ids=BATCH_CASES.keys())
def test_plan_batch(case: BatchCase) -> None:
    batch = plan.plan_batch(case.writes, case.known, KEYS, case.limits)
    assert batch.txn == Txn(tuple(case.compares), tuple(case.puts))
    assert batch.included == tuple(case.included)
    assert batch.deferred == tuple(case.deferred)
    assert {i: type(e) for i, e in batch.refused.items()} == {i: t for i, (t, _) in case.refused.items()}
    for i, (_, pattern) in case.refused.items():
        assert re.search(pattern, str(batch.refused[i])), str(batch.refused[i])
    assert sorted([*batch.included, *batch.deferred, *batch.refused]) == list(range(len(case.writes)))


def test_plan_batch_reports_the_claims_it_establishes() -> None:
    batch = plan.plan_batch([write("web"), write("api", "x")], {sid("web"): "web"}, KEYS)
    assert batch.claims == {sid("web"): "web", sid("api"): "api"}


def test_plan_batch_lists_the_keys_to_read_if_the_txn_fails() -> None:
    batch = plan.plan_batch([write("web", "a"), write("web", "b"), write("api", "c")], {}, KEYS)
    assert batch.reads == (key("web", "a"), claim("web"), key("web", "b"), key("api", "c"), claim("api"))


def test_replanning_deferred_writes_terminates() -> None:
    writes = [write("web", "same", lease=n) for n in range(5)]
    rounds, pending = 0, list(range(5))
    while pending:
        batch = plan.plan_batch([writes[i] for i in pending], {}, KEYS, TxnLimits(max_ops=2))
        assert len(batch.included) == 1
        pending = [pending[j] for j in batch.deferred]
        rounds += 1
    assert rounds == 5


# -- slow path ----------------------------------------------------------------


@dataclass(frozen=True)
class WriteCase:
    write: InstanceWrite
    current: StoredKv | None
    claim_owner: str | None
    decision: Commit | Done | tuple[type[RegistryError], str]


WRITE_CASES = {
    "nothing there: create claim and instance": WriteCase(
        write(),
        None,
        None,
        Commit(
            Txn(
                (Compare(claim("web"), "create", 0), Compare(key(), "create", 0)),
                (Put(claim("web"), b"web"), Put(key(), value(), 1)),
            ),
            (sid("web"), "web"),
        ),
    ),
    "claim is ours, no instance: create the instance": WriteCase(
        write(),
        None,
        "web",
        Commit(
            Txn(
                (Compare(claim("web"), "value", b"web"), Compare(key(), "create", 0)),
                (Put(key(), value(), 1),),
            ),
            (sid("web"), "web"),
        ),
    ),
    "claim owned by another name: collision": WriteCase(
        write(),
        None,
        "other",
        (AlreadyExists, f"'web' has service ID {sid('web')}.*claimed by service 'other'"),
    ),
    "same record on the same lease: a retry that committed": WriteCase(
        write(lease=7), StoredKv(value(), lease_id=7, create_revision=3, mod_revision=5), "web", Done(5)
    ),
    "changed record on the same lease: replace by mod revision": WriteCase(
        write(lease=7),
        StoredKv(b"old", lease_id=7, create_revision=3, mod_revision=5),
        "web",
        Commit(
            Txn(
                (Compare(claim("web"), "value", b"web"), Compare(key(), "mod", 5)), (Put(key(), value(), 7),)
            ),
            (sid("web"), "web"),
        ),
    ),
    "held by another lease: refused without replace": WriteCase(
        write(lease=7),
        StoredKv(value(), lease_id=0x2A, create_revision=3, mod_revision=5),
        "web",
        (
            AlreadyExists,
            r"instance 'i-1' of service 'web' is held by lease 0x2a; use replace to take it over",
        ),
    ),
    "held by another lease: replace takes it over": WriteCase(
        write(lease=7, replace=True),
        StoredKv(value(), lease_id=0x2A, create_revision=3, mod_revision=5),
        "web",
        Commit(
            Txn(
                (Compare(claim("web"), "value", b"web"), Compare(key(), "mod", 5)), (Put(key(), value(), 7),)
            ),
            (sid("web"), "web"),
        ),
    ),
    "record there but claim missing: claim again": WriteCase(
        write(lease=7),
        StoredKv(value(), lease_id=7, create_revision=3, mod_revision=5),
        None,
        Commit(
            Txn(
                (Compare(claim("web"), "create", 0), Compare(key(), "mod", 5)),
                (Put(claim("web"), b"web"), Put(key(), value(), 7)),
            ),
            (sid("web"), "web"),
        ),
    ),
    "invalid service name": WriteCase(
        write("-bad"), None, None, (InvalidArgument, "starts or ends with '-'")
    ),
}


@pytest.mark.parametrize("case", WRITE_CASES.values(), ids=WRITE_CASES.keys())
def test_plan_write(case: WriteCase) -> None:
    decision = plan.plan_write(case.write, case.current, case.claim_owner, KEYS)
    if isinstance(case.decision, tuple):
        error_type, pattern = case.decision
        assert isinstance(decision, Refuse)
        assert type(decision.error) is error_type
        assert re.search(pattern, str(decision.error)), str(decision.error)
    else:
        assert decision == case.decision


def test_lease_not_found_names_the_lease_in_hex() -> None:
    error = plan.lease_not_found(255)
    assert isinstance(error, NotFound)
    assert str(error) == "lease 0xff not found (expired or revoked)"


# -- recovery of a failed batch ---------------------------------------------------


def test_plan_recovery_decides_each_write_and_merges_the_commits() -> None:
    writes = [
        write("web", "new", lease=1),
        write("web", "held", lease=1),
        write("web", "mine", lease=1),
        write("api", "x", lease=1),
        write("api", "y", lease=1),
    ]
    state = {
        claim("web"): StoredKv(b"web"),
        key("web", "held"): StoredKv(value("web", "held"), lease_id=9, mod_revision=4),
        key("web", "mine"): StoredKv(value("web", "mine"), lease_id=1, mod_revision=6),
        claim("api"): None,
    }
    recovery = plan.plan_recovery(writes, state, KEYS)
    kinds = [type(d).__name__ for d in recovery.decisions]
    assert kinds == ["Commit", "Refuse", "Done", "Commit", "Commit"]
    assert recovery.decisions[2] == Done(6)
    assert recovery.txn == Txn(
        (
            Compare(claim("web"), "value", b"web"),
            Compare(key("web", "new"), "create", 0),
            Compare(claim("api"), "create", 0),  # shared by both api writes, kept once
            Compare(key("api", "x"), "create", 0),
            Compare(key("api", "y"), "create", 0),
        ),
        (
            Put(key("web", "new"), value("web", "new"), 1),
            Put(claim("api"), b"api"),
            Put(key("api", "x"), value("api", "x"), 1),
            Put(key("api", "y"), value("api", "y"), 1),
        ),
    )


def test_plan_recovery_with_nothing_to_commit_has_an_empty_txn() -> None:
    state = {claim("web"): StoredKv(b"other"), key(): None}
    recovery = plan.plan_recovery([write()], state, KEYS)
    assert isinstance(recovery.decisions[0], Refuse)
    assert recovery.txn == Txn()


@pytest.mark.parametrize(("kv", "owner"), [(None, None), (StoredKv(b"web.prod"), "web.prod")])
def test_claim_owner(kv: StoredKv | None, owner: str | None) -> None:
    assert plan.claim_owner(kv) == owner
