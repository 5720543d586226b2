"""View, history and hub: the pure revision bookkeeping behind watch resume."""

from __future__ import annotations

import asyncio

import pytest

from registry.api.fanout import Hub, SubscriptionClosed
from registry.api.v1 import registry_pb2 as pb
from registry.model import Instance
from registry.raft.store import InstanceDeleted, InstancePut, Snapshot, WatchBatch
from registry.view import Delta, History, View, matches_suffix


def inst(service: str, iid: str, rev: int, weight: int = 1) -> Instance:
    return Instance(service, iid, ("10.0.0.1",), 80, weight=weight, mod_revision=rev)


def put(service: str, iid: str, rev: int) -> InstancePut:
    return InstancePut(inst(service, iid, rev), rev)


def test_apply_returns_deltas_and_ignores_replayed_revisions() -> None:
    view = View()
    deltas = view.apply(WatchBatch(3, [put("a", "1", 2), put("a", "2", 3)]))
    assert [(d.instance_id, d.revision) for d in deltas] == [("1", 2), ("2", 3)]
    assert view.apply(WatchBatch(3, [put("a", "1", 2)])) == []
    deltas = view.apply(WatchBatch(4, [InstanceDeleted("a", "1", 4), InstanceDeleted("a", "9", 4)]))
    assert [(d.instance_id, d.instance) for d in deltas] == [("1", None)]
    assert (view.revision, view.instance_count, view.service_count) == (4, 1, 1)


def test_reset_returns_the_difference_at_the_snapshot_revision() -> None:
    view = View()
    view.apply(WatchBatch(3, [put("a", "1", 2), put("a", "2", 3)]))
    same, changed, new = inst("a", "1", 2), inst("a", "2", 9, weight=7), inst("b", "1", 8)
    deltas = view.reset(Snapshot([same, changed, new], 10))
    assert sorted((d.service, d.instance_id, d.instance is None) for d in deltas) == [
        ("a", "2", False),
        ("b", "1", False),
    ]
    assert all(d.revision == 10 for d in deltas)
    deltas = view.reset(Snapshot([same], 11))
    assert sorted((d.service, d.instance_id, d.instance is None) for d in deltas) == [
        ("a", "2", True),
        ("b", "1", True),
    ]


def test_history_since_and_bound() -> None:
    hist = History(start_revision=5, max_deltas=4)
    hist.append([Delta("a", str(r), r, None) for r in (6, 7, 7, 8)])
    assert [d.revision for d in hist.since(5) or []] == [6, 7, 7, 8]
    assert [d.revision for d in hist.since(7) or []] == [8]
    assert hist.since(8) == []
    assert hist.since(4) is None
    hist.append([Delta("a", "x", 9, None)])  # drops revision 6 entirely
    assert hist.start_revision == 6
    assert hist.since(5) is None
    assert [d.revision for d in hist.since(6) or []] == [7, 7, 8, 9]


def test_history_drops_whole_revisions() -> None:
    hist = History(start_revision=0, max_deltas=2)
    hist.append([Delta("a", "1", 1, None), Delta("a", "2", 1, None), Delta("a", "3", 2, None)])
    assert hist.start_revision == 1
    assert [d.revision for d in hist.since(1) or []] == [2]


@pytest.mark.parametrize(
    ("service", "suffix", "match"),
    [("a.prod", "prod", True), ("prod", "prod", True), ("aprod", "prod", False), ("a.prod", "", True)],
)
def test_suffix_matching_is_on_label_boundaries(service: str, suffix: str, match: bool) -> None:
    assert matches_suffix(service, suffix) is match


def decode(raw: bytes) -> pb.WatchResponse:
    return pb.WatchResponse.FromString(raw)


def make_hub(max_queued: int = 100) -> tuple[View, History, Hub]:
    view = View()
    hist = History(view.revision, 1000)
    return view, hist, Hub(view, hist, "r1", max_queued=max_queued, snapshot_chunk=2, clock=lambda: 100.0)


def feed(view: View, hist: History, hub: Hub, *events: InstancePut | InstanceDeleted) -> None:
    deltas = view.apply(WatchBatch(events[-1].revision, list(events)))
    hist.append(deltas)
    hub.publish(deltas, view.revision)


async def test_new_subscriber_gets_snapshot_then_live_deltas() -> None:
    view, hist, hub = make_hub()
    feed(view, hist, hub, put("a", "1", 1), put("a", "2", 1), put("b", "1", 1))
    sub = hub.subscribe("s", "peer", 0, "")
    feed(view, hist, hub, put("c", "1", 2))
    kinds = [decode(await sub.next_message()) for _ in range(3)]
    assert [m.kind for m in kinds] == [
        pb.WatchResponse.SNAPSHOT,
        pb.WatchResponse.SNAPSHOT_END,
        pb.WatchResponse.DELTAS,
    ]
    assert sum(len(m.instances) for m in kinds[:2]) == 3
    assert [m.snapshot_start for m in kinds] == [True, False, False]
    assert kinds[1].revision == 1
    assert [(d.instance.service, d.revision) for d in kinds[2].deltas] == [("c", 2)]


async def test_resume_sends_only_missed_deltas_or_progress() -> None:
    view, hist, hub = make_hub()
    for rev in range(1, 6):
        feed(view, hist, hub, put("a", str(rev), rev))
    sub = hub.subscribe("s", "peer", 3, "")
    msg = decode(await sub.next_message())
    assert [d.revision for d in msg.deltas] == [4, 5]
    sub2 = hub.subscribe("s2", "peer", 5, "")
    assert decode(await sub2.next_message()).kind == pb.WatchResponse.PROGRESS


async def test_suffix_filter_applies_to_snapshot_and_deltas() -> None:
    view, hist, hub = make_hub()
    feed(view, hist, hub, put("x.prod", "1", 1), put("x.dev", "1", 1))
    sub = hub.subscribe("s", "peer", 0, "prod")
    feed(view, hist, hub, put("y.dev", "1", 2))
    feed(view, hist, hub, put("y.prod", "1", 3))
    snap = decode(await sub.next_message())
    assert [i.service for i in snap.instances] == ["x.prod"]
    nxt = decode(await sub.next_message())
    assert [d.instance.service for d in nxt.deltas] == ["y.prod"]


async def test_slow_subscriber_is_closed_with_a_reason() -> None:
    view, hist, hub = make_hub(max_queued=2)
    sub = hub.subscribe("slow", "peer", 0, "")
    for rev in range(1, 5):
        feed(view, hist, hub, put("a", str(rev), rev))
    assert hub.subscriber_count == 0
    assert hub.slow_disconnects == 1
    with pytest.raises(SubscriptionClosed, match="too slow"):
        await sub.next_message()


async def test_lag_is_tracked_from_acks() -> None:
    view, hist, hub = make_hub()
    sub = hub.subscribe("s", "peer", 0, "")
    feed(view, hist, hub, put("a", "1", 1))
    feed(view, hist, hub, put("a", "2", 2))
    hub.record_applied(sub, 1)
    (stats,) = hub.stats()
    assert (stats.applied_revision, stats.lag_revisions, stats.queued_messages) == (1, 1, 2)
    hub.record_applied(sub, 2)
    assert hub.stats()[0].lag_revisions == 0


async def test_next_message_waits_for_a_publish() -> None:
    view, hist, hub = make_hub()
    sub = hub.subscribe("s", "peer", 0, "")
    await sub.next_message()  # empty snapshot end
    waiter = asyncio.create_task(sub.next_message())
    await asyncio.sleep(0)
    assert not waiter.done()
    feed(view, hist, hub, put("a", "1", 1))
    assert decode(await waiter).deltas[0].instance.instance_id == "1"


async def test_queued_deltas_go_out_merged_in_order() -> None:
    view, hist, hub = make_hub()
    sub = hub.subscribe("s", "peer", 0, "")
    await sub.next_message()  # empty snapshot
    for rev in range(1, 5):
        feed(view, hist, hub, put("a", str(rev), rev))
    merged = decode(await sub.next_message())
    assert merged.kind == pb.WatchResponse.DELTAS
    assert [d.revision for d in merged.deltas] == [1, 2, 3, 4]
    assert merged.revision == 4 and sub.queued == 0


async def test_progress_is_never_merged_into_deltas() -> None:
    view, hist, hub = make_hub()
    feed(view, hist, hub, put("a", "1", 1))
    sub = hub.subscribe("s", "peer", 1, "")  # resumes with nothing missed: PROGRESS
    feed(view, hist, hub, put("a", "2", 2))
    first, second = decode(await sub.next_message()), decode(await sub.next_message())
    assert (first.kind, second.kind) == (pb.WatchResponse.PROGRESS, pb.WatchResponse.DELTAS)


async def test_propagation_is_send_delay_plus_apply_delay_for_written_deltas_only() -> None:
    now = [100.0]
    view = View()
    hist = History(view.revision, 1000)
    hub = Hub(view, hist, "r1", clock=lambda: now[0], wall_clock=lambda: 1_700_000_000.0)
    sub = hub.subscribe("agent/a", "peer", 0, "")
    assert decode(await sub.next_message()).kind == pb.WatchResponse.SNAPSHOT_END
    hub.written(sub)
    feed(view, hist, hub, put("a", "1", 2))  # published at 100.0
    feed(view, hist, hub, put("a", "2", 3))
    now[0] = 100.25
    merged = decode(await sub.next_message())  # both DELTAS go out as one message, revision 3
    assert merged.revision == 3
    hub.written(sub)
    hub.record_applied(sub, 1, 1000)  # the snapshot's revision: no DELTAS written, no sample
    hub.record_applied(sub, 3)  # no delay reported: lag only
    assert not hub.propagation and sub.applied_revision == 3
    hub.record_applied(sub, 3, 50_000)
    hub.record_applied(sub, 2, 50_000)  # revision 2 was not a message of its own: no sample
    assert [(p.subscriber_id, p.revision, round(p.seconds, 3)) for p in hub.propagation] == [
        ("agent/a", 3, 0.3)
    ]
    assert hub.propagation[0].at_unix == 1_700_000_000.0
