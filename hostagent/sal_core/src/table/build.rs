//! From a [`TableConfig`] to a new [`Table`]: validate, canonicalise, digest,
//! then build the index and actions, reusing what the previous version
//! already built for unchanged rules.
//!
//! Counter carry-over (contract): a rule whose prefix exists in the previous
//! version keeps that prefix's hit counter; within a FORWARD rule a target
//! whose address was already a target of that prefix keeps its counter, even
//! if its weight or tier changed. Counters of removed prefixes and removed
//! targets are dropped; new prefixes and new targets start at zero. The
//! no-route counter always carries over.
//!
//! Counters are lazy (`counters`): one never bumped has no cell yet, so the
//! new version gets a fresh lazy counter for it. The one loss window: if such
//! a counter is first bumped on the *old* version after this build read it
//! (between the build and the swap, or by a reader still holding the old
//! version), those bumps are not seen by the new version — only first-use
//! traffic of a rule or target that coincides with an apply (a build of
//! 100,000 rules takes ~50 ms). Counters already in use lose nothing.

use std::net::SocketAddr;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::counters::Counter;
use super::error::TableError;
use super::forward::ForwardSet;
use super::lpm::Lpm;
use super::pages::HugeVec;
use super::prefix::ServicePrefix;
use super::rules::{PackedTarget, Rule};
use super::version::{Action, Content, RuleEntry, Table};

/// A whole desired table, as the control plane states it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableConfig {
    /// Version of this configuration; must grow when the content changes.
    pub generation: u64,
    /// One rule per prefix, in any order.
    pub rules: Vec<(ServicePrefix, Rule)>,
}

/// Domain-separation tag of the content digest.
const DIGEST_TAG: &[u8] = b"serval-table-v1\0";

/// A validated configuration: canonical rules sorted by prefix, and the digest.
pub(crate) struct Prepared {
    pub(crate) rules: Vec<(ServicePrefix, Rule)>,
    pub(crate) digest: [u8; 32],
}

/// How the rules of a new version relate to the previous version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Diff {
    pub(crate) added: usize,
    pub(crate) removed: usize,
    pub(crate) changed: usize,
}

/// Validates and canonicalises `rules`; refuses duplicates with a typed error.
pub(crate) fn prepare(mut canonical: Vec<(ServicePrefix, Rule)>) -> Result<Prepared, TableError> {
    for (prefix, rule) in canonical.iter_mut() {
        rule.canonicalize(prefix)?;
    }
    canonical.sort_unstable_by_key(|r| r.0);
    if let Some(w) = canonical.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(TableError::DuplicatePrefix(w[0].0));
    }
    let digest = digest_of(&canonical);
    Ok(Prepared {
        rules: canonical,
        digest,
    })
}

/// SHA-256 over the tag and each (prefix bytes, length, rule encoding), in
/// prefix order. `rules` must be canonical and sorted.
pub(crate) fn digest_of(rules: &[(ServicePrefix, Rule)]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(DIGEST_TAG);
    let mut buf = Vec::with_capacity(256);
    for (prefix, rule) in rules {
        buf.clear();
        buf.extend_from_slice(prefix.bytes());
        buf.extend_from_slice(&(prefix.len() as u16).to_be_bytes());
        rule.encode(&mut buf);
        hasher.update(&buf);
    }
    hasher.finalize().into()
}

/// Builds the version `generation` of `prepared`, carrying counters (and
/// built FORWARD sets of unchanged rules) over from `old`.
///
/// O(n) plus the index build: both rule lists are sorted by prefix, so the
/// previous entry of each prefix is found by one merge walk over `old`'s
/// entries (sequential reads, no probe per rule).
pub(crate) fn build(
    prepared: Prepared,
    generation: u64,
    old: &Table,
) -> Result<(Table, Diff), TableError> {
    let mut diff = Diff::default();
    let mut kept = 0;
    let mut entries = HugeVec::with_capacity(prepared.rules.len());
    let items: Vec<(ServicePrefix, u32)> = prepared
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| (r.0, i as u32))
        .collect();
    let mut olds = old.entries().iter().peekable();
    for (prefix, rule) in prepared.rules {
        while olds.next_if(|e| e.prefix < prefix).is_some() {}
        let previous = olds.next_if(|e| e.prefix == prefix);
        let unchanged = previous.is_some_and(|e| e.same_rule(&rule));
        match previous {
            None => diff.added += 1,
            Some(_) if unchanged => kept += 1,
            Some(_) => diff.changed += 1,
        }
        entries.push(build_entry(prefix, rule, previous, unchanged)?);
    }
    diff.removed = old.len() - kept - diff.changed;

    let lpm = Lpm::build(&items)?;

    let content = Content {
        digest: prepared.digest,
        lpm,
        entries,
        no_route: old.content.no_route.carry(),
    };
    Ok((
        Table {
            generation,
            content: Arc::new(content),
        },
        diff,
    ))
}

fn build_entry(
    prefix: ServicePrefix,
    rule: Rule,
    previous: Option<&RuleEntry>,
    unchanged: bool,
) -> Result<RuleEntry, TableError> {
    let hits = previous.map_or_else(Counter::default, |e| e.hits.carry());
    let action = match (rule, previous.map(|e| &e.action)) {
        (Rule::Forward(_), Some(Action::Forward(set))) if unchanged => {
            Action::Forward(Arc::clone(set))
        }
        (Rule::Forward(targets), _) => match targets.as_slice() {
            [one] if one.weight > 0 => {
                let chosen = forward_counters(previous)
                    .into_iter()
                    .find(|c| c.0 == one.addr)
                    .map_or_else(Counter::default, |c| c.1);
                Action::ForwardOne(chosen, PackedTarget::new(*one))
            }
            _ => {
                let old_counters = forward_counters(previous);
                let counter_of =
                    |addr: &SocketAddr| match old_counters.binary_search_by_key(addr, |c| c.0) {
                        Ok(i) => old_counters[i].1.carry(),
                        Err(_) => Counter::default(),
                    };
                Action::Forward(Arc::new(ForwardSet::build(&prefix, targets, counter_of)?))
            }
        },
        (Rule::Demux(listener), _) => Action::Demux(listener),
        (Rule::Delay, _) => Action::Delay,
        (Rule::Drop, _) => Action::Drop,
    };
    Ok(RuleEntry {
        prefix,
        action,
        hits,
    })
}

/// `(address, counter)` of the targets of an old FORWARD entry, by address.
fn forward_counters(previous: Option<&RuleEntry>) -> Vec<(SocketAddr, Counter)> {
    let set = match previous.map(|e| &e.action) {
        Some(Action::Forward(set)) => set,
        Some(Action::ForwardOne(chosen, one)) => return vec![(one.addr(), chosen.carry())],
        _ => return Vec::new(),
    };
    let mut counters: Vec<_> = set
        .targets()
        .iter()
        .map(|t| (t.target.addr, t.chosen.carry()))
        .collect();
    counters.sort_by_key(|c| c.0);
    counters
}
