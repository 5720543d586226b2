"""`RegistryFeed`: watch messages → `View`s, never published mid-snapshot; drained → weight 0."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from registry.api.v1 import registry_pb2 as pb
from resolver.dns_bridge.feed import RegistryFeed
from resolver.model import View

SNAPSHOT, END, DELTAS = pb.WatchResponse.SNAPSHOT, pb.WatchResponse.SNAPSHOT_END, pb.WatchResponse.DELTAS


def inst(service: str, iid: str, **kw: Any) -> pb.Instance:
    return pb.Instance(service=service, instance_id=iid, addresses=["10.0.0.1"], port=80, weight=5, **kw)


class FakeClient:
    """Plays a fixed list of watch messages."""

    def __init__(self, messages: list[pb.WatchResponse]) -> None:
        self.messages = messages

    def watch(self, subscriber_id: str = "") -> AsyncIterator[pb.WatchResponse]:
        async def play() -> AsyncIterator[pb.WatchResponse]:
            for m in self.messages:
                yield m

        return play()


async def test_publishes_only_consistent_views() -> None:
    messages = [
        pb.WatchResponse(kind=SNAPSHOT, instances=[inst("a.prod", "1")], revision=5, snapshot_start=True),
        pb.WatchResponse(kind=END, instances=[inst("b.prod", "1", drained=True)], revision=5),
        pb.WatchResponse(
            kind=DELTAS,
            deltas=[
                pb.InstanceDelta(kind=pb.InstanceDelta.PUT, instance=inst("a.prod", "2")),
                pb.InstanceDelta(kind=pb.InstanceDelta.DELETE, instance=inst("b.prod", "1")),
            ],
            revision=6,
        ),
        pb.WatchResponse(kind=pb.WatchResponse.PROGRESS, revision=6),  # nothing new: not published
    ]
    feed = RegistryFeed(FakeClient(messages), clock=lambda: 123.0)  # type: ignore[arg-type]
    seen: list[View] = []
    feed.subscribe(lambda: seen.append(feed.view()))
    await feed.run()
    assert [v.revision for v in seen] == [5, 6]
    first, second = seen
    assert set(first.services) == {"a.prod", "b.prod"}
    (drained,) = first.services["b.prod"]
    assert drained.weight == 0 and not drained.usable and drained.source == "registry"
    assert set(second.services) == {"a.prod"}
    assert [e.instance_id for e in second.services["a.prod"]] == ["1", "2"]
    assert second.built_at == 123.0 and second.source_revisions == {"registry": 6}
