"""merge(): precedence → effective tiers, source attribution, conflicts (table-driven)."""

from __future__ import annotations

import asyncio

import pytest

from resolver.merge import Resolver, merge
from resolver.model import Conflict, Endpoint, Snapshot
from tests.fakes.backend import FakeBackend
from tests.fakes.backend import snapshot_of as snap


def ep(service: str, iid: str, addr: str = "10.0.0.1", port: int = 80, tier: int = 0) -> Endpoint:
    return Endpoint(service, iid, (addr,), port, tier=tier)


PREC = {"registry": 0, "static": 1, "dns": 2}

# (case, snapshots, service, expected [(instance_id, source, tier)])
TIERS = [
    ("one source keeps its tiers", [snap("registry", ep("a", "1", tier=3))], "a", [("1", "registry", 3)]),
    (
        "lower precedence is offset by 16 per rank",
        [snap("static", ep("a", "s")), snap("registry", ep("a", "r", tier=2))],
        "a",
        [("r", "registry", 2), ("s", "static", 16)],
    ),
    ("own tier capped at 15", [snap("dns", ep("a", "d", tier=40))], "a", [("d", "dns", 47)]),
    ("unlisted back-end ranks last", [snap("lan", ep("a", "l", tier=1))], "a", [("l", "lan", 49)]),
    (
        "same id: the higher-precedence endpoint is kept",
        [snap("static", ep("a", "x", "10.0.0.2")), snap("registry", ep("a", "x", "10.0.0.1"))],
        "a",
        [("x", "registry", 0)],
    ),
]


@pytest.mark.parametrize(("snaps", "service", "expected"), [c[1:] for c in TIERS], ids=[c[0] for c in TIERS])
def test_precedence_and_attribution(
    snaps: list[Snapshot], service: str, expected: list[tuple[str, str, int]]
) -> None:
    view = merge(snaps, PREC)
    assert [(e.instance_id, e.source, e.tier) for e in view.endpoints(service)] == expected


CONFLICTS = [
    ("no overlap", [snap("registry", ep("a", "1")), snap("static", ep("b", "1"))], []),
    (
        "same service from two back-ends",
        [snap("static", ep("a", "s")), snap("registry", ep("a", "r"))],
        [("a", "", ("registry", "static"))],
    ),
    (
        "same instance, same address: service conflict only",
        [snap("static", ep("a", "x")), snap("registry", ep("a", "x"))],
        [("a", "", ("registry", "static"))],
    ),
    (
        "same instance, other port",
        [snap("static", ep("a", "x", port=81)), snap("registry", ep("a", "x"))],
        [("a", "", ("registry", "static")), ("a", "x", ("registry", "static"))],
    ),
    (
        "three back-ends",
        [snap("dns", ep("a", "d")), snap("static", ep("a", "s")), snap("registry", ep("a", "r"))],
        [("a", "", ("registry", "static", "dns"))],
    ),
]


@pytest.mark.parametrize(("snaps", "expected"), [c[1:] for c in CONFLICTS], ids=[c[0] for c in CONFLICTS])
def test_conflicts(snaps: list[Snapshot], expected: list[tuple[str, str, tuple[str, ...]]]) -> None:
    view = merge(snaps, PREC)
    assert [(c.service, c.instance_id, c.sources) for c in view.conflicts] == expected


def test_instance_conflict_detail_names_both_sides() -> None:
    view = merge([snap("static", ep("a", "x", "10.0.0.9")), snap("registry", ep("a", "x"))], PREC)
    detail = next(c for c in view.conflicts if c.instance_id == "x").detail
    assert "registry: 10.0.0.1 port 80" in detail and "static: 10.0.0.9 port 80" in detail


def test_view_carries_revisions_and_errors() -> None:
    view = merge(
        [snap("registry", revision=7), snap("static", revision=3, error="bad file")],
        PREC,
        revision=5,
        built_at=12.5,
    )
    assert view.revision == 5 and view.built_at == 12.5
    assert view.source_revisions == {"registry": 7, "static": 3}
    assert view.errors == {"static": "bad file"}
    assert view.conflicts == ()


def test_sorted_by_tier_then_id_and_deterministic() -> None:
    snaps = [snap("static", ep("a", "b"), ep("a", "a")), snap("registry", ep("a", "z", tier=1), ep("a", "y"))]
    ids = [e.instance_id for e in merge(snaps, PREC).endpoints("a")]
    assert ids == ["y", "z", "a", "b"]
    assert merge(snaps, PREC) == merge(list(reversed(snaps)), PREC)


async def test_resolver_rebuilds_debounced_and_notifies() -> None:
    a, b = FakeBackend("registry"), FakeBackend("static")
    resolver = Resolver([a, b], debounce=0.01)
    seen: list[int] = []
    resolver.subscribe(lambda: seen.append(resolver.view().revision))
    task = asyncio.create_task(resolver.run())
    try:
        await asyncio.sleep(0.02)
        first = resolver.view().revision
        a.set(ep("x", "1"))
        b.set(ep("x", "2"))  # within the debounce: one rebuild
        await asyncio.sleep(0.05)
        view = resolver.view()
        assert view.revision == first + 1
        assert [(e.instance_id, e.source) for e in view.endpoints("x")] == [
            ("1", "registry"),
            ("2", "static"),
        ]
        assert view.conflicts == (Conflict("x", "", ("registry", "static"), view.conflicts[0].detail),)
        assert seen[-1] == view.revision
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_resolver_rejects_duplicate_names() -> None:
    with pytest.raises(ValueError, match="unique"):
        Resolver([FakeBackend("a"), FakeBackend("a")])


def test_the_resolver_logs_a_conflict_once_when_it_appears_and_when_it_clears(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry, static = FakeBackend("registry"), FakeBackend("static")
    resolver = Resolver([registry, static])
    registry.set(ep("web", "1", addr="10.0.0.1"))
    static.set(ep("web", "1", addr="10.9.9.9"))
    with caplog.at_level("INFO", logger="resolver.merge"):
        resolver.rebuild()
        resolver.rebuild()  # unchanged: not logged again
        static.set()
        resolver.rebuild()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2  # the service-level and the instance-level conflict, once each
    assert any("web/1" in w and "10.9.9.9" in w for w in warnings)
    assert [r.getMessage() for r in caplog.records if r.levelname == "INFO"] == [
        "conflict resolved: web",
        "conflict resolved: web/1",
    ]
