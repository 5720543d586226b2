"""The service table through its Python binding (the Rust core has its own tests)."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from hostagent import sal_core
from hostagent.sal_core import _native
from hostagent.sal_core.table import Choice, Rule, RuleKind, ServiceTable, Target


def sid(name: str) -> bytes:
    return sal_core.service_id(name)[0]


def forward(name: str, *targets: Target) -> Rule:
    return Rule.for_name(name, RuleKind.FORWARD, targets)


A, B, C = Target("10.0.0.1", 80), Target("10.0.0.2", 80), Target("2001:db8::3", 80)


def test_longest_prefix_wins_and_each_rule_kind_answers() -> None:
    table = ServiceTable()
    table.apply(
        1,
        [
            forward("prod", A),
            forward("payments.prod", B),
            Rule.for_name("local.prod", RuleKind.DEMUX, listener=7),
            Rule.for_name("held.prod", RuleKind.DELAY),
            Rule.for_name("banned.prod", RuleKind.DROP),
        ],
    )
    assert table.choose(sid("api.payments.prod"), 1) == Choice("forward", ("10.0.0.2", 80))
    assert table.choose(sid("other.prod"), 1) == Choice("forward", ("10.0.0.1", 80))
    assert table.choose(sid("local.prod"), 1) == Choice("demux", listener=7)
    assert table.choose(sid("held.prod"), 1).kind == "delay"
    assert table.choose(sid("x.banned.prod"), 1).kind == "drop"
    assert table.choose(sid("staging"), 1).kind == "no_route"
    match = table.lookup(sid("api.payments.prod"))
    assert match is not None and (match.kind, match.prefix_bits) == (RuleKind.FORWARD, 64)


def test_bit_granular_prefixes() -> None:
    table = ServiceTable()
    half = bytes([0x80]) + bytes(31)
    table.apply(1, [Rule(bytes(32), 0, RuleKind.DROP), Rule(half, 1, RuleKind.DEMUX, listener=1)])
    assert table.choose(bytes([0xFF]) + bytes(31), 0) == Choice("demux", listener=1)
    assert table.choose(bytes([0x7F]) + bytes(31), 0).kind == "drop"


def test_only_the_best_tier_with_weight_is_eligible_and_exclusion_fails_over() -> None:
    table = ServiceTable()
    best, drained = Target("10.0.0.1", 80, weight=5, tier=0), Target("10.0.0.9", 80, weight=0, tier=0)
    backup = Target("10.0.0.2", 80, weight=1, tier=1)
    table.apply(1, [forward("db.prod", best, drained, backup)])
    chosen = {table.choose(sid("db.prod"), key).target for key in range(200)}
    assert chosen == {("10.0.0.1", 80)}
    assert table.choose(sid("db.prod"), 3, exclude=[("10.0.0.1", 80)]).target == ("10.0.0.2", 80)
    assert table.choose(sid("db.prod"), 3, exclude=[("10.0.0.1", 80), ("10.0.0.2", 80)]).kind == "no_target"
    assert table.all_targets(sid("db.prod")) == [("10.0.0.1", 80)]


def test_choice_is_deterministic_and_follows_weights() -> None:
    table = ServiceTable()
    table.apply(1, [forward("web.prod", Target("10.0.0.1", 80, 1), Target("10.0.0.2", 80, 3))])
    first = [table.choose(sid("web.prod"), key).target for key in range(4000)]
    assert first == [table.choose(sid("web.prod"), key).target for key in range(4000)]
    share = Counter(first)[("10.0.0.2", 80)] / len(first)
    assert 0.70 < share < 0.80


def test_apply_is_versioned_and_identical_content_is_no_change() -> None:
    table = ServiceTable()
    rules = [forward("web.prod", A, B)]
    assert table.apply(1, rules).applied
    again = table.apply(2, list(reversed([forward("web.prod", B, A)])))
    assert not again.applied
    with pytest.raises(ValueError, match="generation"):
        table.apply(1, [forward("web.prod", A)])
    result = table.apply(3, [forward("web.prod", A), forward("api.prod", C)])
    assert (result.applied, result.generation, result.added, result.changed) == (True, 3, 1, 1)
    assert table.generation == 3


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (Rule(bytes(31), 8, RuleKind.DROP), "32 bytes"),
        (Rule(bytes(32), 257, RuleKind.DROP), "257"),
        (Rule.for_name("x.prod", RuleKind.DROP, [A]), "target"),
        (Rule.for_name("x.prod", RuleKind.FORWARD, [A, A]), "twice"),
        (Rule.for_name("x.prod", RuleKind.FORWARD, [Target("not-an-ip", 80)]), "IP"),
    ],
)
def test_invalid_rules_are_refused_and_the_table_is_unchanged(rule: Rule, message: str) -> None:
    table = ServiceTable()
    table.apply(1, [forward("web.prod", A)])
    with pytest.raises(ValueError, match=message):
        table.apply(2, [rule])
    assert table.generation == 1
    assert table.choose(sid("web.prod"), 0).target == ("10.0.0.1", 80)


def test_counters_count_resolutions_per_rule_and_target() -> None:
    table = ServiceTable()
    table.apply(1, [forward("web.prod", A)])
    for key in range(5):
        table.choose(sid("web.prod"), key)
    table.choose(sid("nothing"), 0)
    counters = table.counters()
    (rule,) = counters.rules
    assert (counters.generation, counters.no_route, rule.hits) == (1, 1, 5)
    assert [(t.host, t.chosen) for t in rule.targets] == [("10.0.0.1", 5)]


def test_apply_releases_the_gil_while_the_table_is_built() -> None:
    """Another Python thread keeps running during a large build."""
    rules = [
        forward(f"s{i}.bench", Target(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 80))
        for i in range(100_000)
    ]
    ticks = 0
    done = threading.Event()

    def spin() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1

    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        table = ServiceTable()
        native = [r.as_native() for r in rules]
        before = ticks
        table._ref.apply(1, native)
        during = ticks - before
    finally:
        done.set()
        spinner.join()
    assert table.generation == 1
    assert during > 1000, f"the other thread advanced only {during} times during the build"


def test_a_rust_panic_is_a_python_exception() -> None:
    with pytest.raises(BaseException, match="boom") as caught:
        _native._panic_for_tests("boom")
    assert type(caught.value).__name__ == "PanicException"
