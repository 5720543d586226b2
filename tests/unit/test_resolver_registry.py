"""The registry back-end's pure part: watch messages → endpoints, never mid-snapshot."""

from __future__ import annotations

from registry.api.v1 import registry_pb2 as pb
from registry.model import Instance
from resolver.backends.registry import RegistryView, endpoint_from_instance

SNAPSHOT, END, DELTAS = pb.WatchResponse.SNAPSHOT, pb.WatchResponse.SNAPSHOT_END, pb.WatchResponse.DELTAS


def inst(service: str, iid: str, **kw: object) -> pb.Instance:
    return pb.Instance(service=service, instance_id=iid, addresses=["10.0.0.1"], port=80, weight=5, **kw)  # type: ignore[arg-type]


def msg(kind: int, *instances: pb.Instance, start: bool = False, revision: int = 5) -> pb.WatchResponse:
    return pb.WatchResponse(kind=kind, instances=list(instances), revision=revision, snapshot_start=start)


def delta(kind: int, instance: pb.Instance, revision: int) -> pb.WatchResponse:
    d = pb.InstanceDelta(kind=kind, instance=instance, revision=revision)  # type: ignore[arg-type]
    return pb.WatchResponse(kind=DELTAS, deltas=[d], revision=revision)


def test_conversion_keeps_fields_and_zeroes_drained() -> None:
    i = Instance("a.b", "i1", ("10.0.0.1",), 80, weight=0, tier=3, region="eu", zone="z1",
                 metadata={"k": "v"}, drained=True, drained_weight=50)  # fmt: skip
    e = endpoint_from_instance(i, "registry")
    assert (e.weight, e.tier, e.region, e.zone, dict(e.metadata), e.source) == (
        0,
        3,
        "eu",
        "z1",
        {"k": "v"},
        "registry",
    )
    assert endpoint_from_instance(Instance("a.b", "i1", ("10.0.0.1",), 80, weight=7), "r").weight == 7


def test_no_view_mid_snapshot_then_deltas() -> None:
    view = RegistryView("registry")
    assert not view.apply(msg(SNAPSHOT, inst("a.x", "1"), start=True))
    assert view.services == {}
    assert view.apply(msg(END, inst("b.x", "1")))
    assert {s: [e.instance_id for e in es] for s, es in view.services.items()} == {"a.x": ["1"], "b.x": ["1"]}
    assert view.apply(delta(pb.InstanceDelta.PUT, inst("a.x", "2"), 6))
    assert [e.instance_id for e in view.services["a.x"]] == ["1", "2"]
    assert view.apply(delta(pb.InstanceDelta.DELETE, pb.Instance(service="b.x", instance_id="1"), 7))
    assert "b.x" not in view.services
    assert not view.apply(pb.WatchResponse(kind=pb.WatchResponse.PROGRESS, revision=8))


def test_restarted_snapshot_drops_ghosts() -> None:
    view = RegistryView("registry")
    view.apply(msg(END, inst("a.x", "1"), inst("a.x", "2"), start=True))
    view.apply(msg(SNAPSHOT, inst("a.x", "1"), start=True, revision=9))
    assert [e.instance_id for e in view.services["a.x"]] == ["1", "2"]  # the old view until the end
    view.apply(msg(END, revision=9))
    assert [e.instance_id for e in view.services["a.x"]] == ["1"]
