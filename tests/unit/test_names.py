"""Service names and IDs: the shared vectors, prefixes, raw IDs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hostagent import sal_core
from registry import names

VECTORS = json.loads((Path(__file__).parents[1] / "testdata" / "service_ids.json").read_text())


@pytest.mark.parametrize("case", VECTORS["valid"], ids=lambda c: c["name"][:40])
def test_valid_names_match_vectors(case: dict[str, object]) -> None:
    sid = names.service_id(str(case["name"]))
    assert names.normalize(str(case["name"])) == case["normalized"]
    assert sid.hex() == case["id"]
    assert sid.prefix_bits == case["prefix_bits"]


@pytest.mark.parametrize("case", VECTORS["valid"], ids=lambda c: c["name"][:40])
def test_rust_core_derives_the_same_ids(case: dict[str, object]) -> None:
    raw, bits = sal_core.service_id(str(case["name"]))
    assert (raw.hex(), bits) == (case["id"], case["prefix_bits"])


@pytest.mark.parametrize("case", VECTORS["invalid"], ids=lambda c: str(c["why"]))
def test_invalid_names_are_refused_with_a_reason(case: dict[str, object]) -> None:
    with pytest.raises(names.InvalidName) as err:
        names.service_id(str(case["name"]))
    assert str(err.value)
    with pytest.raises(ValueError):
        sal_core.service_id(str(case["name"]))


def test_parent_id_is_a_bit_prefix_of_child_id() -> None:
    parent, child = names.service_id("prod.acme"), names.service_id("payments.prod.acme")
    n = parent.prefix_bits // 8
    assert child.raw[:n] == parent.raw[:n]
    assert child.prefix_bits == parent.prefix_bits + names.BITS_PER_LABEL


@pytest.mark.parametrize(
    ("text", "bits"),
    [("ab", 8), ("abc0/12", 12), ("0/0", 0), ("f" * 64, 256), ("8/1", 1)],
)
def test_raw_ids_with_bit_prefixes(text: str, bits: int) -> None:
    assert names.parse_service_id(text).prefix_bits == bits


@pytest.mark.parametrize("text", ["", "xyz", "ab/300", "ab/-1", "ff/4", "a" * 65, "ab/x"])
def test_bad_raw_ids(text: str) -> None:
    with pytest.raises(names.InvalidName):
        names.parse_service_id(text)


def test_rust_core_version() -> None:
    assert sal_core.version() == "0.1.0"
