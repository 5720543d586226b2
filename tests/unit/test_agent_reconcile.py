"""Reconciler (whole versioned tables, no-op on same content, retry after refusal), pump and metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from hostagent.agent.events import FlowClosed, Migrated, TargetFailed
from hostagent.agent.metrics import AgentGauges, collect, render
from hostagent.agent.reconcile import Reconciler
from hostagent.sal_core.table import ApplyResult, Rule, RuleKind, Target
from tests.fakes.datapath import FakeDatapath

RULE_A = Rule.for_name("a.prod", RuleKind.FORWARD, [Target("10.0.0.1", 7946, 1, 0)])
RULE_B = Rule.for_name("b.prod", RuleKind.DEMUX, listener=1)


def reconciler(dp: FakeDatapath, tables: list[Sequence[Rule]], revision: list[int]) -> Reconciler:
    return Reconciler(dp, lambda: (tables[-1], revision[-1]), debounce=0.01)


def test_same_content_is_not_reapplied_and_generation_only_grows_on_change() -> None:
    dp, tables, rev = FakeDatapath(), [[RULE_A]], [5]
    rec = reconciler(dp, tables, rev)
    rec.reconcile_now()
    rec.reconcile_now()
    assert [g for g, _ in dp.tables] == [1] and rec.generation == 1 and rec.applied_revision == 5
    tables.append([RULE_A, RULE_B])
    rev.append(6)
    rec.reconcile_now()
    assert [g for g, _ in dp.tables] == [1, 2] and rec.applied_revision == 6
    rec.note_progress(9)
    assert rec.applied_revision == 9


def test_refused_table_is_retried_and_progress_not_claimed() -> None:
    dp, tables, rev = FakeDatapath(), [[RULE_A]], [5]
    rec = reconciler(dp, tables, rev)
    real = dp.apply_table
    dp.apply_table = lambda g, r: (_ for _ in ()).throw(ValueError("nope"))  # type: ignore[method-assign]
    rec.reconcile_now()
    assert rec.errors == 1 and rec.applied_revision == 0
    rec.note_progress(7)
    assert rec.applied_revision == 0
    dp.apply_table = real  # type: ignore[method-assign]
    rec.reconcile_now()  # same content, but the previous apply failed: applied now
    assert [g for g, _ in dp.tables] == [1] and rec.applied_revision == 5


def test_resync_reapplies_unchanged_content() -> None:
    calls: list[int] = []

    class Counting(FakeDatapath):
        def apply_table(self, generation: int, rules: Sequence[Rule]) -> ApplyResult:
            calls.append(generation)
            return super().apply_table(generation, rules)

    rec = reconciler(Counting(), [[RULE_A]], [1])
    rec.reconcile_now()
    rec.resync()
    rec.reconcile_now()
    rec.reconcile_now()
    assert calls == [1, 1]


async def test_debounced_run_coalesces_requests() -> None:
    dp, tables, rev = FakeDatapath(), [[RULE_A]], [1]
    rec = reconciler(dp, tables, rev)
    task = asyncio.create_task(rec.run())
    for n in range(20):
        tables.append([RULE_A] if n % 2 else [RULE_B])
        rec.request()
    await rec.settled()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert len(dp.tables) == 1 and dp.rules == (RULE_A,)  # one pass saw only the last state


async def test_a_pass_waits_for_the_end_of_a_snapshot_series() -> None:
    dp, consistent = FakeDatapath(), [False]
    rec = Reconciler(dp, lambda: ([RULE_A], 3), debounce=0.01, ready=lambda: consistent[-1])
    task = asyncio.create_task(rec.run())
    settled = asyncio.create_task(rec.settled())  # e.g. a listener opened mid-series
    await asyncio.sleep(0.05)
    assert dp.tables == [] and not settled.done() and rec.deferred == 1  # partial view: not applied
    consistent.append(True)
    rec.request()  # what the registry link does at SNAPSHOT_END
    await asyncio.wait_for(settled, 5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert [g for g, _ in dp.tables] == [1] and rec.applied_revision == 3


def test_metrics_are_namespaced_and_read_at_scrape_time() -> None:
    dp = FakeDatapath()
    dp.counters.update(flows_active=2, bytes_in=10, migrations=1, failovers=3)
    gauges = AgentGauges(
        datapath_stats=dp.stats,
        applied_revision=lambda: 42,
        mirror_revision=lambda: 43,
        table_generation=lambda: 7,
        table_rules=lambda: 3,
        listeners=lambda: 1,
        registry_reconnects=lambda: 0,
    )
    text = render(collect(gauges)).decode()
    for line in [
        "serval_agent_flows_active 2.0",
        "serval_agent_bytes_in_total 10.0",
        "serval_agent_migrations_total 1.0",
        "serval_agent_failovers_total 3.0",
        "serval_agent_applied_revision 42.0",
        "serval_agent_table_generation 7.0",
        "serval_agent_listeners 1.0",
    ]:
        assert line in text.splitlines(), line


def test_pump_counts_informational_events() -> None:
    from hostagent.agent.events import EventPump

    pump = EventPump(FakeDatapath(), handler=None)  # type: ignore[arg-type]
    for event in (
        FlowClosed(1, "fin"),
        Migrated(1, ("a", 1), ("b", 2)),
        TargetFailed(7, ("c", 3), "refused"),
    ):
        pump.dispatch(event)
    assert dict(pump.counts) == {"FlowClosed": 1, "Migrated": 1, "TargetFailed": 1}
