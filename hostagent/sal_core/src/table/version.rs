//! One immutable version of the service table, and what a lookup returns.
//!
//! A [`Table`] never changes after it is built; the handle
//! ([`ServiceTable`](super::ServiceTable)) swaps whole tables. Every method
//! takes `&self`, locks nothing and allocates nothing on the lookup path
//! (`lookup`, `lookup_batch`, `resolve`, `RuleEntry::choose`); only
//! `resolve` bumps counters.

use std::net::SocketAddr;
use std::sync::Arc;

use super::counters::{Counter, CountersSnapshot, RuleCounts, TargetCounts};
use super::forward::ForwardSet;
use super::lpm::{Lpm, BATCH};
use super::pages::HugeVec;
use super::prefix::ServicePrefix;
use super::rules::{PackedTarget, Rule, RuleKind, Target};
use crate::service_id::ID_BYTES;

/// IDs [`Table::lookup_batch`] resolves together (its group size); any
/// batch length works, multiples of this waste nothing.
pub const LOOKUP_BATCH: usize = BATCH;

/// The built action of a rule: 40 bytes (the packed target's family byte
/// doubles as the variant tag).
pub enum Action {
    Forward(Arc<ForwardSet>),
    /// A FORWARD rule of exactly one target, eligible (weight > 0): the
    /// common case (one instance of a service), kept without a `ForwardSet`
    /// (~160 bytes less per rule), so a choice reads this entry only. The
    /// counter counts the target's choices.
    ForwardOne(Counter, PackedTarget),
    Demux(u64),
    Delay,
    Drop,
}

/// One rule of a table version: its prefix, action and hit counter. 88
/// bytes on 64-bit targets (34 prefix + 40 action + 8 hits, padded to 8;
/// it was 104 with a separate `Option<Target>` copy of the single target).
pub struct RuleEntry {
    pub(crate) prefix: ServicePrefix,
    pub(crate) action: Action,
    pub(crate) hits: Counter,
}

#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Action>() == 40);
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<RuleEntry>() == 88);

/// The outcome of resolving a service ID (owned; no borrow of the table).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send to this target.
    Forward(Target),
    /// Hand to this local listener.
    Demux(u64),
    /// Hold the set-up and ask the control plane (see `DelayQueue`).
    Delay,
    /// Discard.
    Drop,
    /// A FORWARD rule matched, but no eligible target is left (all drained or
    /// excluded).
    NoTarget,
    /// No prefix matches the ID.
    NoRoute,
}

impl RuleEntry {
    /// The prefix this rule is stored under.
    pub fn prefix(&self) -> &ServicePrefix {
        &self.prefix
    }

    /// The built action.
    pub fn action(&self) -> &Action {
        &self.action
    }

    /// The kind of the rule.
    pub fn kind(&self) -> RuleKind {
        match self.action {
            Action::Forward(_) | Action::ForwardOne(..) => RuleKind::Forward,
            Action::Demux(_) => RuleKind::Demux,
            Action::Delay => RuleKind::Delay,
            Action::Drop => RuleKind::Drop,
        }
    }

    /// The rule in canonical configuration form (targets sorted by address).
    pub fn rule(&self) -> Rule {
        match &self.action {
            Action::Forward(set) => {
                let mut targets: Vec<Target> = set.targets().iter().map(|t| t.target).collect();
                targets.sort_by_key(|t| t.addr);
                Rule::Forward(targets)
            }
            Action::ForwardOne(_, one) => Rule::Forward(vec![one.target()]),
            Action::Demux(listener) => Rule::Demux(*listener),
            Action::Delay => Rule::Delay,
            Action::Drop => Rule::Drop,
        }
    }

    /// Whether this entry implements `rule` (canonical form), without
    /// allocating.
    pub fn same_rule(&self, rule: &Rule) -> bool {
        match (&self.action, rule) {
            (Action::Forward(set), Rule::Forward(targets)) => {
                set.targets().len() == targets.len()
                    && set.targets().iter().all(|t| {
                        targets
                            .binary_search_by_key(&t.target.addr, |c| c.addr)
                            .is_ok_and(|i| targets[i] == t.target)
                    })
            }
            (Action::ForwardOne(_, one), Rule::Forward(targets)) => {
                matches!(targets.as_slice(), [only] if *only == one.target())
            }
            (Action::Demux(a), Rule::Demux(b)) => a == b,
            (Action::Delay, Rule::Delay) | (Action::Drop, Rule::Drop) => true,
            _ => false,
        }
    }

    /// The verdict of this rule for `flow_key`, skipping `exclude`d targets
    /// (pure: bumps no counter). See `forward` for the choice contract.
    #[inline]
    pub fn choose(&self, flow_key: u64, exclude: &[SocketAddr]) -> Verdict {
        match &self.action {
            Action::ForwardOne(_, one) if exclude.is_empty() => Verdict::Forward(one.target()),
            _ => self.choose_index(flow_key, exclude).0,
        }
    }

    /// Every eligible target of the best tier (FORWARD "send to all");
    /// empty for other kinds.
    pub fn all_targets(&self) -> Vec<Target> {
        match &self.action {
            Action::Forward(set) => set.best_tier().iter().map(|t| t.target).collect(),
            Action::ForwardOne(_, one) => vec![one.target()],
            _ => Vec::new(),
        }
    }

    #[inline]
    fn choose_index(&self, flow_key: u64, exclude: &[SocketAddr]) -> (Verdict, Option<&Counter>) {
        match &self.action {
            Action::Forward(set) => match set.choose(flow_key, exclude) {
                Some(i) => {
                    let t = &set.targets()[i];
                    (Verdict::Forward(t.target), Some(&t.chosen))
                }
                None => (Verdict::NoTarget, None),
            },
            Action::ForwardOne(chosen, one) => {
                let t = one.target();
                if exclude.contains(&t.addr) {
                    (Verdict::NoTarget, None)
                } else {
                    (Verdict::Forward(t), Some(chosen))
                }
            }
            Action::Demux(listener) => (Verdict::Demux(*listener), None),
            Action::Delay => (Verdict::Delay, None),
            Action::Drop => (Verdict::Drop, None),
        }
    }
}

/// The content of a table version; shared by versions that differ only in
/// generation number.
pub(crate) struct Content {
    pub(crate) digest: [u8; 32],
    pub(crate) lpm: Lpm,
    /// In prefix order; huge-page backed when large (see `pages`).
    pub(crate) entries: HugeVec<RuleEntry>,
    pub(crate) no_route: Counter,
}

/// One immutable version of the service table.
#[derive(Clone)]
pub struct Table {
    pub(crate) generation: u64,
    pub(crate) content: Arc<Content>,
}

impl Table {
    /// The empty table of generation 0 (every lookup is `NoRoute`).
    pub fn empty() -> Table {
        let content = Content {
            digest: super::build::digest_of(&[]),
            lpm: Lpm::build(&[]).expect("an empty index always builds"),
            entries: HugeVec::with_capacity(0),
            no_route: Counter::eager(),
        };
        Table {
            generation: 0,
            content: Arc::new(content),
        }
    }

    /// Generation number of the configuration this table was built from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// SHA-256 digest of the canonical content (independent of generation
    /// and of the order rules and targets were given in).
    pub fn digest(&self) -> &[u8; 32] {
        &self.content.digest
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.content.entries.len()
    }

    /// True if the table has no rules.
    pub fn is_empty(&self) -> bool {
        self.content.entries.is_empty()
    }

    /// Rules in prefix order.
    pub fn entries(&self) -> &[RuleEntry] {
        &self.content.entries
    }

    /// The rule of the longest prefix matching `id`. Pure: no counters.
    #[inline]
    pub fn lookup(&self, id: &[u8; ID_BYTES]) -> Option<&RuleEntry> {
        let index = self.content.lpm.lookup(id)?;
        Some(&self.content.entries[index as usize])
    }

    /// `out[i] = self.lookup(&ids[i])` for every i, resolving up to
    /// [`LOOKUP_BATCH`] IDs at a time with their memory reads overlapped
    /// (much faster than one by one when the table exceeds the cache). Pure;
    /// no allocation: `out` is the caller's (e.g. `[None; 32]` per burst).
    ///
    /// # Panics
    /// If `out` and `ids` differ in length.
    pub fn lookup_batch<'t>(&'t self, ids: &[[u8; ID_BYTES]], out: &mut [Option<&'t RuleEntry>]) {
        assert_eq!(ids.len(), out.len(), "one output slot per ID");
        let mut index = [None; LOOKUP_BATCH];
        for (ids, out) in ids.chunks(LOOKUP_BATCH).zip(out.chunks_mut(LOOKUP_BATCH)) {
            let index = &mut index[..ids.len()];
            self.content.lpm.lookup_batch(ids, index);
            for (slot, i) in out.iter_mut().zip(index.iter()) {
                *slot = i.map(|i| &self.content.entries[i as usize]);
            }
        }
    }

    /// The rule stored for exactly `prefix`, if any.
    pub fn get(&self, prefix: &ServicePrefix) -> Option<&RuleEntry> {
        let index = self.content.lpm.find_exact(prefix)?;
        Some(&self.content.entries[index as usize])
    }

    /// Looks up `id`, chooses a target for `flow_key` (skipping `exclude`)
    /// and bumps the counters: the rule's hits (or the table's no-route
    /// count) and the chosen target's count.
    #[inline]
    pub fn resolve(&self, id: &[u8; ID_BYTES], flow_key: u64, exclude: &[SocketAddr]) -> Verdict {
        let Some(entry) = self.lookup(id) else {
            self.content.no_route.bump();
            return Verdict::NoRoute;
        };
        entry.hits.bump();
        let (verdict, chosen) = entry.choose_index(flow_key, exclude);
        if let Some(counter) = chosen {
            counter.bump();
        }
        verdict
    }

    /// Reads every counter of this version.
    pub fn counters(&self) -> CountersSnapshot {
        let rules = self.content.entries.iter().map(|e| RuleCounts {
            prefix: e.prefix,
            kind: e.kind(),
            hits: e.hits.get(),
            targets: match &e.action {
                Action::Forward(set) => set.counts(),
                Action::ForwardOne(chosen, one) => vec![TargetCounts {
                    addr: one.addr(),
                    chosen: chosen.get(),
                }],
                _ => Vec::new(),
            },
        });
        CountersSnapshot {
            generation: self.generation,
            no_route: self.content.no_route.get(),
            rules: rules.collect(),
        }
    }

    /// Bytes held by this version's structures: the index, the rule entries,
    /// FORWARD sets (targets, tiers, Maglev tables) and the counter cells
    /// allocated so far (counters are lazy). Excludes allocator overhead.
    pub fn memory_bytes(&self) -> usize {
        let cell = std::mem::size_of::<u64>() * 3; // Arc header + value
        let cells = |c: &Counter| if c.is_allocated() { cell } else { 0 };
        // (ForwardSet::memory_bytes counts the set itself; + 16 = Arc header.)
        let sets: usize = self
            .content
            .entries
            .iter()
            .map(|e| {
                cells(&e.hits)
                    + match &e.action {
                        Action::Forward(set) => {
                            16 + set.memory_bytes()
                                + set
                                    .targets()
                                    .iter()
                                    .map(|t| cells(&t.chosen))
                                    .sum::<usize>()
                        }
                        Action::ForwardOne(chosen, _) => cells(chosen),
                        _ => 0,
                    }
            })
            .sum();
        let per_entry = std::mem::size_of::<RuleEntry>();
        self.content.lpm.memory_bytes() + self.content.entries.len() * per_entry + sets
    }
}
