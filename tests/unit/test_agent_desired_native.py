"""The Rust mirror (`sal_core.desired.DesiredTable`) gives exactly the rules of the Python
reference `desired_rules`, on hand-picked and random registries; its view and apply contracts."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import pytest

from hostagent.agent.desired import (
    AGENTS_SERVICE,
    MAX_TARGET_WEIGHT,
    Generations,
    LocalListener,
    desired_rules,
    has_sal_instance,
    sal_port,
)
from hostagent.sal_core.desired import DesiredTable
from hostagent.sal_core.table import ServiceTable
from registry import names
from registry.model import Instance
from tests.unit.test_agent_desired import HERE, inst


def table_of(instances: Iterable[Instance]) -> DesiredTable:
    table = DesiredTable(HERE.zone, HERE.region)
    for i in instances:
        table.put(i.service, i.instance_id, i.addresses, sal_port(i), i.weight, i.tier, i.zone, i.region)
    return table


def native(table: DesiredTable, listeners: list[LocalListener]) -> list[Any]:
    return list(table.rules([(x.listener_id, x.service) for x in listeners], [AGENTS_SERVICE]))


CASES = [
    [inst("a", weight=30)],
    [inst("a", weight=0, drained=True, drained_weight=100)],
    [
        inst("near", addresses=("10.0.0.1",), zone="z1", region="r1"),
        inst("region", addresses=("10.0.0.2",), zone="z2", region="r1"),
        inst("far", addresses=("10.0.0.3",), zone="z3", region="r3"),
        inst("other-region-same-zone", addresses=("10.0.0.4",), zone="z1", region="r2"),
        inst("zone-only", addresses=("10.0.0.5",), zone="z1"),
    ],
    [
        inst("near-backup", addresses=("10.0.0.1",), zone="z1", region="r1", tier=1),
        inst("far-primary", addresses=("10.0.0.2",), zone="z9", region="r9", tier=0),
    ],
    [inst("a", addresses=("10.0.0.1", "fd00::1", "10.1.0.1"), sal="7000")],
    [
        inst("l1", weight=100, zone="z1", region="r1"),
        inst("l2", weight=50, zone="z1", region="r1"),
        inst("l3", weight=70, zone="z1", region="r1", tier=2),
    ],
    [inst(f"big{n}", weight=10_000, zone="z1", region="r1") for n in range(20)],  # capped sum
    [
        inst("plain", sal=None),
        inst("bad", sal="nope"),
        inst("zero", sal="0"),
        inst("a1", service=AGENTS_SERVICE),
    ],
]


@pytest.mark.parametrize("instances", CASES)
def test_same_rules_as_the_reference(instances: list[Instance]) -> None:
    assert native(table_of(instances), []) == desired_rules(instances, HERE, [])


def test_capped_weight_case_is_capped() -> None:
    (rule,) = native(table_of(CASES[6]), [])
    assert rule.targets[0].weight == MAX_TARGET_WEIGHT


def test_random_registries_with_listeners_and_changes() -> None:
    rng = random.Random(7)
    for _ in range(20):
        by_key: dict[tuple[str, str], Instance] = {}
        table = DesiredTable(HERE.zone, HERE.region)
        for _ in range(60):
            service = f"s{rng.randrange(8)}.prod"
            iid = f"i{rng.randrange(6)}"
            if rng.random() < 0.2:
                by_key.pop((service, iid), None)
                table.remove(service, iid)
                continue
            addrs = tuple(rng.sample(["10.0.0.1", "10.0.0.2", "fd00::1", "10.0.0.3"], rng.randint(1, 3)))
            i = inst(
                iid, service=service, addresses=addrs, sal=rng.choice(["7946", "7000", None, "x"]),
                weight=rng.choice([0, 1, 100, 10_000]), tier=rng.randrange(3),
                zone=rng.choice(["", "z1", "z2"]), region=rng.choice(["", "r1", "r2"]),
            )  # fmt: skip
            by_key[i.key] = i
            table.put(i.service, i.instance_id, i.addresses, sal_port(i), i.weight, i.tier, i.zone, i.region)
        listeners = [LocalListener(rng.randrange(1, 9), f"s{rng.randrange(10)}.prod") for _ in range(3)]
        assert native(table, listeners) == desired_rules(by_key.values(), HERE, listeners)
        assert len(table.rules([(x.listener_id, x.service) for x in listeners], [AGENTS_SERVICE])) == len(
            desired_rules(by_key.values(), HERE, listeners)
        )
        for name in ("s1.prod", "s5.prod", "nope.prod"):
            sid = names.service_id(name).raw
            assert table.knows(sid) == has_sal_instance(by_key.values(), sid)


def test_view_is_refused_once_the_mirror_changed() -> None:
    table = table_of([inst("a")])
    view = table.rules([], [])
    table.put("pay.prod", "b", ("10.0.0.9",), 7946, 100, 0)
    with pytest.raises(RuntimeError):
        list(view)
    with pytest.raises(RuntimeError):
        ServiceTable().apply(1, view)


def test_native_apply_equals_rules_apply_and_generations_follow_versions() -> None:
    instances = [inst(f"i{n}", service=f"s{n}.prod", addresses=(f"10.0.0.{n}",)) for n in range(1, 20)]
    table = table_of(instances)
    direct, via_rules = ServiceTable(), ServiceTable()
    view = table.rules([(4, "s3.prod")], [AGENTS_SERVICE])
    gens = Generations()
    assert gens.advance(view) == (1, True)
    assert gens.advance(table.rules([(4, "s3.prod")], [AGENTS_SERVICE])) == (1, False)
    assert direct.apply(1, view).applied
    assert via_rules.apply(1, list(view)).applied
    assert direct.counters() == via_rules.counters()
    table.put("s1.prod", "i1", ("10.0.0.1",), 7946, 100, 0)  # the same content again: no change
    assert gens.advance(table.rules([(4, "s3.prod")], [AGENTS_SERVICE])) == (1, False)
    table.remove("s1.prod", "i1")
    assert gens.advance(table.rules([(4, "s3.prod")], [AGENTS_SERVICE])) == (2, True)
