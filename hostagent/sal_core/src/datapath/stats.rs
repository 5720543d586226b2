//! Data-path counters (relaxed atomics; a snapshot is not one instant).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters named as in the contract (`docs/agent-datapath.md`).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub flows_active: AtomicU64,
    pub flows_opened: AtomicU64,
    pub flows_accepted: AtomicU64,
    /// App bytes written to local app fds (received from peers).
    pub bytes_in: AtomicU64,
    /// App bytes read from local app fds (sent to peers).
    pub bytes_out: AtomicU64,
    pub migrations: AtomicU64,
    /// Targets given up during set-up (each then excluded).
    pub failovers: AtomicU64,
    pub connect_failures: AtomicU64,
    /// SYNs answered with an RST (no listener, expose target down...).
    pub flows_refused: AtomicU64,
    /// New connections whose first frame was not an authentic RSYN of a
    /// known flow (dropped and closed).
    pub rsyn_rejected: AtomicU64,
}

impl Stats {
    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }

    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    pub(crate) fn flow_ended(&self) {
        let _ = self
            .flows_active
            .fetch_update(Relaxed, Relaxed, |v| Some(v.saturating_sub(1)));
    }

    /// `(name, value)` pairs; `events_dropped` comes from the event queue.
    pub(crate) fn snapshot(&self, events_dropped: u64) -> Vec<(&'static str, u64)> {
        let g = |c: &AtomicU64| c.load(Relaxed);
        vec![
            ("flows_active", g(&self.flows_active)),
            ("flows_opened", g(&self.flows_opened)),
            ("flows_accepted", g(&self.flows_accepted)),
            ("bytes_in", g(&self.bytes_in)),
            ("bytes_out", g(&self.bytes_out)),
            ("migrations", g(&self.migrations)),
            ("failovers", g(&self.failovers)),
            ("connect_failures", g(&self.connect_failures)),
            ("flows_refused", g(&self.flows_refused)),
            ("rsyn_rejected", g(&self.rsyn_rejected)),
            ("events_dropped", events_dropped),
        ]
    }
}
