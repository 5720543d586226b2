//! Counters of rules and targets, and their snapshots.
//!
//! A [`Counter`] is a shared `AtomicU64` bumped with `Relaxed` ordering: no
//! lock, no fence, and no promise of order between counters. Counters are
//! bumped only by [`Table::resolve`](super::Table::resolve) — never by the
//! pure [`Table::lookup`](super::Table::lookup) — so code that only routes
//! pays nothing for them.
//!
//! Across a re-apply, a new table *shares* the counter of the same prefix and
//! of the same target address under that prefix, so counts survive and bumps
//! made on the old table while the swap happens are not lost. See
//! [`ServiceTable::apply`](super::ServiceTable::apply) for what is reset.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::prefix::ServicePrefix;
use super::rules::RuleKind;

/// A monotonically increasing event count, shareable between table versions.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one (relaxed).
    #[inline]
    pub fn bump(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The current value (relaxed).
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counts of one target of a FORWARD rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetCounts {
    pub addr: SocketAddr,
    /// Times `resolve` chose this target.
    pub chosen: u64,
}

/// Counts of one rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleCounts {
    pub prefix: ServicePrefix,
    pub kind: RuleKind,
    /// Times `resolve` matched this rule (for DROP and DELAY: the drops and
    /// delays; for FORWARD: including matches where no target was available).
    pub hits: u64,
    /// Per-target counts (FORWARD only), in canonical (tier, address) order.
    pub targets: Vec<TargetCounts>,
}

/// A point-in-time read of every counter of one table version. Each value is
/// read atomically, but the set is not one atomic cut.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CountersSnapshot {
    pub generation: u64,
    /// Resolutions that matched no prefix.
    pub no_route: u64,
    /// Rules in prefix order.
    pub rules: Vec<RuleCounts>,
}
