"""The desired service table (pure): FORWARD/DEMUX rules, weights, tiers x locality, determinism."""

from __future__ import annotations

import random
from typing import Any

import pytest

from hostagent.agent.desired import (
    ADDRESS_RANKS,
    LOCALITY_RANKS,
    SAL_PORT_KEY,
    Generations,
    Locality,
    LocalListener,
    desired_rules,
    locality_rank,
    sal_port,
)
from hostagent.sal_core.table import Rule, RuleKind, Target
from registry import names
from registry.model import Instance

HERE = Locality(zone="z1", region="r1")


def inst(iid: str, service: str = "pay.prod", sal: str | None = "7946", **kw: Any) -> Instance:
    meta = {SAL_PORT_KEY: sal} if sal is not None else {}
    fields: dict[str, Any] = {"addresses": ("10.0.0.1",), "port": 8080, "metadata": meta, **kw}
    return Instance(service=service, instance_id=iid, **fields)


def t(locality_tier: int) -> int:
    """The table tier of an instance's first address at this registry-tier/locality tier."""
    return locality_tier * ADDRESS_RANKS


def targets_of(rules: list[Rule], name: str) -> tuple[Target, ...]:
    sid = names.service_id(name)
    (rule,) = [r for r in rules if (r.prefix, r.prefix_bits) == (sid.raw, sid.prefix_bits)]
    assert rule.kind == RuleKind.FORWARD
    return rule.targets


@pytest.mark.parametrize(
    ("zone", "region", "rank"),
    [
        ("z1", "r1", 0),  # same zone
        ("z1", "", 0),  # same zone, region unknown
        ("z2", "r1", 1),  # same region
        ("", "r1", 1),
        ("z1", "r2", 2),  # a zone of the same name in another region is not "here"
        ("z9", "r9", 2),
        ("", "", 2),  # unknown locality counts as far
    ],
)
def test_locality_rank(zone: str, region: str, rank: int) -> None:
    assert locality_rank(inst("i", zone=zone, region=region), HERE) == rank


@pytest.mark.parametrize(
    ("meta", "port"), [("7946", 7946), ("1", 1), ("65535", 65535), ("0", None), ("70000", None), ("x", None)]
)
def test_sal_port_parsing(meta: str, port: int | None) -> None:
    assert sal_port(inst("i", sal=meta)) == port


@pytest.mark.parametrize(
    ("instances", "expected"),
    [
        pytest.param([inst("a", weight=30)], (Target("10.0.0.1", 7946, 30, t(2)),), id="weight-far"),
        pytest.param(
            [inst("a", weight=0, drained=True, drained_weight=100)],
            (Target("10.0.0.1", 7946, 0, t(2)),),
            id="drained-is-weight-0",
        ),
        pytest.param(
            [
                inst("near", addresses=("10.0.0.1",), zone="z1", region="r1"),
                inst("region", addresses=("10.0.0.2",), zone="z2", region="r1"),
                inst("far", addresses=("10.0.0.3",), zone="z3", region="r3"),
            ],
            (
                Target("10.0.0.1", 7946, 100, t(0)),
                Target("10.0.0.2", 7946, 100, t(1)),
                Target("10.0.0.3", 7946, 100, t(2)),
            ),
            id="locality-ranks",
        ),
        pytest.param(
            [
                inst("near-backup", addresses=("10.0.0.1",), zone="z1", region="r1", tier=1),
                inst("far-primary", addresses=("10.0.0.2",), zone="z9", region="r9", tier=0),
            ],
            (Target("10.0.0.1", 7946, 100, t(1 * LOCALITY_RANKS + 0)), Target("10.0.0.2", 7946, 100, t(2))),
            id="registry-tier-beats-locality",
        ),
        pytest.param(
            [inst("a", addresses=("10.0.0.1", "fd00::1", "10.1.0.1"), sal="7000")],
            (
                Target("10.0.0.1", 7000, 100, t(2)),
                Target("10.1.0.1", 7000, 100, t(2) + 1),
                Target("fd00::1", 7000, 100, t(2) + 1),
            ),
            id="first-address-primary-others-failover",
        ),
        pytest.param(
            [
                inst("l1", weight=100, zone="z1", region="r1"),
                inst("l2", weight=50, zone="z1", region="r1"),
                inst("l3", weight=70, zone="z1", region="r1", tier=2),
            ],
            (Target("10.0.0.1", 7946, 150, 0),),
            id="same-endpoint-merged-best-tier-weights-summed",
        ),
    ],
)
def test_forward_targets(instances: list[Instance], expected: tuple[Target, ...]) -> None:
    assert targets_of(desired_rules(instances, HERE, []), "pay.prod") == expected


def test_instances_without_sal_port_and_agent_records_get_no_rule() -> None:
    rules = desired_rules(
        [inst("plain", sal=None), inst("bad", sal="nope"), inst("a1", service="agents.serval")], HERE, []
    )
    assert rules == []


def test_local_listener_gets_demux_which_replaces_forward() -> None:
    instances = [inst("remote"), inst("other", service="cart.prod")]
    listeners = [LocalListener(7, "pay.prod"), LocalListener(3, "pay.prod"), LocalListener(9, "new.prod")]
    rules = desired_rules(instances, HERE, listeners)
    by_name = {}
    for name in ("pay.prod", "cart.prod", "new.prod"):
        sid = names.service_id(name)
        (by_name[name],) = [r for r in rules if r.prefix == sid.raw and r.prefix_bits == sid.prefix_bits]
    assert by_name["pay.prod"] == Rule(*_sid("pay.prod"), RuleKind.DEMUX, (), 3)  # the oldest listener
    assert by_name["new.prod"].kind == RuleKind.DEMUX and by_name["new.prod"].listener == 9
    assert by_name["cart.prod"].kind == RuleKind.FORWARD
    assert len(rules) == 3


def _sid(name: str) -> tuple[bytes, int]:
    sid = names.service_id(name)
    return sid.raw, sid.prefix_bits


def test_output_is_sorted_and_independent_of_input_order() -> None:
    instances = [
        inst(f"i{n}", service=f"s{n % 7}.prod", addresses=(f"10.0.{n}.1",), zone=f"z{n % 3}", region="r1")
        for n in range(40)
    ]
    listeners = [LocalListener(n, f"l{n}.prod") for n in range(5)]
    expected = desired_rules(instances, HERE, listeners)
    assert [(r.prefix, r.prefix_bits) for r in expected] == sorted(
        (r.prefix, r.prefix_bits) for r in expected
    )
    rng = random.Random(4)
    for _ in range(5):
        rng.shuffle(instances)
        rng.shuffle(listeners)
        assert desired_rules(instances, HERE, listeners) == expected


def test_generations_advance_only_on_change() -> None:
    gens = Generations()
    a = desired_rules([inst("a")], HERE, [])
    b = desired_rules([inst("a"), inst("b", addresses=("10.0.0.2",))], HERE, [])
    assert gens.advance(a) == (1, True)
    assert gens.advance(list(a)) == (1, False)
    assert gens.advance(b) == (2, True)
    assert gens.advance(a) == (3, True)
    assert gens.advance(a) == (3, False)
