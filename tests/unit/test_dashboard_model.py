"""The dashboard's read model (`dashboard.model`): pure, fed watch messages by hand."""

from __future__ import annotations

import pytest

from dashboard.model import LATENCY_KEY, Model, percentile
from registry.api import convert
from registry.api.v1 import registry_pb2 as pb
from registry.model import Instance


def wire(svc: str, iid: str, rev: int, **kw: object) -> pb.Instance:
    i = Instance(service=svc, instance_id=iid, addresses=("10.0.0.1",), port=80, **kw)  # type: ignore[arg-type]
    msg = convert.instance_to_pb(i)
    msg.create_revision = msg.mod_revision = rev
    return msg


def put(rev: int, svc: str, iid: str, **kw: object) -> pb.WatchResponse:
    d = pb.InstanceDelta(kind=pb.InstanceDelta.PUT, instance=wire(svc, iid, rev, **kw), revision=rev)
    return pb.WatchResponse(kind=pb.WatchResponse.DELTAS, deltas=[d], revision=rev)


def delete(rev: int, svc: str, iid: str) -> pb.WatchResponse:
    gone = pb.Instance(service=svc, instance_id=iid)
    d = pb.InstanceDelta(kind=pb.InstanceDelta.DELETE, instance=gone, revision=rev)
    return pb.WatchResponse(kind=pb.WatchResponse.DELTAS, deltas=[d], revision=rev)


def test_counts_and_sorted_index_follow_puts_and_deletes() -> None:
    m = Model()
    m.apply(put(1, "b.x", "1"), 0)
    m.apply(put(2, "a.x", "1"), 0)
    m.apply(put(3, "a.x", "2", weight=0), 0)
    m.apply(put(4, "agents.serval", "h1"), 0)
    assert m.service_names == ["a.x", "agents.serval", "b.x"]
    c = m.counts()
    assert (c.services, c.instances, c.usable, c.drained, c.agents, c.revision) == (3, 4, 3, 0, 1, 4)
    m.apply(delete(5, "b.x", "1"), 0)
    m.apply(delete(6, "b.x", "1"), 0)  # already gone: no event, no count change
    assert m.service_names == ["a.x", "agents.serval"] and m.counts().instances == 3
    assert [e.kind for e in m.recent_events()] == ["put", "put", "put", "put", "delete"]


def test_snapshot_replaces_content_at_its_end() -> None:
    m = Model()
    m.apply(put(1, "old.x", "1"), 0)
    start = pb.WatchResponse(
        kind=pb.WatchResponse.SNAPSHOT, snapshot_start=True, instances=[wire("n.x", "1", 5)]
    )
    assert m.apply(start, 0) == [] and m.counts().services == 1  # not consistent yet: unchanged
    end = pb.WatchResponse(kind=pb.WatchResponse.SNAPSHOT_END, instances=[wire("n.x", "2", 5)], revision=5)
    events = m.apply(end, 0)
    assert m.service_names == ["n.x"] and m.counts().instances == 2
    assert sorted((e.kind, e.service) for e in events) == [
        ("delete", "old.x"),
        ("put", "n.x"),
        ("put", "n.x"),
    ]


@pytest.mark.parametrize(
    ("query", "status", "offset", "limit", "names", "total"),
    [
        ("", "all", 0, 2, ["s000.x", "s001.x"], 12),
        ("", "all", 10, 5, ["s010.x", "s011.x"], 12),
        ("01", "all", 0, 50, ["s001.x", "s010.x", "s011.x"], 3),
        ("", "down", 0, 50, ["s003.x", "s007.x", "s011.x"], 3),
        ("s01", "down", 0, 50, ["s011.x"], 1),
    ],
)
def test_search_filter_and_pagination(
    query: str, status: str, offset: int, limit: int, names: list[str], total: int
) -> None:
    m = Model()
    for n in range(12):
        m.apply(put(n + 1, f"s{n:03d}.x", "1", weight=0 if n % 4 == 3 else 10), 0)
    page = m.search(query, status, offset, limit)
    assert [r.name for r in page.rows] == names and page.total == total


def test_latency_samples_only_stamped_registrations() -> None:
    m = Model()
    m.apply(put(1, "a.x", "1", metadata={LATENCY_KEY: str(10 * 10**9)}), 10.25)
    m.apply(put(2, "a.x", "2"), 11.0)
    w = m.latency_window(now=11.0)
    assert w["samples"] == 1 and w["max"] == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("values", "p", "want"), [([], 50, 0.0), ([1.0], 99, 1.0), ([1, 2, 3, 4], 50, 2), ([1, 2, 3, 4], 99, 4)]
)
def test_percentile_nearest_rank(values: list[float], p: float, want: float) -> None:
    assert percentile(values, p) == want


def sample(at_ms: int, subscriber: str, revision: int, seconds: float) -> pb.PropagationSample:
    return pb.PropagationSample(
        subscriber_id=subscriber, revision=revision, seconds=seconds, at_unix_ms=at_ms
    )


def test_propagation_keeps_each_replicas_samples_once_and_summarises_agents() -> None:
    m = Model()
    first = [sample(1_000, "agent/a", 5, 0.010), sample(1_500, "dashboard", 5, 0.001)]
    assert m.add_propagation("r1", first) == 2
    # the next poll returns the same window plus a new sample: only the new one is kept
    assert m.add_propagation("r1", [*first, sample(2_000, "agent/b", 6, 0.030)]) == 1
    # another replica's samples with the same keys are its own
    assert m.add_propagation("r2", [sample(2_000, "agent/b", 6, 0.020)]) == 1
    window = m.propagation_window(now=2.5, window=10)
    # p50/p99/max over the agents only; the table has every subscriber, slowest p99 first
    assert (window["samples"], window["p50"], window["max"]) == (3.0, 0.020, 0.030)
    assert [r["subscriber"] for r in window["subscribers"]] == ["agent/b", "agent/a", "dashboard"]
    assert [p.subscriber for p in m.recent_propagation(2.5, 1.2, agents_only=True)] == ["agent/b", "agent/b"]
