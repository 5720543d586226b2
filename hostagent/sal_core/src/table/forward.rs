//! The built form of a FORWARD rule: tiers, their choosers and target counters.
//!
//! Targets are stored sorted by (tier, drained?, address), so each tier's
//! eligible targets (weight > 0) form one contiguous run in address order,
//! followed by its drained ones. Only tiers with an eligible target are kept,
//! in ascending tier number (lower = preferred); the best one sits inline in
//! the set, so the common choice touches the set and its targets only.
//!
//! Each tier chooses by one of three consistent hashes, all built from the
//! sorted targets alone (so the same configuration always chooses alike):
//! - one eligible target: it;
//! - 2..=[`HRW_MAX`] targets: weighted rendezvous hashing (`hrw`), computed
//!   per choice — nothing to build, exact weight shares and optimal minimal
//!   disruption, O(n) per choice, which is cheap for so few targets;
//! - more: weighted Maglev (`maglev`), O(1) per choice from a table built
//!   once. The boundary (8) is also Maglev's old smallest size class, so
//!   changing a tier's size within 2..=8 or within one Maglev class moves
//!   few flows, and crossing 8 ↔ 9 reshuffles that tier, as before.
//!
//! Choice for a flow key (pure, deterministic):
//! 1. take the best tier and its chooser's pick for the key;
//! 2. with an exclusion set (targets that just failed), HRW takes the best
//!    non-excluded target; Maglev walks its table forward from the home slot
//!    (wrapping) to the first target not excluded — either way the same key
//!    and exclusions always give the same target, spread by weight;
//! 3. if every eligible target of the tier is excluded, fall to the next tier
//!    and repeat; if no tier is left, there is no target.

use std::net::SocketAddr;
use std::ops::Range;

use super::counters::{Counter, TargetCounts};
use super::error::TableError;
use super::hrw;
use super::maglev::{Maglev, MAX_TARGETS};
use super::prefix::ServicePrefix;
use super::rules::Target;

/// Largest tier chosen by rendezvous hashing; larger tiers use Maglev.
pub(crate) const HRW_MAX: usize = 8;

/// One target and its counter.
#[derive(Debug)]
pub struct TargetState {
    pub target: Target,
    pub(crate) chosen: Counter,
    /// Rendezvous key of the address (see `hrw`).
    pub(crate) key: u64,
}

/// One non-empty tier: `eligible` indexes `ForwardSet::targets`.
struct Tier {
    eligible: Range<u32>,
    /// Present iff the tier has more than [`HRW_MAX`] eligible targets.
    maglev: Option<Maglev>,
}

/// A validated FORWARD rule, ready for lookups.
pub struct ForwardSet {
    targets: Box<[TargetState]>,
    /// The best tier (`eligible` empty if no tier has an eligible target).
    first: Tier,
    /// The failover tiers, best first.
    rest: Box<[Tier]>,
}

impl ForwardSet {
    /// Builds from canonical targets (consumed); `counter_of` supplies each
    /// target's counter (carried over from an older table, or fresh).
    /// Allocates the target array, the failover tiers (if any) and a Maglev
    /// table per tier of more than [`HRW_MAX`] targets.
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
                key: hrw::target_key(&target.addr),
                target,
            })
            .collect();
        let mut tiers = tiers.into_iter();
        let first = tiers.next().unwrap_or(Tier {
            eligible: 0..0,
            maglev: None,
        });
        Ok(ForwardSet {
            targets,
            first,
            rest: tiers.collect(),
        })
    }

    /// Index into [`ForwardSet::targets`] of the target for `flow_key`,
    /// skipping `exclude`d addresses (see the module doc); `None` if no
    /// eligible target remains. No allocation; O(1) for single-target and
    /// Maglev tiers, O(n) for rendezvous tiers, plus O(|exclude|) per target
    /// considered when excluding.
    #[inline]
    pub fn choose(&self, flow_key: u64, exclude: &[SocketAddr]) -> Option<usize> {
        if exclude.is_empty() {
            return self.first.pick(&self.targets, flow_key, |_| true);
        }
        let ok = |i: usize| !exclude.contains(&self.targets[i].target.addr);
        std::iter::once(&self.first)
            .chain(self.rest.iter())
            .find_map(|tier| tier.pick(&self.targets, flow_key, ok))
    }

    /// Every eligible target of the best tier ("send to all" mode); empty if
    /// no tier has an eligible target.
    pub fn best_tier(&self) -> &[TargetState] {
        &self.targets[self.first.eligible.start as usize..self.first.eligible.end as usize]
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

    /// Bytes held (the set, targets, failover tiers and Maglev tables).
    pub(crate) fn memory_bytes(&self) -> usize {
        std::mem::size_of::<ForwardSet>()
            + std::mem::size_of_val(&*self.targets)
            + std::mem::size_of_val(&*self.rest)
            + std::iter::once(&self.first)
                .chain(self.rest.iter())
                .map(|t| t.maglev.as_ref().map_or(0, Maglev::memory_bytes))
                .sum::<usize>()
    }
}

impl Tier {
    fn build(sorted: &[Target], eligible: Range<usize>) -> Tier {
        let maglev = (eligible.len() > HRW_MAX).then(|| {
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

    /// Target index chosen for `flow_key` among the eligible ones `ok`
    /// accepts (`targets` is the set's array); `None` if it accepts none.
    #[inline]
    fn pick(
        &self,
        targets: &[TargetState],
        flow_key: u64,
        ok: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let (start, end) = (self.eligible.start as usize, self.eligible.end as usize);
        match (&self.maglev, end - start) {
            (_, 0) => None,
            (None, 1) => ok(start).then_some(start),
            (None, _) => {
                let live = targets[start..end].iter().map(|t| (t.key, t.target.weight));
                hrw::choose(flow_key, live, |i| ok(start + i)).map(|i| start + i)
            }
            (Some(m), _) => walk(m, start, end, flow_key, ok),
        }
    }
}

/// The first target index accepted by `ok`, walking `m` forward from the
/// home slot of `flow_key` (every target owns ≥ 1 slot, so one full turn
/// visits all); `None` if `ok` accepts none of `start..end`.
#[inline]
fn walk(
    m: &Maglev,
    start: usize,
    end: usize,
    flow_key: u64,
    ok: impl Fn(usize) -> bool,
) -> Option<usize> {
    let home = m.home(flow_key);
    let first = start + m.at(home);
    if ok(first) {
        return Some(first);
    }
    if !(start..end).any(&ok) {
        return None;
    }
    (1..m.len())
        .map(|step| start + m.at(home + step))
        .find(|&i| ok(i))
        .or_else(|| (start..end).find(|&i| ok(i)))
}
