"""Both registry mirrors (the client's `Mirror`, the agent's `AgentMirror`) against snapshot series.

A snapshot series cut off part-way is restarted from scratch by the watch; the restarted series
starts with `snapshot_start`, and everything held before it (the cut-off parts included) must go:
an instance deleted between the two series must not survive as a ghost.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from hostagent.agent.mirror import AgentMirror
from hostagent.sal_core.desired import DesiredTable
from registry.api.client import Mirror
from registry.api.v1 import registry_pb2 as pb

SNAPSHOT, END, DELTAS = pb.WatchResponse.SNAPSHOT, pb.WatchResponse.SNAPSHOT_END, pb.WatchResponse.DELTAS


def inst(service: str, iid: str) -> pb.Instance:
    return pb.Instance(
        service=service, instance_id=iid, addresses=["10.0.0.1"], port=80, weight=1,
        metadata={"serval.sal_port": "7000"},
    )  # fmt: skip


def part(kind: int, *instances: pb.Instance, start: bool = False, revision: int = 5) -> pb.WatchResponse:
    return pb.WatchResponse(kind=kind, instances=list(instances), revision=revision, snapshot_start=start)


def client_mirror() -> tuple[Mirror, Callable[[], set[str]]]:
    m = Mirror()
    return m, lambda: {f"{s}/{i}" for s, i in m.instances}


def agent_mirror() -> tuple[AgentMirror, Callable[[], set[str]]]:
    m = AgentMirror(DesiredTable())
    return m, lambda: {f"{s}/{i}" for s, i, *_ in _agent_instances(m)}


def _agent_instances(m: AgentMirror) -> list[tuple[str, str]]:
    # The agent's table keeps service IDs, not names: ask per known name, by removing it
    # (destructive: call once, at the end of a test).
    names = [("a.test", "1"), ("a.test", "2"), ("b.test", "1"), ("c.test", "1")]
    return [(s, i) for s, i in names if m.table.remove(s, i)]


@pytest.mark.parametrize("make", [client_mirror, agent_mirror], ids=["client", "agent"])
def test_a_restarted_series_drops_the_parts_of_the_cut_off_one(make: Callable[[], tuple]) -> None:
    mirror, held = make()
    mirror.apply(part(END, inst("a.test", "1"), start=True, revision=3))
    assert not mirror.in_snapshot
    # a fresh series at revision 9: cut off after its first part
    mirror.apply(part(SNAPSHOT, inst("b.test", "1"), start=True, revision=9))
    assert mirror.in_snapshot
    mirror.apply(part(SNAPSHOT, inst("a.test", "2"), revision=9))
    # restarted at revision 11 (a.test/2 was deleted in between): all of it again
    mirror.apply(part(SNAPSHOT, inst("b.test", "1"), start=True, revision=11))
    mirror.apply(part(END, inst("c.test", "1"), revision=11))
    assert not mirror.in_snapshot
    assert mirror.revision == 11
    assert held() == {"b.test/1", "c.test/1"}


@pytest.mark.parametrize("make", [client_mirror, agent_mirror], ids=["client", "agent"])
def test_parts_after_the_first_add_to_the_series(make: Callable[[], tuple]) -> None:
    mirror, held = make()
    mirror.apply(part(SNAPSHOT, inst("a.test", "1"), start=True))
    mirror.apply(part(SNAPSHOT, inst("a.test", "2")))
    mirror.apply(part(END, inst("b.test", "1")))
    delta = pb.InstanceDelta(kind=pb.InstanceDelta.PUT, instance=inst("c.test", "1"), revision=6)
    mirror.apply(pb.WatchResponse(kind=DELTAS, deltas=[delta], revision=6))
    assert held() == {"a.test/1", "a.test/2", "b.test/1", "c.test/1"}
