"""Instance validation: every client-settable field has a bound and a clear message."""

from __future__ import annotations

import dataclasses

import pytest

from registry.errors import InvalidArgument
from registry.model import Instance, resolution_order, validate_instance

GOOD = Instance(
    "Payments.Prod", "i-1", ("10.0.0.1", "2001:DB8::1"), 8080, weight=5, tier=1, region="eu", zone="a"
)


def test_valid_instance_is_normalised() -> None:
    inst = validate_instance(dataclasses.replace(GOOD, lease_id=9, mod_revision=4))
    assert inst.service == "payments.prod"
    assert inst.addresses == ("10.0.0.1", "2001:db8::1")
    assert (inst.lease_id, inst.mod_revision) == (0, 0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"service": "bad_name"}, "service"),
        ({"instance_id": ""}, "instance_id"),
        ({"instance_id": "a/b"}, "instance_id"),
        ({"instance_id": "x" * 129}, "instance_id"),
        ({"addresses": ()}, "at least one address"),
        ({"addresses": ("10.0.0.300",)}, "not an IPv4 or IPv6"),
        ({"addresses": ("0.0.0.0",)}, "unspecified"),
        ({"addresses": ("10.0.0.1", "10.0.0.1")}, "duplicates"),
        ({"addresses": tuple(f"10.0.0.{i}" for i in range(17))}, "more than 16"),
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"weight": 10001}, "weight"),
        ({"tier": 16}, "tier"),
        ({"ttl_seconds": 0}, "ttl"),
        ({"ttl_seconds": 3601}, "ttl"),
        ({"zone": "a b"}, "locality"),
        ({"metadata": {"k": "v" * 257}}, "longer than 256"),
        ({"metadata": {"bad key": "v"}}, "metadata key"),
        ({"metadata": {f"k{i}": "v" for i in range(33)}}, "more than 32"),
    ],
)
def test_invalid_fields_are_refused_with_the_field_named(change: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_instance(dataclasses.replace(GOOD, **change))  # type: ignore[arg-type]


def test_resolution_order_best_tier_then_heaviest_then_id() -> None:
    a = dataclasses.replace(GOOD, instance_id="a", tier=1, weight=10)
    b = dataclasses.replace(GOOD, instance_id="b", tier=0, weight=1)
    c = dataclasses.replace(GOOD, instance_id="c", tier=0, weight=5)
    d = dataclasses.replace(GOOD, instance_id="d", tier=0, weight=5)
    assert [i.instance_id for i in resolution_order([a, b, d, c])] == ["c", "d", "b", "a"]
