//! The built form of a FORWARD rule: tiers, Maglev tables and target counters.
//!
//! Targets are stored sorted by (tier, drained?, address), so each tier's
//! eligible targets (weight > 0) form one contiguous run in address order,
//! followed by its drained ones. Only tiers with an eligible target are kept in
//! `tiers`, in ascending tier number (lower = preferred).
//!
//! Choice for a flow key (pure, deterministic):
//! 1. take the best tier; a single eligible target needs no table, otherwise
//!    the tier's Maglev table maps the key to a home slot;
//! 2. with an exclusion set (targets that just failed), walk the Maglev table
//!    forward from the home slot, one slot at a time with wrap-around, and
//!    take the first target not excluded — so the same key and the same
//!    exclusions always give the same target, spread by weight;
//! 3. if every eligible target of the tier is excluded, fall to the next tier
//!    and repeat; if no tier is left, there is no target.

use std::net::SocketAddr;
use std::ops::Range;

use super::counters::{Counter, TargetCounts};
use super::error::TableError;
use super::maglev::{Maglev, MAX_TARGETS};
use super::prefix::ServicePrefix;
use super::rules::Target;

/// One target and its counter.
#[derive(Debug)]
pub struct TargetState {
    pub target: Target,
    pub(crate) chosen: Counter,
}

/// One non-empty tier: `eligible` indexes `ForwardSet::targets`.
struct Tier {
    eligible: Range<u32>,
    maglev: Option<Maglev>,
}

/// A validated FORWARD rule, ready for lookups.
pub struct ForwardSet {
    targets: Box<[TargetState]>,
    tiers: Box<[Tier]>,
}

impl ForwardSet {
    /// Builds from canonical targets (consumed); `counter_of` supplies each target's
    /// counter (carried over from an older table, or fresh).
    pub(crate) fn build(
        prefix: &ServicePrefix,
        mut sorted: Vec<Target>,
        mut counter_of: impl FnMut(&SocketAddr) -> Counter,
    ) -> Result<ForwardSet, TableError> {
        sorted.sort_unstable_by_key(|t| (t.tier, t.weight == 0, t.addr));
        let mut tiers = Vec::new();
        let mut start = 0;
        while start < sorted.len() {
            let tier = sorted[start].tier;
            let len = sorted[start..]
                .iter()
                .take_while(|t| t.tier == tier)
                .count();
            let live = sorted[start..start + len]
                .iter()
                .take_while(|t| t.weight > 0)
                .count();
            if live > MAX_TARGETS {
                return Err(TableError::TooManyTargets(*prefix, live));
            }
            if live > 0 {
                tiers.push(Tier::build(&sorted, start..start + live));
            }
            start += len;
        }
        let targets = sorted
            .into_iter()
            .map(|target| TargetState {
                chosen: counter_of(&target.addr),
                target,
            })
            .collect();
        Ok(ForwardSet {
            targets,
            tiers: tiers.into_boxed_slice(),
        })
    }

    /// Index into [`ForwardSet::targets`] of the target for `flow_key`,
    /// skipping `exclude`d addresses (see the module doc); `None` if no
    /// eligible target remains.
    #[inline]
    pub fn choose(&self, flow_key: u64, exclude: &[SocketAddr]) -> Option<usize> {
        for tier in self.tiers.iter() {
            if exclude.is_empty() {
                return Some(tier.home(flow_key));
            }
            let live = &self.targets[tier.eligible.start as usize..tier.eligible.end as usize];
            if live.iter().all(|t| exclude.contains(&t.target.addr)) {
                continue;
            }
            return Some(tier.walk(flow_key, |i| {
                !exclude.contains(&self.targets[i].target.addr)
            }));
        }
        None
    }

    /// Every eligible target of the best tier ("send to all" mode); empty if
    /// no tier has an eligible target.
    pub fn best_tier(&self) -> &[TargetState] {
        match self.tiers.first() {
            Some(t) => &self.targets[t.eligible.start as usize..t.eligible.end as usize],
            None => &[],
        }
    }

    /// All targets, eligible or not, in (tier, drained, address) order.
    pub fn targets(&self) -> &[TargetState] {
        &self.targets
    }

    /// The counts of every target.
    pub(crate) fn counts(&self) -> Vec<TargetCounts> {
        let count = |t: &TargetState| TargetCounts {
            addr: t.target.addr,
            chosen: t.chosen.get(),
        };
        self.targets.iter().map(count).collect()
    }

    /// Bytes held (targets and Maglev tables).
    pub(crate) fn memory_bytes(&self) -> usize {
        std::mem::size_of_val(&*self.targets)
            + std::mem::size_of_val(&*self.tiers)
            + self
                .tiers
                .iter()
                .map(|t| t.maglev.as_ref().map_or(0, Maglev::memory_bytes))
                .sum::<usize>()
    }
}

impl Tier {
    fn build(sorted: &[Target], eligible: Range<usize>) -> Tier {
        let maglev = (eligible.len() > 1).then(|| {
            let input: Vec<(SocketAddr, u32)> = sorted[eligible.clone()]
                .iter()
                .map(|t| (t.addr, t.weight))
                .collect();
            Maglev::build(&input)
        });
        Tier {
            eligible: eligible.start as u32..eligible.end as u32,
            maglev,
        }
    }

    /// Target index of the home slot of `flow_key`.
    #[inline]
    fn home(&self, flow_key: u64) -> usize {
        match &self.maglev {
            None => self.eligible.start as usize,
            Some(m) => self.eligible.start as usize + m.at(m.home(flow_key)),
        }
    }

    /// First target index from the home slot onward that `ok` accepts. The
    /// caller guarantees one exists, and every target owns at least one slot;
    /// the final fallback (first accepted index) is only defensive.
    fn walk(&self, flow_key: u64, ok: impl Fn(usize) -> bool) -> usize {
        let base = self.eligible.start as usize;
        let Some(m) = &self.maglev else {
            return base;
        };
        let home = m.home(flow_key);
        (0..m.len())
            .map(|step| base + m.at(home + step))
            .find(|&i| ok(i))
            .or_else(|| (base..self.eligible.end as usize).find(|&i| ok(i)))
            .unwrap_or(base)
    }
}
