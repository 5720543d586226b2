"""The agent's mirror of the registry: watch messages → a compact `DesiredTable`.

`AgentMirror.apply(msg)` has the contract of `registry.api.client.Mirror.apply`
(a SNAPSHOT series replaces the content; deltas put or delete; `revision`
only grows) but keeps no per-instance Python object: each instance goes
straight into the Rust `DesiredTable`, which keeps only SAL-capable
instances and only what the service table needs (see
`hostagent/sal_core/desired.py`). The watch message is dropped once applied.

Other discovery back-ends may share the table (`discovery.py`): `tier_offset` is
added to every registry tier (the registry's precedence * 16) and `on_clear` is
called right after a snapshot series cleared the table, so they can put their
entries back before the table is used again.

This module reads the registry's protobuf messages directly (like
`registry.api.convert`, the registry's converter) so that no `Instance`
object is built per delta.
"""

from __future__ import annotations

from collections.abc import Callable

from hostagent.agent.desired import SAL_PORT_KEY, parse_sal_port
from hostagent.sal_core.desired import DesiredTable
from registry.api.v1 import registry_pb2 as pb

_SNAPSHOT_KINDS = (pb.WatchResponse.SNAPSHOT, pb.WatchResponse.SNAPSHOT_END)


class AgentMirror:
    """SAL-capable registry instances in `table`, at `revision`. Event-loop thread only."""

    def __init__(
        self, table: DesiredTable, tier_offset: int = 0, on_clear: Callable[[], None] | None = None
    ) -> None:
        self.table = table
        self.tier_offset = tier_offset
        self.on_clear = on_clear
        self.revision = 0
        # In the middle of a snapshot series: `table` is not a consistent view.
        self.in_snapshot = False

    def apply(self, msg: pb.WatchResponse) -> None:
        """Apply one watch message (a SNAPSHOT series replaces the content: its first message,
        `snapshot_start`, drops everything held, even the parts of a series cut off earlier)."""
        if msg.kind in _SNAPSHOT_KINDS:
            if msg.snapshot_start:
                self.table.clear()
                if self.on_clear is not None:
                    self.on_clear()
            self.in_snapshot = msg.kind == pb.WatchResponse.SNAPSHOT
            for inst in msg.instances:
                self._put(inst)
        for d in msg.deltas:
            if d.kind == pb.InstanceDelta.DELETE:
                self.table.remove(d.instance.service, d.instance.instance_id)
            else:
                self._put(d.instance)
        self.revision = max(self.revision, msg.revision)

    def _put(self, i: pb.Instance) -> None:
        port = parse_sal_port(i.metadata.get(SAL_PORT_KEY, ""))
        self.table.put(
            i.service,
            i.instance_id,
            i.addresses,
            port,
            i.weight,
            i.tier + self.tier_offset,
            i.locality.zone,
            i.locality.region,
        )
