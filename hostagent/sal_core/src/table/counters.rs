//! Counters of rules and targets, and their snapshots.
//!
//! A [`Counter`] is a shared `AtomicU64` bumped with `Relaxed` ordering: no
//! lock, no fence, and no promise of order between counters. Counters are
//! bumped only by [`Table::resolve`](super::Table::resolve) — never by the
//! pure [`Table::lookup`](super::Table::lookup) — so code that only routes
//! pays nothing for them.
//!
//! Lazy: a counter holds a null pointer until its first bump, which
//! allocates its cell (an `Arc<AtomicU64>`, 24 bytes + malloc overhead) and
//! installs it with one compare-and-swap; a racing first bump that loses the
//! swap frees its cell and bumps the winner's. Most rules of a large table
//! never see traffic, so most counters never allocate (with 100,000
//! one-target rules that saves two 32-byte allocations per rule, ~6.4 MB).
//! After the first bump a bump is one load and one `fetch_add`, as before.
//!
//! Across a re-apply, a new table *shares* the cell of the same prefix and
//! of the same target address under that prefix ([`Counter::carry`]), so
//! counts survive and bumps made on the old table while the swap happens are
//! not lost — for counters that were already in use when the new table was
//! built. See [`ServiceTable::apply`](super::ServiceTable::apply) for what is
//! reset, and `build` for the one window where counts can be lost.

use std::net::SocketAddr;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::Arc;

use super::prefix::ServicePrefix;
use super::rules::RuleKind;

/// A monotonically increasing event count, shareable between table versions,
/// allocated on its first bump (see the module doc).
///
/// Invariant: the pointer is null or comes from `Arc::into_raw` of an
/// `Arc<AtomicU64>` whose strong count includes this counter; once non-null
/// it never changes until drop.
#[derive(Debug, Default)]
pub struct Counter(AtomicPtr<AtomicU64>);

impl Counter {
    /// A counter whose cell is allocated now (for counters that are always
    /// bumped, such as a table's no-route count; shared from the start).
    pub fn eager() -> Counter {
        Counter(AtomicPtr::new(Self::new_cell()))
    }

    /// Adds one (relaxed). Allocates the cell on the first bump.
    #[inline]
    pub fn bump(&self) {
        self.cell().fetch_add(1, Ordering::Relaxed);
    }

    /// The current value (relaxed); 0 if never bumped.
    pub fn get(&self) -> u64 {
        let cell = self.0.load(Ordering::Acquire);
        if cell.is_null() {
            return 0;
        }
        // SAFETY: non-null → a live cell this counter holds a strong count of.
        unsafe { (*cell).load(Ordering::Relaxed) }
    }

    /// Whether the cell has been allocated (the counter was bumped or carried).
    pub fn is_allocated(&self) -> bool {
        !self.0.load(Ordering::Acquire).is_null()
    }

    /// A counter for the next table version: it shares this counter's cell
    /// if allocated (counts continue, bumps on either are seen by both), and
    /// is a fresh lazy counter otherwise (a later first bump of `self` is
    /// then not seen by the new counter).
    pub fn carry(&self) -> Counter {
        let cell = self.0.load(Ordering::Acquire);
        if !cell.is_null() {
            // SAFETY: `cell` came from `Arc::into_raw` and `self` keeps it alive.
            unsafe { Arc::increment_strong_count(cell.cast_const()) };
        }
        Counter(AtomicPtr::new(cell))
    }

    #[inline]
    fn cell(&self) -> &AtomicU64 {
        let cell = self.0.load(Ordering::Acquire);
        if !cell.is_null() {
            // SAFETY: non-null → a live cell this counter holds a strong count of.
            return unsafe { &*cell };
        }
        self.install()
    }

    #[cold]
    fn install(&self) -> &AtomicU64 {
        let fresh = Self::new_cell();
        let cell = match (self.0).compare_exchange(
            ptr::null_mut(),
            fresh,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => fresh,
            Err(winner) => {
                // SAFETY: `fresh` came from `Arc::into_raw` and was never shared.
                drop(unsafe { Arc::from_raw(fresh.cast_const()) });
                winner
            }
        };
        // SAFETY: `cell` is installed in `self`, which holds its strong count.
        unsafe { &*cell }
    }

    fn new_cell() -> *mut AtomicU64 {
        Arc::into_raw(Arc::new(AtomicU64::new(0))).cast_mut()
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        let cell = *self.0.get_mut();
        if !cell.is_null() {
            // SAFETY: releases the strong count this counter holds.
            drop(unsafe { Arc::from_raw(cell.cast_const()) });
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lazy_counters_allocate_on_first_bump_and_carry_shares() {
        let c = Counter::default();
        assert!(!c.is_allocated());
        assert_eq!(c.get(), 0);
        let unshared = c.carry();
        c.bump();
        assert!(c.is_allocated() && !unshared.is_allocated());
        let shared = c.carry();
        shared.bump();
        drop(c);
        assert_eq!(shared.get(), 2);
        assert_eq!(unshared.get(), 0);
        assert!(Counter::eager().is_allocated());
    }

    #[test]
    fn racing_first_bumps_count_every_bump() {
        let c = Counter::default();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| (0..1000).for_each(|_| c.bump()));
            }
        });
        assert_eq!(c.get(), 4000);
    }
}
